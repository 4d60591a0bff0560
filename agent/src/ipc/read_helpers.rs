//! Threads that share long reads with the connection task answering them.
//!
//! A connection's requests are served by one task, so a long run of
//! pipelined gets, or one `get_many` of many ids, would keep a single core
//! busy while the others wait. Such a read is cut into contiguous parts:
//! the task answers the first, helpers the others, and the parts are put
//! back together in order, so the answer is the one the task alone would
//! have written.

use std::ops::Range;
use std::sync::Arc;

/// Items a part must have to be worth handing to another thread.
pub(crate) const ITEMS_PER_PART: usize = 32;
/// The most threads one read is shared among.
const MAX_READ_THREADS: usize = 4;

type ReadJob = Box<dyn FnOnce() + Send>;

/// The helper threads, one fewer than the machine's cores (up to
/// [`MAX_READ_THREADS`] in all), shared by every connection.
struct ReadHelpers {
    count: usize,
    jobs: std::sync::mpsc::Sender<ReadJob>,
}

impl ReadHelpers {
    fn submit(&self, job: ReadJob) {
        // With no helper left the job is dropped, and with it the sender
        // its caller waits on, so the caller answers the part itself.
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

/// How many threads a read of `len` items is shared among: one when it
/// is too short to be worth cutting.
pub(crate) fn threads_for(len: usize) -> usize {
    (read_helpers().count + 1).min(len / ITEMS_PER_PART).max(1)
}

/// Runs `part` over `0..len` cut into [`threads_for`]`(len)` contiguous
/// ranges, the first on this thread and the others on the helpers, and
/// returns what each gave, in order. A part whose helper is gone is run
/// here.
pub(crate) fn in_parts<T: Send + 'static>(
    len: usize,
    part: Arc<dyn Fn(Range<usize>) -> T + Send + Sync>,
) -> Vec<T> {
    let threads = threads_for(len);
    let size = len.div_ceil(threads);
    let range = |i: usize| (i * size).min(len)..((i + 1) * size).min(len);
    let helpers = read_helpers();
    let pending: Vec<_> = (1..threads)
        .map(|i| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let (part, range) = (part.clone(), range(i));
            helpers.submit(Box::new(move || {
                let _ = tx.send(part(range));
            }));
            (rx, i)
        })
        .collect();
    let mut out = Vec::with_capacity(threads);
    out.push(part(range(0)));
    for (rx, i) in pending {
        out.push(rx.recv().unwrap_or_else(|_| part(range(i))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_cover_every_item_once_in_order() {
        for len in [0, 1, 31, 32, 63, 64, 65, 100, 1000, 1001] {
            let parts = in_parts(len, Arc::new(|r: Range<usize>| r.collect::<Vec<_>>()));
            assert_eq!(parts.len(), threads_for(len));
            let joined: Vec<usize> = parts.into_iter().flatten().collect();
            assert_eq!(joined, (0..len).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_part_whose_helper_panics_is_run_here() {
        let here = std::thread::current().id();
        let parts = in_parts(
            1000,
            Arc::new(move |r: Range<usize>| {
                assert!(
                    r.start == 0 || std::thread::current().id() == here,
                    "a helper's part fails"
                );
                r.len()
            }),
        );
        assert_eq!(parts.iter().sum::<usize>(), 1000);
    }
}
