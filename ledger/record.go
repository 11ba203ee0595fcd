// Package ledger keeps the audit trail of Killswitch: every detection, incident change,
// decision, guard outcome, intent, attempt, application, verification and operator
// control, as records of an append-only, hash-chained log.
//
// Every record names the hash of the one before it, so removing, reordering or editing
// any record breaks the chain at that point, and Verify reports the first broken record.
// Records are kept in memory (Memory: replay and tests) or in a JetStream stream
// (ledger/jetstream); both chain the same way.
//
// The hash is public (anyone can compute it), so records also carry a MAC: HMAC-SHA256
// with a Key the service holds, over the same content as the hash. A record forged
// without the key fails its MAC. Signed Checkpoints of the head, kept apart from the
// records, make a chain cut off or rewritten after a checkpoint detectable.
//
// A stored message that is not a valid continuation of the chain (it does not decode,
// its hash or MAC is wrong, or it does not follow the last good record) is a Break: a
// Checker reports it and goes on from the last good record, so garbage in the store
// never stops the chain. Audit lists every break; a seal record (TypeSeal, see Seal)
// written by an operator after looking at them marks them as sealed.
//
// Append (Appender) stores one record and waits for it. Queue (Queuer) places an entry in
// the chain at once and returns a Pending: a caller recording several facts queues them
// all and waits for the last, since a record is stored only if every record queued
// before it is.
//
// The ledger is a leaf: it imports no stage, and every stage may append to it. Intent is
// written before an action is applied and the outcome after; when the ledger cannot be
// written, nothing is applied (the caller gets the error).
package ledger

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"time"
)

// RecordType says what a record is about.
type RecordType string

// The record types.
const (
	// TypeDetection records a detection.
	TypeDetection RecordType = "detection"
	// TypeIncident records an incident being opened, updated or closed.
	TypeIncident RecordType = "incident"
	// TypeDecision records a playbook decision (or escalation).
	TypeDecision RecordType = "decision"
	// TypeAction records a guard outcome, an intent, an attempt, an application or a
	// verification of one action.
	TypeAction RecordType = "action"
	// TypeControl records an operator's control: pause, resume, approval, rejection,
	// breaker reset.
	TypeControl RecordType = "control"
	// TypeSeal records an operator's seal over breaks of the chain (see Seal): a new
	// epoch anchored on the last good record.
	TypeSeal RecordType = "seal"
)

// Genesis is the Prev of the first record of a chain.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// ErrBroken is wrapped by every chain verification failure.
var ErrBroken = errors.New("ledger chain broken")

// ErrUnavailable is wrapped when the ledger cannot be written; callers must not apply
// anything whose intent could not be recorded.
var ErrUnavailable = errors.New("ledger unavailable")

// Entry is what a caller appends: the chain fields are filled in by the ledger.
type Entry struct {
	// Type says what the record is about.
	Type RecordType `json:"type"`
	// ID identifies the recorded fact deterministically (e.g. a detection ID, or
	// decision ID + "/intent"); appending the same ID twice records it once.
	ID string `json:"id"`
	// Incident is the incident the record belongs to, if any.
	Incident string `json:"incident,omitempty"`
	// Time is when the fact happened (from the injected clock; event time in replay).
	Time time.Time `json:"time"`
	// Payload is the fact itself as JSON.
	Payload json.RawMessage `json:"payload"`
}

// Record is one link of the chain.
type Record struct {
	Entry
	// Seq is the position in the chain, starting at 1.
	Seq uint64 `json:"seq"`
	// Prev is the hash of the previous record (Genesis for the first).
	Prev string `json:"prev"`
	// Hash is the hex SHA-256 over Seq, Prev and the entry's fields.
	Hash string `json:"hash"`
	// MAC is the hex HMAC-SHA256 with the ledger's Key over the same content as Hash;
	// empty in records written without a key (before MACs were introduced, replay).
	MAC string `json:"mac,omitempty"`
}

// computeHash returns the hash of r's content and chain position (r.Hash is ignored).
func computeHash(r *Record) string {
	h := sha256.New()
	writeContent(h, r)
	return hex.EncodeToString(h.Sum(nil))
}

// computeMAC returns the MAC of r's content and chain position with k.
func computeMAC(k *Key, r *Record) string {
	m := k.mac(domainRecord)
	writeContent(m, r)
	return hex.EncodeToString(m.Sum(nil))
}

// writeContent writes what the hash and the MAC cover: the record without Hash and MAC.
// Each variable-length field is length-prefixed so no two records share an encoding.
func writeContent(h hash.Hash, r *Record) {
	var n [8]byte
	put := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	binary.BigEndian.PutUint64(n[:], r.Seq)
	h.Write(n[:])
	put([]byte(r.Prev))
	put([]byte(r.Type))
	put([]byte(r.ID))
	put([]byte(r.Incident))
	binary.BigEndian.PutUint64(n[:], uint64(r.Time.UnixNano()))
	h.Write(n[:])
	put(r.Payload)
}

// Link returns the record of e following the record with sequence seq and hash prev
// (0 and Genesis for the first record). e must be normalized (see Entry.Normalize).
func Link(e Entry, seq uint64, prev string) Record {
	r := Record{Entry: e, Seq: seq + 1, Prev: prev}
	r.Time = r.Time.UTC()
	r.Hash = computeHash(&r)
	return r
}

// LinkSigned is Link, and MACs the record with k (a nil k leaves it without a MAC).
func LinkSigned(e Entry, seq uint64, prev string, k *Key) Record {
	r := Link(e, seq, prev)
	if k != nil {
		r.MAC = computeMAC(k, &r)
	}
	return r
}

// CheckMAC reports whether r carries the MAC k computes over its content: it wraps
// ErrBroken when r has no MAC or another one, and ErrNoKey when k is nil.
func (k *Key) CheckMAC(r *Record) error {
	switch {
	case k == nil:
		return ErrNoKey
	case r.MAC == "":
		return fmt.Errorf("%w at record %d: no MAC", ErrBroken, r.Seq)
	case !hmac.Equal([]byte(computeMAC(k, r)), []byte(r.MAC)):
		return fmt.Errorf("%w at record %d: MAC does not match (forged, or MAC'd with another key)", ErrBroken, r.Seq)
	}
	return nil
}

// Check verifies that r is intact and follows a record with sequence seq and hash prev.
func (r *Record) Check(seq uint64, prev string) error {
	switch {
	case r.Seq != seq+1:
		return fmt.Errorf("%w at record %d: sequence %d does not follow %d", ErrBroken, r.Seq, r.Seq, seq)
	case r.Prev != prev:
		return fmt.Errorf("%w at record %d: prev %.12s… does not match the previous record's hash %.12s…", ErrBroken, r.Seq, r.Prev, prev)
	case computeHash(r) != r.Hash:
		return fmt.Errorf("%w at record %d: content does not match its hash (edited)", ErrBroken, r.Seq)
	}
	return nil
}

// DecodeRecord parses one stored record, strictly.
func DecodeRecord(b []byte) (Record, error) {
	var r Record
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("%w: record does not decode: %w", ErrBroken, err)
	}
	if dec.More() {
		return Record{}, fmt.Errorf("%w: trailing data after record", ErrBroken)
	}
	if len(r.Hash) != 64 || len(r.Prev) != 64 || (r.MAC != "" && len(r.MAC) != 64) {
		return Record{}, fmt.Errorf("%w at record %d: malformed hash fields", ErrBroken, r.Seq)
	}
	return r, nil
}
