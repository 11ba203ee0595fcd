package telemetry

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends the wire JSON of e (the native contract, one object, no newline)
// to dst and returns the extended buffer. Optional fields that are empty or zero are
// left out; time is written in UTC with RFC 3339 and nanosecond precision, trailing zeros
// trimmed. Strings are escaped as encoding/json escapes them (invalid UTF-8 becomes
// U+FFFD). It does not allocate when dst has room.
//
// Decoding the result with a JSONDecoder gives e back (in UTC) whenever e is valid: a
// non-empty vendor, Bytes ≥ 0, Records ≥ 0 and a time in years 0000–9999.
func AppendJSON(dst []byte, e *Event) []byte {
	dst = append(dst, `{"time":"`...)
	dst = e.Time.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","vendor":`...)
	dst = appendJSONString(dst, e.Vendor)
	if e.Credential != "" {
		dst = append(dst, `,"credential":`...)
		dst = appendJSONString(dst, e.Credential)
	}
	if e.Dst != "" {
		dst = append(dst, `,"dst":`...)
		dst = appendJSONString(dst, e.Dst)
	}
	if e.DstPort != 0 {
		dst = append(dst, `,"dst_port":`...)
		dst = strconv.AppendUint(dst, uint64(e.DstPort), 10)
	}
	dst = append(dst, `,"bytes":`...)
	dst = strconv.AppendInt(dst, e.Bytes, 10)
	if e.Records != 0 {
		dst = append(dst, `,"records":`...)
		dst = strconv.AppendInt(dst, e.Records, 10)
	}
	if e.Src != "" {
		dst = append(dst, `,"src":`...)
		dst = appendJSONString(dst, e.Src)
	}
	if e.Protocol != "" {
		dst = append(dst, `,"protocol":`...)
		dst = appendJSONString(dst, e.Protocol)
	}
	if e.Sensor != "" {
		dst = append(dst, `,"sensor":`...)
		dst = appendJSONString(dst, e.Sensor)
	}
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string literal.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
