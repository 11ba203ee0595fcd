package killswitch

import (
	"context"
	"errors"
)

// The error model every stage shares. An error says whether trying again can help:
//
//   - retryable (the default: an error that says nothing is retryable) — a dependency is
//     unavailable, slow, rate-limiting, or another writer won a race. Every retry in
//     Killswitch is bounded (attempts, deliveries, deadlines), so "retryable" never means
//     "forever";
//   - permanent (only when marked with Permanent) — retrying cannot cure it: malformed
//     input, a denial, an inventory mistake. The work is terminated, recorded and paged.
//
// Each marked error also carries a Reason, a short stable word for metrics labels, ledger
// records and logs.
var (
	// ErrRetryable is wrapped by errors marked with Retryable.
	ErrRetryable = errors.New("retryable")
	// ErrPermanent is wrapped by errors marked with Permanent.
	ErrPermanent = errors.New("permanent")
)

// Reason says why something failed, in a word.
type Reason string

// The failure reasons.
const (
	// ReasonUnknown: the error carries no reason.
	ReasonUnknown Reason = "unknown"
	// ReasonUnavailable: a dependency (NATS, Vault, a webhook) could not be reached or
	// answered with a server error.
	ReasonUnavailable Reason = "unavailable"
	// ReasonTimeout: a deadline passed.
	ReasonTimeout Reason = "timeout"
	// ReasonCanceled: the work was cancelled (shutting down).
	ReasonCanceled Reason = "canceled"
	// ReasonRateLimited: the dependency asked us to slow down (429).
	ReasonRateLimited Reason = "rate_limited"
	// ReasonConflict: another writer changed the state first (a compare-and-set lost).
	ReasonConflict Reason = "conflict"
	// ReasonInvalid: the input is malformed or fails validation.
	ReasonInvalid Reason = "invalid"
	// ReasonDenied: the dependency refused us (403, a permissions violation).
	ReasonDenied Reason = "denied"
	// ReasonMisconfigured: the inventory or the configuration does not allow it (a
	// credential of the wrong kind, no executor for an action type).
	ReasonMisconfigured Reason = "misconfigured"
	// ReasonInternal: a bug (a value that does not encode, a broken invariant).
	ReasonInternal Reason = "internal"
)

// Error is an error marked retryable or permanent, with a reason.
type Error struct {
	// Reason says why, in a word.
	Reason Reason
	// Permanent says that retrying cannot help.
	Permanent bool
	// Err is the underlying error.
	Err error
}

// Error returns the underlying error's message.
func (e *Error) Error() string { return e.Err.Error() }

// Unwrap returns the class sentinel (ErrPermanent or ErrRetryable) and the underlying
// error.
func (e *Error) Unwrap() []error {
	if e.Permanent {
		return []error{ErrPermanent, e.Err}
	}
	return []error{ErrRetryable, e.Err}
}

// Retryable marks err as one a retry may cure; nil stays nil.
func Retryable(reason Reason, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Reason: reason, Err: err}
}

// Permanent marks err as one no retry can cure; nil stays nil.
func Permanent(reason Reason, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Reason: reason, Permanent: true, Err: err}
}

// IsPermanent reports whether err was marked permanent. It is the one test of the error
// model: an error that was not marked is retryable.
func IsPermanent(err error) bool { return errors.Is(err, ErrPermanent) }

// IsRetryable reports whether err is a failure that a retry may cure: not nil and not
// marked permanent.
func IsRetryable(err error) bool { return err != nil && !IsPermanent(err) }

// ReasonOf returns the reason err carries: the outermost marked reason, else timeout or
// canceled for context errors, else ReasonUnknown (and "" for nil).
func ReasonOf(err error) Reason {
	if err == nil {
		return ""
	}
	var e *Error
	switch {
	case errors.As(err, &e) && e.Reason != "":
		return e.Reason
	case errors.Is(err, context.DeadlineExceeded):
		return ReasonTimeout
	case errors.Is(err, context.Canceled):
		return ReasonCanceled
	}
	return ReasonUnknown
}
