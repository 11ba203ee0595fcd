package main

import (
	"sort"

	kv "github.com/hashicorp/vault-plugin-secrets-kv"
	credAppRole "github.com/hashicorp/vault/builtin/credential/approle"
	dbPostgres "github.com/hashicorp/vault/plugins/database/postgresql"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/vault"
)

// postgresPluginName is the catalog name of the in-process PostgreSQL database plugin,
// the name a database/config/<name> entry gives as plugin_name.
const postgresPluginName = "postgresql-database-plugin"

// registry is the builtin plugin registry of the dev server: only the engines Killswitch
// uses (approle, kv and the PostgreSQL database plugin; the token store is part of the
// core). Vault's own registry would link every cloud plugin; vault.TestCore's registry
// replaces the PostgreSQL plugin with one that does nothing.
type registry struct {
	credential map[string]logical.Factory
	secrets    map[string]logical.Factory
	database   map[string]func() (interface{}, error)
}

var _ vault.BuiltinRegistry = (*registry)(nil)

// newRegistry returns the registry value; it is built by main, never global.
func newRegistry() *registry {
	return &registry{
		credential: map[string]logical.Factory{"approle": credAppRole.Factory},
		secrets:    map[string]logical.Factory{"kv": kv.Factory},
		database:   map[string]func() (interface{}, error){postgresPluginName: dbPostgres.New},
	}
}

// Contains reports whether name is a builtin plugin of the given type.
func (r *registry) Contains(name string, pluginType consts.PluginType) bool {
	_, ok := r.Get(name, pluginType)
	return ok
}

// Get returns the factory of a builtin plugin. For credential and secrets plugins the
// returned function yields the logical.Factory, as Vault's registry does.
func (r *registry) Get(name string, pluginType consts.PluginType) (func() (interface{}, error), bool) {
	switch pluginType {
	case consts.PluginTypeCredential:
		if f, ok := r.credential[name]; ok {
			return func() (interface{}, error) { return f, nil }, true
		}
	case consts.PluginTypeSecrets:
		if f, ok := r.secrets[name]; ok {
			return func() (interface{}, error) { return f, nil }, true
		}
	case consts.PluginTypeDatabase:
		if f, ok := r.database[name]; ok {
			return f, true
		}
	}
	return nil, false
}

// Keys lists the builtin plugin names of a type, sorted.
func (r *registry) Keys(pluginType consts.PluginType) []string {
	var keys []string
	switch pluginType {
	case consts.PluginTypeCredential:
		for k := range r.credential {
			keys = append(keys, k)
		}
	case consts.PluginTypeSecrets:
		for k := range r.secrets {
			keys = append(keys, k)
		}
	case consts.PluginTypeDatabase:
		for k := range r.database {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// DeprecationStatus reports every registered plugin as supported.
func (r *registry) DeprecationStatus(name string, pluginType consts.PluginType) (consts.DeprecationStatus, bool) {
	if r.Contains(name, pluginType) {
		return consts.Supported, true
	}
	return consts.Unknown, false
}

// IsBuiltinEntPlugin reports false: this is not Vault Enterprise.
func (r *registry) IsBuiltinEntPlugin(string, consts.PluginType) bool { return false }
