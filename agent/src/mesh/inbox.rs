//! What the sync driver does with a burst of inputs before the engine
//! sees them: runs of ops a peer sent for one database are joined into one
//! message, so that the store applies them in one commit.
//!
//! The driver calls the store one message at a time and waits for each
//! commit, fsync included. While it waits, a sending peer's next messages
//! (512 ops each) queue up; applied one by one, every 512 ops paid for a
//! commit and an fsync of their own, and the receiver's writer, not the
//! network, held replication back. Joined, they are one apply.
//!
//! Invariant: joining changes what the engine applies in no way but the
//! number of commits. Only `Ops` messages (or only `Chunks` messages) of
//! one session, database and epoch that follow each other are joined (store notices, which the
//! driver only collects, may come between), in the order they came, so
//! the engine sees the same ops in the same order, and its
//! acknowledgement, which names what the replica holds, covers them all.

use blazedb_proto::{DeviceId, Epoch, SyncMessage};

use super::driver::Input;

/// The most ops one joined message holds: about a MiB of op log, one
/// commit of a few milliseconds.
pub(super) const MAX_JOINED_OPS: usize = 4096;

/// Joins `inputs`' runs of `Ops` messages (see the module's doc), keeping
/// everything else as it is and in order.
pub(super) fn join_ops(inputs: Vec<Input>) -> Vec<Input> {
    let mut out: Vec<Input> = Vec::with_capacity(inputs.len());
    // Where in `out` the message the next `Ops` may join is.
    let mut open: Option<usize> = None;
    for input in inputs {
        if let Input::Notice(crate::store::StoreNotice::Committed(_)) = input {
            // The driver only collects these into a set: their place is
            // free.
            out.push(input);
            continue;
        }
        let input = match open {
            Some(i) => match join(&mut out[i], input) {
                None => continue,
                Some(not_joined) => not_joined,
            },
            None => input,
        };
        open = is_ops(&input).then_some(out.len());
        out.push(input);
    }
    out
}

fn is_ops(input: &Input) -> bool {
    run_of(input).is_some()
}

/// What a run of `Ops` (or of `Chunks`) messages shares: session (peer
/// and link), database, epoch, and which of the two they are.
type Run<'a> = (DeviceId, u64, &'a str, Epoch, bool);

/// The run an `Ops` or `Chunks` message belongs to, and how many ops it
/// holds.
fn run_of(input: &Input) -> Option<(Run<'_>, usize)> {
    let Input::Message { peer, link, msg } = input else {
        return None;
    };
    match &**msg {
        SyncMessage::Ops { db, epoch, ops } => {
            Some(((*peer, *link, db.as_str(), *epoch, false), ops.len()))
        }
        SyncMessage::Chunks { db, epoch, chunks } => {
            let ops = chunks.iter().map(|c| c.ids().len()).sum();
            Some(((*peer, *link, db.as_str(), *epoch, true), ops))
        }
        _ => None,
    }
}

/// Appends `next`'s ops to `to` when both are `Ops` (or both `Chunks`) of
/// one session, database and epoch and the sum stays within
/// [`MAX_JOINED_OPS`]; otherwise gives `next` back.
fn join(to: &mut Input, next: Input) -> Option<Input> {
    let joins = match (run_of(to), run_of(&next)) {
        (Some((run, held)), Some((next_run, more))) => {
            run == next_run && held + more <= MAX_JOINED_OPS
        }
        _ => false,
    };
    if !joins {
        return Some(next);
    }
    if let (Input::Message { msg: to, .. }, Input::Message { msg: next, .. }) = (to, next) {
        match (&mut **to, *next) {
            (SyncMessage::Ops { ops, .. }, SyncMessage::Ops { ops: more, .. }) => ops.extend(more),
            (SyncMessage::Chunks { chunks, .. }, SyncMessage::Chunks { chunks: more, .. }) => {
                chunks.extend(more)
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use blazedb_proto::{Hlc, Op};

    use super::*;
    use crate::store::StoreNotice;

    const A: DeviceId = DeviceId([1; 32]);
    const B: DeviceId = DeviceId([2; 32]);

    fn ops(peer: DeviceId, link: u64, db: &str, epoch: u64, seqs: std::ops::Range<u64>) -> Input {
        let ops = seqs
            .map(|seq| Op {
                origin: peer,
                seq,
                hlc: Hlc(seq),
                priority: 0,
                incarnation: 0,
                body: vec![seq as u8],
            })
            .collect();
        Input::Message {
            peer,
            link,
            msg: Box::new(SyncMessage::Ops {
                db: db.into(),
                epoch,
                ops,
            }),
        }
    }

    fn committed(db: &str) -> Input {
        Input::Notice(StoreNotice::Committed(db.into()))
    }

    /// Each input in short: `ops <peer> <link> <db> <epoch> <first>-<last>`,
    /// or its variant's name.
    fn shape(inputs: &[Input]) -> Vec<String> {
        inputs
            .iter()
            .map(|i| match i {
                Input::Message { peer, link, msg } => match &**msg {
                    SyncMessage::Ops { db, epoch, ops } => format!(
                        "ops {} {link} {db} {epoch} {}-{}",
                        peer.0[0],
                        ops.first().map_or(0, |o| o.seq),
                        ops.last().map_or(0, |o| o.seq),
                    ),
                    _ => "message".into(),
                },
                Input::Notice(StoreNotice::Committed(db)) => format!("committed {db}"),
                Input::Notice(StoreNotice::Changed(db)) => format!("changed {db}"),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn a_run_of_ops_from_one_session_becomes_one_message_in_order() {
        let joined = join_ops(vec![
            ops(A, 1, "d", 1, 1..513),
            committed("d"),
            ops(A, 1, "d", 1, 513..1025),
            ops(A, 1, "d", 1, 1025..1100),
        ]);
        assert_eq!(shape(&joined), ["ops 1 1 d 1 1-1099", "committed d"]);
        let Input::Message { msg, .. } = &joined[0] else {
            unreachable!()
        };
        let SyncMessage::Ops { ops, .. } = &**msg else {
            unreachable!()
        };
        let seqs: Vec<u64> = ops.iter().map(|o| o.seq).collect();
        assert_eq!(seqs, (1..1100).collect::<Vec<_>>());
    }

    #[test]
    fn ops_of_another_session_database_or_epoch_are_not_joined() {
        let inputs = vec![
            ops(A, 1, "d", 1, 1..3),
            ops(B, 1, "d", 1, 1..3),
            ops(B, 2, "d", 1, 3..5),
            ops(B, 2, "e", 1, 1..3),
            ops(B, 2, "e", 2, 3..5),
        ];
        let before = shape(&inputs);
        assert_eq!(shape(&join_ops(inputs)), before);
    }

    #[test]
    fn anything_else_between_two_runs_keeps_them_apart() {
        let joined = join_ops(vec![
            ops(A, 1, "d", 1, 1..3),
            Input::Notice(StoreNotice::Changed("d".into())),
            ops(A, 1, "d", 1, 3..5),
            Input::Stop,
            ops(A, 1, "d", 1, 5..7),
        ]);
        assert_eq!(
            shape(&joined),
            [
                "ops 1 1 d 1 1-2",
                "changed d",
                "ops 1 1 d 1 3-4",
                "other",
                "ops 1 1 d 1 5-6"
            ]
        );
    }

    #[test]
    fn a_joined_message_holds_at_most_the_limit() {
        let n = MAX_JOINED_OPS as u64;
        let joined = join_ops(vec![
            ops(A, 1, "d", 1, 1..n),
            ops(A, 1, "d", 1, n..n + 1),
            ops(A, 1, "d", 1, n + 1..n + 3),
        ]);
        assert_eq!(
            shape(&joined),
            [
                format!("ops 1 1 d 1 1-{n}"),
                format!("ops 1 1 d 1 {}-{}", n + 1, n + 2)
            ]
        );
    }

    /// A `Chunks` message of `peer`'s ops `seqs`, one chunk.
    fn chunks(peer: DeviceId, seqs: std::ops::Range<u64>) -> Input {
        let Input::Message { msg, .. } = ops(peer, 1, "d", 1, seqs) else {
            unreachable!()
        };
        let SyncMessage::Ops { ops, .. } = *msg else {
            unreachable!()
        };
        let ids = ops.iter().map(|o| (o.writer(), o.seq)).collect();
        let chunk = blazedb_proto::sync::LogChunk::new(blazedb_proto::log_chunk::of_ops(&ops), ids);
        Input::Message {
            peer,
            link: 1,
            msg: Box::new(SyncMessage::Chunks {
                db: "d".into(),
                epoch: 1,
                chunks: vec![chunk],
            }),
        }
    }

    #[test]
    fn chunks_join_chunks_and_ops_join_ops() {
        let joined = join_ops(vec![
            chunks(A, 1..3),
            chunks(A, 3..5),
            ops(A, 1, "d", 1, 5..7),
            chunks(A, 7..9),
        ]);
        let held: Vec<(bool, Vec<u64>)> = joined
            .iter()
            .map(|i| {
                let Input::Message { msg, .. } = i else {
                    unreachable!()
                };
                match &**msg {
                    SyncMessage::Chunks { chunks, .. } => (
                        true,
                        chunks
                            .iter()
                            .flat_map(|c| c.ids().iter().map(|(_, s)| *s))
                            .collect(),
                    ),
                    SyncMessage::Ops { ops, .. } => (false, ops.iter().map(|o| o.seq).collect()),
                    _ => unreachable!(),
                }
            })
            .collect();
        assert_eq!(
            held,
            [
                (true, vec![1, 2, 3, 4]),
                (false, vec![5, 6]),
                (true, vec![7, 8])
            ]
        );
    }
}
