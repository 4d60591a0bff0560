//! Threads that share long reads with the connection task answering them.
//!
//! A connection's requests are served by one task, so a long run of
//! pipelined gets, or one `get_many` of many ids, would keep a single core
//! busy while the others wait. Such a read is cut into short contiguous
//! parts, which the task and the helpers take in turn until none is left,
//! and the parts are put back together in order, so the answer is the one
//! the task alone would have written. The task never waits for a helper
//! to wake up: if none does, it reads every part itself, and at the end it
//! waits at most for the parts helpers are still reading.
//!
//! The task reads the first part before it wakes anyone: records kept in
//! the record cache read so fast that a helper would cost more to wake
//! than it saves, so a read is shared only when the rest promises to take
//! long ([`SHARE_WHEN_LEFT`]).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Items in a part: few enough that the task seldom waits long for the
/// last part a helper took, enough that taking a part costs little beside
/// reading it.
const ITEMS_PER_PART: usize = 16;
/// The most threads one read is shared among.
const MAX_READ_THREADS: usize = 4;
/// How long the rest of a read must promise to take, read alone, before
/// helpers are woken for it: waking a thread on another core takes tens
/// of microseconds.
const SHARE_WHEN_LEFT: Duration = Duration::from_micros(100);

type ReadJob = Box<dyn FnOnce() + Send>;

/// The helper threads, one fewer than the machine's cores (up to
/// [`MAX_READ_THREADS`] in all), shared by every connection.
struct ReadHelpers {
    count: usize,
    jobs: std::sync::mpsc::Sender<ReadJob>,
}

impl ReadHelpers {
    fn submit(&self, job: ReadJob) {
        // With no helper left the job is dropped, and the caller, which
        // waits only for parts a helper took, reads them all itself.
        let _ = self.jobs.send(job);
    }
}

fn read_helpers() -> &'static ReadHelpers {
    static HELPERS: std::sync::OnceLock<ReadHelpers> = std::sync::OnceLock::new();
    HELPERS.get_or_init(|| {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_READ_THREADS);
        let (tx, rx) = std::sync::mpsc::channel::<ReadJob>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut count = 0;
        for i in 1..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("blazed-read-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            // A panicking read loses only its own part,
                            // which its caller then answers itself.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => break,
                        }
                    }
                });
            if spawned.is_ok() {
                count += 1;
            }
        }
        ReadHelpers { count, jobs: tx }
    })
}

/// Whether a read of `len` items is worth sharing with the helpers.
pub(crate) fn worth_sharing(len: usize) -> bool {
    len >= 2 * ITEMS_PER_PART && read_helpers().count > 0
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A read being shared: its parts, which one is next, what each gave.
struct Shared<T> {
    len: usize,
    part: Arc<dyn Fn(Range<usize>) -> T + Send + Sync>,
    next: AtomicUsize,
    results: Vec<Mutex<Option<T>>>,
    /// Parts read (or given up by a panic).
    done: Mutex<usize>,
    all_done: Condvar,
}

impl<T> Shared<T> {
    fn range(&self, i: usize) -> Range<usize> {
        i * ITEMS_PER_PART..((i + 1) * ITEMS_PER_PART).min(self.len)
    }

    /// Takes parts and reads them until none is left.
    fn work(&self) {
        while self.work_one() {}
    }

    /// Takes the next part and reads it; false when none was left.
    fn work_one(&self) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.results.len() {
            return false;
        }
        // A part that panics is left empty, for the task to read again.
        let read =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.part)(self.range(i))));
        if let Ok(value) = read {
            *lock(&self.results[i]) = Some(value);
        }
        let mut done = lock(&self.done);
        *done += 1;
        if *done == self.results.len() {
            self.all_done.notify_all();
        }
        true
    }
}

/// Runs `part` over `0..len` cut into short contiguous ranges, taken in
/// turn by this thread and the helpers, and returns what each gave, in
/// order. A part that panicked on a helper is run again here.
pub(crate) fn in_parts<T: Send + 'static>(
    len: usize,
    part: Arc<dyn Fn(Range<usize>) -> T + Send + Sync>,
) -> Vec<T> {
    in_parts_sharing_after(len, part, SHARE_WHEN_LEFT)
}

/// [`in_parts`], waking helpers only when the parts after the first
/// promise to take `share_when_left` or more.
fn in_parts_sharing_after<T: Send + 'static>(
    len: usize,
    part: Arc<dyn Fn(Range<usize>) -> T + Send + Sync>,
    share_when_left: Duration,
) -> Vec<T> {
    let parts = len.div_ceil(ITEMS_PER_PART);
    let shared = Arc::new(Shared {
        len,
        part,
        next: AtomicUsize::new(0),
        results: (0..parts).map(|_| Mutex::new(None)).collect(),
        done: Mutex::new(0),
        all_done: Condvar::new(),
    });
    // The first part tells what the rest will cost: records kept in the
    // record cache read so fast that waking a helper would cost more than
    // it saves, while reads from disk tables are worth sharing.
    let started = Instant::now();
    shared.work_one();
    let rest = started.elapsed() * (parts.saturating_sub(1) as u32);
    if rest >= share_when_left {
        let helpers = read_helpers();
        for _ in 0..helpers.count.min(parts.saturating_sub(2)) {
            let shared = shared.clone();
            helpers.submit(Box::new(move || shared.work()));
        }
    }
    shared.work();
    let mut done = lock(&shared.done);
    while *done < parts {
        done = shared
            .all_done
            .wait(done)
            .unwrap_or_else(|e| e.into_inner());
    }
    drop(done);
    (0..parts)
        .map(|i| {
            let value = lock(&shared.results[i]).take();
            value.unwrap_or_else(|| (shared.part)(shared.range(i)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_cover_every_item_once_in_order() {
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 100, 1000, 1001] {
            let parts = in_parts(len, Arc::new(|r: Range<usize>| r.collect::<Vec<_>>()));
            assert_eq!(parts.len(), len.div_ceil(ITEMS_PER_PART));
            let joined: Vec<usize> = parts.into_iter().flatten().collect();
            assert_eq!(joined, (0..len).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_part_that_panics_on_a_helper_is_run_here() {
        let here = std::thread::current().id();
        let parts = in_parts_sharing_after(
            1000,
            Arc::new(move |r: Range<usize>| {
                assert!(std::thread::current().id() == here, "a helper's part fails");
                r.len()
            }),
            Duration::ZERO,
        );
        assert_eq!(parts.iter().sum::<usize>(), 1000);
    }

    /// The thread each part ran on.
    fn threads_of_parts(share_when_left: Duration) -> Vec<std::thread::ThreadId> {
        in_parts_sharing_after(
            1000,
            Arc::new(|_| {
                // A slow read, such as one from disk tables.
                std::thread::sleep(Duration::from_millis(1));
                std::thread::current().id()
            }),
            share_when_left,
        )
    }

    #[test]
    fn a_slow_read_is_shared_and_a_quick_one_is_not() {
        let here = std::thread::current().id();
        let alone = threads_of_parts(Duration::from_secs(3600));
        assert!(
            alone.iter().all(|t| *t == here),
            "a read promising less than the bar stays here"
        );
        if read_helpers().count > 0 {
            let shared = threads_of_parts(Duration::ZERO);
            assert!(
                shared.iter().any(|t| *t != here),
                "helpers took none of 63 slow parts"
            );
        }
    }
}
