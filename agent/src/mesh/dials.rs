//! When to dial each target (a member, a device mDNS found, a static
//! address) next: failures back off from one second, doubling, to a
//! minute, with up to a quarter more at random so devices that lost the
//! network together do not all come back at once. Signs that the network
//! is back (a session came up, mDNS heard the device) bring waiting
//! targets forward. IO-free: the caller passes the time and the jitter.

use std::collections::BTreeMap;

use blazedb_proto::DeviceId;

/// The first wait after a failure.
const FIRST_MS: u64 = 1000;
/// The longest wait.
const MAX_MS: u64 = 60_000;

/// How long to wait after `failures` failures in a row, with `jitter` in
/// `0..=u16::MAX` adding up to a quarter.
pub(crate) fn backoff_ms(failures: u32, jitter: u16) -> u64 {
    let base = FIRST_MS.saturating_mul(1 << failures.min(6)).min(MAX_MS);
    base + base / 4 * u64::from(jitter) / u64::from(u16::MAX)
}

#[derive(Debug, Default, Clone)]
struct Target {
    in_flight: bool,
    failures: u32,
    next_try_ms: u64,
    reached: Option<DeviceId>,
}

/// Dial bookkeeping for every target, by key.
#[derive(Debug, Default)]
pub(crate) struct Dials {
    targets: BTreeMap<String, Target>,
}

impl Dials {
    /// Marks `key` as being dialled if it is due and not already in
    /// flight; returns whether to dial it now.
    pub(crate) fn begin(&mut self, key: &str, now_ms: u64) -> bool {
        let t = self.targets.entry(key.to_owned()).or_default();
        if t.in_flight || t.next_try_ms > now_ms {
            return false;
        }
        t.in_flight = true;
        true
    }

    /// Records how a dial of `key` ended: the device it reached (whose
    /// session has now ended), or none.
    pub(crate) fn finished(
        &mut self,
        key: &str,
        reached: Option<DeviceId>,
        now_ms: u64,
        jitter: u16,
    ) {
        let t = self.targets.entry(key.to_owned()).or_default();
        t.in_flight = false;
        if reached.is_some() {
            t.reached = reached;
            t.failures = 0;
        }
        t.next_try_ms = now_ms + backoff_ms(t.failures, jitter);
        if reached.is_none() {
            t.failures = t.failures.saturating_add(1);
        }
    }

    /// Whether a dial of `key` is under way, and when the next one is due
    /// if the last failed.
    pub(crate) fn waiting(&self, key: &str) -> Option<(bool, Option<u64>)> {
        self.targets
            .get(key)
            .map(|t| (t.in_flight, (t.failures > 0).then_some(t.next_try_ms)))
    }

    /// The device `key` led to last time.
    pub(crate) fn reached(&self, key: &str) -> Option<DeviceId> {
        self.targets.get(key).and_then(|t| t.reached)
    }

    /// Lets `key` (or, with `None`, every target) be dialled again within
    /// the first backoff step, whatever it failed before: the network
    /// seems to be back.
    pub(crate) fn retry_soon(&mut self, key: Option<&str>, now_ms: u64) {
        let soon = now_ms + FIRST_MS;
        let bring_forward = |t: &mut Target| {
            t.next_try_ms = t.next_try_ms.min(soon);
            t.failures = 0;
        };
        match key {
            Some(k) => {
                if let Some(t) = self.targets.get_mut(k) {
                    bring_forward(t);
                }
            }
            None => self.targets.values_mut().for_each(bring_forward),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_to_a_minute_and_jitter_adds_at_most_a_quarter() {
        assert_eq!(backoff_ms(0, 0), 1000);
        assert_eq!(backoff_ms(1, 0), 2000);
        assert_eq!(backoff_ms(5, 0), 32_000);
        assert_eq!(backoff_ms(6, 0), 60_000);
        assert_eq!(backoff_ms(40, 0), 60_000);
        assert_eq!(backoff_ms(40, u16::MAX), 75_000);
    }

    #[test]
    fn a_target_that_kept_failing_comes_forward_when_the_network_is_back() {
        let mut d = Dials::default();
        let mut now = 0;
        for _ in 0..10 {
            now = d.targets.get("x").map_or(0, |t| t.next_try_ms);
            assert!(d.begin("x", now));
            assert!(!d.begin("x", now), "in flight once");
            d.finished("x", None, now, 0);
        }
        let waiting = d.targets["x"].next_try_ms;
        assert_eq!(waiting - now, 60_000, "backed off to the cap");
        assert!(!d.begin("x", now + 5_000));

        // A session with another device came up: try again within a second.
        d.retry_soon(None, now + 5_000);
        assert!(!d.begin("x", now + 5_000));
        assert!(d.begin("x", now + 6_000));
        d.finished("x", None, now + 6_000, 0);
        assert_eq!(
            d.targets["x"].next_try_ms,
            now + 7_000,
            "the count started over"
        );
    }

    #[test]
    fn a_reached_target_remembers_its_device_and_is_tried_again_soon() {
        let mut d = Dials::default();
        let dev = DeviceId([4; 32]);
        assert!(d.begin("10.0.0.1:7340", 0));
        d.finished("10.0.0.1:7340", Some(dev), 100, 0);
        assert_eq!(d.reached("10.0.0.1:7340"), Some(dev));
        assert!(!d.begin("10.0.0.1:7340", 1_099));
        assert!(d.begin("10.0.0.1:7340", 1_100));
    }
}
