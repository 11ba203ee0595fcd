package embeddednats_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch/internal/embeddednats"
	"github.com/killswitch-dev/killswitch/internal/natsconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// authServer starts a server with authentication on, creates a stream like the
// service's (as the service identity), and returns it with the credentials directory.
type authServer struct {
	srv  *embeddednats.Server
	auth *embeddednats.Auth
	dir  string
}

func startAuth(t *testing.T) *authServer {
	t.Helper()
	dir := t.TempDir()
	auth, created, err := embeddednats.LoadOrCreateAuth(embeddednats.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	if len(created) != 4 {
		t.Fatalf("created %v, want 4 keys", created)
	}
	for _, r := range embeddednats.StandardRoles() {
		p, made, err := auth.EnsureCreds(r, time.Now())
		if err != nil || !made || p != embeddednats.CredsFile(dir, r) {
			t.Fatalf("EnsureCreds(%s) = %s, %v, %v", r, p, made, err)
		}
	}
	srv, err := embeddednats.Start(embeddednats.Options{Port: -1, StoreDir: filepath.Join(dir, "nats"), Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return &authServer{srv: srv, auth: auth, dir: dir}
}

func (a *authServer) connect(t *testing.T, creds string) (*nats.Conn, chan error) {
	t.Helper()
	errs := make(chan error, 16)
	nc, err := natsconn.Options{URL: a.srv.URL(), CredsFile: creds}.Connect(zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	})
	t.Cleanup(nc.Close)
	return nc, errs
}

func (a *authServer) mint(t *testing.T, u embeddednats.User) string {
	t.Helper()
	b, rec, err := a.auth.Mint(u, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if rec.PublicKey == "" || strings.Contains(string(b), rec.PublicKey) && !strings.Contains(string(b), "NATS USER JWT") {
		t.Fatalf("minted %+v", rec)
	}
	p := filepath.Join(t.TempDir(), u.Name+".creds")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// setup creates, as the service, what the service creates: the telemetry stream, the
// ledger stream and KV buckets holding a value.
func (a *authServer) setup(t *testing.T, ctx context.Context) jetstream.JetStream {
	t.Helper()
	nc, _ := a.connect(t, embeddednats.CredsFile(a.dir, embeddednats.RoleService))
	if nc.NewInbox()[:len(embeddednats.ServiceInboxPrefix)] != embeddednats.ServiceInboxPrefix {
		t.Fatalf("the service's inbox %s is not private", nc.NewInbox())
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for name, subj := range map[string]string{"EGRESS": "egress.>", "KILLSWITCH_LEDGER": "killswitch.ledger"} {
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subj}, Storage: jetstream.FileStorage}); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []string{"killswitch_claims", "killswitch_incidents"} {
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, "x", []byte("service")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := js.Publish(ctx, "killswitch.ledger", []byte("record")); err != nil {
		t.Fatal(err)
	}
	if err := natsconn.Check(ctx, nc, []string{"killswitch.ledger", "$KV.killswitch_claims._check"}, time.Second); err != nil {
		t.Fatalf("the service identity fails its own check: %v", err)
	}
	return js
}

func TestAnonymousRefused(t *testing.T) {
	a := startAuth(t)
	_, err := nats.Connect(a.srv.URL())
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous connect: %v, want an authorization violation", err)
	}
	_, err = natsconn.Options{URL: a.srv.URL()}.Connect(zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), "--nats-creds") {
		t.Fatalf("natsconn anonymous connect: %v, want a hint about credentials", err)
	}
}

func TestRolePermissions(t *testing.T) {
	a := startAuth(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := a.setup(t, ctx)
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 500*time.Millisecond) }

	t.Run("sensor publishes telemetry with acks, nothing else", func(t *testing.T) {
		nc, errs := a.connect(t, a.mint(t, embeddednats.User{Name: "gw-1", Role: embeddednats.RoleSensor}))
		js, _ := jetstream.New(nc)
		if ack, err := js.Publish(ctx, "egress.mailer", []byte(`{}`)); err != nil || ack.Stream != "EGRESS" {
			t.Fatalf("sensor telemetry publish: %v %v", ack, err)
		}
		// The ledger subject, a KV bucket, the JetStream API: refused.
		for _, subj := range []string{"killswitch.ledger", "$KV.killswitch_claims.x", "$JS.API.STREAM.DELETE.KILLSWITCH_LEDGER",
			"$JS.API.CONSUMER.CREATE.KILLSWITCH_LEDGER", "$JS.API.DIRECT.GET.KV_killswitch_incidents.$KV.killswitch_incidents.x"} {
			rctx, c := short()
			_, err := nc.RequestWithContext(rctx, subj, []byte(`{}`))
			c()
			if err == nil || errors.Is(err, nats.ErrNoResponders) {
				t.Errorf("sensor request on %s: %v, want it refused (no answer)", subj, err)
			}
			if err := nc.Publish(subj, []byte("forged")); err != nil {
				t.Fatal(err)
			}
		}
		_ = nc.Flush()
		select {
		case err := <-errs:
			if !strings.Contains(err.Error(), "Permissions Violation") {
				t.Errorf("async error %v, want a permissions violation", err)
			}
		case <-time.After(2 * time.Second):
			t.Error("no permissions violation reported")
		}
		// Nothing changed: the ledger holds one record, the claim is the service's.
		st, _ := svc.Stream(ctx, "KILLSWITCH_LEDGER")
		if info, _ := st.Info(ctx); info.State.Msgs != 1 {
			t.Errorf("the ledger holds %d messages, want 1", info.State.Msgs)
		}
		kv, _ := svc.KeyValue(ctx, "killswitch_claims")
		if e, err := kv.Get(ctx, "x"); err != nil || string(e.Value()) != "service" {
			t.Errorf("claim x = %v %v, want the service's value", e, err)
		}
		if _, err := svc.Stream(ctx, "KILLSWITCH_LEDGER"); err != nil {
			t.Errorf("the ledger stream is gone: %v", err)
		}
		// The sensor's identity fails the service's check.
		if err := natsconn.Check(ctx, nc, []string{"killswitch.ledger"}, 300*time.Millisecond); !errors.Is(err, natsconn.ErrNotPermitted) {
			t.Errorf("Check as a sensor: %v, want not permitted", err)
		}
	})

	t.Run("sensor bound to a vendor", func(t *testing.T) {
		nc, _ := a.connect(t, a.mint(t, embeddednats.User{Name: "gw-2", Role: embeddednats.RoleSensor, Vendors: []string{"mailer"}}))
		js, _ := jetstream.New(nc)
		if _, err := js.Publish(ctx, "egress.mailer", []byte(`{}`)); err != nil {
			t.Fatalf("own vendor: %v", err)
		}
		rctx, c := short()
		defer c()
		if _, err := js.Publish(rctx, "egress.billing", []byte(`{}`)); err == nil {
			t.Fatal("a sensor bound to mailer published for billing")
		}
	})

	t.Run("automation subscribes to events, publishes nothing", func(t *testing.T) {
		nc, errs := a.connect(t, embeddednats.CredsFile(a.dir, embeddednats.RoleAutomation))
		sub, err := nc.SubscribeSync("killswitch.events.>")
		if err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		svcNC, _ := a.connect(t, embeddednats.CredsFile(a.dir, embeddednats.RoleService))
		_ = svcNC.Publish("killswitch.events.incident.mailer", []byte("e"))
		if _, err := sub.NextMsg(2 * time.Second); err != nil {
			t.Fatalf("automation did not get the event: %v", err)
		}
		js, _ := jetstream.New(nc)
		rctx, c := short()
		defer c()
		if _, err := js.Publish(rctx, "egress.mailer", []byte(`{}`)); err == nil {
			t.Fatal("automation published telemetry")
		}
		if _, err := nc.SubscribeSync("egress.>"); err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		select {
		case err := <-errs:
			if !strings.Contains(err.Error(), "Permissions Violation") {
				t.Errorf("async error %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Error("automation subscribed to telemetry without a violation")
		}
	})

	t.Run("operator reads, writes nothing", func(t *testing.T) {
		nc, _ := a.connect(t, embeddednats.CredsFile(a.dir, embeddednats.RoleOperator))
		js, _ := jetstream.New(nc)
		names := js.StreamNames(ctx)
		n := 0
		for range names.Name() {
			n++
		}
		if names.Err() != nil || n != 4 {
			t.Fatalf("operator lists %d streams (%v), want 4", n, names.Err())
		}
		kv, err := js.KeyValue(ctx, "killswitch_incidents")
		if err != nil {
			t.Fatal(err)
		}
		if e, err := kv.Get(ctx, "x"); err != nil || string(e.Value()) != "service" {
			t.Fatalf("operator reads incidents: %v %v", e, err)
		}
		rctx, c := short()
		defer c()
		if _, err := kv.Put(rctx, "x", []byte("operator")); err == nil {
			t.Fatal("operator wrote a KV value")
		}
		rctx2, c2 := short()
		defer c2()
		if err := js.DeleteStream(rctx2, "KILLSWITCH_LEDGER"); err == nil {
			t.Fatal("operator deleted the ledger")
		}
	})
}

func TestRevokeAndRotate(t *testing.T) {
	dir := t.TempDir()
	auth, _, err := embeddednats.LoadOrCreateAuth(embeddednats.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	b, rec, err := auth.Mint(embeddednats.User{Name: "gw-1", Role: embeddednats.RoleSensor}, time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "gw-1.creds")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	start := func() *embeddednats.Server {
		srv, err := embeddednats.Start(embeddednats.Options{Port: -1, StoreDir: filepath.Join(dir, "nats"), Auth: auth})
		if err != nil {
			t.Fatal(err)
		}
		return srv
	}
	srv := start()
	nc, err := nats.Connect(srv.URL(), nats.UserCredentials(p))
	if err != nil {
		t.Fatalf("minted sensor refused: %v", err)
	}
	nc.Close()
	srv.Shutdown()
	keys, err := auth.Revoke("gw-1", time.Now())
	if err != nil || len(keys) != 1 || keys[0] != rec.PublicKey {
		t.Fatalf("Revoke = %v, %v", keys, err)
	}
	if _, err := auth.Revoke("nobody", time.Now()); err == nil {
		t.Fatal("revoking an unknown name succeeded")
	}
	srv = start()
	defer srv.Shutdown()
	if _, err := nats.Connect(srv.URL(), nats.UserCredentials(p)); err == nil {
		t.Fatal("a revoked sensor connected")
	}
	cfg, err := auth.ServerConfig()
	if err != nil || !strings.Contains(cfg, "resolver_preload") || strings.Contains(cfg, "SUA") || strings.Contains(cfg, "SOA") {
		t.Fatalf("ServerConfig: %v\n%s", err, cfg)
	}
}

func TestPermissionsTable(t *testing.T) {
	for _, tc := range []struct {
		role    embeddednats.Role
		vendors []string
		pub     string
		wantErr bool
	}{
		{embeddednats.RoleSensor, nil, "egress.>", false},
		{embeddednats.RoleSensor, []string{"mailer"}, "egress.mailer", false},
		{embeddednats.RoleSensor, []string{"a.b"}, "", true},
		{embeddednats.RoleSensor, []string{">"}, "", true},
		{embeddednats.RoleService, nil, ">", false},
		{embeddednats.Role("root"), nil, "", true},
	} {
		p, err := embeddednats.Permissions(tc.role, "", tc.vendors)
		if (err != nil) != tc.wantErr {
			t.Errorf("%s %v: err %v", tc.role, tc.vendors, err)
			continue
		}
		if !tc.wantErr && (len(p.Pub.Allow) == 0 || p.Pub.Allow[0] != tc.pub) {
			t.Errorf("%s %v: pub allow %v, want %s", tc.role, tc.vendors, p.Pub.Allow, tc.pub)
		}
	}
}
