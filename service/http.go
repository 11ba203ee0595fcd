package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/console"
	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/killswitch-dev/killswitch/users"
	"go.uber.org/zap"
)

// startHTTP listens for the API (the port is bound now, so a busy port fails the start).
func (s *Service) startHTTP() error {
	// Start-up work on local files, bounded by the users file's lock wait.
	apiUsers, err := s.apiUsers(context.Background())
	if err != nil {
		return err
	}
	h, err := httpapi.New(httpapi.Config{
		Users: apiUsers, Gatherer: s.metrics.Registry, Incidents: s.incidents, Controller: controller{s},
		Approvals: controller{s}, Killer: s.killer(), Ready: s.readiness, Log: s.log.Named("http"),
	})
	if err != nil {
		return err
	}
	ui, err := s.newConsole(apiUsers)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, ui) // the live console; everything else is the API
	mux.Handle("/", h)
	s.httpLn, err = net.Listen("tcp", s.cfg.Service.HTTP.Listen)
	if err != nil {
		ui.Close()
		return fmt.Errorf("service: http listen: %w", err)
	}
	s.httpSrv = httpapi.NewServer(mux)
	s.httpSrv.RegisterOnShutdown(ui.Close) // its live streams would hold the shutdown
	eng := s.pipe.Engine()
	s.metrics.WatchFleet(func() (uint64, float64) {
		f := eng.Fleet()
		if !f.On {
			return f.Shifts, 1
		}
		return f.Shifts, f.Current.Factor
	})
	return nil
}

// apiUsers opens the API's users file (DataDir/users.json, re-read when it changes) and
// makes sure someone can use the API. A configured token (Options.APIToken, which the
// binary reads from KILLSWITCH_API_TOKEN, else service.http.token_file) is the token of
// the user "admin", role admin, created or updated now. Without one, a first start
// creates "admin" and writes its token to DataDir/api-token (0600), keeping a token an
// earlier version generated there. The log says where; it never holds a token.
func (s *Service) apiUsers(ctx context.Context) (*users.Store, error) {
	configured, source := s.o.APIToken, config.EnvAPIToken
	if f := s.cfg.Service.HTTP.TokenFile; configured == "" && f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("service: api token: %w", err)
		}
		configured, source = strings.TrimSpace(string(b)), "service.http.token_file "+f
	}
	dir := s.cfg.Service.DataDir
	store := users.Open(users.Path(dir), users.Options{Clock: s.o.Clock, Log: s.log.Named("users")})
	b, err := store.Bootstrap(ctx, configured, filepath.Join(dir, users.TokenFileName))
	if err != nil {
		return nil, fmt.Errorf("service: api users: %w", err)
	}
	switch {
	case b.Changed && configured != "":
		s.log.Info("API user admin holds the configured token", zap.String("from", source), zap.String("users", store.Path()))
	case b.Created:
		s.log.Warn("no API users: created the admin user", zap.String("token_file", b.TokenFile), zap.Bool("earlier_token_kept", b.Reused),
			zap.String("users", store.Path()), zap.String("next", "killswitch users add NAME --role viewer|approver|admin"))
	}
	list, err := store.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("service: api users: %w", err)
	}
	if len(list) == 0 {
		s.log.Warn("the API has no users: no one can use it", zap.String("users", store.Path()),
			zap.String("fix", "killswitch users add NAME --role admin, or set "+config.EnvAPIToken))
	}
	return store, nil
}

func (s *Service) readiness(ctx context.Context) error {
	switch {
	case !s.ready.Load():
		return errors.New("starting or stopping")
	case !s.nc.IsConnected():
		return errors.New("not connected to NATS")
	case s.pb.LastReloadError() != nil:
		return nil // the previous playbooks serve; reported in the log
	}
	if _, err := s.js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("JetStream unavailable: %w", err)
	}
	// Still ready either way: the chain goes on, and a restart mends neither.
	switch li := s.ledger.Integrity(); {
	case li.Failing():
		return fmt.Errorf("%w: ledger appends failing since %s (%d entries not stored): %s",
			httpapi.ErrDegraded, li.FailingSince.UTC().Format(time.RFC3339), li.Failed, li.LastFailure)
	case li.Degraded():
		return fmt.Errorf("%w: ledger integrity", httpapi.ErrDegraded)
	}
	return nil
}

// controller adapts the guard rails to the HTTP API.
type controller struct{ s *Service }

func apiErr(err error) error {
	switch {
	case errors.Is(err, actions.ErrUnknownAction):
		return fmt.Errorf("%w: %w", httpapi.ErrNotFound, err)
	case errors.Is(err, actions.ErrExpired):
		return fmt.Errorf("%w: %w", httpapi.ErrExpired, err)
	case errors.Is(err, actions.ErrDecided):
		return fmt.Errorf("%w: %w", httpapi.ErrConflict, err)
	}
	return err
}

func (c controller) Approve(ctx context.Context, id, approver, comment string) error {
	u, err := c.s.runner.Approvals().Approve(ctx, id, approver, comment)
	if u.Ref.ID != "" { // it ran, failed or expired: the incident shows it either way
		c.s.pipe.Responder().ActionUpdate(ctx, u)
	}
	return apiErr(err)
}

func (c controller) Reject(ctx context.Context, id, approver, comment string) error {
	u, err := c.s.runner.Approvals().Reject(ctx, id, approver, comment)
	if u.Ref.ID != "" {
		c.s.pipe.Responder().ActionUpdate(ctx, u)
	}
	return apiErr(err)
}

// Veto cancels an action announced in a veto window (recorded in the ledger with who).
func (c controller) Veto(ctx context.Context, id, who, comment string) error {
	u, err := c.s.runner.Approvals().Veto(ctx, id, who, comment)
	if u.Ref.ID != "" {
		c.s.pipe.Responder().ActionUpdate(ctx, u)
	}
	return apiErr(err)
}

// Pending lists the held actions waiting for an approval (pending, or failed and
// approvable again) and the running veto windows, soonest deadline first.
func (c controller) Pending(ctx context.Context) (httpapi.Pending, error) {
	held, err := c.s.runner.Approvals().List(ctx)
	if err != nil {
		return httpapi.Pending{}, err
	}
	now := c.s.o.Clock.Now()
	out := httpapi.Pending{Now: now, Approvals: []httpapi.PendingAction{}, VetoWindows: []httpapi.PendingAction{}}
	for _, h := range held {
		p := httpapi.PendingAction{ID: h.ID, Incident: h.Incident, Vendor: h.Vendor, Credential: h.Credential,
			Type: string(h.Action.Type), Target: h.Target, State: string(h.State), Guard: h.Guard, Reason: h.Reason,
			Since: h.HeldAt, Deadline: h.ExpiresAt, LastError: h.LastError}
		switch h.State {
		case actions.HoldPending, actions.HoldFailed:
			if !now.Before(h.ExpiresAt) {
				continue // expired: the next tick records it
			}
			p.RemainingSeconds = h.ExpiresAt.Sub(now).Seconds()
			out.Approvals = append(out.Approvals, p)
		case actions.HoldVetoWindow:
			p.Deadline, p.VetoWindow = h.RunsAt, h.VetoWindow
			p.RemainingSeconds = max(0, h.RunsAt.Sub(now).Seconds())
			out.VetoWindows = append(out.VetoWindows, p)
		}
	}
	soonest := func(a, b httpapi.PendingAction) int { return a.Deadline.Compare(b.Deadline) }
	slices.SortFunc(out.Approvals, soonest)
	slices.SortFunc(out.VetoWindows, soonest)
	return out, nil
}

func (c controller) Pause(ctx context.Context, who, reason string) error {
	if err := c.s.runner.Control().Pause(ctx, who, reason); err != nil {
		return err
	}
	c.s.metrics.Paused.Set(1)
	return nil
}

func (c controller) Resume(ctx context.Context, who string) error {
	if err := c.s.runner.Control().Resume(ctx, who); err != nil {
		return err
	}
	if err := c.s.runner.Control().ClearStorm(ctx, who); err != nil {
		return err
	}
	c.s.metrics.Paused.Set(0)
	return nil
}

func (c controller) ResetBreaker(ctx context.Context, who string) error {
	return c.s.runner.Control().ResetBreaker(ctx, who)
}

func (c controller) Status(ctx context.Context) (httpapi.Status, error) {
	st, err := c.s.runner.Control().Status(ctx)
	if err != nil {
		return httpapi.Status{}, err
	}
	out := httpapi.Status{Paused: st.Paused.On, BreakerOpen: st.Breaker.On, Mode: string(st.Mode)}
	if st.Paused.On {
		out.PausedBy, out.PausedAt = st.Paused.By, st.Paused.At
	}
	if h, err := c.s.runner.Control().Storm(ctx); err != nil {
		return httpapi.Status{}, err
	} else if h.Active(c.s.o.Clock.Now()) {
		out.Storm = &httpapi.Storm{Vendors: h.Vendors, Since: h.Since, Until: h.Until, Reason: h.Reason}
		held, err := c.s.runner.Approvals().List(ctx)
		if err != nil {
			return httpapi.Status{}, err
		}
		for _, a := range held {
			if a.Guard == (actions.StormGuard{}).Name() && a.State == actions.HoldPending {
				out.Storm.Held = append(out.Storm.Held, a.ID)
			}
		}
	}
	li := c.s.ledger.Integrity()
	out.Ledger = &httpapi.LedgerStatus{Integrity: "ok", HeadSeq: li.Head.Seq, BreaksSeen: li.BreaksSeen,
		Unsealed: li.Unsealed, UnsealedMore: li.UnsealedMore, Appends: "ok",
		FailingSince: li.FailingSince, FailedAppends: li.Failed, LastFailure: li.LastFailure}
	if li.Degraded() {
		out.Ledger.Integrity = "degraded"
	}
	if li.Failing() {
		out.Ledger.Appends = "failing"
	}
	switch {
	case c.s.o.VaultExecutors != nil && c.s.o.VaultTokenBroad:
		out.VaultTokenScope = "broad (allowed by --allow-broad-vault-token)"
	case c.s.o.VaultExecutors != nil:
		out.VaultTokenScope = "scoped"
	}
	if c.s.members != nil {
		ms, err := c.s.members.Status(ctx)
		if err != nil {
			return httpapi.Status{}, err
		}
		out.Cluster = &httpapi.ClusterStatus{Instance: c.s.instance, Partitions: c.s.cfg.Service.Cluster.Partitions}
		for _, m := range ms {
			out.Cluster.Members = append(out.Cluster.Members, httpapi.ClusterMember(m))
		}
	}
	f := c.s.pipe.Engine().Fleet()
	out.Fleet = &httpapi.FleetStatus{Shifts: f.Shifts, Shifting: f.On, Discount: f.Discount}
	if f.On {
		out.Fleet.Since, out.Fleet.Factor = f.Current.At, f.Current.Factor
		out.Fleet.VendorsMoved, out.Fleet.VendorsTotal = f.Current.VendorsMoved, f.Current.VendorsTotal
	}
	if c.s.o.VaultExecutors == nil {
		out.DryRunReason = c.s.o.DryRunReason
		if out.DryRunReason == "" {
			out.DryRunReason = "no Vault configured"
		}
	}
	return out, nil
}
