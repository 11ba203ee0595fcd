package telemetry

import (
	"fmt"
	"strconv"
)

// walker walks nested JSON objects for the decoders of the richer formats (OCSF, Zeek),
// where a few known fields hide among many. It records the first semantic error and
// keeps scanning, so that a syntax error later in the message still wins, as it does in
// encoding/json.
type walker struct {
	text  jsonText
	sem   *Error
	times timeCache
}

func (w *walker) reset() { w.sem = nil }

// fail records e unless an earlier semantic error is recorded.
func (w *walker) fail(e *Error) {
	if w.sem == nil {
		w.sem = e
	}
}

// document walks a whole message: one top-level object (at most maxSize bytes) whose
// known keys are names, with nothing after it. It returns the message-level error (size,
// not an object, syntax, trailing data) or the first semantic error visit recorded.
func (w *walker) document(d []byte, maxSize int, names []string, visit func(f, j int) (int, bool)) error {
	if len(d) > maxSize {
		return newError(ReasonOversize, "", fmt.Sprintf("message is %d bytes, the limit is %d", len(d), maxSize))
	}
	i := skipWS(d, 0)
	if i >= len(d) || d[i] != '{' {
		return notObject(d, i)
	}
	w.reset()
	j, ok := w.object(d, i, 1, "", names, visit)
	if !ok {
		return syntaxError(d, j, "malformed JSON")
	}
	if j = skipWS(d, j); j < len(d) {
		return newError(ReasonTrailingData, "", "data after the object at offset "+strconv.Itoa(j)+": "+quoteInput(d[j:]))
	}
	if w.sem != nil {
		return w.sem
	}
	return nil
}

// matchName returns the index of key in names (exact, then encoding/json's folding).
func matchName(key []byte, names []string) int {
	for i, n := range names {
		if string(key) == n {
			return i
		}
	}
	return matchFold(key, names)
}

// object walks the object starting at d[i] == '{' whose container depth is depth (1 for
// the top level). For each key matching names[f] with a non-null value it calls
// visit(f, j), j being the index of the value; visit returns the index after the value
// and false on a syntax error. Unknown keys are skipped; a known key given twice is a
// duplicate_field error (path prefixes the field name in errors).
func (w *walker) object(d []byte, i, depth int, path string, names []string, visit func(f, j int) (int, bool)) (int, bool) {
	if depth > maxJSONDepth {
		return i, false
	}
	var present uint64
	i = skipWS(d, i+1)
	if i < len(d) && d[i] == '}' {
		return i + 1, true
	}
	for {
		if i >= len(d) || d[i] != '"' {
			return i, false
		}
		key, j, ok := w.text.str(d, i)
		if !ok {
			return j, false
		}
		f := matchName(key, names)
		i = skipWS(d, j)
		if i >= len(d) || d[i] != ':' {
			return i, false
		}
		if i = skipWS(d, i+1); i >= len(d) {
			return i, false
		}
		switch {
		case f < 0:
			if i, ok = skipValue(d, i, depth); !ok {
				return i, false
			}
		default:
			if present&(1<<f) != 0 {
				w.fail(newError(ReasonDuplicateField, path+names[f], "the field appears more than once"))
			}
			present |= 1 << f
			if j, null := isNull(d, i); null {
				i = j
			} else if i, ok = visit(f, i); !ok {
				return i, false
			}
		}
		i = skipWS(d, i)
		if i >= len(d) {
			return i, false
		}
		if d[i] == '}' {
			return i + 1, true
		}
		if d[i] != ',' {
			return i, false
		}
		i = skipWS(d, i+1)
	}
}

// sub walks a nested object value at d[i]; a value of another type is a wrong_type error.
func (w *walker) sub(d []byte, i, depth int, path string, names []string, visit func(f, j int) (int, bool)) (int, bool) {
	if d[i] != '{' {
		j, ok := skipValue(d, i, depth)
		if ok {
			w.fail(newError(ReasonWrongType, path, "want an object, got "+jsonKind(d[i])))
		}
		return j, ok
	}
	return w.object(d, i, depth+1, path+".", names, visit)
}

// str reads a string value at d[i] for field path; a value of another type is a
// wrong_type error, a string longer than max a field_too_long error. The bytes are
// valid until the next call.
func (w *walker) str(d []byte, i, depth int, path string, max int) ([]byte, int, bool) {
	if d[i] != '"' {
		j, ok := skipValue(d, i, depth)
		if ok {
			w.fail(newError(ReasonWrongType, path, "want a string, got "+jsonKind(d[i])))
		}
		return nil, j, ok
	}
	b, j, ok := w.text.str(d, i)
	if ok && len(b) > max {
		w.fail(newError(ReasonFieldTooLong, path, fmt.Sprintf("%d bytes, the limit is %d", len(b), max)))
		return nil, j, ok
	}
	return b, j, ok
}

// integer reads an integer value at d[i]. A value that is not a JSON integer fitting
// int64 records an error with reason r (what encoding/json rejects for an int64 field).
func (w *walker) integer(d []byte, i, depth int, path string, r Reason) (int64, bool, int, bool) {
	c := d[i]
	if c != '-' && !isDigit(c) {
		j, ok := skipValue(d, i, depth)
		if ok {
			w.fail(newError(r, path, "want an integer, got "+jsonKind(c)))
		}
		return 0, false, j, ok
	}
	j, ok := scanNumber(d, i)
	if !ok {
		return 0, false, j, false
	}
	v, st := parseJSONInt(d[i:j])
	if st != intOK {
		w.fail(newError(r, path, "want a 64-bit integer, got "+string(d[i:j])))
		return 0, false, j, true
	}
	return v, true, j, true
}

// seconds reads a JSON number at d[i] as seconds and returns it as a duration since the
// epoch with nanosecond precision (decimal digits are parsed exactly, not through a
// float). A value that is not a number records an error with reason r.
func (w *walker) seconds(d []byte, i, depth int, path string, r Reason) (sec, nsec int64, have bool, next int, ok bool) {
	c := d[i]
	if c != '-' && !isDigit(c) {
		j, ok := skipValue(d, i, depth)
		if ok {
			w.fail(newError(r, path, "want a number of seconds, got "+jsonKind(c)))
		}
		return 0, 0, false, j, ok
	}
	j, ok := scanNumber(d, i)
	if !ok {
		return 0, 0, false, j, false
	}
	sec, nsec, good := parseSeconds(d[i:j])
	if !good {
		w.fail(newError(r, path, "not a usable number of seconds: "+string(d[i:j])))
		return 0, 0, false, j, true
	}
	return sec, nsec, true, j, true
}

// maxEpochSeconds is 9999-12-31T23:59:59Z: later times cannot be written as RFC 3339.
const maxEpochSeconds = 253402300799

// parseSeconds parses a valid JSON number as non-negative seconds since the epoch,
// exactly for plain decimals and through strconv.ParseFloat when there is an exponent.
func parseSeconds(n []byte) (int64, int64, bool) {
	if n[0] == '-' {
		return 0, 0, false
	}
	var sec, nsec int64
	i := 0
	for ; i < len(n) && isDigit(n[i]); i++ {
		sec = sec*10 + int64(n[i]-'0')
		if sec > maxEpochSeconds {
			return 0, 0, false
		}
	}
	if i < len(n) && n[i] == '.' {
		i++
		scale := int64(100_000_000)
		for ; i < len(n) && isDigit(n[i]); i++ {
			nsec += int64(n[i]-'0') * scale
			scale /= 10
		}
	}
	if i < len(n) { // exponent
		f, err := strconv.ParseFloat(string(n), 64)
		if err != nil || f < 0 || f > maxEpochSeconds {
			return 0, 0, false
		}
		sec = int64(f)
		nsec = int64((f - float64(sec)) * 1e9)
	}
	return sec, nsec, true
}
