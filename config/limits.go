package config

import "time"

// validateLimits checks the settings that bound what clients may cost.
func (c *Config) validateLimits() Errors {
	var errs Errors
	if c.SendQueueBytes < 1024 {
		errs = append(errs, bad("DMB_SEND_QUEUE_BYTES", c.SendQueueBytes, "a whole number of at least 1024, such as 4194304"))
	}
	if c.ClientSendBuffer != 0 && (c.ClientSendBuffer < 4096 || c.ClientSendBuffer > 1<<30) {
		errs = append(errs, bad("DMB_CLIENT_SEND_BUFFER", c.ClientSendBuffer, "0 (the kernel's own) or bytes from 4096 to 1073741824, such as 1048576"))
	}
	if c.QueueBudget < int64(c.SendQueueBytes) {
		errs = append(errs, bad("DMB_QUEUE_BUDGET", c.QueueBudget, "a whole number of at least DMB_SEND_QUEUE_BYTES (%d), such as 1073741824", c.SendQueueBytes))
	}
	if c.ClientRate < 0 {
		errs = append(errs, bad("DMB_CLIENT_RATE", c.ClientRate, "frames a second, 0 or more, such as 100"))
	}
	if c.BackendRate < 0 {
		errs = append(errs, bad("DMB_BACKEND_RATE", c.BackendRate, "messages a second, 0 or more, such as 20000"))
	}
	if c.ClientBurst < 1 {
		errs = append(errs, bad("DMB_CLIENT_BURST", c.ClientBurst, "a whole number of at least 1, such as 200"))
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{
		{"DMB_HANDSHAKE_TIMEOUT", c.HandshakeTimeout}, {"DMB_FRAME_TIMEOUT", c.FrameTimeout},
		{"DMB_HTTP_IDLE_TIMEOUT", c.IdleTimeout}, {"DMB_REFUSAL_LOG_INTERVAL", c.RefusalLogEvery},
	} {
		if d.d <= 0 {
			errs = append(errs, bad(d.name, d.d, "a positive duration, such as 10s"))
		}
	}
	if c.MaxHeaderBytes < 1024 {
		errs = append(errs, bad("DMB_MAX_HEADER_BYTES", c.MaxHeaderBytes, "a whole number of at least 1024, such as 16384"))
	}
	if c.MaxClients < 0 {
		errs = append(errs, bad("DMB_MAX_CLIENTS", c.MaxClients, "a whole number, 0 for what the open-file limit allows"))
	}
	if c.MaxClientRooms < 1 {
		errs = append(errs, bad("DMB_MAX_CLIENT_ROOMS", c.MaxClientRooms, "a whole number of at least 1"))
	}
	if c.MaxClientsPerIP < 0 {
		errs = append(errs, bad("DMB_MAX_CLIENTS_PER_ADDR", c.MaxClientsPerIP, "a whole number, 0 for no limit"))
	}
	if c.HandshakeRate < 0 {
		errs = append(errs, bad("DMB_HANDSHAKE_RATE", c.HandshakeRate, "handshakes a second, 0 for no limit"))
	}
	if c.AcceptRate < 0 {
		errs = append(errs, bad("DMB_ACCEPT_RATE", c.AcceptRate, "connections a second, 0 for no pace"))
	}
	if c.DownlinkBuffer < 1<<20 {
		errs = append(errs, bad("DMB_DOWNLINK_BUFFER", c.DownlinkBuffer, "a whole number of at least 1048576, such as 67108864"))
	}
	if c.MaxBackendBytes < 1024 || c.MaxBackendBytes > c.DownlinkBuffer {
		errs = append(errs, bad("DMB_MAX_BACKEND_BYTES", c.MaxBackendBytes, "a whole number from 1024 to DMB_DOWNLINK_BUFFER, such as 1048576"))
	}
	if c.SendQueueBytes < c.MaxBackendBytes+256 {
		errs = append(errs, bad("DMB_SEND_QUEUE_BYTES", c.SendQueueBytes, "at least DMB_MAX_BACKEND_BYTES (%d) and 256, so that the largest message fits a queue", c.MaxBackendBytes))
	}
	return errs
}
