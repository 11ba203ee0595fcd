package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/ledger"
	ledgerjs "github.com/killswitch-dev/killswitch/ledger/jetstream"
	"github.com/nats-io/nats.go/jetstream"
)

// verify lists every break with a non-zero exit; seal covers them and verify is clean
// again, listing them as sealed; without the key verify refuses, unless --no-key.
func TestLedgerVerifyAndSeal(t *testing.T) {
	ctx := context.Background()
	srv := testharness.NATS(t)
	js, err := jetstream.New(testharness.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key, _, err := ledger.LoadOrCreateKeyFile(filepath.Join(dir, ledger.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ledgerjs.OpenStream(ctx, js, ledgerjs.StreamConfig{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	add := func(id string) {
		t.Helper()
		if _, err := s.Append(ctx, ledger.Entry{Type: ledger.TypeControl, ID: id, Time: time.Unix(1, 0), Payload: json.RawMessage(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	add("a")
	add("b")
	wrong, _ := ledger.NewKey([]byte(strings.Repeat("w", ledger.KeySize)))
	forged := ledger.LinkSigned(ledger.Entry{Type: ledger.TypeControl, ID: "forged", Time: time.Unix(2, 0), Payload: json.RawMessage(`{}`)},
		2, s.Integrity().Head.Hash, wrong)
	fb, _ := json.Marshal(forged)
	for _, data := range [][]byte{[]byte("garbage"), fb} {
		if _, err := js.Publish(ctx, "killswitch.ledger", data); err != nil {
			t.Fatal(err)
		}
	}
	add("c")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	url := srv.URL()

	code, out, stderr := run(t, "ledger", "verify", "--nats", url, "--data-dir", dir)
	if code != 1 || !strings.HasPrefix(out, "BROKEN: 2 unsealed breaks") || strings.Count(out, "BREAK: ") != 2 ||
		!strings.Contains(out, "stream sequence 3: undecodable") || !strings.Contains(out, "stream sequence 4 (record 3): mac") {
		t.Fatalf("verify: %d\n%s%s", code, out, stderr)
	}
	t.Setenv(ledger.EnvKey, hex.EncodeToString([]byte(strings.Repeat("w", ledger.KeySize))))
	if code, out, _ := run(t, "ledger", "verify", "--nats", url); code != 1 || !strings.Contains(out, "mac") {
		t.Fatalf("verify with another key: %d\n%s", code, out)
	}
	t.Setenv(ledger.EnvKey, "")
	t.Setenv("KILLSWITCH_DATA_DIR", t.TempDir())
	if code, _, stderr := run(t, "ledger", "verify", "--nats", url); code != 1 || !strings.Contains(stderr, "no MAC key") {
		t.Fatalf("verify without a key: %d %s", code, stderr)
	}
	if code, out, _ := run(t, "ledger", "verify", "--nats", url, "--no-key"); code != 1 || !strings.Contains(out, "NOT checked") {
		t.Fatalf("verify --no-key: %d\n%s", code, out)
	}
	keyFile := filepath.Join(dir, ledger.KeyFile)
	if code, out, stderr := run(t, "ledger", "seal", "--nats", url, "--key-file", keyFile); code != 2 {
		t.Fatalf("seal without --by: %d %s %s", code, out, stderr)
	}
	code, out, stderr = run(t, "ledger", "seal", "--nats", url, "--key-file", keyFile, "--by", "ana", "--reason", "test")
	if code != 0 || !strings.HasPrefix(out, "sealed 2 breaks: epoch 1, seal record 4") {
		t.Fatalf("seal: %d\n%s%s", code, out, stderr)
	}
	code, out, stderr = run(t, "ledger", "verify", "--nats", url, "--key-file", keyFile)
	if code != 0 || !strings.HasPrefix(out, "ok: 4 records, chain intact, head ") || strings.Count(out, "sealed by record 4: ") != 2 {
		t.Fatalf("verify after the seal: %d\n%s%s", code, out, stderr)
	}
	code, out, _ = run(t, "ledger", "verify", "--nats", url, "--key-file", keyFile, "--json")
	var rep ledger.Report
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || rep.Records != 4 || len(rep.Breaks) != 2 {
		t.Fatalf("verify --json: %d %v\n%s", code, err, out)
	}
	if code, out, _ := run(t, "ledger", "seal", "--nats", url, "--key-file", keyFile, "--by", "ana"); code != 0 || !strings.HasPrefix(out, "nothing to seal") {
		t.Fatalf("second seal: %d %s", code, out)
	}
	if b, err := os.ReadFile(keyFile); err != nil || strings.Contains(out, strings.TrimSpace(string(b))) {
		t.Fatal(fmt.Sprint("the key shows in the output: ", err))
	}
}
