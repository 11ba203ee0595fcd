package devvault

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// readyPrefix starts the one line cmd/devvault prints on stdout once it serves requests.
const readyPrefix = "devvault listening on "

// Defaults of StartOptions.
const (
	DefaultAddr         = "127.0.0.1:0"
	DefaultRootToken    = "root"
	DefaultReadyTimeout = 60 * time.Second
	DefaultStopGrace    = 10 * time.Second
)

// healthPollInterval is how often Start polls /v1/sys/health until Vault is ready.
const healthPollInterval = 20 * time.Millisecond

// stderrTailLines is how many of the server's last stderr lines an error carries.
const stderrTailLines = 20

// ErrNotReady means the dev Vault did not report itself initialised and unsealed in
// time, or exited first. The error text carries the end of its stderr. Retrying can help
// on an overloaded machine; a bad flag or a busy port will fail again.
var ErrNotReady = errors.New("dev Vault did not become ready")

// ErrNotRunning means the operation needs a running dev Vault process and there is none
// (it exited or was stopped). Permanent for this Process until Restart.
var ErrNotRunning = errors.New("dev Vault process is not running")

// ErrKilled means Stop had to SIGKILL the server because it did not exit within the
// grace period after SIGTERM. The process is gone all the same.
var ErrKilled = errors.New("dev Vault did not stop after SIGTERM and was killed")

// StartOptions configures Start.
type StartOptions struct {
	// BinPath is the dev Vault binary, as returned by Build. Required.
	BinPath string
	// Addr is the host:port to listen on. Empty means DefaultAddr, a free loopback port
	// chosen by the server itself (no race with other processes picking ports).
	Addr string
	// RootToken is the fixed root token. Empty means DefaultRootToken ("root").
	RootToken string
	// StorageDir, when set, makes Vault keep its data (and its unseal key) in this
	// directory so that Restart keeps secrets, leases and mounts. Empty means in memory.
	StorageDir string
	// LogLevel is passed as -log-level (trace, debug, info, warn, error, off). Empty
	// keeps the server's quiet default (error).
	LogLevel string
	// ReadyTimeout bounds the wait for readiness (also bounded by ctx). Zero means
	// DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL. Zero means
	// DefaultStopGrace.
	StopGrace time.Duration
	// Logger receives the server's own log lines (never the root token). Nil means
	// zap.NewNop().
	Logger *zap.Logger
}

// Process is a running dev Vault subprocess. Its methods are safe for concurrent use.
type Process struct {
	opts   StartOptions
	logger *zap.Logger

	mu       sync.Mutex
	cur      *child
	hostport string
}

// child is one run of the server binary.
type child struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // the exit error, set before exited is closed
	tail   *lineTail
	ready  chan string
}

// Start runs the dev Vault binary and returns once Vault answers /v1/sys/health as
// initialised and unsealed, bounded by ctx and opts.ReadyTimeout. On error nothing is
// left running.
func Start(ctx context.Context, opts StartOptions) (*Process, error) {
	if opts.BinPath == "" {
		return nil, errors.New("start dev Vault: StartOptions.BinPath is required")
	}
	if !isExecutable(opts.BinPath) {
		return nil, fmt.Errorf("start dev Vault: %s is not an executable file", opts.BinPath)
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.RootToken == "" {
		opts.RootToken = DefaultRootToken
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = DefaultReadyTimeout
	}
	if opts.StopGrace <= 0 {
		opts.StopGrace = DefaultStopGrace
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	p := &Process{opts: opts, logger: opts.Logger.With(zap.String("component", "devvault"))}
	if err := p.startLocked(ctx, opts.Addr); err != nil {
		return nil, err
	}
	return p, nil
}

// Addr returns the base URL of the server, e.g. "http://127.0.0.1:41234".
func (p *Process) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return "http://" + p.hostport
}

// RootToken returns the fixed root token.
func (p *Process) RootToken() string { return p.opts.RootToken }

// StorageDir returns the persistent storage directory, or "" for in-memory storage.
func (p *Process) StorageDir() string { return p.opts.StorageDir }

// PID returns the process id of the current server process.
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur.cmd.Process.Pid
}

// Stop sends SIGTERM (and SIGCONT, in case the server is paused), waits up to the stop
// grace period (or until ctx ends) for a clean exit, then SIGKILLs it. It returns nil on
// a clean exit with status 0, an error wrapping ErrKilled when it had to kill, or the
// exit error. Stopping a process that already exited returns how it exited.
func (p *Process) Stop(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopLocked(ctx)
}

// Pause sends SIGSTOP: the server keeps its state and its listening socket, but answers
// nothing, so clients time out (a "Vault down" fault without losing data).
func (p *Process) Pause() error { return p.signal(syscall.SIGSTOP) }

// Resume sends SIGCONT to a paused server; queued requests are then answered.
func (p *Process) Resume() error { return p.signal(syscall.SIGCONT) }

// Restart stops the server and starts it again on the same address, root token and
// storage. With StorageDir set, secrets, mounts and leases survive; in memory they do
// not. It returns once the new process is ready, bounded by ctx and the ready timeout.
func (p *Process) Restart(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.stopLocked(ctx); err != nil && !errors.Is(err, ErrKilled) {
		p.logger.Warn("dev Vault exited uncleanly before restart", zap.Error(err))
	}
	return p.startLocked(ctx, p.hostport)
}

func (p *Process) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.cur
	select {
	case <-c.exited:
		return fmt.Errorf("send %v: %w", sig, ErrNotRunning)
	default:
	}
	if err := c.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("send %v to dev Vault: %w", sig, err)
	}
	// The signal is delivered asynchronously: wait until it has taken effect, so that a
	// request sent after Pause returns really meets a stopped server.
	want := "RSD" // running, sleeping or in disk sleep: anything but stopped
	if sig == syscall.SIGSTOP {
		want = "T"
	}
	if err := waitState(c.cmd.Process.Pid, want, 5*time.Second); err != nil {
		return fmt.Errorf("dev Vault after %v: %w", sig, err)
	}
	return nil
}

// startLocked spawns the server on addr and waits until it is ready; p.mu is held (or
// p is not yet shared).
func (p *Process) startLocked(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, p.opts.ReadyTimeout)
	defer cancel()

	args := []string{"-addr", addr, "-root-token", p.opts.RootToken}
	if p.opts.StorageDir != "" {
		args = append(args, "-storage", p.opts.StorageDir)
	}
	if p.opts.LogLevel != "" {
		args = append(args, "-log-level", p.opts.LogLevel)
	}
	// Not exec.CommandContext: the server must outlive Start's context.
	cmd := exec.Command(p.opts.BinPath, args...)
	cmd.SysProcAttr = sysProcAttr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("start dev Vault: %w", err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("start dev Vault: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start dev Vault: %w", err)
	}
	c := &child{cmd: cmd, exited: make(chan struct{}), tail: &lineTail{}, ready: make(chan string, 1)}
	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() { defer pipes.Done(); p.readStdout(stdout, c) }()
	go func() { defer pipes.Done(); p.readStderr(stderr, c) }()
	go func() {
		pipes.Wait() // Wait closes the pipes: read them to the end first
		c.err = cmd.Wait()
		close(c.exited)
	}()
	p.cur = c

	hostport, err := p.waitReady(ctx, c)
	if err != nil {
		_ = p.stopLocked(context.Background())
		return err
	}
	p.hostport = hostport
	p.logger.Info("dev Vault ready", zap.String("addr", "http://"+hostport), zap.Int("pid", cmd.Process.Pid),
		zap.Bool("persistent", p.opts.StorageDir != ""))
	return nil
}

// waitReady waits for the ready line, then for /v1/sys/health to report initialised and
// unsealed. It returns the host:port the server listens on.
func (p *Process) waitReady(ctx context.Context, c *child) (string, error) {
	var hostport string
	select {
	case url := <-c.ready:
		hostport = strings.TrimPrefix(url, "http://")
	case <-c.exited:
		return "", fmt.Errorf("%w: it exited (%v):\n%s", ErrNotReady, c.err, c.tail.String())
	case <-ctx.Done():
		return "", fmt.Errorf("%w: no ready line: %w\n%s", ErrNotReady, ctx.Err(), c.tail.String())
	}
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return "", fmt.Errorf("%w: bad address in ready line %q: %w", ErrNotReady, hostport, err)
	}
	transport := &http.Transport{DisableKeepAlives: true}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 2 * time.Second}
	poll := time.NewTicker(healthPollInterval)
	defer poll.Stop()
	var last error
	for {
		err := checkHealth(ctx, client, "http://"+hostport)
		if err == nil {
			return hostport, nil
		}
		// A check cut short by the deadline says less than the one before it.
		if last == nil || ctx.Err() == nil {
			last = err
		}
		select {
		case <-c.exited:
			return "", fmt.Errorf("%w: it exited (%v):\n%s", ErrNotReady, c.err, c.tail.String())
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %w (last health check: %v)\n%s", ErrNotReady, ctx.Err(), last, c.tail.String())
		case <-poll.C:
		}
	}
}

// healthResponse is the part of /v1/sys/health that readiness needs.
type healthResponse struct {
	Initialized bool `json:"initialized"`
	Sealed      bool `json:"sealed"`
}

func checkHealth(ctx context.Context, client *http.Client, base string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/sys/health", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var h healthResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&h); err != nil {
		return fmt.Errorf("health: status %d, undecodable body: %w", resp.StatusCode, err)
	}
	if !h.Initialized || h.Sealed || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health: status %d, initialized=%t sealed=%t", resp.StatusCode, h.Initialized, h.Sealed)
	}
	return nil
}

// stopLocked stops the current child; p.mu is held.
func (p *Process) stopLocked(ctx context.Context) error {
	c := p.cur
	select {
	case <-c.exited:
		return exitError(c)
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	_ = c.cmd.Process.Signal(syscall.SIGCONT) // a stopped process handles SIGTERM only once continued
	grace := time.NewTimer(p.opts.StopGrace)
	defer grace.Stop()
	select {
	case <-c.exited:
		return exitError(c)
	case <-grace.C:
	case <-ctx.Done():
	}
	_ = c.cmd.Process.Kill()
	<-c.exited
	p.logger.Warn("dev Vault killed after SIGTERM grace", zap.Int("pid", c.cmd.Process.Pid))
	return fmt.Errorf("%w (pid %d)", ErrKilled, c.cmd.Process.Pid)
}

func exitError(c *child) error {
	if c.err == nil {
		return nil
	}
	return fmt.Errorf("dev Vault exited: %w\n%s", c.err, c.tail.String())
}

func (p *Process) readStdout(r io.Reader, c *child) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	readySent := false
	for sc.Scan() {
		line := sc.Text()
		if !readySent && strings.HasPrefix(line, readyPrefix) {
			c.ready <- strings.TrimSpace(strings.TrimPrefix(line, readyPrefix))
			readySent = true
			continue
		}
		p.logger.Info("dev Vault output", zap.String("line", line))
	}
	// Drain anything left so the child never blocks on a full pipe.
	_, _ = io.Copy(io.Discard, r)
}

func (p *Process) readStderr(r io.Reader, c *child) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		c.tail.add(line)
		p.logger.Warn("dev Vault log", zap.String("line", line))
	}
	_, _ = io.Copy(io.Discard, r)
}

// lineTail keeps the last stderrTailLines lines; safe for concurrent use.
type lineTail struct {
	mu    sync.Mutex
	lines []string
}

func (t *lineTail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	if len(t.lines) > stderrTailLines {
		t.lines = t.lines[len(t.lines)-stderrTailLines:]
	}
}

// String returns the kept lines joined by newlines.
func (t *lineTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}
