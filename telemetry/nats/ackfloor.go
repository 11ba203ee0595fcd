package nats

import (
	"strings"
	"time"
)

// ackFloor decides what a batch-acknowledging (AckAll) JetStream reader may
// acknowledge. With AckAll, acknowledging stream sequence X acknowledges every message
// at or below X, so X may be acknowledged only once every message of the stream at or
// below X that the consumer could deliver is done: handed on, skipped, dead-lettered,
// or known not to exist (deleted, or on a subject outside the filter).
//
// The floor starts at the consumer's acknowledgement floor as the server reports it
// and only moves over sequences marked done. Sequences above the floor that are not
// done (lost in transit, pending from an earlier reader, waiting for redelivery after a
// handler error) hold it back, so no acknowledgement can ever cover a message nobody
// handed on. This makes batch acknowledgement safe even with several readers on one
// consumer: a reader only ever acknowledges what it, or the server's floor, accounts
// for.
//
// An ackFloor is owned by one goroutine.
type ackFloor struct {
	floor  uint64             // every sequence ≤ floor is done
	done   map[uint64]string  // done sequences above floor+1 → the reply subject to ack them with
	failed map[uint64]failure // sequences that failed retryably; redelivery pending
	reply  string             // reply subject of the highest done message the floor passed since take
	passed int                // delivered messages the floor passed since take
	top    uint64             // highest sequence seen
}

func newAckFloor(floor uint64) *ackFloor {
	return &ackFloor{floor: floor, done: map[uint64]string{}, failed: map[uint64]failure{}, top: floor}
}

// isDone reports whether seq needs no more work.
func (a *ackFloor) isDone(seq uint64) bool {
	if seq <= a.floor {
		return true
	}
	_, ok := a.done[seq]
	return ok
}

// see records that seq was delivered.
func (a *ackFloor) see(seq uint64) {
	if seq > a.top {
		a.top = seq
	}
}

// markDone records that seq is done; reply (may be empty) acknowledges it.
func (a *ackFloor) markDone(seq uint64, reply string) {
	delete(a.failed, seq)
	a.see(seq)
	switch {
	case seq <= a.floor:
		return
	case seq == a.floor+1:
		a.floor = seq
		if reply != "" {
			a.reply = reply
			a.passed++
		}
		a.drain()
	default:
		a.done[seq] = reply
	}
}

// failure is a sequence that failed retryably and awaits redelivery.
type failure struct {
	deliveries uint64    // deliveries so far (including resolver attempts)
	at         time.Time // when it last failed
}

// markFailed records that seq failed after deliveries attempts, at now, and will be
// redelivered.
func (a *ackFloor) markFailed(seq, deliveries uint64, now time.Time) {
	a.see(seq)
	if seq > a.floor {
		a.failed[seq] = failure{deliveries: deliveries, at: now}
	}
}

// attempts returns how many attempts a failed sequence had, 0 if none is recorded.
func (a *ackFloor) attempts(seq uint64) uint64 { return a.failed[seq].deliveries }

// drain moves the floor over done sequences that have become contiguous.
func (a *ackFloor) drain() {
	for len(a.done) > 0 {
		r, ok := a.done[a.floor+1]
		if !ok {
			return
		}
		delete(a.done, a.floor+1)
		a.floor++
		if r != "" {
			a.reply = r
			a.passed++
		}
	}
}

// raise moves the floor to f when f is higher: everything at or below f is known done
// (the server's acknowledgement floor, or the stream's first sequence minus one).
func (a *ackFloor) raise(f uint64) {
	if f <= a.floor {
		return
	}
	a.floor = f
	for s := range a.done {
		if s <= f {
			delete(a.done, s)
		}
	}
	for s := range a.failed {
		if s <= f {
			delete(a.failed, s)
		}
	}
	a.see(f)
	a.drain()
}

// take returns the reply subject that acknowledges everything up to the floor, if the
// floor passed a delivered message since the last take, and how many it passed.
func (a *ackFloor) take() (string, int) {
	r, n := a.reply, a.passed
	a.reply, a.passed = "", 0
	return r, n
}

// blocked reports whether done work above the floor waits for a sequence that is
// neither done nor awaiting redelivery.
func (a *ackFloor) blocked() bool { return len(a.done) > 0 || len(a.failed) > 0 }

// gaps returns up to limit sequences above the floor, up to the highest sequence seen,
// that hold the floor back: neither done nor awaiting redelivery, or awaiting a
// redelivery that should have come before staleBefore.
func (a *ackFloor) gaps(limit int, staleBefore time.Time) []uint64 {
	var out []uint64
	for s := a.floor + 1; s <= a.top && len(out) < limit; s++ {
		if _, ok := a.done[s]; ok {
			continue
		}
		if f, ok := a.failed[s]; ok && !f.at.Before(staleBefore) {
			continue
		}
		out = append(out, s)
	}
	return out
}

// ackMeta is what a JetStream reply subject says about a delivery.
type ackMeta struct {
	delivered, streamSeq, consumerSeq uint64
	// stamp is when the server stored the message, in Unix nanoseconds (0 if unknown).
	stamp uint64
}

// parseAckReply reads the delivery count and sequences from a JetStream reply subject
// without allocating. Both forms are accepted:
//
//	$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>
//	$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>[.<token>]
func parseAckReply(s string) (ackMeta, bool) {
	if !strings.HasPrefix(s, "$JS.ACK.") {
		return ackMeta{}, false
	}
	n := strings.Count(s, ".") + 1
	first := 4 // token index of <delivered> in the short form
	switch {
	case n == 9:
	case n >= 11:
		first = 6
	default:
		return ackMeta{}, false
	}
	var vals [4]uint64
	tok := 0
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			continue
		}
		if tok >= first && tok < first+4 {
			v, ok := atouString(s[start:i])
			if !ok {
				if tok == first+3 {
					break // the timestamp is informative: a bad one is unknown
				}
				return ackMeta{}, false
			}
			vals[tok-first] = v
		}
		tok++
		start = i + 1
		if tok >= first+4 {
			break
		}
	}
	return ackMeta{delivered: vals[0], streamSeq: vals[1], consumerSeq: vals[2], stamp: vals[3]}, true
}

// atouString parses a decimal unsigned integer that fits in 63 bits.
func atouString(s string) (uint64, bool) {
	if len(s) == 0 || len(s) > 19 {
		return 0, false
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, v < 1<<63
}
