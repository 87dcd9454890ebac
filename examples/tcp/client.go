// Command client talks to DMB over TCP, one JSON frame per line
// (docs/protocol.md, section 12): it says hello, prints every frame DMB
// sends, and sends each line typed on standard input as a message.
//
//	go run ./examples/tcp -addr 127.0.0.1:9000 -service chat
//	hi there                          <- sent as {"event":"dmb:message","data":"hi there","id":1}
package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9000", "DMB's TCP address (DMB_TCP_PORT)")
	service := flag.String("service", "chat", "the service to connect to")
	token := flag.String("token", "", "a client token, when DMB_JWT_SECRET is set")
	useTLS := flag.Bool("tls", false, "speak TLS (DMB_TLS_CERT is set)")
	flag.Parse()

	var conn net.Conn
	var err error
	if *useTLS {
		conn, err = tls.Dial("tcp", *addr, &tls.Config{MinVersion: tls.VersionTLS12})
	} else {
		conn, err = net.Dial("tcp", *addr)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	hello := map[string]string{"event": "dmb:hello", "service": *service}
	if *token != "" {
		hello["token"] = *token
	}
	if err := writeLine(conn, hello); err != nil {
		log.Fatal(err)
	}

	// Each line typed is sent as a message with an id, which DMB acks.
	go func() {
		in := bufio.NewScanner(os.Stdin)
		for id := 1; in.Scan(); id++ {
			msg := map[string]any{"event": "dmb:message", "data": in.Text(), "id": id}
			if err := writeLine(conn, msg); err != nil {
				log.Fatal(err)
			}
		}
	}()

	// Every frame DMB sends is one line; the last, dmb:close, says why
	// the connection ends.
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			return
		}
		if err != nil {
			log.Fatal(err)
		}
		var frame struct {
			Event  string `json:"event"`
			Code   int    `json:"code"`
			Reason string `json:"reason"`
		}
		if err := json.Unmarshal(line, &frame); err != nil {
			log.Fatalf("not a frame: %q", line)
		}
		fmt.Print(string(line))
		if frame.Event == "dmb:close" {
			fmt.Fprintf(os.Stderr, "closed: %d %s\n", frame.Code, frame.Reason)
			return
		}
	}
}

// writeLine sends v as one line of JSON.
func writeLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
