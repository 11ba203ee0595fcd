package users

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
)

func newStore(t *testing.T) (*Store, *clock.Manual) {
	t.Helper()
	clk := clock.NewManual(time.Date(2026, 2, 5, 10, 0, 0, 0, time.UTC))
	return Open(filepath.Join(t.TempDir(), FileName), Options{Clock: clk}), clk
}

func TestRoles(t *testing.T) {
	for _, tc := range []struct {
		have, need Role
		ok         bool
	}{
		{Viewer, Viewer, true}, {Viewer, Approver, false}, {Viewer, Admin, false},
		{Approver, Viewer, true}, {Approver, Approver, true}, {Approver, Admin, false},
		{Admin, Viewer, true}, {Admin, Approver, true}, {Admin, Admin, true},
		{"root", Viewer, false}, {"", Viewer, false}, {Admin, "root", false},
	} {
		if got := tc.have.Allows(tc.need); got != tc.ok {
			t.Errorf("%q.Allows(%q) = %v", tc.have, tc.need, got)
		}
	}
	if _, err := ParseRole("superuser"); !errors.Is(err, ErrBadRole) {
		t.Errorf("ParseRole(superuser): %v", err)
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"ana", true}, {"ana.silva", true}, {"ci-bot_2", true}, {"ana@example.com", true}, {"A1", true},
		{"", false}, {"-ana", false}, {".hidden", false}, {"ana silva", false}, {"ana/../x", false},
		{"ana\n", false}, {strings.Repeat("a", 64), true}, {strings.Repeat("a", 65), false}, {"émile", false},
	} {
		if err := ValidName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v", tc.name, err)
		}
	}
}

// Add, authenticate, rotate, remove; the file holds hashes only, mode 0600.
func TestStore(t *testing.T) {
	ctx := context.Background()
	s, clk := newStore(t)
	if _, err := s.Authenticate(ctx, "anything"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("no file: %v, want ErrUnavailable", err)
	}
	u, tok, err := s.Add(ctx, "ana", Approver)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "ks_"+u.TokenID+"_") || len(tok) != 3+8+1+64 {
		t.Fatalf("token %q does not read ks_<id>_<64 hex> (id %s)", tok, u.TokenID)
	}
	if !u.Created.Equal(clk.Now()) || !u.TokenSet.Equal(clk.Now()) {
		t.Fatalf("times %v %v, want the clock's", u.Created, u.TokenSet)
	}
	if _, _, err := s.Add(ctx, "ana", Admin); !errors.Is(err, ErrExists) {
		t.Fatalf("second add: %v, want ErrExists", err)
	}
	if _, _, err := s.Add(ctx, "bad name", Admin); !errors.Is(err, ErrBadName) {
		t.Fatalf("bad name: %v", err)
	}
	if _, _, err := s.Add(ctx, "bob", "root"); !errors.Is(err, ErrBadRole) {
		t.Fatalf("bad role: %v", err)
	}
	_, adminTok, err := s.Add(ctx, "root-person", Admin)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Authenticate(ctx, tok)
	if err != nil || got.Name != "ana" || got.Role != Approver {
		t.Fatalf("Authenticate = %+v, %v", got, err)
	}
	for _, bad := range []string{"", tok + "x", tok[:len(tok)-1], strings.ToUpper(tok), u.TokenSHA256} {
		if _, err := s.Authenticate(ctx, bad); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("Authenticate(%q) = %v, want ErrUnauthenticated", bad, err)
		}
	}
	// The file holds no token, only hashes; mode 0600.
	b, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{tok, adminTok, tok[12:], adminTok[12:]} {
		if strings.Contains(string(b), secret) {
			t.Fatalf("the users file holds a token:\n%s", b)
		}
	}
	if !strings.Contains(string(b), u.TokenSHA256) {
		t.Fatalf("the users file lacks the hash:\n%s", b)
	}
	if fi, _ := os.Stat(s.Path()); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	// Rotate: the old token dies, the new one works.
	clk.Advance(time.Hour)
	ru, newTok, err := s.Rotate(ctx, "ana")
	if err != nil {
		t.Fatal(err)
	}
	if ru.TokenID == u.TokenID || !ru.TokenSet.Equal(clk.Now()) || !ru.Created.Equal(u.Created) {
		t.Fatalf("rotated %+v", ru)
	}
	if _, err := s.Authenticate(ctx, tok); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("old token after rotation: %v", err)
	}
	if got, err := s.Authenticate(ctx, newTok); err != nil || got.Name != "ana" {
		t.Fatalf("new token: %+v %v", got, err)
	}
	if _, _, err := s.Rotate(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rotate nobody: %v", err)
	}
	// Remove; the last admin stays.
	if err := s.Remove(ctx, "root-person"); !errors.Is(err, ErrLastAdmin) {
		t.Fatalf("removing the last admin: %v", err)
	}
	if err := s.Remove(ctx, "ana"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, newTok); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("removed user's token: %v", err)
	}
	if err := s.Remove(ctx, "ana"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second remove: %v", err)
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "root-person" {
		t.Fatalf("List = %+v, %v", list, err)
	}
	// No temporary or lock file is left behind.
	ents, _ := os.ReadDir(filepath.Dir(s.Path()))
	if len(ents) != 1 {
		t.Fatalf("files left: %v", ents)
	}
}

// The compare is subtle.ConstantTimeCompare, called for every user whatever matches,
// so the time taken does not tell which user (or how many) a token got past.
func TestConstantTimeCompare(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	if reflect.ValueOf(s.compare).Pointer() != reflect.ValueOf(subtle.ConstantTimeCompare).Pointer() {
		t.Fatal("the store does not compare with subtle.ConstantTimeCompare")
	}
	var toks []string
	for i := range 5 {
		_, tok, err := s.Add(ctx, fmt.Sprintf("u%d", i), Viewer)
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	calls := 0
	s.compare = func(x, y []byte) int { calls++; return subtle.ConstantTimeCompare(x, y) }
	for _, tok := range append(toks, "ks_00000000_"+strings.Repeat("0", 64)) {
		calls = 0
		_, _ = s.Authenticate(ctx, tok)
		if calls != 5 {
			t.Fatalf("%d compares for 5 users", calls)
		}
	}
}

// A file that does not parse authenticates no one and is never overwritten; fixed, it
// is read again.
func TestBrokenFile(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	_, tok, err := s.Add(ctx, "ana", Admin)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(s.Path())
	for _, bad := range []string{
		"{",
		`{"version":2,"users":[]}`,
		`{"version":1,"users":[{"name":"ana","role":"god","token_id":"x","token_sha256":"` + strings.Repeat("0", 64) + `"}]}`,
		`{"version":1,"users":[{"name":"ana","role":"admin","token_id":"x","token_sha256":"short"}]}`,
		`{"version":1,"users":[],"extra":1}`,
	} {
		if err := os.WriteFile(s.Path(), []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, tok); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("%s: %v, want ErrUnavailable", bad, err)
		}
		if _, _, err := s.Add(ctx, "bob", Viewer); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("add over %s: %v", bad, err)
		}
	}
	if err := writeFileAtomic(s.Path(), good); err != nil {
		t.Fatal(err)
	}
	if u, err := s.Authenticate(ctx, tok); err != nil || u.Name != "ana" {
		t.Fatalf("after the fix: %+v %v", u, err)
	}
}

// Another process's writes (a second Store on the same file) are seen by a reader
// authenticating concurrently; no token ever authenticates as another user. Run with
// -race.
func TestConcurrentReload(t *testing.T) {
	ctx := context.Background()
	reader, _ := newStore(t)
	writer := Open(reader.Path(), Options{})
	if _, _, err := writer.Add(ctx, "admin", Admin); err != nil {
		t.Fatal(err)
	}
	type issued struct{ name, tok string }
	var (
		mu  sync.Mutex
		all []issued
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				snapshot := append([]issued(nil), all...)
				mu.Unlock()
				for _, is := range snapshot {
					u, err := reader.Authenticate(ctx, is.tok)
					if err == nil && u.Name != is.name {
						errs <- fmt.Errorf("%s's token authenticated as %s", is.name, u.Name)
						return
					}
					if err != nil && !errors.Is(err, ErrUnauthenticated) {
						errs <- err
						return
					}
				}
			}
		}()
	}
	for i := range 30 {
		name := fmt.Sprintf("user%d", i)
		_, tok, err := writer.Add(ctx, name, Viewer)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		all = append(all, issued{name, tok})
		mu.Unlock()
		// A write is visible to the reader once done.
		if u, err := reader.Authenticate(ctx, tok); err != nil || u.Name != name {
			t.Fatalf("after add %s: %+v %v", name, u, err)
		}
		if i%3 == 0 {
			if err := writer.Remove(ctx, name); err != nil {
				t.Fatal(err)
			}
			if _, err := reader.Authenticate(ctx, tok); !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("after remove %s: %v", name, err)
			}
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Concurrent writers (several `killswitch users add` at once) lose no user.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := Open(s.Path(), Options{}) // its own "process"
			if _, _, err := w.Add(ctx, fmt.Sprintf("w%d", i), Viewer); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if list, err := s.List(ctx); err != nil || len(list) != 8 {
		t.Fatalf("List = %d users, %v", len(list), err)
	}
}

func TestBootstrap(t *testing.T) {
	ctx := context.Background()
	t.Run("zero config creates admin and its token file", func(t *testing.T) {
		s, _ := newStore(t)
		tf := filepath.Join(filepath.Dir(s.Path()), TokenFileName)
		b, err := s.Bootstrap(ctx, "", tf)
		if err != nil || !b.Created || b.TokenFile != tf || b.Reused || b.User.Name != BootstrapAdmin || b.User.Role != Admin {
			t.Fatalf("Bootstrap = %+v, %v", b, err)
		}
		raw, err := os.ReadFile(tf)
		if err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(tf); fi.Mode().Perm() != 0o600 {
			t.Fatalf("token file mode %v", fi.Mode().Perm())
		}
		if u, err := s.Authenticate(ctx, strings.TrimSpace(string(raw))); err != nil || u.Name != BootstrapAdmin {
			t.Fatalf("the token file's token: %+v %v", u, err)
		}
		// A second start changes nothing.
		if b, err := s.Bootstrap(ctx, "", tf); err != nil || b.Created || b.Changed {
			t.Fatalf("second Bootstrap = %+v, %v", b, err)
		}
	})
	t.Run("an earlier api-token is kept", func(t *testing.T) {
		s, _ := newStore(t)
		tf := filepath.Join(filepath.Dir(s.Path()), TokenFileName)
		old := "0123456789abcdef0123456789abcdef"
		if err := os.WriteFile(tf, []byte(old+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if b, err := s.Bootstrap(ctx, "", tf); err != nil || !b.Created || !b.Reused {
			t.Fatalf("Bootstrap = %+v, %v", b, err)
		}
		if u, err := s.Authenticate(ctx, old); err != nil || u.Name != BootstrapAdmin {
			t.Fatalf("the earlier token: %+v %v", u, err)
		}
	})
	t.Run("a configured token is admin's, every start", func(t *testing.T) {
		s, _ := newStore(t)
		tf := filepath.Join(filepath.Dir(s.Path()), TokenFileName)
		if _, err := s.Bootstrap(ctx, "short", tf); !errors.Is(err, ErrBadToken) {
			t.Fatalf("short token: %v", err)
		}
		one, two := "configured-token-one-0123456789", "configured-token-two-0123456789"
		if b, err := s.Bootstrap(ctx, one, tf); err != nil || !b.Changed || !b.Created || b.TokenFile != "" {
			t.Fatalf("Bootstrap = %+v, %v", b, err)
		}
		if _, err := os.Stat(tf); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a configured token was written to %s: %v", tf, err)
		}
		if _, _, err := s.Add(ctx, "ana", Viewer); err != nil {
			t.Fatal(err)
		}
		if b, err := s.Bootstrap(ctx, one, tf); err != nil || b.Changed {
			t.Fatalf("same token again = %+v, %v", b, err)
		}
		if b, err := s.Bootstrap(ctx, two, tf); err != nil || !b.Changed || b.Created {
			t.Fatalf("new token = %+v, %v", b, err)
		}
		if _, err := s.Authenticate(ctx, one); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("the replaced token: %v", err)
		}
		if u, err := s.Authenticate(ctx, two); err != nil || u.Name != BootstrapAdmin || u.Role != Admin {
			t.Fatalf("the configured token: %+v %v", u, err)
		}
		if list, _ := s.List(ctx); len(list) != 2 {
			t.Fatalf("users %+v", list)
		}
		raw, _ := os.ReadFile(s.Path())
		if strings.Contains(string(raw), two) {
			t.Fatal("the users file holds the configured token")
		}
	})
}
