// Package metrics declares every Prometheus series a DMB node exports, in the
// dmb_ namespace, registered on a registry of the node's own so that several
// nodes can live in one process (as in the integration tests). Labels have
// bounded cardinality: service names, kinds, reasons and close codes, never
// a cid.
package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Kinds of messages, the values of the "kind" label.
const (
	KindMessage      = "message"      // client -> backend
	KindBroadcast    = "broadcast"    // backend -> clients
	KindDirect       = "direct"       // backend -> client
	KindKick         = "kick"         // backend -> client
	KindRegister     = "register"     // bk_connect / bk_disconnect
	KindAck          = "ack"          // dmb:ack to a client
	KindError        = "error"        // dmb:error to a client, error to a backend
	KindConnected    = "connected"    // dmb:connected / client_connected
	KindDisconnected = "disconnected" // client_disconnected
	KindMessageAck   = "bk_message_ack"
	// 1.1
	KindJoin      = "join"       // join by a backend or a client
	KindLeave     = "leave"      // leave by a backend or a client
	KindRoom      = "room"       // backend -> the members of a room
	KindPresence  = "presence"   // a presence request, and each node's answer
	KindRoomEvent = "room_event" // dmb:joined / dmb:left to a client, room_joined / room_left to a backend
	KindNodeLost  = "node_lost"  // client_disconnected for a client of a node that died
	KindSession   = "session"    // dmb:session: a client's session token again, after its rooms changed
	KindResumed   = "resumed"    // resumed: a node closes an older connection of a resumed session
)

// Reasons for drops, the values of the "reason" label.
const (
	DropSlowConsumer  = "slow_consumer"
	DropNoBackend     = "no_backend"
	DropBrokerDown    = "broker_unavailable"
	DropMalformed     = "malformed"
	DropUnknownBKID   = "unknown_bkid"
	DropClientError   = "client_error"
	DropUnknownClient = "unknown_client"
	DropQueueFull     = "queue_full"
	DropShuttingDown  = "shutting_down"
)

// Reasons for closing a slow consumer besides its queue's frames: the bytes
// its queue held (DMB_SEND_QUEUE_BYTES), or more than its share while the
// node's queues held their budget (DMB_QUEUE_BUDGET).
const (
	DropSlowConsumerBytes = "slow_consumer_bytes"
	DropQueueBudget       = "queue_budget"
)

// DropRateLimited counts client frames refused for coming faster than
// DMB_CLIENT_RATE allows, DropBackendBusy those over DMB_BACKEND_RATE.
const (
	DropRateLimited = "rate_limited"
	DropBackendBusy = "backend_busy"
)

// Drops of what backends publish: a payload over DMB_MAX_BACKEND_BYTES,
// and messages that found the downlink's queue full (DMB_DOWNLINK_BUFFER)
// because the fan-out fell behind what Redis delivered.
const (
	DropTooLarge       = "too_large"
	DropDownlinkBehind = "downlink_behind"
)

// Refused room changes: a join past DMB_MAX_CLIENT_ROOMS, and a client's
// join or leave that its token's rooms do not allow.
const (
	DropTooManyRooms = "too_many_rooms"
	DropNotAllowed   = "not_allowed"
)

// Metrics holds a node's series.
type Metrics struct {
	reg prometheus.Registerer

	Connections     *prometheus.GaugeVec   // open client connections by service
	Connects        *prometheus.CounterVec // accepted client connections by service
	Disconnects     *prometheus.CounterVec // closed client connections by close code
	MessagesIn      *prometheus.CounterVec // messages received by kind (from clients and backends)
	MessagesOut     *prometheus.CounterVec // frames queued to clients and events published to backends, by kind
	Deliveries      prometheus.Counter     // frames queued to clients by fan-out (broadcast and direct)
	Drops           *prometheus.CounterVec // messages dropped by reason
	BackendsLive    prometheus.Gauge       // live backends in this node's view
	RedisErrors     *prometheus.CounterVec // failed Redis operations by operation
	UplinkLatency   prometheus.Histogram   // uplink pipeline round trip
	RedisReconnects *prometheus.CounterVec // subscriptions re-established by subscription
	WriteBatch      prometheus.Histogram   // frames a client writer sent in one socket write

	Registrations *prometheus.CounterVec // bk_connect this node answered, by result
	Services      prometheus.Gauge       // services in this node's view of the registry
	Pruned        *prometheus.CounterVec // registry entries dropped after DMB_BACKEND_RETENTION, by what
	Leaves        *prometheus.CounterVec // bk_disconnect handled, and left bkids found live again, by result
	BKIDLookups   *prometheus.CounterVec // look-ups of bkids not in the view, by result

	RegisterRejected *prometheus.CounterVec // register channel payloads refused, by reason

	Refusals     *prometheus.CounterVec // clients refused at connect, by close code
	AcceptsPaced prometheus.Counter     // connections that waited for their turn at DMB_ACCEPT_RATE
	AdminRefused *prometheus.CounterVec // admin requests refused, by reason

	Nodes       prometheus.Gauge   // live nodes on this Redis, as this node counts them
	NodesLost   prometheus.Counter // dead nodes whose clients this node reported
	RoomMembers prometheus.Gauge   // room memberships of this node's clients

	Resumes   *prometheus.CounterVec // resumes asked for, by result
	Recovered prometheus.Counter     // messages a resume gave from history
}

// Results of a resume, the values of the "result" label of dmb_resumes_total.
const (
	ResumeRecovered = "recovered" // resumed, nothing missing
	ResumeGap       = "gap"       // resumed, history no longer covered the gap
	ResumeRefused   = "refused"   // a fresh session: token invalid, of another service or user, used, or past the window
	ResumeFailed    = "failed"    // closed with 1013 to try again: Redis did not answer in time, or with an error
)

// Results of a bk_connect, the values of the "result" label of
// dmb_registrations_total.
const (
	RegistrationAcked   = "acked"
	RegistrationLimited = "service_limit" // a new service over DMB_MAX_SERVICES
)

// Results of a look-up of a bkid not in the view, the values of the
// "result" label of dmb_bkid_lookups_total.
const (
	LookupFound   = "found"   // Redis knows it
	LookupUnknown = "unknown" // Redis does not
	LookupCached  = "cached"  // known unknown: no Redis look-up
	LookupLimited = "limited" // over the look-up budget: dropped without one
)

// New creates the series and registers them, with the Go runtime and process
// collectors, on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		Connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "connects_total", Help: "Accepted client connections by service.",
		}, []string{"service"}),
		WriteBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "dmb", Name: "write_batch_frames", Help: "Frames a client's writer found queued and sent in one socket write.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		Connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "dmb", Name: "connections", Help: "Open client connections by service.",
		}, []string{"service"}),
		Disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "disconnects_total", Help: "Closed client connections by close code.",
		}, []string{"code"}),
		MessagesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "messages_in_total", Help: "Messages received from clients and backends, by kind.",
		}, []string{"kind"}),
		MessagesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "messages_out_total", Help: "Frames queued to clients and events published to backends, by kind.",
		}, []string{"kind"}),
		Deliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "dmb", Name: "deliveries_total", Help: "Broadcast and direct frames queued to clients.",
		}),
		Drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "drops_total", Help: "Messages dropped, by reason.",
		}, []string{"reason"}),
		BackendsLive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "dmb", Name: "backends_live", Help: "Live backends in this node's view.",
		}),
		RedisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "redis_errors_total", Help: "Failed Redis operations, by operation.",
		}, []string{"op"}),
		UplinkLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "dmb", Name: "uplink_publish_seconds", Help: "Round trip of one uplink publish pipeline.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		RedisReconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "redis_subscription_up_total", Help: "Redis subscriptions established (first time and after reconnects), by subscription.",
		}, []string{"subscription"}),
		Registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "registrations_total", Help: "bk_connect answered by this node: acked, or refused because the service would be one more than DMB_MAX_SERVICES.",
		}, []string{"result"}),
		Services: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "dmb", Name: "services", Help: "Services in this node's view of the registry.",
		}),
		Pruned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "registry_pruned_total", Help: "Backends and services dropped from the registry after DMB_BACKEND_RETENTION without a live backend.",
		}, []string{"what"}),
		Leaves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "backend_leaves_total", Help: "bk_disconnect handled (left), and left backends still subscribed at the next liveness check (back).",
		}, []string{"result"}),
		RegisterRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "register_rejected_total", Help: "Payloads on the register channel refused (invalid JSON, unknown type, invalid nonce, service or bkid, nonce reused), by reason.",
		}, []string{"reason"}),
		AdminRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "admin_refused_total", Help: "Requests the admin listener refused: a Host or Origin a web page could send, or a missing token.",
		}, []string{"reason"}),
		Refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "refusals_total", Help: "Clients refused when they connected, by close code (also in dmb_disconnects_total).",
		}, []string{"code"}),
		AcceptsPaced: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "dmb", Name: "accepts_paced_total", Help: "Client connections that waited for their turn at the node's accept pace (DMB_ACCEPT_RATE).",
		}),
		BKIDLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "bkid_lookups_total", Help: "Look-ups of bkids not in this node's view: found or unknown in Redis, cached as unknown, or limited (dropped without a look-up).",
		}, []string{"result"}),
		Nodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "dmb", Name: "nodes", Help: "Live nodes on this node's Redis (fresh heartbeats), as presence answers count them.",
		}),
		NodesLost: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "dmb", Name: "nodes_lost_total", Help: "Dead nodes whose clients this node reported to their backends (client_disconnected, node lost).",
		}),
		RoomMembers: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "dmb", Name: "room_members", Help: "Room memberships of this node's clients.",
		}),
		Resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "dmb", Name: "resumes_total", Help: "Resumes clients asked for: recovered, gap (resumed, recovered false), refused or failed (a fresh session instead).",
		}, []string{"result"}),
		Recovered: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "dmb", Name: "recovered_messages_total", Help: "Messages resumed clients got from history.",
		}),
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.Connections, m.Disconnects, m.MessagesIn, m.MessagesOut, m.Deliveries,
		m.Drops, m.BackendsLive, m.RedisErrors, m.UplinkLatency, m.RedisReconnects,
		m.Connects, m.WriteBatch,
		m.Registrations, m.Services, m.Pruned, m.Leaves, m.BKIDLookups, m.RegisterRejected,
		m.Refusals, m.AcceptsPaced, m.AdminRefused, m.Nodes, m.NodesLost, m.RoomMembers,
		m.Resumes, m.Recovered,
	)
	for _, r := range []string{ResumeRecovered, ResumeGap, ResumeRefused, ResumeFailed} {
		m.Resumes.WithLabelValues(r)
	}
	for _, r := range []string{RegistrationAcked, RegistrationLimited} {
		m.Registrations.WithLabelValues(r)
	}
	for _, w := range []string{"backend", "service"} {
		m.Pruned.WithLabelValues(w)
	}
	for _, r := range []string{"left", "back"} {
		m.Leaves.WithLabelValues(r)
	}
	for _, r := range []string{LookupFound, LookupUnknown, LookupCached, LookupLimited} {
		m.BKIDLookups.WithLabelValues(r)
	}
	// Series with a known, bounded set of labels exist from the start, so
	// that rates and alerts see a zero before the first event.
	for _, k := range []string{KindMessage, KindBroadcast, KindDirect, KindKick, KindRegister,
		KindJoin, KindLeave, KindRoom, KindPresence, KindResumed} {
		m.MessagesIn.WithLabelValues(k)
	}
	for _, k := range []string{KindMessage, KindBroadcast, KindDirect, KindAck, KindError, KindConnected, KindDisconnected, KindMessageAck,
		KindRoom, KindPresence, KindRoomEvent, KindNodeLost, KindSession} {
		m.MessagesOut.WithLabelValues(k)
	}
	for _, r := range []string{DropSlowConsumer, DropNoBackend, DropBrokerDown, DropMalformed, DropUnknownBKID,
		DropClientError, DropUnknownClient, DropQueueFull, DropShuttingDown, DropTooManyRooms, DropNotAllowed} {
		m.Drops.WithLabelValues(r)
	}
	for _, op := range []string{"uplink", "publish", "register", "refresh", "lookup", "prune", "nodes"} {
		m.RedisErrors.WithLabelValues(op)
	}
	return m
}

// QueuedFrames exports the frames waiting in all send queues, read from f
// when Prometheus scrapes, so that the fan-out path pays nothing for it.
func (m *Metrics) QueuedFrames(f func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "dmb", Name: "send_queue_frames", Help: "Frames waiting in all client send queues.",
	}, f))
}

// QueuedBytes registers f as the bytes that the client send queues take of
// the node's budget.
func (m *Metrics) QueuedBytes(f func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "dmb", Name: "send_queue_bytes", Help: "Bytes that the client send queues take of the node's budget (DMB_QUEUE_BUDGET).",
	}, f))
}

// Disconnected counts a closed client connection.
func (m *Metrics) Disconnected(code int) {
	m.Disconnects.WithLabelValues(strconv.Itoa(code)).Inc()
}
