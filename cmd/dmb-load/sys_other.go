//go:build !unix

package main

import "time"

func ephemeralPorts() int       { return 16384 } // IANA's range, 49152-65535
func fileLimit() uint64         { return 0 }
func processCPU() time.Duration { return 0 }
