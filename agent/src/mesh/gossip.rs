//! Membership and link news on their way to every session, in batches.
//!
//! A hub that admits a hundred devices at once would otherwise send each
//! new record, and its new list of links, to every session once per
//! change: N² messages, each encoded N times. Here changes gather for
//! [`BATCH`] and then go out as one message per session, encoded once and
//! shared by every session that gets the same bytes.
//!
//! Invariants:
//! - A record goes back to none of the peers it came from; everything
//!   else reaches every session in the batch after it was taken.
//! - Link news per device keeps only its latest state, so a device that
//!   came and went within one batch is said to be down.
//! - The pending news is a leaf lock: nothing else is locked while it is
//!   held.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use blazedb_proto::DeviceId;
use blazedb_proto::mesh::{PeerMessage, Roster as WireRoster, to_frame};

use super::session::Control;
use super::{Shared, lock};

/// How long news gathers before it goes out.
pub(crate) const BATCH: Duration = Duration::from_millis(100);

/// News not yet sent.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Membership taken, each with the peer it came from (`None`: made
    /// or first heard of here).
    roster: Vec<(Option<DeviceId>, WireRoster)>,
    /// This hub's sessions that came up (`true`) or ended (`false`).
    links: BTreeMap<DeviceId, bool>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.roster.is_empty() && self.links.is_empty()
    }
}

/// Everything in `parts` not from `skip`, as one roster.
fn union<'a>(
    parts: impl Iterator<Item = &'a (Option<DeviceId>, WireRoster)>,
    skip: Option<DeviceId>,
) -> WireRoster {
    let mut out = WireRoster::default();
    for (from, r) in parts {
        if skip.is_some() && *from == skip {
            continue;
        }
        out.records.extend(r.records.iter().cloned());
        out.addrs.extend(r.addrs.iter().cloned());
        out.rules.extend(r.rules.iter().cloned());
        out.grants.extend(r.grants.iter().cloned());
        if r.rotation.is_some() {
            out.rotation.clone_from(&r.rotation);
        }
    }
    out
}

fn is_quiet(r: &WireRoster) -> bool {
    r.records.is_empty()
        && r.addrs.is_empty()
        && r.rotation.is_none()
        && r.rules.is_empty()
        && r.grants.is_empty()
}

fn frame(msg: &PeerMessage) -> Option<Arc<Vec<u8>>> {
    match to_frame(msg) {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            tracing::error!("cannot encode membership news: {e}");
            None
        }
    }
}

impl Shared {
    /// Queues membership news taken from `from` (`None`: this device).
    pub(crate) fn gossip_roster(&self, from: Option<DeviceId>, roster: WireRoster) {
        if is_quiet(&roster) {
            return;
        }
        lock(&self.gossip).roster.push((from, roster));
        self.gossip_wake.notify_one();
    }

    /// Queues that this hub's session with `peer` came up or ended.
    pub(crate) fn gossip_link(&self, peer: DeviceId, up: bool) {
        lock(&self.gossip).links.insert(peer, up);
        self.gossip_wake.notify_one();
    }

    /// Sends everything queued to every session.
    pub(crate) fn flush_gossip(&self) {
        let pending = std::mem::take(&mut *lock(&self.gossip));
        if pending.is_empty() {
            return;
        }
        let sources: BTreeSet<DeviceId> = pending.roster.iter().filter_map(|(f, _)| *f).collect();
        let all = union(pending.roster.iter(), None);
        let members = (!is_quiet(&all))
            .then(|| frame(&PeerMessage::Members { roster: all }))
            .flatten();
        let links = (!pending.links.is_empty())
            .then(|| {
                let (up, down): (Vec<_>, Vec<_>) = pending.links.iter().partition(|(_, up)| **up);
                frame(&PeerMessage::LinksChanged {
                    up: up.into_iter().map(|(d, _)| *d).collect(),
                    down: down.into_iter().map(|(d, _)| *d).collect(),
                })
            })
            .flatten();
        let sessions = lock(&self.sessions);
        for (peer, sess) in sessions.iter() {
            let roster = if sources.contains(peer) {
                let own = union(pending.roster.iter(), Some(*peer));
                (!is_quiet(&own))
                    .then(|| frame(&PeerMessage::Members { roster: own }))
                    .flatten()
            } else {
                members.clone()
            };
            for f in roster.into_iter().chain(links.clone()) {
                let _ = sess.ctl.send(Control::Frame(f));
            }
        }
    }
}

/// Sends queued news every [`BATCH`] while there is any; at shutdown,
/// what is left goes with the sessions.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = shared.gossip_wake.notified() => {}
            _ = shutdown.changed() => return,
        }
        tokio::time::sleep(BATCH).await;
        shared.flush_gossip();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blazedb_proto::mesh::Signed;

    fn signed(n: u8) -> Signed {
        Signed {
            body: vec![n],
            sig: vec![n],
        }
    }

    #[test]
    fn news_goes_back_to_none_of_its_sources() {
        let a = DeviceId([1; 32]);
        let parts = [
            (
                Some(a),
                WireRoster {
                    records: vec![signed(1)],
                    ..WireRoster::default()
                },
            ),
            (
                None,
                WireRoster {
                    records: vec![signed(2)],
                    ..WireRoster::default()
                },
            ),
        ];
        assert_eq!(union(parts.iter(), None).records.len(), 2);
        assert_eq!(union(parts.iter(), Some(a)).records, vec![signed(2)]);
        assert_eq!(
            union(parts.iter(), Some(DeviceId([9; 32]))).records.len(),
            2
        );
    }
}
