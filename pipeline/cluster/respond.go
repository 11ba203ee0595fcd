package cluster

import (
	"context"
	"fmt"
	"sync"

	"github.com/killswitch-dev/killswitch/detectors"
	"github.com/killswitch-dev/killswitch/incidents"
	"github.com/killswitch-dev/killswitch/pipeline"
	"go.uber.org/zap"
)

// IncidentLister lists the incidents in storage (incidents/natskv.Store).
type IncidentLister interface {
	Incidents(ctx context.Context) ([]*incidents.Incident, error)
}

// Respond makes a Responder follow the partitions: it holds the incidents of the
// partitions the instance owns, reloaded from storage when a partition is gained (the
// previous owner kept them up to date there) and dropped when it moves away.
type Respond struct {
	r          *pipeline.Responder
	store      IncidentLister
	partitions int
	log        *zap.Logger

	mu      sync.Mutex
	fresh   []bool // the partition's incidents were loaded since it was gained
	owned   []bool
	loading sync.Mutex // one reload at a time
}

// NewRespond returns the wrapper; every partition starts unloaded.
func NewRespond(r *pipeline.Responder, store IncidentLister, partitions int, log *zap.Logger) *Respond {
	if log == nil {
		log = zap.NewNop()
	}
	return &Respond{r: r, store: store, partitions: partitions, log: log,
		fresh: make([]bool, partitions), owned: make([]bool, partitions)}
}

// Own says which partitions the instance owns now: the incidents of the partitions lost
// are dropped, those of the partitions gained are loaded.
func (c *Respond) Own(ctx context.Context, owned []int) {
	now := make([]bool, c.partitions)
	for _, p := range owned {
		if p >= 0 && p < c.partitions {
			now[p] = true
		}
	}
	c.mu.Lock()
	var gained []int
	for p := range now {
		if !now[p] {
			c.fresh[p] = false
		} else if !c.owned[p] {
			gained = append(gained, p)
		}
	}
	c.owned = now
	c.mu.Unlock()
	c.r.Forget(func(v string) bool { return now[Of(v, c.partitions)] })
	if len(gained) > 0 {
		if err := c.load(ctx, gained); err != nil {
			c.log.Warn("loading the incidents of the partitions gained failed (retried with their first detection)", zap.Error(err))
		}
	}
}

// Handle implements pipeline/jetstream.DetectionHandler: the detection's partition is
// loaded first if it was not.
func (c *Respond) Handle(ctx context.Context, d detectors.Detection) error {
	p := Of(d.Vendor, c.partitions)
	c.mu.Lock()
	fresh := c.fresh[p]
	c.mu.Unlock()
	if !fresh {
		if err := c.load(ctx, []int{p}); err != nil {
			return err
		}
	}
	return c.r.Handle(ctx, d)
}

// load replaces the incidents of partitions ps with storage's.
func (c *Respond) load(ctx context.Context, ps []int) error {
	c.loading.Lock()
	defer c.loading.Unlock()
	c.mu.Lock()
	var todo []int
	for _, p := range ps {
		if !c.fresh[p] {
			todo = append(todo, p)
		}
	}
	c.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	all, err := c.store.Incidents(ctx)
	if err != nil {
		return fmt.Errorf("cluster: load incidents: %w", err)
	}
	in := func(v string) bool {
		p := Of(v, c.partitions)
		for _, q := range todo {
			if p == q {
				return true
			}
		}
		return false
	}
	byVendor := map[string][]*incidents.Incident{}
	for _, v := range c.r.Vendors() {
		if in(v) {
			byVendor[v] = nil // held here, none open in storage: emptied
		}
	}
	n := 0
	for _, inc := range all {
		// closed but contained: its revoked credential may still be watched for use
		// after revocation (the Responder keeps only that of it)
		if (inc.State != incidents.StateClosed || inc.ContainedAt != nil) && in(inc.Vendor) {
			byVendor[inc.Vendor] = append(byVendor[inc.Vendor], inc)
			n++
		}
	}
	for v, ins := range byVendor {
		c.r.Reload(v, ins)
	}
	c.mu.Lock()
	for _, p := range todo {
		c.fresh[p] = true
	}
	c.mu.Unlock()
	if n > 0 {
		c.log.Info("incidents of the partitions taken over loaded", zap.Ints("partitions", todo), zap.Int("incidents", n))
	}
	return nil
}
