package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	aeadwrapper "github.com/hashicorp/go-kms-wrapping/wrappers/aead/v2"
	kv "github.com/hashicorp/vault-plugin-secrets-kv"
	logicalDb "github.com/hashicorp/vault/builtin/logical/database"
	"github.com/hashicorp/vault/builtin/plugin"
	"github.com/hashicorp/vault/helper/namespace"
	vaulthttp "github.com/hashicorp/vault/http"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/physical"
	"github.com/hashicorp/vault/sdk/physical/file"
	"github.com/hashicorp/vault/sdk/physical/inmem"
	"github.com/hashicorp/vault/vault"
	vaultseal "github.com/hashicorp/vault/vault/seal"
)

// stateFileName is the file, inside the storage directory, holding the unseal key and
// the root token of a persistent dev server (mode 0600).
const stateFileName = "devvault-state.json"

// storageSubdir is the directory, inside the storage directory, used by Vault's file
// physical backend.
const storageSubdir = "data"

// ErrStateMissing means a storage directory holds an initialised Vault but no state
// file, so it cannot be unsealed. Permanent: remove the directory.
var ErrStateMissing = errors.New("storage holds an initialised Vault but no unseal state")

// ErrRootTokenMismatch means a persistent storage directory was initialised with another
// root token than the one requested. Permanent.
var ErrRootTokenMismatch = errors.New("storage was initialised with a different root token")

// config is the parsed command line.
type config struct {
	addr        string
	rootToken   string
	storageDir  string
	logLevel    string
	allowRemote bool
}

// state is what a persistent dev server keeps beside its storage to unseal on restart.
type state struct {
	UnsealKey string `json:"unseal_key"`
	RootToken string `json:"root_token"`
}

// server is a running dev Vault: the core and the HTTP server in front of it.
type server struct {
	core   *vault.Core
	http   *http.Server
	ln     net.Listener
	logger hclog.Logger
	served chan error
}

// startServer creates, initialises (or unseals) and serves a dev Vault.
func startServer(ctx context.Context, cfg config, logger hclog.Logger) (*server, error) {
	if err := checkAddr(cfg.addr, cfg.allowRemote); err != nil {
		return nil, err
	}
	if cfg.rootToken == "" {
		return nil, errors.New("-root-token must not be empty")
	}
	backend, err := newPhysical(cfg.storageDir, logger)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.addr, err)
	}
	addr := ln.Addr().String()

	core, err := vault.NewCore(&vault.CoreConfig{
		Physical:     backend,
		StorageType:  storageType(cfg.storageDir),
		RedirectAddr: "http://" + addr,
		Seal:         vault.NewDefaultSeal(vaultseal.NewAccess(aeadwrapper.NewShamirWrapper())),
		CredentialBackends: map[string]logical.Factory{
			"plugin": plugin.Factory,
		},
		LogicalBackends: map[string]logical.Factory{
			"plugin":   plugin.Factory,
			"database": logicalDb.Factory,
			"kv":       kv.Factory,
		},
		BuiltinRegistry: newRegistry(),
		Logger:          logger,
		DisableMlock:    true,
		DevToken:        cfg.rootToken,
	})
	if err != nil && vault.IsFatalError(err) {
		_ = ln.Close()
		return nil, fmt.Errorf("create vault core: %w", err)
	}
	if err != nil {
		logger.Warn("non-fatal error creating the vault core", "error", err)
	}

	s := &server{core: core, ln: ln, logger: logger, served: make(chan error, 1)}
	if err := s.initOrUnseal(ctx, cfg); err != nil {
		_ = ln.Close()
		_ = core.Shutdown()
		return nil, err
	}
	s.http = &http.Server{
		Handler:           vaulthttp.Handler.Handler(&vault.HandlerProperties{Core: core}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          logger.StandardLogger(nil),
	}
	go func() { s.served <- s.http.Serve(ln) }()
	return s, nil
}

// addr returns the address the server listens on.
func (s *server) addr() string { return s.ln.Addr().String() }

// shutdown stops accepting requests, waits for in-flight ones (bounded by ctx), and
// shuts the core down (which seals it).
func (s *server) shutdown(ctx context.Context) error {
	var errs []error
	if err := s.http.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stop http server: %w", err))
	}
	if err := s.core.Shutdown(); err != nil {
		errs = append(errs, fmt.Errorf("shut down vault core: %w", err))
	}
	return errors.Join(errs...)
}

// newPhysical returns in-memory storage, or Vault's file backend under dir.
func newPhysical(dir string, logger hclog.Logger) (physical.Backend, error) {
	if dir == "" {
		b, err := inmem.NewInmem(nil, logger)
		if err != nil {
			return nil, fmt.Errorf("create in-memory storage: %w", err)
		}
		return b, nil
	}
	path := filepath.Join(dir, storageSubdir)
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("create storage directory: %w", err)
	}
	b, err := file.NewFileBackend(map[string]string{"path": path}, logger)
	if err != nil {
		return nil, fmt.Errorf("create file storage in %s: %w", path, err)
	}
	return b, nil
}

func storageType(dir string) string {
	if dir == "" {
		return "inmem"
	}
	return "file"
}

// initOrUnseal initialises a fresh Vault (one unseal key, fixed root token, engines
// mounted) or unseals one found in persistent storage.
func (s *server) initOrUnseal(ctx context.Context, cfg config) error {
	ctx = namespace.ContextWithNamespace(ctx, namespace.RootNamespace)
	initialized, err := s.core.Initialized(ctx)
	if err != nil {
		return fmt.Errorf("check whether vault is initialised: %w", err)
	}
	if initialized {
		return s.unsealExisting(cfg)
	}
	return s.initFresh(ctx, cfg)
}

func (s *server) unsealExisting(cfg config) error {
	if cfg.storageDir == "" {
		return errors.New("in-memory storage is unexpectedly initialised")
	}
	st, err := readState(cfg.storageDir)
	if err != nil {
		return err
	}
	if st.RootToken != cfg.rootToken {
		return fmt.Errorf("%w: remove %s or pass the token it was created with", ErrRootTokenMismatch, cfg.storageDir)
	}
	key, err := base64.StdEncoding.DecodeString(st.UnsealKey)
	if err != nil {
		return fmt.Errorf("decode unseal key in %s: %w", stateFileName, err)
	}
	unsealed, err := s.core.Unseal(key)
	if err != nil {
		return fmt.Errorf("unseal: %w", err)
	}
	if !unsealed {
		return errors.New("unseal: vault is still sealed after the single key share")
	}
	return nil
}

func (s *server) initFresh(ctx context.Context, cfg config) error {
	res, err := s.core.Initialize(ctx, &vault.InitParams{
		BarrierConfig: &vault.SealConfig{SecretShares: 1, SecretThreshold: 1},
	})
	if err != nil {
		return fmt.Errorf("initialise vault: %w", err)
	}
	key := append([]byte(nil), res.SecretShares[0]...)
	unsealed, err := s.core.Unseal(key)
	if err != nil {
		return fmt.Errorf("unseal: %w", err)
	}
	if !unsealed {
		return errors.New("unseal: vault is still sealed after the single key share")
	}

	// Replace the generated root token with the fixed one, as `vault server -dev` does.
	resp, err := s.handle(ctx, res.RootToken, "auth/token/create", map[string]interface{}{
		"id":                cfg.rootToken,
		"policies":          []string{"root"},
		"no_parent":         true,
		"no_default_policy": true,
	})
	if err != nil {
		return fmt.Errorf("create the fixed root token: %w", err)
	}
	if resp == nil || resp.Auth == nil {
		return errors.New("create the fixed root token: no auth in the response")
	}
	if _, err := s.handle(ctx, res.RootToken, "auth/token/revoke-self", nil); err != nil {
		return fmt.Errorf("revoke the generated root token: %w", err)
	}

	steps := []struct {
		what string
		path string
		data map[string]interface{}
	}{
		{"mount KV v2 at secret/", "sys/mounts/secret", map[string]interface{}{
			"type": "kv", "description": "key/value secret storage",
			"options": map[string]string{"version": "2"},
		}},
		{"enable approle at auth/approle", "sys/auth/approle", map[string]interface{}{"type": "approle"}},
		{"mount the database engine at database/", "sys/mounts/database", map[string]interface{}{"type": "database"}},
	}
	for _, st := range steps {
		if _, err := s.handle(ctx, cfg.rootToken, st.path, st.data); err != nil {
			return fmt.Errorf("%s: %w", st.what, err)
		}
	}
	if cfg.storageDir != "" {
		st := state{UnsealKey: base64.StdEncoding.EncodeToString(key), RootToken: cfg.rootToken}
		if err := writeState(cfg.storageDir, st); err != nil {
			return err
		}
	}
	return nil
}

// handle sends an update request straight to the core.
func (s *server) handle(ctx context.Context, token, path string, data map[string]interface{}) (*logical.Response, error) {
	resp, err := s.core.HandleRequest(ctx, &logical.Request{
		Operation:   logical.UpdateOperation,
		ClientToken: token,
		Path:        path,
		Data:        data,
	})
	if err != nil {
		return nil, err
	}
	if resp != nil && resp.IsError() {
		return nil, resp.Error()
	}
	return resp, nil
}

func readState(dir string) (state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFileName))
	if errors.Is(err, fs.ErrNotExist) {
		return state{}, fmt.Errorf("%w: %s has no %s (interrupted first start?); remove the directory", ErrStateMissing, dir, stateFileName)
	}
	if err != nil {
		return state{}, fmt.Errorf("read unseal state: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return state{}, fmt.Errorf("parse %s: %w", stateFileName, err)
	}
	if st.UnsealKey == "" || st.RootToken == "" {
		return state{}, fmt.Errorf("%s lacks the unseal key or the root token", stateFileName)
	}
	return st, nil
}

// writeState writes the state file atomically with mode 0600.
func writeState(dir string, st state) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode unseal state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, stateFileName+".*")
	if err != nil {
		return fmt.Errorf("write unseal state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write unseal state: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write unseal state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write unseal state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write unseal state: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFileName)); err != nil {
		return fmt.Errorf("write unseal state: %w", err)
	}
	return nil
}

// checkAddr refuses listen addresses that are not loopback unless remote access is
// explicitly allowed.
func checkAddr(addr string, allowRemote bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("invalid -addr %q: %w", addr, err)
	}
	if allowRemote {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-addr %q is not a loopback address; pass -allow-remote to listen on it", addr)
	}
	return nil
}
