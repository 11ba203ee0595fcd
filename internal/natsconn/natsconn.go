// Package natsconn connects the binary's commands to NATS with the options a production
// deployment needs: credentials file, nkey seed, TLS (CA, client certificate), and
// reconnection forever with logged disconnects.
package natsconn

import (
	"errors"
	"flag"
	"fmt"
	"time"

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
}

// RegisterFlags adds --nats, --nats-creds, --nats-nkey, --nats-tls-ca, --nats-tls-cert
// and --nats-tls-key to fs, with def as the default URL.
func (o *Options) RegisterFlags(fs *flag.FlagSet, def string) {
	fs.StringVar(&o.URL, "nats", def, "NATS server URL")
	fs.StringVar(&o.CredsFile, "nats-creds", "", "NATS credentials file")
	fs.StringVar(&o.NKeyFile, "nats-nkey", "", "NATS nkey seed file")
	fs.StringVar(&o.TLSCA, "nats-tls-ca", "", "CA bundle to verify the NATS server")
	fs.StringVar(&o.TLSCert, "nats-tls-cert", "", "client certificate for NATS")
	fs.StringVar(&o.TLSKey, "nats-tls-key", "", "client key for NATS")
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
	if err != nil {
		return nil, fmt.Errorf("natsconn: connect %s: %w", o.URL, err)
	}
	return nc, nil
}
