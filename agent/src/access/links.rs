//! Who syncs a database with whom, as its signed rules' links say,
//! resolved for one pair of devices. IO-free.
//!
//! A device's own peer list (`db.peers`) is not consulted here: it
//! overrides these links, and the sync engine applies it first.

use std::collections::BTreeMap;

use blazedb_proto::DeviceId;
use blazedb_proto::api::SyncMode;
use blazedb_proto::rules::AccessRules;

use super::view::{DeviceAttrs, selects};

/// The direction `me` syncs the database governed by `rules` with `peer`,
/// as the rules' links say: `None` when they have no links (every member
/// syncs with every other), `Local` when links exist but none joins the
/// two.
pub fn link_mode(
    rules: Option<&AccessRules>,
    me: &DeviceId,
    peer: &DeviceId,
    devices: &BTreeMap<DeviceId, DeviceAttrs>,
) -> Option<SyncMode> {
    let rules = rules.filter(|r| !r.links.is_empty())?;
    let selects = |s: &_, d: &DeviceId| selects(s, d, devices.get(d));
    Some(
        rules
            .links
            .iter()
            .find_map(|l| l.between(me, peer, selects))
            .unwrap_or(SyncMode::Local),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use blazedb_proto::mesh::MeshId;
    use blazedb_proto::rules::{AccessLevel, LinkRule, Selector};

    fn dev(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    fn rules(links: Vec<LinkRule>) -> AccessRules {
        AccessRules {
            mesh: MeshId([1; 16]),
            db: "metrics".into(),
            version: 1,
            default: AccessLevel::ReadWrite,
            rules: Vec::new(),
            signer: dev(1),
            signed_ms: 0,
            links,
        }
    }

    fn link(devices: Selector, peers: Selector, sync_mode: SyncMode) -> LinkRule {
        LinkRule {
            devices: vec![devices],
            peers: vec![peers],
            sync_mode,
        }
    }

    /// Devices 1 and 2 are phones of team `ios`, 9 is a hub.
    fn members() -> BTreeMap<DeviceId, DeviceAttrs> {
        let phone = |name: &str| DeviceAttrs {
            name: name.into(),
            teams: vec!["ios".into()],
            hub: false,
        };
        BTreeMap::from([
            (dev(1), phone("a")),
            (dev(2), phone("b")),
            (
                dev(9),
                DeviceAttrs {
                    name: "hub".into(),
                    teams: Vec::new(),
                    hub: true,
                },
            ),
        ])
    }

    #[test]
    fn without_links_every_member_syncs_as_its_mode_says() {
        let m = members();
        assert_eq!(link_mode(None, &dev(1), &dev(2), &m), None);
        assert_eq!(link_mode(Some(&rules(vec![])), &dev(1), &dev(2), &m), None);
    }

    #[test]
    fn one_link_makes_a_hub_and_spoke_seen_from_both_ends() {
        let m = members();
        let r = rules(vec![link(
            Selector::Everyone,
            Selector::Hubs,
            SyncMode::Sync,
        )]);
        assert_eq!(
            link_mode(Some(&r), &dev(1), &dev(9), &m),
            Some(SyncMode::Sync)
        );
        assert_eq!(
            link_mode(Some(&r), &dev(9), &dev(2), &m),
            Some(SyncMode::Sync)
        );
        assert_eq!(
            link_mode(Some(&r), &dev(1), &dev(2), &m),
            Some(SyncMode::Local)
        );
    }

    #[test]
    fn the_far_end_sees_a_one_way_link_the_other_way_round() {
        let m = members();
        let broadcast = rules(vec![link(
            Selector::Team("ios".into()),
            Selector::Hubs,
            SyncMode::Pull,
        )]);
        assert_eq!(
            link_mode(Some(&broadcast), &dev(2), &dev(9), &m),
            Some(SyncMode::Pull)
        );
        assert_eq!(
            link_mode(Some(&broadcast), &dev(9), &dev(2), &m),
            Some(SyncMode::Push)
        );
    }

    #[test]
    fn the_first_link_that_joins_two_devices_decides() {
        let m = members();
        let r = rules(vec![
            link(Selector::Device(dev(1)), Selector::Hubs, SyncMode::Local),
            link(Selector::Everyone, Selector::Everyone, SyncMode::Push),
        ]);
        assert_eq!(
            link_mode(Some(&r), &dev(1), &dev(9), &m),
            Some(SyncMode::Local)
        );
        assert_eq!(
            link_mode(Some(&r), &dev(9), &dev(1), &m),
            Some(SyncMode::Local)
        );
        // Both ends match `devices` of the catch-all: each pushes, so
        // neither takes from the other.
        assert_eq!(
            link_mode(Some(&r), &dev(2), &dev(9), &m),
            Some(SyncMode::Push)
        );
        assert_eq!(
            link_mode(Some(&r), &dev(9), &dev(2), &m),
            Some(SyncMode::Push)
        );
    }
}
