package actions

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/playbooks"
)

// notes records what the Notifier published.
type notes struct {
	mu  sync.Mutex
	got []Announcement
}

func (n *notes) Page(_ context.Context, _ string, v any) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.got = append(n.got, v.(Announcement))
	return nil
}

// vetoRequest is r.request with a veto window.
func (r *rig) vetoRequest(vendor, incident string, window time.Duration) Request {
	req := r.request(vendor, incident, false, revokeAPI)
	req.Result.Decision.VetoWindow = playbooks.Duration(window)
	return req
}

// A decision with a veto window announces its destructive action and runs it when the
// window ends, once even when two instances' ticks see the end; a veto cancels it (and
// gives its budget unit back); pause and the breaker hold it for approval at the end; a
// redelivered decision reports the window; approve, reject and a second veto answer
// ErrDecided.
func TestVetoWindows(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		// during runs while the window is open; it returns what a tick at its end must
		// leave.
		during     func(t *testing.T, r, other *rig, id string) incidents.ActionStatus
		applies    int
		wantStages map[string]int
	}{
		{
			name:       "the window ends: it runs, once across two instances",
			during:     func(*testing.T, *rig, *rig, string) incidents.ActionStatus { return incidents.ActionVerified },
			applies:    1,
			wantStages: map[string]int{"veto-window": 1, "window-ended": 1, "intent": 1, "applied": 1, "verified": 1},
		},
		{
			name: "vetoed: nothing runs",
			during: func(t *testing.T, r, _ *rig, id string) incidents.ActionStatus {
				u, err := r.runner.Approvals().Veto(ctx, id, "ana", "a planned migration")
				if err != nil || u.Ref.Status != incidents.ActionVetoed || u.Incident != "inc-1" {
					t.Fatalf("veto: %+v, %v", u, err)
				}
				if _, err := r.runner.Approvals().Veto(ctx, id, "bob", ""); !errors.Is(err, ErrDecided) {
					t.Fatalf("second veto: %v, want ErrDecided", err)
				}
				if b := r.runner.Budget(ctx); b.Remaining != b.Limit {
					t.Fatalf("the vetoed action kept its budget unit: %+v", b)
				}
				return incidents.ActionVetoed
			},
			wantStages: map[string]int{"veto-window": 1, "vetoed": 1},
		},
		{
			name: "paused at the end: held for approval",
			during: func(t *testing.T, r, _ *rig, _ string) incidents.ActionStatus {
				if err := r.runner.Control().Pause(ctx, "ana", "drill"); err != nil {
					t.Fatal(err)
				}
				return incidents.ActionHeld
			},
			wantStages: map[string]int{"veto-window": 1, "window-held": 1},
		},
		{
			name: "breaker open at the end: held for approval",
			during: func(t *testing.T, r, _ *rig, _ string) incidents.ActionStatus {
				if err := r.runner.Control().openBreaker(ctx, "test"); err != nil {
					t.Fatal(err)
				}
				return incidents.ActionHeld
			},
			wantStages: map[string]int{"veto-window": 1, "window-held": 1},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			store := NewMemoryStore()
			r, other := newRig(t, Settings{}, store, "a"), newRig(t, Settings{}, store, "b")
			other.exec, other.led = r.exec, r.led
			other.runner.d.Executors, other.runner.d.Ledger = r.runner.d.Executors, r.runner.d.Ledger
			other.runner.control.ledger = r.runner.d.Ledger
			n := &notes{}
			r.runner.d.Notifier = n
			refs, err := r.runner.Act(ctx, r.vetoRequest("v01", "inc-1", 90*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			ref := refs[0]
			if ref.Status != incidents.ActionAnnounced || ref.RunsAt == nil || !ref.RunsAt.Equal(t0.Add(90*time.Second)) || r.exec.count("api") != 0 {
				t.Fatalf("announced: %+v, %d applies", ref, r.exec.count("api"))
			}
			if len(n.got) != 1 || n.got[0].Action != ref.ID || n.got[0].Window != "1m30s" || n.got[0].Kind != VetoGuard {
				t.Fatalf("announcements %+v", n.got)
			}
			// Redelivered: the window stands; approve and reject are refused.
			if again, err := r.runner.Act(ctx, r.vetoRequest("v01", "inc-1", 90*time.Second)); err != nil || again[0].Status != incidents.ActionAnnounced || len(n.got) != 1 {
				t.Fatalf("redelivered: %+v, %v", again, err)
			}
			if _, err := r.runner.Approvals().Approve(ctx, ref.ID, "ana", ""); !errors.Is(err, ErrDecided) {
				t.Fatalf("approve during the window: %v", err)
			}
			if _, err := r.runner.Approvals().Reject(ctx, ref.ID, "ana", ""); !errors.Is(err, ErrDecided) {
				t.Fatalf("reject during the window: %v", err)
			}
			// A tick before the end does nothing.
			r.clk.Advance(89 * time.Second)
			other.clk.Advance(89 * time.Second)
			if us, err := r.runner.Approvals().Expire(ctx); err != nil || len(us) != 0 || r.exec.count("api") != 0 {
				t.Fatalf("tick before the end: %+v, %v", us, err)
			}
			want := c.during(t, r, other, ref.ID)
			r.clk.Advance(time.Second)
			other.clk.Advance(time.Second)
			var wg sync.WaitGroup
			var updates [2][]Update
			var errs [2]error
			for i, x := range []*rig{r, other} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					updates[i], errs[i] = x.runner.Approvals().Expire(ctx)
				}()
			}
			wg.Wait()
			if errs[0] != nil || errs[1] != nil {
				t.Fatal(errs)
			}
			var got []incidents.ActionStatus
			for _, us := range updates {
				for _, u := range us {
					got = append(got, u.Ref.Status)
				}
			}
			switch {
			case want == incidents.ActionVetoed && len(got) != 0:
				t.Fatalf("a vetoed window ended with updates %v", got)
			case want != incidents.ActionVetoed && (len(got) != 1 || got[0] != want):
				t.Fatalf("updates at the end %v, want one %s", got, want)
			}
			if r.exec.count("api") != c.applies {
				t.Fatalf("applied %d times, want %d", r.exec.count("api"), c.applies)
			}
			if st := r.stages(t); !sameCounts(st, c.wantStages) {
				t.Fatalf("ledger stages %v, want %v", st, c.wantStages)
			}
			// A later tick changes nothing more.
			r.clk.Advance(time.Minute)
			if us, err := r.runner.Approvals().Expire(ctx); err != nil || len(us) != 0 || r.exec.count("api") != c.applies {
				t.Fatalf("a later tick: %+v, %v", us, err)
			}
		})
	}
}

// sameCounts reports whether got has exactly the stages of want.
func sameCounts(got, want map[string]int) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// An action held at the end of its window (paused) is approved after the resume and
// runs once; vetoing it then is refused, as is vetoing an unknown action.
func TestVetoWindowHeldThenApproved(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, Settings{}, nil, "a")
	refs, err := r.runner.Act(ctx, r.vetoRequest("v02", "inc-2", 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	id := refs[0].ID
	if err := r.runner.Control().Pause(ctx, "ana", "drill"); err != nil {
		t.Fatal(err)
	}
	r.clk.Advance(5 * time.Second)
	if us, err := r.runner.Approvals().Expire(ctx); err != nil || len(us) != 1 || us[0].Ref.Status != incidents.ActionHeld {
		t.Fatalf("end while paused: %+v, %v", us, err)
	}
	if _, err := r.runner.Approvals().Veto(ctx, id, "ana", ""); !errors.Is(err, ErrDecided) {
		t.Fatalf("veto of a held action: %v, want ErrDecided", err)
	}
	if _, err := r.runner.Approvals().Veto(ctx, "act-nope", "ana", ""); !errors.Is(err, ErrUnknownAction) {
		t.Fatalf("veto of an unknown action: %v", err)
	}
	if err := r.runner.Control().Resume(ctx, "ana"); err != nil {
		t.Fatal(err)
	}
	u, err := r.runner.Approvals().Approve(ctx, id, "bob", "checked")
	if err != nil || u.Ref.Status != incidents.ActionVerified || r.exec.count("api") != 1 {
		t.Fatalf("approved after the window: %+v, %v, %d applies", u, err, r.exec.count("api"))
	}
}
