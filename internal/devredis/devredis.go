// Package devredis gives the dev mode's embedded Redis (miniredis, which
// has no functions) DMB's one function, so that the demo's messages are
// recoverable there as on a real Redis: FUNCTION LOAD is accepted, and
// FCALL dmb_publish stores the payload in the backend's history and
// publishes it with its offset, as the Lua library does (package
// history). The dev mode's history is not trimmed: it lives as long as the
// process, in memory.
package devredis

import (
	"strconv"
	"strings"

	"github.com/alicebob/miniredis/v2"
	"github.com/alicebob/miniredis/v2/server"

	"github.com/dmb-broker/dmb/history"
)

// AddFunctions registers FUNCTION and FCALL on mr.
func AddFunctions(mr *miniredis.Miniredis) error {
	srv := mr.Server()
	if err := srv.Register("FUNCTION", func(c *server.Peer, _ string, args []string) {
		if len(args) > 0 && strings.EqualFold(args[0], "LOAD") {
			c.WriteInline("dmb") // the library's name
			return
		}
		c.WriteError("ERR only FUNCTION LOAD in the dev mode's Redis")
	}); err != nil {
		return err
	}
	return srv.Register("FCALL", func(c *server.Peer, _ string, args []string) {
		if len(args) != 4 || args[0] != history.Function || args[1] != "1" {
			c.WriteError("ERR the dev mode's Redis has one function: FCALL " + history.Function + " 1 <downlink channel> <payload>")
			return
		}
		channel, payload := args[2], args[3]
		rest, ok := strings.CutPrefix(strings.TrimLeft(payload, " \t\r\n"), "{")
		body, closed := strings.CutSuffix(strings.TrimRight(payload, " \t\r\n"), "}")
		if !ok || !closed || !strings.HasPrefix(strings.TrimLeft(rest, " \t\r\n"), `"`) {
			c.WriteError("ERR " + history.Function + ": one key (the downlink channel) and a JSON object")
			return
		}
		id, err := mr.XAdd(history.Key(channel), "*", []string{"p", payload})
		if err != nil {
			c.WriteError("ERR " + err.Error())
			return
		}
		c.WriteInt(mr.Publish(channel, body+`,"offset":`+strconv.Quote(id)+`}`))
	})
}
