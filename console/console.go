// Package console serves the live console: server-rendered pages under /ui/ on the
// API's listener for the people on call. It shows the incidents (filtered by vendor and
// state), each incident with its volume against the expected band, its detections,
// decisions, guard outcomes, actions and ledger trail, the approvals and veto windows
// waiting on people (with countdowns and approve, reject and veto buttons), the global
// switches (pause, resume, breaker reset), the service's status, and the kills: a
// vendor's whole plan shown before it is cut off, the kill orders with their approval,
// restore after a false positive (the wrapping tokens of re-issued credentials shown
// once) and the false-positive holds.
//
// The console consumes what it needs through small interfaces: the controller the API
// uses, the incident reader, the API's users, and a bus subscription on which it follows
// the service's events (relayed to the browsers by server-sent events), the ledger
// records (each incident's trail) and the telemetry (each key's recent volume).
//
// Security: users log in with their API token into a server-side session (an HttpOnly,
// SameSite=Strict cookie that expires); every state-changing request carries the
// session's CSRF token (a header, or a form field without script); roles are enforced
// exactly as the API enforces them (a viewer sees no buttons and is answered 403 if it
// posts anyway). Pages carry a strict Content-Security-Policy: everything, scripts and
// styles included, comes from the console's own embedded files; nothing inline, nothing
// from the network.
package console

import (
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/httpapi"
	"go.uber.org/zap"
)

// Prefix is the path the console is served under.
const Prefix = "/ui/"

// Controller is what the console asks of the service: the API's controller (approve,
// reject, pause, resume, breaker reset, status) and its approvals (pending, veto).
type Controller interface {
	httpapi.Controller
	httpapi.Approvals
}

// Bus delivers the messages published on a subject filter (NATS wildcards) to handle,
// until unsubscribe is called. handle may be called from another goroutine.
type Bus interface {
	Subscribe(subject string, handle func(subject string, data []byte)) (unsubscribe func() error, err error)
}

// Config configures a Console.
type Config struct {
	// Users authenticates the tokens people log in with (the API's users). Required.
	Users httpapi.Authenticator
	// Incidents reads the incidents. Required.
	Incidents httpapi.IncidentReader
	// Controller carries out the operators' requests and reports the status. Required.
	Controller Controller
	// Killer backs the kills page, kill-vendor and restore; nil hides them.
	Killer httpapi.Killer
	// Vendors are the inventory's vendors (the ones that can be cut off).
	Vendors []string
	// Bus carries the service's events, its ledger records and the telemetry. Without
	// one the pages are not live (no events, no trail, no volume charts).
	Bus Bus
	// EventsSubject is where the service publishes what happens. Default
	// killswitch.events.>.
	EventsSubject string
	// LedgerSubject is where ledger records are published. Default killswitch.ledger.
	LedgerSubject string
	// TelemetrySubject is the telemetry's subject filter. Default egress.>.
	TelemetrySubject string
	// Bucket is the finest interval of the volume kept per key. Default one minute.
	Bucket time.Duration
	// History is how much volume is kept per key. Default 24 hours.
	History time.Duration
	// MaxKeys bounds the keys (vendor, vendor/credential) whose volume is kept. Default 5000.
	MaxKeys int
	// MaxTrails bounds the incidents whose ledger trail is kept (oldest dropped first),
	// and MaxTrail the records kept per incident. Defaults 2000 and 1000.
	MaxTrails, MaxTrail int
	// SessionTTL is how long a session lasts from login; IdleTimeout ends one unused for
	// that long. Defaults 8 hours and 1 hour.
	SessionTTL, IdleTimeout time.Duration
	// Clock tells the time. Default the wall clock.
	Clock clock.Clock
	// Log receives the console's errors (never a token or a session).
	Log *zap.Logger
}

// ErrConfig is wrapped by New's error for an incomplete Config.
var ErrConfig = errors.New("console: incomplete configuration")

// Console is the console's HTTP handler, with its sessions and live state.
type Console struct {
	cfg      Config
	mux      *http.ServeMux
	pages    map[string]*template.Template
	static   http.Handler
	sessions *sessions
	hub      *hub
	volumes  *volumes
	trails   *trails

	mu     sync.Mutex
	unsubs []func() error
}

//go:embed templates static
var files embed.FS

// New returns the console. With a Bus it subscribes at once; Close ends the
// subscriptions and the live streams.
func New(cfg Config) (*Console, error) {
	if cfg.Users == nil || cfg.Incidents == nil || cfg.Controller == nil {
		return nil, fmt.Errorf("%w: Users, Incidents and Controller are required", ErrConfig)
	}
	if cfg.EventsSubject == "" {
		cfg.EventsSubject = "killswitch.events.>"
	}
	if cfg.LedgerSubject == "" {
		cfg.LedgerSubject = "killswitch.ledger"
	}
	if cfg.TelemetrySubject == "" {
		cfg.TelemetrySubject = "egress.>"
	}
	if cfg.Bucket <= 0 {
		cfg.Bucket = time.Minute
	}
	if cfg.History <= 0 {
		cfg.History = 24 * time.Hour
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 5000
	}
	if cfg.MaxTrails <= 0 {
		cfg.MaxTrails = 2000
	}
	if cfg.MaxTrail <= 0 {
		cfg.MaxTrail = 1000
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 8 * time.Hour
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = time.Hour
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	static, err := fs.Sub(files, "static")
	if err != nil {
		return nil, fmt.Errorf("console: static files: %w", err)
	}
	c := &Console{
		cfg: cfg, pages: pages,
		static:   http.StripPrefix(Prefix+"static/", http.FileServerFS(static)),
		sessions: newSessions(cfg.Clock, cfg.SessionTTL, cfg.IdleTimeout),
		hub:      newHub(cfg.Clock),
		volumes:  newVolumes(cfg.Clock, cfg.Bucket, int(cfg.History/cfg.Bucket), cfg.MaxKeys),
		trails:   newTrails(cfg.MaxTrails, cfg.MaxTrail),
	}
	c.routes()
	if cfg.Bus != nil {
		if err := c.subscribe(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// subscribe follows the events, the ledger and the telemetry on the bus.
func (c *Console) subscribe() error {
	for _, s := range []struct {
		subject string
		handle  func(subject string, data []byte)
	}{
		{c.cfg.EventsSubject, c.hub.relay},
		{c.cfg.LedgerSubject, c.trails.record},
		{c.cfg.TelemetrySubject, c.volumes.observe},
	} {
		unsub, err := c.cfg.Bus.Subscribe(s.subject, s.handle)
		if err != nil {
			return fmt.Errorf("console: subscribe to %s: %w", s.subject, err)
		}
		c.mu.Lock()
		c.unsubs = append(c.unsubs, unsub)
		c.mu.Unlock()
	}
	return nil
}

// Close ends the bus subscriptions and every live stream (an http.Server's
// RegisterOnShutdown takes it, so a shutdown does not wait for the streams).
func (c *Console) Close() {
	c.mu.Lock()
	unsubs := c.unsubs
	c.unsubs = nil
	c.mu.Unlock()
	for _, u := range unsubs {
		if err := u(); err != nil {
			c.cfg.Log.Debug("console: unsubscribe", zap.Error(err))
		}
	}
	c.hub.close()
}

// ServeHTTP serves the console under Prefix with its security headers.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	c.mux.ServeHTTP(w, r)
}

// routes registers the console's pages and requests with the role each needs.
func (c *Console) routes() {
	m := http.NewServeMux()
	m.Handle("GET "+Prefix+"static/", c.static)
	m.HandleFunc("GET "+Prefix+"login", c.loginPage)
	m.HandleFunc("POST "+Prefix+"login", c.login)
	m.Handle("POST "+Prefix+"logout", c.post(viewer, c.logout))
	m.Handle("GET "+Prefix+"{$}", c.page(viewer, c.incidentsPage))
	m.Handle("GET "+Prefix+"incidents/{id}", c.page(viewer, c.incidentPage))
	m.Handle("GET "+Prefix+"approvals", c.page(viewer, c.approvalsPage))
	m.Handle("GET "+Prefix+"status", c.page(viewer, c.statusPage))
	m.Handle("GET "+Prefix+"events", c.page(viewer, c.events))
	m.Handle("POST "+Prefix+"actions/{id}/approve", c.post(approver, c.decide(c.cfg.Controller.Approve)))
	m.Handle("POST "+Prefix+"actions/{id}/reject", c.post(approver, c.decide(c.cfg.Controller.Reject)))
	m.Handle("POST "+Prefix+"actions/{id}/veto", c.post(approver, c.decide(c.cfg.Controller.Veto)))
	m.Handle("POST "+Prefix+"pause", c.post(admin, c.pause))
	m.Handle("POST "+Prefix+"resume", c.post(admin, c.control(c.cfg.Controller.Resume)))
	m.Handle("POST "+Prefix+"breaker/reset", c.post(admin, c.control(c.cfg.Controller.ResetBreaker)))
	if c.cfg.Killer != nil {
		m.Handle("GET "+Prefix+"kills", c.page(viewer, c.killsPage))
		m.Handle("POST "+Prefix+"vendors/{vendor}/kill", c.post(admin, c.kill))
		m.Handle("POST "+Prefix+"kills/{id}/approve", c.post(admin, c.killDecide(true)))
		m.Handle("POST "+Prefix+"kills/{id}/reject", c.post(admin, c.killDecide(false)))
		m.Handle("POST "+Prefix+"incidents/{id}/restore", c.post(admin, c.restore))
	}
	c.mux = m
}
