package service_test

import (
	"bytes"
	"context"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	ledgerjs "github.com/killswitch-dev/killswitch/ledger/jetstream"
	"github.com/nats-io/nats.go/jetstream"
)

// Garbage on the ledger's subject never stops the service: detections are still
// recorded and acted on, readiness says "degraded: ledger integrity" while answering
// 200, /api/status lists the break, a restart starts, and after a seal the service
// reports the ledger intact again.
func TestServiceSurvivesLedgerGarbage(t *testing.T) {
	dir := t.TempDir()
	cfg := capConfig(map[string]string{"mailer": "acc-1"})
	s := start(t, options{cfg: cfg, dataDir: dir})
	if err := s.nc.Publish("killswitch.ledger", []byte("not a record")); err != nil {
		t.Fatal(err)
	}
	s.publish(t, crossing("mailer", "mailer-api"))
	waitFor(t, "the incident with its planned revocation", func() bool {
		got := s.incidents(t)
		return len(got) == 1 && len(got[0].Actions) > 0 && got[0].Actions[0].Status == incidents.ActionPlanned
	})
	degraded := func(s *running) {
		t.Helper()
		if code, b := s.api(t, http.MethodGet, "/readyz", ""); code != http.StatusOK || !bytes.Contains(b, []byte("degraded: ledger integrity")) {
			t.Fatalf("/readyz: %d %s", code, b)
		}
		if code, b := s.api(t, http.MethodGet, "/api/status", ""); code != http.StatusOK ||
			!bytes.Contains(b, []byte(`"integrity": "degraded"`)) || !bytes.Contains(b, []byte(`"kind": "undecodable"`)) {
			t.Fatalf("/api/status: %d %s", code, b)
		}
	}
	degraded(s)
	if _, b := s.api(t, http.MethodGet, "/metrics", ""); !bytes.Contains(b, []byte(`killswitch_ledger_breaks_total{kind="undecodable"} 1`)) ||
		!bytes.Contains(b, []byte("killswitch_ledger_integrity 0")) {
		t.Fatalf("metrics do not show the break")
	}
	s.stop(t)

	s = start(t, options{cfg: cfg, dataDir: dir})
	degraded(s)
	key, err := ledger.LoadKeyFile(filepath.Join(dir, ledger.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	lcfg := ledgerjs.StreamConfig{Key: key}
	rep, err := ledgerjs.Audit(context.Background(), js, lcfg)
	if err != nil || len(rep.Breaks) != 1 || rep.Records == 0 {
		t.Fatalf("audit: %+v, %v", rep, err)
	}
	if _, _, err := ledgerjs.Seal(context.Background(), js, lcfg, "ana", "test garbage"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the service to see the seal", func() bool {
		_, b := s.api(t, http.MethodGet, "/api/status", "")
		return bytes.Contains(b, []byte(`"integrity": "ok"`))
	})
	if code, b := s.api(t, http.MethodGet, "/readyz", ""); code != http.StatusOK || !bytes.Contains(b, []byte(`"ready"`)) {
		t.Fatalf("/readyz after the seal: %d %s", code, b)
	}
	if rep, err := ledgerjs.Audit(context.Background(), js, lcfg); err != nil || !rep.Intact() {
		t.Fatalf("audit after the seal: %+v, %v", rep, err)
	}
}

// A ledger that refuses appends is visible at once to whoever is paged: /readyz answers
// 200 "degraded: ledger appends failing since …" with the server's reason, /api/status
// says appends "failing" with when and how many, and killswitch_ledger_appends_failing
// is 1. The detection is not lost: once the stream takes records again, its decision is
// stored and carried out, and the service reports the ledger healthy again.
func TestServiceReportsLedgerAppendsFailing(t *testing.T) {
	ctx := context.Background()
	s := start(t, options{cfg: capConfig(map[string]string{"mailer": "acc-1"})})
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	limit := func(full bool) {
		t.Helper()
		st, err := js.Stream(ctx, "KILLSWITCH_LEDGER")
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cfg := info.Config
		cfg.MaxMsgSize = -1
		if full { // refuses every record
			cfg.MaxMsgSize = 1
		}
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	limit(true)
	s.publish(t, crossing("mailer", "mailer-api"))
	waitFor(t, "/readyz to report the failing appends", func() bool {
		code, b := s.api(t, http.MethodGet, "/readyz", "")
		return code == http.StatusOK && bytes.Contains(b, []byte("degraded: ledger appends failing since")) &&
			bytes.Contains(b, []byte("message size exceeds maximum"))
	})
	if code, b := s.api(t, http.MethodGet, "/api/status", ""); code != http.StatusOK ||
		!bytes.Contains(b, []byte(`"appends": "failing"`)) || !bytes.Contains(b, []byte(`"failing_since"`)) {
		t.Fatalf("/api/status: %d %s", code, b)
	}
	if _, b := s.api(t, http.MethodGet, "/metrics", ""); !bytes.Contains(b, []byte("killswitch_ledger_appends_failing 1")) {
		t.Fatal("metrics do not show the failing appends")
	}

	limit(false)
	waitFor(t, "the incident with its planned revocation", func() bool {
		got := s.incidents(t)
		return len(got) == 1 && len(got[0].Actions) > 0 && got[0].Actions[0].Status == incidents.ActionPlanned
	})
	waitFor(t, "/readyz to report the ledger healthy", func() bool {
		code, b := s.api(t, http.MethodGet, "/readyz", "")
		return code == http.StatusOK && bytes.Contains(b, []byte(`"ready"`))
	})
	if code, b := s.api(t, http.MethodGet, "/api/status", ""); code != http.StatusOK || !bytes.Contains(b, []byte(`"appends": "ok"`)) {
		t.Fatalf("/api/status: %d %s", code, b)
	}
	if _, b := s.api(t, http.MethodGet, "/metrics", ""); !bytes.Contains(b, []byte("killswitch_ledger_appends_failing 0")) {
		t.Fatal("metrics still show failing appends")
	}
}
