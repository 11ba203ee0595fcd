// Package telemetry defines the egress telemetry Event, its wire decoders (the native JSON
// contract, AWS VPC Flow Logs v2, OCSF Network Activity, Zeek conn.log JSON), the
// contract of the sources that feed the pipeline, their Counters, and the NDJSON file
// source (plain or gzip). The NATS sources (a JetStream durable pull consumer, a core
// NATS subscription, a stream range) and the dead-letter stream live in
// telemetry/nats.
//
// Decoders implement Decoder and turn one message into an Event, or fail with an *Error
// carrying a machine-readable Reason: ErrInvalid for messages to dead-letter,
// ErrSkipped for records that carry no event. Sources implement Source and deliver
// batches of events to a Handler under an explicit acknowledgement contract: a message
// is acknowledged only after the handler returned for its event (see Handler).
//
// Every message that does not decode or validate is counted with its reason and, on
// NATS, sent to a dead-letter subject; it never stops the pipeline and is never retried
// forever. AppendJSON writes the native contract, for tests, the demo and generators.
package telemetry

import "time"

// Event is one egress observation: some bytes a vendor (optionally through one of its
// credentials) sent to a destination at a point in event time.
//
// Strings in an Event produced by a Decoder may be shared with other events (they are
// interned); treat them as immutable.
type Event struct {
	// Time is the event time (when the bytes moved), not the time it was received.
	Time time.Time
	// Vendor names the vendor the traffic is attributed to. Required.
	Vendor string
	// Credential names the credential used, as it appears in the vendor inventory.
	// Empty when the sensor cannot attribute traffic to a credential.
	Credential string
	// Dst is the destination address or host name.
	Dst string
	// DstPort is the destination port, 0 when unknown.
	DstPort uint16
	// Bytes is the number of bytes sent; never negative.
	Bytes int64
	// Records is the number of records (rows, objects, messages) sent, 0 when unknown.
	Records int64
	// Src is the source address, if known.
	Src string
	// Protocol is the transport or application protocol, if known.
	Protocol string
	// Sensor names the sensor that observed the traffic.
	Sensor string
	// Seq is the JetStream stream sequence the event was read from, 0 when it came from
	// another source. It lets a consumer checkpoint its state against a stream position.
	Seq uint64
}
