package telemetry

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/killswitch-dev/killswitch"
)

var t0 = time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC)

func goodEvent() Event {
	return Event{Time: t0, Vendor: "mailer", Credential: "mailer-api", Dst: "203.0.113.7", DstPort: 443, Bytes: 10, Sensor: "gw-1"}
}

// Every refusal of the door, with its reason, and what passes.
func TestAdmissionCheck(t *testing.T) {
	a, err := NewAdmission(Settings{Sensors: []string{"gw-1", "gw-2"}})
	if err != nil {
		t.Fatal(err)
	}
	open := DefaultAdmission() // no sensors declared
	tests := []struct {
		name    string
		adm     *Admission
		mod     func(e *Event)
		subject string
		ref     Band
		want    Reason
		field   string
	}{
		{name: "good", mod: func(*Event) {}},
		{name: "good on its subject", subject: "mailer", mod: func(*Event) {}},
		{name: "4m59s ahead", mod: func(e *Event) { e.Time = t0.Add(5*time.Minute - time.Second) }},
		{name: "59m behind (a buffer flushed after an outage)", mod: func(e *Event) { e.Time = t0.Add(-59 * time.Minute) }},
		{name: "5m01s ahead", mod: func(e *Event) { e.Time = t0.Add(5*time.Minute + time.Second) }, want: ReasonTimeInFuture, field: "time"},
		{name: "61m behind", mod: func(e *Event) { e.Time = t0.Add(-61 * time.Minute) }, want: ReasonTimeTooOld, field: "time"},
		{name: "2099", mod: func(e *Event) { e.Time = time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC) }, want: ReasonTimeInFuture, field: "time"},
		{name: "1971", mod: func(e *Event) { e.Time = time.Date(1971, 1, 1, 0, 0, 0, 0, time.UTC) }, want: ReasonTimeTooOld, field: "time"},
		{name: "0001-01-01 against any reference", mod: func(e *Event) { e.Time = time.Time{} }, ref: At(time.Time{}), want: ReasonTimeTooOld, field: "time"},
		{name: "9999-12-31 against any reference", mod: func(e *Event) { e.Time = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC) },
			ref: At(time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)), want: ReasonTimeInFuture, field: "time"},
		{name: "1999 against a 1999 reference", mod: func(e *Event) { e.Time = time.Date(1999, 6, 1, 0, 0, 0, 0, time.UTC) },
			ref: At(time.Date(1999, 6, 1, 0, 0, 0, 0, time.UTC)), want: ReasonTimeTooOld, field: "time"},
		{name: "band: between Lo and Hi", mod: func(e *Event) { e.Time = t0.Add(3 * time.Hour) }, ref: Band{Lo: t0, Hi: t0.Add(4 * time.Hour)}},
		{name: "vendor on another vendor's subject", subject: "crm", mod: func(*Event) {}, want: ReasonVendorMismatch, field: "vendor"},
		{name: "vendor with a wildcard", mod: func(e *Event) { e.Vendor = "ma*" }, want: ReasonInvalidName, field: "vendor"},
		{name: "vendor >", mod: func(e *Event) { e.Vendor = ">" }, want: ReasonInvalidName, field: "vendor"},
		{name: "vendor with NUL", mod: func(e *Event) { e.Vendor = "mai\x00ler" }, want: ReasonInvalidName, field: "vendor"},
		{name: "vendor with a space", mod: func(e *Event) { e.Vendor = "mail er" }, want: ReasonInvalidName, field: "vendor"},
		{name: "vendor with a tab", mod: func(e *Event) { e.Vendor = "mail\ter" }, want: ReasonInvalidName, field: "vendor"},
		{name: "vendor with DEL", mod: func(e *Event) { e.Vendor = "mail\x7fer" }, want: ReasonInvalidName, field: "vendor"},
		{name: "vendor with invalid UTF-8", mod: func(e *Event) { e.Vendor = "mail\xffer" }, want: ReasonInvalidName, field: "vendor"},
		{name: "vendor with U+FFFD (decoded invalid UTF-8)", mod: func(e *Event) { e.Vendor = "mail\uFFFDer" }, want: ReasonInvalidName, field: "vendor"},
		{name: "vendor with a C1 control", mod: func(e *Event) { e.Vendor = "mail\u0085er" }, want: ReasonInvalidName, field: "vendor"},
		{name: "vendor with a no-break space", mod: func(e *Event) { e.Vendor = "mail\u00a0er" }, want: ReasonInvalidName, field: "vendor"},
		{name: "vendor with a zero-width space", mod: func(e *Event) { e.Vendor = "mail\u200ber" }, want: ReasonInvalidName, field: "vendor"},
		{name: "vendor too long", mod: func(e *Event) { e.Vendor = strings.Repeat("v", 129) }, want: ReasonInvalidName, field: "vendor"},
		{name: "vendor of 128 bytes", mod: func(e *Event) { e.Vendor = strings.Repeat("v", 128) }},
		{name: "vendor in Unicode", mod: func(e *Event) { e.Vendor = "müller-ü" }},
		{name: "empty vendor", mod: func(e *Event) { e.Vendor = "" }, want: ReasonInvalidName, field: "vendor"},
		{name: "credential with a newline", mod: func(e *Event) { e.Credential = "api\nkey" }, want: ReasonInvalidName, field: "credential"},
		{name: "credential with a wildcard", mod: func(e *Event) { e.Credential = "*" }, want: ReasonInvalidName, field: "credential"},
		{name: "no credential", mod: func(e *Event) { e.Credential = "" }},
		{name: "sensor with a control", mod: func(e *Event) { e.Sensor = "gw\x01" }, want: ReasonInvalidName, field: "sensor"},
		{name: "dst with a space", mod: func(e *Event) { e.Dst = "203.0.113.7 evil" }, want: ReasonInvalidName, field: "dst"},
		{name: "dst too long", mod: func(e *Event) { e.Dst = strings.Repeat("a", 256) }, want: ReasonInvalidName, field: "dst"},
		{name: "dst host name", mod: func(e *Event) { e.Dst = "api.example.com" }},
		{name: "src with NUL", mod: func(e *Event) { e.Src = "10.0.0.1\x00" }, want: ReasonInvalidName, field: "src"},
		{name: "undeclared sensor", mod: func(e *Event) { e.Sensor = "gw-9" }, want: ReasonUnknownSensor, field: "sensor"},
		{name: "no sensor when sensors are declared", mod: func(e *Event) { e.Sensor = "" }, want: ReasonUnknownSensor, field: "sensor"},
		{name: "any sensor when none are declared", adm: open, mod: func(e *Event) { e.Sensor = "gw-9" }},
		{name: "no sensor when none are declared", adm: open, mod: func(e *Event) { e.Sensor = "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			adm := tt.adm
			if adm == nil {
				adm = a
			}
			e := goodEvent()
			tt.mod(&e)
			ref := tt.ref
			if ref == (Band{}) {
				ref = At(t0)
			}
			err := adm.Check(&e, tt.subject, ref)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var te *Error
			if !errors.As(err, &te) || te.Reason != tt.want || te.Field != tt.field {
				t.Fatalf("got %v, want %s on %s", err, tt.want, tt.field)
			}
			if !errors.Is(err, ErrInvalid) || !errors.Is(err, killswitch.ErrPermanent) || tt.want.IsSkip() {
				t.Fatalf("%v must be a permanent rejection", err)
			}
			if !slices.Contains(InvalidReasons(), tt.want) {
				t.Fatalf("%s is not among InvalidReasons", tt.want)
			}
		})
	}
}

// The door costs nothing in allocations for the events it admits.
func TestAdmissionDoesNotAllocate(t *testing.T) {
	a, err := NewAdmission(Settings{Sensors: []string{"gw-1"}})
	if err != nil {
		t.Fatal(err)
	}
	e := goodEvent()
	e.Vendor = "müller"
	if n := testing.AllocsPerRun(100, func() {
		if err := a.Check(&e, "müller", At(t0)); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per check", n)
	}
}

func TestSettingsValidate(t *testing.T) {
	tests := []struct {
		s    Settings
		want string // "" valid
	}{
		{Settings{}, ""},
		{Settings{MaxFutureSkew: time.Minute, MaxAge: 24 * time.Hour, Sensors: []string{"gw-1", "gw-2"}, MaxNameLength: 64, Lookahead: 8}, ""},
		{Settings{MaxFutureSkew: -time.Second}, "telemetry.max_future_skew"},
		{Settings{MaxAge: -time.Second}, "telemetry.max_age"},
		{Settings{MaxNameLength: 100000}, "telemetry.max_name_length"},
		{Settings{Lookahead: -1}, "telemetry.lookahead"},
		{Settings{Sensors: []string{"gw 1"}}, "telemetry.sensors[0]"},
		{Settings{Sensors: []string{"gw-1", "gw-1"}}, "telemetry.sensors[1]"},
		{Settings{Sensors: []string{""}}, "telemetry.sensors[0]"},
	}
	for _, tt := range tests {
		err := tt.s.Validate()
		_, nerr := NewAdmission(tt.s)
		if tt.want == "" {
			if err != nil || nerr != nil {
				t.Errorf("%+v: %v", tt.s, err)
			}
			continue
		}
		if err == nil || !errors.Is(err, killswitch.ErrInvalid) || !strings.Contains(err.Error(), tt.want) || nerr == nil {
			t.Errorf("%+v: got %v, want an ErrInvalid naming %s", tt.s, err, tt.want)
		}
	}
	d := Settings{}.WithDefaults()
	if d.MaxFutureSkew != DefaultMaxFutureSkew || d.MaxAge != DefaultMaxAge || d.MaxNameLength != DefaultMaxNameLength || d.Lookahead != DefaultLookahead {
		t.Fatalf("defaults %+v", d)
	}
}

// refName is validName written the slow, obvious way.
func refName(s string, max int) bool {
	if s == "" || len(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r == utf8.RuneError || r == '*' || r == '>' || r == ' ' || !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

func FuzzValidName(f *testing.F) {
	for _, s := range []string{"mailer", "ma*", ">", "a b", "mail\x00", "\xff", "müller", "\u00a0", "\u2028", "a.b", strings.Repeat("x", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validName(s, DefaultMaxNameLength), refName(s, DefaultMaxNameLength); got != want {
			t.Fatalf("validName(%q) = %v, want %v", s, got, want)
		}
		if validName(s, DefaultMaxNameLength) && strings.ContainsAny(s, "*> \t\r\n\x00") {
			t.Fatalf("%q passed", s)
		}
	})
}

// bruteBand computes the band of event c of times the way Watermark documents it.
func bruteBand(times []time.Time, c, k int) Band {
	lo, hi := max(0, c-k), min(len(times)-1, c+k)
	w := slices.Clone(times[lo : hi+1])
	slices.SortFunc(w, func(a, b time.Time) int { return a.Compare(b) })
	m := k / 2
	before, after := min(m, c-lo), min(m, hi-c)
	return Band{Lo: w[before], Hi: w[len(w)-1-after]}
}

func bands(w *Watermark, times []time.Time) []Band {
	var out []Band
	for _, t := range times {
		if b, ok := w.Push(t); ok {
			out = append(out, b)
		}
	}
	for {
		b, ok := w.Flush()
		if !ok {
			return out
		}
		out = append(out, b)
	}
}

func checkBands(t *testing.T, times []time.Time, k int) {
	t.Helper()
	got := bands(NewWatermark(k), times)
	if len(got) != len(times) {
		t.Fatalf("%d bands for %d events", len(got), len(times))
	}
	for c := range times {
		want := bruteBand(times, c, k)
		if !got[c].Lo.Equal(want.Lo) || !got[c].Hi.Equal(want.Hi) {
			t.Fatalf("k=%d n=%d event %d: band %v, want %v", k, len(times), c, got[c], want)
		}
	}
}

func TestWatermarkMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, k := range []int{1, 2, 3, 16} {
		for _, n := range []int{0, 1, 2, 5, 16, 17, 33, 34, 200} {
			times := make([]time.Time, n)
			for i := range times {
				times[i] = t0.Add(time.Duration(r.IntN(1000)) * time.Second)
			}
			checkBands(t, times, k)
		}
	}
}

func FuzzWatermark(f *testing.F) {
	f.Add([]byte{1, 2, 3, 200, 4, 5}, uint8(2))
	f.Add([]byte{0, 0, 0, 0}, uint8(16))
	f.Fuzz(func(t *testing.T, data []byte, k uint8) {
		if k == 0 || k > 40 || len(data) > 500 {
			return
		}
		times := make([]time.Time, len(data))
		for i, b := range data {
			times[i] = t0.Add(time.Duration(b) * time.Hour)
		}
		checkBands(t, times, int(k))
	})
}

// A time-sorted recording loses nothing, whatever its gaps; forged times in it are
// refused, one at a time or a handful together.
func TestLookahead(t *testing.T) {
	a := DefaultAdmission()
	r := rand.New(rand.NewPCG(3, 4))
	var times []time.Time
	at := t0
	for i := range 5000 {
		switch {
		case i%997 == 0:
			at = at.Add(30 * 24 * time.Hour) // a sparse vendor: a month of silence
		case i%101 == 0:
			at = at.Add(3 * time.Hour)
		default:
			at = at.Add(time.Duration(r.IntN(5000)) * time.Millisecond)
		}
		times = append(times, at)
	}
	run := func(times []time.Time) (refused map[int]Reason) {
		refused = map[int]Reason{}
		l := NewLookahead(a)
		emit := func(e *Event, pos int64, err error) {
			if int(pos) != int(e.Bytes) {
				t.Fatalf("event %d came out at position %d", e.Bytes, pos)
			}
			if err != nil {
				refused[int(pos)] = ReasonOf(err)
			}
		}
		for i, tm := range times {
			e := Event{Time: tm, Vendor: "v", Bytes: int64(i)}
			if out, pos, err, ok := l.Push(&e, int64(i)); ok {
				emit(out, pos, err)
			}
		}
		for {
			out, pos, err, ok := l.Flush()
			if !ok {
				return refused
			}
			emit(out, pos, err)
		}
	}
	if got := run(times); len(got) != 0 {
		t.Fatalf("a sorted recording had events refused: %v", got)
	}
	// Out of order within the hour (a buffer flushed after an outage): nothing refused.
	jittered := slices.Clone(times)
	for i := 100; i < 140; i++ {
		jittered[i] = jittered[i].Add(-45 * time.Minute)
	}
	if got := run(jittered); len(got) != 0 {
		t.Fatalf("a flushed buffer had events refused: %v", got)
	}
	forged := slices.Clone(times)
	want := map[int]Reason{}
	for _, i := range []int{50, 51, 52, 1500, 2500, 2501, 2502, 2503, 2504, 2505, 2506, 2507} {
		forged[i] = time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
		want[i] = ReasonTimeInFuture
	}
	for _, i := range []int{700, 3000, 3001, 3002, 3003} {
		forged[i] = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
		want[i] = ReasonTimeTooOld
	}
	forged[4000] = times[4000].Add(10 * time.Minute) // a skewed clock
	want[4000] = ReasonTimeInFuture
	got := run(forged)
	if len(got) != len(want) {
		t.Fatalf("refused %v, want %v", got, want)
	}
	for i, r := range want {
		if got[i] != r {
			t.Fatalf("event %d: got %q, want %q", i, got[i], r)
		}
	}
}

func TestExceeds(t *testing.T) {
	far := []time.Time{{}, time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), t0}
	for _, x := range far {
		for _, y := range far {
			for _, lim := range []time.Duration{0, time.Nanosecond, 999 * time.Millisecond, time.Second, 5 * time.Minute, time.Hour, 2400 * time.Hour} {
				for _, dx := range []time.Duration{0, 1, -1, time.Second, -time.Second, 5 * time.Minute, 5*time.Minute + 1, time.Hour - 1, time.Hour + 1, 1500 * time.Millisecond} {
					x := x.Add(dx)
					if got, want := exceeds(x, y, lim), x.Sub(y) > lim; got != want {
						t.Fatalf("exceeds(%v, %v, %v) = %v", x, y, lim, got)
					}
				}
			}
		}
	}
}

func BenchmarkAdmissionCheck(b *testing.B) {
	a := DefaultAdmission()
	e := goodEvent()
	e.Credential = "vendor-07-key-2"
	e.Sensor = "egress-gw-3"
	b.ReportAllocs()
	cpu := startThreadCPU()
	n := 0
	for b.Loop() {
		if err := a.Check(&e, "mailer", At(t0)); err != nil {
			b.Fatal(err)
		}
		n++
	}
	cpu.report(b, n)
}

// BenchmarkDecodeJSONAdmitted is BenchmarkDecodeJSON/corpus with the door after the
// decoder, as the NATS sources run them.
func BenchmarkDecodeJSONAdmitted(b *testing.B) {
	msgs := corpus(4096)
	d := NewJSONDecoder(DecodeOptions{})
	a := DefaultAdmission()
	var e Event
	b.ReportAllocs()
	cpu := startThreadCPU()
	n := 0
	for b.Loop() {
		if err := d.Decode(msgs[n&4095], &e); err != nil {
			b.Fatal(err)
		}
		if err := a.Check(&e, e.Vendor, At(e.Time)); err != nil {
			b.Fatal(err)
		}
		n++
	}
	cpu.report(b, n)
}

func BenchmarkLookahead(b *testing.B) {
	l := NewLookahead(DefaultAdmission())
	e := goodEvent()
	b.ReportAllocs()
	cpu := startThreadCPU()
	i := 0
	for b.Loop() {
		i++
		e.Time = t0.Add(time.Duration(i) * 37 * time.Millisecond)
		if _, _, err, _ := l.Push(&e, int64(i)); err != nil {
			b.Fatal(err)
		}
	}
	cpu.report(b, i)
}
