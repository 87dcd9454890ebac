package broker

import "runtime"

// readyClients bounds the clients waiting for a flusher; a client that
// finds the list full gets a writer goroutine of its own.
const readyClients = 1 << 16

// flush runs the writers of the clients handed to it (flushLater), one
// after the other, until Shutdown closes the list. A few flushers, one per
// processor, serve every client that has frames queued and a socket that
// takes them at once: starting a goroutine per client and per wake-up, with
// its stack to grow and its scheduling, cost more than a fifth of a
// broadcast's CPU when each client has one frame to write.
func (b *Broker) flush() {
	defer b.flushers.Done()
	for c := range b.ready {
		c.flushReady()
	}
}

// flushLater hands c's writer to a flusher; false if none can take it now.
// The send queue's lock is held: it never waits.
func (b *Broker) flushLater(c *client) bool {
	if !b.flushersOn.Load() {
		return false
	}
	select {
	case b.ready <- c:
		return true
	default:
		return false
	}
}

// stopLoops stops the watchdog and the flushers and waits for them. Every
// session has ended, so no writer can start any more (sendQueue.stop), and
// none waits for a flusher.
func (b *Broker) stopLoops() {
	b.cancel()
	b.watchdog.Wait()
	if b.flushersOn.Swap(false) {
		close(b.ready)
	}
	b.flushers.Wait()
}

// startLoops starts the broker's watchdog and flushers once, when the
// first client is added (b.mu is held); a broker that never had a client
// runs neither. Shutdown stops them.
func (b *Broker) startLoops() {
	if b.looping {
		return
	}
	b.looping = true
	if b.cfg.WriteTimeout > 0 {
		b.watchdog.Add(1)
		go b.watchWrites()
	}
	for range runtime.GOMAXPROCS(0) {
		b.flushers.Add(1)
		go b.flush()
	}
	b.flushersOn.Store(true)
}
