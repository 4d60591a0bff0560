//! Framing: every message is a big-endian `u32` length followed by that
//! many bytes holding one MessagePack value.
//!
//! The length is checked against the limit before any buffer is sized for
//! the frame, so a peer cannot make the other side allocate by lying.

/// Bytes in the length prefix.
pub const LEN_PREFIX: usize = 4;

/// The default largest frame payload, in bytes (16 MiB).
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// A frame's declared length is over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {len} bytes is over the limit of {max} bytes")]
pub struct FrameTooLarge {
    /// The length the frame declared.
    pub len: u64,
    /// The limit in force.
    pub max: u32,
}

/// Looks at the start of `buf` for a complete frame.
///
/// Returns `Ok(Some(n))` when the first `n` bytes of `buf` are a whole
/// frame (prefix included), `Ok(None)` when more bytes are needed, and an
/// error as soon as the prefix declares a payload over `max`.
pub fn frame_len(buf: &[u8], max: u32) -> Result<Option<usize>, FrameTooLarge> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let total = LEN_PREFIX + payload_len(*prefix, max)?;
    Ok((buf.len() >= total).then_some(total))
}

/// The payload length a frame's prefix declares, or an error if it is over
/// `max`; for readers that take the prefix and the payload separately.
pub fn payload_len(prefix: [u8; LEN_PREFIX], max: u32) -> Result<usize, FrameTooLarge> {
    let len = u32::from_be_bytes(prefix);
    if len > max {
        return Err(FrameTooLarge {
            len: u64::from(len),
            max,
        });
    }
    Ok(len as usize)
}

/// Starts a frame at the end of `out`: reserves the length prefix and
/// returns where the frame begins, for [`finish_frame`].
pub fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    start
}

/// Writes the length of the frame begun at `start` into its prefix.
///
/// If the payload is over `max`, the frame is removed from `out` again and
/// the error says how large it was.
pub fn finish_frame(out: &mut Vec<u8>, start: usize, max: u32) -> Result<(), FrameTooLarge> {
    let len = out.len() - start - LEN_PREFIX;
    match u32::try_from(len) {
        Ok(l) if l <= max => {
            out[start..start + LEN_PREFIX].copy_from_slice(&l.to_be_bytes());
            Ok(())
        }
        _ => {
            out.truncate(start);
            Err(FrameTooLarge {
                len: len as u64,
                max,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_and_whole_frames() {
        let mut out = Vec::new();
        let s = begin_frame(&mut out);
        out.extend_from_slice(b"abc");
        finish_frame(&mut out, s, 10).expect("fits");
        assert_eq!(out, [0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(frame_len(&out[..2], 10), Ok(None));
        assert_eq!(frame_len(&out[..6], 10), Ok(None));
        assert_eq!(frame_len(&out, 10), Ok(Some(7)));
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body_arrives() {
        let buf = u32::MAX.to_be_bytes();
        assert_eq!(
            frame_len(&buf, DEFAULT_MAX_FRAME),
            Err(FrameTooLarge {
                len: u64::from(u32::MAX),
                max: DEFAULT_MAX_FRAME
            })
        );
    }

    #[test]
    fn oversized_payload_is_not_written() {
        let mut out = vec![9];
        let s = begin_frame(&mut out);
        out.extend_from_slice(&[0; 11]);
        assert!(finish_frame(&mut out, s, 10).is_err());
        assert_eq!(out, [9]);
    }
}
