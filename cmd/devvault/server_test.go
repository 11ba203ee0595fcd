package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/helper/consts"
)

func TestCheckAddr(t *testing.T) {
	tests := []struct {
		addr        string
		allowRemote bool
		wantErr     string
	}{
		{"127.0.0.1:8200", false, ""},
		{"127.0.0.1:0", false, ""},
		{"127.1.2.3:8200", false, ""},
		{"[::1]:8200", false, ""},
		{"localhost:8200", false, ""},
		{"0.0.0.0:8200", false, "not a loopback"},
		{"10.0.0.5:8200", false, "not a loopback"},
		{"example.com:8200", false, "not a loopback"},
		{":8200", false, "not a loopback"},
		{"0.0.0.0:8200", true, ""},
		{"127.0.0.1", false, "invalid -addr"},
		{"", false, "invalid -addr"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			err := checkAddr(tt.addr, tt.allowRemote)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("checkAddr(%q): %v", tt.addr, err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("checkAddr(%q) = %v, want %q", tt.addr, err, tt.wantErr)
			}
		})
	}
}

func FuzzCheckAddr(f *testing.F) {
	for _, s := range []string{"127.0.0.1:8200", "[::1]:1", "0.0.0.0:1", "localhost:0", "", ":"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		if err := checkAddr(addr, false); err == nil && checkAddr(addr, true) != nil {
			t.Fatalf("%q accepted as loopback but refused with -allow-remote", addr)
		}
	})
}

func TestRunFlagErrors(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		status int
		want   string
	}{
		{"unknown flag", []string{"-nope"}, 2, "flag provided but not defined"},
		{"extra argument", []string{"serve"}, 2, "unexpected arguments"},
		{"bad log level", []string{"-log-level", "loud"}, 2, "invalid -log-level"},
		{"remote address", []string{"-addr", "0.0.0.0:0"}, 1, "-allow-remote"},
		{"empty root token", []string{"-addr", "127.0.0.1:0", "-root-token", ""}, 1, "root-token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if got := run(tt.args, &stdout, &stderr); got != tt.status {
				t.Fatalf("status = %d, want %d; stderr: %s", got, tt.status, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("stderr %q does not mention %q", stderr.String(), tt.want)
			}
			if stdout.Len() != 0 {
				t.Fatalf("printed %q on stdout", stdout.String())
			}
		})
	}
}

func TestReadState(t *testing.T) {
	tests := []struct {
		name    string
		content string // "" means no file
		wantErr string
	}{
		{"missing", "", "no devvault-state.json"},
		{"not json", "{", "parse"},
		{"no key", `{"root_token":"root"}`, "lacks"},
		{"ok", `{"unseal_key":"a2V5","root_token":"root"}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.content != "" {
				if err := os.WriteFile(filepath.Join(dir, stateFileName), []byte(tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := readState(dir)
			if tt.wantErr == "" && err != nil {
				t.Fatal(err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("readState = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestRegistry(t *testing.T) {
	r := newRegistry()
	tests := []struct {
		name string
		typ  consts.PluginType
		want bool
	}{
		{"approle", consts.PluginTypeCredential, true},
		{"kv", consts.PluginTypeSecrets, true},
		{postgresPluginName, consts.PluginTypeDatabase, true},
		{"aws", consts.PluginTypeSecrets, false},
		{"approle", consts.PluginTypeSecrets, false},
		{postgresPluginName, consts.PluginTypeUnknown, false},
	}
	for _, tt := range tests {
		if got := r.Contains(tt.name, tt.typ); got != tt.want {
			t.Errorf("Contains(%s, %v) = %t, want %t", tt.name, tt.typ, got, tt.want)
		}
		if _, ok := r.DeprecationStatus(tt.name, tt.typ); ok != tt.want {
			t.Errorf("DeprecationStatus(%s, %v) found = %t, want %t", tt.name, tt.typ, ok, tt.want)
		}
	}
	if keys := r.Keys(consts.PluginTypeDatabase); len(keys) != 1 || keys[0] != postgresPluginName {
		t.Errorf("database keys = %v", keys)
	}
	f, ok := r.Get(postgresPluginName, consts.PluginTypeDatabase)
	if !ok {
		t.Fatal("no postgres plugin")
	}
	if db, err := f(); err != nil || db == nil {
		t.Fatalf("postgres plugin factory = %v, %v", db, err)
	}
}

// vaultRequest sends one request to the server and decodes the JSON answer.
func vaultRequest(t *testing.T, method, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestPersistentRestart(t *testing.T) {
	dir := t.TempDir()
	logger := hclog.NewNullLogger()
	ctx := context.Background()
	cfg := config{addr: "127.0.0.1:0", rootToken: "fixed-root", storageDir: dir}

	srv, err := startServer(ctx, cfg, logger)
	if err != nil {
		t.Fatalf("first start: %v", err)
	}
	base := "http://" + srv.addr()
	if code, out := vaultRequest(t, http.MethodPost, base+"/v1/secret/data/kept", "fixed-root",
		map[string]any{"data": map[string]any{"v": "x"}}); code != http.StatusOK {
		t.Fatalf("kv put: %d %v", code, out)
	}
	shutdown(t, srv)

	fi, err := os.Stat(filepath.Join(dir, stateFileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %v, want 0600", fi.Mode().Perm())
	}

	srv, err = startServer(ctx, cfg, logger)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	code, out := vaultRequest(t, http.MethodGet, "http://"+srv.addr()+"/v1/secret/data/kept", "fixed-root", nil)
	shutdown(t, srv)
	if code != http.StatusOK {
		t.Fatalf("kv get after restart: %d %v", code, out)
	}
	data, _ := out["data"].(map[string]any)
	inner, _ := data["data"].(map[string]any)
	if inner["v"] != "x" {
		t.Fatalf("kv get after restart = %v", out)
	}

	// The same storage with another root token is refused, not silently reset.
	other := cfg
	other.rootToken = "another"
	if _, err := startServer(ctx, other, logger); !errors.Is(err, ErrRootTokenMismatch) {
		t.Fatalf("start with another root token: %v, want ErrRootTokenMismatch", err)
	}
	// Initialised storage without its state file cannot be unsealed: a clear error.
	if err := os.Remove(filepath.Join(dir, stateFileName)); err != nil {
		t.Fatal(err)
	}
	if _, err := startServer(ctx, cfg, logger); !errors.Is(err, ErrStateMissing) {
		t.Fatalf("start without the state file: %v, want ErrStateMissing", err)
	}
}

func shutdown(t *testing.T, srv *server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}
