// Package cluster lets several `killswitch run` instances share one fleet on a NATS
// JetStream cluster. Telemetry and detections are partitioned by vendor with elastic
// partitioned consumer groups (github.com/synadia-io/orbit.go/pcgroups): each instance
// owns a set of partitions, and everything about a vendor (detection, incident
// grouping, responding) happens at the partition's owner.
//
//   - Members is the membership controller: every instance heartbeats in a KV bucket;
//     when one stops heartbeating, one survivor (chosen by a compare-and-swap) deletes
//     its consumers and removes it from the groups, so its partitions move at once; a
//     new instance adds itself and takes its share.
//   - Ingest is the partitioned telemetry handler: detector state is checkpointed per
//     partition with the telemetry stream sequence it covers; an instance that gains a
//     partition restores its checkpoint and catches up from the telemetry stream
//     before it handles the partition's first event, and skips what its state already
//     holds, so baselines, running sums and open windows survive a move.
//   - Respond makes the responder follow the partitions: the incidents of a gained
//     partition are reloaded from the incidents bucket before its first detection.
//
// Everything shared between the instances (claims, approvals, pause, breaker, budget,
// cooldowns, the ledger) already lives in JetStream and stays fleet-wide.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	telnats "github.com/killswitch-dev/killswitch/telemetry/nats"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/pcgroups"
	"go.uber.org/zap"
)

// MembersBucket is the KV bucket of the members' heartbeats and eviction claims.
const MembersBucket = "killswitch_members"

// pcgroupsBucket is where pcgroups keeps the groups' configurations (membership).
const pcgroupsBucket = "elastic-consumer-groups"

// evictPrefix prefixes the key of an eviction claim: evict.<member>.
const evictPrefix = "evict."

// Of returns the partition (0 ≤ p < n) of vendor: the hash NATS subject transforms
// use for {{Partition(n,…)}} (FNV-1a, 32 bits, modulo n), so it names the partition
// the consumer groups deliver the vendor's messages in.
func Of(vendor string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(vendor))
	return int(h.Sum32() % uint32(n))
}

// GroupRef names one elastic consumer group: its stream and name.
type GroupRef struct {
	Stream, Group string
}

// workQueue is the name pcgroups gives the group's work-queue stream.
func (g GroupRef) workQueue() string { return g.Stream + "-" + g.Group }

// key is the group's key in the pcgroups bucket.
func (g GroupRef) key() string { return g.Stream + "." + g.Group }

// MembersConfig configures Members.
type MembersConfig struct {
	// JS is the instance's JetStream context.
	JS jetstream.JetStream
	// Member is this instance's member name.
	Member string
	// Groups are the consumer groups the instance is a member of (all with the same
	// partitions); the first one's membership says which partitions the instance owns.
	Groups []GroupRef
	// Partitions is the groups' number of partitions.
	Partitions int
	// Replicas of the members bucket. Default 1.
	Replicas int
	// HeartbeatEvery is how often the instance heartbeats and checks the others.
	// Default 250ms.
	HeartbeatEvery time.Duration
	// DeadAfter is how long a member may go without a heartbeat before it is evicted.
	// Default 1s; at least 3 heartbeats.
	DeadAfter time.Duration
	// HTTP is this instance's API address, shown to the others.
	HTTP string
	// OnOwn, if set, is called with the partitions the instance owns, after each change
	// of the first group's membership (in order, from one goroutine).
	OnOwn func(ctx context.Context, owned []int)
	// OnEvict, if set, is called when this instance evicted a dead member, with the
	// time it took from its last heartbeat seen.
	OnEvict func(member string, silentFor time.Duration)
	Clock   clock.Clock
	Log     *zap.Logger
}

// Heartbeat is a member's record in the members bucket.
type Heartbeat struct {
	Member  string    `json:"member"`
	HTTP    string    `json:"http,omitempty"`
	Started time.Time `json:"started"`
	At      time.Time `json:"at"`
}

// MemberStatus describes a member as this instance sees it.
type MemberStatus struct {
	Member string `json:"member"`
	// Self is true for the instance answering.
	Self bool   `json:"self,omitempty"`
	HTTP string `json:"http,omitempty"`
	// Alive is false when its heartbeat is older than DeadAfter (it is about to be
	// evicted) or it is in the group without ever having heartbeated here.
	Alive bool `json:"alive"`
	// SilentMS is the time since this instance last saw its heartbeat change.
	SilentMS int64 `json:"silent_ms"`
	// Partitions are the partitions the membership gives it.
	Partitions []int `json:"partitions"`
}

// Members is the membership controller of one instance.
type Members struct {
	cfg     MembersConfig
	kv      jetstream.KeyValue
	groups  jetstream.KeyValue
	started time.Time

	mu      sync.Mutex
	seen    map[string]seenBeat // member → last heartbeat change seen here
	members []string            // the first group's membership, as last read
	owned   []int
	ownedC  chan []int // owned sets for handOver (the latest only)
}

type seenBeat struct {
	rev  uint64
	at   time.Time // local time the revision was first seen
	http string
}

// ErrMembership is returned when the instance cannot join or keep its membership.
var ErrMembership = errors.New("cluster: membership")

// NewMembers creates the members bucket and returns the controller; Join adds the
// instance to the groups (which must exist).
func NewMembers(ctx context.Context, cfg MembersConfig) (*Members, error) {
	if cfg.HeartbeatEvery <= 0 {
		cfg.HeartbeatEvery = 250 * time.Millisecond
	}
	if cfg.DeadAfter <= 0 {
		cfg.DeadAfter = time.Second
	}
	cfg.DeadAfter = max(cfg.DeadAfter, 3*cfg.HeartbeatEvery)
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Member == "" || len(cfg.Groups) == 0 || cfg.Partitions < 1 {
		return nil, fmt.Errorf("%w: a member name, a group and partitions are required", ErrMembership)
	}
	kv, err := cfg.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: MembersBucket, Description: "Killswitch instances: heartbeats and eviction claims",
		Storage: jetstream.FileStorage, Replicas: max(1, cfg.Replicas), History: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: bucket %s: %w", ErrMembership, MembersBucket, err)
	}
	groups, err := cfg.JS.KeyValue(ctx, pcgroupsBucket)
	if err != nil {
		return nil, fmt.Errorf("%w: the consumer groups' bucket: %w", ErrMembership, err)
	}
	return &Members{cfg: cfg, kv: kv, groups: groups, started: cfg.Clock.Now(), seen: make(map[string]seenBeat),
		ownedC: make(chan []int, 1)}, nil
}

// Join heartbeats once and adds the instance to every group.
func (m *Members) Join(ctx context.Context) error {
	if err := telnats.RetryUnready(ctx, func() error { return m.beat(ctx) }); err != nil {
		return err
	}
	for _, g := range m.cfg.Groups {
		if err := retryConflicts(ctx, func() error {
			_, err := pcgroups.AddMembers(ctx, m.cfg.JS, g.Stream, g.Group, []string{m.cfg.Member})
			return err
		}); err != nil {
			return fmt.Errorf("%w: join %s: %w", ErrMembership, g.key(), err)
		}
	}
	e, err := m.groups.Get(ctx, m.cfg.Groups[0].key())
	if err != nil {
		return fmt.Errorf("%w: read the membership: %w", ErrMembership, err)
	}
	m.sawMembership(e)
	m.cfg.Log.Info("joined the cluster", zap.String("member", m.cfg.Member))
	return nil
}

// Leave removes the instance from the groups at once (its consumers first, so the
// partitions move in milliseconds) and deletes its heartbeat. Stop consuming first.
func (m *Members) Leave(ctx context.Context) error {
	var errs []error
	for _, g := range m.cfg.Groups {
		errs = append(errs, m.remove(ctx, g, m.cfg.Member))
	}
	if err := m.kv.Delete(ctx, m.cfg.Member); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: leave: %w", ErrMembership, err)
	}
	m.cfg.Log.Info("left the cluster: its partitions moved to the others", zap.String("member", m.cfg.Member))
	return nil
}

// remove deletes member's consumer of group, then removes it from the membership.
func (m *Members) remove(ctx context.Context, g GroupRef, member string) error {
	if err := m.cfg.JS.DeleteConsumer(ctx, g.workQueue(), member); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s of %s: %w", member, g.workQueue(), err)
	}
	if err := retryConflicts(ctx, func() error {
		_, err := pcgroups.DeleteMembers(ctx, m.cfg.JS, g.Stream, g.Group, []string{member})
		return err
	}); err != nil {
		return fmt.Errorf("remove %s from %s: %w", member, g.key(), err)
	}
	return nil
}

// retryConflicts runs f, a change of a group's membership (pcgroups writes it with a
// compare-and-set), again while it loses to a concurrent change ("wrong last sequence":
// another instance joined, left or evicted at the same moment), at most 10 times.
func retryConflicts(ctx context.Context, f func() error) error {
	var err error
	for i := range 10 {
		if err = telnats.RetryUnready(ctx, f); err == nil || !strings.Contains(err.Error(), "wrong last sequence") {
			return err
		}
		if cerr := clock.Sleep(ctx, time.Duration(20+10*i)*time.Millisecond); cerr != nil {
			return err
		}
	}
	return err
}

// Run heartbeats, follows the membership and evicts dead members until ctx is done.
// Transient failures are logged and retried on the next beat.
func (m *Members) Run(ctx context.Context) error {
	beats, err := m.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("%w: watch %s: %w", ErrMembership, MembersBucket, err)
	}
	defer func() { _ = beats.Stop() }()
	conf, err := m.groups.Watch(ctx, m.cfg.Groups[0].key())
	if err != nil {
		return fmt.Errorf("%w: watch the membership: %w", ErrMembership, err)
	}
	defer func() { _ = conf.Stop() }()
	// Heartbeats and the partition hand-over each run on their own: a slow OnOwn (a
	// checkpoint, a reload) must never delay a heartbeat, or the others would evict
	// this instance while it is alive.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(2)
	go func() {
		defer wg.Done()
		m.heartbeat(ctx)
	}()
	go func() {
		defer wg.Done()
		m.handOver(ctx)
	}()
	t := time.NewTicker(m.cfg.HeartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-beats.Updates():
			if !ok {
				return fmt.Errorf("%w: the heartbeat watch ended", ErrMembership)
			}
			if e != nil {
				m.sawBeat(e)
			}
		case e, ok := <-conf.Updates():
			if !ok {
				return fmt.Errorf("%w: the membership watch ended", ErrMembership)
			}
			if e != nil {
				m.sawMembership(e)
			}
		case <-t.C:
			m.check(ctx)
		}
	}
}

// heartbeat writes the instance's heartbeat every HeartbeatEvery until ctx is done.
func (m *Members) heartbeat(ctx context.Context) {
	t := time.NewTicker(m.cfg.HeartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := m.beat(ctx); err != nil && ctx.Err() == nil {
			m.cfg.Log.Warn("heartbeat failed (retried)", zap.Error(err))
		}
	}
}

// handOver calls OnOwn with the latest partitions owned, one call at a time, until ctx
// is done; changes that arrive during a call are folded into the next one.
func (m *Members) handOver(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case owned := <-m.ownedC:
			if m.cfg.OnOwn != nil {
				m.cfg.OnOwn(ctx, owned)
			}
		}
	}
}

// beat writes the instance's heartbeat.
func (m *Members) beat(ctx context.Context) error {
	hb, _ := json.Marshal(Heartbeat{Member: m.cfg.Member, HTTP: m.cfg.HTTP, Started: m.started, At: m.cfg.Clock.Now()})
	if _, err := m.kv.Put(ctx, m.cfg.Member, hb); err != nil {
		return fmt.Errorf("%w: heartbeat: %w", ErrMembership, err)
	}
	return nil
}

func (m *Members) sawBeat(e jetstream.KeyValueEntry) {
	name := e.Key()
	if strings.HasPrefix(name, evictPrefix) {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(m.seen, name)
		return
	}
	var hb Heartbeat
	_ = json.Unmarshal(e.Value(), &hb) // a bad record still counts as a beat
	m.seen[name] = seenBeat{rev: e.Revision(), at: m.cfg.Clock.Now(), http: hb.HTTP}
}

func (m *Members) sawMembership(e jetstream.KeyValueEntry) {
	var c pcgroups.ElasticConsumerGroupConfig
	if e.Operation() == jetstream.KeyValuePut {
		if err := json.Unmarshal(e.Value(), &c); err != nil {
			m.cfg.Log.Error("unreadable consumer group membership", zap.Error(err))
			return
		}
	}
	owned := partitionsOf(c, m.cfg.Member)
	m.mu.Lock()
	m.members = slices.Clone(c.Members)
	changed := !slices.Equal(owned, m.owned)
	m.owned = owned
	m.mu.Unlock()
	if changed {
		m.cfg.Log.Info("partitions owned", zap.Ints("partitions", owned), zap.Strings("members", c.Members))
		select { // the latest set replaces one not handed over yet
		case <-m.ownedC:
		default:
		}
		m.ownedC <- owned
	}
}

// partitionsOf returns the partitions c gives member, sorted.
func partitionsOf(c pcgroups.ElasticConsumerGroupConfig, member string) []int {
	var out []int
	for _, f := range pcgroups.ElasticGetPartitionFilters(c, member) {
		n, _, _ := strings.Cut(f, ".")
		if p, err := strconv.Atoi(n); err == nil && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// check evicts the members that stopped heartbeating, and adds the instance back if
// it was removed while alive (e.g. evicted during a long pause).
func (m *Members) check(ctx context.Context) {
	now := m.cfg.Clock.Now()
	m.mu.Lock()
	var dead []string
	var silent []time.Duration
	self := false
	for _, name := range m.members {
		if name == m.cfg.Member {
			self = true
			continue
		}
		last := m.started // never seen: judged from when this instance started
		if s, ok := m.seen[name]; ok {
			last = s.at
		}
		if d := now.Sub(last); d > m.cfg.DeadAfter {
			dead = append(dead, name)
			silent = append(silent, d)
		}
	}
	known := m.members != nil
	m.mu.Unlock()
	if known && !self {
		m.cfg.Log.Warn("this instance is not in the group any more: joining again")
		if err := m.Join(ctx); err != nil {
			m.cfg.Log.Warn("joining again failed (retried)", zap.Error(err))
		}
	}
	for i, name := range dead {
		m.evict(ctx, name, silent[i])
	}
}

// evict removes a dead member from every group, if this instance wins the claim.
func (m *Members) evict(ctx context.Context, name string, silentFor time.Duration) {
	// The watch may lag behind (a loaded instance): read the heartbeat itself first.
	if e, err := m.kv.Get(ctx, name); err == nil {
		m.mu.Lock()
		s, seen := m.seen[name]
		m.mu.Unlock()
		if !seen || e.Revision() != s.rev {
			m.sawBeat(e) // it did beat: alive
			return
		}
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return // unknown: judged again at the next check
	}
	claim, _ := json.Marshal(map[string]any{"by": m.cfg.Member, "at": m.cfg.Clock.Now()})
	key := evictPrefix + name
	if _, err := m.kv.Create(ctx, key, claim); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			m.cfg.Log.Warn("eviction claim failed (retried)", zap.String("member", name), zap.Error(err))
			return
		}
		// Another survivor holds the claim; take it over only if it is stale (its
		// holder died while evicting).
		e, gerr := m.kv.Get(ctx, key)
		if gerr != nil || m.cfg.Clock.Now().Sub(e.Created()) < 10*m.cfg.DeadAfter {
			return
		}
		if _, err := m.kv.Update(ctx, key, claim, e.Revision()); err != nil {
			return
		}
	}
	defer func() { _ = m.kv.Delete(context.WithoutCancel(ctx), key) }()
	// Another survivor may have evicted it just before: read the membership again.
	e, err := m.groups.Get(ctx, m.cfg.Groups[0].key())
	if err != nil {
		m.cfg.Log.Warn("eviction: membership unreadable (retried)", zap.String("member", name), zap.Error(err))
		return
	}
	var c pcgroups.ElasticConsumerGroupConfig
	if err := json.Unmarshal(e.Value(), &c); err != nil || !slices.Contains(c.Members, name) {
		return
	}
	survivors := slices.DeleteFunc(slices.Clone(c.Members), func(n string) bool { return n == name })
	for _, g := range m.cfg.Groups {
		// Every member consumer goes, not just the dead one's: a survivor recreating its
		// consumer with the new filters while another still holds the old ones is
		// refused ("filtered consumer not unique") and pcgroups retries only after its
		// ack wait; with none left, each one is recreated at once. What they had in
		// flight is redelivered (and skipped by the handlers as already done).
		for _, n := range survivors {
			if err := m.cfg.JS.DeleteConsumer(ctx, g.workQueue(), n); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				m.cfg.Log.Debug("could not reset a survivor's consumer", zap.String("member", n), zap.Error(err))
			}
		}
		if err := m.remove(ctx, g, name); err != nil {
			m.cfg.Log.Warn("eviction incomplete (retried)", zap.String("member", name), zap.Error(err))
			return
		}
	}
	_ = m.kv.Delete(ctx, name)
	m.cfg.Log.Warn("evicted a member that stopped heartbeating: its partitions moved", zap.String("member", name),
		zap.Duration("silent_for", silentFor))
	if m.cfg.OnEvict != nil {
		m.cfg.OnEvict(name, silentFor)
	}
}

// Status returns the members as this instance sees them, sorted by name.
func (m *Members) Status(ctx context.Context) ([]MemberStatus, error) {
	e, err := m.groups.Get(ctx, m.cfg.Groups[0].key())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMembership, err)
	}
	var c pcgroups.ElasticConsumerGroupConfig
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		return nil, fmt.Errorf("%w: unreadable membership: %w", ErrMembership, err)
	}
	now := m.cfg.Clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	names := slices.Clone(c.Members)
	for n := range m.seen {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	out := make([]MemberStatus, 0, len(names))
	for _, n := range names {
		st := MemberStatus{Member: n, Self: n == m.cfg.Member, Partitions: partitionsOf(c, n)}
		if st.Partitions == nil {
			st.Partitions = []int{}
		}
		if s, ok := m.seen[n]; ok {
			st.HTTP = s.http
			st.SilentMS = now.Sub(s.at).Milliseconds()
			st.Alive = now.Sub(s.at) <= m.cfg.DeadAfter
		}
		out = append(out, st)
	}
	return out, nil
}

// Owned returns the partitions the instance owns now.
func (m *Members) Owned() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.owned)
}
