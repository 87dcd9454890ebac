//go:build !unix

package node

// openFileLimit returns 0 where the system has no such limit to read.
func openFileLimit() uint64 { return 0 }
