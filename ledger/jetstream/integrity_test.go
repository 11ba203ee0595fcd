package jetstream

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/ledger"
	"github.com/nats-io/nats.go/jetstream"
)

func key(tb testing.TB, c byte) *ledger.Key {
	tb.Helper()
	k, err := ledger.NewKey([]byte(strings.Repeat(string(c), ledger.KeySize)))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// audit audits the ledger named in cfg and fails the test on a read error.
func audit(t *testing.T, js jetstream.JetStream, cfg StreamConfig) ledger.Report {
	t.Helper()
	rep, err := Audit(context.Background(), js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func appendN(t *testing.T, s *Stream, prefix string, n int) []ledger.Record {
	t.Helper()
	var out []ledger.Record
	for i := range n {
		r, err := s.Append(context.Background(), named(fmt.Sprintf("%s-%03d", prefix, i), i))
		if err != nil {
			t.Fatalf("append %s %d: %v", prefix, i, err)
		}
		out = append(out, r)
	}
	return out
}

func publish(t *testing.T, js jetstream.JetStream, subject string, data []byte) {
	t.Helper()
	if _, err := js.Publish(context.Background(), subject, data); err != nil {
		t.Fatal(err)
	}
}

// Garbage published between appends does not stop the chain: appends continue after
// the last good record, the stream reports the break, Audit lists it, and a seal
// covers it.
func TestGarbageBetweenAppends(t *testing.T) {
	srv := testharness.NATS(t)
	js := connect(t, srv)
	cfg := StreamConfig{Key: key(t, 'k'), CheckpointInterval: 50 * time.Millisecond}
	s := openStream(t, js, cfg)
	before := appendN(t, s, "before", 3)
	publish(t, js, "killswitch.ledger", []byte("not a record"))
	after := appendN(t, s, "after", 3)
	if after[0].Seq != 4 || after[0].Prev != before[2].Hash {
		t.Fatalf("after the garbage: record %d prev %.12s, want 4 after %.12s", after[0].Seq, after[0].Prev, before[2].Hash)
	}
	st := s.Integrity()
	if !st.Degraded() || st.BreaksSeen != 1 || st.Unsealed[0].Stream != 4 || st.Unsealed[0].Kind != ledger.BreakUndecodable {
		t.Fatalf("integrity %+v", st)
	}
	rep := audit(t, js, cfg)
	if rep.Records != 6 || len(rep.Breaks) != 1 || rep.Breaks[0].Stream != 4 || rep.Intact() {
		t.Fatalf("audit %+v", rep)
	}
	// Reopened (a restart): it opens, degraded, and goes on.
	_ = s.Close()
	s = openStream(t, js, cfg)
	if st := s.Integrity(); !st.Degraded() || st.Head.Seq != 6 {
		t.Fatalf("reopened: %+v", st)
	}
	appendN(t, s, "reopened", 1)

	// The operator seals: verify is clean, listing the sealed break, and the running
	// stream sees the seal without appending.
	seal, sealed, err := Seal(context.Background(), js, cfg, "ana", "looked at it: test garbage")
	if err != nil {
		t.Fatal(err)
	}
	if seal.Type != ledger.TypeSeal || seal.Seq != 8 || len(sealed.Unsealed()) != 1 {
		t.Fatalf("seal %+v over %+v", seal, sealed)
	}
	rep = audit(t, js, cfg)
	if !rep.Intact() || len(rep.Breaks) != 1 || rep.Breaks[0].SealedBy != 8 || rep.Epochs != 1 {
		t.Fatalf("after the seal: %+v", rep)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Integrity().Degraded() {
		if time.Now().After(deadline) {
			t.Fatalf("the stream did not see the seal: %+v", s.Integrity())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r := appendN(t, s, "sealed", 1)[0]; r.Seq != 9 || r.Prev != seal.Hash {
		t.Fatalf("after the seal: %+v", r)
	}
	if _, _, err := Seal(context.Background(), js, cfg, "ana", ""); err != ErrNothingToSeal {
		t.Fatalf("second seal: %v", err)
	}
}

// Garbage published while the writer pipelines makes its publishes fail with a wrong
// last sequence: it examines the tail, skips the garbage and goes on.
func TestGarbageConcurrentWithPipeline(t *testing.T) {
	srv := testharness.NATS(t)
	js := connect(t, srv)
	cfg := StreamConfig{Key: key(t, 'k')}
	s := openStream(t, js, cfg)
	other := connect(t, srv)
	const entries, garbage = 400, 20
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range garbage {
			publish(t, other, "killswitch.ledger", []byte(fmt.Sprintf("garbage %d", i)))
			time.Sleep(time.Millisecond)
		}
	})
	var ps []*ledger.Pending
	for i := range entries {
		ps = append(ps, s.Queue(named(fmt.Sprintf("e-%03d", i), i)))
		if i%20 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	wg.Wait()
	for i, p := range ps {
		if _, err := p.Wait(context.Background()); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	rep := audit(t, js, cfg)
	if rep.Records != entries || len(rep.Breaks) != garbage {
		t.Fatalf("audit: %d records, %d breaks: %+v", rep.Records, len(rep.Breaks), rep.Breaks)
	}
	if st := s.Integrity(); st.BreaksSeen != garbage {
		t.Fatalf("the stream saw %d breaks, want %d", st.BreaksSeen, garbage)
	}
}

// A record forged with the public hash and a wrong key, correctly linked: Audit fails
// it on its MAC, and the chain goes on past it.
func TestForgedLinkedRecord(t *testing.T) {
	srv := testharness.NATS(t)
	js := connect(t, srv)
	cfg := StreamConfig{Key: key(t, 'k')}
	s := openStream(t, js, cfg)
	recs := appendN(t, s, "good", 3)
	e := named("forged", 9)
	if err := e.Normalize(); err != nil {
		t.Fatal(err)
	}
	forged := ledger.LinkSigned(e, 3, recs[2].Hash, key(t, 'x'))
	data, _ := json.Marshal(forged)
	publish(t, js, "killswitch.ledger", data)
	next := appendN(t, s, "next", 1)[0]
	if next.Seq != 4 || next.Prev != recs[2].Hash {
		t.Fatalf("the writer linked after the forgery: %+v", next)
	}
	rep := audit(t, js, cfg)
	if rep.Intact() || len(rep.Breaks) != 1 || rep.Breaks[0].Kind != ledger.BreakMAC || rep.Breaks[0].Stream != 4 || rep.Records != 4 {
		t.Fatalf("audit %+v", rep)
	}
}

// Checkpoints show a cut-off tail and a rewritten one: copies of a ledger stream that
// hold a prefix of its messages (and then other records) are audited against the
// original's checkpoints.
func TestCheckpointsDetectTruncationAndRewrite(t *testing.T) {
	srv := testharness.NATS(t)
	js := connect(t, srv)
	k := key(t, 'k')
	orig := StreamConfig{Name: "ORIG", Subject: "orig.ledger", Checkpoints: "ORIG_CP", CheckpointSubject: "orig.cp", Key: k, CheckpointEvery: 5}
	s := openStream(t, js, orig)
	appendN(t, s, "orig", 20)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if rep := audit(t, js, orig); !rep.Intact() || rep.Checkpoints < 4 || rep.Records != 20 {
		t.Fatalf("original: %+v", rep)
	}
	src, err := js.Stream(context.Background(), "ORIG")
	if err != nil {
		t.Fatal(err)
	}
	// copyPrefix makes stream name hold the first n messages of ORIG.
	copyPrefix := func(name string, n uint64) StreamConfig {
		cfg := StreamConfig{Name: name, Subject: strings.ToLower(name) + ".ledger", Checkpoints: name + "_CP",
			CheckpointSubject: strings.ToLower(name) + ".cp", Key: k}
		if _, err := ensureStream(context.Background(), js, func() StreamConfig { c := cfg; c.defaults(); return c }()); err != nil {
			t.Fatal(err)
		}
		for seq := uint64(1); seq <= n; seq++ {
			m, err := src.GetMsg(context.Background(), seq)
			if err != nil {
				t.Fatal(err)
			}
			publish(t, js, cfg.Subject, m.Data)
		}
		return cfg
	}
	cut := copyPrefix("CUT", 12)
	cut.Checkpoints = orig.Checkpoints // audited against the original's checkpoints
	rep := audit(t, js, cut)
	if rep.Intact() || len(rep.Breaks) != 1 || rep.Breaks[0].Kind != ledger.BreakTruncated || rep.Records != 12 {
		t.Fatalf("truncated: %+v", rep)
	}
	// Rewritten: the prefix, then other records MAC'd with the same key.
	rw := copyPrefix("REWRITTEN", 12)
	w := openStream(t, js, rw)
	appendN(t, w, "rewritten", 8)
	_ = w.Close()
	rw.Checkpoints = orig.Checkpoints
	rep = audit(t, js, rw)
	if rep.Intact() || rep.Records != 20 {
		t.Fatalf("rewritten: %+v", rep)
	}
	for _, b := range rep.Breaks {
		if b.Kind != ledger.BreakRewritten || b.Seq <= 12 {
			t.Fatalf("rewritten: break %s", b)
		}
	}
	// A writer opened on the cut-off stream with the original's checkpoints reports
	// the cut and goes on from the last good record.
	cut.CheckpointSubject = orig.CheckpointSubject
	c := openStream(t, js, cut)
	if st := c.Integrity(); !st.Degraded() || st.Unsealed[0].Kind != ledger.BreakTruncated || st.Head.Seq != 12 {
		t.Fatalf("writer on the cut-off stream: %+v", st)
	}
	if r := appendN(t, c, "after-cut", 1)[0]; r.Seq != 13 {
		t.Fatalf("after the cut: %+v", r)
	}
}

// A stream written before MACs (no key) is read by a keyed writer: its records are
// unauthenticated, not breaks, and the chain goes on MAC'd.
func TestKeyedWriterOnUnkeyedLedger(t *testing.T) {
	srv := testharness.NATS(t)
	js := connect(t, srv)
	old := openStream(t, js)
	appendN(t, old, "legacy", 3)
	_ = old.Close()
	cfg := StreamConfig{Key: key(t, 'k')}
	s := openStream(t, js, cfg)
	if st := s.Integrity(); st.Degraded() || st.Unauthenticated != 3 {
		t.Fatalf("integrity %+v", st)
	}
	appendN(t, s, "keyed", 2)
	rep := audit(t, js, cfg)
	if !rep.Intact() || rep.Unauthenticated != 3 || rep.Records != 5 {
		t.Fatalf("audit %+v", rep)
	}
}
