package telemetry

import (
	"slices"
	"time"
)

// Watermark is the robust reference of a recording, the replay counterpart of the
// service's clock: no single event, nor a handful of adjacent ones, can move it.
//
// It looks at a centered window over the sequence of event times: the K events before
// an event, the event, and the K events after it (fewer at the ends of the recording).
// The band of the event is two order statistics of the times in the window: Lo is the
// (M+1)-th smallest and Hi the (M+1)-th largest, with M = K/2. In a time-sorted
// recording Lo ≤ the event's own time ≤ Hi, whatever the gaps between events, so
// nothing real is ever refused; events arriving a little out of order (a sensor
// flushing its buffer after an outage) stay inside the band too. A forged time among
// the window's events can move neither bound while at most M events of the window are
// forged: an isolated 2099 or 1971 is measured against its real neighbours and refused.
//
// At the ends of a recording the window is cut short, and so is M on that side (Lo
// skips at most the events before the event, Hi those after it): the first and the
// last M events of a recording are judged with less, and the very first and last
// events only against the absolute bounds on one side.
//
// The window is kept sorted with an insertion and a deletion per event (no sort per
// event). A Watermark is not safe for concurrent use.
type Watermark struct {
	k, m   int
	ring   []int64 // the last len(ring) times pushed, oldest at head once full
	head   int
	n      int     // times in ring
	sorted []int64 // the times in ring, sorted
	pushed int64
	done   int64 // bands returned
}

// NewWatermark returns a watermark that looks k events before and after each event
// (k ≥ 1; DefaultLookahead when k ≤ 0).
func NewWatermark(k int) *Watermark {
	if k <= 0 {
		k = DefaultLookahead
	}
	return &Watermark{k: k, m: k / 2, ring: make([]int64, 2*k+1), sorted: make([]int64, 0, 2*k+1)}
}

// Lookahead returns K: Push returns the band of the event pushed K calls earlier.
func (w *Watermark) Lookahead() int { return w.k }

// Push adds the time of the next event. Once more than K times were pushed, it returns
// the band of the event pushed K calls earlier and true.
func (w *Watermark) Push(t time.Time) (Band, bool) {
	v := t.UnixNano()
	if w.n == len(w.ring) {
		old := w.ring[w.head]
		w.ring[w.head] = v
		w.head = (w.head + 1) % len(w.ring)
		w.replace(old, v)
	} else {
		w.ring[(w.head+w.n)%len(w.ring)] = v
		w.n++
		w.insert(v)
	}
	w.pushed++
	if w.pushed <= int64(w.k) {
		return Band{}, false
	}
	return w.next(), true
}

// Flush returns the band of the next event pushed whose band was not returned yet, and
// false once there is none. Call it at the end of the recording, until it returns
// false: the windows of the last events are cut short by the end.
func (w *Watermark) Flush() (Band, bool) {
	if w.done >= w.pushed {
		return Band{}, false
	}
	return w.next(), true
}

// next returns the band of the window as it stands and counts it returned.
func (w *Watermark) next() Band {
	// Drop times more than K events before the event whose band is returned (at the
	// start, the window has fewer than 2K+1 times and nothing is dropped).
	for w.n > 0 && w.pushed-int64(w.n) < w.done-int64(w.k) {
		old := w.ring[w.head]
		w.head = (w.head + 1) % len(w.ring)
		w.n--
		w.remove(old)
	}
	// Lo skips at most as many times as there are events before the event in the
	// window, Hi as many as there are after it: in a time-sorted recording the event's
	// own time is then always inside the band, at the ends of the recording too.
	before := min(int64(w.m), w.done)
	after := min(int64(w.m), w.pushed-1-w.done)
	w.done++
	return Band{Lo: time.Unix(0, w.sorted[before]).UTC(), Hi: time.Unix(0, w.sorted[int64(len(w.sorted))-1-after]).UTC()}
}

func (w *Watermark) insert(v int64) {
	i := w.search(v)
	w.sorted = slices.Insert(w.sorted, i, v)
}

func (w *Watermark) remove(v int64) {
	i := w.search(v)
	w.sorted = slices.Delete(w.sorted, i, i+1)
}

// replace removes old from the sorted window and inserts v, moving only the elements
// between them.
func (w *Watermark) replace(old, v int64) {
	s := w.sorted
	i := w.search(old)
	if v >= old {
		// Shift left the elements after i that are smaller than v.
		j := i
		for j+1 < len(s) && s[j+1] < v {
			s[j] = s[j+1]
			j++
		}
		s[j] = v
		return
	}
	j := i
	for j > 0 && s[j-1] > v {
		s[j] = s[j-1]
		j--
	}
	s[j] = v
}

// search returns the first index of sorted holding a value ≥ v.
func (w *Watermark) search(v int64) int {
	s := w.sorted
	lo, hi := 0, len(s)
	for lo < hi {
		h := int(uint(lo+hi) >> 1)
		if s[h] < v {
			lo = h + 1
		} else {
			hi = h
		}
	}
	return lo
}

// Lookahead checks the event times of a recording, in order, against its Watermark: it
// holds each event back until the K events after it are known, then returns it with
// its verdict. The file source and the stream range use it in replay; events pass
// Admission.CheckIdentity before they enter. A Lookahead is not safe for concurrent use.
type Lookahead struct {
	adm    *Admission
	wm     *Watermark
	ring   []heldEvent // K+1 slots: event number p is in slot p mod (K+1)
	pushed int64
	out    int64 // events returned
}

type heldEvent struct {
	e   Event
	pos int64
}

// NewLookahead returns the line of a's Lookahead events.
func NewLookahead(a *Admission) *Lookahead {
	k := a.Lookahead()
	return &Lookahead{adm: a, wm: NewWatermark(k), ring: make([]heldEvent, k+1)}
}

// Push adds a copy of e, read at position pos of its source (a line, a sequence). When
// an event leaves the line, Push returns it (valid until the next call), its position,
// nil or the error that refuses it (ReasonTimeInFuture, ReasonTimeTooOld), and true.
func (l *Lookahead) Push(e *Event, pos int64) (*Event, int64, error, bool) {
	slot := &l.ring[l.pushed%int64(len(l.ring))]
	slot.e, slot.pos = *e, pos
	l.pushed++
	band, ok := l.wm.Push(e.Time)
	if !ok {
		return nil, 0, nil, false
	}
	return l.emit(band)
}

// Flush returns the next event still held, as Push does, and false once there is none.
// Call it at the end of the recording until it returns false.
func (l *Lookahead) Flush() (*Event, int64, error, bool) {
	band, ok := l.wm.Flush()
	if !ok {
		return nil, 0, nil, false
	}
	return l.emit(band)
}

func (l *Lookahead) emit(band Band) (*Event, int64, error, bool) {
	h := &l.ring[l.out%int64(len(l.ring))]
	l.out++
	if err := l.adm.CheckTime(h.e.Time, band); err != nil {
		return &h.e, h.pos, err, true
	}
	return &h.e, h.pos, nil, true
}
