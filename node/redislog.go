package node

import (
	"context"
	"fmt"
	"log/slog"
)

// RedisLogger adapts a slog.Logger for go-redis's internal messages (pool
// dial failures and the like), at debug level: DMB logs what they mean for
// the node itself, once, where it handles the error. Install it with
// redis.SetLogger, which is process-wide.
func RedisLogger(log *slog.Logger) interface {
	Printf(ctx context.Context, format string, v ...any)
} {
	return redisLogger{log.With("component", "go-redis")}
}

type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, fmt.Sprintf(format, v...))
}
