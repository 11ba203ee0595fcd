package vault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
	"go.uber.org/zap"
)

// Settings configures the Vault connection (the `service.vault:` section of the
// configuration).
type Settings struct {
	// Addr is Vault's address (also VAULT_ADDR). Empty: actions are planned, not applied.
	Addr string `yaml:"addr"`
	// TokenFile holds a Vault token (also VAULT_TOKEN).
	TokenFile string `yaml:"token_file"`
	// AppRole logs in with a role id and a secret id instead of a token.
	AppRole *AppRole `yaml:"approle"`
	// CACert verifies Vault's TLS certificate.
	CACert string `yaml:"ca_cert"`
	// AllowBroadToken lets `killswitch run` start with a root token or a token that can
	// do more than the inventory's policy (also --allow-broad-vault-token). It is then
	// loud: an error in the log at start, vault_token_scope in /api/status and
	// killswitch_vault_token_broad 1. Default false: such a token is refused.
	AllowBroadToken bool `yaml:"allow_broad_token"`
}

// AppRole is an AppRole login.
type AppRole struct {
	// Mount is the AppRole auth mount. Default approle.
	Mount string `yaml:"mount"`
	// RoleID is the role id.
	RoleID string `yaml:"role_id"`
	// SecretIDFile holds the secret id, or a response-wrapping token for it when Wrapped.
	SecretIDFile string `yaml:"secret_id_file"`
	// Wrapped says SecretIDFile holds a wrapping token to unwrap (single use).
	Wrapped bool `yaml:"wrapped"`
}

// EnvToken is the environment variable holding a Vault token.
const EnvToken = "VAULT_TOKEN"

// ErrNoToken is returned by Connect when neither a token nor an AppRole login is configured.
var ErrNoToken = errors.New("no Vault token: set VAULT_TOKEN, service.vault.token_file or service.vault.approle")

// Connect returns a client for the configured Vault, logged in, and keeps its token
// alive until ctx ends: a renewable token is renewed before it expires, and an AppRole
// login is redone when the token reaches its maximum TTL. The token comes from
// VAULT_TOKEN (getenv), service.vault.token_file, or an AppRole login whose secret-id
// file may hold a response-wrapping token (unwrapped once; the secret-id stays in
// memory only). No token or secret-id is ever logged.
func Connect(ctx context.Context, vc Settings, getenv func(string) string, log *zap.Logger) (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Address = vc.Addr
	cfg.Timeout = 10 * time.Second
	cfg.MaxRetries = 0
	if vc.CACert != "" {
		if err := cfg.ConfigureTLS(&api.TLSConfig{CACert: vc.CACert}); err != nil {
			return nil, fmt.Errorf("vault: ca_cert: %w", err)
		}
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	client.ClearNamespace()
	var login func(context.Context) (*api.Secret, error)
	switch {
	case vc.AppRole != nil:
		secretID, err := readSecretID(ctx, client, vc.AppRole)
		if err != nil {
			return nil, err
		}
		login = func(ctx context.Context) (*api.Secret, error) {
			s, err := client.Logical().WriteWithContext(ctx, "auth/"+strings.Trim(vc.AppRole.Mount, "/")+"/login",
				map[string]any{"role_id": vc.AppRole.RoleID, "secret_id": secretID})
			if err != nil {
				return nil, fmt.Errorf("vault: approle login: %w", err)
			}
			if s == nil || s.Auth == nil {
				return nil, errors.New("vault: approle login returned no token")
			}
			client.SetToken(s.Auth.ClientToken)
			return s, nil
		}
	default:
		token := getenv(EnvToken)
		if token == "" && vc.TokenFile != "" {
			b, err := os.ReadFile(vc.TokenFile)
			if err != nil {
				return nil, fmt.Errorf("vault: token_file: %w", err)
			}
			token = strings.TrimSpace(string(b))
		}
		if token == "" {
			return nil, ErrNoToken
		}
		client.SetToken(token)
		login = func(ctx context.Context) (*api.Secret, error) {
			s, err := client.Auth().Token().LookupSelfWithContext(ctx)
			if err != nil {
				return nil, fmt.Errorf("vault: the token does not work: %w", err)
			}
			ttl, _ := s.TokenTTL()
			renewable, _ := s.TokenIsRenewable()
			return &api.Secret{Auth: &api.SecretAuth{ClientToken: token, Renewable: renewable, LeaseDuration: int(ttl.Seconds())}}, nil
		}
	}
	s, err := login(ctx)
	if err != nil {
		return nil, err
	}
	log.Info("vault: logged in", zap.String("addr", vc.Addr), zap.Bool("approle", vc.AppRole != nil),
		zap.Duration("ttl", time.Duration(s.Auth.LeaseDuration)*time.Second), zap.Bool("renewable", s.Auth.Renewable))
	go keepAlive(ctx, client, s, login, vc.AppRole != nil, log)
	return client, nil
}

// readSecretID reads the AppRole secret-id, unwrapping it when it is wrapped.
func readSecretID(ctx context.Context, client *api.Client, a *AppRole) (string, error) {
	b, err := os.ReadFile(a.SecretIDFile)
	if err != nil {
		return "", fmt.Errorf("vault: approle secret_id_file: %w", err)
	}
	v := strings.TrimSpace(string(b))
	if !a.Wrapped {
		return v, nil
	}
	s, err := client.Logical().UnwrapWithContext(ctx, v)
	if err != nil {
		return "", fmt.Errorf("vault: unwrap the secret-id (a wrapping token works once; was it used or tampered with?): %w", err)
	}
	id, _ := s.Data["secret_id"].(string)
	if id == "" {
		return "", errors.New("vault: the wrapped response holds no secret_id")
	}
	return id, nil
}

// keepAlive renews the token until it cannot be renewed any more, then logs in again
// (AppRole) or reports that the token will expire (static token).
func keepAlive(ctx context.Context, client *api.Client, s *api.Secret, login func(context.Context) (*api.Secret, error), relogin bool, log *zap.Logger) {
	for ctx.Err() == nil {
		if s.Auth.Renewable && s.Auth.LeaseDuration > 0 {
			w, err := client.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: s})
			if err != nil {
				log.Error("vault: cannot renew the token", zap.Error(err))
				return
			}
			go w.Start()
			err = watch(ctx, w, log)
			w.Stop()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				log.Warn("vault: token renewal stopped", zap.Error(err))
			}
		} else if !relogin {
			if s.Auth.LeaseDuration > 0 {
				log.Warn("vault: the token is not renewable and expires", zap.Duration("in", time.Duration(s.Auth.LeaseDuration)*time.Second))
			}
			return
		}
		if !relogin {
			log.Error("vault: the token reached its maximum TTL; actions will fail until killswitch gets a new token")
			return
		}
		for ctx.Err() == nil {
			ns, err := login(ctx)
			if err == nil {
				s = ns
				log.Info("vault: logged in again")
				break
			}
			log.Error("vault: login failed; retrying in 5s", zap.Error(err))
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
		}
	}
}

func watch(ctx context.Context, w *api.LifetimeWatcher, log *zap.Logger) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.DoneCh():
			return err
		case r := <-w.RenewCh():
			log.Debug("vault: token renewed", zap.Int("ttl_s", r.Secret.Auth.LeaseDuration))
		}
	}
}
