package telemetry

import (
	"net/netip"
	"strconv"
)

// ZeekConnDecoder decodes Zeek conn.log records written as JSON (LogAscii::use_json),
// one object per message or line. It reads exactly these fields and ignores every other:
//
//	ts          connection start: epoch seconds (a number) or an ISO 8601 / RFC 3339
//	            string (JSON::TS_ISO8601) (required)
//	duration    seconds; Time = ts + duration, when the byte count was final
//	id.orig_h   Src
//	id.resp_h   Dst, and the address attributed to a vendor (required)
//	id.resp_p   DstPort
//	proto       Protocol, unless service is set
//	service     Protocol (the application protocol Zeek recognized)
//	orig_bytes  Bytes: payload bytes the originator sent
//
// Zeek names neither vendor nor credential: the vendor is attributed from id.resp_h with
// the vendor CIDRs (ReasonUnattributed when none matches) and Credential is empty.
// Records without orig_bytes (Zeek omits it when it saw no payload accounting, e.g. a
// connection attempt) are skipped as ReasonNoData. A ZeekConnDecoder is not safe for
// concurrent use.
type ZeekConnDecoder struct {
	opts DecodeOptions
	attr *Attributor
	st   strtab
	w    walker
	cur  zeekState
}

var _ Decoder = (*ZeekConnDecoder)(nil)

type zeekState struct {
	tsSec, tsNsec, durSec, durNsec, port, bytes int64
	haveTS, haveDur, havePort, haveBytes        bool
	dst, src, proto, service                    string
}

var zeekTop = []string{"ts", "duration", "id.orig_h", "id.resp_h", "id.resp_p", "proto", "service", "orig_bytes"}

// NewZeekConnDecoder returns a decoder for Zeek conn.log JSON records that attributes
// destinations with attr (nil attributes nothing).
func NewZeekConnDecoder(attr *Attributor, o DecodeOptions) *ZeekConnDecoder {
	o = o.withDefaults()
	return &ZeekConnDecoder{opts: o, attr: attr, st: newStrtab(o)}
}

// Decode decodes one conn.log record into e. See ZeekConnDecoder. On error e is left
// zero.
func (x *ZeekConnDecoder) Decode(d []byte, e *Event) error {
	*e = Event{}
	if err := x.decode(d, e); err != nil {
		*e = Event{}
		return err
	}
	return nil
}

func (x *ZeekConnDecoder) decode(d []byte, e *Event) error {
	x.cur = zeekState{}
	if err := x.w.document(d, x.opts.MaxMessageSize, zeekTop, func(f, j int) (int, bool) { return x.top(d, j, f) }); err != nil {
		return err
	}
	s := &x.cur
	switch {
	case !s.haveTS:
		return newError(ReasonMissingTime, "ts", "required")
	case s.dst == "":
		return newError(ReasonBadAddress, "id.resp_h", "required")
	case s.havePort && (s.port < 0 || s.port > 65535):
		return newError(ReasonBadPort, "id.resp_p", "out of range [0, 65535]: "+strconv.FormatInt(s.port, 10))
	case s.haveBytes && s.bytes < 0:
		return newError(ReasonNegativeBytes, "orig_bytes", strconv.FormatInt(s.bytes, 10))
	case s.haveBytes && s.bytes > x.opts.MaxBytes:
		return newError(ReasonBytesTooLarge, "orig_bytes", strconv.FormatInt(s.bytes, 10)+" is above the limit "+strconv.FormatInt(x.opts.MaxBytes, 10))
	}
	dstAddr, err := netip.ParseAddr(s.dst)
	if err != nil {
		return newError(ReasonBadAddress, "id.resp_h", strconv.Quote(s.dst))
	}
	if s.src != "" {
		if _, err := netip.ParseAddr(s.src); err != nil {
			return newError(ReasonBadAddress, "id.orig_h", strconv.Quote(s.src))
		}
	}
	sec, nsec := s.tsSec+s.durSec, s.tsNsec+s.durNsec
	if nsec >= 1e9 {
		sec, nsec = sec+1, nsec-1e9
	}
	if sec > maxEpochSeconds {
		return newError(ReasonBadTime, "ts", "ts + duration is after year 9999")
	}
	if !s.haveBytes {
		return errSkipNoData
	}
	vendor, ok := x.attr.Vendor(dstAddr)
	if !ok {
		return errSkipUnattributed
	}
	e.Time = unixTime(sec, nsec)
	e.Vendor = vendor
	e.Dst = s.dst
	e.DstPort = uint16(s.port)
	e.Src = s.src
	e.Bytes = s.bytes
	e.Protocol = s.service
	if e.Protocol == "" {
		e.Protocol = s.proto
	}
	return nil
}

// top handles the field f whose non-null value starts at d[j].
func (x *ZeekConnDecoder) top(d []byte, j, f int) (int, bool) {
	w, s, max := &x.w, &x.cur, x.opts.MaxFieldLength
	var (
		ok bool
		b  []byte
	)
	switch f {
	case 0: // ts
		if d[j] == '"' {
			b, j, ok = w.str(d, j, 1, "ts", max)
			if ok && b != nil {
				t, good := w.times.parse(b)
				if !good {
					w.fail(newError(ReasonBadTime, "ts", "not an RFC 3339 timestamp: "+quoteInput(b)))
				} else {
					s.tsSec, s.tsNsec, s.haveTS = t.Unix(), int64(t.Nanosecond()), true
				}
			}
			return j, ok
		}
		s.tsSec, s.tsNsec, s.haveTS, j, ok = w.seconds(d, j, 1, "ts", ReasonBadTime)
	case 1:
		s.durSec, s.durNsec, s.haveDur, j, ok = w.seconds(d, j, 1, "duration", ReasonBadTime)
	case 2:
		b, j, ok = w.str(d, j, 1, "id.orig_h", max)
		s.src = x.st.addrs.get(b)
	case 3:
		b, j, ok = w.str(d, j, 1, "id.resp_h", max)
		s.dst = x.st.addrs.get(b)
	case 4:
		s.port, s.havePort, j, ok = w.integer(d, j, 1, "id.resp_p", ReasonBadPort)
	case 5:
		b, j, ok = w.str(d, j, 1, "proto", max)
		s.proto = x.st.names.get(b)
	case 6:
		b, j, ok = w.str(d, j, 1, "service", max)
		s.service = x.st.names.get(b)
	default:
		s.bytes, s.haveBytes, j, ok = w.integer(d, j, 1, "orig_bytes", ReasonBadBytes)
	}
	return j, ok
}
