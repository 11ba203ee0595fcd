package telemetry

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"

	"github.com/killswitch-dev/killswitch"
)

// Attributor attributes network addresses to vendors using the vendor inventory's
// CIDRs (killswitch.Vendor.CIDRs): the longest matching prefix wins. It is immutable and
// safe for concurrent use. Flow-log decoders use it to name the vendor a record's
// destination belongs to; an address in no vendor CIDR is unattributed, never guessed.
type Attributor struct {
	byPrefix map[netip.Prefix]string
	lens4    []int // distinct IPv4 prefix lengths, longest first
	lens6    []int // distinct IPv6 prefix lengths, longest first
}

// NewAttributor builds an Attributor from the vendor inventory. The same prefix listed
// for two vendors is an error: attribution must be unambiguous. IPv4-mapped IPv6
// prefixes (::ffff:a.b.c.d/n, n ≥ 96) are treated as the IPv4 prefix they map.
func NewAttributor(vendors killswitch.Inventory) (*Attributor, error) {
	a := &Attributor{byPrefix: map[netip.Prefix]string{}}
	names := slices.Sorted(maps.Keys(vendors))
	for _, name := range names {
		for _, p := range vendors[name].CIDRs {
			if !p.IsValid() {
				return nil, fmt.Errorf("telemetry: vendor %q: invalid CIDR %v", name, p)
			}
			p = canonicalPrefix(p)
			if other, ok := a.byPrefix[p]; ok && other != name {
				return nil, fmt.Errorf("telemetry: CIDR %s is listed for both vendor %q and vendor %q", p, other, name)
			}
			a.byPrefix[p] = name
			if p.Addr().Is4() {
				if !slices.Contains(a.lens4, p.Bits()) {
					a.lens4 = append(a.lens4, p.Bits())
				}
			} else if !slices.Contains(a.lens6, p.Bits()) {
				a.lens6 = append(a.lens6, p.Bits())
			}
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(a.lens4)))
	sort.Sort(sort.Reverse(sort.IntSlice(a.lens6)))
	return a, nil
}

func canonicalPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// Vendor returns the vendor whose longest CIDR contains addr. A nil Attributor
// attributes nothing.
func (a *Attributor) Vendor(addr netip.Addr) (string, bool) {
	if a == nil || !addr.IsValid() {
		return "", false
	}
	addr = addr.Unmap().WithZone("")
	lens := a.lens6
	if addr.Is4() {
		lens = a.lens4
	}
	for _, bits := range lens {
		p, err := addr.Prefix(bits)
		if err != nil {
			continue
		}
		if v, ok := a.byPrefix[p]; ok {
			return v, true
		}
	}
	return "", false
}

// Len returns the number of prefixes held.
func (a *Attributor) Len() int {
	if a == nil {
		return 0
	}
	return len(a.byPrefix)
}
