package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/killswitch-dev/killswitch/users"
)

// add prints a token once (stdout: the token alone); list shows no token nor hash;
// rotate replaces it; remove makes it fail; names and roles are checked; an existing
// name is refused with the way out.
func TestUsersCommands(t *testing.T) {
	dir := t.TempDir()
	code, tok, stderr := run(t, "users", "add", "ana", "--role", "approver", "--data-dir", dir)
	tok = strings.TrimSpace(tok)
	if code != 0 || !strings.HasPrefix(tok, "ks_") || strings.Count(tok, "\n") != 0 || !strings.Contains(stderr, "shown once") {
		t.Fatalf("add: %d %q %s", code, tok, stderr)
	}
	if strings.Contains(stderr, tok) {
		t.Fatal("the token is printed twice")
	}
	store := users.Open(users.Path(dir), users.Options{})
	if u, err := store.Authenticate(context.Background(), tok); err != nil || u.Name != "ana" || u.Role != users.Approver {
		t.Fatalf("the printed token: %+v %v", u, err)
	}
	if code, _, _ := run(t, "users", "add", "--data-dir", dir, "--role", "admin", "root"); code != 0 {
		t.Fatal("flags before the name")
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"add", "ana", "--role", "viewer"}, 1, "--rotate"},
		{[]string{"add", "bad name", "--role", "viewer"}, 1, "invalid user name"},
		{[]string{"add", "bob", "--role", "root"}, 1, "invalid role"},
		{[]string{"add", "bob"}, 2, "--role is required"},
		{[]string{"add", "ana", "--rotate", "--role", "admin"}, 1, "keeps the user's role"},
		{[]string{"add"}, 2, "want 1 argument"},
		{[]string{"remove", "nobody"}, 1, "no such user"},
		{[]string{"remove", "root"}, 1, "last admin"},
		{[]string{"frobnicate"}, 2, "usage"},
	} {
		code, _, stderr := run(t, append(append([]string{"users"}, tc.args...), "--data-dir", dir)...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("users %v: %d %s; want %d containing %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
	raw, _ := os.ReadFile(users.Path(dir))
	var hashes []string
	var ff struct{ Users []users.User }
	if err := json.Unmarshal(raw, &ff); err != nil {
		t.Fatal(err)
	}
	for _, u := range ff.Users {
		hashes = append(hashes, u.TokenSHA256)
	}
	code, out, stderr := run(t, "users", "list", "--data-dir", dir)
	if code != 0 || !strings.Contains(out, "ana") || !strings.Contains(out, "approver") || !strings.Contains(out, "root") {
		t.Fatalf("list: %d %s %s", code, out, stderr)
	}
	code, jsonOut, _ := run(t, "users", "list", "--json", "--data-dir", dir)
	if code != 0 || !strings.Contains(jsonOut, `"token_id"`) {
		t.Fatalf("list --json: %d %s", code, jsonOut)
	}
	for _, o := range []string{out, jsonOut} {
		for _, secret := range append(hashes, tok, tok[12:]) {
			if strings.Contains(o, secret) {
				t.Fatalf("list shows a token or its hash:\n%s", o)
			}
		}
	}
	// Rotate: a new token, the old one dies.
	code, tok2, _ := run(t, "users", "add", "ana", "--rotate", "--data-dir", dir)
	tok2 = strings.TrimSpace(tok2)
	if code != 0 || tok2 == tok {
		t.Fatalf("rotate: %d %q", code, tok2)
	}
	if _, err := store.Authenticate(context.Background(), tok); err == nil {
		t.Fatal("the old token works after rotation")
	}
	if code, _, stderr := run(t, "users", "remove", "ana", "--data-dir", dir); code != 0 {
		t.Fatalf("remove: %d %s", code, stderr)
	}
	if _, err := store.Authenticate(context.Background(), tok2); err == nil {
		t.Fatal("a removed user's token works")
	}
	if code, out, _ := run(t, "users", "list", "--data-dir", dir); code != 0 || strings.Contains(out, "ana") {
		t.Fatalf("list after remove: %d %s", code, out)
	}
	// KILLSWITCH_DATA_DIR is the default directory; an empty one has no users file.
	empty := filepath.Join(t.TempDir(), "d")
	t.Setenv("KILLSWITCH_DATA_DIR", empty)
	if code, _, stderr := run(t, "users", "list"); code != 1 || !strings.Contains(stderr, "no users file") {
		t.Fatalf("list without a file: %d %s", code, stderr)
	}
}
