package detectors

import (
	"fmt"

	"github.com/cespare/xxhash/v2"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// The new-destination detector. Each vendor has a bounded set of destination
// fingerprints. With an allow-list, a destination outside it fires on its first byte
// (the allow-list is parsed once; each destination is checked against it once and the
// verdict remembered). Without one, destinations are learned during the vendor's
// learning period (counted in observed history, see activity.hist, so an event dated
// long ago does not end it), and afterwards a destination never seen for the vendor
// fires on its first byte and is then remembered. Each destination fires at most once
// while it is remembered.
//
// The set holds 30-bit fingerprints in an open-addressing table of 64 to destMaxSlots
// slots (at most 16 KiB per vendor), probing at most destProbes slots. A new
// destination is taken for a known one (a false negative) only if its fingerprint
// equals one stored in its probe window: at most destProbes/2^30 ≈ 7.5e-9 per new
// destination.
// When a probe window is full, the destination in the first slot is forgotten (counted
// in Counters.DestinationsEvicted); a forgotten destination may fire again later (a
// false positive, never a false negative).

const (
	destMinSlots = 64
	destMaxSlots = 4096
	destProbes   = 8
)

// destSet is a bounded set of destination fingerprints. An entry is tag<<1 | alerted,
// where tag is a 31-bit fingerprint with its top bit set (so never zero) and 30 bits
// of hash; its low bits also choose the first slot probed.
type destSet struct {
	slots []uint32
	count int
}

func destTag(dst string) uint32 { return uint32(xxhash.Sum64String(dst)>>34) | 1<<30 }

// lookup returns the entry for tag (0 if absent).
func (s *destSet) lookup(tag uint32) uint32 {
	if len(s.slots) == 0 {
		return 0
	}
	mask := uint32(len(s.slots) - 1)
	for p := uint32(0); p < destProbes; p++ {
		ent := s.slots[(tag+p)&mask]
		if ent == 0 {
			return 0
		}
		if ent>>1 == tag {
			return ent
		}
	}
	return 0
}

// insert stores tag with the alerted bit; it reports whether an entry was evicted.
func (s *destSet) insert(tag uint32, alerted bool) (evicted bool) {
	if len(s.slots) == 0 {
		s.slots = make([]uint32, destMinSlots)
	} else if (s.count+1)*2 > len(s.slots) && len(s.slots) < destMaxSlots {
		s.resize(2 * len(s.slots))
	}
	ent := tag << 1
	if alerted {
		ent |= 1
	}
	return s.place(ent)
}

func (s *destSet) place(ent uint32) (evicted bool) {
	mask := uint32(len(s.slots) - 1)
	tag := ent >> 1
	for p := uint32(0); p < destProbes; p++ {
		j := (tag + p) & mask
		if s.slots[j] == 0 {
			s.slots[j] = ent
			s.count++
			return false
		}
		if s.slots[j]>>1 == tag {
			s.slots[j] = ent
			return false
		}
	}
	s.slots[tag&mask] = ent // the probe window is full: forget its first destination
	return true
}

// resize re-places every entry in a table of n slots.
func (s *destSet) resize(n int) {
	old := s.slots
	s.slots = make([]uint32, n)
	s.count = 0
	for _, ent := range old {
		if ent != 0 {
			s.place(ent)
		}
	}
}

// destination runs the detector on an event counted at t (ns), ot on the vendor's
// observed clock: the learning period is the vendor's observed history (ot - firstT),
// not the distance to its first event time.
func (e *Engine) destination(v *vendorState, ev *telemetry.Event, t, ot int64, emit func(Detection)) {
	h := destTag(ev.Dst)
	if v.dests.lookup(h) != 0 {
		return
	}
	alert := false
	if v.cfg.allow != nil {
		alert = !v.cfg.allow.allowed(ev.Dst)
	} else {
		alert = ot-v.firstT >= int64(e.set.learning)
	}
	if v.dests.insert(h, alert) {
		e.c.destEvicted++
	}
	if !alert {
		return
	}
	key := Key{Vendor: v.name, Credential: ev.Credential}
	reason := fmt.Sprintf("%s sent %s to %s, a destination never seen for this vendor since its learning period ended", key, formatBytes(float64(ev.Bytes)), ev.Dst)
	if v.cfg.allow != nil {
		reason = fmt.Sprintf("%s sent %s to %s, outside the vendor's allowed destinations", key, formatBytes(float64(ev.Bytes)), ev.Dst)
	}
	e.emit(emit, Detection{
		ID:               DetectionIDFor(KindNewDestination, key, ev.Dst, utc(t)),
		Detector:         KindNewDestination,
		Key:              key,
		Severity:         severity(KindNewDestination, ev.Credential != "", 0),
		Score:            1,
		Observed:         float64(ev.Bytes),
		Expected:         Band{},
		Unit:             "bytes to the destination",
		Window:           Window{Start: utc(t), End: utc(t)},
		FirstAnomalousAt: utc(t),
		DetectedAt:       utc(t),
		AnomalousBytes:   ev.Bytes,
		Destination:      ev.Dst,
		Sensor:           ev.Sensor,
		Reason:           reason,
	})
}
