package replay

import (
	"math"
	"time"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// The report's charts show, per incident, the volume of its key per detector interval
// against the band the detectors expected, from a few hours before the incident to a few
// hours after. The replay keeps the recent buckets of each key in a small ring (bounded
// number of keys) and copies it when an incident opens.
const (
	// historyBuckets is how many buckets before an incident a chart shows.
	historyBuckets = 72
	// followBuckets is how many buckets after an incident opened a chart follows.
	followBuckets = 36
)

// point is one bucket of a key's volume.
type point struct {
	bucket   int64 // bucket index: unix nanoseconds / width
	bytes    float32
	expected float32
	high     float32 // +Inf while learning
}

// ring holds a key's last historyBuckets buckets.
type ring struct {
	pts  [historyBuckets]point
	head int // next slot to write
	n    int
}

func (r *ring) last() *point {
	if r.n == 0 {
		return nil
	}
	return &r.pts[(r.head+historyBuckets-1)%historyBuckets]
}

func (r *ring) push(p point) *point {
	r.pts[r.head] = p
	r.head = (r.head + 1) % historyBuckets
	r.n = min(r.n+1, historyBuckets)
	return r.last()
}

func (r *ring) points() []point {
	out := make([]point, 0, r.n)
	for i := range r.n {
		out = append(out, r.pts[(r.head+historyBuckets-r.n+i)%historyBuckets])
	}
	return out
}

// series is the chart data of one incident.
type series struct {
	width  time.Duration
	points []point
	until  int64 // last bucket to follow
}

// charts keeps the rings and the incidents' series.
type charts struct {
	width  time.Duration
	max    int
	rings  map[detectors.Key]*ring
	follow map[detectors.Key][]*series
	// onNew, when set, is told of every key without a ring yet (a key seen for the first
	// time, or any key beyond max): it costs the replay nothing per event otherwise.
	onNew func(detectors.Key)
}

func newCharts(maxKeys int, width time.Duration) *charts {
	return &charts{width: width, max: maxKeys, rings: make(map[detectors.Key]*ring), follow: make(map[detectors.Key][]*series)}
}

// add counts ev for key, asking the engine for the band when a new bucket starts.
func (c *charts) add(e *detectors.Engine, key detectors.Key, ev *telemetry.Event) {
	r := c.rings[key]
	if r == nil {
		if c.onNew != nil {
			c.onNew(key)
		}
		if len(c.rings) >= c.max {
			return
		}
		r = new(ring)
		c.rings[key] = r
	}
	b := ev.Time.UnixNano() / int64(c.width)
	p := r.last()
	if p == nil || b > p.bucket {
		np := point{bucket: b, high: float32(math.Inf(1))}
		if band, ok := e.Band(key); ok {
			np.expected, np.high = float32(band.Expected), float32(band.High)
		}
		p = r.push(np)
	}
	if b == p.bucket {
		p.bytes += float32(ev.Bytes)
	}
	if fs := c.follow[key]; len(fs) > 0 {
		c.extend(key, fs, *p)
	}
}

// extend copies the key's current bucket into the series following it.
func (c *charts) extend(key detectors.Key, fs []*series, p point) {
	kept := fs[:0]
	for _, s := range fs {
		if p.bucket > s.until {
			continue
		}
		if n := len(s.points); n > 0 && s.points[n-1].bucket == p.bucket {
			s.points[n-1] = p
		} else {
			s.points = append(s.points, p)
		}
		kept = append(kept, s)
	}
	if len(kept) == 0 {
		delete(c.follow, key)
		return
	}
	c.follow[key] = kept
}

// open starts the series of an incident on key from the key's history.
func (c *charts) open(key detectors.Key, _ string) *series {
	s := &series{width: c.width}
	if r := c.rings[key]; r != nil {
		s.points = r.points()
		if n := len(s.points); n > 0 {
			s.until = s.points[n-1].bucket + followBuckets
		}
	}
	c.follow[key] = append(c.follow[key], s)
	return s
}
