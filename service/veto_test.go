package service_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/ledger"
	ledgerjs "github.com/killswitch-dev/killswitch/ledger/jetstream"
	"github.com/killswitch-dev/killswitch/playbooks"
	"github.com/killswitch-dev/killswitch/users"
	"github.com/nats-io/nats.go/jetstream"
)

// vetoPlaybooks is the example veto-window playbook (playbooks/testdata/veto_window)
// with its window shortened to window, in a directory of its own.
func vetoPlaybooks(t testing.TB, window string) []playbooks.Source {
	t.Helper()
	const rel = "killswitch/playbooks/veto_window.rego"
	b, err := os.ReadFile(filepath.Join("..", "playbooks", "testdata", "veto_window", rel))
	if err != nil {
		t.Fatal(err)
	}
	src := strings.Replace(string(b), `window := "90s"`, `window := "`+window+`"`, 1)
	if src == string(b) {
		t.Fatal("the example playbook no longer sets window := \"90s\"")
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(rel)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, rel), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return []playbooks.Source{playbooks.DirSource(dir)}
}

// pending lists the approvals and veto windows through the API.
func (r *running) pending(t testing.TB) httpapi.Pending {
	t.Helper()
	code, b := r.api(t, http.MethodGet, "/api/approvals", "")
	var p httpapi.Pending
	if code != http.StatusOK || json.Unmarshal(b, &p) != nil || p.Approvals == nil || p.VetoWindows == nil {
		t.Fatalf("GET /api/approvals: %d %s", code, b)
	}
	return p
}

// window waits for vendor's veto window to be listed.
func (r *running) window(t testing.TB, vendor string) httpapi.PendingAction {
	t.Helper()
	var w httpapi.PendingAction
	waitFor(t, vendor+"'s veto window", func() bool {
		for _, p := range r.pending(t).VetoWindows {
			if p.Vendor == vendor {
				w = p
				return true
			}
		}
		return false
	})
	return w
}

// incident returns vendor's incident (nil when there is none yet).
func (r *running) incident(t testing.TB, vendor string) *incidents.Incident {
	t.Helper()
	for _, in := range r.incidents(t) {
		if in.Vendor == vendor {
			return &in
		}
	}
	return nil
}

// Veto windows through the real service, its embedded NATS and the real dev Vault: the
// window ends and the token is revoked and verified, the wait inside the exposure
// window; a vetoed one never runs (a viewer's veto is 403, the approver's is in the
// ledger); a window that ends while the service is down runs when it comes back.
func TestServiceVetoWindows(t *testing.T) {
	ctx := context.Background()
	rig := newVaultRig(t, "mailer", "crm", "erp")
	dir := t.TempDir()
	o := options{cfg: capConfig(rig.inv), execs: rig.execs, dataDir: dir, tick: 100 * time.Millisecond,
		playbooks: vetoPlaybooks(t, "2s")}
	s := start(t, o)
	notes, err := s.nc.SubscribeSync("killswitch.notify.mailer")
	if err != nil {
		t.Fatal(err)
	}
	store := users.Open(users.Path(dir), users.Options{})
	tok := map[string]string{}
	for name, role := range map[string]users.Role{"val": users.Viewer, "ana": users.Approver} {
		_, t2, err := store.Add(ctx, name, role)
		if err != nil {
			t.Fatal(err)
		}
		tok[name] = t2
	}

	// Nothing waits yet: empty lists, not null.
	if p := s.pending(t); len(p.Approvals)+len(p.VetoWindows) != 0 {
		t.Fatalf("pending before anything happened: %+v", p)
	}
	s.publish(t, crossing("mailer", "mailer-api"), crossing("crm", "crm-api"))
	mw, cw := s.window(t, "mailer"), s.window(t, "crm")
	if mw.VetoWindow != "2s" || mw.RemainingSeconds <= 0 || mw.RemainingSeconds > 2 || !mw.Deadline.After(mw.Since) {
		t.Fatalf("mailer's veto window as listed: %+v", mw)
	}
	m, err := notes.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no announcement on the notify subject: %v", err)
	}
	var ann actions.Announcement
	if json.Unmarshal(m.Data, &ann) != nil || ann.Action != mw.ID || ann.Kind != "veto_window" || !strings.Contains(ann.Message, "killswitch veto "+mw.ID) {
		t.Fatalf("announcement %s", m.Data)
	}
	if !rig.alive(t, "mailer") {
		t.Fatal("revoked before the window ended")
	}
	// crm: a viewer cannot veto; the approver can, and nothing runs.
	if code, b := s.apiAs(t, tok["val"], http.MethodPost, "/api/actions/"+cw.ID+"/veto", `{}`); code != http.StatusForbidden {
		t.Fatalf("veto by a viewer: %d %s, want 403", code, b)
	}
	if code, b := s.apiAs(t, tok["ana"], http.MethodPost, "/api/actions/"+cw.ID+"/veto", `{"comment":"planned export"}`); code != http.StatusOK {
		t.Fatalf("veto: %d %s", code, b)
	}
	if code, _ := s.apiAs(t, tok["ana"], http.MethodPost, "/api/actions/"+cw.ID+"/veto", `{}`); code != http.StatusConflict {
		t.Fatalf("second veto: %d, want 409", code)
	}

	waitFor(t, "mailer contained when its window ended", func() bool {
		in := s.incident(t, "mailer")
		return in != nil && in.State == incidents.StateContained
	})
	in := s.incident(t, "mailer")
	if rig.alive(t, "mailer") {
		t.Fatal("the token still works after the window ended")
	}
	if in.AnnouncedAt == nil || in.VetoWindowEndsAt == nil || in.ContainedAt.Before(*in.VetoWindowEndsAt) ||
		*in.ExposureWindowSeconds < 2 {
		t.Fatalf("milestones: announced %v, window ends %v, contained %v, exposure %v s",
			in.AnnouncedAt, in.VetoWindowEndsAt, in.ContainedAt, *in.ExposureWindowSeconds)
	}
	time.Sleep(time.Second) // crm's window is over too
	if !rig.alive(t, "crm") {
		t.Fatal("a vetoed revocation ran")
	}
	waitFor(t, "crm's action vetoed in its incident", func() bool {
		in := s.incident(t, "crm")
		return in != nil && len(in.Actions) > 0 && in.Actions[0].Status == incidents.ActionVetoed && strings.Contains(in.Actions[0].Detail, "ana")
	})
	if p := s.pending(t); len(p.VetoWindows) != 0 {
		t.Fatalf("windows still listed: %+v", p.VetoWindows)
	}
	vetoRecord(t, s, cw.ID, "ana")

	// erp: the service stops during the window and starts after its end.
	s.publish(t, crossing("erp", "erp-api"))
	ew := s.window(t, "erp")
	s.stop(t)
	time.Sleep(time.Until(ew.Deadline))
	if !rig.alive(t, "erp") {
		t.Fatal("revoked while the service was down")
	}
	s = start(t, o)
	waitFor(t, "erp revoked after the restart", func() bool { return !rig.alive(t, "erp") })
	waitFor(t, "erp contained", func() bool {
		in := s.incident(t, "erp")
		return in != nil && in.State == incidents.StateContained
	})
	verifyLedger(t, s)
}

// vetoRecord checks that the ledger holds the veto of action by who, with its incident.
func vetoRecord(t testing.TB, s *running, action, who string) {
	t.Helper()
	ctx := context.Background()
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KILLSWITCH_LEDGER")
	if err != nil {
		t.Fatal(err)
	}
	for rec, err := range ledgerjs.ReadStream(ctx, st) {
		if err != nil {
			t.Fatal(err)
		}
		var ev actions.Event
		if rec.Type == ledger.TypeAction && json.Unmarshal(rec.Payload, &ev) == nil && ev.Stage == "vetoed" && ev.Action == action {
			if ev.Approver != who || ev.Incident == "" || rec.Incident != ev.Incident {
				t.Fatalf("veto record %+v", ev)
			}
			return
		}
	}
	t.Fatalf("no veto of %s in the ledger", action)
}
