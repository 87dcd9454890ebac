package broker

import "sync/atomic"

// libraryDiscards counts the frames that the WebSocket library handed a
// closing session's reader, which threw them away. Since the connection
// drops a closing session's data frames itself (discardFrames), that is at
// most the frame the library had begun when the session began to close,
// however much its client floods; the tests hold it to that.
var libraryDiscards atomic.Int64
