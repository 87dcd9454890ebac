package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/dmb-broker/dmb/internal/wsframe"
)

// inbox reads what DMB sends on one client connection: the answer to the
// opening handshake, then frames; only the client's reader uses it after
// the handshake. The clients read and write their frames themselves rather
// than through coder/websocket, whose reader takes a lock with a select and
// resets its state for every message: that was the largest part of the
// load tool's own CPU after the system calls, and the tool shares the
// machine with the node it measures.
type inbox struct {
	conn  *upgradedConn
	limit int // the largest message taken

	buf  []byte // buf[r:w] is read and not yet handed out
	r, w int
	full bool // the last read filled buf

	fragOp byte   // opcode of the fragmented message being put together; 0 when none
	frag   []byte // what came of it so far

	event string // an event stream: the name of the event being read

	// idle, when set, runs each time the inbox is about to wait for bytes
	// from the connection: all it had is handed out.
	idle func()
}

// An inbox starts small, as most clients wait, and doubles each time a
// read fills it, up to inboxMax: then a busy client takes what DMB wrote to
// it in few reads.
const (
	inboxSize = 1 << 10
	inboxMax  = 64 << 10
)

var (
	errMaskedFrame = fmt.Errorf("%w: masked frame from the server", wsframe.ErrProtocol)
	errStray       = fmt.Errorf("%w: continuation without a message, or a message inside one", wsframe.ErrProtocol)
	errTooBig      = errors.New("message over the read limit")
)

func newInbox(conn *upgradedConn, limit int) *inbox {
	return &inbox{conn: conn, limit: limit, buf: make([]byte, inboxSize)}
}

// next returns the next text or binary message; its payload is valid until
// the following call. It answers a ping with a pong and a close frame with
// one of its own, unless one was sent, and then returns the peer's close
// as a websocket.CloseError. A frame that breaks RFC 6455, or a message
// over the limit, ends the connection with 1002 or 1009.
func (in *inbox) next() ([]byte, error) {
	if in.conn.lines {
		return in.nextLine()
	}
	for {
		h, n, err := wsframe.ParseHeader(in.buf[in.r:in.w])
		switch {
		case err != nil:
			return nil, in.fail(websocket.StatusProtocolError, err)
		case n > 0 && h.Length > in.limit:
			return nil, in.fail(websocket.StatusMessageTooBig, errTooBig)
		}
		if n == 0 || in.w-in.r-n < h.Length {
			need := in.w - in.r + 1 // more of the header
			if n > 0 {
				need = n + h.Length
			}
			if err := in.fill(need); err != nil {
				return nil, err
			}
			continue
		}
		if h.Masked {
			return nil, in.fail(websocket.StatusProtocolError, errMaskedFrame)
		}
		p := in.buf[in.r+n : in.r+n+h.Length]
		in.r += n + h.Length
		switch h.Op {
		case wsframe.OpText, wsframe.OpBinary:
			if in.fragOp != 0 {
				return nil, in.fail(websocket.StatusProtocolError, errStray)
			}
			if h.Fin {
				return p, nil
			}
			in.fragOp, in.frag = h.Op, append(in.frag[:0], p...)
		case wsframe.OpContinuation:
			if in.fragOp == 0 {
				return nil, in.fail(websocket.StatusProtocolError, errStray)
			}
			if len(in.frag)+len(p) > in.limit {
				return nil, in.fail(websocket.StatusMessageTooBig, errTooBig)
			}
			in.frag = append(in.frag, p...)
			if h.Fin {
				in.fragOp = 0
				return in.frag, nil
			}
		case wsframe.OpPing:
			// After our close frame the pong is not sent: DMB's close comes next.
			if err := in.conn.writeFrame(wsframe.OpPong, p); err != nil && !errors.Is(err, errCloseSent) {
				return nil, err
			}
		case wsframe.OpClose:
			ce, err := parseClose(p)
			if err != nil {
				return nil, in.fail(websocket.StatusProtocolError, err)
			}
			// Echo the code, as coder/websocket does; ignored when ours went first.
			_ = in.conn.writeFrame(wsframe.OpClose, p[:min(len(p), 2)])
			return nil, ce
		}
		// OpPong: nothing to do.
	}
}

// lastLine starts DMB's last frame on a TCP connection or an event stream
// (docs/protocol.md, section 12): {"event":"dmb:close","code":N,"reason":"..."}.
var lastLine = []byte(`{"event":"dmb:close"`)

// nextLine is next on a TCP connection or an event stream: the next line,
// or the next event's data, that is not blank, without its ending (\n or
// \r\n). DMB's last frame, dmb:close, is returned as a
// websocket.CloseError, as a WebSocket's close frame is; the client then
// ends its side. A frame over the limit ends the connection.
func (in *inbox) nextLine() ([]byte, error) {
	for {
		var line []byte
		var err error
		if in.conn.events {
			var name string
			name, line, err = in.nextEvent()
			if err == nil && name != "" && name != "message" {
				if s, ok := in.conn.Conn.(*sseStream); ok && name == "post" {
					s.postTo(line)
				}
				continue // not a frame
			}
		} else {
			line, err = in.readLine(in.limit)
		}
		switch {
		case err != nil:
			return nil, err
		case len(line) > in.limit:
			return nil, in.fail(websocket.StatusMessageTooBig, errTooBig)
		case len(bytes.TrimSpace(line)) == 0:
			continue
		case bytes.HasPrefix(line, lastLine):
			var last struct {
				Code   int    `json:"code"`
				Reason string `json:"reason"`
			}
			if err := json.Unmarshal(line, &last); err != nil || last.Code < 1000 || last.Code >= 5000 {
				return nil, in.fail(websocket.StatusProtocolError, fmt.Errorf("last frame unreadable: %.100q", line))
			}
			_ = in.conn.writeFrame(wsframe.OpClose, nil) // the client leaves
			return nil, websocket.CloseError{Code: websocket.StatusCode(last.Code), Reason: last.Reason}
		}
		return line, nil
	}
}

// nextEvent reads an event stream up to the next data line and returns
// its data and the name of its event ("" when it has none: a message).
// DMB writes each frame as the one data line of an event, so a data line
// is a frame; comments and other fields are passed over.
func (in *inbox) nextEvent() (name string, data []byte, err error) {
	for {
		line, err := in.readLine(in.limit + len("data: "))
		if err != nil {
			return "", nil, err
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch {
		case len(line) == 0: // the end of an event
			in.event = ""
		case string(field) == "event":
			in.event = string(value)
		case string(field) == "data":
			return in.event, value, nil
		}
	}
}

// readLine returns the next line, without its ending (\n or \r\n); its
// bytes are valid until the next read. A line over limit ends the
// connection.
func (in *inbox) readLine(limit int) ([]byte, error) {
	scanned := 0 // of buf[r:w], bytes known to hold no line break
	for {
		i := bytes.IndexByte(in.buf[in.r+scanned:in.w], '\n')
		if i < 0 {
			scanned = in.w - in.r
			if scanned > limit {
				return nil, in.fail(websocket.StatusMessageTooBig, errTooBig)
			}
			if err := in.fill(scanned + 1); err != nil {
				return nil, err
			}
			continue
		}
		line := in.buf[in.r : in.r+scanned+i]
		in.r += scanned + i + 1
		return bytes.TrimSuffix(line, []byte{'\r'}), nil
	}
}

// fill reads from the connection until buf[r:] holds need bytes or more
// than before, whichever comes first, making room as needed.
func (in *inbox) fill(need int) error {
	switch {
	case in.r == in.w:
		in.r, in.w = 0, 0
	case len(in.buf)-in.r < need:
		in.w = copy(in.buf, in.buf[in.r:in.w])
		in.r = 0
	}
	if size := len(in.buf); need > size || in.full && size < inboxMax {
		grown := make([]byte, max(need, 2*size))
		copy(grown, in.buf[:in.w])
		in.buf = grown
	}
	if in.idle != nil {
		in.idle()
	}
	m, err := in.conn.Read(in.buf[in.w:])
	in.full = in.w+m == len(in.buf)
	in.w += m
	if m > 0 {
		return nil
	}
	return err
}

// readHead reads an HTTP answer up to the blank line that ends its header
// and returns its lines, each ending in CRLF.
func (in *inbox) readHead() ([]byte, error) {
	for {
		if i := bytes.Index(in.buf[in.r:in.w], []byte("\r\n\r\n")); i >= 0 {
			head := in.buf[in.r : in.r+i+2]
			in.r += i + 4
			return head, nil
		}
		if in.w-in.r >= maxAnswer {
			return nil, fmt.Errorf("answer header over %d bytes", maxAnswer)
		}
		if err := in.fill(in.w - in.r + 1); err != nil {
			return nil, err
		}
	}
}

// fail closes the connection with code, as an endpoint must on such
// errors, and returns err.
func (in *inbox) fail(code websocket.StatusCode, err error) error {
	_ = in.conn.writeFrame(wsframe.OpClose, closePayload(code, ""))
	return err
}

// closePayload is a close frame's payload: code, then reason, cut to the
// 123 bytes a control frame has room for.
func closePayload(code websocket.StatusCode, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(code)), reason[:min(len(reason), 123)]...)
}

// parseClose reads a close frame's payload (RFC 6455, sections 5.5.1 and
// 7.4): no payload, or a code that may be sent and a UTF-8 reason.
func parseClose(p []byte) (websocket.CloseError, error) {
	switch len(p) {
	case 0:
		return websocket.CloseError{Code: websocket.StatusNoStatusRcvd}, nil
	case 1:
		return websocket.CloseError{}, fmt.Errorf("%w: close payload of 1 byte", wsframe.ErrProtocol)
	}
	code := binary.BigEndian.Uint16(p)
	switch {
	case code < 1000 || code >= 5000 || code >= 1016 && code < 3000 || code == 1004 || code == 1005 || code == 1006 || code == 1015:
		return websocket.CloseError{}, fmt.Errorf("%w: close code %d", wsframe.ErrProtocol, code)
	case !utf8.Valid(p[2:]):
		return websocket.CloseError{}, fmt.Errorf("%w: close reason not UTF-8", wsframe.ErrProtocol)
	}
	return websocket.CloseError{Code: websocket.StatusCode(code), Reason: string(p[2:])}, nil
}
