package protocol_test

import (
	"testing"

	"github.com/dmb-broker/dmb/protocol"
)

var (
	clientFrame100 = []byte(`{"event":"dmb:message","data":{"text":"` + string(make100()) + `"},"id":12345}`)
	command100     = []byte(`{"type":"broadcast","data":{"text":"` + string(make100()) + `"},"id":"m-9"}`)
)

func make100() []byte {
	b := make([]byte, 80)
	for i := range b {
		b[i] = 'x'
	}
	return b
}

// BenchmarkDecodeClientFrame is the uplink's per-frame decode.
func BenchmarkDecodeClientFrame(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := protocol.DecodeClientFrame(clientFrame100); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeCommand is the downlink's per-message decode.
func BenchmarkDecodeCommand(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := protocol.DecodeCommand(command100); err != nil {
			b.Fatal(err)
		}
	}
}
