//! Buffers for sync frames, shared by every stream of the process.
//!
//! A sync frame runs to hundreds of kilobytes. Read into a fresh buffer
//! each time, every frame cost its receiver page faults and zeroing
//! again, and encoded into a fresh one, its sender the same. A buffer
//! kept by each stream would pin that much memory for every idle peer
//! (a hub has a thousand). So buffers live in one small pool: a stream
//! takes one only once a frame has begun to arrive, or to encode one, and
//! gives it back when the frame is handled.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// The most buffers the pool keeps: about as many as frames are handled
/// at once.
const POOLED: usize = 8;

/// The largest buffer the pool keeps; one grown past it by a rare large
/// frame is freed.
const KEPT_BYTES: usize = 1 << 20;

/// Buffers kept for the next frames.
struct Pool(Mutex<Vec<Vec<u8>>>);

/// The pool every stream of the process shares.
static POOL: Pool = Pool::new();

impl Pool {
    const fn new() -> Pool {
        Pool(Mutex::new(Vec::new()))
    }

    fn take(&'static self) -> FrameBuffer {
        let pooled = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        FrameBuffer {
            buf: pooled.unwrap_or_default(),
            pool: self,
        }
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > KEPT_BYTES {
            return;
        }
        buf.clear();
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED {
            pool.push(buf);
        }
    }
}

/// An empty buffer from the pool (or a new one), which goes back to the
/// pool when dropped.
pub(crate) struct FrameBuffer {
    buf: Vec<u8>,
    pool: &'static Pool,
}

impl FrameBuffer {
    /// An empty buffer, with room from an earlier frame if the pool has
    /// one.
    pub(crate) fn take() -> FrameBuffer {
        POOL.take()
    }
}

impl Drop for FrameBuffer {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

impl Deref for FrameBuffer {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for FrameBuffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_POOL: Pool = Pool::new();

    #[test]
    fn a_buffer_comes_back_empty_with_its_room_and_a_huge_one_does_not() {
        let mut b = TEST_POOL.take();
        b.extend_from_slice(&[7; 300_000]);
        let at = b.as_ptr();
        drop(b);
        let again = TEST_POOL.take();
        assert_eq!(again.as_ptr(), at, "the buffer went back to the pool");
        assert!(again.is_empty());
        assert!(again.capacity() >= 300_000);
        drop(again);

        let mut huge = TEST_POOL.take();
        huge.reserve(KEPT_BYTES + 1);
        drop(huge);
        let next = TEST_POOL.take();
        assert_eq!(next.capacity(), 0, "a buffer over the limit is freed");
    }

    #[test]
    fn the_pool_keeps_a_few_buffers_at_most() {
        static POOL: Pool = Pool::new();
        let many: Vec<FrameBuffer> = (0..POOLED + 5)
            .map(|_| {
                let mut b = POOL.take();
                b.push(1);
                b
            })
            .collect();
        drop(many);
        assert_eq!(POOL.0.lock().expect("lock").len(), POOLED);
    }
}
