package ledger

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strings"
	"testing"
)

func testKey(t testing.TB, b byte) *Key {
	t.Helper()
	k, err := NewKey([]byte(strings.Repeat(string(rune('a'+b)), KeySize)))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// nentry is entry(i) normalized, as an Appender would store it.
func nentry(i int) Entry {
	e := entry(i)
	if err := e.Normalize(); err != nil {
		panic(err)
	}
	return e
}

func msgs(ms []Message) iter.Seq2[Message, error] {
	return func(yield func(Message, error) bool) {
		for _, m := range ms {
			if !yield(m, nil) {
				return
			}
		}
	}
}

func encode(t testing.TB, r Record) []byte {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRecordMAC(t *testing.T) {
	key, other := testKey(t, 0), testKey(t, 1)
	signed := LinkSigned(nentry(1), 0, Genesis, key)
	tests := []struct {
		name string
		rec  func() Record
		want string // "" for a valid MAC
	}{
		{"signed", func() Record { return signed }, ""},
		{"no MAC", func() Record { return Link(nentry(1), 0, Genesis) }, "no MAC"},
		{"another key", func() Record { return LinkSigned(nentry(1), 0, Genesis, other) }, "MAC does not match"},
		{"edited and rehashed", func() Record {
			r := signed
			r.Payload = json.RawMessage(`{"n":2}`)
			r.Hash = computeHash(&r)
			return r
		}, "MAC does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.rec()
			err := key.CheckMAC(&r)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("CheckMAC = %v, want ErrBroken mentioning %q", err, tt.want)
			}
		})
	}
	// The MAC covers what the hash covers, and it survives the stored form.
	back, err := DecodeRecord(encode(t, signed))
	if err != nil || key.CheckMAC(&back) != nil || back.Check(0, Genesis) != nil {
		t.Fatalf("decoded signed record: %+v, %v", back, err)
	}
	if (*Key)(nil).CheckMAC(&back) != ErrNoKey {
		t.Fatal("a nil key checked a MAC")
	}
}

func TestKeyParsingAndSecrecy(t *testing.T) {
	secret := []byte(strings.Repeat("k", KeySize))
	tests := []struct {
		name, text string
		ok         bool
	}{
		{"hex", hex.EncodeToString(secret), true},
		{"hex with newline", hex.EncodeToString(secret) + "\n", true},
		{"base64", "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=", true},
		{"raw base64", "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s", true},
		{"too short", hex.EncodeToString(secret[:16]), false},
		{"not a key", "not a key at all!", false},
	}
	want, _ := NewKey(secret)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseKey(tt.text)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseKey = %v, %v", k, err)
			}
			if tt.ok && k.ID() != want.ID() {
				t.Fatalf("key id %s, want %s", k.ID(), want.ID())
			}
		})
	}
	for _, s := range []string{want.String(), fmt.Sprintf("%v %+v %#v %s", want, want, want, want)} {
		if strings.Contains(s, "kkkk") || strings.Contains(s, hex.EncodeToString(secret[:8])) {
			t.Fatalf("the key shows its secret: %s", s)
		}
	}
	if want.MsgID("detection:x") == "detection:x" || (*Key)(nil).MsgID("detection:x") != "detection:x" {
		t.Fatal("message IDs are not derived from the key")
	}
}

func TestKeyFile(t *testing.T) {
	p := t.TempDir() + "/" + KeyFile
	k, created, err := LoadOrCreateKeyFile(p)
	if err != nil || !created {
		t.Fatalf("create: %v, %v", created, err)
	}
	again, created, err := LoadOrCreateKeyFile(p)
	if err != nil || created || again.ID() != k.ID() {
		t.Fatalf("load: %v %v %v", again, created, err)
	}
}

func TestCheckpointEncoding(t *testing.T) {
	key := testKey(t, 0)
	cp := Checkpoint{Anchor: Anchor{Seq: 7, Hash: strings.Repeat("ab", 32), Stream: 9, Keyed: true},
		Time: t0, Unsealed: []Break{{Kind: BreakUndecodable, Stream: 4, After: 3, Detail: "x"}}}
	b, err := EncodeCheckpoint(cp, key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeCheckpoint(b, key)
	if err != nil || got.Anchor != cp.Anchor || !got.Time.Equal(t0) || len(got.Unsealed) != 1 {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	tampered := strings.Replace(string(b), `"seq":7`, `"seq":8`, 1)
	tests := []struct {
		name string
		data []byte
		key  *Key
	}{
		{"tampered", []byte(tampered), key},
		{"another key", b, testKey(t, 1)},
		{"garbage", []byte("not json"), key},
		{"trailing data", append(append([]byte{}, b...), '{', '}'), key},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeCheckpoint(tt.data, tt.key); !errors.Is(err, ErrBroken) {
				t.Fatalf("DecodeCheckpoint = %v, want ErrBroken", err)
			}
		})
	}
}

// A keyed in-memory chain with garbage, a forged record, an edited one and a copy
// inserted: Audit lists every break, and the chain goes on from the last good record.
func TestAuditListsEveryBreak(t *testing.T) {
	ctx := context.Background()
	key, wrong := testKey(t, 0), testKey(t, 1)
	m := NewMemoryWithKey(key)
	var good []Record
	for i := range 3 {
		r, err := m.Append(ctx, entry(i))
		if err != nil {
			t.Fatal(err)
		}
		good = append(good, r)
	}
	edited := good[2]
	edited.Payload = json.RawMessage(`{"n":1}`)
	unsigned := Link(nentry(50), 3, good[2].Hash)
	var stored []Message
	add := func(b []byte) { stored = append(stored, Message{Stream: uint64(len(stored) + 1), Data: b}) }
	for _, r := range good {
		add(encode(t, r))
	}
	add([]byte("not json"))                                        // 4
	add(encode(t, LinkSigned(nentry(40), 3, good[2].Hash, wrong))) // 5: forged, correctly linked
	add(encode(t, edited))                                         // 6: edited
	add(encode(t, good[1]))                                        // 7: a copy
	add(encode(t, unsigned))                                       // 8: linked, no MAC
	next := LinkSigned(nentry(3), 3, good[2].Hash, key)            // the chain goes on
	add(encode(t, next))                                           // 9
	add(encode(t, LinkSigned(nentry(4), 4, next.Hash, key)))       // 10
	rep, err := Audit(msgs(stored), nil, key)
	if err != nil {
		t.Fatal(err)
	}
	wantKinds := []BreakKind{BreakUndecodable, BreakMAC, BreakEdited, BreakLink, BreakNoMAC}
	if len(rep.Breaks) != len(wantKinds) {
		t.Fatalf("breaks %+v", rep.Breaks)
	}
	for i, b := range rep.Breaks {
		if b.Kind != wantKinds[i] || b.Stream != uint64(4+i) || b.After != 3 {
			t.Fatalf("break %d = %+v, want %s at stream sequence %d after record 3", i, b, wantKinds[i], 4+i)
		}
	}
	if rep.Records != 5 || rep.HeadSeq != 5 || rep.HeadStream != 10 || rep.Intact() {
		t.Fatalf("report %+v", rep)
	}
	// Without the key the forged record passes (and takes the place of the genuine one).
	if rep, _ := Audit(msgs(stored), nil, nil); rep.Breaks[1].Kind == BreakMAC {
		t.Fatalf("MACs checked without a key: %+v", rep.Breaks)
	}

	// A seal over them: every break is listed as sealed, the chain is intact.
	e, err := SealEntry(Seal{Epoch: 1, Breaks: rep.Unsealed(), By: "ana", Reason: "test"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Normalize(); err != nil {
		t.Fatal(err)
	}
	seal := LinkSigned(e, rep.HeadSeq, rep.Head, key)
	add(encode(t, seal))
	rep, err = Audit(msgs(stored), nil, key)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Intact() || len(rep.Breaks) != 5 || rep.Epochs != 1 {
		t.Fatalf("after the seal: %+v", rep)
	}
	for _, b := range rep.Breaks {
		if b.SealedBy != seal.Seq {
			t.Fatalf("break %s not sealed by %d", b, seal.Seq)
		}
	}
	// A seal forged without the key seals nothing.
	stored = stored[:len(stored)-1]
	add(encode(t, LinkSigned(e, rep.HeadSeq-1, next.Hash, wrong)))
	if rep, _ := Audit(msgs(stored), nil, key); rep.Intact() {
		t.Fatal("a forged seal sealed the breaks")
	}
}

// Records without a MAC are accepted as unauthenticated before the first MAC'd one (a
// ledger written before MACs), and are breaks after it.
func TestAuditUnauthenticatedPrefix(t *testing.T) {
	key := testKey(t, 0)
	legacy := NewMemory()
	for i := range 3 {
		if _, err := legacy.Append(context.Background(), entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	recs := legacy.Records()
	var stored []Message
	for _, r := range recs {
		stored = append(stored, Message{Stream: r.Seq, Data: encode(t, r)})
	}
	keyed := LinkSigned(nentry(3), 3, recs[2].Hash, key)
	stored = append(stored, Message{Stream: 4, Data: encode(t, keyed)})
	stored = append(stored, Message{Stream: 5, Data: encode(t, Link(nentry(4), 4, keyed.Hash))})
	rep, err := Audit(msgs(stored), nil, key)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Unauthenticated != 3 || rep.Records != 4 || len(rep.Breaks) != 1 || rep.Breaks[0].Kind != BreakNoMAC {
		t.Fatalf("report %+v", rep)
	}
}

// Checkpoints make a cut-off and a rewritten chain visible.
func TestAuditCheckpoints(t *testing.T) {
	key := testKey(t, 0)
	chain := func(n int, salt string) []Message {
		m := NewMemoryWithKey(key)
		var out []Message
		for i := range n {
			e := entry(i)
			if i >= 5 {
				e.ID += salt
			}
			r, err := m.Append(context.Background(), e)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, Message{Stream: r.Seq, Data: encode(t, r)})
		}
		return out
	}
	full := chain(10, "")
	var cps []Message
	for i, at := range []int{4, 8} {
		r, _ := DecodeRecord(full[at-1].Data)
		b, err := EncodeCheckpoint(Checkpoint{Anchor: Anchor{Seq: r.Seq, Hash: r.Hash, Stream: uint64(at), Keyed: true}, Time: t0}, key)
		if err != nil {
			t.Fatal(err)
		}
		cps = append(cps, Message{Stream: uint64(i + 1), Data: b})
	}
	cps = append(cps, Message{Stream: 3, Data: []byte("garbage checkpoint")})
	tests := []struct {
		name  string
		chain []Message
		want  []BreakKind
	}{
		{"intact", full, []BreakKind{BreakCheckpoint}},
		{"cut off", full[:6], []BreakKind{BreakCheckpoint, BreakTruncated}},
		{"rewritten after 5", chain(10, "-rewritten"), []BreakKind{BreakCheckpoint, BreakRewritten}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := Audit(msgs(tt.chain), msgs(cps), key)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Breaks) != len(tt.want) || rep.Checkpoints != 2 {
				t.Fatalf("report %+v", rep)
			}
			for i, b := range rep.Breaks {
				if b.Kind != tt.want[i] {
					t.Fatalf("break %d: %s, want %s", i, b, tt.want[i])
				}
			}
		})
	}
}

// Replay's in-memory ledger has no key: its records are what they were before MACs.
func TestMemoryWithoutKeyHasNoMAC(t *testing.T) {
	m := NewMemory()
	r, err := m.Append(context.Background(), entry(1))
	if err != nil || r.MAC != "" || r.Hash != Link(nentry(1), 0, Genesis).Hash {
		t.Fatalf("record %+v, %v", r, err)
	}
	if rep, err := Audit(m.Messages(context.Background()), nil, nil); err != nil || !rep.Intact() || rep.Records != 1 {
		t.Fatalf("audit %+v, %v", rep, err)
	}
}

func FuzzDecodeCheckpoint(f *testing.F) {
	key := testKey(f, 0)
	b, _ := EncodeCheckpoint(Checkpoint{Anchor: Anchor{Seq: 1, Hash: Genesis, Stream: 1}, Time: t0}, key)
	f.Add(b)
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := DecodeCheckpoint(data, key); err != nil && !errors.Is(err, ErrBroken) {
			t.Fatalf("error %v does not wrap ErrBroken", err)
		}
	})
}

func FuzzChecker(f *testing.F) {
	key := testKey(f, 0)
	f.Add(encode(f, LinkSigned(nentry(1), 0, Genesis, key)))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := NewChecker(key, GenesisAnchor, 1)
		r, b := c.Next(Message{Stream: 1, Data: data})
		if b == nil && (r.Seq != 1 || c.Head().Hash != r.Hash) {
			t.Fatalf("accepted %+v but the head is %+v", r, c.Head())
		}
		if b != nil && c.Head() != GenesisAnchor {
			t.Fatalf("a break moved the head: %+v", c.Head())
		}
	})
}
