package ledger

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"strings"
)

// EnvKey is the environment variable that may hold the ledger's MAC key, hex or base64
// (at least KeySize bytes once decoded). It takes precedence over the key file.
const EnvKey = "KILLSWITCH_LEDGER_KEY"

// KeyFile is the name of the key file the service creates in its data directory.
const KeyFile = "ledger.key"

// KeySize is the size of a generated key and the minimum size of a key, in bytes.
const KeySize = 32

// ErrNoKey is returned when a keyed operation is asked of a nil key or no key is found.
var ErrNoKey = errors.New("ledger: no MAC key")

// Domain separators: a MAC of one kind can never be taken for a MAC of another.
const (
	domainRecord     = "killswitch ledger record v1\x00"
	domainCheckpoint = "killswitch ledger checkpoint v1\x00"
	domainMsgID      = "killswitch ledger message id v1\x00"
	domainKeyID      = "killswitch ledger key id v1\x00"
)

// Key is the secret with which records and checkpoints are MAC'd (HMAC-SHA256). Its
// String and GoString never show the secret, so a Key that reaches a log or an error
// message gives nothing away; ID names it safely. The zero Key is not usable: build one
// with NewKey, ParseKey, GenerateKey or a loader.
type Key struct {
	secret []byte
	id     string
}

// NewKey returns a key holding a copy of secret, which must be at least KeySize bytes.
func NewKey(secret []byte) (*Key, error) {
	if len(secret) < KeySize {
		return nil, fmt.Errorf("ledger: a MAC key needs at least %d bytes, got %d", KeySize, len(secret))
	}
	k := &Key{secret: append([]byte(nil), secret...)}
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte(domainKeyID))
	k.id = hex.EncodeToString(m.Sum(nil))[:16]
	return k, nil
}

// GenerateKey returns a new random key of KeySize bytes.
func GenerateKey() *Key {
	b := make([]byte, KeySize)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (it panics instead)
	k, _ := NewKey(b)
	return k
}

// ParseKey decodes a key written as hex or base64 (standard or URL alphabet, padded or
// not). Surrounding white space is ignored.
func ParseKey(text string) (*Key, error) {
	s := strings.TrimSpace(text)
	if b, err := hex.DecodeString(s); err == nil {
		return NewKey(b)
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return NewKey(b)
		}
	}
	return nil, errors.New("ledger: the MAC key is neither hex nor base64")
}

// LoadKeyFile reads a key file: hex or base64 text, or at least KeySize raw bytes.
func LoadKeyFile(path string) (*Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ledger: key file: %w", err)
	}
	if k, err := ParseKey(string(b)); err == nil {
		return k, nil
	}
	k, err := NewKey(b)
	if err != nil {
		return nil, fmt.Errorf("ledger: key file %s: %w", path, err)
	}
	return k, nil
}

// LoadOrCreateKeyFile reads the key file at path, or creates it (mode 0600, hex) with a
// new random key when it does not exist. created reports whether it was created.
func LoadOrCreateKeyFile(path string) (k *Key, created bool, err error) {
	k, err = LoadKeyFile(path)
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	k = GenerateKey()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("ledger: create key file: %w", err)
	}
	_, werr := f.WriteString(hex.EncodeToString(k.secret) + "\n")
	if err := errors.Join(werr, f.Close()); err != nil {
		return nil, false, fmt.Errorf("ledger: write key file: %w", err)
	}
	return k, true, nil
}

// ID is a public fingerprint of the key (16 hex digits), safe to log: two parties can
// tell whether they hold the same key without showing it.
func (k *Key) ID() string {
	if k == nil {
		return "none"
	}
	return k.id
}

// String names the key by its ID only.
func (k *Key) String() string { return "ledger-key:" + k.ID() }

// GoString names the key by its ID only, so %#v shows no secret either.
func (k *Key) GoString() string { return k.String() }

func (k *Key) mac(domain string) hash.Hash {
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte(domain))
	return m
}

// MsgID returns the message ID under which the entry with key entryKey (Entry.Key) is
// published: derived from the key, so nobody without it can claim an entry's ID in the
// stream's duplicate window before the service writes it. A nil key returns entryKey.
func (k *Key) MsgID(entryKey string) string {
	if k == nil {
		return entryKey
	}
	m := k.mac(domainMsgID)
	m.Write([]byte(entryKey))
	return hex.EncodeToString(m.Sum(nil))[:32]
}
