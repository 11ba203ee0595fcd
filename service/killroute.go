package service

import (
	"context"
	"slices"

	"github.com/killswitch-dev/killswitch/httpapi"
	"github.com/killswitch-dev/killswitch/pipeline"
	"github.com/killswitch-dev/killswitch/pipeline/cluster"
)

// ownerKiller is the Killer of an instance of a cluster: what cuts off or restores a
// vendor runs only on the instance that owns the vendor's partition — the one whose
// responder holds the vendor's incidents — and is answered, elsewhere, with the owner's
// API (httpapi.Misdirected: 421). Planning, listing and rejecting run anywhere.
type ownerKiller struct {
	*pipeline.Killer
	s *Service
}

// owner returns the API of the instance owning vendor's partition, "" when it is this
// one (or no live owner is known: the request is served here rather than refused).
func (k ownerKiller) owner(ctx context.Context, vendor string) (string, error) {
	if k.s.members == nil {
		return "", nil
	}
	ms, err := k.s.members.Status(ctx)
	if err != nil {
		return "", err
	}
	p := cluster.Of(vendor, k.s.cfg.Service.Cluster.Partitions)
	for _, m := range ms {
		if slices.Contains(m.Partitions, p) && m.Alive && !m.Self && m.HTTP != "" {
			return "http://" + m.HTTP, nil
		}
	}
	return "", nil
}

// route returns a Misdirected error naming vendor's owner when it is another instance.
func (k ownerKiller) route(ctx context.Context, vendor string) error {
	api, err := k.owner(ctx, vendor)
	if err != nil || api == "" {
		return err
	}
	return &httpapi.Misdirected{Vendor: vendor, API: api}
}

// Order implements httpapi.Killer.
func (k ownerKiller) Order(ctx context.Context, vendor, by, reason string) (pipeline.KillOrder, error) {
	if err := k.route(ctx, vendor); err != nil {
		return pipeline.KillOrder{}, err
	}
	return k.Killer.Order(ctx, vendor, by, reason)
}

// Approve implements httpapi.Killer.
func (k ownerKiller) Approve(ctx context.Context, id, by string) (pipeline.KillOrder, error) {
	o, _, err := k.Get(ctx, id)
	if err != nil {
		return o, err
	}
	if err := k.route(ctx, o.Vendor); err != nil {
		return pipeline.KillOrder{}, err
	}
	return k.Killer.Approve(ctx, id, by)
}

// Restore implements httpapi.Killer.
func (k ownerKiller) Restore(ctx context.Context, id, by, reason string) (pipeline.Restoration, error) {
	in, err := k.s.incidents.Incident(ctx, id)
	if err != nil {
		return pipeline.Restoration{}, err
	}
	if err := k.route(ctx, in.Vendor); err != nil {
		return pipeline.Restoration{}, err
	}
	return k.Killer.Restore(ctx, id, by, reason)
}

// killer is the Killer the API and the console use (the membership is set before the
// API serves).
func (s *Service) killer() httpapi.Killer {
	if !s.cfg.Service.Cluster.Enabled {
		return s.pipe.Killer()
	}
	return ownerKiller{Killer: s.pipe.Killer(), s: s}
}
