package nats

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// DefaultSubjectPrefix is the prefix of telemetry subjects: events go to
// "egress.<vendor>".
const DefaultSubjectPrefix = "egress"

// ErrBadSubject is returned when an event's vendor cannot be a subject token.
var ErrBadSubject = errors.New("telemetry: vendor is not a valid subject token")

// PublisherOptions configures a Publisher.
type PublisherOptions struct {
	// SubjectPrefix is prepended to the vendor: "<prefix>.<vendor>". Default "egress".
	SubjectPrefix string
	// MsgID, if set, gives each event a Nats-Msg-Id so that the stream drops
	// re-publications inside its duplicate window. ContentMsgID is a ready choice.
	MsgID func(e *telemetry.Event) string
	// AsyncMaxPending bounds PublishAsync calls awaiting the stream's acknowledgement;
	// beyond it PublishAsync blocks (up to StallWait). Default 4000.
	AsyncMaxPending int
	// StallWait bounds how long PublishAsync blocks for a free slot before failing.
	// Default 30s.
	StallWait time.Duration
}

// Publisher publishes events in the wire format for tests, the demo and generators.
// It is safe for concurrent use.
type Publisher struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	prefix string
	msgID  func(*telemetry.Event) string
	stall  time.Duration

	mu       sync.Mutex
	subjects map[string]string // vendor → subject
}

// NewPublisher returns a Publisher on nc.
func NewPublisher(nc *nats.Conn, o PublisherOptions) (*Publisher, error) {
	if o.SubjectPrefix == "" {
		o.SubjectPrefix = DefaultSubjectPrefix
	}
	if !validSubject(o.SubjectPrefix, false) {
		return nil, fmt.Errorf("telemetry: invalid subject prefix %q", o.SubjectPrefix)
	}
	if o.AsyncMaxPending <= 0 {
		o.AsyncMaxPending = 4000
	}
	if o.StallWait <= 0 {
		o.StallWait = 30 * time.Second
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(o.AsyncMaxPending))
	if err != nil {
		return nil, fmt.Errorf("telemetry: jetstream: %w", err)
	}
	return &Publisher{nc: nc, js: js, prefix: o.SubjectPrefix, msgID: o.MsgID, stall: o.StallWait, subjects: map[string]string{}}, nil
}

// Subject returns the subject e is published on. Vendors that are not a single subject
// token (empty, containing '.', '*', '>' or white space) are refused with ErrBadSubject.
func (p *Publisher) Subject(e *telemetry.Event) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.subjects[e.Vendor]; ok {
		return s, nil
	}
	v := e.Vendor
	if v == "" || strings.ContainsAny(v, ".*> \t\r\n") {
		return "", fmt.Errorf("%w: %q", ErrBadSubject, v)
	}
	s := p.prefix + "." + v
	if len(p.subjects) < 4096 {
		p.subjects[v] = s
	}
	return s, nil
}

func (p *Publisher) message(e *telemetry.Event, data []byte) (*nats.Msg, error) {
	subj, err := p.Subject(e)
	if err != nil {
		return nil, err
	}
	m := &nats.Msg{Subject: subj, Data: telemetry.AppendJSON(data, e)}
	if p.msgID != nil {
		if id := p.msgID(e); id != "" {
			m.Header = nats.Header{jetstream.MsgIDHeader: []string{id}}
		}
	}
	return m, nil
}

// Publish publishes e to its JetStream stream and waits for the stream's
// acknowledgement.
func (p *Publisher) Publish(ctx context.Context, e *telemetry.Event) error {
	m, err := p.message(e, make([]byte, 0, 256))
	if err != nil {
		return err
	}
	if _, err := p.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("telemetry: publish to %s: %w", m.Subject, err)
	}
	return nil
}

// PublishAsync publishes e to its JetStream stream without waiting for the stream's
// acknowledgement (it blocks while AsyncMaxPending publications are unacknowledged);
// the future resolves with the acknowledgement. Use WaitAsync to wait for all of them.
func (p *Publisher) PublishAsync(e *telemetry.Event) (jetstream.PubAckFuture, error) {
	m, err := p.message(e, make([]byte, 0, 256))
	if err != nil {
		return nil, err
	}
	f, err := p.js.PublishMsgAsync(m, jetstream.WithStallWait(p.stall))
	if err != nil {
		return nil, fmt.Errorf("telemetry: publish to %s: %w", m.Subject, err)
	}
	return f, nil
}

// WaitAsync waits until every PublishAsync so far is acknowledged, or ctx is done.
func (p *Publisher) WaitAsync(ctx context.Context) error {
	select {
	case <-p.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("telemetry: %d publications unacknowledged: %w", p.js.PublishAsyncPending(), ctx.Err())
	}
}

// PublishCore publishes e with core NATS (at most once, no acknowledgement), e.g. for
// a CoreSource.
func (p *Publisher) PublishCore(e *telemetry.Event) error {
	m, err := p.message(e, make([]byte, 0, 256))
	if err != nil {
		return err
	}
	return p.nc.PublishMsg(m)
}

// ContentMsgID derives a Nats-Msg-Id from the event's content (a SHA-256 of its wire
// form), so that publishing the same event twice stores it once.
func ContentMsgID(e *telemetry.Event) string {
	var buf [512]byte
	sum := sha256.Sum256(telemetry.AppendJSON(buf[:0], e))
	return hex.EncodeToString(sum[:16])
}
