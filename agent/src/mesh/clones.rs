//! Spotting one device id live in two places at once: a cloned disk or a
//! restored backup runs with another device's key. Both copies dial their
//! peers, and each new session pushes out the other copy's, which is still
//! alive and comes straight back from its own address.
//!
//! A device that moves (new Wi-Fi, new address) replaces its session once;
//! only sessions pushed out while alive, from alternating addresses, again
//! and again within a minute, raise the alarm. IO-free: the caller passes
//! the time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use blazedb_proto::DeviceId;

/// How far back replacements count.
const WINDOW_MS: u64 = 60_000;
/// Replacements within the window that make a device suspect.
const THRESHOLD: usize = 3;
/// How long a suspicion stays shown after the last replacement.
const SHOW_MS: u64 = 300_000;

#[derive(Debug, Default)]
struct Track {
    replaced_at: VecDeque<u64>,
    addrs: BTreeSet<SocketAddr>,
    suspected: bool,
}

/// Replacements of live sessions, per device.
#[derive(Debug, Default)]
pub(crate) struct CloneWatch {
    tracks: BTreeMap<DeviceId, Track>,
}

impl CloneWatch {
    /// A live session with `peer` from `old` was replaced by one from `new`.
    /// Returns true when this makes `peer` suspect (again), so the caller
    /// says so once rather than at every replacement.
    pub(crate) fn replaced_live(
        &mut self,
        peer: DeviceId,
        old: SocketAddr,
        new: SocketAddr,
        now_ms: u64,
    ) -> bool {
        if old == new {
            return false;
        }
        let t = self.tracks.entry(peer).or_default();
        while t
            .replaced_at
            .front()
            .is_some_and(|&at| now_ms.saturating_sub(at) > WINDOW_MS)
        {
            t.replaced_at.pop_front();
        }
        if t.replaced_at.is_empty() {
            t.addrs.clear();
            t.suspected = false;
        }
        t.replaced_at.push_back(now_ms);
        t.addrs.extend([old, new]);
        let newly = !t.suspected && t.replaced_at.len() >= THRESHOLD;
        t.suspected |= newly;
        newly
    }

    /// The addresses `peer` was seen at, if it is suspected of running in
    /// two places.
    pub(crate) fn suspect(&self, peer: &DeviceId, now_ms: u64) -> Option<Vec<SocketAddr>> {
        let t = self.tracks.get(peer)?;
        let last = *t.replaced_at.back()?;
        (t.suspected && now_ms.saturating_sub(last) <= SHOW_MS)
            .then(|| t.addrs.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn copies_pushing_each_other_out_are_suspected_and_a_move_is_not() {
        let (dev, other) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let mut w = CloneWatch::default();
        // A device that moves replaces its session once, or comes back on
        // the same address.
        assert!(!w.replaced_live(other, addr(1), addr(2), 0));
        assert!(!w.replaced_live(other, addr(2), addr(2), 1_000));
        assert_eq!(w.suspect(&other, 1_000), None);

        // Two copies alternate.
        assert!(!w.replaced_live(dev, addr(1), addr(2), 0));
        assert!(!w.replaced_live(dev, addr(2), addr(1), 1_000));
        assert!(w.replaced_live(dev, addr(1), addr(2), 2_000), "the alarm");
        assert!(!w.replaced_live(dev, addr(2), addr(1), 3_000), "said once");
        assert_eq!(w.suspect(&dev, 3_000), Some(vec![addr(1), addr(2)]));
        assert_eq!(w.suspect(&dev, 3_000 + SHOW_MS + 1), None, "forgotten");

        // Replacements spread out over more than the window never add up.
        let mut w = CloneWatch::default();
        for i in 0..10 {
            let (a, b) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
            assert!(!w.replaced_live(dev, addr(a), addr(b), i * (WINDOW_MS / 2 + 1)));
        }
        assert_eq!(w.suspect(&dev, 10 * WINDOW_MS), None);
    }
}
