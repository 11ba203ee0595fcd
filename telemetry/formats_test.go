package telemetry

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
)

func testVendors() killswitch.Inventory {
	return killswitch.Inventory{
		"mailer":  {CIDRs: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:1::/48")}},
		"mailer2": {CIDRs: []netip.Prefix{netip.MustParsePrefix("203.0.113.128/25")}},
		"crm":     {CIDRs: []netip.Prefix{netip.MustParsePrefix("198.51.100.7/32"), netip.MustParsePrefix("::ffff:192.0.2.0/120")}},
		"nocidr":  {},
	}
}

func testAttributor(t testing.TB) *Attributor {
	t.Helper()
	a, err := NewAttributor(testVendors())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAttributor(t *testing.T) {
	a := testAttributor(t)
	tests := []struct {
		addr   string
		vendor string
	}{
		{"203.0.113.7", "mailer"},
		{"203.0.113.200", "mailer2"}, // the longer prefix wins
		{"::ffff:203.0.113.200", "mailer2"},
		{"198.51.100.7", "crm"},
		{"198.51.100.8", ""},
		{"192.0.2.55", "crm"}, // from the IPv4-mapped prefix
		{"2001:db8:1:2::1", "mailer"},
		{"2001:db8:2::1", ""},
		{"10.0.0.1", ""},
	}
	for _, tt := range tests {
		v, ok := a.Vendor(netip.MustParseAddr(tt.addr))
		if v != tt.vendor || ok != (tt.vendor != "") {
			t.Errorf("Vendor(%s) = %q, %v; want %q", tt.addr, v, ok, tt.vendor)
		}
	}
	if a.Len() != 5 {
		t.Errorf("Len = %d, want 5", a.Len())
	}
	var nilA *Attributor
	if _, ok := nilA.Vendor(netip.MustParseAddr("203.0.113.7")); ok {
		t.Error("nil Attributor attributed an address")
	}
	_, err := NewAttributor(killswitch.Inventory{
		"a": {CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		"b": {CIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/8")}},
	})
	if err == nil || !strings.Contains(err.Error(), "10.0.0.0/8") {
		t.Errorf("ambiguous CIDR: got %v", err)
	}
}

func TestVPCFlowDecoder(t *testing.T) {
	d := NewVPCFlowDecoder(testAttributor(t), DecodeOptions{})
	const ok = "2 123456789010 eni-1235b8ca123456789 172.31.16.139 203.0.113.7 20641 443 6 20 4249 1418530010 1418530070 ACCEPT OK"
	var e Event
	if err := d.Decode([]byte(ok+"\r\n"), &e); err != nil {
		t.Fatal(err)
	}
	want := Event{Time: time.Unix(1418530070, 0).UTC(), Vendor: "mailer", Dst: "203.0.113.7", DstPort: 443, Bytes: 4249, Src: "172.31.16.139", Protocol: "tcp", Sensor: "eni-1235b8ca123456789"}
	if e != want {
		t.Fatalf("got  %+v\nwant %+v", e, want)
	}
	okb := []byte(ok)
	if n := testing.AllocsPerRun(100, func() { _ = d.Decode(okb, &e) }); n != 0 {
		t.Fatalf("steady-state Decode allocates %v times", n)
	}
	replace := func(i int, v string) string {
		f := strings.Fields(ok)
		f[i] = v
		return strings.Join(f, " ")
	}
	tests := []struct {
		name   string
		in     string
		reason Reason
		field  string
	}{
		{"header", "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status", ReasonHeader, ""},
		{"empty", "  \n", ReasonEmpty, ""},
		{"nodata", "2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA", ReasonNoData, ""},
		{"skipdata", "2 123456789010 eni-11111111aaaaaaaaa - - - - - - - 1431280876 1431280934 - SKIPDATA", ReasonNoData, ""},
		{"reject", replace(12, "REJECT"), ReasonRejected, ""},
		{"unattributed", replace(4, "10.1.2.3"), ReasonUnattributed, ""},
		{"too few fields", "2 123456789010 eni-1 1.2.3.4", ReasonBadRecord, ""},
		{"too many fields", ok + " extra", ReasonBadRecord, ""},
		{"version 3", replace(0, "3"), ReasonBadVersion, "version"},
		{"bad status", replace(13, "MAYBE"), ReasonBadRecord, "log-status"},
		{"bad action", replace(12, "-"), ReasonBadRecord, "action"},
		{"bad dstaddr", replace(4, "203.0.113"), ReasonBadAddress, "dstaddr"},
		{"bad srcaddr", replace(3, "x"), ReasonBadAddress, "srcaddr"},
		{"port too large", replace(6, "65536"), ReasonBadPort, "dstport"},
		{"bad srcport", replace(5, "-"), ReasonBadPort, "srcport"},
		{"protocol out of range", replace(7, "256"), ReasonBadRecord, "protocol"},
		{"bad packets", replace(8, "x"), ReasonBadRecord, "packets"},
		{"negative bytes", replace(9, "-5"), ReasonNegativeBytes, "bytes"},
		{"bytes not a number", replace(9, "4k"), ReasonBadBytes, "bytes"},
		{"bytes above bound", replace(9, "1099511627777"), ReasonBytesTooLarge, "bytes"},
		{"bad end", replace(11, "soon"), ReasonBadTime, "end"},
		{"bad start", replace(10, "x"), ReasonBadTime, "start"},
		{"bad record still reported when unattributed", replace(9, "-1") + "", ReasonNegativeBytes, "bytes"},
		{"oversize", ok + strings.Repeat(" ", 70000), ReasonOversize, ""},
		{"field too long", replace(2, strings.Repeat("e", 600)), ReasonFieldTooLong, "interface-id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := d.Decode([]byte(tt.in), &e)
			var te *Error
			if !errors.As(err, &te) || te.Reason != tt.reason || te.Field != tt.field {
				t.Fatalf("got %v, want reason %q field %q", err, tt.reason, tt.field)
			}
			if errors.Is(err, ErrSkipped) != tt.reason.IsSkip() || errors.Is(err, ErrInvalid) == tt.reason.IsSkip() {
				t.Fatalf("%v: wrong sentinel", err)
			}
			if e != (Event{}) {
				t.Fatalf("event not reset: %+v", e)
			}
		})
	}
	// end "-" falls back to start; other protocols keep their number; IPv6.
	in := "2 1 eni-2 2001:db8:9::1 2001:db8:1::5 1 25 47 1 100 1700000000 - ACCEPT OK"
	if err := d.Decode([]byte(in), &e); err != nil {
		t.Fatal(err)
	}
	if e.Time != time.Unix(1700000000, 0).UTC() || e.Protocol != "47" || e.Vendor != "mailer" || e.DstPort != 25 {
		t.Fatalf("got %+v", e)
	}
	// Without an inventory nothing is attributed.
	if err := NewVPCFlowDecoder(nil, DecodeOptions{}).Decode([]byte(ok), &e); ReasonOf(err) != ReasonUnattributed {
		t.Fatalf("nil attributor: %v", err)
	}
}

func FuzzVPCFlow(f *testing.F) {
	for _, s := range []string{
		"2 123456789010 eni-1235b8ca123456789 172.31.16.139 203.0.113.7 20641 443 6 20 4249 1418530010 1418530070 ACCEPT OK",
		"2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA",
		"version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status",
		"2 1 eni-2 2001:db8:9::1 2001:db8:1::5 1 25 47 1 100 1700000000 - REJECT OK",
		"2 1 eni-2 1.2.3.4 203.0.113.200 1 65535 17 18446744073709551615 99999999999999999999 0 0 ACCEPT OK",
	} {
		f.Add([]byte(s))
	}
	d := NewVPCFlowDecoder(testAttributor(f), DecodeOptions{InternCapacity: 64})
	f.Fuzz(func(t *testing.T, data []byte) {
		var e Event
		err := d.Decode(data, &e)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			if e != (Event{}) {
				t.Fatal("event not reset on error")
			}
			return
		}
		// An accepted record is exactly the fields it was made of.
		fields := strings.Fields(string(data))
		if len(fields) != 14 || fields[0] != "2" || fields[12] != "ACCEPT" || fields[13] != "OK" {
			t.Fatalf("accepted a record that is not ACCEPT OK v2: %q", data)
		}
		if e.Vendor == "" || e.Bytes < 0 || e.Bytes > DefaultMaxBytes || e.Dst != fields[4] || e.Src != fields[3] || e.Sensor != fields[2] {
			t.Fatalf("bad mapping of %q: %+v", data, e)
		}
		if want, _ := strconv.ParseInt(fields[9], 10, 64); want != e.Bytes {
			t.Fatalf("bytes %d, want %s", e.Bytes, fields[9])
		}
		if v, _ := testAttributor(t).Vendor(netip.MustParseAddr(e.Dst)); v != e.Vendor {
			t.Fatalf("vendor %q, attributor says %q", e.Vendor, v)
		}
		var back Event
		if err := NewJSONDecoder(DecodeOptions{}).Decode(AppendJSON(nil, &e), &back); err != nil || back != e {
			t.Fatalf("event does not round-trip the native contract: %v", err)
		}
	})
}

const ocsfExample = `{
  "class_uid": 4001, "class_name": "Network Activity", "category_uid": 4, "activity_id": 6,
  "time": 1738749600123,
  "metadata": {"version": "1.3.0", "product": {"name": "egress-proxy", "vendor_name": "Example"}},
  "device": {"hostname": "egress-gw-1", "ip": "10.0.0.2"},
  "src_endpoint": {"ip": "10.0.3.17", "port": 51514},
  "dst_endpoint": {"ip": "203.0.113.7", "port": 443, "hostname": "api.mailer.example"},
  "connection_info": {"protocol_name": "tcp", "direction_id": 2},
  "traffic": {"bytes_in": 1200, "bytes_out": 18231, "bytes": 19431, "packets": 40},
  "unmapped": {"credential": "mailer-api"}
}`

func TestOCSFDecoder(t *testing.T) {
	d := NewOCSFDecoder(testAttributor(t), DecodeOptions{})
	var e Event
	if err := d.Decode([]byte(ocsfExample), &e); err != nil {
		t.Fatal(err)
	}
	want := Event{Time: time.UnixMilli(1738749600123).UTC(), Vendor: "mailer", Credential: "mailer-api", Dst: "203.0.113.7", DstPort: 443, Bytes: 18231, Src: "10.0.3.17", Protocol: "tcp", Sensor: "egress-gw-1"}
	if e != want {
		t.Fatalf("got  %+v\nwant %+v", e, want)
	}
	ex := []byte(ocsfExample)
	if n := testing.AllocsPerRun(100, func() { _ = d.Decode(ex, &e) }); n != 0 {
		t.Fatalf("steady-state Decode allocates %v times", n)
	}
	base := map[string]any{}
	if err := json.Unmarshal([]byte(ocsfExample), &base); err != nil {
		t.Fatal(err)
	}
	with := func(edit func(m map[string]any)) string {
		var m map[string]any
		_ = json.Unmarshal([]byte(ocsfExample), &m)
		edit(m)
		b, _ := json.Marshal(m)
		return string(b)
	}
	sub := func(m map[string]any, k string) map[string]any { return m[k].(map[string]any) }
	tests := []struct {
		name   string
		in     string
		reason Reason
		field  string
		check  func(e Event) bool
	}{
		{name: "vendor named in unmapped wins", in: with(func(m map[string]any) { sub(m, "unmapped")["vendor"] = "crm" }), check: func(e Event) bool { return e.Vendor == "crm" }},
		{name: "bytes used when bytes_out is absent", in: with(func(m map[string]any) { delete(sub(m, "traffic"), "bytes_out") }), check: func(e Event) bool { return e.Bytes == 19431 }},
		{name: "hostname when no ip", in: with(func(m map[string]any) {
			delete(sub(m, "dst_endpoint"), "ip")
			sub(m, "unmapped")["vendor"] = "mailer"
		}), check: func(e Event) bool { return e.Dst == "api.mailer.example" }},
		{name: "unattributed", in: with(func(m map[string]any) { sub(m, "dst_endpoint")["ip"] = "10.9.9.9" }), reason: ReasonUnattributed},
		{name: "other class", in: with(func(m map[string]any) { m["class_uid"] = 4002 }), reason: ReasonUnsupportedClass, field: "class_uid"},
		{name: "no class", in: with(func(m map[string]any) { delete(m, "class_uid") }), reason: ReasonUnsupportedClass, field: "class_uid"},
		{name: "no time", in: with(func(m map[string]any) { delete(m, "time") }), reason: ReasonMissingTime, field: "time"},
		{name: "time as string", in: with(func(m map[string]any) { m["time"] = "2026-01-01T00:00:00Z" }), reason: ReasonBadTime, field: "time"},
		{name: "negative time", in: with(func(m map[string]any) { m["time"] = -1 }), reason: ReasonBadTime, field: "time"},
		{name: "no bytes", in: with(func(m map[string]any) { delete(m, "traffic") }), reason: ReasonMissingBytes, field: "traffic.bytes_out"},
		{name: "negative bytes_out", in: with(func(m map[string]any) { sub(m, "traffic")["bytes_out"] = -3 }), reason: ReasonNegativeBytes, field: "traffic.bytes_out"},
		{name: "fractional bytes", in: with(func(m map[string]any) { sub(m, "traffic")["bytes_out"] = 1.5 }), reason: ReasonBadBytes, field: "traffic.bytes_out"},
		{name: "bad port", in: with(func(m map[string]any) { sub(m, "dst_endpoint")["port"] = 70000 }), reason: ReasonBadPort, field: "dst_endpoint.port"},
		{name: "bad ip", in: with(func(m map[string]any) { sub(m, "dst_endpoint")["ip"] = "nope" }), reason: ReasonBadAddress, field: "dst_endpoint.ip"},
		{name: "endpoint not an object", in: with(func(m map[string]any) { m["dst_endpoint"] = "203.0.113.7" }), reason: ReasonWrongType, field: "dst_endpoint"},
		{name: "ip not a string", in: with(func(m map[string]any) { sub(m, "dst_endpoint")["ip"] = 7 }), reason: ReasonWrongType, field: "dst_endpoint.ip"},
		{name: "duplicate nested", in: `{"class_uid":4001,"time":1,"traffic":{"bytes":1,"bytes":2}}`, reason: ReasonDuplicateField, field: "traffic.bytes"},
		{name: "invalid json", in: `{"class_uid":4001,`, reason: ReasonInvalidJSON},
		{name: "trailing data", in: ocsfExample + "x", reason: ReasonTrailingData},
		{name: "array", in: `[]`, reason: ReasonNotObject},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := d.Decode([]byte(tt.in), &e)
			if tt.check != nil {
				if err != nil || !tt.check(e) {
					t.Fatalf("got %v %+v", err, e)
				}
				return
			}
			var te *Error
			if !errors.As(err, &te) || te.Reason != tt.reason || te.Field != tt.field {
				t.Fatalf("got %v, want reason %q field %q", err, tt.reason, tt.field)
			}
		})
	}
}

// ocsfRef is what encoding/json decodes the fields the OCSF decoder reads into.
type ocsfRef struct {
	ClassUID *int64 `json:"class_uid"`
	Time     *int64 `json:"time"`
	Dst      *struct {
		IP       *string `json:"ip"`
		Hostname *string `json:"hostname"`
		Port     *int64  `json:"port"`
	} `json:"dst_endpoint"`
	Src *struct {
		IP *string `json:"ip"`
	} `json:"src_endpoint"`
	Traffic *struct {
		BytesOut *int64 `json:"bytes_out"`
		Bytes    *int64 `json:"bytes"`
	} `json:"traffic"`
	Conn *struct {
		Protocol *string `json:"protocol_name"`
	} `json:"connection_info"`
	Device *struct {
		Hostname *string `json:"hostname"`
	} `json:"device"`
	Unmapped *struct {
		Vendor     *string `json:"vendor"`
		Credential *string `json:"credential"`
	} `json:"unmapped"`
}

func FuzzOCSF(f *testing.F) {
	f.Add([]byte(ocsfExample))
	f.Add([]byte(`{"class_uid":4001,"time":0,"traffic":{"bytes":5},"unmapped":{"vendor":"v"}}`))
	f.Add([]byte(`{"CLASS_UID":4001,"time":1,"Traffic":{"BYTES_OUT":5,"bytes":null},"dst_endpoint":{"ip":"198.51.100.7","port":0}}`))
	f.Add([]byte(`{"class_uid":4001,"time":1,"traffic":{"bytes":5},"unmapped":null,"device":{"hostname":"\u00e9\ud800"},"dst_endpoint":{"ip":"203.0.113.1"}}`))
	d := NewOCSFDecoder(testAttributor(f), DecodeOptions{InternCapacity: 64})
	attr := testAttributor(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var e Event
		err := d.Decode(data, &e)
		if err != nil && ReasonOf(err) == "" {
			t.Fatalf("error without a reason: %v", err)
		}
		if len(data) > DefaultMaxMessageSize {
			return
		}
		valid := json.Valid(data)
		if r := ReasonOf(err); valid == (r == ReasonInvalidJSON || r == ReasonTrailingData) {
			t.Fatalf("json.Valid=%v, decoder: %v", valid, err)
		}
		var ref ocsfRef
		stdErr := json.Unmarshal(data, &ref)
		if err == nil && stdErr != nil {
			t.Fatalf("encoding/json fails (%v), decoder accepts %q", stdErr, data)
		}
		if err != nil {
			return
		}
		// Accepted: the values are encoding/json's.
		s := func(p *string) string {
			if p == nil {
				return ""
			}
			return *p
		}
		if ref.ClassUID == nil || *ref.ClassUID != 4001 || ref.Time == nil || !e.Time.Equal(time.UnixMilli(*ref.Time)) {
			t.Fatalf("class/time mismatch for %q: %+v", data, e)
		}
		var want int64 = -1
		if ref.Traffic != nil && ref.Traffic.BytesOut != nil {
			want = *ref.Traffic.BytesOut
		} else if ref.Traffic != nil && ref.Traffic.Bytes != nil {
			want = *ref.Traffic.Bytes
		}
		if e.Bytes != want {
			t.Fatalf("bytes %d, want %d for %q", e.Bytes, want, data)
		}
		var dstIP, dstHost, vendor, cred, srcIP, proto, sensor string
		var port int64
		if ref.Dst != nil {
			dstIP, dstHost = s(ref.Dst.IP), s(ref.Dst.Hostname)
			if ref.Dst.Port != nil {
				port = *ref.Dst.Port
			}
		}
		if ref.Unmapped != nil {
			vendor, cred = s(ref.Unmapped.Vendor), s(ref.Unmapped.Credential)
		}
		if ref.Src != nil {
			srcIP = s(ref.Src.IP)
		}
		if ref.Conn != nil {
			proto = s(ref.Conn.Protocol)
		}
		if ref.Device != nil {
			sensor = s(ref.Device.Hostname)
		}
		if vendor == "" {
			a, _ := netip.ParseAddr(dstIP)
			vendor, _ = attr.Vendor(a)
		}
		wantDst := dstIP
		if wantDst == "" {
			wantDst = dstHost
		}
		if e.Vendor != vendor || e.Credential != cred || e.Dst != wantDst || int64(e.DstPort) != port || e.Src != srcIP || e.Protocol != proto || e.Sensor != sensor {
			t.Fatalf("decoding %q: got %+v", data, e)
		}
	})
}

func TestZeekConnDecoder(t *testing.T) {
	d := NewZeekConnDecoder(testAttributor(t), DecodeOptions{})
	const rec = `{"ts":1591367999.305988,"uid":"CMdzit1AMNsmfAIiQc","id.orig_h":"192.168.4.76","id.orig_p":36844,"id.resp_h":"203.0.113.7","id.resp_p":443,"proto":"tcp","service":"ssl","duration":2.5,"orig_bytes":1200,"resp_bytes":800,"conn_state":"SF"}`
	var e Event
	if err := d.Decode([]byte(rec), &e); err != nil {
		t.Fatal(err)
	}
	want := Event{Time: time.Unix(1591368001, 805988000).UTC(), Vendor: "mailer", Dst: "203.0.113.7", DstPort: 443, Bytes: 1200, Src: "192.168.4.76", Protocol: "ssl"}
	if e != want {
		t.Fatalf("got  %+v\nwant %+v", e, want)
	}
	tests := []struct {
		name   string
		in     string
		reason Reason
	}{
		{"iso timestamp", `{"ts":"2020-06-05T14:39:59.305988Z","id.resp_h":"203.0.113.7","proto":"udp","orig_bytes":5}`, ""},
		{"no bytes", `{"ts":1591367999.3,"id.resp_h":"203.0.113.7","proto":"tcp","conn_state":"S0"}`, ReasonNoData},
		{"unattributed", `{"ts":1591367999.3,"id.resp_h":"10.1.1.1","orig_bytes":5}`, ReasonUnattributed},
		{"no ts", `{"id.resp_h":"203.0.113.7","orig_bytes":5}`, ReasonMissingTime},
		{"negative ts", `{"ts":-1,"id.resp_h":"203.0.113.7","orig_bytes":5}`, ReasonBadTime},
		{"bad iso ts", `{"ts":"yesterday","id.resp_h":"203.0.113.7","orig_bytes":5}`, ReasonBadTime},
		{"no responder", `{"ts":1,"orig_bytes":5}`, ReasonBadAddress},
		{"bad responder", `{"ts":1,"id.resp_h":"x","orig_bytes":5}`, ReasonBadAddress},
		{"negative bytes", `{"ts":1,"id.resp_h":"203.0.113.7","orig_bytes":-5}`, ReasonNegativeBytes},
		{"bad port", `{"ts":1,"id.resp_h":"203.0.113.7","id.resp_p":99999,"orig_bytes":5}`, ReasonBadPort},
		{"invalid json", `{"ts":1,`, ReasonInvalidJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := d.Decode([]byte(tt.in), &e)
			if ReasonOf(err) != tt.reason {
				t.Fatalf("got %v, want %q", err, tt.reason)
			}
		})
	}
	if err := d.Decode([]byte(`{"ts":"2020-06-05T14:39:59.305988Z","id.resp_h":"203.0.113.7","proto":"udp","orig_bytes":5}`), &e); err != nil || e.Time != time.Date(2020, 6, 5, 14, 39, 59, 305988000, time.UTC) || e.Protocol != "udp" {
		t.Fatalf("iso ts: %v %+v", err, e)
	}
}

func FuzzZeekConn(f *testing.F) {
	f.Add([]byte(`{"ts":1591367999.305988,"id.orig_h":"192.168.4.76","id.resp_h":"203.0.113.7","id.resp_p":443,"proto":"tcp","duration":2.5,"orig_bytes":1200}`))
	f.Add([]byte(`{"ts":"2020-06-05T14:39:59.305988Z","id.resp_h":"2001:db8:1::1","orig_bytes":0,"duration":1e-3}`))
	d := NewZeekConnDecoder(testAttributor(f), DecodeOptions{InternCapacity: 64})
	f.Fuzz(func(t *testing.T, data []byte) {
		var e Event
		err := d.Decode(data, &e)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			if len(data) <= DefaultMaxMessageSize {
				r := ReasonOf(err)
				if json.Valid(data) == (r == ReasonInvalidJSON || r == ReasonTrailingData) {
					t.Fatalf("json.Valid disagrees with %v", err)
				}
			}
			return
		}
		if !json.Valid(data) || e.Vendor == "" || e.Bytes < 0 || e.Time.Year() > 9999 {
			t.Fatalf("accepted %q as %+v", data, e)
		}
	})
}
