package telemetry

import "time"

// The RFC 3339 parser of the decoders (timeCache.parse): it parses without allocating
// and returns the time in UTC.
//
// The grammar is exactly what Go's strict RFC 3339 parser (the fast path of time.Parse
// with time.RFC3339) accepts: YYYY-MM-DDTHH:MM:SS, an optional fraction of one or more
// digits after a period (digits past the ninth are truncated), then Z or ±HH:MM. Every
// field is range-checked (the day against the month, leap years included; no leap
// seconds; offset hours 00–23, minutes 00–59). The lenient forms time.Parse also takes
// through its layout fallback (a comma before the fraction, one-digit hours) are
// rejected: they are not RFC 3339.

// timeCache remembers the date and hour of the last timestamp parsed: consecutive
// events almost always share them, and the calendar arithmetic is the costly part.
type timeCache struct {
	dh   [13]byte // "YYYY-MM-DDTHH" last parsed, valid when base != 0 or set
	base int64    // unix seconds of dh:00:00 UTC
	set  bool
}

// parse parses an RFC 3339 timestamp (see the grammar above).
func (c *timeCache) parse(s []byte) (time.Time, bool) {
	if len(s) < len("2006-01-02T15:04:05Z") {
		return time.Time{}, false
	}
	var base int64
	if c.set && string(s[:13]) == string(c.dh[:]) {
		base = c.base
	} else {
		b, ok := parseDateHour(s)
		if !ok {
			return time.Time{}, false
		}
		base = b
		copy(c.dh[:], s[:13])
		c.base, c.set = b, true
	}
	if s[13] != ':' || s[16] != ':' {
		return time.Time{}, false
	}
	minute, ok1 := num2(s[14], s[15])
	sec, ok2 := num2(s[17], s[18])
	if !ok1 || !ok2 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	rest := s[19:]
	nsec := 0
	if len(rest) >= 2 && rest[0] == '.' && isDigit(rest[1]) {
		n := 1
		used := 0
		for n < len(rest) && isDigit(rest[n]) {
			if used < 9 {
				nsec = nsec*10 + int(rest[n]-'0')
				used++
			}
			n++
		}
		for ; used < 9; used++ {
			nsec *= 10
		}
		rest = rest[n:]
	}
	offset := 0
	switch {
	case len(rest) == 1 && rest[0] == 'Z':
	case len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':':
		oh, ok1 := num2(rest[1], rest[2])
		om, ok2 := num2(rest[4], rest[5])
		if !ok1 || !ok2 || oh > 23 || om > 59 {
			return time.Time{}, false
		}
		offset = (oh*60 + om) * 60
		if rest[0] == '-' {
			offset = -offset
		}
	default:
		return time.Time{}, false
	}
	return time.Unix(base+int64(minute*60+sec-offset), int64(nsec)).UTC(), true
}

// parseDateHour parses "YYYY-MM-DDTHH" and returns its unix seconds (UTC).
func parseDateHour(s []byte) (int64, bool) {
	if s[4] != '-' || s[7] != '-' || s[10] != 'T' {
		return 0, false
	}
	y1, ok1 := num2(s[0], s[1])
	y2, ok2 := num2(s[2], s[3])
	month, ok3 := num2(s[5], s[6])
	day, ok4 := num2(s[8], s[9])
	hour, ok5 := num2(s[11], s[12])
	if !(ok1 && ok2 && ok3 && ok4 && ok5) {
		return 0, false
	}
	year := y1*100 + y2
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 {
		return 0, false
	}
	return daysFromCivil(year, month, day)*86400 + int64(hour)*3600, true
}

// num2 parses two decimal digits.
func num2(a, b byte) (int, bool) {
	x, y := a-'0', b-'0'
	return int(x)*10 + int(y), x <= 9 && y <= 9
}

func isLeap(y int) bool { return y%4 == 0 && (y%100 != 0 || y%400 == 0) }

func daysIn(month, year int) int {
	switch month {
	case 2:
		if isLeap(year) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil returns the number of days from 1970-01-01 to the given proleptic
// Gregorian date (Howard Hinnant's algorithm).
func daysFromCivil(y, m, d int) int64 {
	if m <= 2 {
		y--
	}
	era := y
	if era < 0 {
		era -= 399
	}
	era /= 400
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return int64(era)*146097 + int64(doe) - 719468
}
