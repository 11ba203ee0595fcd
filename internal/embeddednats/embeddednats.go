// Package embeddednats runs a nats-server with JetStream inside the process: the
// default transport of `killswitch run` and `killswitch demo`, and the real server the
// tests run against.
//
// JetStream uses file storage with sync always (every write is fsynced before it is
// acknowledged), as the reliability notes require.
//
// With Options.Auth the server runs in operator mode (decentralized JWT auth): it
// refuses anonymous clients, and the identities Auth mints (service, operator,
// automation, sensors) get exactly their role's permissions; see auth.go.
//
// StartCluster runs several such servers routed into one JetStream cluster in the
// process (R3 streams and buckets, nodes stopped and started again by index); see
// cluster.go.
package embeddednats

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ErrNotReady is returned when the server does not accept connections in time.
var ErrNotReady = errors.New("embedded nats-server not ready")

// Options configures the embedded server.
type Options struct {
	// Host to listen on. Default 127.0.0.1.
	Host string
	// Port to listen on; -1 picks a free port. Default 4222 (0 means the default).
	Port int
	// StoreDir is the JetStream storage directory. Required.
	StoreDir string
	// MaxPayload bounds a message; default 1 MiB.
	MaxPayload int32
	// ReadyTimeout bounds the wait for the server to accept connections. Default 10s.
	ReadyTimeout time.Duration
	// Auth, if set, turns authentication and authorization on: only the users it
	// mints connect. Nil: anonymous clients may do anything (test servers only).
	Auth *Auth
}

// Server is a running embedded nats-server.
type Server struct {
	ns   *server.Server
	opts Options
	// member is the server's place in a cluster (nil: a single server).
	member *member
}

// Start starts the server and waits until it accepts connections.
func Start(o Options) (*Server, error) { return start(o, nil) }

// start starts a single server (m nil) or a cluster member.
func start(o Options, m *member) (*Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("embeddednats: StoreDir is required")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = 4222
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = 1 << 20
	}
	sopts := &server.Options{
		Host:       o.Host,
		Port:       o.Port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		SyncAlways: true,
		MaxPayload: o.MaxPayload,
		NoSigs:     true,
		NoLog:      true,
	}
	if o.Auth != nil {
		if err := o.Auth.configure(sopts); err != nil {
			return nil, err
		}
	}
	if m != nil {
		m.configure(sopts)
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("embeddednats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(o.ReadyTimeout) {
		ns.Shutdown()
		return nil, fmt.Errorf("%w after %s on %s:%d", ErrNotReady, o.ReadyTimeout, o.Host, o.Port)
	}
	// Remember the port actually bound so a restart comes back on the same address.
	if a, ok := ns.Addr().(*net.TCPAddr); ok {
		o.Port = a.Port
	}
	return &Server{ns: ns, opts: o, member: m}, nil
}

// URL is the client URL of the server.
func (s *Server) URL() string { return s.ns.ClientURL() }

// Options returns the options the server runs with (Port is the bound port).
func (s *Server) Options() Options { return s.opts }

// Shutdown stops the server and waits for it to finish.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// Restart shuts the server down and starts a new one on the same address and store
// directory: what a NATS restart mid-stream looks like to clients.
func (s *Server) Restart() error {
	s.Shutdown()
	n, err := start(s.opts, s.member)
	if err != nil {
		return err
	}
	*s = *n
	return nil
}
