//! Which members a device keeps links with, so that links grow with what a
//! device needs, not with the mesh: every hub, and on a ring of the other
//! active members ordered by id, its `k` nearest neighbours (half on each
//! side). The ring keeps the mesh connected when hubs are away; everything
//! else reaches a device by forwarding. Static peers and devices heard on
//! the LAN are dialled besides. IO-free.

use std::collections::BTreeSet;

use blazedb_proto::DeviceId;

/// How many ring neighbours a device links with unless told otherwise.
pub const DEFAULT_MEMBER_LINKS: usize = 8;

/// The members `me` dials: `hubs`, and its `k` ring neighbours among
/// `devices` (the active members that are not hubs, `me` among them unless
/// it is a hub). A hub dials only other hubs: devices come to it.
pub fn wanted(
    me: &DeviceId,
    hubs: &BTreeSet<DeviceId>,
    devices: &BTreeSet<DeviceId>,
    k: usize,
) -> BTreeSet<DeviceId> {
    let mut out: BTreeSet<DeviceId> = hubs.iter().filter(|h| *h != me).copied().collect();
    if hubs.contains(me) {
        return out;
    }
    let ring: Vec<DeviceId> = devices.iter().copied().collect();
    let Some(pos) = ring.iter().position(|d| d == me) else {
        return out;
    };
    let n = ring.len();
    let each_side = k.div_ceil(2).min((n - 1) / 2 + 1);
    for step in 1..=each_side {
        out.insert(ring[(pos + step) % n]);
        out.insert(ring[(pos + n - step % n) % n]);
    }
    out.remove(me);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(n: u16) -> DeviceId {
        let mut b = [0u8; 32];
        b[..2].copy_from_slice(&n.to_be_bytes());
        DeviceId(b)
    }

    fn devices(n: u16) -> BTreeSet<DeviceId> {
        (0..n).map(dev).collect()
    }

    #[test]
    fn small_meshes_stay_all_to_all() {
        let all = devices(5);
        for d in &all {
            let w = wanted(d, &BTreeSet::new(), &all, 8);
            assert_eq!(w.len(), 4, "{d:?} links with {w:?}");
        }
    }

    #[test]
    fn links_are_bounded_symmetric_and_keep_the_mesh_connected() {
        for n in [2u16, 3, 9, 10, 60, 1000] {
            let all = devices(n);
            let hubs = BTreeSet::from([dev(5000)]);
            let links: Vec<(DeviceId, BTreeSet<DeviceId>)> = all
                .iter()
                .map(|d| (*d, wanted(d, &hubs, &all, 8)))
                .collect();
            for (d, w) in &links {
                assert!(w.contains(&dev(5000)), "{d:?} does not dial the hub");
                assert!(w.len() <= 9, "{d:?} dials {} members", w.len());
                for other in w.iter().filter(|o| **o != dev(5000)) {
                    let back = &links.iter().find(|(x, _)| x == other).expect("member").1;
                    assert!(back.contains(d), "{d:?} wants {other:?} but not back");
                }
            }
            // Without the hub, the ring alone connects everyone.
            let mut seen = BTreeSet::from([dev(0)]);
            let mut todo = vec![dev(0)];
            while let Some(d) = todo.pop() {
                for o in wanted(&d, &BTreeSet::new(), &all, 8) {
                    if seen.insert(o) {
                        todo.push(o);
                    }
                }
            }
            assert_eq!(seen.len(), usize::from(n), "the ring of {n} fell apart");
        }
    }

    #[test]
    fn a_hub_dials_only_other_hubs() {
        let all = devices(20);
        let hubs = BTreeSet::from([dev(900), dev(901)]);
        assert_eq!(
            wanted(&dev(900), &hubs, &all, 8),
            BTreeSet::from([dev(901)])
        );
    }
}
