package telemetry

import (
	"fmt"
	"net/netip"
	"strconv"
)

// OCSFClassNetworkActivity is the OCSF class_uid of Network Activity events.
const OCSFClassNetworkActivity = 4001

// maxEpochMillis is 9999-12-31T23:59:59.999Z in milliseconds.
const maxEpochMillis = maxEpochSeconds*1000 + 999

// OCSFDecoder decodes OCSF Network Activity events (class_uid 4001), one JSON object per
// message or line. It reads exactly these fields and ignores every other:
//
//	class_uid                    must be 4001, else ReasonUnsupportedClass
//	time                         event time, integer milliseconds since the epoch (required)
//	traffic.bytes_out            bytes sent by the source to the destination; when absent,
//	traffic.bytes                the total byte count is used (one of them is required)
//	dst_endpoint.ip              Dst, and the address attributed to a vendor
//	dst_endpoint.hostname        Dst when dst_endpoint.ip is absent
//	dst_endpoint.port            DstPort
//	src_endpoint.ip              Src
//	connection_info.protocol_name Protocol
//	device.hostname              Sensor (the device that observed the traffic)
//	unmapped.vendor              Vendor, when the producer names it
//	unmapped.credential          Credential
//
// The vendor is unmapped.vendor when present and non-empty (OCSF has no attribute for
// "the third party this traffic goes to", so producers put it under unmapped);
// otherwise it is attributed from dst_endpoint.ip with the vendor CIDRs. An event with
// neither is skipped as ReasonUnattributed, never guessed.
//
// JSON is handled as by the native decoder: encoding/json's grammar, unescaping and
// case-insensitive key matching; a known field given twice is rejected. An OCSFDecoder
// is not safe for concurrent use.
type OCSFDecoder struct {
	opts DecodeOptions
	attr *Attributor
	st   strtab
	w    walker
	cur  ocsfState
}

var _ Decoder = (*OCSFDecoder)(nil)

// ocsfState is what one Decode collects before validating.
type ocsfState struct {
	class, timeMS, bytesOut, bytesTotal, port int64
	haveClass, haveTime, haveOut, haveTotal   bool
	havePort                                  bool
	dstIP, dstHost, srcIP                     string
}

var (
	ocsfTop      = []string{"class_uid", "time", "dst_endpoint", "src_endpoint", "traffic", "connection_info", "device", "unmapped"}
	ocsfDst      = []string{"ip", "hostname", "port"}
	ocsfSrc      = []string{"ip"}
	ocsfTraffic  = []string{"bytes_out", "bytes"}
	ocsfConn     = []string{"protocol_name"}
	ocsfDevice   = []string{"hostname"}
	ocsfUnmapped = []string{"vendor", "credential"}
)

// NewOCSFDecoder returns a decoder for OCSF Network Activity events that attributes
// destinations with attr when the event names no vendor (attr may be nil).
func NewOCSFDecoder(attr *Attributor, o DecodeOptions) *OCSFDecoder {
	o = o.withDefaults()
	return &OCSFDecoder{opts: o, attr: attr, st: newStrtab(o)}
}

// Decode decodes one OCSF event into e. See OCSFDecoder. On error e is left zero.
func (x *OCSFDecoder) Decode(d []byte, e *Event) error {
	*e = Event{}
	if err := x.decode(d, e); err != nil {
		*e = Event{}
		return err
	}
	return nil
}

func (x *OCSFDecoder) decode(d []byte, e *Event) error {
	x.cur = ocsfState{}
	if err := x.w.document(d, x.opts.MaxMessageSize, ocsfTop, func(f, j int) (int, bool) { return x.top(d, j, f, e) }); err != nil {
		return err
	}
	s := &x.cur
	switch {
	case !s.haveClass:
		return newError(ReasonUnsupportedClass, "class_uid", "missing")
	case s.class != OCSFClassNetworkActivity:
		return newError(ReasonUnsupportedClass, "class_uid", fmt.Sprintf("want %d (Network Activity), got %d", OCSFClassNetworkActivity, s.class))
	case !s.haveTime:
		return newError(ReasonMissingTime, "time", "required")
	case s.timeMS < 0 || s.timeMS > maxEpochMillis:
		return newError(ReasonBadTime, "time", "milliseconds out of range: "+strconv.FormatInt(s.timeMS, 10))
	}
	n, have, field := s.bytesOut, s.haveOut, "traffic.bytes_out"
	if !have {
		n, have, field = s.bytesTotal, s.haveTotal, "traffic.bytes"
	}
	switch {
	case !have:
		return newError(ReasonMissingBytes, "traffic.bytes_out", "required (or traffic.bytes)")
	case n < 0:
		return newError(ReasonNegativeBytes, field, strconv.FormatInt(n, 10))
	case n > x.opts.MaxBytes:
		return newError(ReasonBytesTooLarge, field, strconv.FormatInt(n, 10)+" is above the limit "+strconv.FormatInt(x.opts.MaxBytes, 10))
	}
	if s.havePort && (s.port < 0 || s.port > 65535) {
		return newError(ReasonBadPort, "dst_endpoint.port", "out of range [0, 65535]: "+strconv.FormatInt(s.port, 10))
	}
	var dstAddr netip.Addr
	if s.dstIP != "" {
		a, err := netip.ParseAddr(s.dstIP)
		if err != nil {
			return newError(ReasonBadAddress, "dst_endpoint.ip", strconv.Quote(s.dstIP))
		}
		dstAddr = a
	}
	if s.srcIP != "" {
		if _, err := netip.ParseAddr(s.srcIP); err != nil {
			return newError(ReasonBadAddress, "src_endpoint.ip", strconv.Quote(s.srcIP))
		}
	}
	if e.Vendor == "" {
		v, ok := x.attr.Vendor(dstAddr)
		if !ok {
			return errSkipUnattributed
		}
		e.Vendor = v
	}
	e.Time = unixTime(s.timeMS/1000, (s.timeMS%1000)*1e6)
	e.Bytes = n
	e.DstPort = uint16(s.port)
	e.Dst = s.dstIP
	if e.Dst == "" {
		e.Dst = s.dstHost
	}
	e.Src = s.srcIP
	return nil
}

// top handles the top-level field f whose non-null value starts at d[j].
func (x *OCSFDecoder) top(d []byte, j, f int, e *Event) (int, bool) {
	w, s, max := &x.w, &x.cur, x.opts.MaxFieldLength
	var ok bool
	switch f {
	case 0:
		s.class, s.haveClass, j, ok = w.integer(d, j, 1, "class_uid", ReasonUnsupportedClass)
		return j, ok
	case 1:
		s.timeMS, s.haveTime, j, ok = w.integer(d, j, 1, "time", ReasonBadTime)
		return j, ok
	case 2:
		return w.sub(d, j, 1, "dst_endpoint", ocsfDst, func(f, j int) (int, bool) {
			var b []byte
			switch f {
			case 0:
				b, j, ok = w.str(d, j, 2, "dst_endpoint.ip", max)
				s.dstIP = x.st.addrs.get(b)
			case 1:
				b, j, ok = w.str(d, j, 2, "dst_endpoint.hostname", max)
				s.dstHost = x.st.addrs.get(b)
			default:
				s.port, s.havePort, j, ok = w.integer(d, j, 2, "dst_endpoint.port", ReasonBadPort)
			}
			return j, ok
		})
	case 3:
		return w.sub(d, j, 1, "src_endpoint", ocsfSrc, func(_, j int) (int, bool) {
			var b []byte
			b, j, ok = w.str(d, j, 2, "src_endpoint.ip", max)
			s.srcIP = x.st.addrs.get(b)
			return j, ok
		})
	case 4:
		return w.sub(d, j, 1, "traffic", ocsfTraffic, func(f, j int) (int, bool) {
			if f == 0 {
				s.bytesOut, s.haveOut, j, ok = w.integer(d, j, 2, "traffic.bytes_out", ReasonBadBytes)
			} else {
				s.bytesTotal, s.haveTotal, j, ok = w.integer(d, j, 2, "traffic.bytes", ReasonBadBytes)
			}
			return j, ok
		})
	case 5:
		return w.sub(d, j, 1, "connection_info", ocsfConn, func(_, j int) (int, bool) {
			var b []byte
			b, j, ok = w.str(d, j, 2, "connection_info.protocol_name", max)
			e.Protocol = x.st.names.get(b)
			return j, ok
		})
	case 6:
		return w.sub(d, j, 1, "device", ocsfDevice, func(_, j int) (int, bool) {
			var b []byte
			b, j, ok = w.str(d, j, 2, "device.hostname", max)
			e.Sensor = x.st.names.get(b)
			return j, ok
		})
	default:
		return w.sub(d, j, 1, "unmapped", ocsfUnmapped, func(f, j int) (int, bool) {
			var b []byte
			if f == 0 {
				b, j, ok = w.str(d, j, 2, "unmapped.vendor", max)
				e.Vendor = x.st.names.get(b)
			} else {
				b, j, ok = w.str(d, j, 2, "unmapped.credential", max)
				e.Credential = x.st.names.get(b)
			}
			return j, ok
		})
	}
}
