package detectors

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math"
	"time"
)

// Snapshot format, version 7 (all integers little-endian):
//
//	magic "KSDS" | version u16 | reserved u16 | body | CRC-32C (Castagnoli) u32
//
// The CRC covers everything before it. The body holds the interval and lateness the
// state was built with, the engine's watermark bookkeeping and counters, the sensors,
// then every vendor (name, watermark, silence activity, cap windows, destination set)
// followed by its keys (credential name and fixed-size state). Triggers are not
// stored: they are recomputed from the models on restore, under the configuration of
// the engine being restored (so a changed MinBytes or sensitivity takes effect).
//
// Version 2 adds the clock guard's state (the last Tick's time, the pending jump, the
// ClockRejected counter), each activity's observed history and each vendor's last
// unobserved jump. Version 1 snapshots are still read: their activities are taken as
// observed without gaps (observed history = last - first event time, as version 1
// counted it), with no unobserved jump, no Tick and ClockRejected zero.
//
// Version 3 appends to each key the sustained detector's guard envelope and the volume
// model's day type (see encodeKeyV3). Version 1 and 2 keys are migrated with the guard
// envelope taken from the hour envelope and no weekend learned yet.
//
// Version 4 adds the fleet-wide shift in effect and the number observed (see
// encodeFleet), after the counters. Older snapshots are read with no shift on. A key's
// flags may carry flagFleetNew (a recent fleet-wide rise took the key to a new level,
// see Engine.farLine) in a bit older builds never set: not a format change; a snapshot
// without it restores its keys unmarked, so for at most a day after a rise that ended
// before the upgrade the spike's far line is at 3×, not its 8× bound.
//
// Version 5 appends to each key the single-event envelope and the open buckets'
// largest events (see encodeKeyV5). Older keys are migrated with the envelope taken
// from the hour envelope. A key's flags may carry flagSpikeEarly (its spike episode
// was opened by one event below the key's top severity, see Engine.fireSpike), a bit
// older builds never set.
//
// Version 6 drops the volume model's day-of-week offsets and their gate (the model no
// longer has them, see Model). Older keys are read with them skipped; a key that was
// using them (after 21 days) goes on with its hour-of-day offsets and day type alone.
//
// Version 7 appends to each key the sustained detector's envelope run (f32, see
// Engine.envelopeRun). Older keys are read with no run open: a low-and-slow run that
// was open when the snapshot was taken starts counting again.
//
// A Sharded snapshot is
//
//	magic "KSSH" | version u16 | reserved u16 | shards u32 | (length u64 | engine snapshot)… | CRC-32C u32
//
// and can be restored into a Sharded engine with any number of shards: vendors are
// routed to their new shard by the same hash used for events.

const (
	snapshotVersion = 7
	// minSnapshotVersion is the oldest version Restore reads (and migrates).
	minSnapshotVersion = 1
	// MaxSnapshotBytes bounds the size of a snapshot Restore accepts (16 GiB).
	MaxSnapshotBytes = 16 << 30
)

var (
	engineMagic  = [4]byte{'K', 'S', 'D', 'S'}
	shardedMagic = [4]byte{'K', 'S', 'S', 'H'}
	crcTable     = crc32.MakeTable(crc32.Castagnoli)
)

// encoder writes little-endian values and keeps a running CRC.
type encoder struct {
	w   *bufio.Writer
	crc hash.Hash32
	buf [8]byte
	err error
}

func newEncoder(w io.Writer) *encoder {
	return &encoder{w: bufio.NewWriterSize(w, 64<<10), crc: crc32.New(crcTable)}
}

func (e *encoder) bytes(b []byte) {
	if e.err != nil {
		return
	}
	e.crc.Write(b)
	_, e.err = e.w.Write(b)
}

func (e *encoder) u8(v uint8)   { e.buf[0] = v; e.bytes(e.buf[:1]) }
func (e *encoder) u16(v uint16) { binary.LittleEndian.PutUint16(e.buf[:2], v); e.bytes(e.buf[:2]) }
func (e *encoder) u32(v uint32) { binary.LittleEndian.PutUint32(e.buf[:4], v); e.bytes(e.buf[:4]) }
func (e *encoder) u64(v uint64) { binary.LittleEndian.PutUint64(e.buf[:8], v); e.bytes(e.buf[:8]) }
func (e *encoder) i64(v int64)  { e.u64(uint64(v)) }
func (e *encoder) f32(v float32) {
	e.u32(math.Float32bits(v))
}
func (e *encoder) boolean(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}
func (e *encoder) str(s string) {
	e.u32(uint32(len(s)))
	if e.err == nil {
		e.crc.Write([]byte(s))
		_, e.err = e.w.WriteString(s)
	}
}

// finish writes the CRC and flushes.
func (e *encoder) finish() error {
	if e.err != nil {
		return e.err
	}
	binary.LittleEndian.PutUint32(e.buf[:4], e.crc.Sum32())
	if _, err := e.w.Write(e.buf[:4]); err != nil {
		return err
	}
	return e.w.Flush()
}

// decoder reads little-endian values from a verified snapshot in memory.
type decoder struct {
	b   []byte
	off int
	err error
	// version is the snapshot's format version.
	version uint16
}

// newDecoder returns a decoder for a verified snapshot b, after its header.
func newDecoder(b []byte) *decoder {
	return &decoder{b: b, off: 8, version: binary.LittleEndian.Uint16(b[4:6])}
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: at byte %d: %s", ErrSnapshot, d.off, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b)-d.off < n {
		d.fail("truncated: want %d more bytes, have %d", n, len(d.b)-d.off)
		return nil
	}
	s := d.b[d.off : d.off+n]
	d.off += n
	return s
}

func (d *decoder) u8() uint8 {
	if b := d.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if b := d.take(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) i64() int64 { return int64(d.u64()) }

func (d *decoder) f32() float32 {
	v := math.Float32frombits(d.u32())
	if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
		d.fail("non-finite number")
	}
	return v
}

func (d *decoder) boolean() bool {
	switch v := d.u8(); v {
	case 0:
		return false
	case 1:
		return true
	default:
		d.fail("bad boolean %d", v)
		return false
	}
}

func (d *decoder) str(maxLen int) string {
	n := d.u32()
	if int64(n) > int64(maxLen) {
		d.fail("string of %d bytes exceeds %d", n, maxLen)
		return ""
	}
	return string(d.take(int(n)))
}

// count reads an element count and checks that at least minSize bytes per element
// remain, so corrupt counts cannot make the decoder allocate or loop for nothing.
func (d *decoder) count(minSize, limit int) int {
	n := d.u32()
	if d.err != nil {
		return 0
	}
	if int64(n) > int64(limit) {
		d.fail("count %d exceeds %d", n, limit)
		return 0
	}
	if int64(n)*int64(minSize) > int64(len(d.b)-d.off) {
		d.fail("count %d does not fit in the %d bytes left", n, len(d.b)-d.off)
		return 0
	}
	return int(n)
}

// readVerified reads a whole snapshot, checks its size bound and CRC, and returns the
// bytes before the CRC.
func readVerified(r io.Reader, magic [4]byte) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxSnapshotBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read: %w", ErrSnapshot, err)
	}
	if len(b) > MaxSnapshotBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrSnapshot, int64(MaxSnapshotBytes))
	}
	return verify(b, magic)
}

func verify(b []byte, magic [4]byte) ([]byte, error) {
	if len(b) < 12 {
		return nil, fmt.Errorf("%w: %d bytes is too short for a snapshot", ErrSnapshot, len(b))
	}
	if [4]byte(b[:4]) != magic {
		return nil, fmt.Errorf("%w: magic %q, want %q", ErrSnapshot, b[:4], magic[:])
	}
	if v := binary.LittleEndian.Uint16(b[4:6]); v < minSnapshotVersion || v > snapshotVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads versions %d to %d", ErrSnapshot, v, minSnapshotVersion, snapshotVersion)
	}
	body := b[:len(b)-4]
	want := binary.LittleEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, crcTable); got != want {
		return nil, fmt.Errorf("%w: checksum mismatch (corrupt or truncated)", ErrSnapshot)
	}
	return body, nil
}

// Snapshot writes the engine's whole state to w in the versioned binary format
// described above. Call it from the goroutine that owns the engine.
func (e *Engine) Snapshot(w io.Writer) error {
	return e.snapshot(w, nil)
}

// snapshot writes a snapshot of the vendors keep accepts (nil: all).
func (e *Engine) snapshot(w io.Writer, keep func(vendor string) bool) error {
	enc := newEncoder(w)
	enc.bytes(engineMagic[:])
	enc.u16(snapshotVersion)
	enc.u16(0)
	e.encodeBody(enc, keep)
	if err := enc.finish(); err != nil {
		return fmt.Errorf("detectors: write snapshot: %w", err)
	}
	return nil
}

// encodeBody writes the engine's state; keep, when not nil, chooses the vendors written
// (the engine-wide state is always written).
func (e *Engine) encodeBody(enc *encoder, keep func(vendor string) bool) {
	enc.i64(int64(e.set.interval))
	enc.i64(int64(e.set.lateness))
	enc.boolean(e.seen)
	enc.i64(e.maxT)
	enc.i64(e.nextSilence)
	enc.i64(e.now)
	enc.i64(e.candT)
	enc.u32(e.candN)
	for _, c := range []uint64{e.c.events, e.c.rejected, e.c.late, e.c.keysRefused, e.c.sensorsUntracked, e.c.destEvicted, e.c.clockRejected} {
		enc.u64(c)
	}
	enc.u32(uint32(len(e.c.detections)))
	for _, c := range e.c.detections {
		enc.u64(c)
	}
	encodeFleet(enc, &e.fleet)
	enc.u32(uint32(len(e.sensors)))
	for i := range e.sensors {
		enc.str(e.sensors[i].name)
		encodeActivity(enc, &e.sensors[i].act)
	}
	kept := 0
	for _, v := range e.vendors {
		if keep == nil || keep(v.name) {
			kept++
		}
	}
	enc.u32(uint32(kept))
	// keys are grouped by vendor in the snapshot
	byVendor := make([][]uint32, len(e.vendors))
	for i := 0; i < e.keys.len(); i++ {
		k := e.keys.at(uint32(i))
		if k.flags&flagVendorKey == 0 {
			byVendor[k.vendor] = append(byVendor[k.vendor], uint32(i))
		}
	}
	for vi, v := range e.vendors {
		if keep != nil && !keep(v.name) {
			continue
		}
		encodeVendor(enc, v)
		encodeKey(enc, "", e.keys.at(v.key))
		enc.u32(uint32(len(byVendor[vi])))
		for _, ki := range byVendor[vi] {
			k := e.keys.at(ki)
			encodeKey(enc, e.keys.credential(k), k)
		}
	}
}

func encodeActivity(enc *encoder, a *activity) {
	enc.i64(a.firstT)
	enc.i64(a.lastT)
	enc.u32(a.lastB)
	enc.f32(a.gap)
	enc.u16(a.buckets)
	enc.u8(a.lastHour)
	enc.boolean(a.silent)
	for _, g := range a.hourGap {
		enc.u16(g)
	}
	enc.i64(a.hist)
}

func encodeVendor(enc *encoder, v *vendorState) {
	enc.str(v.name)
	enc.boolean(v.seen)
	enc.i64(v.maxT)
	enc.i64(v.firstT)
	enc.i64(v.skipAt)
	encodeActivity(enc, &v.act)
	enc.u32(uint32(len(v.caps)))
	for i := range v.caps {
		c := &v.caps[i]
		enc.i64(c.win)
		enc.i64(c.bytes)
		enc.i64(c.records)
		enc.i64(c.pBytes)
		enc.i64(c.pRecords)
		enc.boolean(c.started)
		enc.boolean(c.fired)
		enc.boolean(c.pFired)
		enc.boolean(c.prevOpen)
	}
	enc.u32(uint32(len(v.dests.slots)))
	for _, s := range v.dests.slots {
		enc.u32(s)
	}
}

func encodeKey(enc *encoder, cred string, k *keyState) {
	enc.str(cred)
	enc.u16(k.flags)
	enc.u32(k.lastData)
	enc.u32(k.cur)
	enc.u32(k.curFirst)
	enc.i64(k.curBytes)
	enc.f32(k.prvBytes)
	enc.u32(k.anomAt)
	enc.u32(k.cusStart)
	enc.f32(k.cusBytes)
	enc.u8(k.spikeQ)
	enc.u8(k.sustQ)
	enc.bytes(k.hourHi[:])
	m := &k.model
	enc.u32(m.n)
	enc.u32(uint32(m.t0))
	for _, f := range [...]float32{m.fast, m.vol, m.volMid, m.slow, m.mad, m.smad, m.cusUp, m.cusDown,
		m.innHi, m.innLo, m.lvlHi, m.lvlLo, m.volHi, m.volLo, m.resHi, m.resLo} {
		enc.f32(f)
	}
	for _, s := range m.season {
		enc.u16(uint16(s))
	}
	enc.u16(uint16(m.qexp))
	encodeKeyV3(enc, k)
	encodeKeyV5(enc, k)
	enc.f32(k.envRun)
}

// Minimal encoded sizes, used to bound counts before looping.
const (
	minActivitySize = 8 + 8 + 4 + 4 + 2 + 1 + 1 + 48
	minKeySize      = 4 + 2 + 4 + 4 + 4 + 8 + 8 + 4 + 4 + 1 + 1 + 24 + 4 + 4 + 16*4 + 24*2 + 2
	minVendorSize   = 4 + 1 + 8 + 8 + minActivitySize + 4 + 4 + minKeySize + 4
	capStateSize    = 5*8 + 4
)

// Restore replaces the engine's state with a snapshot written by Snapshot. The
// engine's configuration is kept (vendors in the snapshot get today's vendor
// configuration). Bad input (truncated, corrupt, wrong version, written with another
// interval or lateness) returns an error wrapping ErrSnapshot and leaves the engine
// unchanged. Call it from the goroutine that owns the engine.
func (e *Engine) Restore(r io.Reader) error {
	body, err := readVerified(r, engineMagic)
	if err != nil {
		return err
	}
	fresh, err := e.emptyCopy()
	if err != nil {
		return err
	}
	d := newDecoder(body)
	fresh.decodeBody(d, func(string) *Engine { return fresh }, true)
	if d.err == nil && d.off != len(d.b) {
		d.fail("%d trailing bytes", len(d.b)-d.off)
	}
	if d.err != nil {
		return d.err
	}
	fresh.fleetOwn.restored(fresh.fleet, fresh.bucketStart(fresh.fleet.since))
	fresh.finishRestore()
	*e = *fresh
	return nil
}

// emptyCopy returns an engine with e's configuration and no state.
func (e *Engine) emptyCopy() (*Engine, error) {
	return &Engine{
		set: e.set, sensorAlerts: e.sensorAlerts, fleetOwner: e.fleetOwner, unit: e.unit, unitBytes: e.unitBytes, hourBytes: e.hourBytes, base: e.base, maxKeys: e.maxKeys,
		vcfg: e.vcfg, defaultVC: e.defaultVC, vendorIdx: make(map[string]uint32), revs: e.revs,
	}, nil
}

// decodeBody decodes one engine body, sending every vendor (and its keys) to the
// engine route returns for it. Engine-wide state (watermarks, counters, sensors) goes
// to e when global is true, and is merged into e otherwise.
func (e *Engine) decodeBody(d *decoder, route func(vendor string) *Engine, global bool) {
	if iv, lt := d.i64(), d.i64(); d.err == nil && (iv != int64(e.set.interval) || lt != int64(e.set.lateness)) {
		d.fail("written with interval %s and lateness %s, the engine uses %s and %s (incompatible buckets)",
			fmtDur(iv), fmtDur(lt), e.set.interval, e.set.lateness)
	}
	seen, maxT, next := d.boolean(), d.i64(), d.i64()
	var g guard
	if d.version >= 2 {
		g.now, g.candT, g.candN = d.i64(), d.i64(), d.u32()
	}
	var c counters
	ps := []*uint64{&c.events, &c.rejected, &c.late, &c.keysRefused, &c.sensorsUntracked, &c.destEvicted, &c.clockRejected}
	if d.version < 2 {
		ps = ps[:6] // version 1 had no ClockRejected
	}
	for _, p := range ps {
		*p = d.u64()
	}
	// Kinds are appended, never reordered: an older checkpoint counts fewer kinds.
	n := d.count(8, 64)
	if n > len(c.detections) && d.err == nil {
		d.fail("%d detection counters, want at most %d", n, len(c.detections))
	}
	for i := range min(n, len(c.detections)) {
		c.detections[i] = d.u64()
	}
	fl := decodeFleet(d)
	if d.err != nil {
		return
	}
	e.mergeGlobal(seen, maxT, next, g, c, global)
	if global || fl.shifts > e.fleet.shifts {
		e.fleet = fl
	}
	ns := d.count(4+minActivitySize, maxSensors)
	for range ns {
		name := d.str(maxCredentialLen)
		var a activity
		decodeActivity(d, &a)
		if d.err != nil {
			return
		}
		if name == "" {
			d.fail("empty sensor name")
			return
		}
		e.mergeSensor(name, a)
	}
	nv := d.count(minVendorSize, math.MaxInt32)
	for range nv {
		name := d.str(maxCredentialLen)
		if d.err != nil {
			return
		}
		if name == "" {
			d.fail("empty vendor name")
			return
		}
		target := route(name)
		if _, dup := target.vendorIdx[name]; dup {
			d.fail("vendor %q appears twice", name)
			return
		}
		vi, v := target.vendor(name)
		if v == nil {
			d.fail("more keys than the engine's bound of %d", target.maxKeys)
			return
		}
		decodeVendor(d, v)
		if cred := d.str(maxCredentialLen); cred != "" && d.err == nil {
			d.fail("vendor %q: first key is %q, want the vendor key", name, cred)
		}
		decodeKey(d, target.keys.at(v.key))
		target.keys.at(v.key).flags |= flagVendorKey
		nk := d.count(minKeySize, math.MaxInt32)
		for range nk {
			cred := d.str(maxCredentialLen)
			if d.err != nil {
				return
			}
			if cred == "" {
				d.fail("vendor %q: empty credential", name)
				return
			}
			h := keyHash(vi, cred)
			if _, dup := target.keys.find(vi, cred, h); dup {
				d.fail("vendor %q: credential %q appears twice", name, cred)
				return
			}
			if target.keys.len() >= target.maxKeys {
				d.fail("more keys than the engine's bound of %d", target.maxKeys)
				return
			}
			k := target.keys.at(target.keys.add(vi, cred, h))
			decodeKey(d, k)
			k.flags &^= flagVendorKey | flagExpectedIdle
			if _, ok := v.cfg.idle[cred]; ok {
				k.flags |= flagExpectedIdle
			}
		}
		if d.err != nil {
			return
		}
	}
}

func fmtDur(ns int64) string { return time.Duration(ns).String() }

func decodeActivity(d *decoder, a *activity) {
	a.firstT, a.lastT = d.i64(), d.i64()
	a.lastB = d.u32()
	a.gap = d.f32()
	a.buckets = d.u16()
	a.lastHour = d.u8()
	a.silent = d.boolean()
	for i := range a.hourGap {
		a.hourGap[i] = d.u16()
	}
	if d.version >= 2 {
		a.hist = d.i64()
	} else if a.buckets > 0 {
		a.hist = a.lastT - a.firstT // version 1 counted history as the distance
	}
	if a.lastHour > 23 {
		d.fail("hour %d", a.lastHour)
	}
	if d.err == nil && a.hist < 0 {
		d.fail("negative observed history")
	}
}

func decodeVendor(d *decoder, v *vendorState) {
	v.seen = d.boolean()
	v.maxT, v.firstT = d.i64(), d.i64()
	if d.version >= 2 {
		v.skipAt = d.i64()
	}
	decodeActivity(d, &v.act)
	nc := d.count(capStateSize, 1<<16)
	caps := make([]capState, nc)
	for i := range caps {
		c := &caps[i]
		c.win, c.bytes, c.records, c.pBytes, c.pRecords = d.i64(), d.i64(), d.i64(), d.i64(), d.i64()
		c.started, c.fired, c.pFired, c.prevOpen = d.boolean(), d.boolean(), d.boolean(), d.boolean()
	}
	// cap windows are kept only when the vendor's caps are configured as they were
	if len(caps) == len(v.caps) {
		copy(v.caps, caps)
	}
	ns := d.count(4, destMaxSlots)
	if ns != 0 && (ns < destMinSlots || ns&(ns-1) != 0) {
		d.fail("vendor %q: destination set of %d slots", v.name, ns)
		return
	}
	v.dests = destSet{}
	if ns > 0 {
		v.dests.slots = make([]uint32, ns)
		for i := range v.dests.slots {
			s := d.u32()
			if s != 0 && s>>31 == 0 {
				d.fail("vendor %q: bad destination entry %#x", v.name, s)
				return
			}
			v.dests.slots[i] = s
			if s != 0 {
				v.dests.count++
			}
		}
	}
}

func decodeKey(d *decoder, k *keyState) {
	k.flags = d.u16()
	k.lastData = d.u32()
	k.cur = d.u32()
	k.curFirst = d.u32()
	k.curBytes = d.i64()
	k.prvBytes = d.f32()
	k.anomAt = d.u32()
	k.cusStart = d.u32()
	k.cusBytes = d.f32()
	k.spikeQ, k.sustQ = d.u8(), d.u8()
	copy(k.hourHi[:], d.take(len(k.hourHi)))
	m := &k.model
	m.n = d.u32()
	m.t0 = int32(d.u32())
	for i, f := range [...]*float32{&m.fast, &m.vol, &m.volMid, &m.slow, &m.mad, &m.smad, &m.cusUp, &m.cusDown,
		&m.innHi, &m.innLo, &m.lvlHi, &m.lvlLo, &m.volHi, &m.volLo, &m.resHi, &m.resLo} {
		if i == 6 && d.version < 6 {
			d.f32() // the day-of-week offsets' gate, stored between smad and cusUp
		}
		*f = d.f32()
	}
	for i := range m.season {
		m.season[i] = int16(d.u16())
	}
	if d.version < 6 {
		d.take(7 * 2) // the day-of-week offsets
	}
	m.qexp = int16(d.u16())
	decodeKeyV3(d, k)
	decodeKeyV5(d, k)
	if d.version >= 7 {
		k.envRun = d.f32()
	}
	if d.err == nil && (m.qexp < minQexp || m.qexp > maxQexp) {
		d.fail("model unit exponent %d out of range", m.qexp)
	}
	if d.err == nil && k.has(flagPrevOpen) && k.cur == 0 {
		d.fail("previous bucket open before bucket 0")
	}
	if d.err == nil && (k.curBytes < 0 || k.prvBytes < 0 || k.cusBytes < 0 || k.curTop < 0 || k.prvTop < 0) {
		d.fail("negative volume")
	}
	if d.err == nil && k.envRun < 0 {
		d.fail("negative envelope run %g", k.envRun)
	}
}

// guard is the clock guard's state in a snapshot.
type guard struct {
	now, candT int64
	candN      uint32
}

func (e *Engine) mergeGlobal(seen bool, maxT, next int64, g guard, c counters, global bool) {
	if global || !e.seen || (seen && maxT > e.maxT) {
		if seen {
			e.seen, e.maxT = true, maxT
		}
	}
	if global || next > e.nextSilence {
		e.nextSilence = next
	}
	if global || g.now > e.now {
		e.now = g.now
	}
	if global {
		e.candT, e.candN = g.candT, g.candN
		e.c = c
		return
	}
	e.c.clockRejected += c.clockRejected
	e.c.events += c.events
	e.c.rejected += c.rejected
	e.c.late += c.late
	e.c.keysRefused += c.keysRefused
	e.c.sensorsUntracked += c.sensorsUntracked
	e.c.destEvicted += c.destEvicted
	for i := range c.detections {
		e.c.detections[i] += c.detections[i]
	}
}

// mergeSensor adds a sensor's activity, merging with one of the same name (the later
// view wins).
func (e *Engine) mergeSensor(name string, a activity) {
	for i := range e.sensors {
		if e.sensors[i].name == name {
			if a.lastT > e.sensors[i].act.lastT {
				e.sensors[i].act = a
			}
			return
		}
	}
	if len(e.sensors) < maxSensors {
		e.sensors = append(e.sensors, sensorState{name: name, act: a})
	}
}

// finishRestore recomputes what the snapshot does not store: the current buckets'
// triggers, under this engine's configuration.
func (e *Engine) finishRestore() {
	for i := 0; i < e.keys.len(); i++ {
		k := e.keys.at(uint32(i))
		if k.has(flagStarted) {
			e.triggers(e.vendors[k.vendor], k)
		} else {
			inf := float32(math.Inf(1))
			k.spikeTrig, k.sustTrig = inf, inf
		}
	}
}
