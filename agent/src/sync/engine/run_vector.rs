//! A version vector that keeps the entry of the writer it last touched
//! apart: a message's ops mostly come a writer at a time, in seq order, so
//! reading and moving their writers' entries costs a map look-up a writer
//! rather than two an op.

use blazedb_proto::{DeviceId, VersionVector};

/// A [`VersionVector`] being read and moved op by op (see the module
/// docs); [`RunVector::into_vector`] gives the vector back.
#[derive(Debug)]
pub(super) struct RunVector {
    rest: VersionVector,
    /// The writer touched last and its entry, which `rest` may not hold
    /// yet.
    last: Option<(DeviceId, u64)>,
}

impl RunVector {
    pub(super) fn new(vector: VersionVector) -> RunVector {
        RunVector {
            rest: vector,
            last: None,
        }
    }

    /// The entry of `writer`.
    pub(super) fn get(&mut self, writer: &DeviceId) -> u64 {
        *self.entry(writer)
    }

    /// Sets the entry of `writer`.
    pub(super) fn set(&mut self, writer: &DeviceId, seq: u64) {
        *self.entry(writer) = seq;
    }

    fn entry(&mut self, writer: &DeviceId) -> &mut u64 {
        if self.last.as_ref().is_none_or(|(w, _)| w != writer) {
            if let Some((w, seq)) = self.last.take() {
                self.rest.set(w, seq);
            }
            self.last = Some((*writer, self.rest.get(writer)));
        }
        match &mut self.last {
            Some((_, seq)) => seq,
            None => unreachable!("the entry was just taken out"),
        }
    }

    /// The vector, every entry set put back.
    pub(super) fn into_vector(mut self) -> VersionVector {
        if let Some((w, seq)) = self.last.take() {
            self.rest.set(w, seq);
        }
        self.rest
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Gets and sets in any order, over a few writers, read and leave
        /// what the same on a plain vector do.
        #[test]
        fn reads_and_leaves_what_a_plain_vector_does(
            start in proptest::collection::vec((0u8..4, 0u64..5), 0..4),
            steps in proptest::collection::vec((any::<bool>(), 0u8..4, 0u64..8), 0..40),
        ) {
            let mut plain = VersionVector::new();
            for (w, seq) in start {
                plain.set(DeviceId([w; 32]), seq);
            }
            let mut run = RunVector::new(plain.clone());
            for (is_set, w, seq) in steps {
                let writer = DeviceId([w; 32]);
                if is_set {
                    plain.set(writer, seq);
                    run.set(&writer, seq);
                } else {
                    prop_assert_eq!(run.get(&writer), plain.get(&writer));
                }
            }
            prop_assert_eq!(run.into_vector(), plain);
        }
    }
}
