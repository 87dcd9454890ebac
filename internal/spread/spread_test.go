package spread

import (
	"testing"
	"time"
)

func TestAShareLengthensByAtMostAQuarter(t *testing.T) {
	const d = 10 * time.Second
	if got := Share(0).Of(d); got != d {
		t.Errorf("share 0 of %s: %s", d, got)
	}
	if got, most := Share(255).Of(d), d+d/4; got >= most || got < d+d/4-d/100 {
		t.Errorf("share 255 of %s: %s, want just under %s", d, got, most)
	}
	// Drawn shares cover the range: connections that began together end
	// over a quarter of the timeout, not together.
	lo, hi := Share(255), Share(0)
	for range 1000 {
		s := New()
		lo, hi = min(lo, s), max(hi, s)
	}
	if lo > 16 || hi < 240 {
		t.Errorf("1000 shares drawn between %d and %d of 0 to 255", lo, hi)
	}
}

func TestADeadlineMovesByTheShareOfWhatIsLeft(t *testing.T) {
	if got := Share(255).Deadline(time.Time{}); !got.IsZero() {
		t.Errorf("no deadline became %s", got)
	}
	past := time.Now().Add(-time.Second)
	if got := Share(255).Deadline(past); !got.Equal(past) {
		t.Errorf("a deadline past moved by %s", got.Sub(past))
	}
	at := time.Now().Add(time.Second)
	got := Share(128).Deadline(at) // an eighth of what is left
	if moved := got.Sub(at); moved < 120*time.Millisecond || moved > 126*time.Millisecond {
		t.Errorf("half the share of 1 s left moved the deadline by %s, want 125 ms", moved)
	}
}
