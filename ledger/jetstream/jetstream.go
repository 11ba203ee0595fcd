// Package jetstream keeps the ledger on a JetStream stream: file storage, deletes and
// purges denied. Anyone allowed to publish on the ledger's subject can add a message,
// so the stream may hold messages that are not records of the chain: each is a break
// (ledger.Checker), reported and skipped, and the chain goes on from the last good
// record at a later stream sequence. A record's sequence therefore equals its stream
// sequence only as long as nothing else was stored.
//
// With a key (StreamConfig.Key) records are MAC'd, their message IDs are derived from
// the key (nobody else can occupy an entry's ID in the duplicate window), and signed
// checkpoints of the head are published every CheckpointEvery records or
// CheckpointInterval to a stream of their own (deletes and purges denied: the history
// is kept). Opening starts from the last valid checkpoint and examines every message
// after it; a checkpointed record that is gone or different is a break too. Opening
// never fails because of what others stored.
//
// A Stream pipelines appends: one writer goroutine links each queued entry after the one
// before it and publishes it without waiting for the previous acknowledgement, so several
// records cost about one round of fsyncs instead of one round trip each. Every publish
// states what it must follow (the stream's last sequence and, when that record is still
// in flight, its message ID), so a record is never stored after one that was not.
//
// OpenStream starts the writer and Close stops it; the context given to OpenStream bounds
// the opening only.
package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// StreamConfig configures the JetStream ledger.
type StreamConfig struct {
	// Name is the stream name. Default KILLSWITCH_LEDGER.
	Name string
	// Subject records are published on. Default killswitch.ledger.
	Subject string
	// Replicas is the stream's replica count; 3 across failure domains in production.
	// Default 1.
	Replicas int
	// Duplicates is the window within which an entry appended twice is stored once.
	// Default 24h.
	Duplicates time.Duration
	// Timeout bounds the writer's wait for each acknowledgement and each read of the
	// stream; a record not acknowledged in time fails with ledger.ErrUnavailable (it may
	// still be stored). Default 5s.
	Timeout time.Duration
	// MaxInFlight bounds the records published and not yet acknowledged. Default 256.
	// On a replicated stream (Replicas above 1) one record is in flight at a time,
	// whatever MaxInFlight says: see writer.maxInFlight.
	MaxInFlight int
	// Key MACs the records and the checkpoints. Without it records carry no MAC and no
	// checkpoint is written (tests; a ledger that was never keyed).
	Key *ledger.Key
	// Checkpoints is the name of the stream of signed checkpoints. Default
	// KILLSWITCH_LEDGER_CHECKPOINTS.
	Checkpoints string
	// CheckpointSubject is the subject checkpoints are published on. Default
	// killswitch.ledger_checkpoints.
	CheckpointSubject string
	// CheckpointEvery is how many records may be appended before a checkpoint is
	// written. Default 100.
	CheckpointEvery int
	// CheckpointInterval is how often the head is checkpointed when it moved, and how
	// often an idle writer looks for messages others stored. Default 10s.
	CheckpointInterval time.Duration
	// Clock dates the checkpoints and the appends' failures. Default the wall clock.
	Clock clock.Clock
	// Log receives the breaks found and checkpoint failures (never the key).
	Log *zap.Logger
	// OnBreak, if set, is called for every break found (from the writer goroutine; it
	// must not block), e.g. to count them.
	OnBreak func(ledger.Break)
}

func (c *StreamConfig) defaults() {
	if c.Name == "" {
		c.Name = "KILLSWITCH_LEDGER"
	}
	if c.Subject == "" {
		c.Subject = "killswitch.ledger"
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Duplicates == 0 {
		c.Duplicates = 24 * time.Hour
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 256
	}
	if c.Checkpoints == "" {
		c.Checkpoints = "KILLSWITCH_LEDGER_CHECKPOINTS"
	}
	if c.CheckpointSubject == "" {
		c.CheckpointSubject = "killswitch.ledger_checkpoints"
	}
	if c.CheckpointEvery <= 0 {
		c.CheckpointEvery = 100
	}
	if c.CheckpointInterval <= 0 {
		c.CheckpointInterval = 10 * time.Second
	}
	if c.Clock == nil {
		c.Clock = clock.Real{}
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
}

const (
	// maxAttempts bounds how often one record may be refused because another writer
	// appended first before it fails.
	maxAttempts = 10
	// retryBackoff and maxRetryBackoff bound the pause before republishing a record
	// refused more than once (doubling, with jitter): a writer that keeps losing waits
	// for the other one to drain its pipeline, about a second in all before giving up.
	retryBackoff    = 4 * time.Millisecond
	maxRetryBackoff = 500 * time.Millisecond
	// maxUncertain bounds the keys remembered as published with an unknown outcome.
	maxUncertain = 4096
	// statusHeader and noResponders mark the server's reply when no stream listens.
	statusHeader = "Status"
	noResponders = "503"
	// maxGetScan is the largest run of messages read one by one; longer runs are read
	// with an ordered consumer.
	maxGetScan = 64
	// maxCheckpointScan bounds the invalid checkpoints skipped looking for the last
	// valid one.
	maxCheckpointScan = 1000
)

// JetStream API error codes meaning another writer appended first (or the same message
// ID is being stored right now): the record is linked again after the new tail.
const (
	errWrongLastMsgID            jetstream.ErrorCode = 10070
	errWrongLastSequence         jetstream.ErrorCode = jetstream.JSErrCodeStreamWrongLastSequence
	errWrongLastSequenceConstant jetstream.ErrorCode = jetstream.JSErrCodeStreamWrongLastSequenceConstant
	errDuplicateInProcess        jetstream.ErrorCode = 10158
)

// ErrClosed is wrapped by the error of every entry queued after Close; it wraps
// ledger.ErrUnavailable.
var ErrClosed = fmt.Errorf("%w: ledger stream closed", ledger.ErrUnavailable)

// Stream is the ledger on a JetStream stream. The stream denies deletes and purges.
// Several writers (processes) may share a stream: each publish states the stream
// sequence it expects to follow, and a writer that lost the race (to another writer, or
// to garbage someone published) examines what was stored since and links again after
// the last good record. It is safe for concurrent use.
//
// A Stream owns a writer goroutine, a checkpointer goroutine and a reply subscription on
// the JetStream connection, all ended by Close.
type Stream struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	cps    jetstream.Stream // nil without a key
	cfg    StreamConfig

	mu     sync.Mutex
	queue  []*item // queued, not yet taken by the writer, in chain order
	closed bool
	state  Integrity // the writer's view, for Integrity and the checkpoints

	wake      chan struct{} // capacity 1: the queue has grown
	poke      chan struct{} // capacity 1: look for messages others stored
	cpWake    chan struct{} // capacity 1: enough records for a checkpoint
	closing   chan struct{} // closed by Close
	exited    chan struct{} // closed when the writer has stopped
	cpExited  chan struct{} // closed when the checkpointer has stopped
	closeOnce sync.Once
	closeErr  error // written by the writer before exited is closed
}

// Integrity is a Stream's view of its chain: the head, and the breaks it has seen
// (found by this process, or listed by the checkpoint it started from) that no seal
// covers yet.
type Integrity struct {
	// Head is the last good record.
	Head ledger.Anchor `json:"head"`
	// BreaksSeen counts the breaks this process found, sealed or not.
	BreaksSeen uint64 `json:"breaks_seen"`
	// Unsealed lists unsealed breaks (at most ledger.MaxUnsealed); UnsealedMore counts
	// the others.
	Unsealed     []ledger.Break `json:"unsealed,omitempty"`
	UnsealedMore uint64         `json:"unsealed_more,omitempty"`
	// Unauthenticated counts the records without a MAC this process accepted (written
	// before the ledger was keyed).
	Unauthenticated uint64 `json:"unauthenticated,omitempty"`
	// Checkpoint is the head last checkpointed by this process (or the checkpoint it
	// started from).
	Checkpoint ledger.Anchor `json:"checkpoint"`
	// FailingSince is when the first entry failed to be stored since this process last
	// stored one (zero while the last append stored its entry): the ledger may be
	// unwritable (NATS down, the stream gone or stopped, permissions). Failed counts
	// those entries and LastFailure is the latest one's error.
	FailingSince time.Time `json:"failing_since,omitzero"`
	Failed       uint64    `json:"failed,omitempty"`
	LastFailure  string    `json:"last_failure,omitempty"`

	cpUnsealed uint64 // unsealed breaks listed by that checkpoint
}

// Degraded reports whether some break is unsealed.
func (i Integrity) Degraded() bool { return len(i.Unsealed) > 0 || i.UnsealedMore > 0 }

// Failing reports whether the latest entry this process tried to store failed.
func (i Integrity) Failing() bool { return !i.FailingSince.IsZero() }

// Integrity returns the stream's current view of the chain's integrity.
func (s *Stream) Integrity() Integrity {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state
	st.Unsealed = slices.Clone(st.Unsealed)
	return st
}

var (
	_ ledger.Appender = (*Stream)(nil)
	_ ledger.Queuer   = (*Stream)(nil)
)

// OpenStream creates (or updates) the ledger stream (and, with a key, the checkpoint
// stream), finds the chain's tail and starts the writer. The tail is the last good
// record: from the last valid checkpoint on, every message is examined and the ones
// that are not good records are reported as breaks, never refused. ctx bounds the
// opening only; the writer runs until Close.
func OpenStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (*Stream, error) {
	cfg.defaults()
	st, err := ensureStream(ctx, js, cfg)
	if err != nil {
		return nil, err
	}
	var cps jetstream.Stream
	if cfg.Key != nil {
		if cps, err = ensureCheckpoints(ctx, js, cfg); err != nil {
			return nil, err
		}
	}
	return startStream(ctx, js, cfg, st, cps)
}

// startStream finds the tail and starts the writer and the checkpointer.
func startStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig, st, cps jetstream.Stream) (*Stream, error) {
	s := &Stream{
		js: js, stream: st, cps: cps, cfg: cfg,
		wake: make(chan struct{}, 1), poke: make(chan struct{}, 1), cpWake: make(chan struct{}, 1),
		closing: make(chan struct{}), exited: make(chan struct{}), cpExited: make(chan struct{}),
	}
	w, err := newWriter(context.WithoutCancel(ctx), s)
	if err != nil {
		return nil, err
	}
	if err := w.start(ctx); err != nil {
		_ = w.sub.Unsubscribe()
		w.nc.RemoveStatusListener(w.status)
		return nil, err
	}
	go w.run()
	go s.checkpointer()
	return s, nil
}

// ensureStream creates or updates the ledger stream.
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	return ensure(ctx, js, jetstream.StreamConfig{
		Name:        cfg.Name,
		Description: "Killswitch audit ledger: append-only, hash-chained",
		Subjects:    []string{cfg.Subject},
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Retention:   jetstream.LimitsPolicy,
		Duplicates:  cfg.Duplicates,
		DenyDelete:  true,
		DenyPurge:   true,
	})
}

// ensureCheckpoints creates or updates the checkpoint stream: append-only like the
// ledger, every checkpoint kept.
func ensureCheckpoints(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	return ensure(ctx, js, jetstream.StreamConfig{
		Name:        cfg.Checkpoints,
		Description: "Killswitch audit ledger: signed checkpoints of the chain's head",
		Subjects:    []string{cfg.CheckpointSubject},
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Retention:   jetstream.LimitsPolicy,
		DenyDelete:  true,
		DenyPurge:   true,
	})
}

// ensure returns the stream want names, creating it when missing and updating it when
// its configuration differs. A stream already as wanted — every restart — is not
// updated: an update is a cluster-wide operation that waits for the meta leader and
// every peer of the stream, so a restart while a node is down would wait for nothing.
// Transient errors (a stream or leader moving) are retried a few times.
func ensure(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) (jetstream.Stream, error) {
	var st jetstream.Stream
	err := retryTransient(ctx, func() (err error) {
		st, err = js.Stream(ctx, want.Name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			st, err = js.CreateStream(ctx, want)
		case err == nil && !sameConfig(st.CachedInfo().Config, want):
			st, err = js.UpdateStream(ctx, want)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%w: create stream %s: %w", ledger.ErrUnavailable, want.Name, err)
	}
	return st, nil
}

// sameConfig reports whether have already is what want asks for (the fields ensure sets).
func sameConfig(have, want jetstream.StreamConfig) bool {
	dup := want.Duplicates
	if dup == 0 {
		dup = have.Duplicates // the server's default
	}
	return have.Description == want.Description && slices.Equal(have.Subjects, want.Subjects) && have.Storage == want.Storage &&
		have.Replicas == max(want.Replicas, 1) && have.Retention == want.Retention && have.Duplicates == dup &&
		have.DenyDelete == want.DenyDelete && have.DenyPurge == want.DenyPurge
}

// Queue places e at the end of the chain and returns at once; see ledger.Queuer. The
// Pending fails with an error wrapping ledger.ErrUnavailable when the record could not
// be stored (NATS unreachable, no acknowledgement within StreamConfig.Timeout, other
// writers appending first too often, or Close called before Queue), and with one
// wrapping ledger.ErrBroken when the stored chain is damaged.
func (s *Stream) Queue(e ledger.Entry) *ledger.Pending {
	return s.enqueue(e)[0]
}

// enqueue queues es in one step, so they follow each other in the chain.
func (s *Stream) enqueue(es ...ledger.Entry) []*ledger.Pending {
	ps := make([]*ledger.Pending, len(es))
	items := make([]*item, 0, len(es))
	for i, e := range es {
		if err := e.Normalize(); err != nil {
			ps[i] = ledger.Resolved(ledger.Record{}, err)
			continue
		}
		p, resolve := ledger.NewPending()
		ps[i] = p
		items = append(items, &item{e: e, key: e.Key(), msgID: s.cfg.Key.MsgID(e.Key()), resolve: resolve})
	}
	if len(items) == 0 {
		return ps
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		for _, it := range items {
			it.resolve(ledger.Record{}, fmt.Errorf("append %s %s: %w", it.e.Type, it.e.ID, ErrClosed))
		}
		return ps
	}
	s.queue = append(s.queue, items...)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return ps
}

// Append links e to the end of the chain, stores it and returns the stored record: it
// is Queue and then Wait. An entry whose type and ID were appended within the
// duplicates window is stored once; the stored record is returned. Any error means the
// entry may not be recorded and wraps ledger.ErrUnavailable (or ledger.ErrBroken when
// the stored chain is damaged); when ctx ends first the entry stays queued and may still
// be stored.
func (s *Stream) Append(ctx context.Context, e ledger.Entry) (ledger.Record, error) {
	return s.Queue(e).Wait(ctx)
}

// Close stops the writer. Entries queued before Close are still published and their
// Pendings resolve (stored, or failed when NATS does not answer within
// StreamConfig.Timeout); entries queued afterwards fail with ErrClosed. Close returns
// once the writer goroutine has ended and its subscription is gone, with an error
// wrapping ledger.ErrUnavailable if some entry could not be stored while closing. It
// does not close the NATS connection. Further calls return the same result.
func (s *Stream) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.closing)
	})
	<-s.exited
	<-s.cpExited
	return s.closeErr
}

// take removes and returns everything queued.
func (s *Stream) take() []*item {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queue
	s.queue = nil
	return q
}

// position is a place in the chain: a record's sequence and hash, and the stream
// sequence the next record must follow (the record's own, or that of the last message
// examined after it).
type position struct {
	seq    uint64
	hash   string
	stream uint64
}

// readRecord reads the record stored at stream sequence seq and checks that it is
// intact (hash, and MAC with a key).
func (s *Stream) readRecord(ctx context.Context, seq uint64) (ledger.Record, error) {
	var msg *jetstream.RawStreamMsg
	err := retryTransient(ctx, func() (err error) { msg, err = s.stream.GetMsg(ctx, seq); return err })
	if err != nil {
		return ledger.Record{}, fmt.Errorf("%w: read record %d: %w", ledger.ErrUnavailable, seq, err)
	}
	r, err := ledger.DecodeRecord(msg.Data)
	if err != nil {
		return ledger.Record{}, fmt.Errorf("stream sequence %d: %w", seq, err)
	}
	if err := r.Check(r.Seq-1, r.Prev); err != nil {
		return ledger.Record{}, fmt.Errorf("stream sequence %d: %w", seq, err)
	}
	if s.cfg.Key != nil {
		if err := s.cfg.Key.CheckMAC(&r); err != nil {
			return ledger.Record{}, fmt.Errorf("stream sequence %d: %w", seq, err)
		}
	}
	return r, nil
}

// item is a queued entry on its way to the stream.
type item struct {
	e        ledger.Entry
	key      string
	msgID    string // the message ID it is published under (see ledger.Key.MsgID)
	resolve  func(ledger.Record, error)
	attempts int // publishes refused because another writer appended first

	// Set each time the item is published.
	rec      ledger.Record // the record as linked for this publish
	stream   uint64        // the stream sequence it must be stored at
	token    string        // reply subject token
	deadline time.Time     // when its acknowledgement is given up
	barrier  bool          // publish nothing after it until it is acknowledged
	out      *outcome      // nil until acknowledged, refused or given up
}

// outcome is what became of one publish.
type outcome struct {
	seq     uint64 // stream sequence of the stored record (or of the original, for dup)
	dup     bool   // the key was already stored: nothing was appended
	err     error  // nil when stored
	retry   bool   // err says another writer appended first
	unknown bool   // err leaves open whether the record was stored
}

// stored reports whether the publish appended the record as linked.
func (o *outcome) stored() bool { return o.err == nil && !o.dup }

// writer publishes queued entries in chain order. All its fields belong to the writer
// goroutine.
type writer struct {
	s       *Stream
	nc      *nats.Conn
	base    context.Context // for reads; carries the open's values, never cancelled
	inbox   string          // reply subject prefix, ending in "."
	sub     *nats.Subscription
	replies chan *nats.Msg
	status  chan nats.Status

	chk        *ledger.Checker // the last good record known to be stored, the breaks seen
	last       uint64          // the last stream sequence examined
	needReload bool            // the tail may be stale after a failure: reload before publishing
	sinceCP    int             // records stored since the checkpointer was last woken
	ready      []*item         // taken from the queue or to publish again, in chain order
	inflight   []*item         // published, in chain order
	tokens     map[string]*item
	nextToken  uint64
	troubled   bool      // an in-flight publish did not append: recover before publishing more
	holdUntil  time.Time // no publishing before (backoff after refusals)
	stopping   bool      // Close was called: drain, then stop

	// uncertain holds keys published with an unknown outcome (the record may land
	// later); such a key is published again as a barrier, with nothing after it in
	// flight, so no record can be linked to a copy of it that is not the stored one.
	uncertain    map[string]uint64
	uncertainLog []uncertainKey
	uncertainGen uint64

	closeFailures int
	closeErr      error
	failing       bool // an entry failed since the last one stored (Integrity.FailingSince)

	// maxInFlight is the most records published and not yet acknowledged:
	// StreamConfig.MaxInFlight on a stream of one replica, 1 on a replicated one. A
	// record published behind one still in flight must name it as the stream's last
	// message (Nats-Expected-Last-Msg-Id: another writer may have got in first, and
	// the stream's last sequence may match all the same), and a replicated stream
	// checks that header only when its replicas apply the message: a mismatch there is
	// a "critical write error" that stops the stream on every replica until the
	// servers restart (nats-server 2.15). The last sequence alone, which such a stream
	// checks before proposing the message, is enough with nothing else in flight. It
	// follows the stream's replica count, read again at every look at the stream (at
	// least every CheckpointInterval): another instance may raise it while this one runs.
	maxInFlight int
}

type uncertainKey struct {
	key string
	gen uint64
}

func newWriter(base context.Context, s *Stream) (*writer, error) {
	nc := s.js.Conn()
	w := &writer{
		s: s, nc: nc, base: base, chk: ledger.NewChecker(s.cfg.Key, ledger.GenesisAnchor, ledger.MaxUnsealed),
		inbox:     nc.NewInbox() + ".",
		replies:   make(chan *nats.Msg, 2*s.cfg.MaxInFlight+16),
		tokens:    make(map[string]*item),
		uncertain: make(map[string]uint64),
	}
	w.follow(s.stream.CachedInfo().Config.Replicas)
	sub, err := nc.ChanSubscribe(w.inbox+"*", w.replies)
	if err != nil {
		return nil, fmt.Errorf("%w: subscribe for acknowledgements: %w", ledger.ErrUnavailable, err)
	}
	w.sub = sub
	w.status = nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	return w, nil
}

// run is the writer goroutine.
func (w *writer) run() {
	defer w.stop()
	for {
		w.publish()
		if len(w.inflight) == 0 {
			if w.stopping && len(w.ready) == 0 && w.queueEmpty() {
				return
			}
			w.wait(w.nextDeadline(), w.canPublish())
			continue
		}
		head := w.inflight[0]
		switch {
		case head.out == nil:
			w.wait(w.nextDeadline(), w.canPublish())
		case head.out.stored():
			w.inflight[0] = nil
			w.inflight = w.inflight[1:]
			w.accept(head.rec, head.out.seq)
			w.settled(head)
			head.resolve(head.rec, nil)
		default:
			w.recover()
		}
	}
}

func (w *writer) queueEmpty() bool {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return len(w.s.queue) == 0
}

// canPublish reports whether another record may be published now.
func (w *writer) canPublish() bool {
	n := len(w.inflight)
	return !w.troubled && !time.Now().Before(w.holdUntil) && n < w.maxInFlight &&
		(n == 0 || !w.inflight[n-1].barrier)
}

// nextDeadline is when the writer must act without being woken: the first
// acknowledgement given up, or the end of a backoff.
func (w *writer) nextDeadline() time.Time {
	var d time.Time
	for _, it := range w.inflight {
		if it.out == nil {
			d = it.deadline // deadlines grow along the pipeline
			break
		}
	}
	if len(w.ready) > 0 && w.holdUntil.After(time.Now()) && (d.IsZero() || w.holdUntil.Before(d)) {
		d = w.holdUntil
	}
	return d
}

// wait blocks until a reply, a lost connection, a new entry (if wake), Close or the
// deadline (if not zero), and records what happened.
func (w *writer) wait(deadline time.Time, wake bool) {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	var woken <-chan struct{}
	if wake {
		woken = w.s.wake
	}
	var closing <-chan struct{}
	if !w.stopping {
		closing = w.s.closing
	}
	select {
	case m := <-w.replies:
		w.onReply(m)
	case st, ok := <-w.status:
		if !ok {
			w.status = nil
			return
		}
		w.onConnectionLost(st)
	case <-woken:
	case <-w.s.poke:
		switch {
		case w.stopping:
		case len(w.inflight) == 0:
			w.idleSync()
		case w.maxInFlight > 1:
			w.refreshReplicas()
		}
	case <-closing:
		w.stopping = true
	case now := <-timeout:
		w.expire(now)
	}
}

// publish links and publishes ready and queued entries while the pipeline has room.
func (w *writer) publish() {
	if w.troubled || time.Now().Before(w.holdUntil) {
		return
	}
	w.ready = append(w.ready, w.s.take()...)
	if len(w.ready) == 0 {
		return
	}
	if !w.nc.IsConnected() {
		// Nothing is published into the reconnect buffer: it could land long after
		// its Pending failed.
		w.fail(nil, w.notConnected())
		return
	}
	if w.needReload {
		ctx, cancel := context.WithTimeout(w.base, w.s.cfg.Timeout)
		err := w.loadTail(ctx)
		cancel()
		if err != nil {
			w.fail(nil, err)
			return
		}
		w.needReload = false
	}
	for len(w.ready) > 0 && w.canPublish() {
		it := w.ready[0]
		w.ready[0] = nil
		w.ready = w.ready[1:]
		w.send(it)
	}
}

// send links it after the last record in flight (or the tail) and publishes it.
func (w *writer) send(it *item) {
	h := w.chk.Head()
	prev, prevID := position{h.Seq, h.Hash, w.last}, ""
	if n := len(w.inflight); n > 0 {
		p := w.inflight[n-1]
		prev, prevID = position{p.rec.Seq, p.rec.Hash, p.stream}, p.msgID
	}
	it.rec = ledger.LinkSigned(it.e, prev.seq, prev.hash, w.s.cfg.Key)
	it.stream = prev.stream + 1
	it.out = nil
	_, it.barrier = w.uncertain[it.key]
	it.deadline = time.Now().Add(w.s.cfg.Timeout)
	w.inflight = append(w.inflight, it)
	data, err := json.Marshal(it.rec)
	if err != nil {
		it.out = &outcome{err: fmt.Errorf("encode record: %w", err)}
		w.troubled = true
		return
	}
	w.nextToken++
	it.token = strconv.FormatUint(w.nextToken, 36)
	msg := &nats.Msg{Subject: w.s.cfg.Subject, Reply: w.inbox + it.token, Data: data, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, it.msgID)
	msg.Header.Set(jetstream.ExpectedStreamHeader, w.s.cfg.Name)
	msg.Header.Set(jetstream.ExpectedLastSeqHeader, strconv.FormatUint(prev.stream, 10))
	if prevID != "" {
		// The previous record is still in flight: if it is not the stream's last
		// record (another writer got in first and this one was refused), the stream's
		// last sequence may still match, but not its message ID.
		msg.Header.Set(jetstream.ExpectedLastMsgIDHeader, prevID)
	}
	if err := w.nc.PublishMsg(msg); err != nil {
		it.out = &outcome{err: fmt.Errorf("publish: %w", err)}
		w.troubled = true
		return
	}
	w.tokens[it.token] = it
}

// onReply records the acknowledgement (or refusal) carried by m.
func (w *writer) onReply(m *nats.Msg) {
	it := w.tokens[strings.TrimPrefix(m.Subject, w.inbox)]
	if it == nil {
		return // a reply for a publish already given up
	}
	delete(w.tokens, it.token)
	it.out = w.parseAck(it, m)
	if !it.out.stored() {
		w.troubled = true
	}
}

// parseAck interprets the server's reply to the publish of it.
func (w *writer) parseAck(it *item, m *nats.Msg) *outcome {
	if len(m.Data) == 0 && m.Header.Get(statusHeader) == noResponders {
		return &outcome{err: errors.New("no responders: the stream is not available")}
	}
	var ack struct {
		Error     *jetstream.APIError `json:"error"`
		Stream    string              `json:"stream"`
		Seq       uint64              `json:"seq"`
		Duplicate bool                `json:"duplicate"`
	}
	if err := json.Unmarshal(m.Data, &ack); err != nil {
		return &outcome{err: fmt.Errorf("invalid acknowledgement: %w", err), unknown: true}
	}
	switch {
	case ack.Error != nil:
		switch ack.Error.ErrorCode {
		case errWrongLastMsgID, errWrongLastSequence, errWrongLastSequenceConstant, errDuplicateInProcess:
			return &outcome{err: ack.Error, retry: true}
		}
		return &outcome{err: ack.Error}
	case ack.Stream != w.s.cfg.Name:
		return &outcome{err: fmt.Errorf("acknowledged by stream %q", ack.Stream), unknown: true}
	case ack.Duplicate:
		return &outcome{seq: ack.Seq, dup: true}
	case ack.Seq != it.stream:
		return &outcome{seq: ack.Seq, err: fmt.Errorf("%w at record %d: stored at stream sequence %d, not %d", ledger.ErrBroken, it.rec.Seq, ack.Seq, it.stream)}
	}
	return &outcome{seq: ack.Seq}
}

// onConnectionLost gives up every publish still unanswered: what the server did with it
// is unknown, and a reply may never come.
func (w *writer) onConnectionLost(st nats.Status) {
	for drained := false; !drained; {
		select {
		case m := <-w.replies:
			w.onReply(m)
		default:
			drained = true
		}
	}
	for _, it := range w.inflight {
		if it.out == nil {
			delete(w.tokens, it.token)
			it.out = &outcome{err: fmt.Errorf("connection to NATS lost (%s)", st), unknown: true}
			w.troubled = true
		}
	}
}

// expire gives up the publishes whose acknowledgement is overdue at now.
func (w *writer) expire(now time.Time) {
	for _, it := range w.inflight {
		if it.out == nil && !it.deadline.After(now) {
			delete(w.tokens, it.token)
			it.out = &outcome{err: fmt.Errorf("no acknowledgement within %s", w.s.cfg.Timeout), unknown: true}
			w.troubled = true
		}
	}
}

// recover runs when the head of the pipeline was not appended as linked. It waits for
// every publish in flight, reloads the tail, settles what was stored, and then links
// again and republishes (duplicate, or another writer appended first) or fails (any
// other error) the rest, in order.
func (w *writer) recover() {
	for {
		d := time.Time{}
		for _, it := range w.inflight {
			if it.out == nil {
				d = it.deadline
				break
			}
		}
		if d.IsZero() {
			break
		}
		w.wait(d, false)
	}
	batch := w.inflight
	w.inflight, w.troubled = nil, false
	for _, it := range batch {
		if it.out.unknown {
			w.markUncertain(it.key)
		}
	}
	ctx, cancel := context.WithTimeout(w.base, w.s.cfg.Timeout)
	defer cancel()
	if err := w.loadTail(ctx); err != nil {
		w.needReload = true
		w.fail(batch, fmt.Errorf("append %s %s: %v; reloading the tail: %w", batch[0].e.Type, batch[0].e.ID, batch[0].out.err, err))
		return
	}
	w.needReload = false

	// A record stored after one that was not appended as linked (refused, or given up)
	// names it as its predecessor: the record the stream holds there carries that key.
	// If its hash is the one linked to, that entry is stored (a lost acknowledgement, or
	// another writer stored the same record); if not, the chain is broken there.
	stored := make([]*ledger.Record, len(batch))
	for i, it := range batch {
		if it.out.stored() {
			stored[i] = &it.rec
		}
	}
	broken := -1
	var brokenErr error
	for i := len(batch) - 1; i > 0; i-- {
		if stored[i] == nil || stored[i-1] != nil {
			continue
		}
		prev, err := w.s.readRecord(ctx, batch[i].stream-1)
		if err != nil {
			w.needReload = true
			w.fail(batch, err)
			return
		}
		if prev.Hash == stored[i].Prev {
			stored[i-1] = &prev
			continue
		}
		broken = i
		brokenErr = fmt.Errorf("%w at record %d: it was linked after %s as queued here, but the stream holds "+
			"%s with other content there (another writer appended it at the same moment)",
			ledger.ErrBroken, stored[i].Seq, batch[i-1].key, prev.Key())
	}
	i := 0
	for ; i < len(batch) && stored[i] != nil; i++ {
		w.settled(batch[i])
		batch[i].resolve(*stored[i], nil)
	}
	rest := batch[i:]
	if len(rest) == 0 {
		return
	}
	if broken >= 0 {
		w.fail(rest, brokenErr)
		return
	}
	f := rest[0]
	switch {
	case f.out.dup:
		rec, err := w.s.readRecord(ctx, f.out.seq)
		if err == nil && rec.Key() != f.key {
			err = fmt.Errorf("%w at record %d: holds %s, acknowledged as the duplicate of %s", ledger.ErrBroken, rec.Seq, rec.Key(), f.key)
		}
		if err != nil {
			w.fail(rest, err)
			return
		}
		w.settled(f)
		f.resolve(rec, nil)
		w.requeue(rest[1:])
	case f.out.retry:
		f.attempts++
		if f.attempts >= maxAttempts {
			w.fail(rest, fmt.Errorf("%w: append %s %s: other writers appended first %d times: %w",
				ledger.ErrUnavailable, f.e.Type, f.e.ID, f.attempts, f.out.err))
			return
		}
		w.requeue(rest)
		w.backoff(f.attempts)
	default:
		w.needReload = w.needReload || f.out.unknown
		w.fail(rest, fmt.Errorf("%w: append %s %s: %w", ledger.ErrUnavailable, f.e.Type, f.e.ID, f.out.err))
	}
}

// loadTail brings the tail up to date, failing at once when NATS is not connected.
func (w *writer) loadTail(ctx context.Context) error {
	if !w.nc.IsConnected() {
		return w.notConnected()
	}
	return w.sync(ctx)
}

func (w *writer) notConnected() error {
	return fmt.Errorf("%w: not connected to NATS (%s)", ledger.ErrUnavailable, w.nc.Status())
}

// requeue puts items back in front of the ready entries, to be linked and published
// again.
func (w *writer) requeue(items []*item) {
	w.ready = append(append(make([]*item, 0, len(items)+len(w.ready)), items...), w.ready...)
}

// backoff pauses publishing after a record was refused for the given time.
func (w *writer) backoff(attempts int) {
	if attempts < 2 {
		return
	}
	d := min(retryBackoff<<min(attempts-2, 16), maxRetryBackoff)
	w.holdUntil = time.Now().Add(d/2 + rand.N(d/2+1))
}

// fail fails items with err, then every entry queued after them: a record is never
// stored after one that was not.
func (w *writer) fail(items []*item, err error) {
	first := err
	for i, it := range items {
		if i > 0 {
			err = fmt.Errorf("queued after %s %s, which was not stored: %w", items[0].e.Type, items[0].e.ID, first)
		}
		w.failOne(it, err)
	}
	for _, it := range append(w.ready, w.s.take()...) {
		if len(items) > 0 {
			w.failOne(it, fmt.Errorf("queued after %s %s, which was not stored: %w", items[0].e.Type, items[0].e.ID, first))
		} else {
			w.failOne(it, fmt.Errorf("append %s %s: %w", it.e.Type, it.e.ID, first))
		}
	}
	w.ready = nil
}

func (w *writer) failOne(it *item, err error) {
	if w.stopping {
		w.closeFailures++
		if w.closeErr == nil {
			w.closeErr = err
		}
	} else {
		w.failing = true
		w.s.mu.Lock()
		if w.s.state.FailingSince.IsZero() {
			w.s.state.FailingSince = w.s.cfg.Clock.Now()
		}
		w.s.state.Failed++
		w.s.state.LastFailure = err.Error()
		w.s.mu.Unlock()
	}
	it.resolve(ledger.Record{}, err)
}

// markUncertain remembers that key may be stored although its publish failed.
func (w *writer) markUncertain(key string) {
	w.uncertainGen++
	w.uncertain[key] = w.uncertainGen
	w.uncertainLog = append(w.uncertainLog, uncertainKey{key, w.uncertainGen})
	for len(w.uncertainLog) > maxUncertain {
		old := w.uncertainLog[0]
		w.uncertainLog = w.uncertainLog[1:]
		if w.uncertain[old.key] == old.gen {
			delete(w.uncertain, old.key)
		}
	}
}

// settled forgets that its key had an unknown outcome, and ends a failure streak: it is
// stored now.
func (w *writer) settled(it *item) {
	delete(w.uncertain, it.key)
	if w.failing {
		w.failing = false
		w.s.mu.Lock()
		w.s.state.FailingSince, w.s.state.Failed, w.s.state.LastFailure = time.Time{}, 0, ""
		w.s.mu.Unlock()
	}
}

// stop ends the writer: nothing is left in flight or queued when run returns.
func (w *writer) stop() {
	w.fail(nil, ErrClosed)
	if w.status != nil {
		w.nc.RemoveStatusListener(w.status)
	}
	// An error means the connection is closed, which removed the subscription too.
	_ = w.sub.Unsubscribe()
	if w.closeFailures > 0 {
		w.s.closeErr = fmt.Errorf("%w: %d entries queued before Close were not stored, the first: %w",
			ledger.ErrUnavailable, w.closeFailures, w.closeErr)
	}
	close(w.s.exited)
}

// accept moves the tail to r, which this writer has just stored at stream sequence seq.
func (w *writer) accept(r ledger.Record, seq uint64) {
	w.chk.Accept(r, seq)
	w.last = seq
	w.publishState()
	if w.sinceCP++; w.sinceCP >= w.s.cfg.CheckpointEvery {
		w.sinceCP = 0
		select {
		case w.s.cpWake <- struct{}{}:
		default:
		}
	}
}

// start finds the tail when the stream is opened: from the last valid checkpoint whose
// record is still in place, or else from the chain's start, every message is examined.
func (w *writer) start(ctx context.Context) error {
	var found []ledger.Break // invalid checkpoints, then a checkpointed record gone
	from := ledger.Anchor{}
	if w.s.cps != nil {
		cp, at, ok, err := w.s.lastCheckpoint(ctx, func(b ledger.Break) { found = append(found, b) })
		if err != nil {
			return err
		}
		if ok {
			b, err := w.s.checkAnchor(ctx, cp, at)
			if err != nil {
				return err
			}
			if b != nil {
				found = append(found, *b)
			} else {
				w.chk = ledger.NewChecker(w.s.cfg.Key, cp.Anchor, ledger.MaxUnsealed)
				w.chk.Restore(cp.Unsealed, cp.UnsealedMore)
				w.last, from = cp.Stream, cp.Anchor
				w.s.state.cpUnsealed = uint64(len(cp.Unsealed)) + cp.UnsealedMore
			}
		}
	}
	for _, b := range found {
		w.report(w.chk.Add(b))
	}
	if err := w.sync(ctx); err != nil {
		return err
	}
	w.publishState()
	w.s.mu.Lock()
	w.s.state.Checkpoint = from
	w.s.mu.Unlock()
	return nil
}

// checkAnchor reports a break unless the record checkpointed in cp (found at position
// at among the checkpoints) is still stored where the checkpoint says. A read that fails
// for another reason than the message missing (a stream moving between servers) is an
// error wrapping ledger.ErrUnavailable, never a break.
func (s *Stream) checkAnchor(ctx context.Context, cp ledger.Checkpoint, at uint64) (*ledger.Break, error) {
	if cp.Seq == 0 {
		return nil, nil
	}
	b := &ledger.Break{Kind: ledger.BreakRewritten, Checkpoint: at, Seq: cp.Seq}
	var msg *jetstream.RawStreamMsg
	err := retryTransient(ctx, func() (err error) { msg, err = s.stream.GetMsg(ctx, cp.Stream); return err })
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		b.Kind = ledger.BreakTruncated
		b.Detail = fmt.Sprintf("record %d, checkpointed %s at stream sequence %d, is gone: %v", cp.Seq, cp.Time.Format(time.RFC3339), cp.Stream, err)
		return b, nil
	case err != nil:
		return nil, fmt.Errorf("%w: read the checkpointed record %d (stream sequence %d): %w", ledger.ErrUnavailable, cp.Seq, cp.Stream, err)
	}
	r, err := ledger.DecodeRecord(msg.Data)
	if err != nil || r.Seq != cp.Seq || r.Hash != cp.Hash {
		b.Detail = fmt.Sprintf("stream sequence %d does not hold record %d %.12s…, checkpointed %s", cp.Stream, cp.Seq, cp.Hash, cp.Time.Format(time.RFC3339))
		return b, nil
	}
	return nil, nil
}

// lastCheckpoint returns the last valid checkpoint and its position among the
// checkpoints; invalid ones after it are reported.
func (s *Stream) lastCheckpoint(ctx context.Context, report func(ledger.Break)) (ledger.Checkpoint, uint64, bool, error) {
	info, err := s.cps.Info(ctx)
	if err != nil {
		return ledger.Checkpoint{}, 0, false, fmt.Errorf("%w: checkpoint stream info: %w", ledger.ErrUnavailable, err)
	}
	for seq, n := info.State.LastSeq, 0; seq >= max(info.State.FirstSeq, 1) && n < maxCheckpointScan; seq, n = seq-1, n+1 {
		msg, err := s.cps.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return ledger.Checkpoint{}, 0, false, fmt.Errorf("%w: read checkpoint %d: %w", ledger.ErrUnavailable, seq, err)
		}
		cp, err := ledger.DecodeCheckpoint(msg.Data, s.cfg.Key)
		if err != nil {
			report(ledger.Break{Kind: ledger.BreakCheckpoint, Checkpoint: seq, Detail: err.Error()})
			continue
		}
		return cp, seq, true, nil
	}
	return ledger.Checkpoint{}, 0, false, nil
}

// sync examines every message stored after the last one examined: records that
// continue the chain move the tail on, anything else is reported as a break and
// skipped.
func (w *writer) sync(ctx context.Context) error {
	info, err := w.s.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("%w: stream info: %w", ledger.ErrUnavailable, err)
	}
	w.follow(info.Config.Replicas)
	last := info.State.LastSeq
	if last < w.last {
		// The stream holds fewer messages than were examined: it was recreated. The
		// checkpoints tell (verify); here the chain starts again from what is stored.
		w.s.cfg.Log.Error("ledger stream is shorter than what was examined: it was recreated; reading it again from the start",
			zap.Uint64("examined", w.last), zap.Uint64("last", last))
		unsealed, more := w.chk.Unsealed()
		w.chk = ledger.NewChecker(w.s.cfg.Key, ledger.GenesisAnchor, ledger.MaxUnsealed)
		w.chk.Restore(unsealed, more)
		w.last = 0
	}
	if last == w.last {
		return nil
	}
	for m, err := range w.s.messages(ctx, w.last+1, last) {
		if err != nil {
			w.publishState()
			return err
		}
		if _, b := w.chk.Next(m); b != nil {
			w.report(b)
		}
		w.last = m.Stream
	}
	w.last = last
	w.publishState()
	return nil
}

// follow sets how many records may be in flight on a stream of the given replicas.
func (w *writer) follow(replicas int) {
	w.maxInFlight = w.s.cfg.MaxInFlight
	if replicas > 1 {
		w.maxInFlight = 1
	}
}

// refreshReplicas reads the stream's replica count while records are in flight: the
// stream may have been made replicated since the writer last looked (see maxInFlight).
func (w *writer) refreshReplicas() {
	ctx, cancel := context.WithTimeout(w.base, w.s.cfg.Timeout)
	defer cancel()
	if info, err := w.s.stream.Info(ctx); err == nil {
		w.follow(info.Config.Replicas)
	}
}

// idleSync looks for messages others stored while this writer had nothing to publish,
// so garbage and seals are seen without waiting for the next append.
func (w *writer) idleSync() {
	if !w.nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(w.base, w.s.cfg.Timeout)
	defer cancel()
	if err := w.sync(ctx); err != nil {
		w.needReload = true
		w.s.cfg.Log.Debug("ledger: looking for messages stored by others", zap.Error(err))
	}
}

// report logs a break and hands it to StreamConfig.OnBreak.
func (w *writer) report(b *ledger.Break) {
	if b == nil {
		return
	}
	w.s.mu.Lock()
	w.s.state.BreaksSeen++
	w.s.mu.Unlock()
	w.s.cfg.Log.Warn("ledger integrity: a stored message is not a valid record; the chain goes on from the last good record",
		zap.String("kind", string(b.Kind)), zap.Uint64("stream_seq", b.Stream), zap.Uint64("seq", b.Seq),
		zap.Uint64("after", b.After), zap.Uint64("checkpoint", b.Checkpoint), zap.String("detail", b.Detail))
	if w.s.cfg.OnBreak != nil {
		w.s.cfg.OnBreak(*b)
	}
	w.publishState()
}

// publishState copies the writer's view of the chain for Integrity and the checkpoints.
func (w *writer) publishState() {
	unsealed, more := w.chk.Unsealed()
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	w.s.state.Head = w.chk.Head()
	w.s.state.Unsealed, w.s.state.UnsealedMore = unsealed, more
	w.s.state.Unauthenticated = w.chk.Unauthenticated()
}

// checkpointer writes a checkpoint of the head when CheckpointEvery records were
// stored or every CheckpointInterval when it moved, pokes the writer to look for
// messages others stored, and writes a last checkpoint once the writer has stopped.
func (s *Stream) checkpointer() {
	defer close(s.cpExited)
	t := time.NewTicker(s.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-s.exited:
			s.checkpoint()
			return
		case <-t.C:
			select {
			case s.poke <- struct{}{}:
			default:
			}
		case <-s.cpWake:
		}
		s.checkpoint()
	}
}

// checkpoint publishes a signed checkpoint of the head if it changed since the last.
func (s *Stream) checkpoint() {
	if s.cps == nil {
		return
	}
	st := s.Integrity()
	unsealed := uint64(len(st.Unsealed)) + st.UnsealedMore
	if st.Head.Seq == 0 || (st.Head == st.Checkpoint && unsealed == st.cpUnsealed) {
		return
	}
	data, err := ledger.EncodeCheckpoint(ledger.Checkpoint{Anchor: st.Head, Time: s.cfg.Clock.Now(),
		Unsealed: st.Unsealed, UnsealedMore: st.UnsealedMore}, s.cfg.Key)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		_, err = s.js.Publish(ctx, s.cfg.CheckpointSubject, data, jetstream.WithExpectStream(s.cfg.Checkpoints))
		cancel()
	}
	if err != nil {
		s.cfg.Log.Warn("ledger checkpoint not written (retried with the next one)", zap.Uint64("seq", st.Head.Seq), zap.Error(err))
		return
	}
	s.mu.Lock()
	s.state.Checkpoint, s.state.cpUnsealed = st.Head, unsealed
	s.mu.Unlock()
}

// messages iterates over the messages stored at stream sequences from..to: one by one
// for a short run, with an ordered consumer for a long one.
func (s *Stream) messages(ctx context.Context, from, to uint64) iter.Seq2[ledger.Message, error] {
	if to-from >= maxGetScan {
		return ReadMessages(ctx, s.stream, from, to)
	}
	return func(yield func(ledger.Message, error) bool) {
		for seq := from; seq <= to; seq++ {
			var msg *jetstream.RawStreamMsg
			err := retryTransient(ctx, func() (err error) {
				msg, err = s.stream.GetMsg(ctx, seq)
				return err
			})
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue // deleted (only in streams that allow it)
			}
			if err != nil {
				yield(ledger.Message{}, fmt.Errorf("%w: read stream sequence %d: %w", ledger.ErrUnavailable, seq, err))
				return
			}
			if !yield(ledger.Message{Stream: seq, Data: msg.Data}, nil) {
				return
			}
		}
	}
}

// All iterates over the stored chain from the first record, reading with an ordered
// consumer; it stops at the last record present when it started. A message that is not
// a record yields an error wrapping ledger.ErrBroken.
func (s *Stream) All(ctx context.Context) iter.Seq2[ledger.Record, error] {
	return ReadStream(ctx, s.stream)
}

// ReadStream iterates over the records of a ledger stream, in order, up to the last
// record present when iteration starts. A message that is not a record yields an error
// wrapping ledger.ErrBroken, and iteration stops (see ReadMessages and ledger.Audit
// to go past it).
func ReadStream(ctx context.Context, st jetstream.Stream) iter.Seq2[ledger.Record, error] {
	return func(yield func(ledger.Record, error) bool) {
		for m, err := range ReadMessages(ctx, st, 1, 0) {
			if err != nil {
				yield(ledger.Record{}, err)
				return
			}
			r, err := ledger.DecodeRecord(m.Data)
			if err != nil {
				err = fmt.Errorf("stream sequence %d: %w", m.Stream, err)
			}
			if !yield(r, err) || err != nil {
				return
			}
		}
	}
}

// ReadMessages iterates over the messages of a stream from stream sequence from up to
// to (0: the last message present when iteration starts), in order, with an ordered
// consumer. While a clustered stream or its consumer moves between servers (no
// responders, a leadership change, a timeout), it waits and goes on from the next
// sequence with a new consumer, a few times, before it yields ledger.ErrUnavailable.
func ReadMessages(ctx context.Context, st jetstream.Stream, from, to uint64) iter.Seq2[ledger.Message, error] {
	return func(yield func(ledger.Message, error) bool) {
		var info *jetstream.StreamInfo
		err := retryTransient(ctx, func() (err error) {
			info, err = st.Info(ctx)
			return err
		})
		if err != nil {
			yield(ledger.Message{}, fmt.Errorf("%w: stream info: %w", ledger.ErrUnavailable, err))
			return
		}
		last := info.State.LastSeq
		if to != 0 {
			last = min(last, to)
		}
		next := max(from, 1)
		if last == 0 || last < next || info.State.Msgs == 0 {
			return
		}
		for attempt := 0; ; attempt++ {
			done, progressed, err := readFrom(ctx, st, next, last, yield)
			if done {
				return
			}
			if progressed > next {
				next, attempt = progressed, 0
			}
			if !transient(err) || attempt >= readRetries || !sleepCtx(ctx, readBackoff(attempt)) {
				yield(ledger.Message{}, fmt.Errorf("%w: %w", ledger.ErrUnavailable, err))
				return
			}
		}
	}
}

// readRetries is how many times in a row ReadMessages starts again after a transient
// error without progress.
const readRetries = 8

// readBackoff is the pause before the given retry: 100 ms doubling up to 2 s.
func readBackoff(attempt int) time.Duration {
	return min(100*time.Millisecond<<min(attempt, 5), 2*time.Second)
}

// transient reports whether err is one a clustered stream gives while it moves.
func transient(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || // a request's own timeout; ctx's end stops the retries
		errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrConsumerLeadershipChanged) || unavailable503(err)
}

// unavailable503 reports a JetStream API error 503 ("JetStream system temporarily
// unavailable": no leader yet).
func unavailable503(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && api.Code == 503
}

// retryTransient runs op until it succeeds, fails permanently or ran out of retries.
func retryTransient(ctx context.Context, op func() error) error {
	for attempt := 0; ; attempt++ {
		err := op()
		if !transient(err) || attempt >= readRetries || !sleepCtx(ctx, readBackoff(attempt)) {
			return err
		}
	}
}

// sleepCtx waits d; false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// readFrom reads next..last with one ordered consumer and yields every message. done
// is true when reading is over (everything read, or the consumer stopped it, or a
// permanent error was yielded); otherwise err is the error that ended this consumer
// and progressed the sequence to go on from.
func readFrom(ctx context.Context, st jetstream.Stream, next, last uint64, yield func(ledger.Message, error) bool) (done bool, progressed uint64, err error) {
	cfg := jetstream.OrderedConsumerConfig{}
	if next > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, next
	}
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return false, next, fmt.Errorf("ordered consumer: %w", err)
	}
	for {
		// Exactly what is left (at most 500), so the pull ends with its last
		// message and leaves no subscription behind.
		batch, err := cons.Fetch(int(min(500, last-next+1)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return false, next, fmt.Errorf("fetch: %w", err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil {
				yield(ledger.Message{}, fmt.Errorf("%w: metadata: %w", ledger.ErrUnavailable, err))
				return true, next, nil
			}
			if md.Sequence.Stream > last {
				return true, next, nil
			}
			next = md.Sequence.Stream + 1
			if !yield(ledger.Message{Stream: md.Sequence.Stream, Data: msg.Data()}, nil) || md.Sequence.Stream >= last {
				return true, next, nil
			}
		}
		if err := batch.Error(); err != nil {
			return false, next, fmt.Errorf("fetch: %w", err)
		}
		if n == 0 {
			return false, next, fmt.Errorf("stream ended before sequence %d: %w", last, nats.ErrTimeout)
		}
	}
}

// ErrNothingToSeal is returned by Seal when the chain has no unsealed break.
var ErrNothingToSeal = errors.New("ledger: nothing to seal: every break is sealed")

// openExisting returns the ledger stream and (with a key) the checkpoint stream
// without changing their configuration; a missing checkpoint stream is nil.
func openExisting(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (st, cps jetstream.Stream, err error) {
	if err = retryTransient(ctx, func() (err error) { st, err = js.Stream(ctx, cfg.Name); return err }); err != nil {
		return nil, nil, fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	if cfg.Key == nil {
		return st, nil, nil
	}
	err = retryTransient(ctx, func() (err error) { cps, err = js.Stream(ctx, cfg.Checkpoints); return err })
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return st, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("stream %s: %w", cfg.Checkpoints, err)
	}
	return st, cps, nil
}

// Audit reads every message of the ledger stream named in cfg and, with cfg.Key,
// every checkpoint, and lists every break (see ledger.Audit). It changes nothing.
func Audit(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (ledger.Report, error) {
	cfg.defaults()
	st, cps, err := openExisting(ctx, js, cfg)
	if err != nil {
		return ledger.Report{}, err
	}
	var cpMsgs iter.Seq2[ledger.Message, error]
	if cps != nil {
		cpMsgs = ReadMessages(ctx, cps, 1, 0)
	}
	return ledger.Audit(ReadMessages(ctx, st, 1, 0), cpMsgs, cfg.Key)
}

// Seal audits the ledger (see Audit) and appends a seal record, MAC'd with cfg.Key,
// over every unsealed break: a new epoch anchored on the last good record. by names the
// operator. It returns the seal record and the audit it seals; ErrNothingToSeal when
// there is no unsealed break. The streams must exist; their configuration is kept.
func Seal(ctx context.Context, js jetstream.JetStream, cfg StreamConfig, by, reason string) (ledger.Record, ledger.Report, error) {
	cfg.defaults()
	if cfg.Key == nil {
		return ledger.Record{}, ledger.Report{}, ledger.ErrNoKey
	}
	rep, err := Audit(ctx, js, cfg)
	if err != nil {
		return ledger.Record{}, rep, err
	}
	unsealed := rep.Unsealed()
	if len(unsealed) == 0 {
		return ledger.Record{}, rep, ErrNothingToSeal
	}
	st, cps, err := openExisting(ctx, js, cfg)
	if err != nil {
		return ledger.Record{}, rep, err
	}
	if cps == nil {
		info, err := st.Info(ctx)
		if err != nil {
			return ledger.Record{}, rep, fmt.Errorf("%w: stream info: %w", ledger.ErrUnavailable, err)
		}
		cfg.Replicas = info.Config.Replicas
		if cps, err = ensureCheckpoints(ctx, js, cfg); err != nil {
			return ledger.Record{}, rep, err
		}
	}
	s, err := startStream(ctx, js, cfg, st, cps)
	if err != nil {
		return ledger.Record{}, rep, err
	}
	e, err := ledger.SealEntry(ledger.Seal{Epoch: rep.Epochs + 1, Breaks: unsealed, By: by, Reason: reason}, cfg.Clock.Now())
	if err != nil {
		_ = s.Close()
		return ledger.Record{}, rep, err
	}
	r, err := s.Append(ctx, e)
	return r, rep, errors.Join(err, s.Close())
}
