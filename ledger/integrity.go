package ledger

import (
	"bytes"
	"crypto/hmac"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"iter"
	"slices"
	"strconv"
	"time"
)

// Message is one message of a ledger's store: where it is stored (the JetStream stream
// sequence; the record's Seq for Memory) and its bytes, which may be anything.
type Message struct {
	// Stream is the message's position in the store, starting at 1.
	Stream uint64
	// Data is the message's body.
	Data []byte
}

// Anchor is a place in the chain: the last good record, which the next record follows.
type Anchor struct {
	// Seq and Hash are the record's (0 and Genesis before the first record).
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	// Stream is where the record is stored (0 before the first record).
	Stream uint64 `json:"stream_seq"`
	// Keyed says a MAC'd record has been accepted up to here: from then on a record
	// without a MAC is a break.
	Keyed bool `json:"keyed"`
}

// GenesisAnchor is the anchor of an empty chain.
var GenesisAnchor = Anchor{Hash: Genesis}

// BreakKind says what is wrong with a stored message or a checkpoint.
type BreakKind string

// The kinds of break.
const (
	// BreakUndecodable: the message is not a record (not JSON, unknown fields…).
	BreakUndecodable BreakKind = "undecodable"
	// BreakEdited: the record's content does not match its hash.
	BreakEdited BreakKind = "hash"
	// BreakMAC: the record's MAC does not match (forged, or another key).
	BreakMAC BreakKind = "mac"
	// BreakNoMAC: a record without a MAC where the chain is already MAC'd.
	BreakNoMAC BreakKind = "no_mac"
	// BreakLink: an intact record that does not follow the last good record (wrong
	// sequence or prev: a copy, a fork, a forged link).
	BreakLink BreakKind = "link"
	// BreakTruncated: the chain ends before a checkpointed record (a cut-off tail).
	BreakTruncated BreakKind = "truncated"
	// BreakRewritten: the record at a checkpointed sequence has another hash (a
	// rewritten chain).
	BreakRewritten BreakKind = "rewritten"
	// BreakCheckpoint: a message among the checkpoints that is not a valid checkpoint.
	BreakCheckpoint BreakKind = "bad_checkpoint"
)

// Break is one finding of a chain check.
type Break struct {
	// Kind says what is wrong.
	Kind BreakKind `json:"kind"`
	// Stream is the store position of the offending message (0 for checkpoint breaks).
	Stream uint64 `json:"stream_seq,omitempty"`
	// Seq is the record sequence the message claims, when it decodes.
	Seq uint64 `json:"seq,omitempty"`
	// After is the sequence of the last good record before it; the chain goes on
	// from there.
	After uint64 `json:"after"`
	// Checkpoint is the position of the checkpoint concerned, among the checkpoints
	// (checkpoint breaks only).
	Checkpoint uint64 `json:"checkpoint,omitempty"`
	// Detail says what was found, for a human.
	Detail string `json:"detail"`
	// SealedBy is the sequence of the seal record that seals this break, 0 if none.
	SealedBy uint64 `json:"sealed_by,omitempty"`
}

// ID names the break stably: "stream:N" for a stored message, "checkpoint:N" for a
// checkpoint. A seal lists the IDs it seals.
func (b Break) ID() string {
	if b.Stream == 0 {
		return "checkpoint:" + strconv.FormatUint(b.Checkpoint, 10)
	}
	return "stream:" + strconv.FormatUint(b.Stream, 10)
}

// String describes the break on one line.
func (b Break) String() string {
	where := fmt.Sprintf("stream sequence %d", b.Stream)
	if b.Stream == 0 {
		where = fmt.Sprintf("checkpoint %d", b.Checkpoint)
	}
	if b.Seq != 0 {
		where += fmt.Sprintf(" (record %d)", b.Seq)
	}
	return fmt.Sprintf("%s: %s after record %d: %s", where, b.Kind, b.After, b.Detail)
}

// Seal is the payload of a seal record: an operator has looked at the listed breaks,
// and the chain goes on, as a new epoch, from the record the seal follows.
type Seal struct {
	// Epoch counts the seals of the chain, starting at 1.
	Epoch uint64 `json:"epoch"`
	// Breaks are the breaks sealed over.
	Breaks []Break `json:"breaks"`
	// By names the operator.
	By string `json:"by"`
	// Reason says why, for the record.
	Reason string `json:"reason,omitempty"`
}

// SealEntry returns the entry of a seal record: its ID is the epoch, so a seal
// appended twice is recorded once.
func SealEntry(s Seal, at time.Time) (Entry, error) {
	p, err := json.Marshal(s)
	if err != nil {
		return Entry{}, fmt.Errorf("ledger: seal: %w", err)
	}
	return Entry{Type: TypeSeal, ID: fmt.Sprintf("epoch-%d", s.Epoch), Time: at, Payload: p}, nil
}

// MaxUnsealed bounds the unsealed breaks a Checker keeps for its report when it is
// asked to keep few (the service's view); the count of the others is kept.
const MaxUnsealed = 100

// Checker follows a chain message by message: each message that continues the chain
// moves the anchor on, anything else is a Break, after which the chain goes on from
// the last good record. It tracks the seals and which breaks they seal. It is not safe
// for concurrent use.
type Checker struct {
	key     *Key
	head    Anchor
	keep    int // unsealed breaks kept; 0 keeps all
	all     bool
	unauth  uint64
	records uint64

	breaks   []Break // in order; unsealed only unless all
	dropped  uint64  // unsealed breaks not kept
	total    uint64  // breaks seen
	sealedBy map[string]uint64
	epochs   uint64
}

// NewChecker returns a checker that continues the chain after from. With a nil key
// MACs are not checked. keep bounds the unsealed breaks kept (0 keeps every break,
// sealed or not, as Audit does).
func NewChecker(key *Key, from Anchor, keep int) *Checker {
	if from.Hash == "" {
		from = GenesisAnchor
	}
	return &Checker{key: key, head: from, keep: keep, all: keep == 0, sealedBy: make(map[string]uint64)}
}

// Head returns the last good record's anchor.
func (c *Checker) Head() Anchor { return c.head }

// Records returns how many records the checker accepted.
func (c *Checker) Records() uint64 { return c.records }

// Unauthenticated returns how many records without a MAC it accepted (before the
// chain was MAC'd).
func (c *Checker) Unauthenticated() uint64 { return c.unauth }

// Epochs returns how many seal records it accepted.
func (c *Checker) Epochs() uint64 { return c.epochs }

// Next examines the message stored at position m.Stream. When it continues the chain
// it returns its record and nil (the anchor moves on); otherwise it returns the break
// (also recorded), and the anchor stays.
func (c *Checker) Next(m Message) (Record, *Break) {
	r, err := DecodeRecord(m.Data)
	if err != nil {
		return Record{}, c.Add(Break{Kind: BreakUndecodable, Stream: m.Stream, Seq: r.Seq, Detail: clip(err.Error())})
	}
	b := Break{Stream: m.Stream, Seq: r.Seq}
	switch {
	case computeHash(&r) != r.Hash:
		b.Kind, b.Detail = BreakEdited, "content does not match its hash"
	case r.MAC == "" && c.key != nil && c.head.Keyed:
		b.Kind, b.Detail = BreakNoMAC, "no MAC, and the chain is MAC'd"
	case r.MAC != "" && c.key != nil && c.key.CheckMAC(&r) != nil:
		b.Kind, b.Detail = BreakMAC, "MAC does not match: forged, or MAC'd with another key"
	case r.Seq != c.head.Seq+1 || r.Prev != c.head.Hash:
		b.Kind = BreakLink
		b.Detail = fmt.Sprintf("record %d with prev %.12s… does not follow record %d %.12s…", r.Seq, r.Prev, c.head.Seq, c.head.Hash)
	default:
		c.Accept(r, m.Stream)
		return r, nil
	}
	return r, c.Add(b)
}

// Accept moves the anchor to r, stored at position stream, without checking it: the
// writer that has just stored r knows it is good. A seal record seals what it lists.
func (c *Checker) Accept(r Record, stream uint64) {
	c.records++
	if r.MAC == "" {
		c.unauth++
	}
	c.head = Anchor{Seq: r.Seq, Hash: r.Hash, Stream: stream, Keyed: c.head.Keyed || r.MAC != ""}
	if r.Type != TypeSeal || (c.key != nil && r.MAC == "") {
		return // an unauthenticated seal seals nothing
	}
	var s Seal
	if err := json.Unmarshal(r.Payload, &s); err != nil {
		return
	}
	c.epochs++
	for _, b := range s.Breaks {
		if _, ok := c.sealedBy[b.ID()]; !ok {
			c.sealedBy[b.ID()] = r.Seq
		}
	}
	kept := c.breaks[:0]
	for _, b := range c.breaks {
		if by, ok := c.sealedBy[b.ID()]; ok {
			if !c.all {
				continue
			}
			b.SealedBy = by
		}
		kept = append(kept, b)
	}
	clear(c.breaks[len(kept):])
	c.breaks = kept
	if !c.all && len(s.Breaks) > 0 {
		c.dropped = 0 // breaks beyond the kept ones cannot be told apart: a seal clears them
	}
}

// Add records a break found outside the chain's messages (a checkpoint's), after the
// last good record, and returns it.
func (c *Checker) Add(b Break) *Break {
	c.total++
	b.After = c.head.Seq
	if by, ok := c.sealedBy[b.ID()]; ok {
		b.SealedBy = by
		if !c.all {
			return &b
		}
	}
	switch {
	case c.all || len(c.breaks) < c.keep:
		c.breaks = append(c.breaks, b)
	default:
		c.dropped++
	}
	return &b
}

// Restore adds breaks known before the checker's anchor (from a checkpoint) as
// unsealed, with the number of others not listed.
func (c *Checker) Restore(unsealed []Break, more uint64) {
	for _, b := range unsealed {
		if c.all || len(c.breaks) < c.keep {
			c.breaks = append(c.breaks, b)
		} else {
			c.dropped++
		}
	}
	c.dropped += more
}

// Breaks returns the breaks kept: every break with Audit's checker (sealed ones carry
// SealedBy), the unsealed ones otherwise.
func (c *Checker) Breaks() []Break { return slices.Clone(c.breaks) }

// Unsealed returns the kept unsealed breaks and how many more there are.
func (c *Checker) Unsealed() (bs []Break, more uint64) {
	for _, b := range c.breaks {
		if b.SealedBy == 0 {
			bs = append(bs, b)
		}
	}
	return bs, c.dropped
}

// Total returns how many breaks the checker has seen, sealed or not.
func (c *Checker) Total() uint64 { return c.total }

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// Checkpoint is a signed statement of the chain's head at some time, kept apart from
// the records: a chain that later ends before it, or holds another record at its
// sequence, has been cut off or rewritten.
type Checkpoint struct {
	// Anchor is the head: the last good record, where it is stored, and whether the
	// chain was MAC'd up to it.
	Anchor
	// Time is when the checkpoint was taken.
	Time time.Time `json:"time"`
	// Unsealed lists breaks not sealed yet (at most MaxUnsealed), so a restarted
	// service still reports them; UnsealedMore counts the others.
	Unsealed     []Break `json:"unsealed,omitempty"`
	UnsealedMore uint64  `json:"unsealed_more,omitempty"`
	// MAC is the hex HMAC-SHA256 with the ledger's key over everything above.
	MAC string `json:"mac"`
}

func checkpointMAC(k *Key, c *Checkpoint) (string, error) {
	unsealed, err := json.Marshal(c.Unsealed)
	if err != nil {
		return "", err
	}
	m := k.mac(domainCheckpoint)
	var n [8]byte
	for _, v := range []uint64{c.Seq, c.Stream, uint64(c.Time.UnixNano()), c.UnsealedMore, uint64(len(c.Hash)), uint64(len(unsealed))} {
		binary.BigEndian.PutUint64(n[:], v)
		m.Write(n[:])
	}
	if c.Keyed {
		m.Write([]byte{1})
	} else {
		m.Write([]byte{0})
	}
	m.Write([]byte(c.Hash))
	m.Write(unsealed)
	return hex.EncodeToString(m.Sum(nil)), nil
}

// EncodeCheckpoint MACs c with k and returns its stored form.
func EncodeCheckpoint(c Checkpoint, k *Key) ([]byte, error) {
	if k == nil {
		return nil, ErrNoKey
	}
	c.Time = c.Time.UTC()
	mac, err := checkpointMAC(k, &c)
	if err != nil {
		return nil, fmt.Errorf("ledger: encode checkpoint: %w", err)
	}
	c.MAC = mac
	return json.Marshal(c)
}

// DecodeCheckpoint parses a stored checkpoint, strictly, and checks its MAC with k.
// Every failure wraps ErrBroken (ErrNoKey when k is nil).
func DecodeCheckpoint(b []byte, k *Key) (Checkpoint, error) {
	if k == nil {
		return Checkpoint{}, ErrNoKey
	}
	var c Checkpoint
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint does not decode: %w", ErrBroken, err)
	}
	if dec.More() {
		return Checkpoint{}, fmt.Errorf("%w: trailing data after checkpoint", ErrBroken)
	}
	if len(c.Hash) != 64 || len(c.MAC) != 64 {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint with malformed hash fields", ErrBroken)
	}
	want, err := checkpointMAC(k, &c)
	if err != nil || !hmac.Equal([]byte(want), []byte(c.MAC)) {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint of record %d: MAC does not match (forged, or another key)", ErrBroken, c.Seq)
	}
	return c, nil
}

// Report is the outcome of Audit.
type Report struct {
	// Records is the number of good records; Head and HeadStream are the last one's
	// hash (Genesis for none) and store position.
	Records    uint64 `json:"records"`
	Head       string `json:"head"`
	HeadSeq    uint64 `json:"head_seq"`
	HeadStream uint64 `json:"head_stream_seq"`
	// Unauthenticated counts good records without a MAC (written before MACs, or
	// MACs not checked).
	Unauthenticated uint64 `json:"unauthenticated"`
	// MACsChecked says whether a key was given.
	MACsChecked bool `json:"macs_checked"`
	// Checkpoints counts the valid checkpoints compared with the chain.
	Checkpoints int `json:"checkpoints"`
	// Epochs counts the seal records.
	Epochs uint64 `json:"epochs"`
	// Breaks lists every break, in the order found; sealed ones carry SealedBy.
	Breaks []Break `json:"breaks"`
}

// Unsealed returns the breaks no seal covers.
func (r *Report) Unsealed() []Break {
	var out []Break
	for _, b := range r.Breaks {
		if b.SealedBy == 0 {
			out = append(out, b)
		}
	}
	return out
}

// Intact reports whether there is no unsealed break.
func (r *Report) Intact() bool { return len(r.Unsealed()) == 0 }

// Audit walks every message of a ledger store and every checkpoint and lists every
// break: messages that are not good records (each reported, the chain going on from the
// last good record), checkpoints that do not verify, a chain that ends before a
// checkpoint (cut off) or holds another record at a checkpointed sequence (rewritten).
// Seal records mark the breaks they list as sealed. With a nil key MACs are not
// checked and checkpoints cannot be read (they are skipped). Errors of the sources are
// returned as they are, with the report so far.
func Audit(messages, checkpoints iter.Seq2[Message, error], key *Key) (Report, error) {
	c := NewChecker(key, GenesisAnchor, 0)
	rep := Report{MACsChecked: key != nil}
	var cps []Checkpoint
	var cpAt []uint64
	if key != nil && checkpoints != nil {
		for m, err := range checkpoints {
			if err != nil {
				return rep, err
			}
			cp, err := DecodeCheckpoint(m.Data, key)
			if err != nil {
				c.Add(Break{Kind: BreakCheckpoint, Checkpoint: m.Stream, Detail: clip(err.Error())})
				continue
			}
			cps = append(cps, cp)
			cpAt = append(cpAt, m.Stream)
		}
	}
	// Checkpoints in record order; each is compared when its record is accepted.
	order := make([]int, len(cps))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmpU(cps[a].Seq, cps[b].Seq) })
	next := 0
	compare := func(r Record) {
		for ; next < len(order) && cps[order[next]].Seq <= r.Seq; next++ {
			cp, at := cps[order[next]], cpAt[order[next]]
			switch {
			case cp.Seq == 0:
			case cp.Seq < r.Seq:
				// Its record was not among the good ones (cannot happen: sequences of
				// good records are consecutive); reported for completeness.
				c.Add(Break{Kind: BreakRewritten, Checkpoint: at, Seq: cp.Seq, Detail: "the checkpointed record is not in the chain"})
			case cp.Hash != r.Hash:
				c.Add(Break{Kind: BreakRewritten, Checkpoint: at, Seq: cp.Seq,
					Detail: fmt.Sprintf("record %d has hash %.12s…, checkpointed %s as %.12s…", r.Seq, r.Hash, cp.Time.Format(time.RFC3339), cp.Hash)})
			}
		}
	}
	for m, err := range messages {
		if err != nil {
			return rep, err
		}
		if r, b := c.Next(m); b == nil {
			compare(r)
		}
	}
	if next < len(order) {
		last := order[len(order)-1]
		for _, i := range order[next:] {
			if cps[i].Seq > cps[last].Seq || (cps[i].Seq == cps[last].Seq && cpAt[i] > cpAt[last]) {
				last = i
			}
		}
		cp := cps[last]
		c.Add(Break{Kind: BreakTruncated, Checkpoint: cpAt[last], Seq: cp.Seq,
			Detail: fmt.Sprintf("the chain ends at record %d; record %d (stream sequence %d) was checkpointed %s", c.head.Seq, cp.Seq, cp.Stream, cp.Time.Format(time.RFC3339))})
	}
	// Seals cover breaks found before or after them (a truncation is found at the end).
	for i, b := range c.breaks {
		if by, ok := c.sealedBy[b.ID()]; ok && b.SealedBy == 0 {
			c.breaks[i].SealedBy = by
		}
	}
	h := c.Head()
	rep.Records, rep.Head, rep.HeadSeq, rep.HeadStream = c.Records(), h.Hash, h.Seq, h.Stream
	rep.Unauthenticated, rep.Checkpoints, rep.Epochs = c.Unauthenticated(), len(cps), c.Epochs()
	rep.Breaks = c.Breaks()
	return rep, nil
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
