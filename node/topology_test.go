package node_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dmb-broker/dmb/config"
	"github.com/dmb-broker/dmb/internal/redistest"
	"github.com/dmb-broker/dmb/pubsub"
)

// topology is a Redis deployment that nodes and backends are pointed at.
type topology struct {
	name      string
	sharded   bool // a cluster: sharded pub/sub
	configure func(*config.Config)
	client    func() redis.UniversalClient
	// env returns a clean env on the deployment for one test.
	env func(t *testing.T) *env
}

// currentTopology, when set, is where newEnv puts the tests that run: the
// contract suite sets it for its subtests, which run one at a time.
var currentTopology *topology

func single(s *redistest.Server) *topology {
	return &topology{
		name:      "single",
		configure: func(*config.Config) {},
		client:    func() redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: s.Addr()}) },
	}
}

func clusterTopology(c *redistest.Cluster) *topology {
	topo := &topology{
		name:      "cluster",
		sharded:   true,
		configure: func(cfg *config.Config) { cfg.RedisClusterAddrs = c.Addrs() },
		client: func() redis.UniversalClient {
			return redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
		},
	}
	topo.env = func(t *testing.T) *env {
		e := &env{t: t, topo: topo}
		e.rdb = e.client()
		cc := e.rdb.(*redis.ClusterClient)
		err := cc.ForEachMaster(e.ctx(), func(ctx context.Context, m *redis.Client) error {
			return m.FlushAll(ctx).Err()
		})
		if err != nil {
			t.Fatalf("flush the cluster: %v", err)
		}
		return e
	}
	return topo
}

func sentinelTopology(st *redistest.Sentinel) *topology {
	topo := &topology{
		name: "sentinel",
		configure: func(cfg *config.Config) {
			cfg.RedisSentinelAddrs, cfg.RedisSentinelMaster = st.Addrs(), st.Name
		},
		client: func() redis.UniversalClient {
			return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: st.Name, SentinelAddrs: st.Addrs()})
		},
	}
	topo.env = func(t *testing.T) *env {
		e := &env{t: t, topo: topo}
		e.rdb = e.client()
		if err := e.rdb.FlushAll(e.ctx()).Err(); err != nil {
			t.Fatalf("flush the master: %v", err)
		}
		return e
	}
	return topo
}

// contract is the integration tests of the wire contract that hold on
// every topology: they run on a single Redis as they are, and again on a
// cluster and behind Sentinel. They hold over every transport too: all
// but the WebSocket-only ones (webSocketOnly, transports_test.go) run
// again with TCP clients and with clients of the HTTP fallback.
var contract = []struct {
	name string
	test func(*testing.T)
}{
	{"BKConnectGetsExactlyOneAckWithThreeNodes", TestBKConnectGetsExactlyOneAckWithThreeNodes},
	{"BKIDsAreDecimalStringsFromACounter", TestBKIDsAreDecimalStringsFromACounter},
	{"ReRegisterWithOwnBKIDKeepsIt", TestReRegisterWithOwnBKIDKeepsIt},
	{"BKIDIsNeverHandedToAnotherService", TestBKIDIsNeverHandedToAnotherService},
	{"BKConnectWithInvalidServiceIsNacked", TestBKConnectWithInvalidServiceIsNacked},
	{"RegistryLivesInRedisSoANodeRestartLosesNoBackend", TestRegistryLivesInRedisSoANodeRestartLosesNoBackend},
	{"BKDisconnectMakesTheBackendNotLiveAtOnce", TestBKDisconnectMakesTheBackendNotLiveAtOnce},
	{"AForgedLeaveIsToldToTheBackendAndHealsAtTheNextLivenessCheck", TestAForgedLeaveIsToldToTheBackendAndHealsAtTheNextLivenessCheck},
	{"NoGapAfterTheAck", TestNoGapAfterTheAck},
	{"BroadcastReachesEveryClientOfTheServiceOnEveryNode", TestBroadcastReachesEveryClientOfTheServiceOnEveryNode},
	{"DirectReachesOneClientWithReplyTo", TestDirectReachesOneClientWithReplyTo},
	{"KickClosesTheClientWith4009AndTheBackendsReason", TestKickClosesTheClientWith4009AndTheBackendsReason},
	{"DirectOrKickToAClientOfAnotherServiceIsNotDelivered", TestDirectOrKickToAClientOfAnotherServiceIsNotDelivered},
	{"EveryNodeAcksAMessageWithIDWithItsDeliveredCount", TestEveryNodeAcksAMessageWithIDWithItsDeliveredCount},
	{"MessagesOfOneBackendReachAClientInPublishOrder", TestMessagesOfOneBackendReachAClientInPublishOrder},
	{"ConnectedFrameCarriesACIDUniqueAcrossNodes", TestConnectedFrameCarriesACIDUniqueAcrossNodes},
	{"BackendHearsClientConnectedAndDisconnected", TestBackendHearsClientConnectedAndDisconnected},
	{"UnknownServiceIsClosedWith4004", TestUnknownServiceIsClosedWith4004},
	{"KnownServiceWithoutLiveBackendIsClosedWith4503", TestKnownServiceWithoutLiveBackendIsClosedWith4503},
	{"ClientsAreSpreadOverLiveBackends", TestClientsAreSpreadOverLiveBackends},
	{"CrashedBackendIsNoticedWithinBackendTimeout", TestCrashedBackendIsNoticedWithinBackendTimeout},
	{"MessageWithIDIsPublishedToTheBackendAndAcked", TestMessageWithIDIsPublishedToTheBackendAndAcked},
	{"DataIsCarriedByteForByte", TestDataIsCarriedByteForByte},
	{"MessageWithoutLiveBackendGetsBackendUnavailable", TestMessageWithoutLiveBackendGetsBackendUnavailable},
	{"ClientMessagesReachTheBackendInOrder", TestClientMessagesReachTheBackendInOrder},
	{"UplinkCarriesNoUnexpectedFields", TestUplinkCarriesNoUnexpectedFields},
	{"MalformedBackendPayloadsAreDroppedCountedAndReported", TestMalformedBackendPayloadsAreDroppedCountedAndReported},
	{"MalformedRegisterPayloadsAreDroppedAndCounted", TestMalformedRegisterPayloadsAreDroppedAndCounted},
	{"DirectToAUserReachesEveryConnectionOnEveryNode", TestDirectToAUserReachesEveryConnectionOnEveryNode},
	{"ShutdownClosesClientsWith1001AndTellsTheirBackends", TestShutdownClosesClientsWith1001AndTellsTheirBackends},
	// 1.1
	{"ClientsOfAKilledNodeAreReportedOnceWithOneSurvivor", TestClientsOfAKilledNodeAreReportedOnceWithOneSurvivor},
	{"ClientsOfAKilledNodeAreReportedOnceWithTwoSurvivors", TestClientsOfAKilledNodeAreReportedOnceWithTwoSurvivors},
	{"ClientsOfAKilledNodeAreReportedByTheNodeRestartedInItsPlace", TestClientsOfAKilledNodeAreReportedByTheNodeRestartedInItsPlace},
	{"RoomsJoinLeaveAndMessagesAcrossNodes", TestRoomsJoinLeaveAndMessagesAcrossNodes},
	{"MessagesOfOneBackendKeepTheirOrderAcrossKinds", TestMessagesOfOneBackendKeepTheirOrderAcrossKinds},
	{"JoinByUserReachesEveryConnectionOfTheUser", TestJoinByUserReachesEveryConnectionOfTheUser},
	{"ClientsJoinTheRoomsTheirTokenAllows", TestClientsJoinTheRoomsTheirTokenAllows},
	{"PresenceAnswersFromEveryNodeAndLeavesWithTheSession", TestPresenceAnswersFromEveryNodeAndLeavesWithTheSession},
	{"ADirectWithMoreIsAProgressAnswer", TestADirectWithMoreIsAProgressAnswer},
	{"BadRoomCommandsHaveADefinedAnswer", TestBadRoomCommandsHaveADefinedAnswer},
	{"AResumedSessionKeepsItsCIDRoomsAndWhatItMissedInOrder", TestAResumedSessionKeepsItsCIDRoomsAndWhatItMissedInOrder},
	{"AResumeClosesTheConnectionStillOpenWith4010", TestAResumeClosesTheConnectionStillOpenWith4010},
	{"ResumesThatCannotBeGetAFreshSession", TestResumesThatCannotBeGetAFreshSession},
	{"AResumeSaysWhenHistoryNoLongerCoversTheGap", TestAResumeSaysWhenHistoryNoLongerCoversTheGap},
	{"ADrainedNodesClientsResumeElsewhereWithNothingLost", TestADrainedNodesClientsResumeElsewhereWithNothingLost},
}

// runContract runs the contract suite on topo, one test at a time.
func runContract(t *testing.T, topo *topology) {
	for _, tc := range contract {
		t.Run(tc.name, func(t *testing.T) {
			currentTopology = topo
			defer func() { currentTopology = nil }()
			tc.test(t)
		})
	}
}

func TestContractOnACluster(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	topo := clusterTopology(c)
	runContract(t, topo)
	t.Run("TrafficResumesAfterAMasterFails", func(t *testing.T) {
		currentTopology = topo
		defer func() { currentTopology = nil }()
		trafficResumesAfter(t, func(b *testBackend) {
			// The master of the backend's downlink: its broadcasts stop
			// until the replica takes over.
			c.FailMaster("dmb:" + b.BKID())
		})
	})
}

func TestContractBehindSentinel(t *testing.T) {
	st := redistest.StartSentinel(t)
	topo := sentinelTopology(st)
	runContract(t, topo)
	t.Run("TrafficResumesAfterTheMasterFails", func(t *testing.T) {
		currentTopology = topo
		defer func() { currentTopology = nil }()
		trafficResumesAfter(t, func(*testBackend) {
			st.Master.Kill()
			st.WaitPromoted()
		})
	})
}

// trafficResumesAfter checks that, with clients on two nodes and a backend
// broadcasting, fail (a Redis failover) costs no client its connection, and
// broadcasts and acked client messages flow again once Redis has healed.
func trafficResumesAfter(t *testing.T, fail func(b *testBackend)) {
	e := newEnv(t)
	nodes := []*testNode{e.startNode(), e.startNode()}
	b := e.startBackend("chat")
	var clients []*wsClient
	for i := range 6 {
		clients = append(clients, connect(t, nodes[i%2], "chat").welcome())
	}
	b.publish(t, `{"type":"broadcast","data":"before"}`)
	for _, c := range clients {
		if f := c.nextEvent("dmb:broadcast"); string(f.Data) != `"before"` {
			t.Fatalf("before the failover: %+v", f)
		}
	}

	fail(b)

	// Broadcasts published while a subscription moves to the new master
	// are lost (pub/sub keeps nothing); publish until one reaches everyone.
	deadline := time.Now().Add(30 * time.Second)
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	for k := 0; ; k++ {
		if k > 0 {
			<-poll.C
		}
		if time.Now().After(deadline) {
			t.Fatalf("no broadcast reached every client within 30 s of the failover")
		}
		data := fmt.Sprintf(`"after-%d"`, k)
		if err := pubsub.Publish(context.Background(), b.rdb, pubsub.Sharded(b.rdb), "dmb:"+b.BKID(),
			`{"type":"broadcast","data":`+data+`}`).Err(); err != nil {
			continue // Redis is still failing over
		}
		if everyClientGets(clients, data, time.Second) {
			break
		}
	}
	// A client message is acked again: the uplink moved too. Until the
	// backend is live again each message is answered backend unavailable
	// at once, so the client sends the next one on the poll's ticks: sent
	// back to back, they would pass DMB_CLIENT_RATE and the node would
	// rightly close the client with 1008 (protocol.md, section 6).
	c := clients[0]
	acked := false
	for id := 1; !acked; id++ {
		if id > 1 {
			<-poll.C
		}
		if time.Now().After(deadline) {
			t.Fatalf("no client message acked within 30 s of the failover")
		}
		c.send(fmt.Sprintf(`{"event":"dmb:message","data":"after","id":%d}`, id))
		for f := c.next(); ; f = c.next() {
			if f.Event == "dmb:ack" || f.Event == "dmb:error" {
				acked = f.Event == "dmb:ack"
				break
			}
		}
	}
	b.next(func(ev backendEvent) bool { return ev.Type == "message" && string(ev.Data) == `"after"` })
	for i, c := range clients {
		select {
		case <-c.ended:
			t.Fatalf("client %d lost its connection: %v", i, c.endErr())
		default:
		}
	}
	for _, n := range nodes {
		eventually(t, "node ready again", func() bool { return n.readyz() == http.StatusOK })
	}
}

// everyClientGets reports whether every client receives a broadcast of data
// within d, passing over other frames.
func everyClientGets(clients []*wsClient, data string, d time.Duration) bool {
	timeout := time.After(d)
	for _, c := range clients {
		for got := false; !got; {
			select {
			case f := <-c.frames:
				got = f.Event == "dmb:broadcast" && string(f.Data) == data
			case <-timeout:
				return false
			}
		}
	}
	return true
}
