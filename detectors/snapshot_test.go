package detectors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"reflect"
	"testing"
	"time"

	killswitch "github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/scenario"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// snapshotConfig exercises every part of the state: caps, an allow-list, an
// expected-idle credential.
var snapshotConfig = Config{Vendors: killswitch.Inventory{
	"mailer": {
		Caps: []killswitch.Cap{{Bytes: 200 << 20, Per: time.Hour}, {Credential: "mailer-key-1", Records: 5000, Per: 10 * time.Minute}},
		Credentials: map[string]killswitch.Credential{
			"mailer-key-1": {Kind: killswitch.CredTokenAccessor, Accessor: "a1"},
			"mailer-key-2": {Kind: killswitch.CredTokenAccessor, Accessor: "a2", ExpectedIdle: true},
		},
	},
	"crm": {AllowedDestinations: []string{"198.51.0.0/16"}},
}}

// migrated restores the version-v fixture testdata/snapshot-v<v>.bin (written by that
// version's format from the first half of two days of scenario seed 5) into a new
// engine, and returns it, an engine that never stopped and saw the same first half,
// its state migrated as a restore migrates it (asIfMigratedV5, for versions before 5;
// version 6 only drops the day-of-week offsets, which two days never use, and version
// 7 only adds the envelope run, which two days never open), and the second half.
func migrated(t *testing.T, v int) (e, never *Engine, rest []telemetry.Event) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("testdata/snapshot-v%d.bin", v))
	if err != nil {
		t.Fatal(err)
	}
	if got := int(b[4]); got != v {
		t.Fatalf("fixture is version %d, want %d", got, v)
	}
	evs := scenarioEvents(t, 5, 2)
	half := len(evs) / 2
	never = mustEngine(t, snapshotConfig)
	detect(never, evs[:half])
	if v < 5 {
		asIfMigratedV5(never)
	}
	e = mustEngine(t, snapshotConfig)
	if err := e.Restore(bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	return e, never, evs[half:]
}

func scenarioEvents(t testing.TB, seed uint64, days int) []telemetry.Event {
	t.Helper()
	var evs []telemetry.Event
	scenario.New(scenario.Config{Seed: seed, Days: days}).Events(func(ev *telemetry.Event) bool {
		evs = append(evs, *ev)
		return true
	})
	return evs
}

func detect(e *Engine, evs []telemetry.Event) []Detection {
	var out []Detection
	for i := range evs {
		e.Process(&evs[i], func(d Detection) { out = append(out, d) })
	}
	return out
}

func snapshotBytes(t testing.TB, e *Engine) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := e.Snapshot(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestSnapshotRoundTrip: an engine restored from a snapshot taken mid-stream behaves
// exactly like one that never stopped: the same detections for the same events, and
// in the end a byte-identical snapshot.
func TestSnapshotRoundTrip(t *testing.T) {
	evs := scenarioEvents(t, 1, 14)
	half := len(evs) * 6 / 10 // in the middle of the attacks

	never := mustEngine(t, snapshotConfig)
	want := detect(never, evs)
	if len(want) == 0 {
		t.Fatal("the scenario raised no detections")
	}

	first := mustEngine(t, snapshotConfig)
	got := detect(first, evs[:half])
	snap := snapshotBytes(t, first)

	restored := mustEngine(t, snapshotConfig)
	if err := restored.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if c1, c2 := first.Counters(), restored.Counters(); c1 != c2 {
		t.Fatalf("counters after restore %+v, want %+v", c2, c1)
	}
	got = append(got, detect(restored, evs[half:])...)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("restored engine: %d detections, never-stopped engine: %d; they differ", len(got), len(want))
	}
	if !bytes.Equal(snapshotBytes(t, restored), snapshotBytes(t, never)) {
		t.Fatal("final snapshots differ")
	}
	t.Logf("snapshot of %d keys: %d bytes", first.Counters().Keys, len(snap))
}

func TestSnapshotDeterministicIDs(t *testing.T) {
	evs := scenarioEvents(t, 2, 12)
	a := detect(mustEngine(t, snapshotConfig), evs)
	b := detect(mustEngine(t, snapshotConfig), evs)
	if len(a) == 0 || !reflect.DeepEqual(a, b) {
		t.Fatalf("two runs over the same events differ (%d vs %d detections)", len(a), len(b))
	}
	seen := map[string]bool{}
	for _, d := range a {
		if seen[d.ID] {
			t.Errorf("duplicate ID %s", d.ID)
		}
		seen[d.ID] = true
	}
}

// resum rewrites the CRC of a (possibly edited) snapshot.
func resum(b []byte) []byte {
	b = bytes.Clone(b)
	binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], crcTable))
	return b
}

func TestRestoreRejectsBadInput(t *testing.T) {
	src := mustEngine(t, snapshotConfig)
	detect(src, scenarioEvents(t, 3, 2))
	good := snapshotBytes(t, src)
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x40
	badVersion := bytes.Clone(good)
	badVersion[4] = 9
	trailing := resum(append(bytes.Clone(good[:len(good)-4]), 0, 0, 0, 0, 0))
	src.keys.at(0).envRun = -1
	badRun := snapshotBytes(t, src) // written as it is, CRC and all
	cases := []struct {
		name string
		data []byte
		cfg  Config
	}{
		{"empty", nil, snapshotConfig},
		{"short", good[:7], snapshotConfig},
		{"bad magic", append([]byte("XXXX"), good[4:]...), snapshotConfig},
		{"unknown version", resum(badVersion), snapshotConfig},
		{"flipped bit", flipped, snapshotConfig},
		{"truncated", good[:len(good)-100], snapshotConfig},
		{"truncated with a valid checksum", resum(good[:len(good)-100]), snapshotConfig},
		{"trailing bytes", trailing, snapshotConfig},
		{"another interval", good, Config{Settings: Settings{Interval: time.Minute}}},
		{"a sharded snapshot", append([]byte("KSSH"), good[4:]...), snapshotConfig},
		{"a negative envelope run", badRun, snapshotConfig},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := mustEngine(t, tc.cfg)
			detect(e, scenarioEvents(t, 4, 1)[:1000])
			before := snapshotBytes(t, e)
			err := e.Restore(bytes.NewReader(tc.data))
			if !errors.Is(err, ErrSnapshot) {
				t.Fatalf("Restore: %v, want an error wrapping ErrSnapshot", err)
			}
			t.Log(err)
			if !bytes.Equal(snapshotBytes(t, e), before) {
				t.Fatal("a failed Restore changed the engine")
			}
		})
	}
}

// FuzzRestore feeds arbitrary bytes to Restore, both as they are and with a valid
// checksum (so the parser itself is exercised): it must return an error wrapping
// ErrSnapshot or a usable engine, never panic.
func FuzzRestore(f *testing.F) {
	small := mustEngine(f, snapshotConfig)
	evs := scenarioEvents(f, 5, 2)
	detect(small, evs[:3000])
	f.Add(snapshotBytes(f, small), false)
	f.Add(snapshotBytes(f, mustEngine(f, Config{})), false)
	f.Add([]byte("KSDS\x01\x00\x00\x00"), true)
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		if fix && len(data) >= 12 {
			data = resum(data)
		}
		e := mustEngine(t, snapshotConfig)
		err := e.Restore(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrSnapshot) {
				t.Fatalf("error %v does not wrap ErrSnapshot", err)
			}
			return
		}
		// a restored engine must keep working
		detect(e, evs[3000:3200])
		var b bytes.Buffer
		if err := e.Snapshot(&b); err != nil {
			t.Fatal(err)
		}
	})
}
