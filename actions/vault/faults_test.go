package vault_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/actions/vault"
)

// fakeVault answers every request with status and body, optionally after a delay: the
// fault paths a real dev Vault cannot be made to produce on demand.
func fakeVault(t *testing.T, status int, body string, delay time.Duration) *api.Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	cfg := api.DefaultConfig()
	cfg.Address = srv.URL
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken("t")
	return c
}

func TestErrorClassification(t *testing.T) {
	const acc = "accessor-in-clear-123"
	token := target(killswitch.ActionRevokeTokenAccessor, killswitch.Credential{Kind: killswitch.CredTokenAccessor, Accessor: acc})
	secretID := target(killswitch.ActionDestroySecretID, killswitch.Credential{Kind: killswitch.CredAppRoleSecretID, Role: "r", SecretIDAccessor: acc})
	tests := []struct {
		name      string
		status    int
		body      string
		delay     time.Duration
		target    actions.Target
		retryable bool
		done      bool // Apply reports already done, no error
	}{
		{"sealed or unavailable", 503, `{"errors":["Vault is sealed"]}`, 0, token, true, false},
		{"rate limited", 429, `{"errors":["request path \"auth/token/revoke-accessor\": rate limit quota exceeded"]}`, 0, token, true, false},
		{"standby without the index", 412, `{"errors":["missing index"]}`, 0, token, true, false},
		{"internal error", 500, `{"errors":["internal error"]}`, 0, token, true, false},
		{"bad request", 400, `{"errors":["missing accessor"]}`, 0, token, false, false},
		{"forbidden", 403, `{"errors":["1 error occurred:\n\t* permission denied\n\n"]}`, 0, token, false, false},
		{"slow", 200, `{}`, 2 * time.Second, token, true, false},
		{"revoked a moment before by another call", 400, `{"errors":["token not found"]}`, 0, token, false, true},
		{"already revoked", 200, `{"warnings":["No token found with this accessor"]}`, 0, token, false, true},
		{"secret-id already destroyed", 404, `{"data":{"error":"failed to find accessor entry for secret_id_accessor: \"` + acc + `\""}}`, 0, secretID, false, true},
		{"role missing", 500, `{"errors":["1 error occurred:\n\t* role \"r\" does not exist\n\n"]}`, 0, secretID, false, false},
		{"error echoes the accessor", 500, `{"errors":["storage failed for ` + acc + `"]}`, 0, secretID, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ex := vault.New(fakeVault(t, tt.status, tt.body, tt.delay))[tt.target.Action.Type]
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			out, err := ex.Apply(ctx, tt.target)
			if tt.done {
				if err != nil || !out.AlreadyDone {
					t.Fatalf("apply = %+v, %v; want already done", out, err)
				}
				return
			}
			switch {
			case err == nil:
				t.Fatalf("apply = %+v, want an error", out)
			case tt.retryable != killswitch.IsRetryable(err):
				t.Fatalf("apply error %v: retryable=%t, want %t", err, killswitch.IsRetryable(err), tt.retryable)
			case !tt.retryable && !errors.Is(err, killswitch.ErrPermanent):
				t.Fatalf("apply error %v is not marked permanent", err)
			case strings.Contains(err.Error(), acc):
				t.Fatalf("error %q shows the accessor in clear", err)
			}
		})
	}
}

func TestConnectionRefusedIsRetryable(t *testing.T) {
	cfg := api.DefaultConfig()
	cfg.Address = "http://127.0.0.1:1"
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = vault.New(c)[killswitch.ActionRevokeLease].Apply(context.Background(),
		target(killswitch.ActionRevokeLease, killswitch.Credential{Kind: killswitch.CredLease, LeaseID: "database/creds/r/x"}))
	if !killswitch.IsRetryable(err) {
		t.Fatalf("connection refused: %v, want retryable", err)
	}
}

func TestInventoryMistakesArePermanent(t *testing.T) {
	ex := vault.New(fakeVault(t, 200, `{}`, 0))
	tests := []struct {
		typ killswitch.ActionType
		id  killswitch.Credential
	}{
		{killswitch.ActionRevokeTokenAccessor, killswitch.Credential{Kind: killswitch.CredTokenAccessor}},
		{killswitch.ActionDestroySecretID, killswitch.Credential{Kind: killswitch.CredAppRoleSecretID, SecretIDAccessor: "x"}},
		{killswitch.ActionRevokeLease, killswitch.Credential{Kind: killswitch.CredLease, LeaseID: "database/creds/*"}},
		{killswitch.ActionRevokeLeasePrefix, killswitch.Credential{Kind: killswitch.CredLeasePrefix, LeasePrefix: "database"}},
		{killswitch.ActionRevokeLeasePrefix, killswitch.Credential{Kind: killswitch.CredLeasePrefix, LeasePrefix: "database/../sys"}},
		{killswitch.ActionRotateKV, killswitch.Credential{Kind: killswitch.CredKV, Path: "vendors/*"}},
		{killswitch.ActionQuarantinePolicy, killswitch.Credential{Kind: killswitch.CredPolicy, Policy: "root"}},
	}
	for _, tt := range tests {
		_, err := ex[tt.typ].Apply(context.Background(), target(tt.typ, tt.id))
		if err == nil || killswitch.IsRetryable(err) {
			t.Errorf("%s with %+v: %v, want a permanent error", tt.typ, tt.id, err)
		}
	}
}
