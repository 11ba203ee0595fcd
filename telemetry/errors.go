package telemetry

import (
	"errors"
	"strconv"

	"github.com/killswitch-dev/killswitch"
)

// ErrInvalid is wrapped by every error that rejects a message: it did not decode or did
// not validate. Such a message goes to the dead-letter subject; retrying cannot help.
var ErrInvalid = errors.New("telemetry: invalid message")

// ErrSkipped is wrapped by the error a decoder returns for a record that is well formed
// but carries no event: a header line, a NODATA flow-log record, traffic that cannot be
// attributed to any vendor. Sources count such records by reason and acknowledge them;
// they are not dead letters.
var ErrSkipped = errors.New("telemetry: record skipped")

// Reason is a short, stable, machine-readable reason why a message was rejected or
// skipped. It is the value of the Killswitch-Reason dead-letter header and the label of
// the dead-letter and skip counters.
type Reason string

// Reasons a message is rejected (the error wraps ErrInvalid).
const (
	// ReasonOversize: the message is larger than the configured maximum.
	ReasonOversize Reason = "oversize"
	// ReasonInvalidJSON: the message is not valid JSON.
	ReasonInvalidJSON Reason = "invalid_json"
	// ReasonNotObject: the message is valid JSON but not an object.
	ReasonNotObject Reason = "not_object"
	// ReasonTrailingData: something other than white space follows the object.
	ReasonTrailingData Reason = "trailing_data"
	// ReasonDuplicateField: a known field appears twice (names compare case-insensitively,
	// as encoding/json matches them).
	ReasonDuplicateField Reason = "duplicate_field"
	// ReasonWrongType: a known string field holds a number, boolean, object or array.
	ReasonWrongType Reason = "wrong_type"
	// ReasonFieldTooLong: a string field is longer than the configured maximum.
	ReasonFieldTooLong Reason = "field_too_long"
	// ReasonMissingTime: the event time is absent or null.
	ReasonMissingTime Reason = "missing_time"
	// ReasonMissingVendor: the vendor is absent, null or empty.
	ReasonMissingVendor Reason = "missing_vendor"
	// ReasonMissingBytes: the byte count is absent or null.
	ReasonMissingBytes Reason = "missing_bytes"
	// ReasonBadTime: the time is not a string holding an RFC 3339 timestamp (or, for
	// formats with numeric times, not a valid epoch value).
	ReasonBadTime Reason = "bad_time"
	// ReasonBadBytes: the byte count is not an integer.
	ReasonBadBytes Reason = "bad_bytes"
	// ReasonNegativeBytes: the byte count is below zero.
	ReasonNegativeBytes Reason = "negative_bytes"
	// ReasonBytesTooLarge: the byte count is above the configured bound.
	ReasonBytesTooLarge Reason = "bytes_too_large"
	// ReasonBadRecords: the record count is not an integer.
	ReasonBadRecords Reason = "bad_records"
	// ReasonNegativeRecords: the record count is below zero.
	ReasonNegativeRecords Reason = "negative_records"
	// ReasonBadPort: the destination port is not an integer in [0, 65535].
	ReasonBadPort Reason = "bad_port"
	// ReasonBadRecord: a flow-log record does not have the expected fields.
	ReasonBadRecord Reason = "bad_record"
	// ReasonBadVersion: a flow-log record has a version other than 2.
	ReasonBadVersion Reason = "bad_version"
	// ReasonBadAddress: an address field is not an IP address.
	ReasonBadAddress Reason = "bad_address"
	// ReasonUnsupportedClass: an OCSF event is not Network Activity (class_uid 4001).
	ReasonUnsupportedClass Reason = "unsupported_class"
	// ReasonTimeInFuture: the event time is further ahead of the reference (the
	// service's clock; in replay the recording's watermark) than the configured skew,
	// or past LatestEventTime.
	ReasonTimeInFuture Reason = "time_in_future"
	// ReasonTimeTooOld: the event time is further behind the reference than the
	// configured maximum age, or before EarliestEventTime.
	ReasonTimeTooOld Reason = "time_too_old"
	// ReasonVendorMismatch: the body's vendor is not the vendor its subject names.
	ReasonVendorMismatch Reason = "vendor_mismatch"
	// ReasonInvalidName: a vendor, credential or sensor name (or an address) is not
	// valid: invalid UTF-8, unprintable, white space, a NATS wildcard, or too long. The
	// error's Field names the field.
	ReasonInvalidName Reason = "invalid_name"
	// ReasonUnknownSensor: sensors are declared and the event's sensor is not one of
	// them (or it names none).
	ReasonUnknownSensor Reason = "unknown_sensor"
	// ReasonHandlerFailed: the handler rejected the event permanently, or it failed on
	// the last delivery attempt the consumer allows. Only used for dead letters.
	ReasonHandlerFailed Reason = "handler_failed"
)

// Reasons a record is skipped (the error wraps ErrSkipped).
const (
	// ReasonHeader: the record is a header line.
	ReasonHeader Reason = "header"
	// ReasonEmpty: the line is empty or white space.
	ReasonEmpty Reason = "empty"
	// ReasonNoData: the record reports no traffic (VPC NODATA or SKIPDATA, a Zeek
	// connection without an originator byte count).
	ReasonNoData Reason = "no_data"
	// ReasonUnattributed: no vendor is named and the destination is in no vendor CIDR.
	ReasonUnattributed Reason = "unattributed"
	// ReasonRejected: the flow was rejected by the network (VPC action REJECT), so no
	// data left.
	ReasonRejected Reason = "rejected"
)

// InvalidReasons returns every reason a message is rejected, in a stable order. Metrics
// layers use it to pre-register labels.
func InvalidReasons() []Reason {
	return []Reason{ReasonOversize, ReasonInvalidJSON, ReasonNotObject, ReasonTrailingData,
		ReasonDuplicateField, ReasonWrongType, ReasonFieldTooLong, ReasonMissingTime,
		ReasonMissingVendor, ReasonMissingBytes, ReasonBadTime, ReasonBadBytes,
		ReasonNegativeBytes, ReasonBytesTooLarge, ReasonBadRecords, ReasonNegativeRecords,
		ReasonBadPort, ReasonBadRecord, ReasonBadVersion, ReasonBadAddress,
		ReasonUnsupportedClass, ReasonHandlerFailed,
		ReasonTimeInFuture, ReasonTimeTooOld, ReasonVendorMismatch, ReasonInvalidName, ReasonUnknownSensor,
	}
}

// SkipReasons returns every reason a record is skipped, in a stable order.
func SkipReasons() []Reason {
	return []Reason{ReasonHeader, ReasonEmpty, ReasonNoData, ReasonUnattributed, ReasonRejected}
}

// IsSkip reports whether r is a skip reason rather than a rejection.
func (r Reason) IsSkip() bool {
	switch r {
	case ReasonHeader, ReasonEmpty, ReasonNoData, ReasonUnattributed, ReasonRejected:
		return true
	}
	return false
}

// Error is the error every decoder returns. It wraps ErrInvalid, or ErrSkipped when
// Reason.IsSkip() is true.
type Error struct {
	// Reason is the machine-readable reason.
	Reason Reason
	// Field names the field concerned (the JSON name or flow-log column), if any.
	Field string
	// Detail explains the problem to a human; it may quote a bounded part of the input.
	Detail string
}

// Error renders the error as "telemetry: invalid message: reason: field: detail".
func (e *Error) Error() string {
	s := "telemetry: invalid message: "
	if e.Reason.IsSkip() {
		s = "telemetry: record skipped: "
	}
	s += string(e.Reason)
	if e.Field != "" {
		s += ": " + e.Field
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// Unwrap returns ErrSkipped for skip reasons, and otherwise ErrInvalid and
// killswitch.ErrPermanent.
func (e *Error) Unwrap() []error {
	if e.Reason.IsSkip() {
		return []error{ErrSkipped}
	}
	return []error{ErrInvalid, killswitch.ErrPermanent} // no retry makes a bad message good
}

// ReasonOf returns the Reason carried by err (or by an error it wraps), and "" when err
// is nil or carries none.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// DetailOf returns the Detail carried by err, or err.Error() when it carries no *Error.
func DetailOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		if e.Field != "" {
			return e.Field + ": " + e.Detail
		}
		return e.Detail
	}
	if err == nil {
		return ""
	}
	return err.Error()
}

func newError(r Reason, field, detail string) *Error {
	return &Error{Reason: r, Field: field, Detail: detail}
}

// quoteInput quotes at most 64 bytes of b for an error detail.
func quoteInput(b []byte) string {
	const max = 64
	if len(b) > max {
		return strconv.Quote(string(b[:max])) + "…"
	}
	return strconv.Quote(string(b))
}

// Static skip errors: skips are frequent (most flow-log records are not vendor traffic)
// and must not allocate. They are never modified.
var (
	errSkipHeader       = &Error{Reason: ReasonHeader}
	errSkipEmpty        = &Error{Reason: ReasonEmpty}
	errSkipNoData       = &Error{Reason: ReasonNoData}
	errSkipUnattributed = &Error{Reason: ReasonUnattributed}
	errSkipRejected     = &Error{Reason: ReasonRejected}
)
