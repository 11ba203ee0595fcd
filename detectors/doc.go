// Package detectors is the event-time detection stage: it keeps bounded per-key state
// for every (vendor, credential) and every vendor as a whole, runs seven detector kinds
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
// order; a later event is never dropped: it is counted in the current bucket, at its
// vendor's latest event time, and in Counters.Late (so an event dated long ago never
// moves a credential's last use, or anything else, into the past). Buckets without
// events are learned as zero volume (at most a day's worth after an idle period, and
// none from before a jump the vendor did not observe, see below).
//
// # Event time is untrusted
//
// Telemetry times are bounded at the door (package telemetry); the engine defends
// itself as well, so that nothing one event says can move a key's clock or skip its
// learning period:
//
//   - Observed history, not timestamp distance. Each vendor (and sensor) has an
//     observed history: the sum of the gaps between its consecutive events in event-time
//     order, each gap counted for at most MaxObservedGap (default 1h). The learning
//     period (new destinations, silence) ends when the vendor's observed history reaches
//     LearningPeriod, and a credential's idleness (dormancy) is the vendor's observed
//     history since the credential last moved data. For a vendor that never goes silent
//     for longer than MaxObservedGap this is exactly event time; an event dated decades
//     before the next adds at most MaxObservedGap. So a credential is dormant when it
//     moved nothing while its vendor kept sending; a vendor that is itself silent for
//     days observed nothing meanwhile. The volume models count learned buckets, and the
//     idle buckets learned after a jump the vendor did not observe start at most
//     MaxObservedGap before it.
//   - The clock guard. An event more than MaxClockJump (default 10m) ahead of its
//     vendor's latest event must be within MaxClockJump of the engine's reference: the
//     later of the last Tick's time (the service's clock; replay ticks with event time)
//     and the engine's latest event time over all vendors. A vendor catching up with the
//     fleet after a day of silence is accepted; one event far ahead of the fleet and the
//     clock (dated 2099) is refused: it moves no watermark, opens no cap window, raises
//     no detection, and is counted in Counters.ClockRejected. An engine never ticked
//     judges against its latest event time with the bound of one observed gap (so a
//     lone hourly vendor moves), and accepts a jump confirmed by three consecutive
//     refused events that agree with each other (a whole shard resuming after a long
//     silence). Times before 1970 or from 2200 on are invalid (Counters.Rejected).
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
//     hour-of-day offsets and a day type (weekday or weekend) and envelopes of four
//     features; the bucket must also exceed twice the most the key ever sent at that
//     hour of the day (so a nightly batch is learned) and MinBytes. At or above the far line — 3× the most the
//     key has sent in that hour of the day or a neighbouring one (on a weekend, net of
//     the learned weekend level), never above 8× the most seen at the hour — it fires
//     whatever the model says (see Engine.farLine; the 8× bound holds around a fleet-wide
//     rise). One event of at least MinBytes at or above 3× the largest single event the
//     key has sent in that hour of the day or a neighbouring one fires too, whatever
//     the bucket holds so far (a smash-and-grab's first event; see Engine.eventLine:
//     not while the model warms up, nor around a fleet-wide rise). Such a spike, when
//     below the key's top severity, is raised once more, at the top severity, when the
//     bucket crosses its own line. The episode ends after 70 buckets that do not fire.
//   - sustained: the model's CUSUM of robust excess over the seasonal baseline crosses
//     its line (low and slow) and the excess since it began totals at least MinBytes.
//     Same episode rule.
//   - new_destination: a destination outside the vendor's allow-list (first byte), or,
//     without an allow-list, one never seen for the vendor after its learning period
//     (the vendor's observed history).
//     Once per destination while it is remembered (a bounded per-vendor set).
//   - dormant_credential: a credential that moved no data for DormantAfter of its
//     vendor's observed history (or is marked ExpectedIdle) moves data. The episode is one usage session; it ends after
//     SilenceAfter without data.
//   - silence: a regular vendor, or sensor, sends nothing for SilenceAfter (and for more
//     than twice its longest recent gap at that hour). An alert, severity medium, never
//     grounds for revocation. The episode ends with the next event.
//   - use_after_revocation: with WithRevocations, a credential whose revocation was
//     verified (any credential of a vendor cut off as a whole) moves data — one byte is
//     enough — dated at or after the revocation. Always critical; at most once per
//     credential and revocation per bucket, the bytes and events since the revocation
//     carried as evidence (Detection.Revoked; see revoked.go).
//
// # Fleet-wide shifts
//
// When most vendors move together in the same interval (a Monday, an outage ending, a
// network change) that is the environment, not one exfiltration per vendor. On every
// Tick the vendors with a mature baseline are measured against their models; when most
// of them moved the same way, one FleetShift is recorded (Engine.FleetShifts,
// Sharded.FleetShifts, Fleet) and, while a rise lasts, spike and sustained judge every
// key net of the common factor: the median vendor's move, never lifting a key's lines
// above FleetHeadroom times the most it has ever sent in one bucket. Caps, new
// destinations, dormant and expected-idle credentials are never discounted. A Sharded
// engine gathers every shard's moves at Tick and hands one decision to all shards, so
// the same recording ticked at the same times gives the same shifts and detections
// with any number of shards; nothing of it runs per event (see fleet.go).
//
// Spike, sustained and new-destination detectors learn for LearningPeriod (default 24h)
// of observed history before they may fire (spike and sustained: that many learned
// buckets). Detection IDs are deterministic (DetectionID, DetectionIDFor):
// the same events always give the same detections with the same IDs.
//
// # State
//
// Per-key state is a fixed-size, pointer-free struct of 296 bytes kept in a chunked
// slab; keys are found through an open-addressing table of 32-bit slots and credential
// names live in a byte arena, so a key costs about 325 bytes in all (see
// BenchmarkEngineKeys100k). Destination memory is a bounded set of 30-bit fingerprints
// per vendor (at most 16 KiB); sensors are bounded per engine. Snapshot and Restore
// write and read the whole state in a versioned, checksummed binary format (see
// snapshot.go; version 5 carries the single-event envelope, version 4 the fleet-wide
// shift, version 3 the sustained guard and the day type, version 2 the observed
// histories and the clock guard; versions 1 to 4 are still read), so a restart keeps
// every baseline.
package detectors
