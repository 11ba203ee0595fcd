package testharness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgBinEnv names an optional environment variable pointing at a PostgreSQL bin directory
// (holding initdb, pg_ctl and postgres); by default the newest /usr/lib/postgresql/*/bin
// is used.
const pgBinEnv = "KILLSWITCH_PG_BIN"

// pgSystemUser is the account PostgreSQL runs as when the tests run as root (postgres
// refuses to run as root); the Debian packages create it.
const pgSystemUser = "postgres"

// pgSuperUser is the superuser created in every private cluster.
const pgSuperUser = "killswitch"

// pgStartAttempts is how often Postgres retries with a new port when the chosen free
// port was taken in the meantime.
const pgStartAttempts = 3

// PG is a private PostgreSQL cluster started for one test, listening on 127.0.0.1 with
// password (SCRAM) authentication.
type PG struct {
	// Host is always "127.0.0.1".
	Host string
	// Port is the TCP port.
	Port int
	// SuperUser and Password are the credentials of the cluster's superuser.
	SuperUser string
	Password  string
	// DataDir is the cluster's data directory (removed at cleanup).
	DataDir string

	binDir string
	base   string
	cred   *syscall.Credential
	cmd    *exec.Cmd
	exited chan struct{}
}

// Postgres initialises and starts a private PostgreSQL cluster in a temporary directory
// on a free 127.0.0.1 port, and stops and removes it when the test ends. When running as
// root, the cluster runs as the postgres system user. If the PostgreSQL server binaries
// are missing the test fails when CI=true and is skipped otherwise (.ci/deps.sh installs
// them).
func Postgres(tb testing.TB) *PG {
	tb.Helper()
	binDir, err := findPGBin()
	if err != nil {
		unavailable(tb, "PostgreSQL server binaries not found: %v", err)
	}
	cred, err := pgCredential()
	if err != nil {
		unavailable(tb, "cannot run PostgreSQL: %v", err)
	}
	password, err := randomHex(16)
	if err != nil {
		tb.Fatalf("generate PostgreSQL password: %v", err)
	}
	// Not tb.TempDir: its parents are 0700 root-owned, so the postgres user could not
	// reach the data directory.
	base, err := os.MkdirTemp("", "ks-pg-")
	if err != nil {
		tb.Fatalf("create PostgreSQL directory: %v", err)
	}
	pg := &PG{
		Host:      "127.0.0.1",
		SuperUser: pgSuperUser,
		Password:  password,
		DataDir:   filepath.Join(base, "data"),
		binDir:    binDir,
		base:      base,
		cred:      cred,
	}
	tb.Cleanup(func() {
		if err := pg.stop(); err != nil {
			tb.Errorf("stop PostgreSQL: %v", err)
		}
		if err := os.RemoveAll(base); err != nil {
			tb.Errorf("remove PostgreSQL directory: %v", err)
		}
	})
	if err := pg.initdb(); err != nil {
		tb.Fatalf("initdb: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for attempt := 1; ; attempt++ {
		err := pg.start(ctx)
		if err == nil {
			return pg
		}
		if attempt == pgStartAttempts || ctx.Err() != nil {
			tb.Fatalf("start PostgreSQL: %v", err)
		}
		tb.Logf("start PostgreSQL (attempt %d): %v; retrying on another port", attempt, err)
	}
}

// URL returns a postgres:// URL for the superuser (sslmode=disable), for pgx or psql.
func (p *PG) URL() string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(p.SuperUser, p.Password),
		Host:     net.JoinHostPort(p.Host, strconv.Itoa(p.Port)),
		Path:     "/postgres",
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// DSN returns the same connection as URL in keyword/value form.
func (p *PG) DSN() string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=postgres sslmode=disable",
		p.Host, p.Port, p.SuperUser, p.Password)
}

// VaultConnectionURL returns the connection_url for Vault's database secrets engine,
// with the {{username}} and {{password}} templates Vault fills from the config's
// username and password fields.
func (p *PG) VaultConnectionURL() string {
	return fmt.Sprintf("postgresql://{{username}}:{{password}}@%s/postgres?sslmode=disable",
		net.JoinHostPort(p.Host, strconv.Itoa(p.Port)))
}

// CanLogin really logs in to the cluster as user with password and runs SELECT 1. It
// returns nil on success and the server's error (e.g. password authentication failed)
// otherwise.
func (p *PG) CanLogin(ctx context.Context, user, password string) error {
	conn, err := p.connect(ctx, user, password)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("query as %q: %w", user, err)
	}
	return nil
}

// RoleExists reports whether a role of that name exists, asked as the superuser.
func (p *PG) RoleExists(ctx context.Context, role string) (bool, error) {
	conn, err := p.connect(ctx, p.SuperUser, p.Password)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
		return false, fmt.Errorf("look up role %q: %w", role, err)
	}
	return exists, nil
}

// Exec runs one SQL statement as the superuser.
func (p *PG) Exec(ctx context.Context, sql string, args ...any) error {
	conn, err := p.connect(ctx, p.SuperUser, p.Password)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	return nil
}

func (p *PG) connect(ctx context.Context, user, password string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=disable connect_timeout=5", p.Host, p.Port))
	if err != nil {
		return nil, fmt.Errorf("postgres config: %w", err)
	}
	cfg.User = user
	cfg.Password = password
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("log in to PostgreSQL as %q: %w", user, err)
	}
	return conn, nil
}

// initdb creates the cluster with the superuser and SCRAM authentication everywhere.
func (p *PG) initdb() error {
	if err := p.chown(p.base); err != nil {
		return err
	}
	pwfile := filepath.Join(p.base, "pwfile")
	if err := os.WriteFile(pwfile, []byte(p.Password+"\n"), 0o600); err != nil {
		return fmt.Errorf("write password file: %w", err)
	}
	if err := p.chown(pwfile); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	out, err := p.run(filepath.Join(p.binDir, "initdb"),
		"-D", p.DataDir, "-U", p.SuperUser, "--pwfile", pwfile,
		"--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C", "--no-sync")
	if err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	return nil
}

// start picks a free port and runs postgres in the foreground as a child process, then
// waits until the superuser can log in.
func (p *PG) start(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	p.Port = port
	logPath := filepath.Join(p.base, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open postgres log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(p.binDir, "postgres"),
		"-D", p.DataDir, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+p.base,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	cmd.Dir = p.base
	cmd.Env = pgEnv()
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// SIGINT is PostgreSQL's fast shutdown: a crashed test run leaves no server behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred, Pdeathsig: syscall.SIGINT}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	p.cmd, p.exited = cmd, exited

	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := p.CanLogin(attemptCtx, p.SuperUser, p.Password)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			p.cmd = nil
			return fmt.Errorf("postgres exited: %s", tailFile(logPath))
		case <-ctx.Done():
			_ = p.stop()
			return fmt.Errorf("postgres not ready: %w (last: %v)\n%s", ctx.Err(), err, tailFile(logPath))
		case <-tick.C:
		}
	}
}

// stop shuts the cluster down with pg_ctl stop -m fast, then makes sure the postgres
// process it started has exited (SIGKILL by PID as a last resort).
func (p *PG) stop() error {
	if p.cmd == nil {
		return nil
	}
	defer func() { p.cmd = nil }()
	select {
	case <-p.exited:
		return nil
	default:
	}
	out, stopErr := p.run(filepath.Join(p.binDir, "pg_ctl"), "stop", "-D", p.DataDir, "-m", "fast", "-w", "-t", "30")
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("postgres (pid %d) did not stop, killed: %v\n%s", p.cmd.Process.Pid, stopErr, out)
	}
	if stopErr != nil {
		return fmt.Errorf("pg_ctl stop: %w\n%s", stopErr, out)
	}
	return nil
}

// run executes a PostgreSQL tool as the cluster's owner and returns its output.
func (p *PG) run(bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = p.base
	cmd.Env = pgEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w", filepath.Base(bin), err)
	}
	return out.String(), nil
}

// chown gives path to the cluster's owner when running as root.
func (p *PG) chown(path string) error {
	if p.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
		return fmt.Errorf("chown %s to %s: %w", path, pgSystemUser, err)
	}
	return nil
}

// findPGBin returns the directory holding initdb, pg_ctl and postgres: $KILLSWITCH_PG_BIN,
// else the newest /usr/lib/postgresql/*/bin that has all three.
func findPGBin() (string, error) {
	has := func(dir string) bool {
		for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
			if !isExecutableFile(filepath.Join(dir, name)) {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv(pgBinEnv); dir != "" {
		if has(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("%s=%s lacks initdb, pg_ctl or postgres", pgBinEnv, dir)
	}
	dirs, err := filepath.Glob("/usr/lib/postgresql/*/bin")
	if err != nil {
		return "", err
	}
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, dir := range dirs {
		if has(dir) {
			return dir, nil
		}
	}
	return "", errors.New("no /usr/lib/postgresql/*/bin with initdb, pg_ctl and postgres (apt-get install postgresql, or run .ci/deps.sh)")
}

// pgMajor extracts the major version from /usr/lib/postgresql/<major>/bin.
func pgMajor(binDir string) int {
	n, err := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	if err != nil {
		return -1
	}
	return n
}

// pgCredential returns the credential to run PostgreSQL tools with: nil when not root,
// the postgres system user when root.
func pgCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(pgSystemUser)
	if err != nil {
		return nil, fmt.Errorf("running as root needs the %q system user: %w", pgSystemUser, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("uid of %s: %w", pgSystemUser, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("gid of %s: %w", pgSystemUser, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

func pgEnv() []string {
	env := []string{"LC_ALL=C", "LANG=C"}
	if path := os.Getenv("PATH"); path != "" {
		env = append(env, "PATH="+path)
	}
	return env
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func isExecutableFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// tailFile returns the last lines of a log file, for error messages.
func tailFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}
