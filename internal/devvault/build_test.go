package devvault

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// writeModule writes a tiny main module into dir: a real go build, in a second or two,
// that exercises Build without compiling Vault.
func writeModule(t *testing.T, dir, message string) {
	t.Helper()
	files := map[string]string{
		"go.mod":       "module example.com/tiny\n\ngo 1.22\n",
		"main.go":      "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"" + message + "\") }\n",
		"main_test.go": "package main\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFindSourceDir(t *testing.T) {
	repo := t.TempDir()
	mod := filepath.Join(repo, "cmd", "devvault")
	deep := filepath.Join(repo, "internal", "a", "b")
	for _, d := range []string{mod, deep} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		start   string
		want    string
		wantErr error
	}{
		{"from the repository root", repo, mod, nil},
		{"from a nested package", deep, mod, nil},
		{"from the module itself", mod, mod, nil},
		{"outside any repository", t.TempDir(), "", ErrSourceNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FindSourceDir(tt.start)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("FindSourceDir(%s) error = %v, want %v", tt.start, err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("FindSourceDir(%s) = %q, want %q", tt.start, got, tt.want)
			}
		})
	}
}

func TestFindSourceDirFindsThisRepository(t *testing.T) {
	dir, err := FindSourceDir(".")
	if err != nil {
		t.Fatalf("FindSourceDir from the package directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "main.go")); err != nil {
		t.Fatalf("found %s, which has no main.go: %v", dir, err)
	}
}

func TestSourceHash(t *testing.T) {
	dir := t.TempDir()
	writeModule(t, dir, "one")
	base, err := SourceHash(dir, "go1")
	if err != nil {
		t.Fatal(err)
	}
	again, err := SourceHash(dir, "go1")
	if err != nil {
		t.Fatal(err)
	}
	if base != again {
		t.Fatalf("hash not stable: %s then %s", base, again)
	}

	tests := []struct {
		name    string
		change  func(t *testing.T)
		extra   string
		changed bool
	}{
		{"test files do not count", func(t *testing.T) {
			os.WriteFile(filepath.Join(dir, "main_test.go"), []byte("package main\n// edited\n"), 0o644)
		}, "go1", false},
		{"other files do not count", func(t *testing.T) {
			os.WriteFile(filepath.Join(dir, "README.md"), []byte("hi\n"), 0o644)
		}, "go1", false},
		{"the go version counts", func(t *testing.T) {}, "go2", true},
		{"a new go.sum counts", func(t *testing.T) {
			os.WriteFile(filepath.Join(dir, "go.sum"), []byte("x\n"), 0o644)
		}, "go1", true},
		{"a source edit counts", func(t *testing.T) { writeModule(t, dir, "two") }, "go1", true},
	}
	prev := base
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.change(t)
			got, err := SourceHash(dir, tt.extra)
			if err != nil {
				t.Fatal(err)
			}
			if (got != prev) != tt.changed {
				t.Fatalf("hash changed = %t, want %t", got != prev, tt.changed)
			}
			if tt.extra == "go1" {
				prev = got
			}
		})
	}
}

func TestSourceHashMissingDir(t *testing.T) {
	if _, err := SourceHash(filepath.Join(t.TempDir(), "absent"), ""); err == nil {
		t.Fatal("SourceHash of a missing directory succeeded")
	}
}

func TestBuildBuildsOnceAndReuses(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	src, cache := t.TempDir(), t.TempDir()
	writeModule(t, src, "hello from the tiny module")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Several concurrent callers: one builds, the others wait on the lock and reuse.
	const callers = 4
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		progress bytes.Buffer
		bins     = make([]string, callers)
		errs     = make([]error, callers)
	)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var p bytes.Buffer
			bins[i], errs[i] = Build(ctx, BuildOptions{SourceDir: src, CacheDir: cache, Progress: &p})
			mu.Lock()
			progress.Write(p.Bytes())
			mu.Unlock()
		}()
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("Build #%d: %v", i, errs[i])
		}
		if bins[i] != bins[0] {
			t.Fatalf("Build #%d returned %s, #0 returned %s", i, bins[i], bins[0])
		}
	}
	if n := strings.Count(progress.String(), "building dev Vault"); n != 1 {
		t.Fatalf("built %d times, want once; progress:\n%s", n, progress.String())
	}
	out, err := exec.Command(bins[0]).Output()
	if err != nil || strings.TrimSpace(string(out)) != "hello from the tiny module" {
		t.Fatalf("built binary printed %q, %v", out, err)
	}

	var quiet bytes.Buffer
	again, err := Build(ctx, BuildOptions{SourceDir: src, CacheDir: cache, Progress: &quiet})
	if err != nil || again != bins[0] {
		t.Fatalf("rebuild = %s, %v; want cached %s", again, err, bins[0])
	}
	if quiet.Len() != 0 {
		t.Fatalf("reusing the cached binary printed progress: %q", quiet.String())
	}

	writeModule(t, src, "edited")
	edited, err := Build(ctx, BuildOptions{SourceDir: src, CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	if edited == bins[0] {
		t.Fatal("an edited source reused the old binary")
	}
}

func TestBuildErrors(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	broken := t.TempDir()
	writeModule(t, broken, "x")
	if err := os.WriteFile(filepath.Join(broken, "bad.go"), []byte("package main\n\nfunc broken() { undefinedThing() }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := t.TempDir()
	writeModule(t, ok, "x")
	tests := []struct {
		name     string
		opts     BuildOptions
		wantErr  error
		wantText string
	}{
		{"compile error", BuildOptions{SourceDir: broken}, ErrBuildFailed, "undefinedThing"},
		{"no go command", BuildOptions{SourceDir: ok, GoCommand: "/nonexistent/go"}, ErrGoNotFound, ""},
		{"missing source", BuildOptions{SourceDir: filepath.Join(ok, "absent")}, nil, "hash dev Vault sources"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.CacheDir = t.TempDir()
			bin, err := Build(context.Background(), tt.opts)
			if err == nil {
				t.Fatalf("Build succeeded with %s", bin)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("error %q does not mention %q", err, tt.wantText)
			}
			if matches, _ := filepath.Glob(filepath.Join(tt.opts.CacheDir, "*", binaryName)); len(matches) != 0 {
				t.Fatalf("a failed build left binaries: %v", matches)
			}
		})
	}
}

func TestBuildCancelledWhileWaitingForLock(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	src, cache := t.TempDir(), t.TempDir()
	writeModule(t, src, "x")
	goVersion, err := goEnvVersion(context.Background(), "go")
	if err != nil {
		t.Fatal(err)
	}
	hash, err := SourceHash(src, goVersion)
	if err != nil {
		t.Fatal(err)
	}
	// Hold the build lock as another process would.
	unlock, err := lockFile(context.Background(), filepath.Join(cache, "devvault-"+hash[:16]+".lock"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var progress bytes.Buffer
	_, err = Build(ctx, BuildOptions{SourceDir: src, CacheDir: cache, Progress: &progress})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Build while the lock is held: %v, want deadline exceeded", err)
	}
	if !strings.Contains(progress.String(), "waiting for another process") {
		t.Fatalf("no waiting message in progress: %q", progress.String())
	}
}
