package detectors

// Snapshot fields added in version 3, per key (appended after the volume model):
//
//	seenHi [24]u8 | dayGate f32 | dayOff i16 | dayN u16
//
// They live here, apart from the rest of the key's encoding, so that the version-3
// additions and their migration read in one place.

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
