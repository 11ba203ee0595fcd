package vault_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions/vault"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestConnect(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := e.root.Logical()
	if _, err := l.Write("auth/approle/role/killswitch", map[string]any{"token_policies": "killswitch", "token_ttl": "1h"}); err != nil {
		t.Fatal(err)
	}
	roleID, err := l.Read("auth/approle/role/killswitch/role-id")
	if err != nil {
		t.Fatal(err)
	}
	secretID := func(wrapped bool) string {
		t.Helper()
		c := e.v.Client(t)
		if wrapped {
			c.SetWrappingLookupFunc(func(string, string) string { return "5m" })
		}
		s, err := c.Logical().Write("auth/approle/role/killswitch/secret-id", nil)
		if err != nil {
			t.Fatal(err)
		}
		if wrapped {
			return s.WrapInfo.Token
		}
		return s.Data["secret_id"].(string)
	}
	file := func(content string) string {
		p := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	inv := killswitch.Inventory{"acme": {Credentials: map[string]killswitch.Credential{"api": {Kind: killswitch.CredTokenAccessor, Accessor: "x"}}}}
	noEnv := func(string) string { return "" }
	wrapped := secretID(true)
	ksToken := e.ks.Token()
	tests := []struct {
		name    string
		vc      vault.Settings
		getenv  func(string) string
		wantErr string
	}{
		{"token from the environment", vault.Settings{}, func(k string) string {
			if k == vault.EnvToken {
				return ksToken
			}
			return ""
		}, ""},
		{"token file", vault.Settings{TokenFile: file(ksToken)}, noEnv, ""},
		{"approle", vault.Settings{AppRole: &vault.AppRole{Mount: "approle", RoleID: roleID.Data["role_id"].(string), SecretIDFile: file(secretID(false))}}, noEnv, ""},
		{"approle with a wrapped secret-id", vault.Settings{AppRole: &vault.AppRole{Mount: "approle", RoleID: roleID.Data["role_id"].(string), SecretIDFile: file(wrapped), Wrapped: true}}, noEnv, ""},
		{"a wrapping token works once", vault.Settings{AppRole: &vault.AppRole{Mount: "approle", RoleID: roleID.Data["role_id"].(string), SecretIDFile: file(wrapped), Wrapped: true}}, noEnv, "unwrap"},
		{"no token", vault.Settings{}, noEnv, "no Vault token"},
		{"a token that does not work", vault.Settings{}, func(string) string { return "hvs.nope" }, "does not work"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.vc.Addr = e.v.Addr
			core, logs := observer.New(zap.DebugLevel)
			c, err := vault.Connect(ctx, tt.vc, tt.getenv, zap.New(core))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Connect = %v, want an error about %q", err, tt.wantErr)
				}
				if tt.name == "no token" && !errors.Is(err, vault.ErrNoToken) {
					t.Fatalf("Connect = %v, want ErrNoToken", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if root, err := vault.CheckCapabilities(ctx, c, inv); err != nil || root {
				t.Fatalf("capabilities: root=%t %v", root, err)
			}
			time.Sleep(50 * time.Millisecond) // let the renewer log
			for _, entry := range logs.All() {
				for _, s := range append([]string{entry.Message}, fieldStrings(entry.ContextMap())...) {
					if strings.Contains(s, c.Token()) || strings.Contains(s, ksToken) {
						t.Fatalf("a log line shows the token: %s", s)
					}
				}
			}
		})
	}
}

func fieldStrings(m map[string]any) []string {
	var out []string
	for _, v := range m {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
