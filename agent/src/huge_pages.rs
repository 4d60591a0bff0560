//! Transparent huge pages, turned off for the whole process.
//!
//! The store's memory turns over all the time: every memtable is
//! allocated, filled and dropped, and every batch and sync message is
//! built in fresh buffers. mimalloc asks the kernel for huge pages on its
//! arenas, so each first touch of a region made the kernel find and zero
//! a whole 2 MiB page: a sixth of the agents' samples in a replication run
//! went to zeroing pages, and a put cost 10–20% more CPU. Databases that
//! churn memory this way (Redis, MongoDB) advise against huge pages for
//! the same reason; the agent's heap is small enough that their fewer TLB
//! misses do not pay for it.

/// Turns transparent huge pages off for this process (and what it starts),
/// whatever the system's setting. Call it first thing: it holds for pages
/// touched from then on. Where the kernel has no such switch (not Linux,
/// or before 3.15) nothing changes.
pub fn disable() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory
    // of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
