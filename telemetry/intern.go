package telemetry

import (
	"encoding/binary"
	"math/bits"
)

// interner maps byte strings to shared Go strings so that the few distinct vendors,
// credentials, sensors and addresses seen in a stream are allocated once. It is an
// open-addressing table with a fixed number of slots and a short probe window: once the
// window is full, new strings are allocated and not remembered, so hostile input can
// slow a decoder down but never grow its memory. Lookups do not allocate. An interner is
// not safe for concurrent use.
type interner struct {
	slots []string // len is a power of two; "" marks a free slot
	mask  uint64
	n     int // strings held
	max   int // capacity
	limit int // most slots the table grows to: ≥ 2 × max
}

const (
	// maxInternLength is the longest string kept in an intern table.
	maxInternLength = 128
	// internProbe is how many slots a lookup examines.
	internProbe = 8
	// internInitialSlots is the table's size before it first grows.
	internInitialSlots = 64
)

func newInterner(capacity int) interner {
	if capacity <= 0 {
		return interner{}
	}
	limit := 1 << bits.Len(uint(2*capacity-1)) // ≥ 2×capacity: load factor ≤ 0.5
	size := min(limit, internInitialSlots)
	return interner{slots: make([]string, size), mask: uint64(size - 1), max: capacity, limit: limit}
}

// get returns a string equal to b, shared with earlier calls when possible.
func (t *interner) get(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if t.slots == nil || len(b) > maxInternLength {
		return string(b)
	}
	h := hashBytes(b)
	for p := uint64(0); p < internProbe; p++ {
		i := (h + p) & t.mask
		s := t.slots[i]
		if s == "" {
			s = string(b)
			if t.n < t.max {
				t.slots[i] = s
				t.n++
				if 2*t.n > len(t.slots) && len(t.slots) < t.limit {
					t.grow()
				}
			}
			return s
		}
		if s == string(b) {
			return s
		}
	}
	return string(b)
}

// grow doubles the table and re-inserts what it holds (strings that no longer fit
// their probe window are dropped: they are re-interned on their next use).
func (t *interner) grow() {
	old := t.slots
	t.slots = make([]string, 2*len(old))
	t.mask = uint64(len(t.slots) - 1)
	t.n = 0
	for _, s := range old {
		if s == "" {
			continue
		}
		h := hashBytes([]byte(s))
		for p := uint64(0); p < internProbe; p++ {
			if i := (h + p) & t.mask; t.slots[i] == "" {
				t.slots[i] = s
				t.n++
				break
			}
		}
	}
}

// len returns the number of strings held.
func (t *interner) len() int { return t.n }

// hashBytes is a fast, non-cryptographic hash for short strings. Collisions only cost
// an allocation, never correctness.
func hashBytes(b []byte) uint64 {
	const (
		k0 = 0x9E3779B97F4A7C15
		k1 = 0xbf58476d1ce4e5b9
		k2 = 0x94d049bb133111eb
	)
	n := len(b)
	h := uint64(n) * k0
	switch {
	case n >= 8:
		for p := b; len(p) > 8; p = p[8:] {
			h = (h ^ binary.LittleEndian.Uint64(p)) * k1
			h ^= h >> 29
		}
		// The last 8 bytes, overlapping what was hashed when n is not a multiple of 8.
		h ^= binary.LittleEndian.Uint64(b[n-8:])
	case n >= 4:
		h ^= uint64(binary.LittleEndian.Uint32(b)) | uint64(binary.LittleEndian.Uint32(b[n-4:]))<<32
	case n > 0:
		h ^= uint64(b[0]) | uint64(b[n/2])<<8 | uint64(b[n-1])<<16
	}
	// Murmur3's finalizer: every input bit reaches the low bits the table indexes with.
	h ^= h >> 33
	h *= k2
	h ^= h >> 33
	h *= k1
	return h ^ h>>33
}
