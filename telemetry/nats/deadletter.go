package nats

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/killswitch-dev/killswitch/telemetry"
)

// Dead-letter headers. The body of a dead letter is the original message body, byte for
// byte; original headers are kept, except Nats-* headers, which would change how the
// dead-letter stream treats the message (the original Nats-Msg-Id is kept as
// Killswitch-Original-Msg-Id).
const (
	// HeaderReason holds the Reason.
	HeaderReason = "Killswitch-Reason"
	// HeaderDetail holds the human-readable detail (at most 512 bytes, one line).
	HeaderDetail = "Killswitch-Detail"
	// HeaderSubject holds the subject the message was received on.
	HeaderSubject = "Killswitch-Subject"
	// HeaderStream holds the JetStream stream the message was read from.
	HeaderStream = "Killswitch-Stream"
	// HeaderStreamSeq holds the message's stream sequence.
	HeaderStreamSeq = "Killswitch-Stream-Seq"
	// HeaderDelivered holds how many times the message had been delivered.
	HeaderDelivered = "Killswitch-Delivered"
	// HeaderOriginalMsgID holds the original Nats-Msg-Id, if any.
	HeaderOriginalMsgID = "Killswitch-Original-Msg-Id"
)

// Defaults of DeadLetterOptions.
const (
	// DefaultDeadLetterSubject is where rejected telemetry goes.
	DefaultDeadLetterSubject = "killswitch.deadletter.telemetry"
	// DefaultDeadLetterStream is the JetStream stream that keeps dead letters.
	DefaultDeadLetterStream = "KILLSWITCH_DEADLETTER"
	// DefaultDeadLetterMaxAge is how long dead letters are kept.
	DefaultDeadLetterMaxAge = 30 * 24 * time.Hour
	// DefaultDeadLetterTimeout bounds the wait for the dead-letter stream's acknowledgement.
	DefaultDeadLetterTimeout = 5 * time.Second
)

// DeadLetterOptions says where messages that do not decode or validate go.
// Zero values mean the documented default.
type DeadLetterOptions struct {
	// Subject is the dead-letter subject. Default "killswitch.deadletter.telemetry".
	Subject string
	// Stream is the JetStream stream that stores dead letters; it is created (or updated)
	// at start with Subject as its only subject, file storage and MaxAge. Publication
	// waits for the stream's acknowledgement, so a dead letter is durable before the
	// original is terminated. Default "KILLSWITCH_DEADLETTER".
	Stream string
	// MaxAge is how long the stream keeps dead letters. Default 30 days.
	MaxAge time.Duration
	// Replicas is the stream's replica count. Default 1.
	Replicas int
	// CoreOnly publishes dead letters with core NATS and creates no stream: whoever
	// subscribes to Subject gets them, and if nobody does they are lost. Only for
	// servers without JetStream.
	CoreOnly bool
	// Timeout bounds the wait for the stream's acknowledgement. Default 5s.
	Timeout time.Duration
}

func (o DeadLetterOptions) withDefaults() DeadLetterOptions {
	if o.Subject == "" {
		o.Subject = DefaultDeadLetterSubject
	}
	if o.Stream == "" {
		o.Stream = DefaultDeadLetterStream
	}
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultDeadLetterMaxAge
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultDeadLetterTimeout
	}
	return o
}

// deadLetter is one message to dead-letter.
type deadLetter struct {
	data      []byte
	header    nats.Header
	subject   string
	reason    telemetry.Reason
	detail    string
	stream    string
	seq       uint64
	delivered uint64
}

// deadLetterer publishes dead letters.
type deadLetterer struct {
	opts DeadLetterOptions
	nc   *nats.Conn
	js   jetstream.JetStream
}

// newDeadLetterer prepares dead-lettering on nc, creating the dead-letter stream unless
// CoreOnly is set. It refuses a dead-letter subject that the telemetry filters would
// consume again (a loop).
func newDeadLetterer(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, o DeadLetterOptions, filters []string) (*deadLetterer, error) {
	o = o.withDefaults()
	if !validSubject(o.Subject, false) {
		return nil, fmt.Errorf("telemetry: dead-letter subject %q is not a valid subject without wildcards", o.Subject)
	}
	for _, f := range filters {
		if subjectMatches(f, o.Subject) {
			return nil, fmt.Errorf("telemetry: dead-letter subject %q matches the telemetry filter %q: dead letters would be consumed again", o.Subject, f)
		}
	}
	d := &deadLetterer{opts: o, nc: nc, js: js}
	if o.CoreOnly {
		return d, nil
	}
	if d.js == nil {
		var err error
		if d.js, err = jetstream.New(nc); err != nil {
			return nil, fmt.Errorf("telemetry: dead letters: %w", err)
		}
	}
	_, err := d.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        o.Stream,
		Description: "Killswitch telemetry that did not decode or validate, with the reason in headers.",
		Subjects:    []string{o.Subject},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      o.MaxAge,
		Replicas:    o.Replicas,
		Duplicates:  2 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("telemetry: create dead-letter stream %s: %w", o.Stream, err)
	}
	return d, nil
}

// message builds the dead-letter message for l.
func (d *deadLetterer) message(l *deadLetter) *nats.Msg {
	h := nats.Header{}
	for k, v := range l.header {
		if strings.HasPrefix(k, "Nats-") {
			if k == jetstream.MsgIDHeader && len(v) > 0 {
				h.Set(HeaderOriginalMsgID, v[0])
			}
			continue
		}
		h[k] = v
	}
	h.Set(HeaderReason, string(l.reason))
	h.Set(HeaderDetail, headerValue(l.detail, 512))
	h.Set(HeaderSubject, l.subject)
	if l.stream != "" {
		h.Set(HeaderStream, l.stream)
		h.Set(HeaderStreamSeq, strconv.FormatUint(l.seq, 10))
		h.Set(HeaderDelivered, strconv.FormatUint(l.delivered, 10))
		// A redelivered original dead-letters to the same stream entry.
		h.Set(jetstream.MsgIDHeader, "dlq:"+l.stream+":"+strconv.FormatUint(l.seq, 10)+":"+string(l.reason))
	}
	return &nats.Msg{Subject: d.opts.Subject, Data: l.data, Header: h}
}

// send publishes the dead letters and returns one error per letter (nil when it is
// stored).
func (d *deadLetterer) send(ctx context.Context, letters []deadLetter) []error {
	errs := make([]error, len(letters))
	if d.opts.CoreOnly {
		for i := range letters {
			errs[i] = d.nc.PublishMsg(d.message(&letters[i]))
		}
		fctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
		defer cancel()
		if err := d.nc.FlushWithContext(fctx); err != nil {
			for i := range errs {
				if errs[i] == nil {
					errs[i] = err
				}
			}
		}
		return errs
	}
	futures := make([]jetstream.PubAckFuture, len(letters))
	for i := range letters {
		futures[i], errs[i] = d.js.PublishMsgAsync(d.message(&letters[i]))
	}
	timer := time.NewTimer(d.opts.Timeout)
	defer timer.Stop()
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case <-f.Ok():
		case err := <-f.Err():
			errs[i] = err
		case <-timer.C:
			errs[i] = fmt.Errorf("no acknowledgement from the dead-letter stream within %s", d.opts.Timeout)
			timer.Reset(0)
		case <-ctx.Done():
			errs[i] = ctx.Err()
		}
	}
	return errs
}

// headerValue makes s safe as a one-line header value of at most max bytes.
func headerValue(s string, max int) string {
	if len(s) > max {
		s = s[:max]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
}

// validSubject reports whether s is a valid NATS subject (wildcards allowed if wild).
func validSubject(s string, wild bool) bool {
	if s == "" {
		return false
	}
	toks := strings.Split(s, ".")
	for i, t := range toks {
		if t == "" || strings.ContainsAny(t, " \t\r\n") {
			return false
		}
		if strings.ContainsAny(t, "*>") {
			if !wild || (t != "*" && t != ">") || (t == ">" && i != len(toks)-1) {
				return false
			}
		}
	}
	return true
}

// subjectMatches reports whether the literal subject s matches the filter f.
func subjectMatches(f, s string) bool {
	ft, st := strings.Split(f, "."), strings.Split(s, ".")
	for i, t := range ft {
		if t == ">" {
			return len(st) > i
		}
		if i >= len(st) || (t != "*" && t != st[i]) {
			return false
		}
	}
	return len(ft) == len(st)
}

// patternCovers reports whether every subject matching pattern s also matches the
// filter f (both may hold wildcards).
func patternCovers(f, s string) bool {
	ft, st := strings.Split(f, "."), strings.Split(s, ".")
	for i, t := range ft {
		if t == ">" {
			return len(st) > i
		}
		if i >= len(st) || st[i] == ">" {
			return false
		}
		if t != "*" && (st[i] == "*" || t != st[i]) {
			return false
		}
	}
	return len(ft) == len(st)
}
