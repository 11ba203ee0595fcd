package testharness

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestPostgresLogin(t *testing.T) {
	pg := Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if pg.Host != "127.0.0.1" || pg.Port == 0 {
		t.Fatalf("listening on %s:%d, want 127.0.0.1 and a port", pg.Host, pg.Port)
	}
	if err := pg.Exec(ctx, "CREATE ROLE app LOGIN PASSWORD 'app-pw'"); err != nil {
		t.Fatalf("create role: %v", err)
	}
	tests := []struct {
		name     string
		user     string
		password string
		wantErr  string
	}{
		{"superuser", pg.SuperUser, pg.Password, ""},
		{"new role", "app", "app-pw", ""},
		{"wrong password", "app", "nope", "password authentication failed"},
		{"superuser wrong password", pg.SuperUser, "", "password"},
		{"unknown role", "ghost", "x", "password authentication failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := pg.CanLogin(ctx, tt.user, tt.password)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("CanLogin(%s): %v", tt.user, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("CanLogin(%s) = %v, want an error containing %q", tt.user, err, tt.wantErr)
			}
		})
	}
	exists, err := pg.RoleExists(ctx, "app")
	if err != nil || !exists {
		t.Fatalf("RoleExists(app) = %t, %v", exists, err)
	}
	if exists, err := pg.RoleExists(ctx, "ghost"); err != nil || exists {
		t.Fatalf("RoleExists(ghost) = %t, %v", exists, err)
	}
	if err := pg.Exec(ctx, "SELEKT 1"); err == nil || !strings.Contains(err.Error(), "syntax error") {
		t.Fatalf("Exec of bad SQL: %v, want a syntax error", err)
	}
	for _, u := range []string{pg.URL(), pg.DSN()} {
		if !strings.Contains(u, fmt.Sprint(pg.Port)) || !strings.Contains(u, "sslmode=disable") {
			t.Fatalf("connection string %q lacks the port or sslmode", u)
		}
	}
}

// TestVaultDatabaseCredentials proves the whole dynamic-credential path against real
// servers: Vault issues a PostgreSQL login, it works, revoke-prefix (sync) removes it.
func TestVaultDatabaseCredentials(t *testing.T) {
	pg := Postgres(t)
	v := DevVault(t)
	c := v.Client(t)
	l := c.Logical()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if _, err := l.WriteWithContext(ctx, "database/config/pg", map[string]any{
		"plugin_name":    "postgresql-database-plugin",
		"connection_url": pg.VaultConnectionURL(),
		"username":       pg.SuperUser,
		"password":       pg.Password,
		"allowed_roles":  "readonly",
	}); err != nil {
		t.Fatalf("configure database connection: %v", err)
	}
	if _, err := l.WriteWithContext(ctx, "database/roles/readonly", map[string]any{
		"db_name": "pg",
		"creation_statements": []string{
			`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
			`GRANT pg_read_all_data TO "{{name}}";`,
		},
		"default_ttl": "1h",
		"max_ttl":     "2h",
	}); err != nil {
		t.Fatalf("create database role: %v", err)
	}
	creds, err := l.ReadWithContext(ctx, "database/creds/readonly")
	if err != nil {
		t.Fatalf("read database creds: %v", err)
	}
	user, _ := creds.Data["username"].(string)
	password, _ := creds.Data["password"].(string)
	if user == "" || password == "" || creds.LeaseID == "" {
		t.Fatalf("creds lack username, password or lease: %+v", creds)
	}
	if err := pg.CanLogin(ctx, user, password); err != nil {
		t.Fatalf("login with Vault-issued credentials: %v", err)
	}
	if exists, err := pg.RoleExists(ctx, user); err != nil || !exists {
		t.Fatalf("RoleExists(%s) before revocation = %t, %v", user, exists, err)
	}

	if _, err := l.WriteWithContext(ctx, "sys/leases/revoke-prefix/database/creds/readonly", map[string]any{"sync": true}); err != nil {
		t.Fatalf("revoke-prefix: %v", err)
	}
	if err := pg.CanLogin(ctx, user, password); err == nil {
		t.Fatal("login still works after revoke-prefix")
	}
	if exists, err := pg.RoleExists(ctx, user); err != nil || exists {
		t.Fatalf("RoleExists(%s) after revocation = %t, %v", user, exists, err)
	}
	if _, err := l.WriteWithContext(ctx, "sys/leases/lookup", map[string]any{"lease_id": creds.LeaseID}); err == nil {
		t.Fatal("lease lookup still succeeds after revoke-prefix")
	}
}
