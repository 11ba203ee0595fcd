package telemetry

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"
	"unsafe"

	"github.com/killswitch-dev/killswitch"
)

// The door: telemetry is untrusted (DESIGN.md, "Trust boundaries"). After an event
// decoded, its sources check it with an Admission before any detector sees it: its time
// is bounded against a reference (the service's clock in `run`, a robust watermark of
// the recording in replay, see Watermark), its names are validated, its vendor must be
// the one its subject names, and its sensor must be declared when sensors are. A refused
// event is rejected like a message that does not decode: dead-lettered with its reason
// on NATS, counted and reported on files, and it never moves any state.

// Defaults of Settings.
const (
	// DefaultMaxFutureSkew is how far ahead of the reference an event time may be: sensor
	// clocks drift, and a few minutes covers any sensor with NTP.
	DefaultMaxFutureSkew = 5 * time.Minute
	// DefaultMaxAge is how far behind the reference an event time may be. It is the
	// horizon the detectors can still use: a sensor that flushes its buffer after an
	// outage of up to an hour still passes; older data only distorts windows long closed.
	DefaultMaxAge = time.Hour
	// DefaultMaxNameLength bounds vendor, credential and sensor names, in bytes.
	DefaultMaxNameLength = 128
	// DefaultMaxDstLength bounds the destination (an address or a host name), in bytes:
	// the longest DNS name is 253 bytes.
	DefaultMaxDstLength = 255
	// DefaultLookahead is how many events before and after an event the replay watermark
	// looks at (see Watermark).
	DefaultLookahead = 16
)

// The absolute bounds of an event time, whatever the reference: an event time before
// the start of EarliestEventYear is refused as too old, one from the start of
// LatestEventYear on as in the future (1971, 0001-01-01 and 9999-12-31 included).
const (
	EarliestEventYear = 2000
	LatestEventYear   = 2200
)

// Unix seconds of the absolute bounds.
const (
	earliestUnix = 946684800  // 2000-01-01T00:00:00Z
	latestUnix   = 7258118400 // 2200-01-01T00:00:00Z
)

// Settings configure the door (the YAML section "telemetry"). Zero values mean the
// documented default.
type Settings struct {
	// MaxFutureSkew is how far ahead of the reference an event time may be before it is
	// refused (ReasonTimeInFuture). Default 5m.
	MaxFutureSkew time.Duration `yaml:"max_future_skew"`
	// MaxAge is how far behind the reference an event time may be before it is refused
	// (ReasonTimeTooOld). Default 1h.
	MaxAge time.Duration `yaml:"max_age"`
	// Sensors, when not empty, are the only sensors accepted: an event from another
	// sensor, or naming none, is refused (ReasonUnknownSensor).
	Sensors []string `yaml:"sensors"`
	// MaxNameLength bounds vendor, credential and sensor names, in bytes. Default 128.
	MaxNameLength int `yaml:"max_name_length"`
	// Lookahead is how many events before and after an event the replay watermark
	// looks at (see Watermark). Default 16.
	Lookahead int `yaml:"lookahead"`
}

// WithDefaults returns s with zero values replaced by the documented defaults.
func (s Settings) WithDefaults() Settings {
	if s.MaxFutureSkew == 0 {
		s.MaxFutureSkew = DefaultMaxFutureSkew
	}
	if s.MaxAge == 0 {
		s.MaxAge = DefaultMaxAge
	}
	if s.MaxNameLength == 0 {
		s.MaxNameLength = DefaultMaxNameLength
	}
	if s.Lookahead == 0 {
		s.Lookahead = DefaultLookahead
	}
	return s
}

// Validate checks the settings and returns every problem found, each wrapping
// killswitch.ErrInvalid (a bad setting, not a bad message) and naming its field.
func (s Settings) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: telemetry."+format, append([]any{killswitch.ErrInvalid}, args...)...))
	}
	if s.MaxFutureSkew < 0 {
		bad("max_future_skew: %v is negative", s.MaxFutureSkew)
	}
	if s.MaxAge < 0 {
		bad("max_age: %v is negative", s.MaxAge)
	}
	if s.MaxNameLength < 0 || s.MaxNameLength > DefaultMaxFieldLength {
		bad("max_name_length: %d is not between 1 and %d", s.MaxNameLength, DefaultMaxFieldLength)
	}
	if s.Lookahead < 0 || s.Lookahead > 1024 {
		bad("lookahead: %d is not between 1 and 1024", s.Lookahead)
	}
	maxName := s.WithDefaults().MaxNameLength
	for i, name := range s.Sensors {
		if !validName(name, maxName) {
			bad("sensors[%d]: %q is not a valid name (printable UTF-8, no white space, no * or >, at most %d bytes)", i, name, maxName)
		}
		if slices.Contains(s.Sensors[:i], name) {
			bad("sensors[%d]: %q is listed twice", i, name)
		}
	}
	return errors.Join(errs...)
}

// Admission is the door every event passes after it decoded (see Settings). It is
// immutable and safe for concurrent use; its checks do not allocate for events they
// admit.
type Admission struct {
	skew, age time.Duration
	maxName   int
	lookahead int
	sensors   map[string]struct{} // nil: any sensor
}

// NewAdmission validates s and returns the door it describes.
func NewAdmission(s Settings) (*Admission, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	s = s.WithDefaults()
	a := &Admission{skew: s.MaxFutureSkew, age: s.MaxAge, maxName: s.MaxNameLength, lookahead: s.Lookahead}
	if len(s.Sensors) > 0 {
		a.sensors = make(map[string]struct{}, len(s.Sensors))
		for _, n := range s.Sensors {
			a.sensors[n] = struct{}{}
		}
	}
	return a, nil
}

// DefaultAdmission returns the door with the default Settings.
func DefaultAdmission() *Admission {
	a, err := NewAdmission(Settings{})
	if err != nil {
		panic(err) // the defaults are valid
	}
	return a
}

// Lookahead returns how many events before and after an event the replay watermark
// looks at.
func (a *Admission) Lookahead() int { return a.lookahead }

// Band is the reference an event time is checked against: an event may be at most
// MaxFutureSkew after Hi and at most MaxAge before Lo. In `run` both are the clock's
// now; in replay they come from a Watermark.
type Band struct {
	Lo, Hi time.Time
}

// At returns the band of a single reference time.
func At(t time.Time) Band { return Band{Lo: t, Hi: t} }

// Check runs every check on e: CheckIdentity, then CheckTime against ref.
func (a *Admission) Check(e *Event, subjectVendor string, ref Band) error {
	if err := a.CheckIdentity(e, subjectVendor); err != nil {
		return err
	}
	return a.CheckTime(e.Time, ref)
}

// CheckTime refuses an event time outside the absolute bounds (before
// EarliestEventYear, or in LatestEventYear or later), more than MaxFutureSkew after
// ref.Hi (ReasonTimeInFuture) or more than MaxAge before ref.Lo (ReasonTimeTooOld).
func (a *Admission) CheckTime(t time.Time, ref Band) error {
	switch sec := t.Unix(); {
	case sec < earliestUnix:
		return newError(ReasonTimeTooOld, "time", t.UTC().Format(time.RFC3339Nano)+" is before the year "+strconv.Itoa(EarliestEventYear))
	case sec >= latestUnix:
		return newError(ReasonTimeInFuture, "time", t.UTC().Format(time.RFC3339Nano)+" is not before the year "+strconv.Itoa(LatestEventYear))
	case exceeds(t, ref.Hi, a.skew):
		return newError(ReasonTimeInFuture, "time", t.UTC().Format(time.RFC3339Nano)+" is "+t.Sub(ref.Hi).String()+" ahead of the reference "+
			ref.Hi.UTC().Format(time.RFC3339Nano)+"; the limit is "+a.skew.String())
	case exceeds(ref.Lo, t, a.age):
		return newError(ReasonTimeTooOld, "time", t.UTC().Format(time.RFC3339Nano)+" is "+ref.Lo.Sub(t).String()+" behind the reference "+
			ref.Lo.UTC().Format(time.RFC3339Nano)+"; the limit is "+a.age.String())
	}
	return nil
}

// CheckIdentity validates the names of e and where it came from. Vendor, credential
// (when given) and sensor (when given) must be valid names: valid UTF-8, printable, no
// white space, no control character, no NATS wildcard (* or >), no U+FFFD (what a
// decoder makes of invalid UTF-8), at most MaxNameLength bytes (ReasonInvalidName). Dst
// and Src (addresses or host names) must have no white space or control character and
// at most DefaultMaxDstLength bytes (ReasonInvalidName). When subjectVendor is not empty
// (the vendor token of the message's subject), the vendor must equal it
// (ReasonVendorMismatch). When sensors are declared, the sensor must be one of them
// (ReasonUnknownSensor).
func (a *Admission) CheckIdentity(e *Event, subjectVendor string) error {
	if !validName(e.Vendor, a.maxName) {
		return nameError("vendor", e.Vendor, a.maxName)
	}
	if e.Credential != "" && !validName(e.Credential, a.maxName) {
		return nameError("credential", e.Credential, a.maxName)
	}
	if e.Sensor != "" && !validName(e.Sensor, a.maxName) {
		return nameError("sensor", e.Sensor, a.maxName)
	}
	if !validAddr(e.Dst) {
		return nameError("dst", e.Dst, DefaultMaxDstLength)
	}
	if !validAddr(e.Src) {
		return nameError("src", e.Src, DefaultMaxDstLength)
	}
	if subjectVendor != "" && e.Vendor != subjectVendor {
		return newError(ReasonVendorMismatch, "vendor", strconv.Quote(e.Vendor)+" published on the subject of vendor "+strconv.Quote(subjectVendor))
	}
	if a.sensors != nil {
		if _, ok := a.sensors[e.Sensor]; !ok {
			if e.Sensor == "" {
				return newError(ReasonUnknownSensor, "sensor", "sensors are declared and the event names none")
			}
			return newError(ReasonUnknownSensor, "sensor", strconv.Quote(e.Sensor)+" is not a declared sensor")
		}
	}
	return nil
}

func nameError(field, s string, max int) *Error {
	q := s
	if len(q) > 64 {
		q = q[:64]
	}
	return newError(ReasonInvalidName, field, strconv.Quote(q)+" is not a valid name (printable UTF-8, no white space or control characters, no * or >, at most "+strconv.Itoa(max)+" bytes)")
}

// validName reports whether s is a valid vendor, credential or sensor name (see
// CheckIdentity). It does not allocate.
func validName(s string, max int) bool {
	return len(s) > 0 && len(s) <= max && plainText(s, true)
}

// validAddr reports whether s is an acceptable destination or source: empty, or at
// most DefaultMaxDstLength bytes of valid UTF-8 without white space or control
// characters. It does not allocate.
func validAddr(s string) bool {
	return len(s) <= DefaultMaxDstLength && plainText(s, false)
}

// plainText reports whether s is valid printable UTF-8 without white space or control
// characters (and, with noWildcards, without the NATS wildcards * and >). ASCII text
// is checked eight bytes at a time.
func plainText(s string, noWildcards bool) bool {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		w := binary.LittleEndian.Uint64(unsafe.Slice(unsafe.StringData(s[i:]), 8))
		bad := swarNotPlain(w)
		if noWildcards {
			bad |= swarHasByte(w, '*') | swarHasByte(w, '>')
		}
		if bad != 0 {
			break
		}
	}
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if c <= ' ' || c == 0x7f || (noWildcards && (c == '*' || c == '>')) {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError || !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return false
		}
		i += size
	}
	return true
}

// swarNotPlain returns a non-zero mask when a byte of w (little endian) is not
// printable ASCII other than space: at most 0x20, 0x7f, or non-ASCII.
func swarNotPlain(w uint64) uint64 {
	return ((w-swarLo*0x21) & ^w | (w + swarLo) | w) & swarHi
}

// swarHasByte returns a non-zero mask when a byte of w equals c (exact for ASCII w,
// which is all swarNotPlain lets through).
func swarHasByte(w uint64, c byte) uint64 {
	x := w ^ (swarLo * uint64(c))
	return (x - swarLo) & ^x & swarHi
}

// exceeds reports whether x - y > limit (limit ≥ 0), without time.Sub's cost and
// without overflow whatever the times.
func exceeds(x, y time.Time, limit time.Duration) bool {
	ds := x.Unix() - y.Unix() // the nanoseconds differ by less than a second
	lim := int64(limit / time.Second)
	switch {
	case ds > lim+1:
		return true
	case ds < lim-1:
		return false
	}
	return ds*int64(time.Second)+int64(x.Nanosecond()-y.Nanosecond()) > int64(limit)
}
