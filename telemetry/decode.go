package telemetry

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"time"
)

// Decoder turns one message (a NATS message body or one line of a file) into an Event.
//
// Decode overwrites every field of e. On failure it returns an *Error: one wrapping
// ErrInvalid for a message to dead-letter, one wrapping ErrSkipped for a well-formed
// record that carries no event. Strings stored in e never alias data, so data may be
// reused as soon as Decode returns.
//
// Decoders keep per-decoder state (intern tables, scratch buffers) and are not safe for
// concurrent use: give each goroutine its own.
type Decoder interface {
	Decode(data []byte, e *Event) error
}

// DecoderFunc adapts a function to the Decoder interface.
type DecoderFunc func(data []byte, e *Event) error

// Decode calls f.
func (f DecoderFunc) Decode(data []byte, e *Event) error { return f(data, e) }

// Default bounds applied by DecodeOptions.
const (
	// DefaultMaxMessageSize is the default bound on one message: 64 KiB.
	DefaultMaxMessageSize = 64 << 10
	// DefaultMaxBytes is the default bound on the byte count of one event: 1 TiB.
	DefaultMaxBytes = int64(1) << 40
	// DefaultMaxFieldLength is the default bound on one string field: 512 bytes.
	DefaultMaxFieldLength = 512
	// DefaultInternCapacity is the default size of each intern table.
	DefaultInternCapacity = 4096
)

// DecodeOptions bounds what a decoder accepts. Zero values mean the documented default.
type DecodeOptions struct {
	// MaxMessageSize is the largest message accepted, in bytes; larger ones are rejected
	// with ReasonOversize before they are parsed. Default 64 KiB.
	MaxMessageSize int
	// MaxBytes is the largest byte count one event may carry; larger counts are
	// rejected with ReasonBytesTooLarge. Default 1 TiB.
	MaxBytes int64
	// MaxFieldLength is the longest string field accepted, in bytes after unescaping;
	// longer ones are rejected with ReasonFieldTooLong. Default 512.
	MaxFieldLength int
	// InternCapacity bounds each of a decoder's two intern tables, one for names
	// (vendor, credential, sensor, protocol) and one for addresses (dst, src). When a
	// table is full, new strings are allocated and not remembered. Default 4096;
	// negative disables interning.
	InternCapacity int
}

func (o DecodeOptions) withDefaults() DecodeOptions {
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxFieldLength <= 0 {
		o.MaxFieldLength = DefaultMaxFieldLength
	}
	if o.InternCapacity == 0 {
		o.InternCapacity = DefaultInternCapacity
	}
	return o
}

// strings holds what every decoder needs to produce strings: the two intern tables and
// a scratch buffer for unescaping.
type strtab struct {
	names, addrs interner
	text         jsonText
}

func newStrtab(o DecodeOptions) strtab {
	return strtab{names: newInterner(o.InternCapacity), addrs: newInterner(o.InternCapacity)}
}

// The fields of the native contract, in bit order.
const (
	fTime = iota
	fVendor
	fCredential
	fDst
	fDstPort
	fBytes
	fRecords
	fSrc
	fProtocol
	fSensor
	numFields
)

var fieldNames = [numFields]string{"time", "vendor", "credential", "dst", "dst_port", "bytes", "records", "src", "protocol", "sensor"}

// JSONDecoder decodes the native JSON contract (see DESIGN.md, "Telemetry"):
//
//	{"time":"2026-02-05T10:00:00.123Z","vendor":"mailer","credential":"mailer-api",
//	 "dst":"203.0.113.7","dst_port":443,"bytes":18231,"records":20,"sensor":"egress-gw-1"}
//
// time (RFC 3339), vendor (non-empty) and bytes (an integer ≥ 0) are required;
// credential, dst, dst_port, records, src, protocol and sensor are optional; unknown
// fields are ignored (but must be valid JSON). Times are returned in UTC.
//
// On input encoding/json accepts, the decoder gives the same values encoding/json
// decodes into a struct with these fields (string fields as string, the integer fields
// as int64, keys matched case-insensitively, null leaving a field unset, invalid UTF-8
// replaced with U+FFFD), with two deliberate differences: a known field given twice is
// rejected (ReasonDuplicateField) instead of "last one wins", because two parsers that
// disagree on which value counts are an attack on attribution; and time is checked as
// strict RFC 3339 after unescaping.
//
// It is hand-written and does not allocate for valid messages once the strings they
// carry are interned. A JSONDecoder is not safe for concurrent use.
type JSONDecoder struct {
	opts  DecodeOptions
	st    strtab
	times timeCache
}

var _ Decoder = (*JSONDecoder)(nil)

// NewJSONDecoder returns a decoder for the native JSON contract.
func NewJSONDecoder(o DecodeOptions) *JSONDecoder {
	o = o.withDefaults()
	return &JSONDecoder{opts: o, st: newStrtab(o)}
}

// matchNative returns the index of the native field key names, or -1.
func matchNative(key []byte) int {
	switch string(key) {
	case "time":
		return fTime
	case "vendor":
		return fVendor
	case "credential":
		return fCredential
	case "dst":
		return fDst
	case "dst_port":
		return fDstPort
	case "bytes":
		return fBytes
	case "records":
		return fRecords
	case "src":
		return fSrc
	case "protocol":
		return fProtocol
	case "sensor":
		return fSensor
	}
	return matchFold(key, fieldNames[:])
}

// Known keys followed by their closing quote, as little-endian words: le(s) is the
// first eight bytes of s, with the unused high bytes zero.
const (
	kTime     = uint64('t') | uint64('i')<<8 | uint64('m')<<16 | uint64('e')<<24 | uint64('"')<<32
	kVendor   = uint64('v') | uint64('e')<<8 | uint64('n')<<16 | uint64('d')<<24 | uint64('o')<<32 | uint64('r')<<40 | uint64('"')<<48
	kCredenti = uint64('c') | uint64('r')<<8 | uint64('e')<<16 | uint64('d')<<24 | uint64('e')<<32 | uint64('n')<<40 | uint64('t')<<48 | uint64('i')<<56
	kDst      = uint64('d') | uint64('s')<<8 | uint64('t')<<16 | uint64('"')<<24
	kDstPort  = uint64('d') | uint64('s')<<8 | uint64('t')<<16 | uint64('_')<<24 | uint64('p')<<32 | uint64('o')<<40 | uint64('r')<<48 | uint64('t')<<56
	kBytes    = uint64('b') | uint64('y')<<8 | uint64('t')<<16 | uint64('e')<<24 | uint64('s')<<32 | uint64('"')<<40
	kRecords  = uint64('r') | uint64('e')<<8 | uint64('c')<<16 | uint64('o')<<24 | uint64('r')<<32 | uint64('d')<<40 | uint64('s')<<48 | uint64('"')<<56
	kSrc      = uint64('s') | uint64('r')<<8 | uint64('c')<<16 | uint64('"')<<24
	kProtocol = uint64('p') | uint64('r')<<8 | uint64('o')<<16 | uint64('t')<<24 | uint64('o')<<32 | uint64('c')<<40 | uint64('o')<<48 | uint64('l')<<56
	kSensor   = uint64('s') | uint64('e')<<8 | uint64('n')<<16 | uint64('s')<<24 | uint64('o')<<32 | uint64('r')<<40 | uint64('"')<<48

	mask4 = 1<<32 - 1
	mask5 = 1<<40 - 1
	mask6 = 1<<48 - 1
	mask7 = 1<<56 - 1
)

// fastKey recognizes, at d[i] == '"', a known key spelled exactly (lower case, no
// escapes) and returns its field and the index after its closing quote. Otherwise it
// returns (-1, i) and the caller takes the general path.
func fastKey(d []byte, i int) (int, int) {
	r := d[i+1:]
	if len(r) < 12 {
		return slowFastKey(d, i)
	}
	w := binary.LittleEndian.Uint64(r)
	switch {
	case w&mask5 == kTime:
		return fTime, i + 6
	case w&mask7 == kVendor:
		return fVendor, i + 8
	case w&mask4 == kDst:
		return fDst, i + 5
	case w == kDstPort && r[8] == '"':
		return fDstPort, i + 10
	case w&mask6 == kBytes:
		return fBytes, i + 7
	case w == kRecords:
		return fRecords, i + 9
	case w == kCredenti && r[8] == 'a' && r[9] == 'l' && r[10] == '"':
		return fCredential, i + 12
	case w&mask4 == kSrc:
		return fSrc, i + 5
	case w&mask7 == kSensor:
		return fSensor, i + 8
	case w == kProtocol && r[8] == '"':
		return fProtocol, i + 10
	}
	return -1, i
}

// slowFastKey is fastKey near the end of the input, where eight-byte loads do not fit.
func slowFastKey(d []byte, i int) (int, int) {
	r := d[i+1:]
	for f, name := range fieldNames {
		if hasKey(r, name) {
			return f, i + len(name) + 2
		}
	}
	return -1, i
}

// hasKey reports whether r starts with k followed by a closing quote.
func hasKey(r []byte, k string) bool {
	return len(r) > len(k) && r[len(k)] == '"' && string(r[:len(k)]) == k
}

// matchFold matches key against names the way encoding/json does when there is no exact
// match: case-insensitively, with Unicode simple folding.
func matchFold(key []byte, names []string) int {
	var buf [24]byte
	if low, ok := lowerASCII(buf[:], key); ok {
		for i, n := range names {
			if string(low) == n {
				return i
			}
		}
		return -1
	}
	if !hasNonASCII(key) {
		return -1 // ASCII but longer than any name
	}
	for i, n := range names {
		if foldMatch(key, n) {
			return i
		}
	}
	return -1
}

// Decode decodes one native JSON message into e. See JSONDecoder. On error e is left
// zero.
func (x *JSONDecoder) Decode(d []byte, e *Event) error {
	if err := x.decode(d, e); err != nil {
		*e = Event{}
		return err
	}
	return nil
}

func (x *JSONDecoder) decode(d []byte, e *Event) error {
	*e = Event{}
	if len(d) > x.opts.MaxMessageSize {
		return newError(ReasonOversize, "", fmt.Sprintf("message is %d bytes, the limit is %d", len(d), x.opts.MaxMessageSize))
	}
	i := skipWS(d, 0)
	if i >= len(d) || d[i] != '{' {
		return notObject(d, i)
	}
	var (
		present uint16 // keys seen, null included
		set     uint16 // fields given a non-null value
		sem     *Error // first semantic error, reported if the syntax is valid
		ok      bool
		bytesV  int64
	)
	i = skipWS(d, i+1)
	if i < len(d) && d[i] == '}' {
		i++
		goto end
	}
	for {
		if i >= len(d) || d[i] != '"' {
			return syntaxError(d, i, "expected a field name")
		}
		f, j := fastKey(d, i)
		if j > i {
			i = j
		} else {
			var key []byte
			key, i, ok = x.st.text.str(d, i)
			if !ok {
				return syntaxError(d, i, "malformed field name")
			}
			f = matchNative(key)
		}
		if i < len(d) && d[i] == ':' {
			i++
		} else if i = skipWS(d, i); i < len(d) && d[i] == ':' {
			i++
		} else {
			return syntaxError(d, i, "expected ':' after a field name")
		}
		if i = skipWS(d, i); i >= len(d) {
			return syntaxError(d, i, "expected a value")
		}
		if f < 0 {
			if i, ok = skipValue(d, i, 1); !ok {
				return syntaxError(d, i, "malformed value")
			}
		} else {
			bit := uint16(1) << f
			if present&bit != 0 && sem == nil {
				sem = newError(ReasonDuplicateField, fieldNames[f], "the field appears more than once")
			}
			present |= bit
			if d[i] == '"' && f != fTime {
				// A string field, the common case, without the call to field.
				var b []byte
				if b, i, ok = x.st.text.str(d, i); !ok {
					return syntaxError(d, i, "malformed string")
				}
				set |= bit
				if len(b) > x.opts.MaxFieldLength {
					if sem == nil {
						sem = newError(ReasonFieldTooLong, fieldNames[f], fmt.Sprintf("%d bytes, the limit is %d", len(b), x.opts.MaxFieldLength))
					}
				} else if !x.setString(f, b, e) && sem == nil {
					sem = intError(f, intNotInteger, "a string")
				}
			} else if j, null := isNull(d, i); null {
				i = j
			} else {
				var err *Error
				i, err = x.field(d, i, f, e, &bytesV)
				if err == errSyntax {
					return syntaxError(d, i, "malformed value")
				}
				if err != nil && sem == nil {
					sem = err
				}
				set |= bit
			}
		}
		if i < len(d) && d[i] == ',' {
			i++
			if i < len(d) && d[i] == '"' {
				continue
			}
			i = skipWS(d, i)
			continue
		}
		i = skipWS(d, i)
		if i >= len(d) {
			return syntaxError(d, i, "unterminated object")
		}
		if d[i] == '}' {
			i++
			break
		}
		if d[i] != ',' {
			return syntaxError(d, i, "expected ',' or '}'")
		}
		i = skipWS(d, i+1)
	}
end:
	if i = skipWS(d, i); i < len(d) {
		return newError(ReasonTrailingData, "", "data after the object at offset "+strconv.Itoa(i)+": "+quoteInput(d[i:]))
	}
	if sem != nil {
		return sem
	}
	switch {
	case set&(1<<fTime) == 0:
		return newError(ReasonMissingTime, "time", "required")
	case e.Vendor == "":
		return newError(ReasonMissingVendor, "vendor", "required and must not be empty")
	case set&(1<<fBytes) == 0:
		return newError(ReasonMissingBytes, "bytes", "required")
	}
	e.Bytes = bytesV
	return nil
}

// errSyntax is an internal marker: the value at the returned index is malformed.
var errSyntax = &Error{Reason: ReasonInvalidJSON}

// field decodes the non-null value of field f starting at d[i].
func (x *JSONDecoder) field(d []byte, i, f int, e *Event, bytesV *int64) (int, *Error) {
	c := d[i]
	switch f {
	case fTime:
		if c != '"' {
			j, ok := skipValue(d, i, 1)
			if !ok {
				return j, errSyntax
			}
			return j, newError(ReasonBadTime, "time", "want an RFC 3339 string, got "+jsonKind(c))
		}
		if t, j, ok := x.times.fastTime(d, i); ok {
			e.Time = t
			return j, nil
		}
		b, j, ok := x.st.text.str(d, i)
		if !ok {
			return j, errSyntax
		}
		t, ok := x.times.parse(b)
		if !ok {
			return j, newError(ReasonBadTime, "time", "not an RFC 3339 timestamp: "+quoteInput(b))
		}
		e.Time = t
		return j, nil
	case fDstPort, fBytes, fRecords:
		if c != '-' && !isDigit(c) {
			j, ok := skipValue(d, i, 1)
			if !ok {
				return j, errSyntax
			}
			return j, intError(f, intNotInteger, jsonKind(c))
		}
		v, j, ok := fastUint(d, i)
		if !ok {
			if j, ok = scanNumber(d, i); !ok {
				return j, errSyntax
			}
			var st int
			if v, st = parseJSONInt(d[i:j]); st != intOK {
				return j, intError(f, st, string(d[i:j]))
			}
		}
		switch f {
		case fDstPort:
			if v < 0 || v > 65535 {
				return j, newError(ReasonBadPort, "dst_port", "out of range [0, 65535]: "+strconv.FormatInt(v, 10))
			}
			e.DstPort = uint16(v)
		case fBytes:
			if v < 0 {
				return j, newError(ReasonNegativeBytes, "bytes", strconv.FormatInt(v, 10))
			}
			if v > x.opts.MaxBytes {
				return j, newError(ReasonBytesTooLarge, "bytes", strconv.FormatInt(v, 10)+" is above the limit "+strconv.FormatInt(x.opts.MaxBytes, 10))
			}
			*bytesV = v
		case fRecords:
			if v < 0 {
				return j, newError(ReasonNegativeRecords, "records", strconv.FormatInt(v, 10))
			}
			e.Records = v
		}
		return j, nil
	}
	// String fields.
	if c != '"' {
		j, ok := skipValue(d, i, 1)
		if !ok {
			return j, errSyntax
		}
		return j, newError(ReasonWrongType, fieldNames[f], "want a string, got "+jsonKind(c))
	}
	b, j, ok := x.st.text.str(d, i)
	if !ok {
		return j, errSyntax
	}
	if len(b) > x.opts.MaxFieldLength {
		return j, newError(ReasonFieldTooLong, fieldNames[f], fmt.Sprintf("%d bytes, the limit is %d", len(b), x.opts.MaxFieldLength))
	}
	x.setString(f, b, e)
	return j, nil
}

// fastTime parses the common case of a time string, an unescaped RFC 3339 timestamp
// whose closing quote follows it, straight from d[i] == '"' without a separate scan.
// When it returns false the caller takes the general path.
func (c *timeCache) fastTime(d []byte, i int) (time.Time, int, bool) {
	r := d[i+1:]
	// The shortest form is 20 bytes; the fraction ends at the first non-digit.
	if len(r) < 21 {
		return time.Time{}, i, false
	}
	n := 19
	if r[n] == '.' {
		n++
		for n < len(r) && isDigit(r[n]) {
			n++
		}
	}
	switch {
	case n < len(r) && r[n] == 'Z':
		n++
	case n+6 <= len(r) && (r[n] == '+' || r[n] == '-'):
		n += 6
	default:
		return time.Time{}, i, false
	}
	if n >= len(r) || r[n] != '"' {
		return time.Time{}, i, false
	}
	t, ok := c.parse(r[:n])
	return t, i + n + 2, ok
}

// fastUint parses the common case of a non-negative integer of at most 18 digits that
// is not followed by a fraction or exponent. When it returns false the caller takes the
// general path.
func fastUint(d []byte, i int) (int64, int, bool) {
	if d[i] == '0' {
		if i+1 < len(d) && (isDigit(d[i+1]) || d[i+1] == '.' || d[i+1] == 'e' || d[i+1] == 'E') {
			return 0, i, false
		}
		return 0, i + 1, true
	}
	var v int64
	j := i
	for j < len(d) && isDigit(d[j]) {
		v = v*10 + int64(d[j]-'0')
		j++
	}
	if j == i || j-i > 18 {
		return 0, i, false
	}
	if j < len(d) && (d[j] == '.' || d[j] == 'e' || d[j] == 'E') {
		return 0, i, false
	}
	return v, j, true
}

// setString stores the string value b of field f in e. It returns false when f is
// not a string field (an integer field given a string).
func (x *JSONDecoder) setString(f int, b []byte, e *Event) bool {
	switch f {
	case fVendor:
		e.Vendor = x.st.names.get(b)
	case fCredential:
		e.Credential = x.st.names.get(b)
	case fDst:
		e.Dst = x.st.addrs.get(b)
	case fSrc:
		e.Src = x.st.addrs.get(b)
	case fProtocol:
		e.Protocol = x.st.names.get(b)
	case fSensor:
		e.Sensor = x.st.names.get(b)
	default:
		return false
	}
	return true
}

// intError builds the error for an integer field that is not a usable integer.
func intError(f, st int, got string) *Error {
	name := fieldNames[f]
	switch f {
	case fDstPort:
		return newError(ReasonBadPort, name, "want an integer in [0, 65535], got "+got)
	case fRecords:
		if st == intOverflowNeg {
			return newError(ReasonNegativeRecords, name, got)
		}
		return newError(ReasonBadRecords, name, "want a non-negative integer, got "+got)
	}
	switch st {
	case intOverflowPos:
		return newError(ReasonBytesTooLarge, name, got+" does not fit in 64 bits")
	case intOverflowNeg:
		return newError(ReasonNegativeBytes, name, got)
	}
	return newError(ReasonBadBytes, name, "want a non-negative integer, got "+got)
}

func syntaxError(d []byte, i int, what string) *Error {
	if i >= len(d) {
		return newError(ReasonInvalidJSON, "", what+": unexpected end of input")
	}
	return newError(ReasonInvalidJSON, "", fmt.Sprintf("%s at offset %d: %s", what, i, quoteInput(d[i:])))
}

// notObject classifies a message that does not start with '{': valid JSON of another
// type, or not JSON at all.
func notObject(d []byte, i int) *Error {
	if i >= len(d) {
		return newError(ReasonInvalidJSON, "", "empty message")
	}
	j, ok := skipValue(d, i, 0)
	if ok && skipWS(d, j) == len(d) {
		return newError(ReasonNotObject, "", "want a JSON object, got "+jsonKind(d[i]))
	}
	return syntaxError(d, i, "not a JSON object")
}

// unixTime converts seconds and nanoseconds since the epoch to a UTC time.
func unixTime(sec, nsec int64) time.Time { return time.Unix(sec, nsec).UTC() }
