// Package users holds the HTTP API's named users, their roles and their bearer tokens.
//
// A user has a name, one role (viewer < approver < admin) and one token. Tokens are
// 256-bit random strings shown once, when made; the users file keeps only their SHA-256
// (a slow password hash such as argon2 or bcrypt protects guessable secrets, and buys
// nothing for 256 random bits, while it would make every request, and every bad-token
// request, cost tens of milliseconds of CPU). A presented token is hashed and compared
// with every user's hash in constant time.
//
// The users file (users.json in the service's data directory) is written atomically
// (temporary file, fsync, rename; mode 0600) under a lock file, and the Store re-reads
// it when it changes, so `killswitch users add` or `remove` on a running service takes
// effect on the next request. A file that cannot be read or parsed authenticates no one
// (fail closed) until it is fixed.
package users

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Role is what a user may do. Each role includes the ones below it.
type Role string

// The roles, lowest first.
const (
	// Viewer reads incidents, the status and the metrics.
	Viewer Role = "viewer"
	// Approver is a viewer who also approves and rejects held actions.
	Approver Role = "approver"
	// Admin is an approver who also pauses and resumes automation, resets the breaker
	// and runs the destructive commands.
	Admin Role = "admin"
)

// Roles lists the roles, lowest first.
func Roles() []Role { return []Role{Viewer, Approver, Admin} }

func (r Role) rank() int {
	switch r {
	case Viewer:
		return 1
	case Approver:
		return 2
	case Admin:
		return 3
	}
	return 0
}

// Valid reports whether r is one of the roles.
func (r Role) Valid() bool { return r.rank() > 0 }

// Allows reports whether a user with role r may do what needs role need. An invalid
// role allows nothing.
func (r Role) Allows(need Role) bool { return r.Valid() && need.Valid() && r.rank() >= need.rank() }

// ParseRole parses viewer, approver or admin.
func ParseRole(s string) (Role, error) {
	if r := Role(s); r.Valid() {
		return r, nil
	}
	return "", fmt.Errorf("%w: %q (viewer, approver or admin)", ErrBadRole, s)
}

// Errors the Store wraps.
var (
	// ErrBadName: a user name that is not 1–64 of letters, digits, '.', '_', '@', '-'
	// (starting with a letter or digit).
	ErrBadName = errors.New("invalid user name")
	// ErrBadRole: not viewer, approver or admin.
	ErrBadRole = errors.New("invalid role")
	// ErrExists: a user by that name already exists (rotate its token instead).
	ErrExists = errors.New("user exists")
	// ErrNotFound: no user by that name.
	ErrNotFound = errors.New("no such user")
	// ErrLastAdmin: removing or demoting the last admin would leave no one able to
	// administer the service.
	ErrLastAdmin = errors.New("the last admin")
	// ErrBadToken: a configured token shorter than MinTokenLen.
	ErrBadToken = errors.New("token too short")
	// ErrUnauthenticated: no user holds the presented token.
	ErrUnauthenticated = errors.New("unknown token")
	// ErrUnavailable: the users file cannot be read or parsed; no one is authenticated.
	ErrUnavailable = errors.New("users file unavailable")
	// ErrLocked: another writer holds the users file's lock.
	ErrLocked = errors.New("users file locked")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// ValidName checks a user name.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: %q (1-64 letters, digits, '.', '_', '@', '-', starting with a letter or digit)", ErrBadName, name)
	}
	return nil
}

// MinTokenLen is the shortest token accepted from an operator (KILLSWITCH_API_TOKEN);
// generated tokens are much longer.
const MinTokenLen = 16

// User is one API user as the users file holds it. It carries no secret: TokenID is a
// random label (the generated token starts with it) and TokenSHA256 the token's hash.
type User struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
	// TokenID identifies the current token without revealing it: a generated token reads
	// ks_<TokenID>_<secret>.
	TokenID string `json:"token_id"`
	// TokenSHA256 is the hex SHA-256 of the whole token.
	TokenSHA256 string `json:"token_sha256"`
	// Created is when the user was added; TokenSet when its current token was set.
	Created  time.Time `json:"created"`
	TokenSet time.Time `json:"token_set"`
}

// newToken returns a fresh token and its ID: ks_<8 hex>_<64 hex> (256 random bits after
// the ID).
func newToken() (token, id string, err error) {
	b := make([]byte, 4+32)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("users: random token: %w", err)
	}
	id = hex.EncodeToString(b[:4])
	return "ks_" + id + "_" + hex.EncodeToString(b[4:]), id, nil
}

// newTokenID returns a random token ID for a token that was not generated here.
func newTokenID() (string, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("users: random token id: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func hashToken(token string) [sha256.Size]byte { return sha256.Sum256([]byte(token)) }
