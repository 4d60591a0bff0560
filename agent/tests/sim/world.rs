//! The simulated world: nodes, the network between them, faults, writes,
//! and the checks made along the way and at the end.

use std::collections::{BTreeMap, BTreeSet};

use blazed::mesh::overlay;
use blazed::sync::{Cutoff, Engine, EngineConfig, Event, MemoryStore, SyncStore};

use crate::access::{AccessPlan, Grant};
use crate::replica::Replica;
use blazedb_proto::api::SyncMode;
use blazedb_proto::{DeviceId, Fields, Hlc, Op, OpBody, SyncMessage, Value, VersionVector};

pub(crate) const DB: &str = "bugs";

/// A small, fast, seedable random number generator (SplitMix64).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Which pairs of nodes can ever talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topology {
    /// Everyone with everyone.
    Mesh,
    /// 0 - 1 - 2 - ... in a line: operations must be forwarded.
    Chain,
    /// Node 0 is a hub with server priority; the others talk only to it.
    Star,
    /// The agent's bounded overlay: node 0 is a hub, and each other node
    /// links with its two ring neighbours (`mesh::overlay::wanted` with
    /// `k = 2`), so most pairs reach each other only by forwarding.
    Overlay,
}

/// Everything a seed decides up front.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub(crate) seed: u64,
    pub(crate) nodes: usize,
    pub(crate) topology: Topology,
    pub(crate) drop: f64,
    pub(crate) duplicate: f64,
    pub(crate) max_delay: u64,
    pub(crate) skews: Vec<i64>,
    pub(crate) chaos_ms: u64,
    pub(crate) write_every: u64,
    pub(crate) fault_every: u64,
    /// A node node 0 (an admin) removes from the mesh, and when (ms into
    /// the chaos). It goes on writing, and syncing with nodes that have not
    /// heard of its removal yet.
    pub(crate) removal: Option<(usize, u64)>,
    /// Nodes with restricted access (partial replicas), by access rules
    /// node 0 signs; a second version may replace the first mid-run.
    pub(crate) access: Option<AccessPlan>,
    /// Whether nodes back their disks up and are restored from the
    /// backups (going back in time) along the way.
    pub(crate) restores: bool,
    /// Whether a node's disk is copied along the way and the copy runs
    /// beside it under the same device id (a cloned disk).
    pub(crate) clones: bool,
}

impl Scenario {
    pub(crate) fn from_seed(seed: u64) -> Self {
        let mut r = Rng::new(seed);
        let nodes = if r.chance(0.15) {
            r.range(6, 11)
        } else {
            r.range(3, 6)
        } as usize;
        let topology = match r.range(0, 10) {
            0..=5 => Topology::Mesh,
            6..=7 => Topology::Chain,
            8 => Topology::Star,
            _ => Topology::Overlay,
        };
        let skews = (0..nodes).map(|_| r.range(0, 4001) as i64 - 2000).collect();
        let mut scenario = Scenario {
            seed,
            nodes,
            topology,
            drop: [0.0, 0.02, 0.1, 0.25][r.range(0, 4) as usize],
            duplicate: [0.0, 0.05, 0.2][r.range(0, 3) as usize],
            max_delay: r.range(2, 120),
            skews,
            chaos_ms: r.range(2_000, 8_000),
            write_every: r.range(10, 60),
            fault_every: r.range(300, 2_000),
            removal: None,
            access: None,
            restores: false,
            clones: false,
        };
        if r.chance(0.3) {
            // In a chain only the last node can go without cutting the
            // rest in two.
            let node = match scenario.topology {
                Topology::Chain => nodes - 1,
                _ => r.range(1, nodes as u64) as usize,
            };
            let chaos = scenario.chaos_ms;
            scenario.removal = Some((node, r.range(chaos / 4, chaos * 3 / 4)));
        }
        if r.chance(0.35) {
            // A partial replica passes nothing on: in a chain only the end
            // may be one. Runs with rules remove no node.
            let candidates: Vec<usize> = match scenario.topology {
                Topology::Chain => vec![nodes - 1],
                _ => (1..nodes).collect(),
            };
            scenario.access = Some(AccessPlan::random(&mut r, &candidates, scenario.chaos_ms));
            scenario.removal = None;
        }
        // Drawn last, so every other choice of a seed stays as it was.
        // Restores with partial replicas or a removal do not converge yet
        // (a restored partial replica's own judged writes, a cut-off made
        // by a replica gone back in time): runs keep them apart.
        scenario.restores =
            r.chance(0.4) && scenario.access.is_none() && scenario.removal.is_none();
        // After the restores, for the same reason.
        scenario.clones = scenario.restores && r.chance(0.5);
        scenario
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        match self.topology {
            Topology::Mesh => a != b,
            Topology::Chain => a.abs_diff(b) == 1,
            Topology::Star => a != b && (a == 0 || b == 0),
            Topology::Overlay => {
                let wants = |x: usize, y: usize| {
                    let hubs = BTreeSet::from([device(0)]);
                    let devices = (1..self.nodes).map(device).collect();
                    overlay::wanted(&device(x), &hubs, &devices, 2).contains(&device(y))
                };
                a != b && (wants(a, b) || wants(b, a))
            }
        }
    }
}

struct Node<R: Replica> {
    id: DeviceId,
    /// The node whose disk this one was copied from, for a clone: it runs
    /// under the same device id, and links where that node may.
    twin_of: Option<usize>,
    engine: Option<Engine<R>>,
    /// The store of a crashed node: what it had on disk.
    disk: Option<R::Disk>,
    /// A copy of its disk taken earlier, that a restore goes back to.
    backup: Option<R::Disk>,
    skew: i64,
    last_vector: VersionVector,
    /// The version of the access rules the node holds (0: none).
    rules_version: u64,
    /// When it hears of the second version.
    hears_rules_at: u64,
}

struct InFlight {
    at: u64,
    order: u64,
    from: usize,
    to: usize,
    /// The link's generation when sent: a message outlives no reconnect.
    generation: u64,
    msg: SyncMessage,
}

/// What happened in a run, to show the runs exercise every mechanism.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stats {
    pub(crate) writes: u64,
    pub(crate) crashes: u64,
    pub(crate) restores: u64,
    pub(crate) clones: u64,
    pub(crate) partitions: u64,
    pub(crate) snapshots: u64,
    pub(crate) compacted_ops: u64,
    pub(crate) tombstones: u64,
    pub(crate) epoch_changes: u64,
    pub(crate) removals: u64,
    pub(crate) refused: u64,
    pub(crate) corrections: u64,
    pub(crate) rejected: u64,
    pub(crate) partial_runs: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.writes += o.writes;
        self.crashes += o.crashes;
        self.restores += o.restores;
        self.clones += o.clones;
        self.partitions += o.partitions;
        self.snapshots += o.snapshots;
        self.compacted_ops += o.compacted_ops;
        self.tombstones += o.tombstones;
        self.epoch_changes += o.epoch_changes;
        self.removals += o.removals;
        self.refused += o.refused;
        self.corrections += o.corrections;
        self.rejected += o.rejected;
        self.partial_runs += o.partial_runs;
    }
}

/// The simulated world.
pub(crate) struct World<R: Replica> {
    pub(crate) stats: Stats,
    /// The start of virtual time.
    t0: u64,
    s: Scenario,
    rng: Rng,
    now: u64,
    nodes: Vec<Node<R>>,
    /// Links that are up, with their generation.
    links: BTreeMap<(usize, usize), u64>,
    /// Links cut by a partition, until a time.
    cut: BTreeMap<(usize, usize), u64>,
    /// Crashed nodes and when they come back.
    down: BTreeMap<usize, u64>,
    net: Vec<InFlight>,
    order: u64,
    generation: u64,
    /// Every write any node acknowledged.
    acked: Vec<Op>,
    trace: bool,
    /// Trace every node's record changes, not only partial replicas'.
    trace_records: bool,
    next_write: u64,
    next_fault: u64,
    /// When peers' sessions with a cloned device next switch copies.
    next_flap: u64,
    removal: Option<Removal>,
    /// The operations replicas wrote to undo a removed node's late writes
    /// and writes refused under the access rules.
    corrections: Vec<Op>,
    /// Writes refused under the access rules, by origin and seq, and by
    /// origin and clock reading.
    rejected: BTreeSet<(DeviceId, u64)>,
    rejected_stamps: BTreeSet<(DeviceId, Hlc)>,
}

/// A removal under way: who, when, the cut-off once node 0 made it, and
/// which nodes have heard of it (they refuse the node from then on).
struct Removal {
    node: usize,
    at: u64,
    cutoffs: Option<BTreeMap<DeviceId, Cutoff>>,
    told: BTreeSet<usize>,
}

fn device(i: usize) -> DeviceId {
    let mut b = [0u8; 32];
    b[0] = i as u8 + 1;
    b[31] = 0xA5;
    DeviceId(b)
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl<R: Replica> World<R> {
    pub(crate) fn new(s: Scenario) -> Self {
        let t0 = R::t0();
        let mut rng = Rng::new(s.seed.wrapping_mul(31).wrapping_add(7));
        let nodes = (0..s.nodes)
            .map(|i| {
                let priority = u8::from(s.topology == Topology::Star && i == 0);
                let store = R::create(device(i), rng.next() >> 1, priority);
                Node {
                    id: device(i),
                    twin_of: None,
                    engine: None,
                    disk: Some(store),
                    backup: None,
                    skew: s.skews[i],
                    last_vector: VersionVector::new(),
                    rules_version: u64::from(s.access.is_some()),
                    hears_rules_at: 0,
                }
            })
            .collect();
        let trace = std::env::var_os("BLAZEDB_SIM_TRACE").is_some();
        let trace_records = std::env::var("BLAZEDB_SIM_TRACE").is_ok_and(|v| v == "records");
        let mut w = World {
            stats: Stats::default(),
            t0,
            rng,
            now: t0,
            nodes,
            links: BTreeMap::new(),
            cut: BTreeMap::new(),
            down: BTreeMap::new(),
            net: Vec::new(),
            order: 0,
            generation: 0,
            acked: Vec::new(),
            trace,
            trace_records,
            next_write: t0,
            next_fault: t0 + s.fault_every,
            next_flap: u64::MAX,
            removal: s.removal.map(|(node, at)| Removal {
                node,
                at: t0 + at,
                cutoffs: None,
                told: BTreeSet::new(),
            }),
            corrections: Vec::new(),
            rejected: BTreeSet::new(),
            rejected_stamps: BTreeSet::new(),
            s,
        };
        if let Some((at, _)) = w.s.access.as_ref().and_then(|a| a.second.as_ref()) {
            let at = t0 + at;
            for i in 0..w.nodes.len() {
                w.nodes[i].hears_rules_at = at + w.rng.range(0, 1_000);
            }
        }
        w.stats.partial_runs = u64::from(w.s.access.is_some());
        for i in 0..w.nodes.len() {
            w.boot(i);
        }
        w
    }

    pub(crate) fn scenario(&self) -> &Scenario {
        &self.s
    }

    fn members(&self) -> Vec<DeviceId> {
        self.nodes
            .iter()
            .filter(|n| n.twin_of.is_none())
            .map(|n| n.id)
            .collect()
    }

    /// The node a clone was copied from (itself for any other node): where
    /// it sits in the topology.
    fn base(&self, i: usize) -> usize {
        self.nodes[i].twin_of.unwrap_or(i)
    }

    /// Whether nodes `a` and `b` can ever talk: as their originals can,
    /// and never two copies of one device.
    fn linked(&self, a: usize, b: usize) -> bool {
        let (a, b) = (self.base(a), self.base(b));
        a != b && self.s.linked(a, b)
    }

    /// The copies of node `i`'s device, `i` included.
    fn copies(&self, i: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|j| self.nodes[*j].id == self.nodes[i].id)
            .collect()
    }

    fn config(&self) -> EngineConfig {
        EngineConfig {
            members: self.members(),
            cutoffs: BTreeMap::new(),
            retransmit_ms: 300,
            max_retransmit_ms: 3_000,
            announce_ms: 1_000,
            compact_ms: 1_500,
            retire_after_ms: 20_000,
            // Small enough that snapshots happen in most runs.
            snapshot_after: 200,
            window_ops: 256,
            batch: blazed::sync::ReadLimits {
                max_items: 32,
                max_bytes: 64 * 1024,
            },
            snapshot_piece: blazed::sync::ReadLimits {
                max_items: 8,
                max_bytes: 64 * 1024,
            },
            window_pieces: 4,
            summarize: false,
            ..EngineConfig::default()
        }
    }

    /// Whether node 0 is a hub, which summarizes reports for the others.
    fn has_hub(&self) -> bool {
        matches!(self.s.topology, Topology::Star | Topology::Overlay)
    }

    fn wall(&self, i: usize) -> u64 {
        self.now.saturating_add_signed(self.nodes[i].skew)
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{:>6}] {}", self.now - self.t0, what());
        }
    }

    /// Starts node `i` from its disk and links it to every reachable node.
    fn boot(&mut self, i: usize) {
        let store = self.nodes[i]
            .disk
            .take()
            .expect("a stopped node has a disk");
        let mut cfg = self.config();
        cfg.summarize = self.has_hub() && i == 0;
        let wall = self.wall(i);
        let mut engine = Engine::new(self.nodes[i].id, R::boot(store), cfg, wall);
        if self.has_hub() {
            engine.set_hubs(BTreeSet::from([self.nodes[0].id]));
        }
        if let Some(r) = &self.removal
            && r.told.contains(&i)
            && let Some(c) = &r.cutoffs
        {
            // What a member heard of a removal is on its disk (mesh.json).
            engine.set_cutoffs(c.clone());
        }
        if let Some(rules) = self.rules_of(self.nodes[i].rules_version) {
            // What rules a member holds are on its disk.
            engine.set_rules(rules, wall);
        }
        self.nodes[i].engine = Some(engine);
        self.log(|| format!("node {i} up"));
        for j in 0..self.nodes.len() {
            self.try_link(i, j);
        }
    }

    /// The grants of one version of the rules (1 or 2).
    fn grants(&self, version: u64) -> Option<&BTreeMap<usize, Grant>> {
        let plan = self.s.access.as_ref()?;
        match version {
            1 => Some(&plan.first),
            2 => plan.second.as_ref().map(|(_, g)| g),
            _ => None,
        }
    }

    fn rules_of(&self, version: u64) -> Option<blazedb_proto::rules::AccessRules> {
        let grants = self.grants(version)?;
        Some(AccessPlan::rules(grants, version, device))
    }

    /// The latest version of the rules in the run.
    fn final_version(&self) -> u64 {
        match &self.s.access {
            None => 0,
            Some(a) if a.second.is_some() => 2,
            Some(_) => 1,
        }
    }

    /// Nodes hear of the second version of the rules when it is their time.
    fn spread_rules(&mut self, everyone: bool) {
        let last = self.final_version();
        if last < 2 {
            return;
        }
        for i in 0..self.nodes.len() {
            let due = everyone || self.now >= self.nodes[i].hears_rules_at;
            if self.nodes[i].rules_version == last || !due || self.nodes[i].engine.is_none() {
                continue;
            }
            self.nodes[i].rules_version = last;
            let rules = self.rules_of(last).expect("the final version exists");
            let wall = self.wall(i);
            self.log(|| format!("node {i} takes rules version {last}"));
            if let Some(e) = self.nodes[i].engine.as_mut() {
                e.set_rules(rules, wall);
            }
            self.flush(i);
        }
    }

    /// A partial replica must never hold what every version of its rules
    /// in play forbids.
    fn check_partial(&self, i: usize) -> Result<(), String> {
        let Some(e) = self.nodes[i].engine.as_ref() else {
            return Ok(());
        };
        let versions: Vec<u64> = (1..=self.final_version()).collect();
        let grants: Option<Vec<&Grant>> = versions
            .iter()
            .map(|v| self.grants(*v).and_then(|g| g.get(&i)))
            .collect();
        let Some(grants) = grants.filter(|g| !g.is_empty()) else {
            return Ok(());
        };
        let stamps = e.store().stamps();
        for (key, fields) in e.store().visible() {
            let st = stamps.as_ref().and_then(|s| s.get(&key));
            // While rules change, copies cut to either version meet in
            // one record: each part must be allowed by some version.
            let why: Vec<String> = grants
                .iter()
                .filter_map(|g| g.forbids(&key, &fields, st, self.nodes[i].id))
                .collect();
            let field_ok = |f: &String| {
                grants.iter().any(|g| g.exclude.as_ref() != Some(f))
                    || st
                        .and_then(|s| s.fields.get(f))
                        .is_some_and(|(o, _)| *o == self.nodes[i].id)
            };
            let record_only = grants.iter().any(|g| {
                let mut without = fields.clone();
                without.retain(|f, _| g.exclude.as_ref() != Some(f));
                g.forbids(&key, &without, st, self.nodes[i].id).is_none()
            });
            if why.len() == grants.len() && !(record_only && fields.keys().all(field_ok)) {
                return Err(format!(
                    "partial node {i} {}: {key:?} {fields:?} (stamps {st:?})",
                    why[0]
                ));
            }
        }
        Ok(())
    }

    fn try_link(&mut self, a: usize, b: usize) {
        let key = pair(a, b);
        let refused = self.removal.as_ref().is_some_and(|r| {
            (a == r.node && r.told.contains(&b)) || (b == r.node && r.told.contains(&a))
        });
        // A peer holds one session per device: while one copy of a cloned
        // device is linked to it, the other is not.
        let other_copy = |x: usize, y: usize| {
            self.copies(y)
                .into_iter()
                .any(|c| c != y && self.links.contains_key(&pair(x, c)))
        };
        if !self.linked(a, b)
            || other_copy(a, b)
            || other_copy(b, a)
            || refused
            || self.links.contains_key(&key)
            || self.cut.contains_key(&key)
            || self.nodes[a].engine.is_none()
            || self.nodes[b].engine.is_none()
        {
            return;
        }
        self.generation += 1;
        self.links.insert(key, self.generation);
        self.log(|| format!("link {a}-{b} up"));
        for (x, y) in [(a, b), (b, a)] {
            let wall = self.wall(x);
            let peer = self.nodes[y].id;
            if let Some(e) = self.nodes[x].engine.as_mut() {
                e.connected(peer, wall);
            }
            self.flush(x);
        }
    }

    fn unlink(&mut self, a: usize, b: usize) {
        if self.links.remove(&pair(a, b)).is_none() {
            return;
        }
        self.log(|| format!("link {a}-{b} down"));
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.nodes[y].id;
            if let Some(e) = self.nodes[x].engine.as_mut() {
                e.disconnected(&peer);
            }
        }
    }

    fn crash(&mut self, i: usize, until: u64) {
        for j in 0..self.nodes.len() {
            self.unlink(i, j);
        }
        if let Some(e) = self.nodes[i].engine.take() {
            self.nodes[i].disk = Some(e.into_store().crash());
        }
        self.down.insert(i, until);
        self.stats.crashes += 1;
        self.log(|| format!("node {i} crashed"));
    }

    /// Node `i` stops and comes back at `until` from its backup, in a new
    /// write incarnation: its disk goes back in time. Only once another
    /// replica holds every write it made, so no acknowledged write is gone
    /// with the disk (no store can keep those) and every one must show
    /// everywhere in the end.
    fn restore(&mut self, i: usize, until: u64) {
        let Some(mine) = self.nodes[i].engine.as_ref().map(|e| e.store().vector()) else {
            return;
        };
        let mut elsewhere = VersionVector::new();
        for (j, node) in self.nodes.iter().enumerate() {
            let held = match (&node.engine, &node.disk) {
                (Some(e), _) => Some(e.store().vector()),
                (None, Some(d)) => R::disk_vector(d),
                _ => None,
            };
            if j != i
                && let Some(v) = held
            {
                elsewhere.merge(&v);
            }
        }
        let id = self.nodes[i].id;
        if mine
            .iter()
            .any(|(w, seq)| w.same_device(&id) && elsewhere.get(w) < *seq)
        {
            return;
        }
        let Some(backup) = self.nodes[i].backup.take() else {
            return;
        };
        self.crash(i, until);
        let incarnation = self.new_incarnation();
        self.nodes[i].disk = Some(R::restored(backup, incarnation));
        // Going back to the backup is the one way a vector may shrink.
        self.nodes[i].last_vector = VersionVector::new();
        self.stats.restores += 1;
        self.log(|| format!("node {i} restored from its backup, incarnation {incarnation}"));
    }

    /// Moves node `i`'s outgoing messages onto the network.
    fn flush(&mut self, i: usize) {
        let Some(e) = self.nodes[i].engine.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(m) = e.poll_transmit() {
            out.push(m);
        }
        while let Some(ev) = e.poll_event() {
            match ev {
                Event::SnapshotMerged { .. } => self.stats.snapshots += 1,
                Event::Compacted {
                    ops, tombstones, ..
                } => {
                    if self.trace && tombstones > 0 {
                        eprintln!(
                            "[{:>6}] node {i} dropped {tombstones} tombstones",
                            self.now - self.t0
                        );
                    }
                    self.stats.compacted_ops += ops;
                    self.stats.tombstones += tombstones;
                }
                Event::EpochChanged { .. } => self.stats.epoch_changes += 1,
                Event::Refused { .. } => self.stats.refused += 1,
                Event::Corrected { ops, .. } => {
                    self.stats.corrections += 1;
                    self.corrections.extend(ops);
                }
                Event::Rejected {
                    origin, seq, hlc, ..
                } => {
                    self.stats.rejected += 1;
                    self.rejected.insert((origin, seq));
                    self.rejected_stamps.insert((origin, hlc));
                }
                Event::StoreFailed { .. }
                | Event::ClockAhead { .. }
                | Event::Applied { .. }
                | Event::UnknownDatabase { .. } => {}
                ev @ (Event::Unopened { .. }
                | Event::EncryptionDiffers { .. }
                | Event::CheckpointTaken { .. }
                | Event::CheckpointSent { .. }) => {
                    panic!("the simulator seals nothing, yet: {ev:?}")
                }
            }
        }
        for (peer, msg) in out {
            // The copy of the peer's device that is linked to this node.
            let Some((j, generation)) = (0..self.nodes.len())
                .filter(|j| self.nodes[*j].id == peer)
                .find_map(|j| Some((j, *self.links.get(&pair(i, j))?)))
            else {
                continue;
            };
            if self.rng.chance(self.s.drop) {
                continue;
            }
            let copies = if self.rng.chance(self.s.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let at = self.now + self.rng.range(1, self.s.max_delay + 1);
                self.order += 1;
                self.net.push(InFlight {
                    at,
                    order: self.order,
                    from: i,
                    to: j,
                    generation,
                    msg: msg.clone(),
                });
            }
        }
    }

    fn write(&mut self) {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].engine.is_some())
            .collect();
        if up.is_empty() {
            return;
        }
        let i = up[self.rng.range(0, up.len() as u64) as usize];
        let collection = format!("c{}", self.rng.range(0, 2));
        let id = format!("r{}", self.rng.range(0, 12));
        let field = |r: &mut Rng| ["title", "status", "prio"][r.range(0, 3) as usize].to_owned();
        let mut fields = Fields::new();
        for _ in 0..self.rng.range(0, 3) {
            let f = field(&mut self.rng);
            fields.insert(f, Value::Int(self.rng.range(0, 100) as i64));
        }
        let body = match self.rng.range(0, 10) {
            0..=3 => OpBody::Put {
                collection,
                id,
                fields,
            },
            4..=7 => {
                let unset: Vec<String> = if self.rng.chance(0.3) {
                    // A patch sets a field or removes it, not both.
                    Some(field(&mut self.rng))
                        .filter(|f| !fields.contains_key(f))
                        .into_iter()
                        .collect()
                } else {
                    Vec::new()
                };
                OpBody::Patch {
                    collection,
                    id,
                    set: fields,
                    unset,
                }
            }
            _ => OpBody::Delete { collection, id },
        };
        let wall = self.wall(i);
        let e = self.nodes[i].engine.as_mut().expect("node is up");
        let Some(op) = e.store_mut().write(wall, body) else {
            return;
        };
        e.local_commit(DB, wall);
        self.log(|| {
            let body = OpBody::decode(&op.body).map(|b| format!("{b:?}"));
            format!(
                "node {i} wrote ({}, {}): {}",
                op.origin.short(),
                op.seq,
                body.unwrap_or_default()
            )
        });
        self.acked.push(op);
        self.stats.writes += 1;
        self.flush(i);
    }

    /// Node 0 removes the node when it is time (and node 0 is up); then
    /// each node linked to one that heard of it hears too, a little later.
    fn spread_removal(&mut self) {
        let Some(r) = self.removal.as_ref() else {
            return;
        };
        let (node, at) = (r.node, r.at);
        if r.cutoffs.is_none() {
            if self.now < at || self.nodes[0].engine.is_none() {
                return;
            }
            let id = self.nodes[node].id;
            let vector = self.nodes[0]
                .engine
                .as_ref()
                .map(|e| e.store().vector())
                .unwrap_or_default();
            let held = vector.get(&id);
            let later: BTreeMap<u32, u64> = vector
                .iter()
                .filter_map(|(w, seq)| Some((id.incarnation_of(w).filter(|n| *n != 0)?, *seq)))
                .collect();
            let cutoffs = BTreeMap::from([(
                id,
                Cutoff {
                    per_db: BTreeMap::from([(DB.to_owned(), held)]),
                    incarnations: BTreeMap::from([(DB.to_owned(), later)]),
                    after: Hlc::new(self.wall(0), u16::MAX),
                },
            )]);
            self.log(|| format!("node 0 removes node {node}, taking its writes up to {held}"));
            self.stats.removals += 1;
            if let Some(r) = self.removal.as_mut() {
                r.cutoffs = Some(cutoffs);
            }
            self.tell(0);
            return;
        }
        let told = r.told.clone();
        let hear: Vec<usize> = self
            .links
            .keys()
            .filter_map(|&(a, b)| match (told.contains(&a), told.contains(&b)) {
                (true, false) => Some(b),
                (false, true) => Some(a),
                _ => None,
            })
            .filter(|&x| x != node)
            .collect();
        for x in hear {
            if self.rng.chance(0.2) && !self.removal.as_ref().is_some_and(|r| r.told.contains(&x)) {
                self.tell(x);
            }
        }
    }

    /// Node `i` hears of the removal: it refuses the node from now on.
    fn tell(&mut self, i: usize) {
        let Some(r) = self.removal.as_mut() else {
            return;
        };
        r.told.insert(i);
        let (node, cutoffs) = (r.node, r.cutoffs.clone().unwrap_or_default());
        self.log(|| format!("node {i} hears node {node} was removed"));
        self.unlink(i, node);
        if let Some(e) = self.nodes[i].engine.as_mut() {
            e.set_cutoffs(cutoffs);
        }
        self.flush(i);
    }

    /// A write incarnation for a store that cannot prove it is the newest
    /// state: random, never 0 (the device's first).
    fn new_incarnation(&mut self) -> u32 {
        loop {
            let n = self.rng.next() as u32;
            if n != 0 {
                return n;
            }
        }
    }

    /// Copies node `i`'s disk as it is now and starts the copy beside it
    /// under the same device id, as a cloned disk does. The copy cannot
    /// prove it is the newest state, so it writes in a new incarnation
    /// and is `restored`, as the agent's store makes it.
    fn clone_node(&mut self, i: usize) {
        let Some(copy) = self.nodes[i]
            .engine
            .as_ref()
            .and_then(|e| e.store().backup())
        else {
            return;
        };
        let incarnation = self.new_incarnation();
        let c = self.nodes.len();
        let skew = self.rng.range(0, 4001) as i64 - 2000;
        let base = self.base(i);
        self.nodes.push(Node {
            id: self.nodes[i].id,
            twin_of: Some(base),
            engine: None,
            disk: Some(R::restored(copy, incarnation)),
            backup: None,
            skew,
            last_vector: VersionVector::new(),
            rules_version: self.nodes[i].rules_version,
            hears_rules_at: self.nodes[i].hears_rules_at,
        });
        self.stats.clones += 1;
        self.log(|| format!("node {i}'s disk copied to node {c}, incarnation {incarnation}"));
        self.boot(c);
        // The copy dials every peer as it starts, and each new session
        // pushes out the other copy's.
        for j in 0..self.nodes.len() {
            if let Some(k) = self
                .copies(c)
                .into_iter()
                .find(|k| *k != c && self.links.contains_key(&pair(j, *k)))
            {
                self.unlink(j, k);
                self.try_link(j, c);
            }
        }
        if self.next_flap == u64::MAX {
            self.next_flap = self.now + self.rng.range(200, 2_000);
        }
    }

    /// Peers' sessions with a cloned device switch from one copy to
    /// another, as the copies push each other's sessions out.
    fn flap(&mut self) {
        for c in 0..self.s.nodes {
            let copies = self.copies(c);
            if copies.len() < 2 {
                continue;
            }
            for j in 0..self.nodes.len() {
                let Some(&linked) = copies
                    .iter()
                    .find(|k| self.links.contains_key(&pair(j, **k)))
                else {
                    continue;
                };
                let others: Vec<usize> = copies
                    .iter()
                    .copied()
                    .filter(|k| *k != linked && self.nodes[*k].engine.is_some())
                    .collect();
                if others.is_empty() || !self.rng.chance(0.5) {
                    continue;
                }
                let next = others[self.rng.range(0, others.len() as u64) as usize];
                self.log(|| format!("node {j} switches from copy {linked} to {next}"));
                self.unlink(j, linked);
                self.try_link(j, next);
            }
        }
        self.next_flap = self.now + self.rng.range(200, 2_000);
    }

    fn fault(&mut self) {
        let n = self.nodes.len();
        if self.s.clones && self.stats.clones < 2 && self.rng.chance(0.15) {
            let i = self.rng.range(0, n as u64) as usize;
            if self.nodes[i].engine.is_some() {
                self.clone_node(i);
            }
            return;
        }
        if self.s.restores && self.rng.chance(0.3) {
            let i = self.rng.range(0, n as u64) as usize;
            if let Some(e) = self.nodes[i].engine.as_ref() {
                if self.nodes[i].backup.is_none() || self.rng.chance(0.5) {
                    self.nodes[i].backup = e.store().backup();
                    self.log(|| format!("node {i} backed up"));
                } else {
                    let until = self.now + self.rng.range(200, 3_000);
                    self.restore(i, until);
                }
            }
            return;
        }
        match self.rng.range(0, 3) {
            0 => {
                let i = self.rng.range(0, n as u64) as usize;
                if self.nodes[i].engine.is_some() {
                    let until = self.now + self.rng.range(200, 3_000);
                    self.crash(i, until);
                }
            }
            1 => {
                // Cut one side of the network from the other for a while.
                let until = self.now + self.rng.range(300, 5_000);
                let side: BTreeSet<usize> = (0..n).filter(|_| self.rng.chance(0.5)).collect();
                for a in 0..n {
                    for b in a + 1..n {
                        if side.contains(&a) != side.contains(&b) && self.linked(a, b) {
                            self.cut.insert((a, b), until);
                            self.unlink(a, b);
                        }
                    }
                }
                self.log(|| format!("partition {side:?}"));
                self.stats.partitions += 1;
            }
            _ => {
                let a = self.rng.range(0, n as u64) as usize;
                let b = self.rng.range(0, n as u64) as usize;
                if self.linked(a, b) {
                    let until = self.now + self.rng.range(100, 2_000);
                    self.cut.insert(pair(a, b), until);
                    self.unlink(a, b);
                }
            }
        }
    }

    /// Heals partitions and restarts nodes that are due.
    fn recover(&mut self) {
        let now = self.now;
        let healed: Vec<(usize, usize)> = self
            .cut
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in healed {
            self.cut.remove(&k);
            self.try_link(k.0, k.1);
        }
        let back: Vec<usize> = self
            .down
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| *k)
            .collect();
        for i in back {
            self.down.remove(&i);
            self.boot(i);
        }
    }

    fn deliver_due(&mut self) -> Result<(), String> {
        let now = self.now;
        let mut due: Vec<InFlight> = Vec::new();
        let mut rest = Vec::with_capacity(self.net.len());
        for m in self.net.drain(..) {
            if m.at <= now {
                due.push(m);
            } else {
                rest.push(m);
            }
        }
        self.net = rest;
        due.sort_by_key(|m| (m.at, m.order));
        for m in due {
            if self.links.get(&pair(m.from, m.to)) != Some(&m.generation) {
                continue;
            }
            let wall = self.wall(m.to);
            let from = self.nodes[m.from].id;
            if self.trace {
                self.log(|| format!("{} -> {}: {}", m.from, m.to, describe(&m.msg)));
            }
            let before = (self.trace && (self.trace_records || self.final_grant(m.to).is_some()))
                .then(|| {
                    self.nodes[m.to]
                        .engine
                        .as_ref()
                        .map(|e| e.store().visible())
                })
                .flatten();
            if let Some(e) = self.nodes[m.to].engine.as_mut() {
                e.handle(from, m.msg, wall);
            }
            if let (Some(before), Some(e)) = (before, self.nodes[m.to].engine.as_ref()) {
                // What a partial replica's records did (or any node's, when
                // tracing records), key by key.
                let after = e.store().visible();
                for k in before.keys().chain(after.keys()).collect::<BTreeSet<_>>() {
                    if before.get(k) != after.get(k) {
                        self.log(|| {
                            format!(
                                "  node {} {k:?}: {:?} -> {:?}",
                                m.to,
                                before.get(k),
                                after.get(k)
                            )
                        });
                    }
                }
            }
            self.flush(m.to);
            self.check_vector(m.to)?;
            self.check_partial(m.to)?;
        }
        Ok(())
    }

    fn check_vector(&mut self, i: usize) -> Result<(), String> {
        let Some(e) = self.nodes[i].engine.as_ref() else {
            return Ok(());
        };
        let v = e.store().vector();
        if !v.dominates(&self.nodes[i].last_vector) {
            return Err(format!(
                "node {i}'s vector went backwards: {:?} after {:?}",
                v, self.nodes[i].last_vector
            ));
        }
        if e.store().misapplied() > 0 {
            return Err(format!(
                "node {i} was handed an operation twice or out of turn"
            ));
        }
        self.nodes[i].last_vector = v;
        Ok(())
    }

    fn tick_engines(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let wall = self.wall(i);
            let due = self.nodes[i]
                .engine
                .as_ref()
                .is_some_and(|e| e.poll_timeout() <= wall);
            if due {
                if let Some(e) = self.nodes[i].engine.as_mut() {
                    e.handle_timeout(wall);
                }
                self.flush(i);
                self.check_vector(i)?;
            }
        }
        Ok(())
    }

    /// The next moment anything happens.
    fn next_time(&self, chaos_until: u64) -> u64 {
        let mut t = u64::MAX;
        if let Some(m) = self.net.iter().map(|m| m.at).min() {
            t = t.min(m);
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(e) = &n.engine {
                let wall_due = e.poll_timeout();
                let skew = self.nodes[i].skew;
                t = t.min(wall_due.saturating_add_signed(-skew));
            }
        }
        t = t.min(self.cut.values().copied().min().unwrap_or(u64::MAX));
        t = t.min(self.down.values().copied().min().unwrap_or(u64::MAX));
        t = t.min(self.next_flap);
        if self.now < chaos_until {
            t = t.min(self.next_write).min(self.next_fault);
        }
        t.max(self.now + 1)
    }

    /// The removed node, once every other node has heard of its removal:
    /// it is out of the comparison, and so is its entry in the vectors
    /// (replicas that took its late writes keep them in their vector).
    fn removed(&self) -> Option<usize> {
        let r = self.removal.as_ref()?;
        r.cutoffs.as_ref()?;
        Some(r.node)
    }

    fn compared(&self) -> Vec<usize> {
        let removed = self.removed();
        (0..self.nodes.len())
            .filter(|i| Some(*i) != removed)
            .collect()
    }

    fn vector_of(&self, i: usize) -> Option<VersionVector> {
        let mut v = self.nodes[i].engine.as_ref()?.store().vector();
        if let Some(r) = self.removed() {
            v.set(self.nodes[r].id, 0);
        }
        Some(v)
    }

    fn converged(&self) -> bool {
        if let Some(r) = &self.removal
            && (r.cutoffs.is_none() || r.told.len() + 1 < self.nodes.len())
        {
            return false;
        }
        let last = self.final_version();
        if self.nodes.iter().any(|n| n.rules_version != last) {
            return false;
        }
        let nodes = self.compared();
        let Some(v0) = self.vector_of(nodes[0]) else {
            return false;
        };
        // Vectors first: they are cheap, and hashing only pays once they agree.
        if !nodes
            .iter()
            .all(|i| self.vector_of(*i).as_ref() == Some(&v0))
        {
            return false;
        }
        let hash = |i: usize| {
            self.nodes[i]
                .engine
                .as_ref()
                .map(|e| e.store().state_hash())
        };
        let (partial, full): (Vec<usize>, Vec<usize>) =
            nodes.iter().partition(|i| self.final_grant(**i).is_some());
        let h0 = hash(full[0]);
        if !full.iter().all(|i| hash(*i) == h0) {
            return false;
        }
        let Some(store) = self.nodes[full[0]].engine.as_ref().map(|e| e.store()) else {
            return false;
        };
        let (whole, stamps) = (store.visible(), store.stamps());
        partial.iter().all(|i| {
            let want = self
                .final_grant(*i)
                .map(|g| g.project(&whole, stamps.as_ref()));
            self.nodes[*i].engine.as_ref().map(|e| e.store().visible()) == want
        })
    }

    /// What node `i` may see under the final rules, if it is partial.
    fn final_grant(&self, i: usize) -> Option<&Grant> {
        self.grants(self.final_version())?.get(&i)
    }

    /// Runs the chaos phase, heals everything, and checks the end state.
    pub(crate) fn run(&mut self) -> Result<(), String> {
        let chaos_until = self.t0 + self.s.chaos_ms;
        while self.now < chaos_until {
            self.now = self.next_time(chaos_until);
            if self.now >= self.next_write && self.now < chaos_until {
                self.write();
                self.next_write = self.now + self.rng.range(1, 2 * self.s.write_every);
            }
            if self.now >= self.next_fault && self.now < chaos_until {
                self.fault();
                self.next_fault = self.now + self.rng.range(1, 2 * self.s.fault_every);
            }
            if self.now >= self.next_flap {
                self.flap();
            }
            self.recover();
            self.spread_removal();
            self.spread_rules(false);
            self.deliver_due()?;
            self.tick_engines()?;
        }

        // Heal: the network stops misbehaving, every node comes back.
        self.log(|| "heal".to_owned());
        self.s.drop = 0.0;
        self.s.duplicate = 0.0;
        self.cut.clear();
        let downs: Vec<usize> = self.down.keys().copied().collect();
        self.down.clear();
        for i in downs {
            self.boot(i);
        }
        self.spread_rules(true);
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                self.try_link(a, b);
            }
        }
        let deadline = self.now + 120_000;
        while !(self.net.is_empty() && self.converged()) {
            if self.now > deadline {
                return Err(self.divergence());
            }
            self.now = self.next_time(0);
            if self.now >= self.next_flap {
                self.flap();
            }
            self.spread_removal();
            self.deliver_due()?;
            self.tick_engines()?;
        }
        self.check_against_reference()
    }

    fn divergence(&self) -> String {
        let mut s = String::from("replicas did not converge within 120 s of healing:");
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(e) = &n.engine {
                s += &format!(
                    "\n  node {i}: hash {:016x} vector {:?}",
                    e.store().state_hash(),
                    e.store().vector(),
                );
            }
        }
        // Show the records on which the replicas disagree.
        let views: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                n.engine
                    .as_ref()
                    .map(|e| e.store().visible())
                    .unwrap_or_default()
            })
            .collect();
        // And where a partial replica differs from what its rules let it see.
        let full = (0..self.nodes.len()).find(|i| self.final_grant(*i).is_none());
        if let Some(store) = full
            .and_then(|f| self.nodes[f].engine.as_ref())
            .map(|e| e.store())
        {
            let (whole, stamps) = (store.visible(), store.stamps());
            for (i, view) in views.iter().enumerate() {
                let Some(g) = self.final_grant(i) else {
                    continue;
                };
                let want = g.project(&whole, stamps.as_ref());
                for k in want.keys().chain(view.keys()).collect::<BTreeSet<_>>() {
                    if want.get(k) != view.get(k) {
                        s += &format!(
                            "\n  partial node {i} {k:?}: want {:?} got {:?}",
                            want.get(k),
                            view.get(k)
                        );
                    }
                }
            }
        }
        let keys: BTreeSet<_> = views.iter().flat_map(|v| v.keys().cloned()).collect();
        for k in keys {
            let vals: Vec<_> = views.iter().map(|v| v.get(&k)).collect();
            if vals.iter().any(|v| *v != vals[0]) {
                s += &format!("\n  {k:?}: {vals:?}");
                for (i, n) in self.nodes.iter().enumerate() {
                    let stamps = n.engine.as_ref().and_then(|e| e.store().stamps());
                    if let Some(st) = stamps.as_ref().and_then(|st| st.get(&k)) {
                        s += &format!("\n    node {i}: {st:?}");
                    }
                }
            }
        }
        s
    }

    /// Every replica must show exactly the merge of every acknowledged
    /// write: nothing lost, nothing resurrected.
    fn check_against_reference(&self) -> Result<(), String> {
        let mut reference = MemoryStore::new(DeviceId([0xEE; 32]));
        reference.create_db(DB, 0, SyncMode::Sync, 0);
        // A removed node's writes past its cut-off are refused by design;
        // the corrections that undo them where they landed are writes too.
        let cut = self.removal.as_ref().and_then(|r| {
            let id = self.nodes[r.node].id;
            Some((id, r.cutoffs.as_ref()?.get(&id)?.clone()))
        });
        let mut by_writer: BTreeMap<DeviceId, Vec<Op>> = BTreeMap::new();
        for op in self.acked.iter().chain(&self.corrections) {
            if cut
                .as_ref()
                .is_some_and(|(id, c)| op.origin == *id && !c.allows(DB, op))
            {
                continue;
            }
            if self.rejected.contains(&(op.writer(), op.seq)) {
                // Refused under the access rules: it stands in the log as
                // a write that changes nothing.
                let mut op = op.clone();
                op.body = OpBody::Rejected {
                    collection: String::new(),
                    id: String::new(),
                    reason: String::new(),
                }
                .encode()
                .unwrap_or_default();
                by_writer.entry(op.writer()).or_default().push(op);
                continue;
            }
            by_writer.entry(op.writer()).or_default().push(op.clone());
        }
        for (_, mut ops) in by_writer {
            ops.sort_by_key(|o| o.seq);
            reference
                .apply_ops(DB, ops, &Default::default())
                .map_err(|e| format!("reference: {e}"))?;
        }
        let whole = reference.visible(DB);
        let whole_stamps = reference.stamps(DB);
        for i in self.compared() {
            let got = self.nodes[i].engine.as_ref().map(|e| e.store().visible());
            let want = match self.final_grant(i) {
                Some(g) => g.project(&whole, Some(&whole_stamps)),
                None => whole.clone(),
            };
            // No refused write shows anywhere, the writer's replica included.
            let stamps = self.nodes[i]
                .engine
                .as_ref()
                .and_then(|e| e.store().stamps());
            for (key, rec) in stamps.iter().flatten() {
                for (field, stamp) in &rec.fields {
                    if self.rejected_stamps.contains(stamp) {
                        return Err(format!(
                            "node {i} still shows a refused write: {key:?} field {field}"
                        ));
                    }
                }
            }
            if got.as_ref() != Some(&want) {
                return Err(format!(
                    "node {i} differs from the merge of all {} acknowledged writes:\n  want {want:?}\n  got  {got:?}",
                    self.acked.len()
                ));
            }
        }
        Ok(())
    }
}

fn describe(msg: &SyncMessage) -> String {
    match msg {
        SyncMessage::Vector {
            vector, reports, ..
        } => {
            format!("vector {:?} ({} reports)", vector, reports.len())
        }
        SyncMessage::Ops { ops, .. } => format!(
            "ops {:?}",
            ops.iter()
                .map(|o| format!("{}:{}", o.origin.short(), o.seq))
                .collect::<Vec<_>>()
        ),
        SyncMessage::Packed { ops, .. } => format!(
            "ops {:?}",
            ops.ids()
                .iter()
                .map(|(writer, seq)| format!("{}:{}", writer.short(), seq))
                .collect::<Vec<_>>()
        ),
        SyncMessage::Chunks { chunks, .. } => format!(
            "chunks {:?}",
            chunks
                .iter()
                .flat_map(|c| c.ids())
                .map(|(writer, seq)| format!("{}:{}", writer.short(), seq))
                .collect::<Vec<_>>()
        ),
        SyncMessage::Snapshot {
            id,
            part,
            records,
            last,
            ..
        } => {
            format!(
                "snapshot {id}.{part} ({} records, last {last})",
                records.len()
            )
        }
        SyncMessage::SnapshotAck { id, part, .. } => format!("snapshot ack {id}.{part}"),
        SyncMessage::Refuted { ops, .. } => format!("refuted {}", ops.len()),
        SyncMessage::Checkpoint {
            id, part, parts, ..
        } => {
            format!("checkpoint {id} part {part} of {parts}")
        }
        SyncMessage::Projected {
            covers,
            records,
            evict,
            ..
        } => format!(
            "projected {:?}, records {:?}, evicted {:?}",
            covers
                .iter()
                .map(|(o, f, l)| format!("{}:{f}-{l}", o.short()))
                .collect::<Vec<_>>(),
            records
                .iter()
                .map(|r| String::from_utf8_lossy(&r.key).replace('\0', "/"))
                .collect::<Vec<_>>(),
            evict
                .iter()
                .map(|k| String::from_utf8_lossy(k).replace('\0', "/"))
                .collect::<Vec<_>>()
        ),
    }
}
