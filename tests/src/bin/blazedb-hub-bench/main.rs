//! One hub serving many devices: a real hub process, and this process
//! simulating N devices, each with its own device key, its own QUIC
//! connection and the real sync engine over an in-memory replica.
//!
//! ```text
//! cargo build --release -p blazedb-tests --bins && target/release/blazedb-hub-bench --n 1000
//! ```
//!
//! It prints, in order:
//! - the time for all N devices to join by one invite, all at once, and
//!   how many joins failed;
//! - the hub's resident memory, idle with N devices connected;
//! - one write by one device fanned out through the hub to all the
//!   others: p50, p99 and max over `--rounds` writes, each from another
//!   device;
//! - sustained writes (`--rate` per second, spread over the devices, for
//!   `--seconds`), with the hub's CPU, beside its idle CPU, and the time
//!   until every device held every write.
//!
//! With `--json` the last line is one JSON object with the figures (keys
//! `n`, `join_s`, `join_failed`, `hub_rss_mb`, `fanout_p50_ms`,
//! `fanout_p99_ms`, `fanout_max_ms`, `hub_cpu_pct`, `hub_idle_cpu_pct`).
//!
//! With `--agents 15,30,60` it runs real device agents instead, a mesh of
//! each size in turn, and prints per size: join time, links per device,
//! fan-out, and the CPU of all agents together per write above idle, so
//! its growth with the mesh's size shows in one run.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use blazed::identity::Identity;
use blazed::mesh::session::read_frame;
use blazed::mesh::{endpoint, proof, tls, transport_config};
use blazed::sync::{Engine, EngineConfig, MemoryStore};
use blazedb_proto::api::SyncMode;
use blazedb_proto::mesh::{
    Invite, PEER_PROTOCOL_VERSION, PeerMessage, Role, append_sync_frame, to_frame,
};
use blazedb_proto::{DeviceId, Fields, OpBody, SyncMessage, Value};
use blazedb_tests::bench::{Samples, cpu_seconds, rss_kib};
use blazedb_tests::{TestAgent, sibling_bin};
use clap::Parser;
use tokio::sync::{mpsc, oneshot, watch};

mod agents;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks one blazed hub serving many simulated devices")]
struct Args {
    /// Simulated devices.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Single writes timed while they fan out to every device.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Writes per second in the sustained run, spread over the devices.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Length of the sustained run, and of the idle run beside it.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Print the figures as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Instead of simulated devices, run real device agents (each its own
    /// process) in meshes of these sizes, one after another, e.g.
    /// `--agents 15,30,60`.
    #[arg(long, value_delimiter = ',')]
    agents: Vec<usize>,
    /// Writes in each real-agent mesh's CPU run (20 per second).
    #[arg(long, default_value_t = 100)]
    agent_writes: usize,
}

/// The database every device syncs through the hub.
const DB: &str = "bench";
/// How many simulated devices share one UDP socket.
const DEVICES_PER_ENDPOINT: usize = 200;
/// How long the bench waits for anything that should happen.
const PATIENCE: Duration = Duration::from_secs(120);

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The write being timed: once a device holds `seq` of `origin`, it says
/// so once, with the time since `start`.
#[derive(Debug, Clone, Copy)]
struct Probe {
    round: u64,
    origin: DeviceId,
    seq: u64,
    start: Instant,
}

/// What the bench asks of one simulated device.
enum Command {
    /// Write one record; answer with its sequence number.
    Write(oneshot::Sender<u64>),
}

/// What the devices share with the bench.
struct Shared {
    probe: watch::Receiver<Option<Probe>>,
    arrived: mpsc::UnboundedSender<(u64, f64)>,
    /// For each device, how many operations it holds in all.
    held: Vec<AtomicU64>,
    /// For each device, how many sync messages it got.
    got: Vec<AtomicU64>,
}

/// One simulated device after it joined.
struct Device {
    index: usize,
    me: DeviceId,
    hub: DeviceId,
    conn: quinn::Connection,
    engine: Engine<MemoryStore>,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
}

/// Dials the hub and redeems the invite, as a joining agent does.
async fn join(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    hub_addr: SocketAddr,
    invite: &Invite,
    identity: &Identity,
    index: usize,
) -> anyhow::Result<(quinn::Connection, ControlStream)> {
    let name = tls::server_name_for(Some(&invite.inviter));
    let conn = endpoint.connect_with(client, hub_addr, &name)?.await?;
    let binding = proof::Binding::of(&conn)?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let me = identity.device_id();
    let join = PeerMessage::Join {
        version: PEER_PROTOCOL_VERSION,
        invite: invite.id,
        proof: proof::make(&invite.secret, proof::JOIN, &binding, &me),
        name: format!("sim-{index}"),
        role: Role::Device,
    };
    send.write_all(&to_frame(&join)?).await?;
    let frame = read_frame(&mut recv)
        .await?
        .context("the hub closed the control stream")?;
    match PeerMessage::decode(&frame)? {
        PeerMessage::Welcome { mesh, proof: p, .. }
            if mesh == invite.mesh
                && proof::check(
                    &invite.secret,
                    proof::WELCOME,
                    &binding,
                    &invite.inviter,
                    &p,
                ) => {}
        PeerMessage::Refused { reason } => bail!("refused: {reason}"),
        other => bail!("the hub answered with {other:?}"),
    }
    Ok((conn, (send, recv)))
}

/// The session's control stream; the session lasts as long as it is open.
type ControlStream = (quinn::SendStream, quinn::RecvStream);

/// Simulated devices take no incoming connections.
#[derive(Debug)]
struct NoneAccepted;

impl tls::Gate for NoneAccepted {
    fn admits(&self, _device: &DeviceId) -> bool {
        false
    }
}

impl Device {
    /// Runs the device until its connection ends.
    async fn run(mut self, (_control_send, mut control): ControlStream) {
        let (msgs_tx, mut msgs) = mpsc::unbounded_channel::<SyncMessage>();
        // Membership gossip and link news are read and counted, not used.
        tokio::spawn(async move { while let Ok(Some(_)) = read_frame(&mut control).await {} });
        let conn = self.conn.clone();
        tokio::spawn(async move {
            while let Ok(mut recv) = conn.accept_uni().await {
                let tx = msgs_tx.clone();
                tokio::spawn(async move {
                    while let Ok(Some(bytes)) = read_frame(&mut recv).await {
                        let Ok(m) = SyncMessage::decode(&bytes) else {
                            return;
                        };
                        if tx.send(m).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let mut streams: HashMap<String, quinn::SendStream> = HashMap::new();
        let mut probe = self.shared.probe.clone();
        let mut reported = 0u64;
        self.engine.connected(self.hub, wall_ms());
        loop {
            let wait = self.engine.poll_timeout().saturating_sub(wall_ms());
            tokio::select! {
                m = msgs.recv() => {
                    let Some(m) = m else { return };
                    self.engine.handle(self.hub, m, wall_ms());
                    let mut got = 1;
                    while let Ok(m) = msgs.try_recv() {
                        self.engine.handle(self.hub, m, wall_ms());
                        got += 1;
                    }
                    self.shared.got[self.index].fetch_add(got, Ordering::Relaxed);
                }
                c = self.commands.recv() => match c {
                    Some(Command::Write(reply)) => {
                        let now = wall_ms();
                        let body = OpBody::Put {
                            collection: "items".into(),
                            id: format!("{}-{now}", self.index),
                            fields: Fields::from([("by".to_owned(), Value::Int(self.index as i64))]),
                        };
                        if let Some(op) = self.engine.store_mut().write(DB, now, body) {
                            self.engine.local_commit(DB, now);
                            let _ = reply.send(op.seq);
                        }
                    }
                    None => return,
                },
                _ = probe.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {
                    self.engine.handle_timeout(wall_ms());
                }
            }
            while self.engine.poll_event().is_some() {}
            while let Some((_, msg)) = self.engine.poll_transmit() {
                let db = msg.db().to_owned();
                if !streams.contains_key(&db) {
                    match self.conn.open_uni().await {
                        Ok(s) => {
                            streams.insert(db.clone(), s);
                        }
                        Err(_) => return,
                    }
                }
                let Some(stream) = streams.get_mut(&db) else {
                    return;
                };
                let mut frame = Vec::new();
                if append_sync_frame(&mut frame, &msg).is_err() {
                    continue;
                }
                if stream.write_all(&frame).await.is_err() {
                    return;
                }
            }
            let vector = self.engine.store().vector(DB);
            let held: u64 = vector.iter().map(|(_, s)| *s).sum();
            self.shared.held[self.index].store(held, Ordering::Relaxed);
            let current = *probe.borrow_and_update();
            if let Some(p) = current
                && p.round > reported
                && p.origin != self.me
                && vector.get(&p.origin) >= p.seq
            {
                reported = p.round;
                let ms = p.start.elapsed().as_secs_f64() * 1000.0;
                let _ = self.shared.arrived.send((p.round, ms));
            }
        }
    }
}

/// The hub's CPU use over `secs` seconds, as a percentage of one core.
fn cpu_pct(pid: u32, before: f64, secs: f64) -> f64 {
    let after = cpu_seconds(Some(pid)).unwrap_or(before);
    (after - before) / secs * 100.0
}

/// Runs real device agents in meshes of each size of `--agents`, and
/// prints a row for each.
async fn agent_meshes(args: &Args) -> anyhow::Result<()> {
    println!(
        "{:>4} {:>8} {:>6} {:>9} {:>10} {:>11} {:>11} {:>15}",
        "n",
        "join s",
        "failed",
        "links max",
        "links mean",
        "fanout p50",
        "fanout p99",
        "mesh CPU/write"
    );
    let mut rows = Vec::new();
    for &n in &args.agents {
        anyhow::ensure!(n >= 2, "a mesh needs at least two devices");
        let r = agents::run(n, args.rounds.min(10), args.agent_writes).await?;
        println!(
            "{:>4} {:>8.2} {:>6} {:>9} {:>10.1} {:>8.1} ms {:>8.1} ms {:>12.2} ms",
            r.n,
            r.join_s,
            r.join_failed,
            r.links_max,
            r.links_mean,
            r.fanout_p50_ms,
            r.fanout_p99_ms,
            r.mesh_cpu_ms_per_write
        );
        rows.push(r);
    }
    if let [first, .., last] = rows.as_slice() {
        println!(
            "mesh CPU per write grew {:.1}x for {:.1}x the devices",
            last.mesh_cpu_ms_per_write / first.mesh_cpu_ms_per_write,
            last.n as f64 / first.n as f64
        );
    }
    if args.json {
        println!("{}", serde_json::json!({ "agents": rows }));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the agent runs; the hub and the device agents started here
    // inherit it.
    blazed::huge_pages::disable();
    let args = Args::parse();
    if !args.agents.is_empty() {
        return agent_meshes(&args).await;
    }
    anyhow::ensure!(args.n >= 2, "--n must be at least 2");
    let n = args.n;

    let hub = TestAgent::start_with(
        sibling_bin("blazed-test-agent"),
        &["--role", "hub", "--name", "hub"],
    )
    .await?;
    let hub_pid = hub.pid().context("the hub has no pid")?;
    let admin = hub.client().await?;
    admin.create_mesh().await?;
    admin.db(DB).create().await?;
    let code = admin.invite(Some(3600), Some(0)).await?.code;
    let invite = Invite::from_code(&code)?;
    let hub_addr: SocketAddr = invite
        .addrs
        .iter()
        .find_map(|a| a.parse().ok())
        .context("the invite lists no address")?;
    println!("hub: pid {hub_pid} at {hub_addr}; {n} simulated devices in this process");

    let endpoints: Vec<quinn::Endpoint> = (0..n.div_ceil(DEVICES_PER_ENDPOINT))
        .map(|_| endpoint("127.0.0.1:0".parse().expect("address"), None))
        .collect::<Result<_, _>>()?;

    // Each device has its key before it joins, as a real one does.
    let made = Instant::now();
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        let identity = Identity::generate()?;
        let (_, client) = tls::quic_configs(
            &identity,
            Arc::new(NoneAccepted),
            Arc::new(transport_config()),
        )?;
        keys.push((identity, client));
    }
    println!(
        "device keys and certificates made in {:.2} s (not counted in the join)",
        made.elapsed().as_secs_f64()
    );

    let (probe_tx, probe_rx) = watch::channel(None);
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        probe: probe_rx,
        arrived: arrived_tx,
        held: (0..n).map(|_| AtomicU64::new(0)).collect(),
        got: (0..n).map(|_| AtomicU64::new(0)).collect(),
    });

    // Joins, all at once; each device starts syncing once it is in.
    let start = Instant::now();
    let mut joins = tokio::task::JoinSet::new();
    for (i, (identity, client)) in keys.into_iter().enumerate() {
        let endpoint = endpoints[i / DEVICES_PER_ENDPOINT].clone();
        let invite = invite.clone();
        let shared = shared.clone();
        joins.spawn(async move {
            let r = join(&endpoint, client, hub_addr, &invite, &identity, i).await;
            let at = start.elapsed();
            let me = identity.device_id();
            let r = r.map(|(conn, control)| {
                let mut store = MemoryStore::new(me);
                store.create_db(DB, wall_ms(), SyncMode::Sync, 0);
                let config = EngineConfig {
                    members: vec![me, invite.inviter],
                    ..EngineConfig::default()
                };
                let (tx, rx) = mpsc::unbounded_channel();
                let device = Device {
                    index: i,
                    me,
                    hub: invite.inviter,
                    conn,
                    engine: Engine::new(me, store, config, wall_ms()),
                    commands: rx,
                    shared,
                };
                tokio::spawn(device.run(control));
                (me, tx)
            });
            (i, r, at)
        });
    }
    let mut joined = Vec::new();
    let mut failures: HashMap<String, usize> = HashMap::new();
    let mut last = Duration::ZERO;
    while let Some(r) = joins.join_next().await {
        let (i, r, at) = r?;
        match r {
            Ok(x) => {
                last = last.max(at);
                joined.push((i, x));
            }
            Err(e) => *failures.entry(format!("{e:#}")).or_default() += 1,
        }
    }
    let failed: usize = failures.values().sum();
    let join_s = last.as_secs_f64();
    println!(
        "join: {} of {n} devices in {join_s:.2} s, {failed} failed",
        joined.len()
    );
    for (why, count) in &failures {
        println!("  {count} x {why}");
    }
    joined.sort_by_key(|(i, _)| *i);
    let (ids, commands): (Vec<DeviceId>, Vec<_>) = joined.into_iter().map(|(_, x)| x).unzip();
    let live = commands.len();
    anyhow::ensure!(
        live >= 2,
        "fewer than two devices joined: nothing to measure"
    );

    // Let the joins' gossip settle, then take the hub's idle figures.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_mb = rss_kib(hub_pid).unwrap_or(0) as f64 / 1024.0;
    println!("hub RSS with {live} devices connected: {rss_mb:.1} MiB");
    let idle_secs = args.seconds.max(1) as f64;
    let before = cpu_seconds(Some(hub_pid)).unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let idle_cpu = cpu_pct(hub_pid, before, idle_secs);
    println!("hub CPU idle with {live} devices connected: {idle_cpu:.1}% of one core");

    // One write at a time, fanned out to all the others.
    let mut fanout = Samples::default();
    let mut incomplete = 0usize;
    for round in 1..=args.rounds as u64 {
        let writer = (round as usize * 7919) % live;
        let (reply, seq) = oneshot::channel();
        let start = Instant::now();
        commands[writer]
            .send(Command::Write(reply))
            .ok()
            .context("a device stopped")?;
        let seq = seq.await.context("the writer stopped")?;
        probe_tx.send_replace(Some(Probe {
            round,
            origin: ids[writer],
            seq,
            start,
        }));
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got < live - 1 {
            match tokio::time::timeout_at(deadline, arrived.recv()).await {
                Ok(Some((r, ms))) if r == round => {
                    fanout.0.push(ms);
                    got += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        incomplete += live - 1 - got;
    }
    let (p50, p99, max) = (fanout.p(50.0), fanout.p(99.0), fanout.p(100.0));
    println!(
        "fan-out of one write to {} devices, {} writes: p50 {p50:.1} ms  p99 {p99:.1} ms  \
         max {max:.1} ms",
        live - 1,
        args.rounds
    );
    if incomplete > 0 {
        println!("  {incomplete} deliveries did not arrive within 10 s");
    }

    // Sustained writes spread over the devices.
    let total = args.rate as u64 * args.seconds;
    let before_held: u64 = shared.held.iter().map(|h| h.load(Ordering::Relaxed)).sum();
    let before = cpu_seconds(Some(hub_pid)).unwrap_or(0.0);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    for w in 0..total {
        tick.tick().await;
        let (reply, _) = oneshot::channel();
        let _ = commands[(w as usize * 31) % live].send(Command::Write(reply));
    }
    let secs = start.elapsed().as_secs_f64();
    let hub_cpu = cpu_pct(hub_pid, before, secs);
    // Every device, the writer included, ends holding every write once.
    let want = before_held + total * live as u64;
    let until = Instant::now() + PATIENCE;
    let mut held: u64;
    loop {
        held = shared.held.iter().map(|h| h.load(Ordering::Relaxed)).sum();
        if held >= want || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = (held - before_held) as f64 / (total * live as u64) as f64;
    if held < want {
        println!(
            "sustained: after {PATIENCE:?} the devices held {:.1}% of the {} deliveries",
            delivered * 100.0,
            total * live as u64
        );
    }
    let settle = start.elapsed().as_secs_f64() - secs;
    println!(
        "sustained: {total} writes at {} per second over {live} devices: hub CPU {hub_cpu:.1}% \
         of one core ({:.2} ms per write); {:.1}% delivered {settle:.2} s after the last write",
        args.rate,
        hub_cpu / 100.0 * secs * 1000.0 / total as f64,
        delivered * 100.0,
    );

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "n": n,
                "joined": live,
                "join_s": join_s,
                "join_failed": failed,
                "hub_rss_mb": rss_mb,
                "fanout_p50_ms": p50,
                "fanout_p99_ms": p99,
                "fanout_max_ms": max,
                "fanout_missing": incomplete,
                "hub_cpu_pct": hub_cpu,
                "hub_idle_cpu_pct": idle_cpu,
                "sustained_delivered": delivered,
                "sustained_settle_s": settle,
            })
        );
    }
    for e in &endpoints {
        e.close(0u32.into(), b"done");
    }
    Ok(())
}
