package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v.UTC()
}

func TestJSONDecoderValid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Event
	}{
		{
			name: "design example",
			in:   `{"time":"2026-02-05T10:00:00.123Z","vendor":"mailer","credential":"mailer-api","dst":"203.0.113.7","dst_port":443,"bytes":18231,"records":20,"sensor":"egress-gw-1"}`,
			want: Event{Time: mustTime(t, "2026-02-05T10:00:00.123Z"), Vendor: "mailer", Credential: "mailer-api", Dst: "203.0.113.7", DstPort: 443, Bytes: 18231, Records: 20, Sensor: "egress-gw-1"},
		},
		{
			name: "required fields only",
			in:   `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":0}`,
			want: Event{Time: mustTime(t, "2026-02-05T10:00:00Z"), Vendor: "v"},
		},
		{
			name: "offset converted to UTC",
			in:   `{"time":"2026-02-05T10:00:00.5+05:30","vendor":"v","bytes":1}`,
			want: Event{Time: mustTime(t, "2026-02-05T04:30:00.5Z"), Vendor: "v", Bytes: 1},
		},
		{
			name: "negative offset crosses midnight",
			in:   `{"time":"2026-12-31T23:30:00-01:00","vendor":"v","bytes":1}`,
			want: Event{Time: mustTime(t, "2027-01-01T00:30:00Z"), Vendor: "v", Bytes: 1},
		},
		{
			name: "fraction beyond nanoseconds truncated",
			in:   `{"time":"2026-02-05T10:00:00.1234567891234Z","vendor":"v","bytes":1}`,
			want: Event{Time: mustTime(t, "2026-02-05T10:00:00.123456789Z"), Vendor: "v", Bytes: 1},
		},
		{
			name: "leap day",
			in:   `{"time":"2028-02-29T00:00:00Z","vendor":"v","bytes":1}`,
			want: Event{Time: mustTime(t, "2028-02-29T00:00:00Z"), Vendor: "v", Bytes: 1},
		},
		{
			name: "white space, unknown fields, nesting, field order",
			in: " \n\t{ \"bytes\" : 7 , \"extra\" : {\"a\":[1,2.5e-3,{\"b\":null}],\"c\":\"\\\"}\"}, \"vendor\":\"v\",\n" +
				"\"flag\":true,\"neg\":-0.0,\"time\":\"2026-02-05T10:00:00Z\" } \r\n",
			want: Event{Time: mustTime(t, "2026-02-05T10:00:00Z"), Vendor: "v", Bytes: 7},
		},
		{
			name: "keys match case-insensitively like encoding/json",
			in:   `{"TIME":"2026-02-05T10:00:00Z","Vendor":"v","BYTES":3,"Dst_Port":22,"ſensor":"s"}`,
			want: Event{Time: mustTime(t, "2026-02-05T10:00:00Z"), Vendor: "v", Bytes: 3, DstPort: 22, Sensor: "s"},
		},
		{
			name: "escaped key and values",
			in:   `{"t\u0069me":"2026-02-05T10:00:00Z","vendor":"m\u00e4iler \ud83d\ude00","dst":"a\/b","bytes":1,"src":"x\ty"}`,
			want: Event{Time: mustTime(t, "2026-02-05T10:00:00Z"), Vendor: "mäiler 😀", Dst: "a/b", Bytes: 1, Src: "x\ty"},
		},
		{
			name: "lone surrogate and invalid UTF-8 become U+FFFD",
			in:   "{\"time\":\"2026-02-05T10:00:00Z\",\"vendor\":\"a\\ud800b\",\"sensor\":\"x\xffy\",\"bytes\":1}",
			want: Event{Time: mustTime(t, "2026-02-05T10:00:00Z"), Vendor: "a\uFFFDb", Sensor: "x\uFFFDy", Bytes: 1},
		},
		{
			name: "null optional fields are unset",
			in:   `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1,"credential":null,"dst_port":null,"records":null}`,
			want: Event{Time: mustTime(t, "2026-02-05T10:00:00Z"), Vendor: "v", Bytes: 1},
		},
		{
			name: "minus zero is zero, as strconv.ParseInt says",
			in:   `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":-0,"dst_port":65535}`,
			want: Event{Time: mustTime(t, "2026-02-05T10:00:00Z"), Vendor: "v", DstPort: 65535},
		},
		{
			name: "largest byte count",
			in:   `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1099511627776}`,
			want: Event{Time: mustTime(t, "2026-02-05T10:00:00Z"), Vendor: "v", Bytes: 1 << 40},
		},
	}
	d := NewJSONDecoder(DecodeOptions{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e Event
			if err := d.Decode([]byte(tt.in), &e); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if e != tt.want {
				t.Fatalf("got  %+v\nwant %+v", e, tt.want)
			}
			if e.Time.Location() != time.UTC {
				t.Fatalf("time location %v, want UTC", e.Time.Location())
			}
		})
	}
}

func TestJSONDecoderReasons(t *testing.T) {
	const ok = `"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1`
	tests := []struct {
		name   string
		in     string
		reason Reason
		field  string
	}{
		{"empty", ``, ReasonInvalidJSON, ""},
		{"white space only", " \n", ReasonInvalidJSON, ""},
		{"not json", `hello`, ReasonInvalidJSON, ""},
		{"truncated", `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1`, ReasonInvalidJSON, ""},
		{"missing colon", `{"time" "x"}`, ReasonInvalidJSON, ""},
		{"trailing comma", `{` + ok + `,}`, ReasonInvalidJSON, ""},
		{"single quotes", `{'time':1}`, ReasonInvalidJSON, ""},
		{"bad escape", `{"vendor":"\x"}`, ReasonInvalidJSON, ""},
		{"bad unicode escape", `{"vendor":"\u12G4"}`, ReasonInvalidJSON, ""},
		{"control character in string", "{\"vendor\":\"a\tb\"}", ReasonInvalidJSON, ""},
		{"leading zero", `{"bytes":01}`, ReasonInvalidJSON, ""},
		{"plus sign", `{"bytes":+1}`, ReasonInvalidJSON, ""},
		{"bare minus", `{"bytes":-}`, ReasonInvalidJSON, ""},
		{"dot without digits", `{"bytes":1.}`, ReasonInvalidJSON, ""},
		{"bad literal", `{"x":nul}`, ReasonInvalidJSON, ""},
		{"syntax error in unknown field beats semantic error", `{"bytes":-1,"x":[1,]}`, ReasonInvalidJSON, ""},
		{"array", `[1,2]`, ReasonNotObject, ""},
		{"string", `"x"`, ReasonNotObject, ""},
		{"null", `null`, ReasonNotObject, ""},
		{"garbage after object", `{` + ok + `}x`, ReasonTrailingData, ""},
		{"second object", `{` + ok + `}{` + ok + `}`, ReasonTrailingData, ""},
		{"duplicate field", `{` + ok + `,"vendor":"w"}`, ReasonDuplicateField, "vendor"},
		{"duplicate field differing in case", `{` + ok + `,"Bytes":2}`, ReasonDuplicateField, "bytes"},
		{"duplicate null field", `{` + ok + `,"credential":null,"credential":"c"}`, ReasonDuplicateField, "credential"},
		{"missing time", `{"vendor":"v","bytes":1}`, ReasonMissingTime, "time"},
		{"null time", `{"time":null,"vendor":"v","bytes":1}`, ReasonMissingTime, "time"},
		{"missing vendor", `{"time":"2026-02-05T10:00:00Z","bytes":1}`, ReasonMissingVendor, "vendor"},
		{"empty vendor", `{"time":"2026-02-05T10:00:00Z","vendor":"","bytes":1}`, ReasonMissingVendor, "vendor"},
		{"missing bytes", `{"time":"2026-02-05T10:00:00Z","vendor":"v"}`, ReasonMissingBytes, "bytes"},
		{"null bytes", `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":null}`, ReasonMissingBytes, "bytes"},
		{"empty object", `{}`, ReasonMissingTime, "time"},
		{"time not a string", `{"time":1738749600,"vendor":"v","bytes":1}`, ReasonBadTime, "time"},
		{"time not RFC 3339", `{"time":"2026-02-05 10:00:00","vendor":"v","bytes":1}`, ReasonBadTime, "time"},
		{"time without zone", `{"time":"2026-02-05T10:00:00","vendor":"v","bytes":1}`, ReasonBadTime, "time"},
		{"time comma fraction", `{"time":"2026-02-05T10:00:00,5Z","vendor":"v","bytes":1}`, ReasonBadTime, "time"},
		{"time lower-case z", `{"time":"2026-02-05T10:00:00z","vendor":"v","bytes":1}`, ReasonBadTime, "time"},
		{"time February 30", `{"time":"2026-02-30T10:00:00Z","vendor":"v","bytes":1}`, ReasonBadTime, "time"},
		{"time February 29 in a common year", `{"time":"2026-02-29T10:00:00Z","vendor":"v","bytes":1}`, ReasonBadTime, "time"},
		{"time hour 24", `{"time":"2026-02-05T24:00:00Z","vendor":"v","bytes":1}`, ReasonBadTime, "time"},
		{"time leap second", `{"time":"2026-02-05T23:59:60Z","vendor":"v","bytes":1}`, ReasonBadTime, "time"},
		{"time offset hour 24", `{"time":"2026-02-05T10:00:00+24:00","vendor":"v","bytes":1}`, ReasonBadTime, "time"},
		{"time empty fraction", `{"time":"2026-02-05T10:00:00.Z","vendor":"v","bytes":1}`, ReasonBadTime, "time"},
		{"vendor not a string", `{"time":"2026-02-05T10:00:00Z","vendor":7,"bytes":1}`, ReasonWrongType, "vendor"},
		{"dst is an object", `{` + ok + `,"dst":{"ip":"x"}}`, ReasonWrongType, "dst"},
		{"bytes is a string", `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":"12"}`, ReasonBadBytes, "bytes"},
		{"bytes has a fraction", `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1.5}`, ReasonBadBytes, "bytes"},
		{"bytes with exponent", `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1e3}`, ReasonBadBytes, "bytes"},
		{"bytes 1.0", `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1.0}`, ReasonBadBytes, "bytes"},
		{"bytes true", `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":true}`, ReasonBadBytes, "bytes"},
		{"negative bytes", `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":-5}`, ReasonNegativeBytes, "bytes"},
		{"bytes above bound", `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1099511627777}`, ReasonBytesTooLarge, "bytes"},
		{"bytes above int64", `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":99999999999999999999}`, ReasonBytesTooLarge, "bytes"},
		{"negative records", `{` + ok + `,"records":-1}`, ReasonNegativeRecords, "records"},
		{"fractional records", `{` + ok + `,"records":0.5}`, ReasonBadRecords, "records"},
		{"port too large", `{` + ok + `,"dst_port":65536}`, ReasonBadPort, "dst_port"},
		{"negative port", `{` + ok + `,"dst_port":-1}`, ReasonBadPort, "dst_port"},
		{"port is a string", `{` + ok + `,"dst_port":"443"}`, ReasonBadPort, "dst_port"},
		{"field too long", `{` + ok + `,"credential":"` + strings.Repeat("c", 513) + `"}`, ReasonFieldTooLong, "credential"},
		{"first semantic error wins", `{"bytes":-1,"vendor":5,"time":"x"}`, ReasonNegativeBytes, "bytes"},
		{"oversize", `{` + ok + `,"pad":"` + strings.Repeat("x", 64<<10) + `"}`, ReasonOversize, ""},
	}
	d := NewJSONDecoder(DecodeOptions{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := Event{Vendor: "stale", Bytes: 99}
			err := d.Decode([]byte(tt.in), &e)
			if err == nil {
				t.Fatalf("Decode accepted %q: %+v", tt.in, e)
			}
			if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrSkipped) {
				t.Fatalf("error %v does not wrap ErrInvalid only", err)
			}
			var te *Error
			if !errors.As(err, &te) {
				t.Fatalf("error %T is not *Error", err)
			}
			if te.Reason != tt.reason || te.Field != tt.field {
				t.Fatalf("reason %q field %q, want %q %q (%v)", te.Reason, te.Field, tt.reason, tt.field, err)
			}
			if ReasonOf(err) != tt.reason {
				t.Fatalf("ReasonOf = %q", ReasonOf(err))
			}
			if e != (Event{}) {
				t.Fatalf("event not reset on error: %+v", e)
			}
			if te.Reason != ReasonOversize && json.Valid([]byte(tt.in)) == (te.Reason == ReasonInvalidJSON || te.Reason == ReasonTrailingData) {
				t.Fatalf("json.Valid=%v disagrees with reason %q", json.Valid([]byte(tt.in)), te.Reason)
			}
		})
	}
}

func TestJSONDecoderOptions(t *testing.T) {
	in := []byte(`{"time":"2026-02-05T10:00:00Z","vendor":"vendor-x","bytes":5000}`)
	var e Event
	if err := NewJSONDecoder(DecodeOptions{MaxMessageSize: 10}).Decode(in, &e); ReasonOf(err) != ReasonOversize {
		t.Fatalf("MaxMessageSize: got %v", err)
	}
	if err := NewJSONDecoder(DecodeOptions{MaxBytes: 4999}).Decode(in, &e); ReasonOf(err) != ReasonBytesTooLarge {
		t.Fatalf("MaxBytes: got %v", err)
	}
	if err := NewJSONDecoder(DecodeOptions{MaxFieldLength: 7}).Decode(in, &e); ReasonOf(err) != ReasonFieldTooLong {
		t.Fatalf("MaxFieldLength: got %v", err)
	}
	if err := NewJSONDecoder(DecodeOptions{InternCapacity: -1}).Decode(in, &e); err != nil || e.Vendor != "vendor-x" {
		t.Fatalf("interning disabled: %v %+v", err, e)
	}
}

func TestJSONDecoderNestingLimit(t *testing.T) {
	d := NewJSONDecoder(DecodeOptions{MaxMessageSize: 1 << 20})
	for _, depth := range []int{maxJSONDepth - 1, maxJSONDepth} {
		// The top-level object is depth 1, so the field value may nest depth-1 arrays.
		in := `{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1,"x":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`
		var e Event
		err := d.Decode([]byte(in), &e)
		valid := json.Valid([]byte(in))
		if (err == nil) != valid {
			t.Fatalf("depth %d: Decode err %v, json.Valid %v", depth, err, valid)
		}
		if err != nil && ReasonOf(err) != ReasonInvalidJSON {
			t.Fatalf("depth %d: %v", depth, err)
		}
	}
}

func TestJSONDecoderInterns(t *testing.T) {
	d := NewJSONDecoder(DecodeOptions{})
	in := []byte(`{"time":"2026-02-05T10:00:00Z","vendor":"mailer","credential":"mailer-api","dst":"203.0.113.7","src":"10.0.0.1","protocol":"tcp","sensor":"gw","bytes":1}`)
	var a, b Event
	if err := d.Decode(in, &a); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := d.Decode(in, &b); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("steady-state Decode allocates %v times", allocs)
	}
	if a != b {
		t.Fatalf("%+v != %+v", a, b)
	}
	// Strings never alias the input.
	copy(in, bytes.Repeat([]byte("#"), len(in)))
	if a.Vendor != "mailer" || a.Dst != "203.0.113.7" || a.Sensor != "gw" {
		t.Fatalf("event strings alias the input: %+v", a)
	}
}

func TestInternerBounded(t *testing.T) {
	it := newInterner(4)
	var got []string
	for _, s := range []string{"a", "b", "c", "d", "e", "f", "a", "e"} {
		got = append(got, it.get([]byte(s)))
	}
	if it.len() != 4 {
		t.Fatalf("interner holds %d strings, capacity 4", it.len())
	}
	for i, s := range []string{"a", "b", "c", "d", "e", "f", "a", "e"} {
		if got[i] != s {
			t.Fatalf("get(%q) = %q", s, got[i])
		}
	}
	long := strings.Repeat("x", maxInternLength+1)
	if it.get([]byte(long)) != long {
		t.Fatal("long string changed")
	}
}

func TestAppendJSONRoundTrip(t *testing.T) {
	events := []Event{
		{Time: mustTime(t, "2026-02-05T10:00:00.123456789Z"), Vendor: "mailer", Credential: "mailer-api", Dst: "203.0.113.7", DstPort: 443, Bytes: 18231, Records: 20, Src: "10.0.0.1", Protocol: "https", Sensor: "egress-gw-1"},
		{Time: mustTime(t, "2026-02-05T10:00:00Z"), Vendor: "v", Bytes: 0},
		{Time: mustTime(t, "0001-01-01T00:00:00Z"), Vendor: "quote\" backslash\\ ctl\x01\n\t\r é 😀 \u2028", Bytes: 1},
	}
	d := NewJSONDecoder(DecodeOptions{})
	for _, want := range events {
		b := AppendJSON(nil, &want)
		if !json.Valid(b) {
			t.Fatalf("invalid JSON %s", b)
		}
		var got Event
		if err := d.Decode(b, &got); err != nil {
			t.Fatalf("Decode(%s): %v", b, err)
		}
		if got != want {
			t.Fatalf("round trip of %s:\ngot  %+v\nwant %+v", b, got, want)
		}
	}
	// Invalid UTF-8 is written as U+FFFD, as encoding/json writes it.
	e := Event{Time: mustTime(t, "2026-02-05T10:00:00Z"), Vendor: "a\xffb", Bytes: 1}
	b := AppendJSON(nil, &e)
	std, _ := json.Marshal("a\xffb")
	if !bytes.Contains(b, []byte(`"vendor":`+string(std))) && !bytes.Contains(b, []byte(`"vendor":"a\ufffdb"`)) {
		t.Fatalf("invalid UTF-8 written as %s", b)
	}
	// The design example round-trips byte for byte.
	design := `{"time":"2026-02-05T10:00:00.123Z","vendor":"mailer","credential":"mailer-api","dst":"203.0.113.7","dst_port":443,"bytes":18231,"records":20,"sensor":"egress-gw-1"}`
	if err := d.Decode([]byte(design), &e); err != nil {
		t.Fatal(err)
	}
	if got := string(AppendJSON(nil, &e)); got != design {
		t.Fatalf("AppendJSON:\ngot  %s\nwant %s", got, design)
	}
	if n := testing.AllocsPerRun(100, func() { b = AppendJSON(b[:0], &e) }); n != 0 {
		t.Fatalf("AppendJSON allocates %v times", n)
	}
}

// refEvent is what encoding/json decodes the native contract into: the reference for
// the differential fuzz test. Pointers tell absent or null (nil) from zero values.
type refEvent struct {
	Time       *string `json:"time"`
	Vendor     *string `json:"vendor"`
	Credential *string `json:"credential"`
	Dst        *string `json:"dst"`
	DstPort    *int64  `json:"dst_port"`
	Bytes      *int64  `json:"bytes"`
	Records    *int64  `json:"records"`
	Src        *string `json:"src"`
	Protocol   *string `json:"protocol"`
	Sensor     *string `json:"sensor"`
}

// strictShape reports whether s has the shape of strict RFC 3339 (the check is about
// shape only; the ranges are left to time.Parse).
func strictShape(s string) bool {
	if len(s) < 20 {
		return false
	}
	for i, c := range []byte(s[:19]) {
		switch i {
		case 4, 7:
			if c != '-' {
				return false
			}
		case 10:
			if c != 'T' {
				return false
			}
		case 13, 16:
			if c != ':' {
				return false
			}
		default:
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	r := s[19:]
	if len(r) >= 2 && r[0] == '.' {
		n := 1
		for n < len(r) && r[n] >= '0' && r[n] <= '9' {
			n++
		}
		if n == 1 {
			return false
		}
		r = r[n:]
	}
	if r == "Z" {
		return true
	}
	if len(r) != 6 || (r[0] != '+' && r[0] != '-') || r[3] != ':' {
		return false
	}
	for _, i := range []int{1, 2, 4, 5} {
		if r[i] < '0' || r[i] > '9' {
			return false
		}
	}
	return (r[1]-'0')*10+(r[2]-'0') <= 23 && (r[4]-'0')*10+(r[5]-'0') <= 59
}

// topLevelKeyCounts counts, per native field, how many keys of the top-level object
// encoding/json would match to it.
func topLevelKeyCounts(data []byte) [numFields]int {
	var n [numFields]int
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return n
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return n
		}
		key := k.(string)
		for f, name := range fieldNames {
			if key == name || strings.EqualFold(key, name) {
				n[f]++
				break
			}
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return n
		}
	}
	return n
}

// checkAgainstStdlib is the differential oracle: the decoder must accept exactly what
// encoding/json decodes into refEvent and the documented validation then accepts, and
// give the same values.
func checkAgainstStdlib(t *testing.T, d *JSONDecoder, data []byte) {
	var e Event
	err := d.Decode(data, &e)
	reason := ReasonOf(err)
	if err != nil && reason == "" {
		t.Fatalf("error without a reason: %v", err)
	}
	if err != nil && e != (Event{}) {
		t.Fatalf("event not reset on error")
	}
	if len(data) > DefaultMaxMessageSize {
		if reason != ReasonOversize {
			t.Fatalf("oversize input: %v", err)
		}
		return
	}
	if !json.Valid(data) {
		if reason != ReasonInvalidJSON && reason != ReasonTrailingData {
			t.Fatalf("encoding/json rejects %q as invalid, decoder says %v", data, err)
		}
		return
	}
	if reason == ReasonInvalidJSON || reason == ReasonTrailingData {
		t.Fatalf("valid JSON %q rejected as %v", data, err)
	}
	if b := bytes.TrimLeft(data, " \t\r\n"); b[0] != '{' {
		if reason != ReasonNotObject {
			t.Fatalf("non-object %q: %v", data, err)
		}
		return
	}
	var r refEvent
	stdErr := json.Unmarshal(data, &r)
	// Collect every validation failure the contract defines.
	bad := map[Reason]bool{}
	for _, c := range topLevelKeyCounts(data) {
		if c > 1 {
			bad[ReasonDuplicateField] = true
		}
	}
	if stdErr != nil {
		// A type error: which field does not matter, the decoder must reject.
		if err == nil {
			t.Fatalf("encoding/json fails (%v) but decoder accepts %q: %+v", stdErr, data, e)
		}
		return
	}
	if bad[ReasonDuplicateField] {
		if err == nil {
			t.Fatalf("duplicate field accepted in %q", data)
		}
		return
	}
	var wantTime time.Time
	switch {
	case r.Time == nil:
		bad[ReasonMissingTime] = true
	default:
		tm, perr := time.Parse(time.RFC3339Nano, *r.Time)
		switch {
		case perr != nil:
			bad[ReasonBadTime] = true
		case !strictShape(*r.Time):
			// time.Parse's lenient layout fallback: the decoder may reject it.
			if reason == ReasonBadTime {
				bad[ReasonBadTime] = true
			}
		default:
			wantTime = tm.UTC()
		}
		if perr != nil && reason == "" {
			t.Fatalf("time %q accepted, time.Parse says %v", *r.Time, perr)
		}
	}
	if r.Vendor == nil || *r.Vendor == "" {
		bad[ReasonMissingVendor] = true
	}
	switch {
	case r.Bytes == nil:
		bad[ReasonMissingBytes] = true
	case *r.Bytes < 0:
		bad[ReasonNegativeBytes] = true
	case *r.Bytes > DefaultMaxBytes:
		bad[ReasonBytesTooLarge] = true
	}
	if r.Records != nil && *r.Records < 0 {
		bad[ReasonNegativeRecords] = true
	}
	if r.DstPort != nil && (*r.DstPort < 0 || *r.DstPort > 65535) {
		bad[ReasonBadPort] = true
	}
	for _, p := range []*string{r.Vendor, r.Credential, r.Dst, r.Src, r.Protocol, r.Sensor} {
		if p != nil && len(*p) > DefaultMaxFieldLength {
			bad[ReasonFieldTooLong] = true
		}
	}
	if len(bad) == 0 {
		if err != nil {
			t.Fatalf("decoder rejects %q (%v); encoding/json and the contract accept it", data, err)
		}
	} else {
		if err == nil {
			t.Fatalf("decoder accepts %q; want one of %v", data, bad)
		}
		if !bad[reason] {
			t.Fatalf("decoder rejects %q as %q; want one of %v", data, reason, bad)
		}
		return
	}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	num := func(p *int64) int64 {
		if p == nil {
			return 0
		}
		return *p
	}
	want := Event{
		Time: wantTime, Vendor: str(r.Vendor), Credential: str(r.Credential), Dst: str(r.Dst),
		DstPort: uint16(num(r.DstPort)), Bytes: num(r.Bytes), Records: num(r.Records),
		Src: str(r.Src), Protocol: str(r.Protocol), Sensor: str(r.Sensor),
	}
	if e != want {
		t.Fatalf("decoding %q:\ngot  %+v\nwant %+v", data, e, want)
	}
	if !utf8.ValidString(e.Vendor) {
		t.Fatalf("vendor is not valid UTF-8")
	}
	// What AppendJSON writes decodes back to the same event.
	var back Event
	if err := d.Decode(AppendJSON(nil, &e), &back); err != nil || back != e {
		t.Fatalf("AppendJSON round trip: %v\n%+v\n%+v", err, back, e)
	}
}

func FuzzDecodeJSON(f *testing.F) {
	seeds := []string{
		`{"time":"2026-02-05T10:00:00.123Z","vendor":"mailer","credential":"mailer-api","dst":"203.0.113.7","dst_port":443,"bytes":18231,"records":20,"sensor":"egress-gw-1"}`,
		`{"time":"2026-02-05T10:00:00+01:00","vendor":"v","bytes":0,"x":[{"y":null},true,false,-1.5e+3]}`,
		`{"TIME":"2026-02-05T10:00:00Z","ſensor":"s","Vendor":"v","bytes":1}`,
		`{"time":"2026-02-05T10:00:00Z","vendor":"\ud83d\ude00\ud800\u00e9","bytes":1}`,
		`{"time":"2026-02-05T10:00:00,5Z","vendor":"v","bytes":1}`,
		`{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1,"vendor":"w"}`,
		`{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":1e2}`,
		`{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":-9223372036854775809}`,
		`{"time":"2026-02-05T10:00:00Z","vendor":"v","bytes":9223372036854775807}`,
		`{"time":"2026-02-05T10:00:00Z","vendor":"v","dst_port":65536,"bytes":1}`,
		`[{"time":"x"}]`, `null`, `{}`, `{"a":1}x`, "{\"vendor\":\"\xff\"}",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	d := NewJSONDecoder(DecodeOptions{InternCapacity: 64})
	f.Fuzz(func(t *testing.T, data []byte) {
		checkAgainstStdlib(t, d, data)
	})
}

func TestInternerGrows(t *testing.T) {
	it := newInterner(1000)
	if len(it.slots) != internInitialSlots {
		t.Fatalf("initial slots %d", len(it.slots))
	}
	// Addresses differing only in their last bytes: the hash must spread them.
	for i := range 1000 {
		s := "203.0." + strconv.Itoa(113+i/250) + "." + strconv.Itoa(i%250)
		if it.get([]byte(s)) != s {
			t.Fatalf("get(%q)", s)
		}
	}
	if len(it.slots) != 2048 || it.len() < 980 {
		t.Fatalf("slots %d, held %d of 1000", len(it.slots), it.len())
	}
	b := []byte("203.0.115.0")
	if n := testing.AllocsPerRun(10, func() { _ = it.get(b) }); n != 0 {
		t.Fatalf("hit allocates %v", n)
	}
}
