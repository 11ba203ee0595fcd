package playbooks

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// Reload re-reads the sources. When the playbooks changed (their revision differs) and
// compile, the new set is swapped in atomically and Reload reports true; evaluations
// under way finish on the set they started with. When they do not compile, the previous
// set keeps serving and the *CompileError is returned, logged, kept for
// LastReloadError and passed to OnReload.
func (e *Engine) Reload(ctx context.Context) (bool, error) {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	prev := e.cur.Load()
	lib, err := loadLibrary(e.sources, false)
	if err == nil && lib.revision() == prev.revision {
		e.failedRev = ""
		e.setStatus(nil)
		return false, nil
	}
	if err == nil && lib.revision() == e.failedRev {
		// The same broken content again (a poll): already reported.
		return false, e.LastReloadError()
	}
	var snap *snapshot
	if err == nil {
		snap, err = e.prepare(ctx, lib)
		if err != nil {
			e.failedRev = lib.revision()
		}
	}
	if err != nil {
		e.setStatus(err)
		e.log.Error("playbook reload refused; previous playbooks keep serving",
			zap.String("revision", prev.revision), zap.Error(err))
		if e.onReload != nil {
			e.onReload(ReloadEvent{Revision: prev.revision, Previous: prev.revision, Err: err})
		}
		return false, err
	}
	// Swap and clear the status under one lock: whoever sees the new revision and then
	// asks LastReloadError sees this attempt's outcome, never a stale error.
	e.statusMu.Lock()
	e.cur.Store(snap)
	e.lastErr, e.lastAt = nil, e.clock.Now()
	e.statusMu.Unlock()
	e.failedRev = ""
	e.log.Info("playbooks reloaded", zap.String("previous", prev.revision),
		zap.String("revision", snap.revision), zap.Int("playbooks", len(snap.playbooks)))
	if e.onReload != nil {
		e.onReload(ReloadEvent{Revision: snap.revision, Previous: prev.revision})
	}
	return true, nil
}

func (e *Engine) setStatus(err error) {
	e.statusMu.Lock()
	e.lastErr = err
	e.lastAt = e.clock.Now()
	e.statusMu.Unlock()
}

// Watch reloads the playbooks when files under the sources' directories change, until
// ctx ends (it then returns nil). File-system events are debounced (Options.Debounce);
// the directories are also re-read every Options.PollInterval in case an event was
// missed. Once the directories are watched, Watch re-reads them, so a change made
// between New and Watch is not missed either. The debounce restarts on every event. A
// file read half-written (an editor that truncates, then writes) is refused when it does
// not compile, and an empty or comment-only file never does: the previous playbooks keep
// serving until the write's own event reloads. Reload errors are reported through
// Reload's channels, never returned. Watch returns an error only when the watcher cannot
// start. With no directory source it just waits for ctx.
func (e *Engine) Watch(ctx context.Context) error {
	var dirs []string
	for _, s := range e.sources {
		if s.Dir != "" {
			dirs = append(dirs, s.Dir)
		}
	}
	if len(dirs) == 0 {
		<-ctx.Done()
		return nil
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	e.watchTrees(w, dirs)

	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	var poll <-chan time.Time
	if e.poll > 0 {
		t := time.NewTicker(e.poll)
		defer t.Stop()
		poll = t.C
	}
	reload := func() {
		e.watchTrees(w, dirs) // directories created or replaced since
		_, _ = e.Reload(ctx)
	}
	_, _ = e.Reload(ctx) // changes made before the directories were watched
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if strings.HasPrefix(filepath.Base(ev.Name), ".") {
				continue
			}
			debounce.Reset(e.debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			e.log.Warn("playbook watcher error; polling continues", zap.Error(err))
		case <-debounce.C:
			reload()
		case <-poll:
			reload()
		}
	}
}

// watchTrees adds every non-hidden directory under dirs to the watcher (fsnotify does not
// watch recursively). Adding a watched directory again is harmless.
func (e *Engine) watchTrees(w *fsnotify.Watcher, dirs []string) {
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if !d.IsDir() {
				return nil
			}
			if p != dir && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			if err := w.Add(p); err != nil && !errors.Is(err, fsnotify.ErrClosed) {
				e.log.Warn("cannot watch playbook directory", zap.String("dir", p), zap.Error(err))
			}
			return nil
		})
		if err != nil {
			e.log.Warn("cannot walk playbook directory", zap.String("dir", dir), zap.Error(err))
		}
	}
}
