package main

import (
	"bufio"
	"net"
	"slices"
	"sync"
	"testing"
)

// writeLog is a connection that records each write it is given.
type writeLog struct {
	net.Conn
	mu     sync.Mutex
	writes []string
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

func TestCorkedWritesGoOutAsOneWriteInOrder(t *testing.T) {
	log := &writeLog{}
	c := &upgradedConn{Conn: log, r: bufio.NewReader(nil)}

	c.cork()
	for _, s := range []string{"one", "two"} {
		if n, err := c.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("corked Write(%q) = %d, %v", s, n, err)
		}
	}
	done := make(chan struct{})
	go func() { // what the reader goroutine writes meanwhile (a pong) joins them
		defer close(done)
		_, _ = c.Write([]byte("pong"))
	}()
	<-done
	if len(log.writes) != 0 {
		t.Fatalf("corked writes reached the connection: %q", log.writes)
	}
	if err := c.uncork(); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("after"))
	if err := c.uncork(); err != nil { // nothing held: no write
		t.Fatal(err)
	}
	if want := []string{"onetwopong", "after"}; !slices.Equal(log.writes, want) {
		t.Errorf("writes = %q, want %q", log.writes, want)
	}
}
