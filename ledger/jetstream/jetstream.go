// Package jetstream keeps the ledger on a JetStream stream: file storage, deletes and
// purges denied, so the chain sequence equals the stream sequence.
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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	MaxInFlight int
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

// Stream is the ledger on a JetStream stream. The stream denies deletes and purges, so
// the chain sequence equals the stream sequence. Several writers (processes) may share a
// stream: each publish states the sequence it expects to follow, and a writer that lost
// the race reloads the tail and links again. It is safe for concurrent use.
//
// A Stream owns a writer goroutine and a reply subscription on the JetStream
// connection, both ended by Close.
type Stream struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	cfg    StreamConfig

	mu     sync.Mutex
	queue  []*item // queued, not yet taken by the writer, in chain order
	closed bool

	wake      chan struct{} // capacity 1: the queue has grown
	closing   chan struct{} // closed by Close
	exited    chan struct{} // closed when the writer has stopped
	closeOnce sync.Once
	closeErr  error // written by the writer before exited is closed
}

var (
	_ ledger.Appender = (*Stream)(nil)
	_ ledger.Queuer   = (*Stream)(nil)
)

// OpenStream creates (or updates) the ledger stream, loads the chain's tail and starts
// the writer. ctx bounds the opening only; the writer runs until Close.
func OpenStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (*Stream, error) {
	cfg.defaults()
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
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
	if err != nil {
		return nil, fmt.Errorf("%w: create stream %s: %w", ledger.ErrUnavailable, cfg.Name, err)
	}
	s := &Stream{
		js: js, stream: st, cfg: cfg,
		wake: make(chan struct{}, 1), closing: make(chan struct{}), exited: make(chan struct{}),
	}
	tail, err := s.loadTail(ctx)
	if err != nil {
		return nil, err
	}
	w, err := newWriter(context.WithoutCancel(ctx), s, tail)
	if err != nil {
		return nil, err
	}
	go w.run()
	return s, nil
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
		items = append(items, &item{e: e, key: e.Key(), resolve: resolve})
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

// position is a place in the chain: a record's sequence and hash.
type position struct {
	seq  uint64
	hash string
}

// loadTail reads the last record, the one the next append links to.
func (s *Stream) loadTail(ctx context.Context) (position, error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return position{}, fmt.Errorf("%w: stream info: %w", ledger.ErrUnavailable, err)
	}
	last := info.State.LastSeq
	if last == 0 {
		return position{0, ledger.Genesis}, nil
	}
	r, err := s.readRecord(ctx, last)
	if err != nil {
		return position{}, err
	}
	return position{r.Seq, r.Hash}, nil
}

// readRecord reads the record stored at stream sequence seq and checks that it is
// intact and in its place.
func (s *Stream) readRecord(ctx context.Context, seq uint64) (ledger.Record, error) {
	msg, err := s.stream.GetMsg(ctx, seq)
	if err != nil {
		return ledger.Record{}, fmt.Errorf("%w: read record %d: %w", ledger.ErrUnavailable, seq, err)
	}
	r, err := ledger.DecodeRecord(msg.Data)
	if err != nil {
		return ledger.Record{}, fmt.Errorf("stream sequence %d: %w", seq, err)
	}
	if r.Seq != seq {
		return ledger.Record{}, fmt.Errorf("%w at record %d: stored at stream sequence %d", ledger.ErrBroken, r.Seq, seq)
	}
	if err := r.Check(r.Seq-1, r.Prev); err != nil {
		return ledger.Record{}, err
	}
	return r, nil
}

// item is a queued entry on its way to the stream.
type item struct {
	e        ledger.Entry
	key      string
	resolve  func(ledger.Record, error)
	attempts int // publishes refused because another writer appended first

	// Set each time the item is published.
	rec      ledger.Record // the record as linked for this publish
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

	tail       position // the last record known to be stored
	needReload bool     // tail may be stale after a failure: reload before publishing
	ready      []*item  // taken from the queue or to publish again, in chain order
	inflight   []*item  // published, in chain order
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
}

type uncertainKey struct {
	key string
	gen uint64
}

func newWriter(base context.Context, s *Stream, tail position) (*writer, error) {
	nc := s.js.Conn()
	w := &writer{
		s: s, nc: nc, base: base, tail: tail,
		inbox:     nc.NewInbox() + ".",
		replies:   make(chan *nats.Msg, 2*s.cfg.MaxInFlight+16),
		tokens:    make(map[string]*item),
		uncertain: make(map[string]uint64),
	}
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
			w.tail = position{head.rec.Seq, head.rec.Hash}
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
	return !w.troubled && !time.Now().Before(w.holdUntil) && n < w.s.cfg.MaxInFlight &&
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
		tail, err := w.loadTail(ctx)
		cancel()
		if err != nil {
			w.fail(nil, err)
			return
		}
		w.tail, w.needReload = tail, false
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
	prev, prevKey := w.tail, ""
	if n := len(w.inflight); n > 0 {
		p := w.inflight[n-1]
		prev, prevKey = position{p.rec.Seq, p.rec.Hash}, p.key
	}
	it.rec = ledger.Link(it.e, prev.seq, prev.hash)
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
	msg.Header.Set(jetstream.MsgIDHeader, it.key)
	msg.Header.Set(jetstream.ExpectedStreamHeader, w.s.cfg.Name)
	msg.Header.Set(jetstream.ExpectedLastSeqHeader, strconv.FormatUint(prev.seq, 10))
	if prevKey != "" {
		// The previous record is still in flight: if it is not the stream's last
		// record (another writer got in first and this one was refused), the stream's
		// last sequence may still match, but not its message ID.
		msg.Header.Set(jetstream.ExpectedLastMsgIDHeader, prevKey)
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
	case ack.Seq != it.rec.Seq:
		return &outcome{seq: ack.Seq, err: fmt.Errorf("%w at record %d: stored at stream sequence %d", ledger.ErrBroken, it.rec.Seq, ack.Seq)}
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
	tail, err := w.loadTail(ctx)
	if err != nil {
		w.needReload = true
		w.fail(batch, fmt.Errorf("append %s %s: %v; reloading the tail: %w", batch[0].e.Type, batch[0].e.ID, batch[0].out.err, err))
		return
	}
	w.tail, w.needReload = tail, false

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
		prev, err := w.s.readRecord(ctx, stored[i].Seq-1)
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

// loadTail reloads the tail, failing at once when NATS is not connected.
func (w *writer) loadTail(ctx context.Context) (position, error) {
	if !w.nc.IsConnected() {
		return position{}, w.notConnected()
	}
	return w.s.loadTail(ctx)
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

// settled forgets that its key had an unknown outcome: it is stored now.
func (w *writer) settled(it *item) { delete(w.uncertain, it.key) }

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

// All iterates over the stored chain from the first record, reading with an ordered
// consumer; it stops at the last record present when it started.
func (s *Stream) All(ctx context.Context) iter.Seq2[ledger.Record, error] {
	return ReadStream(ctx, s.stream)
}

// ReadStream iterates over the records of a ledger stream, in order, up to the last
// record present when iteration starts.
func ReadStream(ctx context.Context, st jetstream.Stream) iter.Seq2[ledger.Record, error] {
	return func(yield func(ledger.Record, error) bool) {
		info, err := st.Info(ctx)
		if err != nil {
			yield(ledger.Record{}, fmt.Errorf("%w: stream info: %w", ledger.ErrUnavailable, err))
			return
		}
		last := info.State.LastSeq
		if last == 0 {
			return
		}
		cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		if err != nil {
			yield(ledger.Record{}, fmt.Errorf("%w: ordered consumer: %w", ledger.ErrUnavailable, err))
			return
		}
		for {
			batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
			if err != nil {
				yield(ledger.Record{}, fmt.Errorf("%w: fetch: %w", ledger.ErrUnavailable, err))
				return
			}
			n := 0
			for msg := range batch.Messages() {
				n++
				md, err := msg.Metadata()
				if err != nil {
					yield(ledger.Record{}, fmt.Errorf("%w: metadata: %w", ledger.ErrUnavailable, err))
					return
				}
				r, err := ledger.DecodeRecord(msg.Data())
				if err != nil {
					err = fmt.Errorf("stream sequence %d: %w", md.Sequence.Stream, err)
				} else if r.Seq != md.Sequence.Stream {
					err = fmt.Errorf("%w at record %d: stored at stream sequence %d", ledger.ErrBroken, r.Seq, md.Sequence.Stream)
				}
				if !yield(r, err) || err != nil {
					return
				}
				if md.Sequence.Stream >= last {
					return
				}
			}
			if err := batch.Error(); err != nil {
				yield(ledger.Record{}, fmt.Errorf("%w: fetch: %w", ledger.ErrUnavailable, err))
				return
			}
			if n == 0 {
				yield(ledger.Record{}, fmt.Errorf("%w: stream ended before sequence %d", ledger.ErrUnavailable, last))
				return
			}
		}
	}
}
