// A minimal server on centrifuge (the library Centrifugo is built on): every
// connection is accepted and subscribed on the server side to channel
// "bench"; POST /broadcast?n=N&rate=R publishes N messages at R/s.
package main

import (
	"context"
	"log"
	"net/http"
	"strconv"
	"time"

	"github.com/centrifugal/centrifuge"
)

func main() {
	node, err := centrifuge.New(centrifuge.Config{})
	if err != nil {
		log.Fatal(err)
	}
	node.OnConnecting(func(ctx context.Context, e centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		return centrifuge.ConnectReply{
			Credentials:   &centrifuge.Credentials{UserID: ""},
			Subscriptions: map[string]centrifuge.SubscribeOptions{"bench": {}},
		}, nil
	})
	node.OnConnect(func(c *centrifuge.Client) {})
	if err := node.Run(); err != nil {
		log.Fatal(err)
	}
	http.Handle("/connection/websocket", centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{
		CheckOrigin: func(*http.Request) bool { return true },
	}))
	http.HandleFunc("/broadcast", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		rate, _ := strconv.Atoi(r.URL.Query().Get("rate"))
		payload := r.URL.Query().Get("payload")
		t := time.NewTicker(time.Second / time.Duration(rate))
		for i := 0; i < n; i++ {
			<-t.C
			data := []byte(`{"i":` + strconv.Itoa(i) + `,"t":` + strconv.FormatInt(time.Now().UnixMilli(), 10) + `,"p":"` + payload + `"}`)
			if _, err := node.Publish("bench", data); err != nil {
				log.Print(err)
			}
		}
		t.Stop()
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:18200", nil))
}
