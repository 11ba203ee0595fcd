package telemetry

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// This file holds the allocation-free JSON scanning primitives the decoders share. They
// follow encoding/json exactly: the same grammar (RFC 8259), the same white space, the
// same nesting limit, the same string unescaping (invalid UTF-8 and lone surrogates
// become U+FFFD) and the same case-insensitive matching of object keys.

// maxJSONDepth is encoding/json's nesting limit: deeper input is a syntax error there.
const maxJSONDepth = 10000

// String scan flags.
const (
	strEscaped  uint8 = 1 << iota // the string contains a backslash escape
	strNonASCII                   // the string contains a byte >= 0x80
)

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// skipWS returns the index of the first byte at or after i that is not JSON white space.
func skipWS(d []byte, i int) int {
	for i < len(d) {
		switch d[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// scanString scans the body of a JSON string that starts at d[i] (just after the opening
// quote). It returns the index of the closing quote, flags describing the content, and
// false when the string is malformed or unterminated.
func scanString(d []byte, i int) (int, uint8, bool) {
	var fl uint8
	for {
		// Skip eight plain bytes at a time: no quote, backslash, control or non-ASCII byte.
		for i+8 <= len(d) {
			m := swarSpecial(binary.LittleEndian.Uint64(d[i:]))
			if m == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(m) >> 3
			break
		}
		if i >= len(d) {
			return i, fl, false
		}
		c := d[i]
		switch {
		case c == '"':
			return i, fl, true
		case c == '\\':
			fl |= strEscaped
			i++
			if i >= len(d) {
				return i, fl, false
			}
			switch d[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				if i+4 >= len(d) || !isHex(d[i+1]) || !isHex(d[i+2]) || !isHex(d[i+3]) || !isHex(d[i+4]) {
					return i, fl, false
				}
				i += 5
			default:
				return i, fl, false
			}
		case c < 0x20:
			return i, fl, false
		case c >= 0x80:
			fl |= strNonASCII
			i++
		default:
			i++
		}
	}
}

const (
	swarLo = 0x0101010101010101
	swarHi = 0x8080808080808080
)

// swarSpecial returns a mask whose lowest set bit marks the first byte of w (little
// endian) that is a quote, a backslash, a control character or non-ASCII; 0 if none.
// Bits above the first may be spurious.
func swarSpecial(w uint64) uint64 {
	q := w ^ (swarLo * '"')
	b := w ^ (swarLo * '\\')
	return ((q-swarLo) & ^q | (b-swarLo) & ^b | (w-swarLo*0x20) & ^w | w) & swarHi
}

// getu4 decodes \uXXXX at the start of s, or returns -1.
func getu4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		switch {
		case '0' <= c && c <= '9':
			c = c - '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}

// appendUnquoted appends the decoded value of the raw string body s (already validated by
// scanString) to dst, with encoding/json's semantics.
func appendUnquoted(dst, s []byte) []byte {
	for r := 0; r < len(s); {
		c := s[r]
		switch {
		case c == '\\':
			switch s[r+1] {
			case '"', '\\', '/':
				dst = append(dst, s[r+1])
				r += 2
			case 'b':
				dst = append(dst, '\b')
				r += 2
			case 'f':
				dst = append(dst, '\f')
				r += 2
			case 'n':
				dst = append(dst, '\n')
				r += 2
			case 'r':
				dst = append(dst, '\r')
				r += 2
			case 't':
				dst = append(dst, '\t')
				r += 2
			default: // 'u'
				rr := getu4(s[r:])
				r += 6
				if utf16.IsSurrogate(rr) {
					rr1 := getu4(s[r:])
					if dec := utf16.DecodeRune(rr, rr1); dec != unicode.ReplacementChar {
						r += 6
						dst = utf8.AppendRune(dst, dec)
						break
					}
					rr = unicode.ReplacementChar
				}
				dst = utf8.AppendRune(dst, rr)
			}
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			r++
		default:
			rr, size := utf8.DecodeRune(s[r:])
			if rr == utf8.RuneError && size == 1 {
				dst = utf8.AppendRune(dst, utf8.RuneError)
			} else {
				dst = append(dst, s[r:r+size]...)
			}
			r += size
		}
	}
	return dst
}

// scanNumber scans a JSON number starting at d[i] and returns the index after it.
func scanNumber(d []byte, i int) (int, bool) {
	if i < len(d) && d[i] == '-' {
		i++
	}
	if i >= len(d) {
		return i, false
	}
	switch c := d[i]; {
	case c == '0':
		i++
	case c >= '1' && c <= '9':
		i++
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	default:
		return i, false
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || !isDigit(d[i]) {
			return i, false
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || !isDigit(d[i]) {
			return i, false
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	return i, true
}

// Outcomes of parseJSONInt.
const (
	intOK = iota
	intNotInteger
	intOverflowPos
	intOverflowNeg
)

// parseJSONInt parses a valid JSON number as an int64, as encoding/json does for an
// integer field (strconv.ParseInt): a fraction or an exponent makes it not an integer.
func parseJSONInt(n []byte) (int64, int) {
	neg := false
	if n[0] == '-' {
		neg = true
		n = n[1:]
	}
	var u uint64
	for i, c := range n {
		if c < '0' || c > '9' {
			return 0, intNotInteger
		}
		if i >= 18 { // 19+ digits may overflow: check each step
			if u > (1<<64-1)/10 {
				return overflow(neg, n[i+1:])
			}
			u2 := u*10 + uint64(c-'0')
			if u2 < u*10 {
				return overflow(neg, n[i+1:])
			}
			u = u2
			continue
		}
		u = u*10 + uint64(c-'0')
	}
	if neg {
		if u > 1<<63 {
			return 0, intOverflowNeg
		}
		return -int64(u), intOK
	}
	if u > 1<<63-1 {
		return 0, intOverflowPos
	}
	return int64(u), intOK
}

func overflow(neg bool, rest []byte) (int64, int) {
	// A fraction or exponent after an overflowing integer part still makes it a
	// non-integer for the caller's purposes; report the more specific reason.
	if bytes.ContainsAny(rest, ".eE") {
		return 0, intNotInteger
	}
	if neg {
		return 0, intOverflowNeg
	}
	return 0, intOverflowPos
}

// skipLiteral checks that d[i:] starts with lit.
func skipLiteral(d []byte, i int, lit string) (int, bool) {
	if len(d)-i < len(lit) || string(d[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}

// skipValue skips the JSON value starting at d[i] (white space already skipped). depth
// is the nesting depth of the enclosing container (1 inside the top-level object).
func skipValue(d []byte, i, depth int) (int, bool) {
	if i >= len(d) {
		return i, false
	}
	switch c := d[i]; {
	case c == '"':
		end, _, ok := scanString(d, i+1)
		return end + 1, ok
	case c == '{':
		depth++
		if depth > maxJSONDepth {
			return i, false
		}
		i = skipWS(d, i+1)
		if i < len(d) && d[i] == '}' {
			return i + 1, true
		}
		for {
			if i >= len(d) || d[i] != '"' {
				return i, false
			}
			end, _, ok := scanString(d, i+1)
			if !ok {
				return end, false
			}
			i = skipWS(d, end+1)
			if i >= len(d) || d[i] != ':' {
				return i, false
			}
			i, ok = skipValue(d, skipWS(d, i+1), depth)
			if !ok {
				return i, false
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
	case c == '[':
		depth++
		if depth > maxJSONDepth {
			return i, false
		}
		i = skipWS(d, i+1)
		if i < len(d) && d[i] == ']' {
			return i + 1, true
		}
		for {
			var ok bool
			i, ok = skipValue(d, i, depth)
			if !ok {
				return i, false
			}
			i = skipWS(d, i)
			if i >= len(d) {
				return i, false
			}
			if d[i] == ']' {
				return i + 1, true
			}
			if d[i] != ',' {
				return i, false
			}
			i = skipWS(d, i+1)
		}
	case c == '-' || isDigit(c):
		return scanNumber(d, i)
	case c == 't':
		return skipLiteral(d, i, "true")
	case c == 'f':
		return skipLiteral(d, i, "false")
	case c == 'n':
		return skipLiteral(d, i, "null")
	}
	return i, false
}

// isNull reports whether the value at d[i] is the literal null, and the index after it.
func isNull(d []byte, i int) (int, bool) {
	if len(d)-i >= 4 && d[i] == 'n' && d[i+1] == 'u' && d[i+2] == 'l' && d[i+3] == 'l' {
		return i + 4, true
	}
	return i, false
}

// jsonKind names the JSON type of the value starting with c, for error details.
func jsonKind(c byte) string {
	switch {
	case c == '"':
		return "a string"
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	default:
		return "a number"
	}
}

// jsonText is a reusable scratch buffer for unescaped strings. The bytes a call returns
// are valid until the next call.
type jsonText struct{ scratch []byte }

// str decodes the JSON string whose opening quote is d[i]. It returns the decoded bytes
// (pointing into d when no unescaping is needed) and the index after the closing quote.
func (t *jsonText) str(d []byte, i int) ([]byte, int, bool) {
	end, fl, ok := scanString(d, i+1)
	if !ok {
		return nil, end, false
	}
	raw := d[i+1 : end]
	if fl == 0 || (fl == strNonASCII && utf8.Valid(raw)) {
		return raw, end + 1, true
	}
	t.scratch = appendUnquoted(t.scratch[:0], raw)
	return t.scratch, end + 1, true
}

// foldMatch reports whether key equals name (lower-case ASCII) under encoding/json's
// case-insensitive matching (bytes.EqualFold, with Unicode simple folding).
func foldMatch(key []byte, name string) bool {
	return bytes.EqualFold(key, []byte(name))
}

// lowerASCII lower-cases key into buf when key is ASCII and no longer than buf. It
// returns false when key has a non-ASCII byte or does not fit.
func lowerASCII(buf []byte, key []byte) ([]byte, bool) {
	if len(key) > len(buf) {
		return nil, false
	}
	for i, c := range key {
		if c >= utf8.RuneSelf {
			return nil, false
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return buf[:len(key)], true
}

// hasNonASCII reports whether b has a byte >= 0x80.
func hasNonASCII(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return true
		}
	}
	return false
}
