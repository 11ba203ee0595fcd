// Package detectors is the event-time detection stage: it keeps bounded per-key state
// for every (vendor, credential) and every vendor as a whole, runs six detector kinds
// on every telemetry.Event, and emits Detections with their evidence.
//
// # Engines
//
// An Engine is one shard: single-goroutine, lock-free, with no allocation per event in
// steady state. Process(ev, emit) is the hot path; Tick(now, emit) runs the
// processing-time checks (silence) with a time from the injected clock. Sharded runs N
// Engines on N goroutines and routes each event by a fixed hash of its vendor
// (ShardOf), so a vendor's vendor-level and credential-level state live on one shard.
// Sharded keeps the acknowledgement contract: the callback passed with an event or a
// batch runs only after the detections of that event were handed to the Sink, with the
// Sink's error if it refused one (the source then naks; nothing is lost).
//
// # Time
//
// Detection logic runs on event time. Volumes are counted in buckets of Interval
// (default 5m) aligned to the epoch. Each vendor has a watermark, the largest event
// time seen for it minus AllowedLateness (default 1m, at most one Interval): a bucket
// closes (its volume is learned) when the watermark passes its end. An event whose
// bucket has not closed is counted in its own bucket, even when it arrives out of
// order; a later event is never dropped: it is counted in the current bucket and in
// Counters.Late. Buckets without events are learned as zero volume (at most a day's
// worth after an idle period).
//
// # Detector kinds and episodes
//
// Every detector fires on the event that crosses its line (running sums are checked on
// every event), gives a score in [0,1] (≥ 0.5 fires) and fires once per episode:
//
//   - cap: a contract limit (bytes and/or records per Per, tumbling windows aligned to
//     the epoch) for a vendor or one credential. Once per window.
//   - spike: a bucket's volume far above a learned seasonal baseline. The volume model
//     (Model, shared with cmd/nab) scores the running sum against robust baselines with
//     hour-of-day and day-of-week offsets and envelopes of four features; the bucket
//     must also exceed twice the most the key ever sent at that hour of the day (so a
//     nightly batch is learned) and MinBytes. The episode ends after 70 buckets that do
//     not fire.
//   - sustained: the model's CUSUM of robust excess over the seasonal baseline crosses
//     its line (low and slow) and the excess since it began totals at least MinBytes.
//     Same episode rule.
//   - new_destination: a destination outside the vendor's allow-list (first byte), or,
//     without an allow-list, one never seen for the vendor after its learning period.
//     Once per destination while it is remembered (a bounded per-vendor set).
//   - dormant_credential: a credential that moved no data for DormantAfter (or is
//     marked ExpectedIdle) moves data. The episode is one usage session; it ends after
//     SilenceAfter without data.
//   - silence: a regular vendor, or sensor, sends nothing for SilenceAfter (and for more
//     than twice its longest recent gap at that hour). An alert, severity medium, never
//     grounds for revocation. The episode ends with the next event.
//
// Spike, sustained and new-destination detectors learn for LearningPeriod (default 24h)
// before they may fire. Detection IDs are deterministic (DetectionID, DetectionIDFor):
// the same events always give the same detections with the same IDs.
//
// # State
//
// Per-key state is a fixed-size, pointer-free struct of 224 bytes kept in a chunked
// slab; keys are found through an open-addressing table of 32-bit slots and credential
// names live in a byte arena, so a key costs about 250 bytes in all (see
// BenchmarkEngineKeys100k). Destination memory is a bounded set of 30-bit fingerprints
// per vendor (at most 16 KiB); sensors are bounded per engine. Snapshot and Restore
// write and read the whole state in a versioned, checksummed binary format (see
// snapshot.go), so a restart keeps every baseline.
package detectors
