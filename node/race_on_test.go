//go:build race

package node_test

// raceEnabled: the race detector's shadow memory makes the process's
// resident memory mean nothing of DMB's.
const raceEnabled = true
