//! A userspace stand-in for the `netem` qdisc, which this kernel lacks:
//! it takes the packets iptables sends to an NFQUEUE, drops a share of
//! them at random and lets the rest through after a fixed delay, in the
//! order they came.
//!
//! Usage, inside the namespace whose traffic it shapes:
//!
//! ```text
//! iptables-legacy -A OUTPUT -o eth0 -j NFQUEUE --queue-num 0
//! blazedb-netem --delay-ms 50 --loss 0.2 --seed 7
//! ```
//!
//! It prints `ready` once it holds the queue, runs until its standard
//! input closes, and then prints one JSON line with what it did:
//! `{"passed": N, "dropped": N, "vanished": N}` (vanished: packets the
//! kernel dropped while they were held, as when their device went down).
//! Without the rule's `--queue-bypass`, the namespace sends nothing while
//! no delayer runs, so a delayer that dies shows as a dead network rather
//! than as a network without faults.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use blazedb_tests::Rng;
use clap::Parser;
use nfq::{Queue, Verdict};

#[derive(Parser, Debug)]
#[command(about = "Delays and drops the packets of an NFQUEUE")]
struct Args {
    /// The NFQUEUE number the iptables rule sends packets to.
    #[arg(long, default_value_t = 0)]
    queue: u16,
    /// How long each packet is held before it goes on.
    #[arg(long, default_value_t = 50)]
    delay_ms: u64,
    /// The share of packets dropped, from 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seeds the choice of packets to drop.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut queue = Queue::open().context("cannot open a netfilter queue socket (needs root)")?;
    queue
        .bind(args.queue)
        .with_context(|| format!("cannot bind NFQUEUE {}", args.queue))?;
    // A queue that overflows drops, as a full router queue would.
    queue.set_fail_open(args.queue, false)?;
    queue.set_queue_max_len(args.queue, 1 << 16)?;
    // Only the verdict matters, so the kernel need copy little.
    queue.set_copy_range(args.queue, 64)?;
    queue.set_nonblocking(true);

    let done = Arc::new(AtomicBool::new(false));
    {
        let done = done.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            done.store(true, Ordering::Relaxed);
        });
    }
    println!("ready");
    std::io::stdout().flush()?;

    let delay = Duration::from_millis(args.delay_ms);
    let mut rng = Rng::new(args.seed);
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let (mut passed, mut dropped, mut vanished) = (0u64, 0u64, 0u64);
    while !done.load(Ordering::Relaxed) {
        loop {
            match queue.recv() {
                Ok(mut msg) => {
                    if rng.chance(args.loss) {
                        msg.set_verdict(Verdict::Drop);
                        queue.verdict(msg)?;
                        dropped += 1;
                    } else {
                        msg.set_verdict(Verdict::Accept);
                        held.push_back((Instant::now() + delay, msg));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // The kernel answers a verdict on a packet it no longer
                // holds (its device went down, say) with ENOENT, read here
                // like any message: the packet is gone, the queue is fine.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => vanished += 1,
                Err(e) => return Err(e).context("reading the netfilter queue"),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, msg) = held.pop_front().expect("a packet is due");
            queue.verdict(msg)?;
            passed += 1;
        }
        // Packets come and fall due at any time; a millisecond's sleep
        // keeps the added delay within about one millisecond of the aim.
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "{}",
        serde_json::json!({ "passed": passed, "dropped": dropped, "vanished": vanished })
    );
    Ok(())
}
