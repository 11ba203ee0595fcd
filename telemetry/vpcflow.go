package telemetry

import (
	"fmt"
	"net/netip"
	"strconv"
)

// VPCFlowDecoder decodes AWS VPC Flow Logs version 2 records in the default format, one
// record per message or line, fields separated by spaces:
//
//	version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status
//	2 123456789010 eni-1235b8ca123456789 172.31.16.139 203.0.113.7 20641 443 6 20 4249 1418530010 1418530070 ACCEPT OK
//
// The mapping into an Event: Time = end (unix seconds; start when end is "-"),
// Vendor = the vendor whose CIDR holds dstaddr (longest prefix wins), Dst = dstaddr,
// DstPort = dstport, Src = srcaddr, Bytes = bytes, Protocol = the IANA protocol name for
// 6, 17, 1 and 58 (tcp, udp, icmp, ipv6-icmp) or the number otherwise, Sensor =
// interface-id. Flow logs name no credential, so Credential is empty; packets are not
// records, so Records is 0.
//
// Records are printable ASCII; any other byte rejects the record (ReasonBadRecord).
//
// Skipped, not rejected (the error wraps ErrSkipped): the header line (ReasonHeader),
// empty lines (ReasonEmpty), NODATA and SKIPDATA records (ReasonNoData), REJECT records,
// whose bytes never left (ReasonRejected), and records whose destination is in no vendor
// CIDR (ReasonUnattributed). A record is fully validated before it is skipped as
// unattributed, so malformed input is always reported as such.
//
// A VPCFlowDecoder is not safe for concurrent use.
type VPCFlowDecoder struct {
	opts  DecodeOptions
	attr  *Attributor
	st    strtab
	field [vpcFields][]byte
}

var _ Decoder = (*VPCFlowDecoder)(nil)

const vpcFields = 14

var vpcFieldNames = [vpcFields]string{"version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol", "packets", "bytes", "start", "end", "action", "log-status"}

// NewVPCFlowDecoder returns a decoder for VPC Flow Logs v2 records that attributes
// destinations with attr (nil attributes nothing, so every record is unattributed).
func NewVPCFlowDecoder(attr *Attributor, o DecodeOptions) *VPCFlowDecoder {
	o = o.withDefaults()
	return &VPCFlowDecoder{opts: o, attr: attr, st: newStrtab(o)}
}

// Decode decodes one record into e. See VPCFlowDecoder. On error e is left zero.
func (x *VPCFlowDecoder) Decode(d []byte, e *Event) error {
	*e = Event{}
	if err := x.decode(d, e); err != nil {
		*e = Event{}
		return err
	}
	return nil
}

func (x *VPCFlowDecoder) decode(d []byte, e *Event) error {
	if len(d) > x.opts.MaxMessageSize {
		return newError(ReasonOversize, "", fmt.Sprintf("record is %d bytes, the limit is %d", len(d), x.opts.MaxMessageSize))
	}
	n := 0
	for i := 0; i < len(d); {
		for i < len(d) && isSpace(d[i]) {
			i++
		}
		if i >= len(d) {
			break
		}
		j := i
		for j < len(d) && !isSpace(d[j]) {
			if d[j] < 0x20 || d[j] >= 0x7f {
				return newError(ReasonBadRecord, "", fmt.Sprintf("byte 0x%02x at offset %d: flow-log records are printable ASCII", d[j], j))
			}
			j++
		}
		if n == vpcFields {
			return newError(ReasonBadRecord, "", fmt.Sprintf("more than %d fields: %s", vpcFields, quoteInput(d)))
		}
		x.field[n] = d[i:j]
		n++
		i = j
	}
	if n == 0 {
		return errSkipEmpty
	}
	f := &x.field
	if string(f[0]) == "version" {
		return errSkipHeader
	}
	if n != vpcFields {
		return newError(ReasonBadRecord, "", fmt.Sprintf("want %d fields, got %d: %s", vpcFields, n, quoteInput(d)))
	}
	if string(f[0]) != "2" {
		return newError(ReasonBadVersion, "version", "want 2, got "+quoteInput(f[0]))
	}
	for k, b := range f {
		if len(b) > x.opts.MaxFieldLength {
			return newError(ReasonFieldTooLong, vpcFieldNames[k], fmt.Sprintf("%d bytes, the limit is %d", len(b), x.opts.MaxFieldLength))
		}
	}
	switch string(f[13]) {
	case "OK":
	case "NODATA", "SKIPDATA":
		return errSkipNoData
	default:
		return newError(ReasonBadRecord, "log-status", "want OK, NODATA or SKIPDATA, got "+quoteInput(f[13]))
	}
	var reject bool
	switch string(f[12]) {
	case "ACCEPT":
	case "REJECT":
		reject = true
	default:
		return newError(ReasonBadRecord, "action", "want ACCEPT or REJECT, got "+quoteInput(f[12]))
	}
	src := x.st.addrs.get(f[3])
	if _, err := netip.ParseAddr(src); err != nil {
		return newError(ReasonBadAddress, "srcaddr", quoteInput(f[3]))
	}
	dst := x.st.addrs.get(f[4])
	dstAddr, err := netip.ParseAddr(dst)
	if err != nil {
		return newError(ReasonBadAddress, "dstaddr", quoteInput(f[4]))
	}
	if _, ok := atou(f[5], 65535); !ok {
		return newError(ReasonBadPort, "srcport", "want an integer in [0, 65535], got "+quoteInput(f[5]))
	}
	port, ok := atou(f[6], 65535)
	if !ok {
		return newError(ReasonBadPort, "dstport", "want an integer in [0, 65535], got "+quoteInput(f[6]))
	}
	proto, ok := atou(f[7], 255)
	if !ok {
		return newError(ReasonBadRecord, "protocol", "want an IANA protocol number, got "+quoteInput(f[7]))
	}
	if _, ok := atou(f[8], 1<<62); !ok {
		return newError(ReasonBadRecord, "packets", "want a non-negative integer, got "+quoteInput(f[8]))
	}
	nbytes, ok := atou(f[9], 1<<62)
	switch {
	case !ok && len(f[9]) > 0 && f[9][0] == '-' && len(f[9]) > 1:
		return newError(ReasonNegativeBytes, "bytes", quoteInput(f[9]))
	case !ok:
		return newError(ReasonBadBytes, "bytes", "want a non-negative integer, got "+quoteInput(f[9]))
	case int64(nbytes) > x.opts.MaxBytes:
		return newError(ReasonBytesTooLarge, "bytes", strconv.FormatUint(nbytes, 10)+" is above the limit "+strconv.FormatInt(x.opts.MaxBytes, 10))
	}
	start, okStart := atou(f[10], maxEpochSeconds)
	end, okEnd := atou(f[11], maxEpochSeconds)
	switch {
	case okEnd:
	case string(f[11]) == "-" && okStart:
		end = start
	default:
		return newError(ReasonBadTime, "end", "want unix seconds, got "+quoteInput(f[11]))
	}
	if !okStart && string(f[10]) != "-" {
		return newError(ReasonBadTime, "start", "want unix seconds, got "+quoteInput(f[10]))
	}
	if reject {
		return errSkipRejected
	}
	vendor, ok := x.attr.Vendor(dstAddr)
	if !ok {
		return errSkipUnattributed
	}
	e.Time = unixTime(int64(end), 0)
	e.Vendor = vendor
	e.Dst = dst
	e.DstPort = uint16(port)
	e.Src = src
	e.Bytes = int64(nbytes)
	e.Protocol = protocolName(uint8(proto), &x.st.names, f[7])
	e.Sensor = x.st.names.get(f[2])
	return nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// atou parses a decimal unsigned integer no greater than max.
func atou(b []byte, max uint64) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		if v > max/10 {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
		if v > max {
			return 0, false
		}
	}
	return v, true
}

// protocolName names the common IANA protocol numbers and interns the number otherwise.
func protocolName(p uint8, names *interner, raw []byte) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 58:
		return "ipv6-icmp"
	}
	return names.get(raw)
}
