//! What each link carries, per peer and database: operations and bytes in
//! and out, in all and over the last [`WINDOW_SECS`] seconds. Sessions
//! count each sync message as it crosses the wire (a batch of up to
//! hundreds of operations: one lock per batch, not per operation).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use blazedb_proto::{DeviceId, SyncMessage};

/// Rates are taken over this many seconds.
pub const WINDOW_SECS: usize = 10;

/// Counts of something, in all and per second over the last
/// [`WINDOW_SECS`] seconds.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    total: u64,
    /// Per second, indexed by second modulo the window.
    buckets: [u64; WINDOW_SECS],
    /// The second the newest bucket counts.
    second: u64,
}

impl Meter {
    /// Counts `n` at `ms` (milliseconds on a monotonic clock).
    pub fn add(&mut self, ms: u64, n: u64) {
        self.advance(ms / 1000);
        self.total += n;
        self.buckets[(self.second as usize) % WINDOW_SECS] += n;
    }

    /// Clears the buckets of the seconds between the newest counted and
    /// `second`.
    fn advance(&mut self, second: u64) {
        if second <= self.second {
            return;
        }
        let gap = (second - self.second).min(WINDOW_SECS as u64);
        for s in 1..=gap {
            self.buckets[((self.second + s) as usize) % WINDOW_SECS] = 0;
        }
        self.second = second;
    }

    /// Everything counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The rate per second at `ms`: the last [`WINDOW_SECS`] seconds'
    /// counts over the time they span (the current second as far as it
    /// has gone).
    pub fn rate(&self, ms: u64) -> f64 {
        let now = ms / 1000;
        let mut m = self.clone();
        m.advance(now);
        let sum: u64 = m.buckets.iter().sum();
        let span = (WINDOW_SECS - 1) as f64 + (ms % 1000) as f64 / 1000.0;
        sum as f64 / span.max(1.0)
    }
}

/// One database over one link, both ways.
#[derive(Debug, Clone, Default)]
pub struct Flow {
    /// Operations received.
    pub ops_in: Meter,
    /// Operations sent.
    pub ops_out: Meter,
    /// Bytes received.
    pub bytes_in: Meter,
    /// Bytes sent.
    pub bytes_out: Meter,
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// From the peer.
    In,
    /// To the peer.
    Out,
}

/// Every link's flows.
#[derive(Debug)]
pub struct Traffic {
    /// Off, nothing is counted (to measure what counting costs).
    enabled: bool,
    started: Instant,
    flows: Mutex<HashMap<(DeviceId, String), Flow>>,
}

/// How many operations a message carries.
fn ops_of(msg: &SyncMessage) -> u64 {
    match msg {
        SyncMessage::Ops { ops, .. } => ops.len() as u64,
        SyncMessage::Packed { ops, .. } => ops.len() as u64,
        SyncMessage::Chunks { chunks, .. } => chunks.iter().map(|c| c.ids().len() as u64).sum(),
        SyncMessage::Projected { covers, .. } => covers
            .iter()
            .map(|(_, first, last)| (last + 1).saturating_sub(*first))
            .sum(),
        _ => 0,
    }
}

impl Traffic {
    /// Meters that count if `enabled`.
    pub fn new(enabled: bool) -> Self {
        Traffic {
            enabled,
            started: Instant::now(),
            flows: Mutex::default(),
        }
    }

    /// Milliseconds since the meters started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Counts `msg`, `bytes` long on the wire, going `way` on the link with
    /// `peer`.
    pub fn count(&self, peer: DeviceId, way: Way, msg: &SyncMessage, bytes: usize) {
        if !self.enabled {
            return;
        }
        let ms = self.now_ms();
        let ops = ops_of(msg);
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        let key = (peer, msg.db().to_owned());
        let flow = flows.entry(key).or_default();
        let (o, b) = match way {
            Way::In => (&mut flow.ops_in, &mut flow.bytes_in),
            Way::Out => (&mut flow.ops_out, &mut flow.bytes_out),
        };
        o.add(ms, ops);
        b.add(ms, bytes as u64);
    }

    /// Every flow, by peer and database.
    pub fn flows(&self) -> HashMap<(DeviceId, String), Flow> {
        self.flows.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_reports_the_last_ten_seconds() {
        let mut m = Meter::default();
        for s in 0..20u64 {
            m.add(s * 1000, 100);
        }
        // Seconds 10..=19 each counted 100, and second 19 is complete.
        assert!((m.rate(19_999) - 100.0).abs() < 0.2, "{}", m.rate(19_999));
        assert_eq!(m.total(), 2000);
        // Five quiet seconds later half the window is empty.
        let r = m.rate(24_999);
        assert!((r - 50.0).abs() < 0.2, "{r}");
        assert_eq!(m.rate(60_000), 0.0);
    }

    #[test]
    fn a_message_counts_its_operations_and_bytes_on_its_database() {
        let t = Traffic::new(true);
        let peer = DeviceId([7; 32]);
        let op = |seq| blazedb_proto::Op {
            origin: peer,
            seq,
            hlc: blazedb_proto::Hlc(seq),
            priority: 0,
            incarnation: 0,
            body: vec![seq as u8],
        };
        let mut packed = blazedb_proto::sync::PackedOps::default();
        packed.push(&op(1));
        packed.push(&op(2));
        let sent = SyncMessage::Packed {
            db: "notes".into(),
            epoch: Default::default(),
            ops: packed,
        };
        let received = SyncMessage::Ops {
            db: "notes".into(),
            epoch: Default::default(),
            ops: vec![op(3)],
        };
        let ops = [op(4), op(5), op(6)];
        let ids = ops.iter().map(|o| (o.writer(), o.seq)).collect();
        let chunk = blazedb_proto::sync::LogChunk::new(blazedb_proto::log_chunk::of_ops(&ops), ids);
        let whole = SyncMessage::Chunks {
            db: "notes".into(),
            epoch: Default::default(),
            chunks: vec![chunk],
        };
        t.count(peer, Way::Out, &sent, 120);
        t.count(peer, Way::In, &received, 80);
        t.count(peer, Way::Out, &whole, 60);
        let flows = t.flows();
        let f = &flows[&(peer, "notes".to_owned())];
        assert_eq!((f.bytes_out.total(), f.bytes_in.total()), (180, 80));
        assert_eq!((f.ops_out.total(), f.ops_in.total()), (5, 1));
    }
}
