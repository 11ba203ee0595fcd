// Package devvault builds and runs the dev Vault server of cmd/devvault (a real HashiCorp
// Vault v1.14.2 in its own Go module) as a subprocess. Tests use it through
// internal/testharness; `killswitch demo` uses it at run time.
//
// Build compiles the module once per content hash into the user cache directory (a file
// lock makes parallel processes share one build); Start runs the binary on a loopback
// port and waits until Vault reports itself initialised and unsealed. The returned Process
// can be stopped, paused (SIGSTOP: Vault stops answering but keeps its state), resumed and
// restarted on the same address.
package devvault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// ModuleDir is the path of the dev Vault module relative to the repository root.
const ModuleDir = "cmd/devvault"

// binaryName is the file name of the built server inside its cache directory.
const binaryName = "devvault"

// progressInterval is how often Build reports that a build or a wait is still running.
const progressInterval = 15 * time.Second

// lockPollInterval is how often Build retries the build lock while another process holds it.
const lockPollInterval = 200 * time.Millisecond

// ErrSourceNotFound means no cmd/devvault/go.mod was found from the starting directory
// up to the file-system root. Permanent: run from inside the Killswitch repository or
// set BuildOptions.SourceDir.
var ErrSourceNotFound = errors.New("dev Vault source (cmd/devvault/go.mod) not found")

// ErrGoNotFound means the go command is not on PATH, so the dev Vault cannot be built.
// Permanent.
var ErrGoNotFound = errors.New("go command not found on PATH")

// ErrBuildFailed means `go build` of the dev Vault exited with an error; the error text
// carries the tail of its output. Usually permanent (a compile error); a network failure
// while downloading modules can succeed on a retry.
var ErrBuildFailed = errors.New("building the dev Vault failed")

// BuildOptions configures Build.
type BuildOptions struct {
	// SourceDir is the directory of the cmd/devvault module (the one holding its go.mod).
	// Empty means FindSourceDir from the working directory.
	SourceDir string
	// CacheDir is where built binaries are kept, one subdirectory per content hash.
	// Empty means os.UserCacheDir()/killswitch (os.TempDir()/killswitch-cache when
	// there is no user cache directory).
	CacheDir string
	// GoCommand is the go command to build with. Empty means "go" from PATH.
	GoCommand string
	// Progress, when not nil, receives human-readable progress lines ("building dev Vault
	// (first time takes a few minutes)…", "still building… 45s"). Nothing is written
	// when a cached binary is reused.
	Progress io.Writer
}

// FindSourceDir walks up from start (a directory) looking for cmd/devvault/go.mod and
// returns the absolute path of that module directory.
func FindSourceDir(start string) (string, error) {
	dir, err := filepath.Abs(start)
	if err != nil {
		return "", fmt.Errorf("find dev Vault source from %q: %w", start, err)
	}
	for {
		candidate := filepath.Join(dir, filepath.FromSlash(ModuleDir))
		if fi, err := os.Stat(filepath.Join(candidate, "go.mod")); err == nil && fi.Mode().IsRegular() {
			return candidate, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%w (searched from %s up to /)", ErrSourceNotFound, start)
		}
		dir = parent
	}
}

// Build returns the path of a dev Vault binary built from the module's current sources,
// building it first when no binary for this content hash is cached. The hash covers the
// module's go.mod, go.sum and non-test .go files and the go version, so editing the
// server rebuilds it. Concurrent callers, in this process or others, build once: the
// others wait on a file lock (bounded by ctx) and reuse the result.
func Build(ctx context.Context, opts BuildOptions) (string, error) {
	src := opts.SourceDir
	if src == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("find dev Vault source: %w", err)
		}
		if src, err = FindSourceDir(wd); err != nil {
			return "", err
		}
	}
	goCmd := opts.GoCommand
	if goCmd == "" {
		goCmd = "go"
	}
	goPath, err := exec.LookPath(goCmd)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrGoNotFound, err)
	}
	cacheRoot := opts.CacheDir
	if cacheRoot == "" {
		cacheRoot = defaultCacheDir()
	}
	goVersion, err := goEnvVersion(ctx, goPath)
	if err != nil {
		return "", err
	}
	hash, err := SourceHash(src, goVersion)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cacheRoot, "devvault-"+hash[:16])
	bin := filepath.Join(dir, binaryName)
	if isExecutable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create dev Vault cache directory: %w", err)
	}
	unlock, err := lockFile(ctx, dir+".lock", opts.Progress)
	if err != nil {
		return "", err
	}
	defer unlock()
	if isExecutable(bin) { // built by another process while we waited
		return bin, nil
	}
	if err := goBuild(ctx, goPath, src, dir, bin, opts.Progress); err != nil {
		return "", err
	}
	return bin, nil
}

// defaultCacheDir is os.UserCacheDir()/killswitch, or a directory under the temp dir
// when there is no user cache directory (no $HOME, as in some CI environments).
func defaultCacheDir() string {
	if ucd, err := os.UserCacheDir(); err == nil {
		return filepath.Join(ucd, "killswitch")
	}
	return filepath.Join(os.TempDir(), "killswitch-cache")
}

// SourceHash returns the hex SHA-256 of the module's go.mod, go.sum and non-test .go
// files (paths and contents, in a fixed order) and extra (e.g. the go version).
func SourceHash(srcDir, extra string) (string, error) {
	var files []string
	err := filepath.WalkDir(srcDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != srcDir && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		name := d.Name()
		if name == "go.mod" || name == "go.sum" || (strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go")) {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hash dev Vault sources in %s: %w", srcDir, err)
	}
	sort.Strings(files)
	h := sha256.New()
	fmt.Fprintf(h, "extra %q\n", extra)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("hash dev Vault sources: %w", err)
		}
		rel, err := filepath.Rel(srcDir, f)
		if err != nil {
			return "", fmt.Errorf("hash dev Vault sources: %w", err)
		}
		fmt.Fprintf(h, "file %q %d\n", filepath.ToSlash(rel), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func goEnvVersion(ctx context.Context, goPath string) (string, error) {
	out, err := exec.CommandContext(ctx, goPath, "env", "GOVERSION", "GOOS", "GOARCH").Output()
	if err != nil {
		return "", fmt.Errorf("run %s env: %w", goPath, err)
	}
	return strings.Join(strings.Fields(string(out)), " "), nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o100 != 0
}

// lockFile takes an exclusive flock on path, polling so that ctx can cancel the wait.
func lockFile(ctx context.Context, path string, progress io.Writer) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open dev Vault build lock: %w", err)
	}
	poll := time.NewTicker(lockPollInterval)
	defer poll.Stop()
	polls := 0
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if polls == 0 {
			progressf(progress, "waiting for another process building the dev Vault…")
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("wait for the dev Vault build lock: %w", ctx.Err())
		case <-poll.C:
			polls++
			if waited := time.Duration(polls) * lockPollInterval; waited%progressInterval == 0 {
				progressf(progress, "still waiting for the other dev Vault build… %s", waited)
			}
		}
	}
}

// goBuild runs `go build` into a temporary file in dir and renames it to bin.
func goBuild(ctx context.Context, goPath, src, dir, bin string, progress io.Writer) error {
	tmp := filepath.Join(dir, binaryName+".tmp")
	_ = os.Remove(tmp)
	progressf(progress, "building dev Vault (first time takes a few minutes)…")
	cmd := exec.CommandContext(ctx, goPath, "build", "-o", tmp, ".")
	cmd.Dir = src
	var out tailBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%w: start go build: %v", ErrBuildFailed, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	ticks := 0
	for {
		select {
		case err := <-done:
			if err != nil {
				_ = os.Remove(tmp)
				if ctx.Err() != nil {
					return fmt.Errorf("%w: %w", ErrBuildFailed, ctx.Err())
				}
				return fmt.Errorf("%w: %v\n%s", ErrBuildFailed, err, out.String())
			}
			if err := os.Rename(tmp, bin); err != nil {
				return fmt.Errorf("install the dev Vault binary: %w", err)
			}
			progressf(progress, "dev Vault built: %s", bin)
			return nil
		case <-tick.C:
			ticks++
			progressf(progress, "still building… %s", time.Duration(ticks)*progressInterval)
		}
	}
}

func progressf(w io.Writer, format string, args ...any) {
	if w == nil {
		return
	}
	fmt.Fprintf(w, format+"\n", args...)
}

// tailBuffer keeps the last tailLimit bytes written to it.
type tailBuffer struct {
	buf bytes.Buffer
}

const tailLimit = 8 << 10

// Write appends p, dropping the oldest bytes beyond tailLimit.
func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf.Write(p)
	if extra := t.buf.Len() - tailLimit; extra > 0 {
		t.buf.Next(extra)
	}
	return len(p), nil
}

// String returns the kept bytes.
func (t *tailBuffer) String() string { return t.buf.String() }
