package playbooks_test

import (
	"context"
	"errors"
	"io/fs"
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
		// An evaluation starved of CPU past the 50ms default deadline escalates by design
		// (TestEvaluateFailsSafe); on a loaded machine that happens without any reload.
		// The deadline is out of reach here so that only a reload could escalate.
		Timeout: time.Minute,
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
	// No need to wait for the watcher to register: Watch re-reads the directory once it
	// watches it, and with polling off the later edits can only arrive as events.
	rev1 := e.Revision()
	writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v2")})
	waitFor(t, "v2", func() bool { return e.Revision() != rev1 })

	rev2 := e.Revision()
	broken := filepath.Join(dir, "sub", "broken.rego")
	writeFiles(t, dir, map[string]string{"sub/broken.rego": "package killswitch.playbooks.broken\n\nx := {\n"})
	waitFor(t, "the reload error", func() bool {
		// The error about this edit, not one about a write of hot.rego caught half-done.
		err := e.LastReloadError()
		return errors.Is(err, playbooks.ErrCompile) && strings.Contains(err.Error(), broken+":")
	})
	if e.Revision() != rev2 {
		t.Fatal("broken edit replaced the serving revision")
	}
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v3")})
	waitFor(t, "v3", func() bool { return e.Revision() != rev2 && e.LastReloadError() == nil })

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

// waitFor polls cond until it holds, failing the test after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWatchRefusesHalfWrittenFile: an editor that saves in place truncates the file, then
// writes it. When the watcher reads it in between (here: always, the writer pauses past
// the debounce), the partial content is refused and the previous revision keeps serving;
// the completed write swaps in. No intermediate state drops the playbook.
func TestWatchRefusesHalfWrittenFile(t *testing.T) {
	full := notifyModule("v2")
	pkgEnd := strings.Index(full, "package ")
	pkgEnd += strings.Index(full[pkgEnd:], "\n") + 1
	cases := []struct {
		name    string
		partial string
	}{
		{"truncated", ""},
		{"metadata comments only", full[:strings.Index(full, "package ")]},
		{"up to the package clause", full[:pkgEnd]},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			dir := t.TempDir()
			hot := filepath.Join(dir, "hot.rego")
			writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v1")})
			e := newEngine(t, playbooks.Options{
				Sources:      []playbooks.Source{playbooks.DirSource(dir)},
				Debounce:     20 * time.Millisecond,
				PollInterval: -1,
				Timeout:      time.Minute,
			})
			watchDone := make(chan error, 1)
			go func() { watchDone <- e.Watch(ctx) }()
			in := shippedInput(t, "exfil_critical")
			rev1 := e.Revision()

			// The first half of the save: truncate and write a prefix, then pause.
			if err := os.WriteFile(hot, []byte(tc.partial), 0o644); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the half-written file to be refused", func() bool {
				err := e.LastReloadError()
				return errors.Is(err, playbooks.ErrCompile) && strings.Contains(err.Error(), hot+":")
			})
			if e.Revision() != rev1 || messageOf(t, e.Evaluate(ctx, in)) != "v1" {
				t.Fatal("a half-written file replaced the serving playbooks")
			}

			// The second half: the rest of the file.
			f, err := os.OpenFile(hot, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString(full[len(tc.partial):]); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the completed file", func() bool { return e.Revision() != rev1 && e.LastReloadError() == nil })
			if got := messageOf(t, e.Evaluate(ctx, in)); got != "v2" {
				t.Fatalf("message %q after the completed write", got)
			}
			cancel()
			if err := <-watchDone; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// vanishingFS lists its files but, once gone is set, cannot open the file vanish: a file
// deleted between the directory listing and the read.
type vanishingFS struct {
	fs.ReadDirFS
	vanish string
	gone   atomic.Bool
}

// Open opens name unless it has vanished.
func (v *vanishingFS) Open(name string) (fs.File, error) {
	if v.gone.Load() && name == v.vanish {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return v.ReadDirFS.Open(name)
}

// TestReloadRefusesFileVanishedMidReload: a file listed but gone when read (an editor
// replacing it) is a reload error, not a library without it: the other playbook alone
// would compile, and swapping it in would silently drop the vanished one.
func TestReloadRefusesFileVanishedMidReload(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"hot.rego":   notifyModule("v1"),
		"other.rego": playbookModule("other", "enforce", ""),
	})
	vfs := &vanishingFS{ReadDirFS: os.DirFS(dir).(fs.ReadDirFS), vanish: "hot.rego"}
	e := newEngine(t, playbooks.Options{Sources: []playbooks.Source{{Name: dir, FS: vfs}}})
	in := shippedInput(t, "exfil_critical")
	rev1 := e.Revision()

	writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v2")})
	vfs.gone.Store(true)
	changed, err := e.Reload(ctx)
	if changed || !errors.Is(err, playbooks.ErrCompile) || !strings.Contains(err.Error(), filepath.Join(dir, "hot.rego")) {
		t.Fatalf("reload with a vanished file: changed=%v err=%v", changed, err)
	}
	if e.Revision() != rev1 || len(e.Playbooks()) != 2 || messageOf(t, e.Evaluate(ctx, in)) != "v1" {
		t.Fatal("a vanished file replaced the serving playbooks")
	}

	vfs.gone.Store(false)
	if changed, err := e.Reload(ctx); !changed || err != nil || messageOf(t, e.Evaluate(ctx, in)) != "v2" {
		t.Fatalf("reload once the file is back: changed=%v err=%v", changed, err)
	}
}

// TestWatchPicksUpChangeBeforeItStarted: a change made between New and Watch (the service
// starts the watcher after connecting to NATS) is served once Watch runs, without waiting
// for a poll.
func TestWatchPicksUpChangeBeforeItStarted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v1")})
	e := newEngine(t, playbooks.Options{
		Sources:      []playbooks.Source{playbooks.DirSource(dir)},
		PollInterval: -1,
		Timeout:      time.Minute,
	})
	writeFiles(t, dir, map[string]string{"hot.rego": notifyModule("v2")})
	watchDone := make(chan error, 1)
	go func() { watchDone <- e.Watch(ctx) }()
	in := shippedInput(t, "exfil_critical")
	waitFor(t, "v2", func() bool { return messageOf(t, e.Evaluate(ctx, in)) == "v2" })
	cancel()
	if err := <-watchDone; err != nil {
		t.Fatal(err)
	}
}
