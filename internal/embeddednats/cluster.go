package embeddednats

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ErrNoMetaLeader is returned when a cluster's JetStream has no meta leader in time
// (or a node never catches up with it).
var ErrNoMetaLeader = errors.New("embedded nats cluster: no JetStream meta leader")

// ClusterOptions configures a JetStream cluster of embedded servers in one process:
// what tests (and a local demo) run against to see R3 streams and buckets survive a
// node failure.
type ClusterOptions struct {
	// Nodes is the number of servers. Default 3.
	Nodes int
	// Dir holds each node's JetStream storage, in Dir/node-<i> (i from 1). Required.
	Dir string
	// Host to listen on, for clients and routes. Default 127.0.0.1.
	Host string
	// Name is the cluster's name. Default "killswitch".
	Name string
	// MaxPayload bounds a message; default 1 MiB.
	MaxPayload int32
	// ReadyTimeout bounds the wait for each node to accept connections, and for the
	// JetStream meta leader. Default 10s.
	ReadyTimeout time.Duration
	// Auth, if set, runs every node with the same JWT authorization (the operator and
	// the accounts preloaded on each node): the credentials a data directory holds work
	// on every node. Nil: anonymous clients may do anything (test clusters only).
	Auth *Auth
}

// member is a server's place in a cluster: its name, its route listener and the
// routes to the other nodes.
type member struct {
	name, cluster, host string
	port                int
	routes              []*url.URL
}

func (m *member) configure(o *server.Options) {
	o.ServerName = m.name
	o.Cluster = server.ClusterOpts{Name: m.cluster, Host: m.host, Port: m.port}
	o.Routes = m.routes
}

// Cluster is a running JetStream cluster of embedded servers. Its nodes can be
// stopped and started again one by one (same name, ports and storage): what a node
// failure and its recovery look like to clients. It is safe for concurrent use.
type Cluster struct {
	opts ClusterOptions

	mu    sync.Mutex
	nodes []*Server
	down  []bool
}

// StartCluster starts opts.Nodes servers on free loopback ports, routed to each other
// (file storage per node, sync always, as a single embedded server), and returns once
// every node accepts connections and JetStream has a meta leader that every node
// follows: a JetStream API request sent before that gets no answer.
func StartCluster(ctx context.Context, opts ClusterOptions) (_ *Cluster, err error) {
	if opts.Dir == "" {
		return nil, errors.New("embeddednats: ClusterOptions.Dir is required")
	}
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Nodes < 1 {
		return nil, fmt.Errorf("embeddednats: a cluster of %d nodes", opts.Nodes)
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Name == "" {
		opts.Name = "killswitch"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 10 * time.Second
	}
	ports, err := freePorts(opts.Host, opts.Nodes)
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, nodes: make([]*Server, opts.Nodes), down: make([]bool, opts.Nodes)}
	defer func() {
		if err != nil {
			c.Shutdown()
		}
	}()
	for i := range opts.Nodes {
		m := &member{name: fmt.Sprintf("%s-%d", opts.Name, i+1), cluster: opts.Name, host: opts.Host, port: ports[i]}
		for j, p := range ports {
			if j != i {
				m.routes = append(m.routes, &url.URL{Scheme: "nats-route", Host: net.JoinHostPort(opts.Host, strconv.Itoa(p))})
			}
		}
		s, err := start(Options{Host: opts.Host, Port: -1, StoreDir: filepath.Join(opts.Dir, fmt.Sprintf("node-%d", i+1)),
			MaxPayload: opts.MaxPayload, ReadyTimeout: opts.ReadyTimeout, Auth: opts.Auth}, m)
		if err != nil {
			return nil, fmt.Errorf("embeddednats: cluster node %d: %w", i+1, err)
		}
		c.mu.Lock()
		c.nodes[i] = s
		c.mu.Unlock()
	}
	if err := c.WaitReady(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// freePorts returns n TCP ports on host that were free a moment ago (the route
// listeners must be known before the nodes start).
func freePorts(host string, n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("embeddednats: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Len is the number of nodes, running or stopped.
func (c *Cluster) Len() int { return len(c.nodes) }

// Node returns node i (0-based), running or stopped.
func (c *Cluster) Node(i int) *Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Name is the server name of node i ("<cluster name>-<i+1>").
func (c *Cluster) Name(i int) string { return fmt.Sprintf("%s-%d", c.opts.Name, i+1) }

// URLs are the client URLs of every node (a stopped node keeps its address).
func (c *Cluster) URLs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	urls := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		urls[i] = fmt.Sprintf("nats://%s", net.JoinHostPort(s.opts.Host, strconv.Itoa(s.opts.Port)))
	}
	return urls
}

// URL is every node's client URL, comma-separated: what service.nats.url and --nats
// take for a cluster.
func (c *Cluster) URL() string { return strings.Join(c.URLs(), ",") }

// Running reports whether node i runs.
func (c *Cluster) Running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.down[i]
}

// Stop shuts node i down (its storage stays); the others go on without it.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	s, down := c.nodes[i], c.down[i]
	c.down[i] = true
	c.mu.Unlock()
	if !down {
		s.Shutdown()
	}
}

// Start starts a stopped node i again on its name, ports and storage, and waits until
// it follows the JetStream meta leader (its streams then catch up by themselves).
func (c *Cluster) Start(ctx context.Context, i int) error {
	c.mu.Lock()
	s, down := c.nodes[i], c.down[i]
	c.mu.Unlock()
	if !down {
		return fmt.Errorf("embeddednats: cluster node %d is running", i+1)
	}
	n, err := start(s.opts, s.member)
	if err != nil {
		return fmt.Errorf("embeddednats: restart cluster node %d: %w", i+1, err)
	}
	c.mu.Lock()
	c.nodes[i], c.down[i] = n, false
	c.mu.Unlock()
	return c.WaitReady(ctx)
}

// Restart stops node i and starts it again (see Stop and Start).
func (c *Cluster) Restart(ctx context.Context, i int) error {
	c.Stop(i)
	return c.Start(ctx, i)
}

// Shutdown stops every running node.
func (c *Cluster) Shutdown() {
	for i := range c.nodes {
		if c.nodes[i] != nil {
			c.Stop(i)
		}
	}
}

// running returns the running nodes by index.
func (c *Cluster) running() map[int]*server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	up := map[int]*server.Server{}
	for i, s := range c.nodes {
		if s != nil && !c.down[i] {
			up[i] = s.ns
		}
	}
	return up
}

// WaitReady waits (at most ReadyTimeout, or until ctx is done) until JetStream has a
// meta leader and every running node is current with it.
func (c *Cluster) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.ReadyTimeout)
	defer cancel()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if c.MetaLeader() >= 0 && c.allCurrent() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w within %s: %w", ErrNoMetaLeader, c.opts.ReadyTimeout, ctx.Err())
		case <-t.C:
		}
	}
}

func (c *Cluster) allCurrent() bool {
	for _, s := range c.running() {
		if !s.JetStreamIsCurrent() {
			return false
		}
	}
	return true
}

// MetaLeader returns the index of the node leading the JetStream meta group, or -1.
func (c *Cluster) MetaLeader() int {
	for i, s := range c.running() {
		if s.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// StreamLeader returns the index of the node leading stream (in the Killswitch account
// with Auth, else the global account), or -1.
func (c *Cluster) StreamLeader(stream string) int {
	acc := server.DEFAULT_GLOBAL_ACCOUNT
	if c.opts.Auth != nil {
		acc = c.opts.Auth.AccountPublicKey()
	}
	for i, s := range c.running() {
		if s.JetStreamIsStreamLeader(acc, stream) {
			return i
		}
	}
	return -1
}

// ClientNode returns the index of the running node that a client connection named
// name is connected to, or -1.
func (c *Cluster) ClientNode(name string) int {
	for i, s := range c.running() {
		cz, err := s.Connz(&server.ConnzOptions{Limit: 1 << 16})
		if err != nil {
			continue
		}
		for _, ci := range cz.Conns {
			if ci.Name == name {
				return i
			}
		}
	}
	return -1
}
