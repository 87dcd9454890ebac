package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/internal/wsframe"
	"github.com/dmb-broker/dmb/protocol"
)

func TestInboxReadsWhatTheLibraryWritesAndAnswersItsPingAndClose(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := strings.Repeat("x", 70000) // 64-bit length form
	serverDone := make(chan error, 1)
	_, in := dialLibrary(ctx, t, func(ws *websocket.Conn) {
		serverDone <- func() error {
			for _, m := range []string{"hello", big} {
				if err := ws.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
					return err
				}
			}
			if err := ws.Write(ctx, websocket.MessageBinary, []byte("bin")); err != nil {
				return err
			}
			fw, err := ws.Writer(ctx, websocket.MessageText) // a fragmented message
			if err != nil {
				return err
			}
			_, _ = fw.Write([]byte("ab"))
			_, _ = fw.Write([]byte("cd"))
			if err := fw.Close(); err != nil {
				return err
			}
			ws.CloseRead(ctx) // the library reads the pong and the close answer
			if err := ws.Ping(ctx); err != nil {
				return err
			}
			return ws.Close(4001, "bye")
		}()
	})
	for i, want := range []string{"hello", big, "bin", "abcd"} {
		got, err := in.next()
		if err != nil || string(got) != want {
			t.Fatalf("message %d: %.20q (%d bytes), %v; want %.20q (%d bytes)", i, got, len(got), err, want, len(want))
		}
	}
	_, err := in.next()
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4001 || ce.Reason != "bye" {
		t.Fatalf("after the messages: %v, want close 4001 bye", err)
	}
	select {
	case err := <-serverDone:
		if err != nil { // the ping got its pong, the close its answer
			t.Fatalf("server: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("server did not finish")
	}
}

// frame is a server frame: unmasked, unless key is given.
func frame(first byte, payload string, key ...byte) []byte {
	b := []byte{first}
	mask := byte(0)
	if len(key) == 4 {
		mask = 0x80
	}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, mask|byte(n))
	default:
		b = append(b, mask|126, byte(n>>8), byte(n))
	}
	b = append(b, key...)
	p := []byte(payload)
	for i := range p {
		if len(key) == 4 {
			p[i] ^= key[i&3]
		}
	}
	return append(b, p...)
}

func TestInboxTakesFramesByteByByteAndEndsOnTheFirstBadOne(t *testing.T) {
	long := strings.Repeat("y", 300) // 16-bit length form
	for _, c := range []struct {
		name    string
		in      [][]byte
		limit   int
		want    []string      // messages
		end     error         // errors.Is the error next ends with, or
		endCode int           // the code of the close it ends with
		answers []clientFrame // what the client writes
	}{
		{
			name: "messages, a ping, a close",
			in: [][]byte{frame(0x81, "a"), frame(0x89, "p"), frame(0x82, long), frame(0x01, "fr"),
				frame(0x8a, "unasked pong"), frame(0x80, "ag"), frame(0x88, "\x0f\xa0going")},
			limit: 4096, want: []string{"a", long, "frag"}, endCode: 4000,
			answers: []clientFrame{{wsframe.OpPong, "p"}, {wsframe.OpClose, "\x0f\xa0"}},
		},
		{
			name: "a close without a code", in: [][]byte{frame(0x88, "")}, limit: 10,
			endCode: int(websocket.StatusNoStatusRcvd), answers: []clientFrame{{wsframe.OpClose, ""}},
		},
		{
			name: "a masked frame", in: [][]byte{frame(0x81, "ok"), frame(0x81, "masked", 1, 2, 3, 4)}, limit: 4096,
			want: []string{"ok"}, end: wsframe.ErrProtocol, answers: []clientFrame{{wsframe.OpClose, "\x03\xea"}},
		},
		{
			name: "a reserved opcode", in: [][]byte{frame(0x83, "")}, limit: 4096,
			end: wsframe.ErrProtocol, answers: []clientFrame{{wsframe.OpClose, "\x03\xea"}},
		},
		{
			name: "a continuation without a message", in: [][]byte{frame(0x80, "x")}, limit: 4096,
			end: wsframe.ErrProtocol, answers: []clientFrame{{wsframe.OpClose, "\x03\xea"}},
		},
		{
			name: "a message inside a fragmented one", in: [][]byte{frame(0x01, "x"), frame(0x81, "y")}, limit: 4096,
			end: wsframe.ErrProtocol, answers: []clientFrame{{wsframe.OpClose, "\x03\xea"}},
		},
		{
			name: "a close of one byte", in: [][]byte{frame(0x88, "\x03")}, limit: 4096,
			end: wsframe.ErrProtocol, answers: []clientFrame{{wsframe.OpClose, "\x03\xea"}},
		},
		{
			name: "a frame over the limit", in: [][]byte{frame(0x81, long)}, limit: 299,
			end: errTooBig, answers: []clientFrame{{wsframe.OpClose, "\x03\xf1"}},
		},
		{
			name: "fragments over the limit", in: [][]byte{frame(0x01, long[:200]), frame(0x80, long[:100])}, limit: 299,
			end: errTooBig, answers: []clientFrame{{wsframe.OpClose, "\x03\xf1"}},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			_ = client.SetDeadline(time.Now().Add(5 * time.Second)) // a broken inbox fails, not hangs
			written := make(chan []byte, 1)
			go func() { // the client's answers
				b, _ := io.ReadAll(server)
				written <- b
			}()
			go func() { // one byte per read
				for _, f := range c.in {
					for i := range f {
						if _, err := server.Write(f[i : i+1]); err != nil {
							return
						}
					}
				}
			}()
			in := newInbox(&upgradedConn{Conn: client}, c.limit)
			idle := 0
			in.idle = func() { idle++ }
			got, err := nextUntilError(in)
			_ = client.Close()
			if !slices.Equal(got, c.want) {
				t.Errorf("messages %.20q, want %.20q", got, c.want)
			}
			var ce websocket.CloseError
			switch {
			case c.end != nil && !errors.Is(err, c.end):
				t.Errorf("ended with %v, want %v", err, c.end)
			case c.end == nil && (!errors.As(err, &ce) || int(ce.Code) != c.endCode):
				t.Errorf("ended with %v, want close %d", err, c.endCode)
			}
			if answers := clientFrames(t, string(<-written)); !slices.Equal(answers, c.answers) {
				t.Errorf("client wrote %q, want %q", answers, c.answers)
			}
			if total := len(bytes.Join(c.in, nil)); c.end == nil && idle != total {
				t.Errorf("idle ran %d times for %d reads of a byte", idle, total)
			}
		})
	}
}

// nextUntilError reads messages from in until it returns an error.
func nextUntilError(in *inbox) ([]string, error) {
	var got []string
	for {
		p, err := in.next()
		if err != nil {
			return got, err
		}
		got = append(got, string(p))
	}
}

// replayConn reads the same bytes over and over: DMB's answers without
// the network, for the benchmark of the client's read path.
type replayConn struct {
	net.Conn
	data []byte
	at   int
}

func (c *replayConn) Read(p []byte) (int, error) {
	n := copy(p, c.data[c.at:])
	c.at = (c.at + n) % len(c.data)
	return n, nil
}

// BenchmarkInboxAcks is a client's read path per frame in the uplink:
// taking a frame of acks out of the buffer and reading its id. It must
// not allocate.
func BenchmarkInboxAcks(b *testing.B) {
	var stream []byte
	for id := range 16 {
		stream = wsframe.AppendText(stream, protocol.AppendAck(nil, json.RawMessage(strconv.Itoa(1000+id))))
	}
	in := newInbox(&upgradedConn{Conn: &replayConn{data: stream}}, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		p, err := in.next()
		if err != nil {
			b.Fatal(err)
		}
		if f := readFrame(p); f.kind != frameAck || !f.ok {
			b.Fatalf("%q: %+v", p, f)
		}
	}
}

func TestCloseDoesNotWaitOnAWriteThatIsStuck(t *testing.T) {
	defer func(d time.Duration) { closeWait = d }(closeWait)
	closeWait = 200 * time.Millisecond
	conn, peer := net.Pipe() // the peer never reads
	defer peer.Close()
	c := &client{ended: make(chan struct{}), conn: &upgradedConn{Conn: conn}, run: &runClock{start: time.Now()}, lat: &histogram{}}
	c.in = newInbox(c.conn, 4096)
	c.startReading()
	stuck := make(chan error, 1)
	go func() { stuck <- c.conn.writeFrame(wsframe.OpText, []byte("never read")) }()
	for deadline := time.Now().Add(5 * time.Second); c.conn.mu.TryLock(); { // until the write holds the lock
		c.conn.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("the write never started")
		}
		runtime.Gosched()
	}
	closed := make(chan struct{})
	go func() {
		c.close(websocket.StatusNormalClosure, "done")
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("close still waits on the stuck write")
	}
	if err := <-stuck; err == nil {
		t.Error("the stuck write returned no error")
	}
}

// chunkConn hands out data in reads of at most size bytes, then io.EOF;
// what is written to it is dropped.
type chunkConn struct {
	net.Conn
	data []byte
	size int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.size)], c.data)
	c.data = c.data[n:]
	return n, nil
}

func (c *chunkConn) Write(p []byte) (int, error) { return len(p), nil }

// readAll reads messages from data in reads of size bytes until an error,
// and returns them with the kind of that error.
func readAll(t *testing.T, data []byte, size, limit int) ([]string, string) {
	in := newInbox(&upgradedConn{Conn: &chunkConn{data: data, size: size}}, limit)
	var got []string
	for {
		p, err := in.next()
		var ce websocket.CloseError
		switch {
		case err == nil:
			if len(p) > limit {
				t.Fatalf("message of %d bytes over the limit %d", len(p), limit)
			}
			got = append(got, string(p))
			continue
		case errors.Is(err, wsframe.ErrProtocol):
			return got, "protocol"
		case errors.Is(err, errTooBig):
			return got, "too big"
		case errors.As(err, &ce):
			return got, "close " + strconv.Itoa(int(ce.Code))
		case errors.Is(err, io.EOF):
			return got, "EOF"
		default:
			t.Fatalf("unexpected error %v", err)
		}
	}
}

// FuzzInbox checks, for any bytes from DMB, that the client's reader ends
// with a known kind of error, hands out no message over its limit, and
// reads the same messages however the bytes are cut into reads.
func FuzzInbox(f *testing.F) {
	f.Add(bytes.Join([][]byte{frame(0x81, "a"), frame(0x89, "p"), frame(0x82, strings.Repeat("y", 300)),
		frame(0x01, "fr"), frame(0x8a, ""), frame(0x80, "ag"), frame(0x88, "\x0f\xa0going")}, nil), uint8(1))
	f.Add(bytes.Join([][]byte{frame(0x81, "ok"), frame(0x81, "masked", 1, 2, 3, 4)}, nil), uint8(3))
	f.Add(frame(0x88, "\x03"), uint8(0))
	f.Add(frame(0x88, "\x03\xed"), uint8(2))
	f.Add(append(frame(0x01, strings.Repeat("z", 200)), frame(0x80, strings.Repeat("z", 200))...), uint8(7))
	f.Fuzz(func(t *testing.T, data []byte, cut uint8) {
		const limit = 300
		want, wantEnd := readAll(t, data, len(data)+1, limit)
		got, end := readAll(t, data, int(cut%17)+1, limit)
		if !slices.Equal(got, want) || end != wantEnd {
			t.Fatalf("in reads of %d: %q, %s; in one read: %q, %s", cut%17+1, got, end, want, wantEnd)
		}
	})
}
