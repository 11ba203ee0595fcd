package killswitch_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/killswitch-dev/killswitch"
)

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]killswitch.ByteSize{"1024": 1024, "1KiB": 1024, "1.5 GB": 1.5e9, "2m": 2e6, "0": 0} {
		if got, err := killswitch.ParseByteSize(in); err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "GB", "1..2", "1 furlong", "99999999999999999999999", "9000000TiB"} {
		if _, err := killswitch.ParseByteSize(in); !errors.Is(err, killswitch.ErrInvalid) {
			t.Errorf("ParseByteSize(%q) = %v, want an error wrapping ErrInvalid", in, err)
		}
	}
}

// Target is the one check before a destructive action, whoever asks (the playbooks'
// decision, the guard rails, an approval run later).
func TestVendorTarget(t *testing.T) {
	inv := killswitch.Inventory{"mailer": {Credentials: map[string]killswitch.Credential{
		"api":        {Kind: killswitch.CredTokenAccessor, Accessor: "acc"},
		"breakglass": {Kind: killswitch.CredTokenAccessor, Accessor: "bg", Protected: true},
		"db":         {Kind: killswitch.CredLeasePrefix, LeasePrefix: "database/creds/mailer"},
	}}}
	tests := []struct {
		vendor, cred string
		action       killswitch.ActionType
		want         error
	}{
		{"mailer", "api", killswitch.ActionRevokeTokenAccessor, nil},
		{"mailer", "db", killswitch.ActionRevokeLeasePrefix, nil},
		{"mailer", "breakglass", killswitch.ActionRevokeTokenAccessor, killswitch.ErrProtected},
		{"mailer", "db", killswitch.ActionRevokeTokenAccessor, killswitch.ErrWrongKind},
		{"mailer", "nope", killswitch.ActionRevokeTokenAccessor, killswitch.ErrNotInInventory},
		{"mailer", "", killswitch.ActionRevokeTokenAccessor, killswitch.ErrNotInInventory},
		{"unknown", "api", killswitch.ActionRevokeTokenAccessor, killswitch.ErrNotInInventory},
	}
	for _, tt := range tests {
		c, err := inv.Vendor(tt.vendor).Target(tt.cred, tt.action)
		if !errors.Is(err, tt.want) || (err == nil && c.Kind.Action() != tt.action) {
			t.Errorf("%s/%s by %s: %+v, %v; want %v", tt.vendor, tt.cred, tt.action, c, err, tt.want)
		}
	}
}

func TestCredentialKindAction(t *testing.T) {
	for _, k := range []killswitch.CredentialKind{killswitch.CredTokenAccessor, killswitch.CredAppRoleSecretID, killswitch.CredLease,
		killswitch.CredLeasePrefix, killswitch.CredKV, killswitch.CredPolicy} {
		if a := k.Action(); !a.Known() || !a.Destructive() {
			t.Errorf("kind %s: action %q", k, a)
		}
	}
	if a := killswitch.CredentialKind("ssh").Action(); a != "" {
		t.Errorf("unknown kind: action %q", a)
	}
	for _, a := range []killswitch.ActionType{killswitch.ActionNotify, killswitch.ActionNATSPublish, killswitch.ActionWebhook} {
		if !a.Known() || a.Destructive() {
			t.Errorf("%s: known %v, destructive %v", a, a.Known(), a.Destructive())
		}
	}
	if killswitch.ActionType("vault.revoke_everything").Known() {
		t.Error("an unknown action type is known")
	}
}

func TestModes(t *testing.T) {
	e, s, d := killswitch.ModeEnforce, killswitch.ModeShadow, killswitch.ModeDryRun
	tests := []struct {
		modes              []killswitch.Mode
		strictest, loosest killswitch.Mode
	}{
		{nil, e, ""},
		{[]killswitch.Mode{""}, e, ""},
		{[]killswitch.Mode{e, "", s}, s, e},
		{[]killswitch.Mode{s, d}, d, s},
		{[]killswitch.Mode{d, e}, d, e},
	}
	for _, tt := range tests {
		if got := killswitch.Strictest(tt.modes...); got != tt.strictest {
			t.Errorf("Strictest(%v) = %q, want %q", tt.modes, got, tt.strictest)
		}
		if got := killswitch.Loosest(tt.modes...); got != tt.loosest {
			t.Errorf("Loosest(%v) = %q, want %q", tt.modes, got, tt.loosest)
		}
	}
	if killswitch.Mode("yolo").Valid() || !killswitch.Mode("").Valid() || !d.Valid() {
		t.Error("Valid")
	}
}

// One error model: an error says nothing → retryable; only a marked one is permanent.
func TestErrorModel(t *testing.T) {
	base := errors.New("boom")
	tests := []struct {
		name      string
		err       error
		permanent bool
		reason    killswitch.Reason
	}{
		{"nil", nil, false, ""},
		{"unmarked", base, false, killswitch.ReasonUnknown},
		{"retryable", killswitch.Retryable(killswitch.ReasonUnavailable, base), false, killswitch.ReasonUnavailable},
		{"permanent", killswitch.Permanent(killswitch.ReasonDenied, base), true, killswitch.ReasonDenied},
		{"wrapped permanent", fmt.Errorf("vault: %w", killswitch.Permanent(killswitch.ReasonInvalid, base)), true, killswitch.ReasonInvalid},
		{"joined", errors.Join(base, killswitch.Permanent(killswitch.ReasonMisconfigured, base)), true, killswitch.ReasonMisconfigured},
		{"deadline", context.DeadlineExceeded, false, killswitch.ReasonTimeout},
		{"canceled", fmt.Errorf("x: %w", context.Canceled), false, killswitch.ReasonCanceled},
	}
	for _, tt := range tests {
		if got := killswitch.IsPermanent(tt.err); got != tt.permanent {
			t.Errorf("%s: IsPermanent = %v", tt.name, got)
		}
		if got := killswitch.IsRetryable(tt.err); got != (tt.err != nil && !tt.permanent) {
			t.Errorf("%s: IsRetryable = %v", tt.name, got)
		}
		if got := killswitch.ReasonOf(tt.err); got != tt.reason {
			t.Errorf("%s: ReasonOf = %q, want %q", tt.name, got, tt.reason)
		}
		if tt.err != nil && tt.err != base && !errors.Is(tt.err, base) && tt.name != "deadline" && tt.name != "canceled" {
			t.Errorf("%s: the underlying error is lost", tt.name)
		}
	}
	if killswitch.Retryable(killswitch.ReasonUnknown, nil) != nil || killswitch.Permanent(killswitch.ReasonUnknown, nil) != nil {
		t.Error("marking nil made an error")
	}
}

func TestInventoryValidate(t *testing.T) {
	good := killswitch.Inventory{"mailer": {
		Mode: killswitch.ModeShadow,
		Caps: []killswitch.Cap{{Credential: "api", Bytes: 1 << 30, Per: time.Hour}},
		Credentials: map[string]killswitch.Credential{
			"api": {Kind: killswitch.CredTokenAccessor, Accessor: "acc"},
			"db":  {Kind: killswitch.CredLeasePrefix, LeasePrefix: "database/creds/mailer"},
		},
	}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := killswitch.Inventory{"v": {
		Mode:        "yolo",
		Sensitivity: -1,
		Caps:        []killswitch.Cap{{Credential: "x"}},
		Credentials: map[string]killswitch.Credential{
			"a": {Kind: killswitch.CredLease, LeaseID: "database/*"},
			"b": {Kind: killswitch.CredPolicy, Policy: "root"},
		},
	}}
	err := bad.Validate()
	for _, want := range []string{"vendors.v.mode", "vendors.v.sensitivity", "vendors.v.caps[0].per", "vendors.v.caps[0]: set bytes",
		`"x" is not a credential`, "vendors.v.credentials.a: lease_id: wildcards", "vendors.v.credentials.b: policy \"root\""} {
		if !errors.Is(err, killswitch.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v\nwant an error naming %s", err, want)
		}
	}
}

func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"10GiB", "1.5 GB", "0", "-1", "1e309", "1 furlong", "99999999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := killswitch.ParseByteSize(s)
		if err != nil {
			if !errors.Is(err, killswitch.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if v < 0 {
			t.Fatalf("ParseByteSize(%q) = %d, negative", s, v)
		}
	})
}
