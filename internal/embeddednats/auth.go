package embeddednats

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// Role is what an identity on the bus may do.
type Role string

// The roles. Their permissions are Permissions(role, …).
const (
	// RoleService is Killswitch itself: everything inside its account (JetStream API,
	// its streams, KV buckets and object store, events), with a private inbox prefix.
	RoleService Role = "service"
	// RoleOperator reads: stream, consumer and KV information, messages and KV values
	// (direct get, ordered consumers). It writes nothing stored.
	RoleOperator Role = "operator"
	// RoleAutomation subscribes to the events, notifications and findings Killswitch
	// publishes for other automation; it publishes nothing but replies.
	RoleAutomation Role = "automation"
	// RoleSensor publishes telemetry (egress.> or egress.<vendor>) and receives its
	// JetStream acks on a sensors-only inbox prefix.
	RoleSensor Role = "sensor"
)

// Inbox prefixes. The service's replies (JetStream API answers: KV values, incidents,
// ledger records) go to a prefix only the service may subscribe to; sensors get their
// own so that a sensor credential cannot read the replies of an operator's requests.
const (
	ServiceInboxPrefix = "_INBOX_killswitch"
	SensorInboxPrefix  = "_INBOX_sensor"
)

// AccountName is the name of the account Killswitch and its clients live in.
const AccountName = "KILLSWITCH"

// DefaultTelemetryPrefix is the subject prefix sensors publish under: egress.<vendor>.
const DefaultTelemetryPrefix = "egress"

// File names inside the credentials directory (Dir of a data directory).
const (
	keysDir         = "keys"
	operatorKeyFile = "nats-operator.nk"
	accountKeyFile  = "account.nk"
	signingKeyFile  = "account-signing.nk"
	systemKeyFile   = "system-account.nk"
	revokedFile     = "revoked.json"
	issuedFile      = "issued.json"
)

// ErrUnknownRole is returned for a role that is not one of the four.
var ErrUnknownRole = errors.New("unknown NATS role (service, operator, automation, sensor)")

// Dir is the credentials directory of a data directory.
func Dir(dataDir string) string { return filepath.Join(dataDir, "creds") }

// CredsFile is where a data directory keeps the .creds file of a standard role
// (service, operator, automation).
func CredsFile(dataDir string, r Role) string { return filepath.Join(Dir(dataDir), string(r)+".creds") }

// StandardRoles are the roles whose credentials are generated on start; sensor
// credentials are minted one by one (Auth.Mint).
func StandardRoles() []Role { return []Role{RoleService, RoleOperator, RoleAutomation} }

// ParseRole returns the role named s.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleService, RoleOperator, RoleAutomation, RoleSensor:
		return r, nil
	}
	return "", fmt.Errorf("%w: %q", ErrUnknownRole, s)
}

// Permissions returns the permissions of a role. vendors bind a sensor to
// <prefix>.<vendor> (none: any vendor, <prefix>.>); prefix defaults to "egress".
func Permissions(r Role, prefix string, vendors []string) (jwt.Permissions, error) {
	if prefix == "" {
		prefix = DefaultTelemetryPrefix
	}
	var p jwt.Permissions
	switch r {
	case RoleService:
		p.Pub.Allow.Add(">")
		// ">" covers it; named, it tells clients (natsconn) which inbox prefix to use.
		p.Sub.Allow.Add(">", ServiceInboxPrefix+".>")
	case RoleOperator:
		p.Pub.Allow.Add(
			"$JS.API.INFO",
			"$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST", "$JS.API.STREAM.INFO.*",
			"$JS.API.STREAM.MSG.GET.*", "$JS.API.DIRECT.GET.>",
			"$JS.API.CONSUMER.NAMES.*", "$JS.API.CONSUMER.LIST.*", "$JS.API.CONSUMER.INFO.*.*",
			// Ephemeral (ordered) consumers to read a stream or watch a bucket: they change
			// no stored data (every stream is limits-retention).
			"$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.MSG.NEXT.>", "$JS.FC.>",
		)
		p.Sub.Allow.Add("_INBOX.>")
	case RoleAutomation:
		p.Pub.Deny.Add(">")
		p.Sub.Allow.Add("killswitch.events.>", "killswitch.notify.>", "killswitch.ocsf.>", "_INBOX.>")
		p.Resp = &jwt.ResponsePermission{MaxMsgs: 1}
	case RoleSensor:
		if len(vendors) == 0 {
			p.Pub.Allow.Add(prefix + ".>")
		}
		for _, v := range vendors {
			if v == "" || strings.ContainsAny(v, ".*> \t\r\n") {
				return p, fmt.Errorf("embeddednats: vendor %q is not a subject token", v)
			}
			p.Pub.Allow.Add(prefix + "." + v)
		}
		p.Sub.Allow.Add(SensorInboxPrefix + ".>")
	default:
		return p, fmt.Errorf("embeddednats: %w: %q", ErrUnknownRole, r)
	}
	return p, nil
}

// Auth is the bus's decentralized (JWT) authentication: an operator that the server
// trusts, the Killswitch account it signs (JetStream enabled, one signing key for its
// users), a system account, and the user credentials signed by the account's signing
// key. Nothing but the keys (nkey seeds, 0600) and the revocations is stored: the
// operator and account JWTs are rebuilt on every start. A user credential is an
// nsc-compatible .creds file (user JWT + seed) that any NATS client takes
// (nats --creds FILE); minting one needs no server reload.
type Auth struct {
	dir                                string
	operator, account, signing, system nkeys.KeyPair
}

// LoadOrCreateAuth loads the keys kept in dir, creating those that are missing (dir
// 0700, files 0600). created lists the files it wrote.
func LoadOrCreateAuth(dir string) (_ *Auth, created []string, err error) {
	if err := os.MkdirAll(filepath.Join(dir, keysDir), 0o700); err != nil {
		return nil, nil, fmt.Errorf("embeddednats: credentials dir: %w", err)
	}
	a := &Auth{dir: dir}
	for _, k := range []struct {
		file   string
		create func() (nkeys.KeyPair, error)
		into   *nkeys.KeyPair
	}{
		{operatorKeyFile, nkeys.CreateOperator, &a.operator},
		{accountKeyFile, nkeys.CreateAccount, &a.account},
		{signingKeyFile, nkeys.CreateAccount, &a.signing},
		{systemKeyFile, nkeys.CreateAccount, &a.system},
	} {
		p := filepath.Join(dir, keysDir, k.file)
		kp, made, err := loadOrCreateKey(p, k.create)
		if err != nil {
			return nil, created, err
		}
		if made {
			created = append(created, p)
		}
		*k.into = kp
	}
	return a, created, nil
}

func loadOrCreateKey(path string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, bool, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
		if err != nil {
			return nil, false, fmt.Errorf("embeddednats: key %s: %w", path, err)
		}
		return kp, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("embeddednats: key: %w", err)
	}
	kp, err := create()
	if err != nil {
		return nil, false, fmt.Errorf("embeddednats: new key: %w", err)
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, false, fmt.Errorf("embeddednats: new key: %w", err)
	}
	if err := writeExclusive(path, append(seed, '\n')); err != nil {
		return nil, false, err
	}
	return kp, true, nil
}

// writeExclusive writes a new 0600 file; it fails if the file exists.
func writeExclusive(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("embeddednats: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return fmt.Errorf("embeddednats: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("embeddednats: write %s: %w", path, err)
	}
	return nil
}

// writeReplace writes a 0600 file through a temporary file and a rename.
func writeReplace(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("embeddednats: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("embeddednats: %w", err)
	}
	return nil
}

// Dir is the credentials directory.
func (a *Auth) Dir() string { return a.dir }

// AccountPublicKey is the public key of the Killswitch account.
func (a *Auth) AccountPublicKey() string { return mustPublic(a.account) }

func mustPublic(kp nkeys.KeyPair) string {
	p, err := kp.PublicKey()
	if err != nil { // a key pair made from a seed always has a public key
		panic(err)
	}
	return p
}

// jwts builds and signs the operator, the Killswitch account and the system account.
func (a *Auth) jwts() (op, acc, sys string, err error) {
	opPub, accPub, sysPub := mustPublic(a.operator), mustPublic(a.account), mustPublic(a.system)
	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = "killswitch"
	oc.SystemAccount = sysPub
	if op, err = oc.Encode(a.operator); err != nil {
		return "", "", "", fmt.Errorf("embeddednats: operator JWT: %w", err)
	}
	ac := jwt.NewAccountClaims(accPub)
	ac.Name = AccountName
	ac.SigningKeys.Add(mustPublic(a.signing))
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1, MaxAckPending: -1}
	rev, err := a.revocations()
	if err != nil {
		return "", "", "", err
	}
	for k, at := range rev {
		ac.RevokeAt(k, time.Unix(at, 0))
	}
	if acc, err = ac.Encode(a.operator); err != nil {
		return "", "", "", fmt.Errorf("embeddednats: account JWT: %w", err)
	}
	sc := jwt.NewAccountClaims(sysPub)
	sc.Name = "SYS"
	if sys, err = sc.Encode(a.operator); err != nil {
		return "", "", "", fmt.Errorf("embeddednats: system account JWT: %w", err)
	}
	return op, acc, sys, nil
}

// configure puts the server in operator mode: it trusts the operator, resolves the two
// accounts from memory, and so refuses anonymous clients.
func (a *Auth) configure(o *server.Options) error {
	op, acc, sys, err := a.jwts()
	if err != nil {
		return err
	}
	oc, err := jwt.DecodeOperatorClaims(op)
	if err != nil {
		return fmt.Errorf("embeddednats: operator JWT: %w", err)
	}
	r := &server.MemAccResolver{}
	if err := r.Store(a.AccountPublicKey(), acc); err != nil {
		return fmt.Errorf("embeddednats: resolver: %w", err)
	}
	if err := r.Store(mustPublic(a.system), sys); err != nil {
		return fmt.Errorf("embeddednats: resolver: %w", err)
	}
	o.TrustedOperators = []*jwt.OperatorClaims{oc}
	o.SystemAccount = mustPublic(a.system)
	o.AccountResolver = r
	return nil
}

// ServerConfig returns the authorization part of a nats-server configuration file for
// an external server: the trusted operator, the system account and a memory resolver
// preloaded with the accounts. Put it in the server's configuration (or include it)
// and reload the server; it carries no secret.
func (a *Auth) ServerConfig() (string, error) {
	op, acc, sys, err := a.jwts()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Killswitch NATS authorization (decentralized JWT auth). Generated by `killswitch creds nats-config`;\n")
	fmt.Fprintf(&b, "# no secret in here. Regenerate it after `killswitch creds revoke` or a key rotation, then reload the server.\n")
	fmt.Fprintf(&b, "operator: %s\n", op)
	fmt.Fprintf(&b, "system_account: %s\n", mustPublic(a.system))
	fmt.Fprintf(&b, "resolver: MEMORY\n")
	fmt.Fprintf(&b, "resolver_preload: {\n  # %s\n  %s: %s\n  # SYS\n  %s: %s\n}\n", AccountName, a.AccountPublicKey(), acc, mustPublic(a.system), sys)
	return b.String(), nil
}

// User says who a minted credential is for.
type User struct {
	// Name names the identity (shown by the server, recorded in issued.json).
	Name string
	// Role is what it may do.
	Role Role
	// Vendors bind a sensor to <Prefix>.<vendor> subjects; none: every vendor.
	Vendors []string
	// Prefix is the telemetry subject prefix of a sensor. Default "egress".
	Prefix string
	// Expires, if non-zero, is when the credential stops working.
	Expires time.Time
}

// Issued is the record of one minted credential (no secret): what issued.json holds.
type Issued struct {
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	PublicKey string    `json:"public_key"`
	Vendors   []string  `json:"vendors,omitempty"`
	IssuedAt  time.Time `json:"issued_at"`
	Expires   time.Time `json:"expires,omitzero"`
}

// Mint creates a new user key and returns its .creds file (user JWT signed by the
// account's signing key, and the user's seed): a secret, never to be logged. It is
// recorded (without the seed) in issued.json so that it can be revoked by name.
func (a *Auth) Mint(u User, now time.Time) ([]byte, Issued, error) {
	if u.Name == "" || strings.ContainsAny(u.Name, " \t\r\n") {
		return nil, Issued{}, fmt.Errorf("embeddednats: credential name %q: give a name without spaces", u.Name)
	}
	perms, err := Permissions(u.Role, u.Prefix, u.Vendors)
	if err != nil {
		return nil, Issued{}, err
	}
	ukp, err := nkeys.CreateUser()
	if err != nil {
		return nil, Issued{}, fmt.Errorf("embeddednats: new user key: %w", err)
	}
	pub := mustPublic(ukp)
	uc := jwt.NewUserClaims(pub)
	uc.Name = u.Name
	uc.IssuerAccount = a.AccountPublicKey()
	uc.IssuedAt = now.Unix()
	uc.Permissions = perms
	uc.Tags.Add("killswitch-role:" + string(u.Role))
	if !u.Expires.IsZero() {
		uc.Expires = u.Expires.Unix()
	}
	tok, err := uc.Encode(a.signing)
	if err != nil {
		return nil, Issued{}, fmt.Errorf("embeddednats: user JWT: %w", err)
	}
	seed, err := ukp.Seed()
	if err != nil {
		return nil, Issued{}, fmt.Errorf("embeddednats: user seed: %w", err)
	}
	creds, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		return nil, Issued{}, fmt.Errorf("embeddednats: creds: %w", err)
	}
	rec := Issued{Name: u.Name, Role: u.Role, PublicKey: pub, Vendors: u.Vendors, IssuedAt: now.UTC(), Expires: u.Expires}
	all, err := a.Issued()
	if err != nil {
		return nil, Issued{}, err
	}
	if err := a.writeJSON(issuedFile, append(all, rec)); err != nil {
		return nil, Issued{}, err
	}
	return creds, rec, nil
}

// EnsureCreds makes sure the .creds file of a standard role exists and is signed by the
// current signing key (it is minted again after the signing key was rotated or when
// it was revoked). It returns the file's path and whether it was written.
func (a *Auth) EnsureCreds(r Role, now time.Time) (string, bool, error) {
	if r == RoleSensor {
		return "", false, fmt.Errorf("embeddednats: sensor credentials are minted one by one")
	}
	p := filepath.Join(a.dir, string(r)+".creds")
	if ok, err := a.valid(p); err != nil {
		return "", false, err
	} else if ok {
		return p, false, nil
	}
	creds, _, err := a.Mint(User{Name: "killswitch-" + string(r), Role: r}, now)
	if err != nil {
		return "", false, err
	}
	if err := writeReplace(p, creds); err != nil {
		return "", false, err
	}
	return p, true, nil
}

// valid reports whether the creds file at p exists and is signed by the current
// signing key and not revoked.
func (a *Auth) valid(p string) (bool, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("embeddednats: %w", err)
	}
	tok, err := jwt.ParseDecoratedJWT(b)
	if err != nil {
		return false, nil
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil || uc.Issuer != mustPublic(a.signing) {
		return false, nil
	}
	rev, err := a.revocations()
	if err != nil {
		return false, err
	}
	_, revoked := rev[uc.Subject]
	return !revoked, nil
}

// Issued returns the record of every minted credential.
func (a *Auth) Issued() ([]Issued, error) {
	var all []Issued
	if err := a.readJSON(issuedFile, &all); err != nil {
		return nil, err
	}
	return all, nil
}

// Revoke revokes every credential issued under name (or the one user public key
// given), from now on. It returns the public keys revoked. The running embedded server
// applies it at its next start; an external server after the configuration from
// ServerConfig is installed again and reloaded.
func (a *Auth) Revoke(nameOrKey string, now time.Time) ([]string, error) {
	all, err := a.Issued()
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, i := range all {
		if i.Name == nameOrKey || i.PublicKey == nameOrKey {
			keys = append(keys, i.PublicKey)
		}
	}
	if len(keys) == 0 && nkeys.IsValidPublicUserKey(nameOrKey) {
		keys = append(keys, nameOrKey)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("embeddednats: no credential named %q was issued (see %s)", nameOrKey, filepath.Join(a.dir, issuedFile))
	}
	rev, err := a.revocations()
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		rev[k] = now.Unix() + 1 // revokes every JWT of that key issued up to now
	}
	if err := a.writeJSON(revokedFile, rev); err != nil {
		return nil, err
	}
	slices.Sort(keys)
	return keys, nil
}

// revocations returns the revoked user keys and the time before which their JWTs are
// refused.
func (a *Auth) revocations() (map[string]int64, error) {
	rev := map[string]int64{}
	if err := a.readJSON(revokedFile, &rev); err != nil {
		return nil, err
	}
	return rev, nil
}

func (a *Auth) readJSON(name string, v any) error {
	b, err := os.ReadFile(filepath.Join(a.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("embeddednats: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("embeddednats: %s: %w", name, err)
	}
	return nil
}

func (a *Auth) writeJSON(name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("embeddednats: %s: %w", name, err)
	}
	return writeReplace(filepath.Join(a.dir, name), append(b, '\n'))
}
