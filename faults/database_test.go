package faults

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
	"github.com/killswitch-dev/killswitch/internal/testharness"
	"github.com/killswitch-dev/killswitch/telemetry"
)

// TestKill9DuringDatabaseRevocation, with a real PostgreSQL behind Vault's database
// secrets engine: the vendor's dynamic database login is guarded by its lease prefix.
// The process is killed the moment Vault has revoked the prefix (the logins are gone,
// Killswitch never heard it). After the restart the action is reconciled: the incident
// is contained, the login stays dead, one verified record, the ledger verifies.
func TestKill9DuringDatabaseRevocation(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg := testharness.Postgres(t)
	v := testharness.DevVault(t)
	root := v.Client(t)
	l := root.Logical()
	if _, err := l.WriteWithContext(ctx, "database/config/pg", map[string]any{
		"plugin_name": "postgresql-database-plugin", "connection_url": pg.VaultConnectionURL(),
		"username": pg.SuperUser, "password": pg.Password, "allowed_roles": "analytics",
	}); err != nil {
		t.Fatalf("configure the database connection: %v", err)
	}
	if _, err := l.WriteWithContext(ctx, "database/roles/analytics", map[string]any{
		"db_name":             "pg",
		"creation_statements": []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`},
		"default_ttl":         "1h", "max_ttl": "2h",
	}); err != nil {
		t.Fatalf("create the database role: %v", err)
	}
	creds, err := l.ReadWithContext(ctx, "database/creds/analytics")
	if err != nil {
		t.Fatal(err)
	}
	user, _ := creds.Data["username"].(string)
	password, _ := creds.Data["password"].(string)
	if err := pg.CanLogin(ctx, user, password); err != nil {
		t.Fatalf("the vendor's login does not work to begin with: %v", err)
	}

	const prefix = "database/creds/analytics"
	svc := serviceToken(t, root, killswitch.Inventory{"analytics": {Credentials: map[string]killswitch.Credential{
		"analytics-db": {Kind: killswitch.CredLeasePrefix, LeasePrefix: prefix}}}})
	p := testharness.NewVaultProxy(t, v.Addr)
	ks := testharness.NewKillswitch(t, fmt.Sprintf(`
service:
  nats: {listen: "{{nats}}"}
vendors:
  analytics:
    caps: [{credential: analytics-db, bytes: 100MB, per: 1h}]
    credentials:
      analytics-db: {kind: lease_prefix, lease_prefix: %s}
`, prefix), "VAULT_ADDR="+p.URL, "VAULT_TOKEN="+svc, "KILLSWITCH_API_TOKEN="+apiToken)
	r := &rig{t: t, vault: v, proxy: p, ks: ks, cred: "analytics-db"}
	ks.Start(t)

	killed := make(chan struct{})
	revokePrefix := "/v1/sys/leases/revoke-prefix/" + prefix
	p.Set(revokePrefix, testharness.VaultHook{After: func(_, status int) {
		if status/100 == 2 {
			ks.Kill9()
			close(killed)
		}
	}})
	now := time.Now().UTC()
	evs := make([]telemetry.Event, 21)
	for i := range evs {
		evs[i] = telemetry.Event{Time: now.Add(time.Duration(i-21) * time.Millisecond), Vendor: "analytics",
			Credential: "analytics-db", Dst: "198.51.100.8", DstPort: 5432, Bytes: 1 << 20, Sensor: "gw-1"}
	}
	evs[20].Bytes = 300 << 20 // over twice the cap: critical
	r.publish(evs...)
	select {
	case <-killed:
	case <-time.After(45 * time.Second):
		t.Fatalf("the revocation never reached Vault\n%s", ks.Log())
	}
	p.Set(revokePrefix, testharness.VaultHook{})
	if err := pg.CanLogin(ctx, user, password); err == nil {
		t.Fatal("Vault revoked the prefix, yet the login works")
	}
	ks.Start(t)
	in := r.waitIncident("contained after the restart", func(in incident) bool { return in.State == "contained" })
	if err := pg.CanLogin(ctx, user, password); err == nil {
		t.Fatal("the vendor's database login works again")
	}
	if exists, err := pg.RoleExists(ctx, user); err != nil || exists {
		t.Fatalf("the vendor's database role still exists (%v, %v)", exists, err)
	}
	if n := r.ledgerCount(`"stage":"verified"`, `"type":"vault.revoke_lease_prefix"`, in.ID); n != 1 {
		t.Fatalf("%d verified records, want 1", n)
	}
	t.Logf("killed after Vault revoked %s: restarted, reconciled, contained; the PostgreSQL login is gone; %d revoke-prefix calls; %s",
		prefix, p.Requests(revokePrefix), r.verifyLedger())
}
