package users

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"go.uber.org/zap"
)

// Files in the service's data directory.
const (
	// FileName is the users file.
	FileName = "users.json"
	// TokenFileName receives the bootstrap admin's generated token (0600). It is the
	// name the single shared token had before users existed, so a data directory from
	// then keeps its token.
	TokenFileName = "api-token"
	// BootstrapAdmin is the admin a zero-config start creates, and the user a configured
	// token (KILLSWITCH_API_TOKEN, service.http.token_file) belongs to.
	BootstrapAdmin = "admin"
)

// fileVersion is the users file's format version.
const fileVersion = 1

// lockWait bounds how long a writer waits for another's lock.
const lockWait = 5 * time.Second

// Options configures a Store.
type Options struct {
	// Clock stamps creation and token times. Default the wall clock.
	Clock clock.Clock
	// Log receives reloads and unreadable files (never a token). Default none.
	Log *zap.Logger
}

// Store is the users file: Authenticate reads it (re-reading it when it changes on
// disk), Add, Rotate and Remove rewrite it atomically. Safe for concurrent use, and
// several processes may share the file.
type Store struct {
	path  string
	clock clock.Clock
	log   *zap.Logger
	// compare compares two token hashes; subtle.ConstantTimeCompare (a field so a test
	// can see it is called for every user).
	compare func(x, y []byte) int

	mu   sync.Mutex // serializes reloads
	snap atomic.Pointer[snapshot]
}

// snapshot is the users file as last read.
type snapshot struct {
	fi    fs.FileInfo // what was read; nil when the file could not be opened
	users []User
	sums  [][]byte
	err   error
}

// fileFormat is the users file's JSON.
type fileFormat struct {
	Version int    `json:"version"`
	Users   []User `json:"users"`
}

// Path returns the users file's path in a data directory.
func Path(dataDir string) string { return filepath.Join(dataDir, FileName) }

// Open returns the Store of the users file at path. The file is read on first use;
// a missing file is created by the first Add or by Bootstrap.
func Open(path string, o Options) *Store {
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	return &Store{path: path, clock: o.Clock, log: o.Log, compare: subtle.ConstantTimeCompare}
}

// Path returns the users file's path.
func (s *Store) Path() string { return s.path }

// Authenticate returns the user holding token. The token's SHA-256 is compared with
// every user's in constant time; ErrUnauthenticated when none matches, ErrUnavailable
// when the users file cannot be read.
func (s *Store) Authenticate(_ context.Context, token string) (User, error) {
	snap := s.current()
	if snap.err != nil {
		return User{}, snap.err
	}
	if token == "" {
		return User{}, ErrUnauthenticated
	}
	sum := hashToken(token)
	match := -1
	for i, h := range snap.sums {
		// Every hash is compared, whatever matched before.
		if s.compare(sum[:], h) == 1 && match < 0 {
			match = i
		}
	}
	if match < 0 {
		return User{}, ErrUnauthenticated
	}
	return snap.users[match], nil
}

// List returns the users, sorted by name.
func (s *Store) List(_ context.Context) ([]User, error) {
	snap := s.current()
	if snap.err != nil {
		return nil, snap.err
	}
	return slices.Clone(snap.users), nil
}

// current returns the file's snapshot, re-reading the file when it changed (another
// inode, size or modification time) since it was last read.
func (s *Store) current() *snapshot {
	fi, statErr := os.Stat(s.path)
	if cur := s.snap.Load(); cur != nil && unchanged(cur, fi, statErr) {
		return cur
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.snap.Load(); cur != nil && unchanged(cur, fi, statErr) {
		return cur
	}
	next := s.load()
	s.snap.Store(next)
	if next.err != nil {
		s.log.Error("users file unavailable: no API user is authenticated until it is fixed",
			zap.String("file", s.path), zap.Error(next.err))
	} else {
		s.log.Info("users file loaded", zap.String("file", s.path), zap.Int("users", len(next.users)))
	}
	return next
}

func unchanged(cur *snapshot, fi fs.FileInfo, statErr error) bool {
	if statErr != nil || cur.fi == nil {
		// Unreadable then and now: nothing new to say (a file that appears is read).
		return statErr != nil && cur.fi == nil
	}
	return os.SameFile(cur.fi, fi) && cur.fi.Size() == fi.Size() && cur.fi.ModTime().Equal(fi.ModTime())
}

// load reads the file; the FileInfo is that of the file read.
func (s *Store) load() *snapshot {
	f, err := os.Open(s.path)
	if err != nil {
		return &snapshot{err: fmt.Errorf("%w: %w", ErrUnavailable, err)}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return &snapshot{err: fmt.Errorf("%w: %w", ErrUnavailable, err)}
	}
	var b bytes.Buffer
	if _, err := b.ReadFrom(f); err != nil {
		return &snapshot{fi: fi, err: fmt.Errorf("%w: %s: %w", ErrUnavailable, s.path, err)}
	}
	users, err := parse(b.Bytes())
	if err != nil {
		return &snapshot{fi: fi, err: fmt.Errorf("%w: %s: %w", ErrUnavailable, s.path, err)}
	}
	snap := &snapshot{fi: fi, users: users}
	for _, u := range users {
		h, _ := hex.DecodeString(u.TokenSHA256) // checked by parse
		snap.sums = append(snap.sums, h)
	}
	return snap
}

// parse decodes and checks a users file.
func parse(b []byte) ([]User, error) {
	var ff fileFormat
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ff); err != nil {
		return nil, err
	}
	if ff.Version != fileVersion {
		return nil, fmt.Errorf("version %d, want %d", ff.Version, fileVersion)
	}
	seen := map[string]bool{}
	for _, u := range ff.Users {
		if err := ValidName(u.Name); err != nil {
			return nil, err
		}
		if !u.Role.Valid() {
			return nil, fmt.Errorf("user %s: %w: %q", u.Name, ErrBadRole, u.Role)
		}
		if h, err := hex.DecodeString(u.TokenSHA256); err != nil || len(h) != 32 {
			return nil, fmt.Errorf("user %s: token_sha256 is not a hex SHA-256", u.Name)
		}
		if seen[u.Name] {
			return nil, fmt.Errorf("user %s: listed twice", u.Name)
		}
		seen[u.Name] = true
	}
	slices.SortFunc(ff.Users, func(a, b User) int { return strings.Compare(a.Name, b.Name) })
	return ff.Users, nil
}

// Add creates a user with a new token, returned once: only its hash is kept.
func (s *Store) Add(ctx context.Context, name string, role Role) (User, string, error) {
	if err := ValidName(name); err != nil {
		return User{}, "", err
	}
	if _, err := ParseRole(string(role)); err != nil {
		return User{}, "", err
	}
	token, id, err := newToken()
	if err != nil {
		return User{}, "", err
	}
	var added User
	err = s.update(ctx, func(us []User) ([]User, error) {
		if slices.ContainsFunc(us, func(u User) bool { return u.Name == name }) {
			return nil, fmt.Errorf("%w: %s (use rotate to give it a new token)", ErrExists, name)
		}
		now := s.clock.Now().UTC()
		added = User{Name: name, Role: role, TokenID: id, TokenSHA256: hexSum(token), Created: now, TokenSet: now}
		return append(us, added), nil
	})
	if err != nil {
		return User{}, "", err
	}
	return added, token, nil
}

// Rotate gives a user a new token, returned once; the old one stops working.
func (s *Store) Rotate(ctx context.Context, name string) (User, string, error) {
	token, id, err := newToken()
	if err != nil {
		return User{}, "", err
	}
	var out User
	err = s.update(ctx, func(us []User) ([]User, error) {
		i := slices.IndexFunc(us, func(u User) bool { return u.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		us[i].TokenID, us[i].TokenSHA256, us[i].TokenSet = id, hexSum(token), s.clock.Now().UTC()
		out = us[i]
		return us, nil
	})
	if err != nil {
		return User{}, "", err
	}
	return out, token, nil
}

// Remove deletes a user; its token stops working. The last admin cannot be removed.
func (s *Store) Remove(ctx context.Context, name string) error {
	return s.update(ctx, func(us []User) ([]User, error) {
		i := slices.IndexFunc(us, func(u User) bool { return u.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		admins := 0
		for _, u := range us {
			if u.Role == Admin {
				admins++
			}
		}
		if us[i].Role == Admin && admins == 1 {
			return nil, fmt.Errorf("%w: add another admin before removing %s", ErrLastAdmin, name)
		}
		return slices.Delete(us, i, i+1), nil
	})
}

// Bootstrapped says what Bootstrap did.
type Bootstrapped struct {
	// User is the bootstrap admin, when Bootstrap made or changed it.
	User User
	// Created: the users file did not exist and was created.
	Created bool
	// Changed: the admin's token or role was set from the configured token.
	Changed bool
	// TokenFile is where the admin's generated (or earlier) token is, when Created
	// without a configured token.
	TokenFile string
	// Reused: TokenFile already held a token (from before users existed) and it was kept.
	Reused bool
}

// Bootstrap makes sure someone can use the API when the service starts.
//
// With a configured token (at least MinTokenLen characters), the user BootstrapAdmin
// holds it with the admin role: created, or its token and role replaced when they
// differ. Without one, when the users file does not exist, it creates BootstrapAdmin
// with the token already in tokenFile (written by a version before users existed) or a
// new token written to tokenFile (0600). Otherwise it changes nothing.
func (s *Store) Bootstrap(ctx context.Context, configured, tokenFile string) (Bootstrapped, error) {
	var out Bootstrapped
	if configured != "" && len(configured) < MinTokenLen {
		return out, fmt.Errorf("%w: the configured API token has %d characters, at least %d are required", ErrBadToken, len(configured), MinTokenLen)
	}
	if configured == "" {
		if _, err := os.Stat(s.path); err == nil {
			return out, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return out, fmt.Errorf("users: %w", err)
		}
	}
	token := configured
	if token == "" {
		out.TokenFile = tokenFile
		if b, err := os.ReadFile(tokenFile); err == nil && len(strings.TrimSpace(string(b))) >= MinTokenLen {
			token, out.Reused = strings.TrimSpace(string(b)), true
		} else {
			var err error
			if token, _, err = newToken(); err != nil {
				return out, err
			}
		}
	}
	id := ""
	if strings.HasPrefix(token, "ks_") && len(token) > 11 && token[11] == '_' {
		id = token[3:11]
	} else {
		var err error
		if id, err = newTokenID(); err != nil {
			return out, err
		}
	}
	sum := hexSum(token)
	_, statErr := os.Stat(s.path)
	err := s.update(ctx, func(us []User) ([]User, error) {
		now := s.clock.Now().UTC()
		i := slices.IndexFunc(us, func(u User) bool { return u.Name == BootstrapAdmin })
		switch {
		case i < 0:
			out.User = User{Name: BootstrapAdmin, Role: Admin, TokenID: id, TokenSHA256: sum, Created: now, TokenSet: now}
			out.Changed = true
			return append(us, out.User), nil
		case configured != "" && (us[i].TokenSHA256 != sum || us[i].Role != Admin):
			us[i].Role, us[i].TokenID, us[i].TokenSHA256, us[i].TokenSet = Admin, id, sum, now
			out.User, out.Changed = us[i], true
			return us, nil
		}
		return nil, errUnchanged
	})
	if errors.Is(err, errUnchanged) {
		return Bootstrapped{}, nil
	}
	if err != nil {
		return Bootstrapped{}, err
	}
	out.Created = errors.Is(statErr, fs.ErrNotExist)
	if configured == "" && !out.Reused {
		if err := writeFileAtomic(tokenFile, []byte(token+"\n")); err != nil {
			return Bootstrapped{}, fmt.Errorf("users: the admin's token: %w", err)
		}
	}
	if configured != "" {
		out.TokenFile = ""
	}
	return out, nil
}

// errUnchanged tells update there is nothing to write.
var errUnchanged = errors.New("unchanged")

// update rewrites the file under its lock with what f makes of the users in it (a
// missing file holds none). A file that does not parse is never overwritten.
func (s *Store) update(ctx context.Context, f func([]User) ([]User, error)) error {
	unlock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	var us []User
	b, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("users: %w", err)
	default:
		if us, err = parse(b); err != nil {
			return fmt.Errorf("%w: %s: %w (fix or remove it by hand)", ErrUnavailable, s.path, err)
		}
	}
	us, err = f(us)
	if err != nil {
		return err
	}
	slices.SortFunc(us, func(a, b User) int { return strings.Compare(a.Name, b.Name) })
	if us == nil {
		us = []User{}
	}
	out, err := json.MarshalIndent(fileFormat{Version: fileVersion, Users: us}, "", "  ")
	if err != nil {
		return fmt.Errorf("users: %w", err)
	}
	if err := writeFileAtomic(s.path, append(out, '\n')); err != nil {
		return fmt.Errorf("users: %w", err)
	}
	// This process sees its own write at once, even if the file system reused the inode
	// within its time stamps' granularity.
	s.mu.Lock()
	s.snap.Store(nil)
	s.mu.Unlock()
	return nil
}

// lock takes the users file's lock file (created exclusively; removed by unlock),
// waiting up to lockWait for another writer.
func (s *Store) lock(ctx context.Context) (func(), error) {
	p := s.path + ".lock"
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return nil, fmt.Errorf("users: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, lockWait)
	defer cancel()
	for {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err == nil {
			_ = f.Close()
			return func() { _ = os.Remove(p) }, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("users: lock: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %s exists (remove it if no killswitch users command is running): %w", ErrLocked, p, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// writeFileAtomic writes data to path, mode 0600, through a temporary file in the same
// directory that is synced and renamed over path.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync() // the rename is durable where directories can be synced
		_ = d.Close()
	}
	return nil
}

func hexSum(token string) string {
	h := hashToken(token)
	return hex.EncodeToString(h[:])
}
