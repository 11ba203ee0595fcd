// Package nats has the telemetry sources and tools that run on NATS: JetStreamSource (a
// JetStream durable pull consumer, at least once, with batch or per-message
// acknowledgement), CoreSource (a core NATS subscription, at most once), StreamRange (a
// range of a stream read once, for tabletop replay and the catch-up after a restart),
// the dead-letter stream that receives what does not decode or validate, and Publisher,
// which writes events in the native wire format for tests, the demo and generators.
//
// The sources implement telemetry.Source: they decode with a telemetry.Decoder, hand
// batches of telemetry.Event to a telemetry.Handler under its acknowledgement contract,
// and count into telemetry.Counters.
package nats
