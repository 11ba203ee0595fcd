package detectors

// Snapshot fields added in version 3, per key (appended after the volume model):
//
//	seenHi [24]u8 | dayGate f32 | dayOff i16 | dayN u16
//
// They live here, apart from the rest of the key's encoding, so that the version-3
// (and, below, version-5) additions and their migrations read in one place.

func encodeKeyV3(enc *encoder, k *keyState) {
	enc.bytes(k.seenHi[:])
	enc.f32(k.model.dayGate)
	enc.u16(uint16(k.model.dayOff))
	enc.u16(k.model.dayN)
}

// decodeKeyV3 reads the version-3 fields of a key, or migrates a key of an older
// snapshot: its guard envelope starts as its hour envelope (the most it has sent at
// each hour; the runs of excess among them cannot be told apart any more), and its
// model has seen no weekend yet (the weekend offset is learned at the next one).
func decodeKeyV3(d *decoder, k *keyState) {
	if d.version < 3 {
		k.seenHi = k.hourHi
		k.model.dayOff, k.model.dayGate, k.model.dayN = 0, 0, 0
		return
	}
	copy(k.seenHi[:], d.take(len(k.seenHi)))
	k.model.dayGate = d.f32()
	k.model.dayOff = int16(d.u16())
	k.model.dayN = d.u16()
}

// Snapshot fields added in version 5, per key (after the version-3 fields):
//
//	eventHi [24]u8 | curTop f32 | prvTop f32
func encodeKeyV5(enc *encoder, k *keyState) {
	enc.bytes(k.eventHi[:])
	enc.f32(k.curTop)
	enc.f32(k.prvTop)
}

// decodeKeyV5 reads the version-5 fields of a key, or migrates a key of an older
// snapshot: its single-event envelope starts as its hour envelope (no event is larger
// than the bucket it is in, so the one-event line starts at or above where the true
// envelope would put it: at worst the rule fires later until the envelope decays to
// the key's real events), and the open buckets' largest events as their whole volume.
func decodeKeyV5(d *decoder, k *keyState) {
	if d.version < 5 {
		k.eventHi = k.hourHi
		k.curTop, k.prvTop = float32(k.curBytes), k.prvBytes
		return
	}
	copy(k.eventHi[:], d.take(len(k.eventHi)))
	k.curTop = d.f32()
	k.prvTop = d.f32()
}
