package testharness

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// KillswitchBinary builds the killswitch binary once per test process and returns its
// path (the build runs from the module's cmd/killswitch, wherever the test runs).
func KillswitchBinary(tb testing.TB) string {
	tb.Helper()
	binOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		src := filepath.Join(filepath.Dir(file), "..", "..", "cmd", "killswitch")
		dir, err := os.MkdirTemp("", "killswitch-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "killswitch")
		cmd := exec.Command("go", "build", "-o", binPath, ".")
		cmd.Dir = src
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		tb.Fatal(binErr)
	}
	return binPath
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	p, err := freePort()
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// Killswitch is a `killswitch run` process: the real binary, with its embedded NATS on
// a fixed port and its data directory, so that it can be killed and started again on
// the same state.
type Killswitch struct {
	// Config is the path of the configuration file, DataDir the data directory.
	Config, DataDir string
	// NATSPort and HTTPPort are the ports it listens on (127.0.0.1).
	NATSPort, HTTPPort int
	// Env is added to the process's environment (VAULT_ADDR, VAULT_TOKEN…).
	Env []string
	// Restarts is how many times Start starts the process again when it exits before it
	// is ready, as a supervisor would (0: the test fails at once).
	Restarts int
	// Args are added to the command line of `run`. NewKillswitch sets --eval-timeout 10s:
	// on a loaded test machine the shipped 50 ms would turn decisions into escalations.
	Args []string

	cmd    *exec.Cmd
	mu     sync.Mutex
	logs   strings.Builder
	exited chan error
}

// NewKillswitch writes cfgYAML to a temporary directory and returns a process (not
// started yet) on free ports; "{{nats}}" in cfgYAML is replaced by its NATS listen
// address. Cleanup stops it if it is still running.
func NewKillswitch(tb testing.TB, cfgYAML string, env ...string) *Killswitch {
	tb.Helper()
	dir := tb.TempDir()
	k := &Killswitch{DataDir: filepath.Join(dir, "data"), NATSPort: FreePort(tb), HTTPPort: FreePort(tb), Env: env,
		Args: []string{"--eval-timeout", "10s"}}
	cfgYAML = strings.ReplaceAll(cfgYAML, "{{nats}}", fmt.Sprintf("127.0.0.1:%d", k.NATSPort))
	k.Config = filepath.Join(dir, "killswitch.yaml")
	if err := os.WriteFile(k.Config, []byte(cfgYAML), 0o600); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { k.Stop() })
	return k
}

// NATSURL is the URL of its embedded NATS server.
func (k *Killswitch) NATSURL() string { return fmt.Sprintf("nats://127.0.0.1:%d", k.NATSPort) }

// Connect connects to its embedded NATS server with the credentials of role that
// `killswitch run` generated in its data directory ("service", "operator",
// "automation"), or as "sensor": a sensor credential minted once with `killswitch creds
// sensor` (what an attacker holding a sensor's credential can do). The connection is
// closed at the end of the test.
func (k *Killswitch) Connect(tb testing.TB, role string) *nats.Conn {
	tb.Helper()
	creds := k.CredsFile(role)
	if role == "sensor" {
		creds = filepath.Join(k.DataDir, "test-sensor.creds")
		if _, err := os.Stat(creds); err != nil {
			if code, out, errOut := Run(tb, nil, "creds", "sensor", "test-sensor", "--data-dir", k.DataDir, "--out", creds); code != 0 {
				tb.Fatalf("creds sensor: exit %d: %s%s", code, out, errOut)
			}
		}
	}
	nc, err := natsconn.Options{URL: k.NATSURL(), CredsFile: creds, Name: "test-" + role}.Connect(zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// CredsFile is the path of role's credentials in its data directory.
func (k *Killswitch) CredsFile(role string) string {
	return embeddednats.CredsFile(k.DataDir, embeddednats.Role(role))
}

// HTTPURL is the URL of its API.
func (k *Killswitch) HTTPURL() string { return fmt.Sprintf("http://127.0.0.1:%d", k.HTTPPort) }

// Start starts the process and waits until /readyz answers 200 (30 s at most).
func (k *Killswitch) Start(tb testing.TB) {
	tb.Helper()
	args := append([]string{"run", "--config", k.Config, "--data-dir", k.DataDir,
		"--http", fmt.Sprintf("127.0.0.1:%d", k.HTTPPort), "--log-level", "debug"}, k.Args...)
	k.cmd = exec.Command(KillswitchBinary(tb), args...)
	k.cmd.Env = append(os.Environ(), k.Env...)
	stderr, err := k.cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	k.exited = make(chan error, 1)
	if err := k.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func(r io.Reader, exited chan error, cmd *exec.Cmd) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			k.mu.Lock()
			k.logs.WriteString(sc.Text() + "\n")
			k.mu.Unlock()
		}
		exited <- cmd.Wait()
	}(stderr, k.exited, k.cmd)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get(k.HTTPURL() + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-k.exited:
			k.cmd = nil
			if k.Restarts > 0 {
				// A supervisor starts it again (systemd's Restart=on-failure).
				k.Restarts--
				tb.Logf("killswitch exited at start (%v): started again, as a supervisor would", err)
				k.Start(tb)
				return
			}
			tb.Fatalf("killswitch exited: %v\n%s", err, k.Log())
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("killswitch not ready in 30s\n%s", k.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// PID is the process's ID (0 when it is not running).
func (k *Killswitch) PID() int {
	if k.cmd == nil || k.cmd.Process == nil {
		return 0
	}
	return k.cmd.Process.Pid
}

// Kill9 kills the process with SIGKILL (nothing runs on its way out) and waits for it.
func (k *Killswitch) Kill9() {
	if k.cmd == nil {
		return
	}
	_ = k.cmd.Process.Signal(syscall.SIGKILL)
	<-k.exited
	k.cmd = nil
}

// Stop ends the process gracefully (SIGTERM) and returns its exit error.
func (k *Killswitch) Stop() error {
	if k.cmd == nil {
		return nil
	}
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-k.exited:
	case <-time.After(30 * time.Second):
		_ = k.cmd.Process.Kill()
		err = fmt.Errorf("killswitch did not stop within 30s")
		<-k.exited
	}
	k.cmd = nil
	return err
}

// Log returns what the process logged so far (its stderr, across restarts).
func (k *Killswitch) Log() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.logs.String()
}

// Run runs the killswitch binary with args (a one-shot command such as `ledger verify`)
// and returns its exit code and output.
func Run(tb testing.TB, env []string, args ...string) (code int, stdout, stderr string) {
	tb.Helper()
	cmd := exec.Command(KillswitchBinary(tb), args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), o.String(), e.String()
	} else if err != nil {
		tb.Fatal(err)
	}
	return 0, o.String(), e.String()
}
