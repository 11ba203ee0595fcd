// Package natsconn connects the binary's commands to NATS with the options a production
// deployment needs: credentials file, nkey seed, TLS (CA, client certificate), and
// reconnection forever with logged disconnects. A credentials file's user JWT may
// restrict its inboxes to a private prefix (Killswitch's service and sensor identities
// do): Connect then uses that prefix. Check tells, before a service relies on them,
// whether its identity may do what it needs.
package natsconn

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// Options are the connection settings shared by every command that talks to NATS.
type Options struct {
	// URL is the server URL (comma-separated for a cluster).
	URL string
	// CredsFile is a NATS credentials file (JWT + nkey seed).
	CredsFile string
	// NKeyFile is an nkey seed file.
	NKeyFile string
	// TLSCA is a CA bundle to verify the server.
	TLSCA string
	// TLSCert and TLSKey are a client certificate and key.
	TLSCert, TLSKey string
	// Name is the client connection name shown by the server.
	Name string
	// InboxPrefix overrides the reply inbox prefix; default the one the credentials
	// file's permissions allow (a single "<prefix>.>" subscription starting with
	// _INBOX), else _INBOX.
	InboxPrefix string
}

// Connect dials NATS and keeps reconnecting forever, logging disconnects and reconnects.
func (o Options) Connect(log *zap.Logger) (*nats.Conn, error) {
	if o.URL == "" {
		return nil, errors.New("natsconn: no server URL")
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return nil, errors.New("natsconn: --nats-tls-cert and --nats-tls-key go together")
	}
	name := o.Name
	if name == "" {
		name = "killswitch"
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(64 << 20),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("disconnected from NATS", zap.Error(err))
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("reconnected to NATS", zap.String("server", c.ConnectedUrlRedacted()))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			log.Warn("NATS async error", zap.String("subject", subj), zap.Error(err))
		}),
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
		if o.InboxPrefix == "" {
			p, err := InboxPrefix(o.CredsFile)
			if err != nil {
				return nil, err
			}
			o.InboxPrefix = p
		}
	}
	if o.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(o.InboxPrefix))
	}
	if o.NKeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("natsconn: nkey %s: %w", o.NKeyFile, err)
		}
		opts = append(opts, opt)
	}
	if o.TLSCA != "" {
		opts = append(opts, nats.RootCAs(o.TLSCA))
	}
	if o.TLSCert != "" {
		opts = append(opts, nats.ClientCert(o.TLSCert, o.TLSKey))
	}
	nc, err := nats.Connect(o.URL, opts...)
	if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked) {
		hint := "give a credentials file (--nats-creds FILE; `killswitch run` keeps its identities in <data dir>/creds/)"
		if o.CredsFile != "" {
			hint = "the credentials in " + o.CredsFile + " are not accepted by this server (revoked, expired, or from another data directory?)"
		}
		return nil, fmt.Errorf("natsconn: connect %s: %w: %s", o.URL, err, hint)
	}
	if err != nil {
		return nil, fmt.Errorf("natsconn: connect %s: %w", o.URL, err)
	}
	return nc, nil
}

// InboxPrefix returns the inbox prefix the user JWT in a credentials file allows: the
// prefix of its one subscribe permission "<prefix>.>" whose prefix starts with _INBOX,
// or "" (the client's default, _INBOX).
func InboxPrefix(credsFile string) (string, error) {
	b, err := os.ReadFile(credsFile)
	if err != nil {
		return "", fmt.Errorf("natsconn: credentials: %w", err)
	}
	tok, err := jwt.ParseDecoratedJWT(b)
	if err != nil {
		return "", fmt.Errorf("natsconn: credentials %s: %w", credsFile, err)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return "", fmt.Errorf("natsconn: credentials %s: %w", credsFile, err)
	}
	prefix := ""
	for _, s := range uc.Sub.Allow {
		p, ok := strings.CutSuffix(s, ".>")
		switch {
		case !ok || !strings.HasPrefix(p, "_INBOX"):
		case p == "_INBOX":
			return "", nil
		default:
			prefix = p
		}
	}
	return prefix, nil
}

// ErrNotPermitted says that the connection's identity may not do something it needs.
var ErrNotPermitted = errors.New("not permitted")

// ErrNoAnswer says that the server did not answer Check's probes (and reported no
// permissions violation): JetStream may be unavailable for now. It is retryable.
var ErrNoAnswer = errors.New("no answer from the server")

// checkAttempts bounds the probes of one subject that go unanswered.
const checkAttempts = 5

// Check tells whether the connection's identity may use the JetStream API and publish
// to each of the stream-backed subjects given, without changing anything: each probe
// is a request carrying a Nats-Expected-Last-Sequence no stream can have, which
// JetStream refuses (nothing is stored) and a missing stream leaves without
// responders; a message the server does not let through gets no answer, and the server
// reports a permissions violation. A probe without an answer and without a violation
// (JetStream busy, a node restarting) is sent again, up to checkAttempts times, and then
// reported as ErrNoAnswer, never as not permitted. timeout bounds each probe (default 2s).
func Check(ctx context.Context, nc *nats.Conn, subjects []string, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	probe := func(subj string, m *nats.Msg) error {
		for range checkAttempts {
			before := nc.LastError()
			rctx, cancel := context.WithTimeout(ctx, timeout)
			_, err := nc.RequestMsgWithContext(rctx, m)
			cancel()
			switch {
			case err == nil, errors.Is(err, nats.ErrNoResponders):
				return nil
			case ctx.Err() != nil:
				return ctx.Err()
			case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
				if le := nc.LastError(); le != before && errors.Is(le, nats.ErrPermissionViolation) {
					return fmt.Errorf("%w: %v", ErrNotPermitted, le)
				}
				continue
			default:
				return fmt.Errorf("natsconn: probe %s: %w", subj, err)
			}
		}
		return fmt.Errorf("%w: %d probes of %s went unanswered (%s each), with no permissions violation reported",
			ErrNoAnswer, checkAttempts, subj, timeout)
	}
	if err := probe("$JS.API.INFO", nats.NewMsg("$JS.API.INFO")); err != nil {
		return fmt.Errorf("the JetStream API ($JS.API.>, replies on %s.>): %w; or JetStream is not enabled for this account",
			inboxOf(nc), err)
	}
	for _, subj := range subjects {
		m := nats.NewMsg(subj)
		m.Header.Set(nats.ExpectedLastSeqHdr, strconv.FormatUint(math.MaxUint64, 10))
		if err := probe(subj, m); err != nil {
			return fmt.Errorf("publish to %s: %w", subj, err)
		}
	}
	return nil
}

func inboxOf(nc *nats.Conn) string {
	in := nc.NewInbox()
	if i := strings.LastIndex(in, "."); i > 0 {
		return in[:i]
	}
	return in
}
