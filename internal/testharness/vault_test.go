package testharness

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/killswitch-dev/killswitch/internal/devvault"
)

func TestDevVaultKVv2(t *testing.T) {
	v := DevVault(t)
	c := v.Client(t)
	ctx := context.Background()
	kv := c.KVv2("secret")

	if _, err := kv.Put(ctx, "vendors/mailer", map[string]any{"api_key": "k1"}); err != nil {
		t.Fatalf("kv put: %v", err)
	}
	if _, err := kv.Put(ctx, "vendors/mailer", map[string]any{"api_key": "k2"}); err != nil {
		t.Fatalf("kv put v2: %v", err)
	}
	got, err := kv.Get(ctx, "vendors/mailer")
	if err != nil {
		t.Fatalf("kv get: %v", err)
	}
	if got.Data["api_key"] != "k2" || got.VersionMetadata.Version != 2 {
		t.Fatalf("kv get = %v (version %d), want k2 at version 2", got.Data, got.VersionMetadata.Version)
	}
	if err := kv.Destroy(ctx, "vendors/mailer", []int{1}); err != nil {
		t.Fatalf("kv destroy: %v", err)
	}
	// Reading a destroyed version is not an error: check the metadata instead.
	meta, err := kv.GetMetadata(ctx, "vendors/mailer")
	if err != nil {
		t.Fatalf("kv metadata: %v", err)
	}
	var destroyed bool
	for _, vm := range meta.Versions {
		if vm.Version == 1 {
			destroyed = vm.Destroyed
		}
	}
	if !destroyed {
		t.Fatalf("version 1 not destroyed: %+v", meta.Versions)
	}
}

func TestDevVaultTokenRevokeAccessor(t *testing.T) {
	v := DevVault(t)
	c := v.Client(t)
	if err := c.Sys().PutPolicy("reader", `path "secret/data/*" { capabilities = ["read"] }`); err != nil {
		t.Fatalf("put policy: %v", err)
	}
	sec, err := c.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{"reader"}, TTL: "1h"})
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	token, accessor := sec.Auth.ClientToken, sec.Auth.Accessor
	if _, err := c.Auth().Token().Lookup(token); err != nil {
		t.Fatalf("lookup of a live token: %v", err)
	}
	if err := c.Auth().Token().RevokeAccessor(accessor); err != nil {
		t.Fatalf("revoke accessor: %v", err)
	}
	_, err = c.Auth().Token().Lookup(token)
	if err == nil || !strings.Contains(err.Error(), "bad token") {
		t.Fatalf("lookup after revoke-accessor: %v, want bad token", err)
	}
}

func TestDevVaultAppRole(t *testing.T) {
	v := DevVault(t)
	c := v.Client(t)
	l := c.Logical()
	if _, err := l.Write("auth/approle/role/mailer", map[string]any{"token_policies": "default", "token_ttl": "1h"}); err != nil {
		t.Fatalf("create approle role: %v", err)
	}
	rid, err := l.Read("auth/approle/role/mailer/role-id")
	if err != nil {
		t.Fatalf("read role-id: %v", err)
	}
	sid, err := l.Write("auth/approle/role/mailer/secret-id", nil)
	if err != nil {
		t.Fatalf("create secret-id: %v", err)
	}
	creds := map[string]any{"role_id": rid.Data["role_id"], "secret_id": sid.Data["secret_id"]}
	login, err := l.Write("auth/approle/login", creds)
	if err != nil {
		t.Fatalf("approle login: %v", err)
	}
	if login.Auth == nil || login.Auth.ClientToken == "" {
		t.Fatalf("approle login gave no token: %+v", login)
	}
	if _, err := l.Write("auth/approle/role/mailer/secret-id-accessor/destroy",
		map[string]any{"secret_id_accessor": sid.Data["secret_id_accessor"]}); err != nil {
		t.Fatalf("destroy secret-id by accessor: %v", err)
	}
	if _, err := l.Write("auth/approle/login", creds); err == nil || !strings.Contains(err.Error(), "invalid secret id") {
		t.Fatalf("login with a destroyed secret-id: %v, want invalid secret id", err)
	}
}

func TestDevVaultPauseResume(t *testing.T) {
	v := DevVault(t)
	c := v.Client(t)
	c.SetClientTimeout(300 * time.Millisecond)
	if _, err := c.Sys().Health(); err != nil {
		t.Fatalf("health before pause: %v", err)
	}
	if err := v.Process.Pause(); err != nil {
		t.Fatalf("pause: %v", err)
	}
	_, err := c.Sys().Health()
	var netErr net.Error
	if err == nil || !errors.As(err, &netErr) || !netErr.Timeout() {
		t.Fatalf("health while paused: %v, want a timeout", err)
	}
	if err := v.Process.Resume(); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if _, err := c.Sys().Health(); err != nil {
		t.Fatalf("health after resume: %v", err)
	}
}

func TestDevVaultRestart(t *testing.T) {
	tests := []struct {
		name     string
		opts     []VaultOption
		wantKept bool
	}{
		{"persistent storage keeps state", []VaultOption{WithPersistentStorage()}, true},
		{"in-memory storage starts empty", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := DevVault(t, tt.opts...)
			c := v.Client(t)
			ctx := context.Background()
			if _, err := c.KVv2("secret").Put(ctx, "kept", map[string]any{"v": "before restart"}); err != nil {
				t.Fatalf("kv put: %v", err)
			}
			pid := v.Process.PID()
			rctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			if err := v.Process.Restart(rctx); err != nil {
				t.Fatalf("restart: %v", err)
			}
			if v.Process.PID() == pid {
				t.Fatalf("restart kept pid %d", pid)
			}
			if v.Process.Addr() != v.Addr {
				t.Fatalf("restart moved from %s to %s", v.Addr, v.Process.Addr())
			}
			got, err := c.KVv2("secret").Get(ctx, "kept")
			switch {
			case tt.wantKept && err != nil:
				t.Fatalf("kv get after restart: %v", err)
			case tt.wantKept && got.Data["v"] != "before restart":
				t.Fatalf("kv get after restart = %v", got.Data)
			case !tt.wantKept && !errors.Is(err, api.ErrSecretNotFound):
				t.Fatalf("kv get after in-memory restart: %v, want not found", err)
			}
			// The fixed root token works after a restart either way.
			if _, err := c.Auth().Token().LookupSelf(); err != nil {
				t.Fatalf("root token after restart: %v", err)
			}
		})
	}
}

func TestDevVaultRefusesWrongToken(t *testing.T) {
	v := DevVault(t)
	c := v.Client(t)
	c.SetToken("not-the-root-token")
	_, err := c.Logical().Read("sys/mounts")
	var respErr *api.ResponseError
	if !errors.As(err, &respErr) || respErr.StatusCode != http.StatusForbidden {
		t.Fatalf("read with a wrong token: %v, want 403", err)
	}
	u, err := url.Parse(v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if host := u.Hostname(); host != "127.0.0.1" {
		t.Fatalf("dev Vault listens on %s, want 127.0.0.1", host)
	}
}

// BenchmarkDevVaultStartStop measures starting a dev Vault until it is ready (initialised,
// unsealed, engines mounted) plus stopping it cleanly.
func BenchmarkDevVaultStartStop(b *testing.B) {
	bin := DevVaultBinary(b)
	ctx := context.Background()
	for b.Loop() {
		p, err := devvault.Start(ctx, devvault.StartOptions{BinPath: bin})
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Stop(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDevVaultBuildCached measures Build when the binary is already cached (hashing
// the sources and asking the go command for its version).
func BenchmarkDevVaultBuildCached(b *testing.B) {
	want := DevVaultBinary(b)
	ctx := context.Background()
	for b.Loop() {
		bin, err := devvault.Build(ctx, devvault.BuildOptions{})
		if err != nil || bin != want {
			b.Fatalf("Build = %s, %v; want %s", bin, err, want)
		}
	}
}
