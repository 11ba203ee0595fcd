package detectors

import (
	"math"
	"unsafe"

	"github.com/cespare/xxhash/v2"
)

// keyState is the whole per-key state: fixed-size and pointer-free, so a slab of them
// costs the garbage collector nothing to scan. A key is a vendor's credential or, with
// credLen == 0 and flagVendorKey set, the vendor as a whole.
type keyState struct {
	vendor   uint32 // vendor index
	credOff  uint32 // credential bytes in the arena
	credLen  uint16
	flags    uint16
	lastData uint32 // Unix second of the last event that moved data (flagDataSeen)

	cur      uint32 // current bucket (index since the epoch)
	curFirst uint32 // earliest event in cur, in ms after the bucket start
	curBytes int64
	prvBytes float32 // bucket cur-1 while it is still open (flagPrevOpen)
	curTop   float32 // the largest single event in cur
	prvTop   float32 // the largest single event in cur-1 while it is still open
	// anomAt is the event (ms after the bucket start) at which cur's running sum first
	// went above the most the key had sent at this hour of the day (unset: MaxUint32).
	anomAt uint32

	spikeTrig float32 // bytes at which cur fires a spike (+Inf: cannot)
	// eventTrig is the size of one event at or above which it fires a spike on its own
	// in cur (+Inf: cannot; see Engine.eventLine).
	eventTrig float32
	sustTrig  float32 // bytes at which cur fires a sustained detection
	cusStart  uint32  // first bucket of the current run of excess (see Engine.learn)
	cusBytes  float32 // bytes since cusStart, excluding cur
	// envRun is the sustained detector's second statistic: a CUSUM of how far the
	// closed buckets went above the most the key has sent around their hour of the day
	// (model scale, see Engine.envelopeRun).
	envRun float32

	spikeQ uint8 // quiet buckets of the spike episode
	sustQ  uint8 // quiet buckets of the sustained episode
	// hourHi is the upper envelope of the volume seen in each hour of the day (UTC), in
	// eighths of the model's log2 scale: the most the key has sent at that hour.
	hourHi [24]uint8
	// seenHi is the same envelope learned only from buckets that did not extend a
	// run of excess: the most the key has sent at that hour in normal operation, the
	// sustained detector's guard (see keyState.seenLine).
	seenHi [24]uint8
	// eventHi is the upper envelope of the largest single event in a bucket at each
	// hour of the day, on the same scale, learned as hourHi is (see Engine.eventLine).
	eventHi [24]uint8

	model Model
}

const (
	flagVendorKey uint16 = 1 << iota
	flagExpectedIdle
	flagStarted  // cur is valid
	flagPrevOpen // bucket cur-1 is open
	flagSpike    // spike episode active
	flagSust     // sustained episode active
	flagDormant  // dormant episode active
	flagDataSeen // lastData is valid
	// flagFleetNew: during the latest fleet-wide rise the key sent well above the most
	// it had sent at that hour (the rise took it to a level it had not seen); cleared
	// a day after the rise ended (see Engine.farLine).
	flagFleetNew
	// flagSpikeEarly: the active spike episode was opened by one event (see
	// Engine.eventLine) below the key's top severity; the bucket crossing its own line
	// at that severity raises it again, once (see Engine.fireSpike).
	flagSpikeEarly
)

func (k *keyState) has(f uint16) bool { return k.flags&f != 0 }

func (k *keyState) set(f uint16, on bool) {
	if on {
		k.flags |= f
	} else {
		k.flags &^= f
	}
}

func (k *keyState) spikeEpisode() episode {
	return episode{active: k.has(flagSpike), quiet: uint16(k.spikeQ)}
}

func (k *keyState) setSpikeEpisode(e episode) {
	k.set(flagSpike, e.active)
	if !e.active {
		k.flags &^= flagSpikeEarly
	}
	k.spikeQ = uint8(min(e.quiet, math.MaxUint8))
}

func (k *keyState) sustEpisode() episode {
	return episode{active: k.has(flagSust), quiet: uint16(k.sustQ)}
}

func (k *keyState) setSustEpisode(e episode) {
	k.set(flagSust, e.active)
	k.sustQ = uint8(min(e.quiet, math.MaxUint8))
}

// keyStateSize is the size of one keyState in bytes.
const keyStateSize = int(unsafe.Sizeof(keyState{}))

const (
	slabShift = 12 // 4096 keys per slab chunk
	slabSize  = 1 << slabShift
	slabMask  = slabSize - 1

	arenaShift = 20 // 1 MiB arena chunks
	arenaSize  = 1 << arenaShift
	arenaMask  = arenaSize - 1

	maxCredentialLen = math.MaxUint16
)

// keyStore holds every key: a chunked slab of keyStates, a chunked byte arena for
// credential names and an open-addressing table of slab indices. Nothing grows by
// copying the keys themselves, and the per-key overhead is the table slot (4 bytes at
// a load of at most 3/4) plus the credential's bytes.
type keyStore struct {
	slab  [][]keyState
	n     int
	arena [][]byte
	table []uint32
	mask  uint32
	// credKeys counts the credential keys (the table holds only those).
	credKeys int
}

func (s *keyStore) len() int { return s.n }

// at returns key i.
func (s *keyStore) at(i uint32) *keyState {
	return &s.slab[i>>slabShift][i&slabMask]
}

// credential returns key k's credential name (a copy for Detections).
func (s *keyStore) credential(k *keyState) string {
	if k.credLen == 0 {
		return ""
	}
	return string(s.credBytes(k))
}

func (s *keyStore) credBytes(k *keyState) []byte {
	c := s.arena[k.credOff>>arenaShift]
	o := k.credOff & arenaMask
	return c[o : o+uint32(k.credLen)]
}

func keyHash(vendor uint32, cred string) uint32 {
	return keyHashBytes(vendor, xxhash.Sum64String(cred))
}

func keyHashBytes(vendor uint32, h uint64) uint32 {
	h ^= uint64(vendor)*0x9e3779b97f4a7c15 + 0x632be59bd9b4e019
	h ^= h >> 29
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 32
	return uint32(h)
}

// find returns the index of the credential key (vendor, cred).
func (s *keyStore) find(vendor uint32, cred string, h uint32) (uint32, bool) {
	if s.table == nil {
		return 0, false
	}
	for i := h & s.mask; ; i = (i + 1) & s.mask {
		slot := s.table[i]
		if slot == 0 {
			return 0, false
		}
		k := s.at(slot - 1)
		if k.vendor == vendor && int(k.credLen) == len(cred) && string(s.credBytes(k)) == cred {
			return slot - 1, true
		}
	}
}

// add appends a key and returns its index. cred must not be in the table yet; an
// empty cred makes a vendor key, which is not entered in the table.
func (s *keyStore) add(vendor uint32, cred string, h uint32) uint32 {
	if s.n&slabMask == 0 && s.n>>slabShift == len(s.slab) {
		s.slab = append(s.slab, make([]keyState, slabSize))
	}
	idx := uint32(s.n)
	s.n++
	k := s.at(idx)
	*k = keyState{vendor: vendor}
	if cred == "" {
		k.flags = flagVendorKey
		return idx
	}
	k.credOff = s.store(cred)
	k.credLen = uint16(len(cred))
	s.insert(idx, h)
	return idx
}

func (s *keyStore) store(cred string) uint32 {
	ci := len(s.arena) - 1
	if ci < 0 || len(s.arena[ci])+len(cred) > arenaSize {
		size := arenaSize
		if ci < 0 {
			size = 4096 // a small engine stays small; the first chunk grows on demand
		}
		s.arena = append(s.arena, make([]byte, 0, size))
		ci++
	}
	c := s.arena[ci]
	if len(c)+len(cred) > cap(c) {
		nc := make([]byte, len(c), min(arenaSize, max(2*cap(c), len(c)+len(cred))))
		copy(nc, c)
		c = nc
	}
	off := uint32(ci)<<arenaShift | uint32(len(c))
	s.arena[ci] = append(c, cred...)
	return off
}

func (s *keyStore) insert(idx, h uint32) {
	s.credKeys++
	if s.table == nil || s.credKeys*4 > len(s.table)*3 {
		s.grow() // re-inserts every credential key, idx included
		return
	}
	for i := h & s.mask; ; i = (i + 1) & s.mask {
		if s.table[i] == 0 {
			s.table[i] = idx + 1
			return
		}
	}
}

// grow doubles the table (or creates it) and re-inserts every credential key.
func (s *keyStore) grow() {
	size := 64
	for size*3 < s.credKeys*4*2 {
		size *= 2
	}
	if s.table != nil && size <= len(s.table) {
		size = 2 * len(s.table)
	}
	s.table = make([]uint32, size)
	s.mask = uint32(size - 1)
	for i := 0; i < s.n; i++ {
		k := s.at(uint32(i))
		if k.flags&flagVendorKey != 0 {
			continue
		}
		h := keyHashBytes(k.vendor, xxhash.Sum64(s.credBytes(k)))
		for j := h & s.mask; ; j = (j + 1) & s.mask {
			if s.table[j] == 0 {
				s.table[j] = uint32(i) + 1
				break
			}
		}
	}
}
