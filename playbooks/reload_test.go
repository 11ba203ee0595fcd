package playbooks_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/playbooks"
)

func notifyModule(msg string) string {
	return playbookModule("hot", "enforce", `decision := {"actions": [{"type": "notify", "message": "`+msg+`"}], "reason": "r"}`)
}

func messageOf(t *testing.T, res playbooks.Result) string {
	t.Helper()
	if res.Escalated || len(res.Decision.Actions) != 1 {
		t.Fatalf("result = %+v", res)
	}
	return res.Decision.Actions[0].Message
}

// TestReloadSwapsValidAndKeepsOldOnBroken: a valid change is swapped in; a broken change
// is refused with file:line while the previous revision keeps serving; fixing it swaps.
func TestReloadSwapsValidAndKeepsOldOnBroken(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v1")})
	var events []playbooks.ReloadEvent
	e := newEngine(t, playbooks.Options{
		Sources:  []playbooks.Source{playbooks.DirSource(dir)},
		OnReload: func(ev playbooks.ReloadEvent) { events = append(events, ev) },
	})
	in := shippedInput(t, "exfil_critical")
	rev1 := e.Revision()
	if got := messageOf(t, e.Evaluate(ctx, in)); got != "v1" {
		t.Fatalf("message %q", got)
	}

	if changed, err := e.Reload(ctx); changed || err != nil {
		t.Fatalf("reload without change: %v %v", changed, err)
	}

	writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v2")})
	if changed, err := e.Reload(ctx); !changed || err != nil {
		t.Fatalf("valid change: changed=%v err=%v", changed, err)
	}
	rev2 := e.Revision()
	if rev2 == rev1 || messageOf(t, e.Evaluate(ctx, in)) != "v2" {
		t.Fatalf("valid change not serving: %s", rev2)
	}

	writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v3") + "\nbroken := {\n"})
	changed, err := e.Reload(ctx)
	if changed || !errors.Is(err, playbooks.ErrCompile) || !strings.Contains(err.Error(), filepath.Join(dir, "hot.rego")+":") {
		t.Fatalf("broken change: changed=%v err=%v", changed, err)
	}
	if e.Revision() != rev2 || messageOf(t, e.Evaluate(ctx, in)) != "v2" || !errors.Is(e.LastReloadError(), playbooks.ErrCompile) {
		t.Fatalf("broken change replaced the serving playbooks")
	}
	// Polling the same broken content again reports the same error without recompiling.
	if _, err := e.Reload(ctx); !errors.Is(err, playbooks.ErrCompile) || len(events) != 2 {
		t.Fatalf("second look at the broken change: %v, %d events", err, len(events))
	}

	writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v4")})
	if changed, err := e.Reload(ctx); !changed || err != nil || e.LastReloadError() != nil {
		t.Fatalf("fix: changed=%v err=%v", changed, err)
	}
	if messageOf(t, e.Evaluate(ctx, in)) != "v4" {
		t.Fatal("fix not serving")
	}
	if len(events) != 3 || events[0].Err != nil || events[1].Err == nil || events[1].Revision != rev2 || events[2].Previous != rev2 {
		t.Errorf("events = %+v", events)
	}
}

// TestWatchReloadsUnderLoad: Watch picks up file changes (fsnotify, debounced) while
// evaluations run concurrently; a broken edit never interrupts serving. Run with -race.
func TestWatchReloadsUnderLoad(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v1")})
	e := newEngine(t, playbooks.Options{
		Sources:      []playbooks.Source{playbooks.DirSource(dir)},
		Debounce:     20 * time.Millisecond,
		PollInterval: -1, // events only: the test proves the watcher works
	})
	watchDone := make(chan error, 1)
	go func() { watchDone <- e.Watch(ctx) }()

	in := shippedInput(t, "exfil_critical")
	var stop atomic.Bool
	var bad atomic.Value
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				res := e.Evaluate(ctx, in)
				if res.Escalated || len(res.Decision.Actions) != 1 {
					bad.Store(res)
					return
				}
				if m := res.Decision.Actions[0].Message; m != "v1" && m != "v2" && m != "v3" {
					bad.Store(res)
					return
				}
			}
		}()
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Give the watcher time to register before the first write.
	time.Sleep(100 * time.Millisecond)
	rev1 := e.Revision()
	writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v2")})
	waitFor("v2", func() bool { return e.Revision() != rev1 })

	rev2 := e.Revision()
	writeFiles(t, dir, map[string]string{"sub/broken.rego": "package killswitch.playbooks.broken\n\nx := {\n"})
	waitFor("the reload error", func() bool { return e.LastReloadError() != nil })
	if e.Revision() != rev2 {
		t.Fatal("broken edit replaced the serving revision")
	}
	if err := os.Remove(filepath.Join(dir, "sub", "broken.rego")); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v3")})
	waitFor("v3", func() bool { return e.Revision() != rev2 && e.LastReloadError() == nil })

	stop.Store(true)
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatalf("an evaluation during reloads went wrong: %+v", v)
	}
	cancel()
	if err := <-watchDone; err != nil {
		t.Fatal(err)
	}
}
