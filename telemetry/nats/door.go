package nats

import (
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// The door of the NATS sources: after an event decoded, it passes a
// telemetry.Admission (names, declared sensors, event time against a reference) and its
// vendor must be the one its subject names. A refused event is dead-lettered with its
// reason (live sources) or counted and skipped (StreamRange), like a message that does
// not decode.

// subjectVendor finds the vendor token of a message's subject.
//
// VendorToken semantics (JetStreamOptions, CoreOptions, StreamRange): 0 derives the
// token from the filter subjects, as the position of the first wildcard of the filter
// that the subject matches ("egress.>" and "egress.*" name the vendor in the second
// token, so the body of a message on egress.mailer must say vendor "mailer"); a positive
// n says the vendor is token n (1-based) of every subject; a negative value turns the
// check off (formats whose vendor comes from CIDR attribution, such as VPC flow logs).
// A filter without a wildcard names no vendor: events read through it are not checked
// against their subject.
type subjectVendor struct {
	off     bool
	fixed   int      // 1-based token, 0 when derived
	filters []string // the filters, for derived tokens
	pos     []int    // 0-based position of the first wildcard of each filter, -1 if none
}

func newSubjectVendor(token int, filters []string) *subjectVendor {
	sv := &subjectVendor{off: token < 0, fixed: max(token, 0), filters: filters}
	if sv.off || sv.fixed > 0 {
		return sv
	}
	wild := false
	for _, f := range filters {
		p := -1
		for i, t := range strings.Split(f, ".") {
			if t == "*" || t == ">" {
				p = i
				break
			}
		}
		wild = wild || p >= 0
		sv.pos = append(sv.pos, p)
	}
	if !wild {
		// No filter has a wildcard: the subjects name no vendor.
		sv.off = true
	}
	return sv
}

// vendor returns the vendor token of subject, or "" when nothing is checked.
func (sv *subjectVendor) vendor(subject string) string {
	if sv == nil || sv.off {
		return ""
	}
	if sv.fixed > 0 {
		return token(subject, sv.fixed-1)
	}
	for i, f := range sv.filters {
		if sv.pos[i] >= 0 && (len(sv.filters) == 1 || subjectMatches(f, subject)) {
			return token(subject, sv.pos[i])
		}
	}
	return ""
}

// token returns the n-th (0-based) token of subject without allocating, or "\x00" (no
// vendor can equal it) when the subject has fewer tokens: a message whose subject
// names no vendor where one is expected is a mismatch, not a pass.
func token(subject string, n int) string {
	for range n {
		i := strings.IndexByte(subject, '.')
		if i < 0 {
			return "\x00"
		}
		subject = subject[i+1:]
	}
	if i := strings.IndexByte(subject, '.'); i >= 0 {
		return subject[:i]
	}
	return subject
}

// door is the admission of one source: nil admission admits everything.
type door struct {
	adm *telemetry.Admission
	sv  *subjectVendor
}

func newDoor(adm *telemetry.Admission, token int, filters []string) door {
	if adm == nil {
		return door{}
	}
	return door{adm: adm, sv: newSubjectVendor(token, filters)}
}

// check admits e, read from subject, against the reference now.
func (d door) check(e *telemetry.Event, subject string, now time.Time) error {
	if d.adm == nil {
		return nil
	}
	return d.adm.Check(e, d.sv.vendor(subject), telemetry.At(now))
}

// checkStored admits e, read from subject, as check does; stored is when the server
// stored the message (zero if unknown). An event is not too old when it was recent
// as the server stored it: a backlog read after Killswitch itself was down is not
// refused for its wait in the stream, while the clock stays the bound of the future.
func (d door) checkStored(e *telemetry.Event, subject string, now, stored time.Time) error {
	if d.adm == nil {
		return nil
	}
	ref := telemetry.At(now)
	if !stored.IsZero() && stored.Before(now) {
		ref.Lo = stored
	}
	return d.adm.Check(e, d.sv.vendor(subject), ref)
}

// stampTime converts a reply subject's timestamp to a time (zero if unknown).
func stampTime(ns uint64) time.Time {
	if ns == 0 || ns >= 1<<63 {
		return time.Time{}
	}
	return time.Unix(0, int64(ns))
}
