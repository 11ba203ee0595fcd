package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/killswitch-dev/killswitch/actions"
	"github.com/killswitch-dev/killswitch/config"
	"github.com/killswitch-dev/killswitch/httpapi"
	"go.uber.org/zap"
)

// startHTTP listens for the API (the port is bound now, so a busy port fails the start).
func (s *Service) startHTTP() error {
	tok, err := s.apiToken()
	if err != nil {
		return err
	}
	h, err := httpapi.New(httpapi.Config{
		Token: tok, Gatherer: s.metrics.Registry, Incidents: s.incidents, Controller: controller{s},
		Ready: s.readiness, Log: s.log.Named("http"),
	})
	if err != nil {
		return err
	}
	s.httpLn, err = net.Listen("tcp", s.cfg.Service.HTTP.Listen)
	if err != nil {
		return fmt.Errorf("service: http listen: %w", err)
	}
	s.httpSrv = httpapi.NewServer(h)
	return nil
}

// apiToken returns the configured bearer token, or creates one in the data directory.
func (s *Service) apiToken() (string, error) {
	if s.o.APIToken != "" {
		return s.o.APIToken, nil
	}
	if f := s.cfg.Service.HTTP.TokenFile; f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("service: api token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	p := filepath.Join(s.cfg.Service.DataDir, "api-token")
	if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) >= 16 {
		return strings.TrimSpace(string(b)), nil
	}
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	tok := hex.EncodeToString(b)
	if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("service: api token: %w", err)
	}
	s.log.Warn("no API token configured: generated one", zap.String("file", p),
		zap.String("set", config.EnvAPIToken+" or service.http.token_file to choose it"))
	return tok, nil
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
	if s.ledger.Integrity().Degraded() {
		return fmt.Errorf("%w: ledger integrity", httpapi.ErrDegraded) // still ready: the chain goes on
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
		Unsealed: li.Unsealed, UnsealedMore: li.UnsealedMore}
	if li.Degraded() {
		out.Ledger.Integrity = "degraded"
	}
	if c.s.o.VaultExecutors == nil {
		out.DryRunReason = c.s.o.DryRunReason
		if out.DryRunReason == "" {
			out.DryRunReason = "no Vault configured"
		}
	}
	return out, nil
}
