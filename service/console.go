package service

import (
	"fmt"
	"maps"
	"slices"

	"github.com/killswitch-dev/killswitch/console"
	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/nats-io/nats.go"
)

// newConsole returns the live console (served under /ui/ on the API's listener) on the
// API's users and controller, following the service's events, ledger and telemetry on
// its NATS connection.
func (s *Service) newConsole(auth httpapi.Authenticator) (*console.Console, error) {
	return console.New(console.Config{
		Users: auth, Incidents: s.incidents, Controller: controller{s}, Bus: natsBus{s.nc},
		Killer: s.killer(), Vendors: slices.Sorted(maps.Keys(s.cfg.Vendors)),
		TelemetrySubject: s.cfg.Service.NATS.TelemetrySubject, Clock: s.o.Clock, Log: s.log.Named("console"),
	})
}

// natsBus is the console's Bus on a core NATS connection.
type natsBus struct{ nc *nats.Conn }

// Subscribe implements console.Bus.
func (b natsBus) Subscribe(subject string, handle func(subject string, data []byte)) (func() error, error) {
	sub, err := b.nc.Subscribe(subject, func(m *nats.Msg) { handle(m.Subject, m.Data) })
	if err != nil {
		return nil, fmt.Errorf("service: console subscription: %w", err)
	}
	return sub.Unsubscribe, nil
}
