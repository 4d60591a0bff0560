//! Message envelopes, in the shape of MessagePack-RPC:
//!
//! - request: `[0, id, method, params]`
//! - response: `[1, id, error, result]`, where exactly one of `error` and
//!   `result` is nil
//! - notification: `[2, method, params]`
//!
//! Each message is one frame (see [`crate::frame`]). Decoding reads only the
//! envelope and hands back the params or result as a byte slice, so the
//! reader can look the method up before decoding them.

use serde::Serialize;

use crate::codec::raw::Reader;
use crate::codec::{self, CodecError};
use crate::error::{ErrorCode, ErrorInfo};
use crate::frame::{self, FrameTooLarge};

/// The envelope type of a request.
pub const TYPE_REQUEST: u8 = 0;
/// The envelope type of a response.
pub const TYPE_RESPONSE: u8 = 1;
/// The envelope type of a notification.
pub const TYPE_NOTIFICATION: u8 = 2;

/// A message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message does not fit in a frame.
    #[error(transparent)]
    TooLarge(#[from] FrameTooLarge),
    /// The value could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A request whose envelope has been decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRequest<'a> {
    /// The request id, echoed in the response.
    pub id: u64,
    /// The method name.
    pub method: &'a str,
    /// The encoded params.
    pub params: &'a [u8],
}

/// A message from the agent whose envelope has been decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawIncoming<'a> {
    /// The answer to request `id`: the encoded result, or an error.
    Response {
        /// The request id.
        id: u64,
        /// The encoded result (every byte after the error slot, not yet
        /// checked to be one whole value: its decoder checks), or the error.
        result: Result<&'a [u8], ErrorInfo>,
    },
    /// A notification, such as change events.
    Notification {
        /// The notification's method name.
        method: &'a str,
        /// The encoded params (every byte after the method, checked by
        /// their decoder).
        params: &'a [u8],
    },
}

/// Decodes a request envelope from a frame's payload.
pub fn decode_request(payload: &[u8]) -> Result<RawRequest<'_>, CodecError> {
    let raw = decode_request_head(payload)?;
    check_params(raw.params)?;
    Ok(raw)
}

/// Decodes a request envelope but its params: `params` is every byte
/// after the method, not yet checked to be one well-formed value. Whoever
/// decodes them checks that anyway, so a request that decodes is not
/// walked twice; one that does not is told apart from a malformed frame by
/// [`check_params`].
pub fn decode_request_head(payload: &[u8]) -> Result<RawRequest<'_>, CodecError> {
    let mut r = Reader::new(payload);
    if r.array_len("a message")? != 4 {
        return Err(CodecError(
            "a request must be an array of 4: [0, id, method, params]".into(),
        ));
    }
    if r.uint("the message type")? != u64::from(TYPE_REQUEST) {
        return Err(CodecError(
            "expected a request (message type 0) from the client".into(),
        ));
    }
    let id = r.uint("the request id")?;
    let method = r.str("the method")?;
    let params = r.bytes(r.remaining(), "the params")?;
    Ok(RawRequest { id, method, params })
}

/// Fails unless `params` is exactly one well-formed MessagePack value,
/// nested no deeper than the codec allows.
pub fn check_params(params: &[u8]) -> Result<(), CodecError> {
    let mut r = Reader::new(params);
    r.value()?;
    r.end()
}

/// Decodes a response or notification envelope from a frame's payload.
pub fn decode_incoming(payload: &[u8]) -> Result<RawIncoming<'_>, CodecError> {
    let mut r = Reader::new(payload);
    let len = r.array_len("a message")?;
    let kind = r.uint("the message type")?;
    let msg = match (kind, len) {
        (1, 4) => {
            let id = r.uint("the request id")?;
            let result = if r.is_nil() {
                r.value()?;
                // The rest, not walked: whoever decodes the result checks
                // that it is one whole value, as for a request's params.
                Ok(r.bytes(r.remaining(), "the result")?)
            } else {
                let err = codec::from_slice::<ErrorInfo>(r.value()?)?;
                r.value()?;
                Err(err)
            };
            RawIncoming::Response { id, result }
        }
        (2, 3) => {
            let method = r.str("the notification method")?;
            let params = r.bytes(r.remaining(), "the params")?;
            RawIncoming::Notification { method, params }
        }
        _ => {
            return Err(CodecError(format!(
                "unexpected message type {kind} with {len} elements"
            )));
        }
    };
    r.end()?;
    Ok(msg)
}

/// The request ids and outcomes (`None` for success, else the error's
/// code) of the response frames in `buf`, whole frames back to back with
/// their length prefixes; other frames are skipped. For counting, so it
/// reads no further into a success than its envelope.
pub fn response_outcomes(buf: &[u8]) -> impl Iterator<Item = (u64, Option<ErrorCode>)> + '_ {
    let mut rest = buf;
    std::iter::from_fn(move || {
        loop {
            let len = frame::frame_len(rest, u32::MAX).ok().flatten()?;
            let payload = rest.get(frame::LEN_PREFIX..len)?;
            rest = &rest[len..];
            let mut r = Reader::new(payload);
            if !matches!(r.array_len("a message"), Ok(4))
                || !matches!(r.uint("the message type"), Ok(1))
            {
                continue;
            }
            let Ok(id) = r.uint("the request id") else {
                continue;
            };
            if r.is_nil() {
                return Some((id, None));
            }
            let code = r
                .value()
                .ok()
                .and_then(|v| codec::from_slice::<ErrorInfo>(v).ok())
                .map_or(ErrorCode::Internal, |e| e.code);
            return Some((id, Some(code)));
        }
    })
}

/// Appends a whole request frame to `out`.
pub fn encode_request<P: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    id: u64,
    method: &str,
    params: &P,
    max_frame: u32,
) -> Result<(), EncodeError> {
    encode_request_with(out, id, method, max_frame, |out| {
        codec::encode_into(out, params)
    })
}

/// Appends a whole request frame to `out` whose params `write` appends as
/// MessagePack it encodes by hand.
pub fn encode_request_with(
    out: &mut Vec<u8>,
    id: u64,
    method: &str,
    max_frame: u32,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
) -> Result<(), EncodeError> {
    let start = frame::begin_frame(out);
    // `[0, id, method, params]`, the head written by hand as serde writes
    // it (a test compares the two).
    out.push(0x94);
    codec::raw::uint(out, u64::from(TYPE_REQUEST));
    codec::raw::uint(out, id);
    codec::raw::str(out, method);
    let body = write(out);
    finish(out, start, body, max_frame)
}

/// Appends a whole success-response frame to `out`.
pub fn encode_response<R: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    id: u64,
    result: &R,
    max_frame: u32,
) -> Result<(), EncodeError> {
    encode_response_with(out, id, max_frame, |out| codec::encode_into(out, result))
}

/// Appends a whole success-response frame to `out` whose result `write`
/// appends as MessagePack it assembled itself, such as values passed on
/// still encoded.
pub fn encode_response_with(
    out: &mut Vec<u8>,
    id: u64,
    max_frame: u32,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
) -> Result<(), EncodeError> {
    let start = frame::begin_frame(out);
    // `[1, id, nil, result]`, the head written by hand as serde writes it.
    out.push(0x94);
    codec::raw::uint(out, u64::from(TYPE_RESPONSE));
    codec::raw::uint(out, id);
    codec::raw::nil(out);
    let body = write(out);
    finish(out, start, body, max_frame)
}

/// Appends a whole error-response frame to `out`.
pub fn encode_error(out: &mut Vec<u8>, id: u64, error: &ErrorInfo) {
    let start = frame::begin_frame(out);
    let body = codec::encode_into(out, &(TYPE_RESPONSE, id, error, ()));
    // An error is a code and a message: it always encodes and always fits.
    if finish(out, start, body, u32::MAX).is_err() {
        out.truncate(start);
    }
}

/// Appends a whole notification frame to `out`.
pub fn encode_notification<P: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    method: &str,
    params: &P,
    max_frame: u32,
) -> Result<(), EncodeError> {
    let start = frame::begin_frame(out);
    let body = codec::encode_into(out, &(TYPE_NOTIFICATION, method, params));
    finish(out, start, body, max_frame)
}

/// How many bytes, at most, the `event` frame carrying one change takes
/// beyond the encoding of the write's body ([`OpBody`](crate::OpBody))
/// that made it: the agent refuses a write whose body is within this of
/// the frame limit, so that every change it makes can be sent.
pub fn change_event_overhead() -> usize {
    use crate::api::{Change, ChangeKind, EVENT_METHOD, EventParams};
    use crate::{Fields, Hlc, OpBody};
    static OVERHEAD: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *OVERHEAD.get_or_init(|| {
        // Field values and names cost the same in both; numbers and the
        // origin (a device id) are taken at their longest.
        let origin = "X".repeat(63);
        let empty = || (String::new(), String::new(), Fields::new());
        let cases = [
            (ChangeKind::Put, {
                let (collection, id, fields) = empty();
                OpBody::Put {
                    collection,
                    id,
                    fields,
                }
            }),
            (ChangeKind::Patch, {
                let (collection, id, set) = empty();
                OpBody::Patch {
                    collection,
                    id,
                    set,
                    unset: Vec::new(),
                }
            }),
        ];
        cases
            .into_iter()
            .map(|(kind, body)| {
                let body_len = body.encode().map_or(0, |b| b.len());
                let params = EventParams {
                    subscription: u64::MAX,
                    changes: vec![Change {
                        cursor: u64::MAX,
                        collection: String::new(),
                        id: String::new(),
                        kind,
                        seq: u64::MAX,
                        fields: Fields::new(),
                        unset: Vec::new(),
                        origin: origin.clone(),
                        hlc: Hlc(u64::MAX),
                        rejected: None,
                    }],
                    cursor: u64::MAX,
                };
                let mut frame = Vec::new();
                let _ = encode_notification(&mut frame, EVENT_METHOD, &params, u32::MAX);
                frame.len().saturating_sub(body_len)
            })
            .max()
            .unwrap_or(0)
    })
}

fn finish(
    out: &mut Vec<u8>,
    start: usize,
    body: Result<(), CodecError>,
    max_frame: u32,
) -> Result<(), EncodeError> {
    if let Err(e) = body {
        out.truncate(start);
        return Err(e.into());
    }
    frame::finish_frame(out, start, max_frame)?;
    Ok(())
}

#[cfg(test)]
mod outcome_tests {
    use super::*;

    #[test]
    fn outcomes_are_read_from_responses_and_notifications_are_skipped() {
        let mut buf = Vec::new();
        encode_response(&mut buf, 7, &"fine", u32::MAX).expect("encode");
        encode_notification(&mut buf, "change", &1u8, u32::MAX).expect("encode");
        encode_error(
            &mut buf,
            9,
            &ErrorInfo::new(ErrorCode::UnknownDatabase, "no such database"),
        );
        let got: Vec<_> = response_outcomes(&buf).collect();
        assert_eq!(got, vec![(7, None), (9, Some(ErrorCode::UnknownDatabase))]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::frame::{DEFAULT_MAX_FRAME, LEN_PREFIX};
    use proptest::prelude::*;

    proptest! {
        /// The heads written by hand are serde's, byte for byte.
        #[test]
        fn request_and_response_heads_are_what_serde_writes(id in any::<u64>(), method in ".{0,40}", param in any::<i64>()) {
            let mut ours = Vec::new();
            encode_request(&mut ours, id, &method, &param, u32::MAX).expect("encode");
            let theirs = codec::to_vec(&(TYPE_REQUEST, id, &method, param)).expect("encode");
            prop_assert_eq!(&ours[LEN_PREFIX..], &theirs[..]);
            let mut ours = Vec::new();
            encode_response(&mut ours, id, &param, u32::MAX).expect("encode");
            let theirs = codec::to_vec(&(TYPE_RESPONSE, id, (), param)).expect("encode");
            prop_assert_eq!(&ours[LEN_PREFIX..], &theirs[..]);
        }
    }

    #[test]
    fn request_round_trips() {
        let mut out = Vec::new();
        encode_request(&mut out, 7, "get", &("x", 1), DEFAULT_MAX_FRAME).expect("encode");
        let req = decode_request(&out[LEN_PREFIX..]).expect("decode");
        assert_eq!(req.id, 7);
        assert_eq!(req.method, "get");
        assert_eq!(
            codec::from_slice::<(String, u8)>(req.params),
            Ok(("x".into(), 1))
        );
    }

    #[test]
    fn responses_and_notifications_round_trip() {
        let mut out = Vec::new();
        encode_response(&mut out, 9, &"ok", DEFAULT_MAX_FRAME).expect("encode");
        let err = ErrorInfo::new(ErrorCode::NotFound, "no such record");
        let second = out.len();
        encode_error(&mut out, 10, &err);
        let third = out.len();
        encode_notification(&mut out, "event", &5u8, DEFAULT_MAX_FRAME).expect("encode");

        let ok = decode_incoming(&out[LEN_PREFIX..second]).expect("decode");
        assert_eq!(
            ok,
            RawIncoming::Response {
                id: 9,
                result: Ok(&codec::to_vec("ok").expect("encode")[..])
            }
        );
        let e = decode_incoming(&out[second + LEN_PREFIX..third]).expect("decode");
        assert_eq!(
            e,
            RawIncoming::Response {
                id: 10,
                result: Err(err)
            }
        );
        let n = decode_incoming(&out[third + LEN_PREFIX..]).expect("decode");
        assert_eq!(
            n,
            RawIncoming::Notification {
                method: "event",
                params: &[5]
            }
        );
    }

    #[test]
    fn oversized_message_is_refused_and_not_written() {
        let mut out = Vec::new();
        let big = vec![0u8; 100];
        let err = encode_request(&mut out, 1, "put", &serde_bytes::Bytes::new(&big), 50);
        assert!(matches!(err, Err(EncodeError::TooLarge(_))));
        assert!(out.is_empty());
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_request(&bytes);
            let _ = decode_incoming(&bytes);
        }
    }
}

#[cfg(test)]
mod overhead_tests {
    use super::*;
    use crate::api::{Change, ChangeKind, EVENT_METHOD, EventParams};
    use crate::{Fields, Hlc, OpBody, Value};

    #[test]
    fn a_write_that_fits_by_the_overhead_makes_an_event_that_fits() {
        let overhead = change_event_overhead();
        assert!((100..400).contains(&overhead), "{overhead}");
        let fields = Fields::from([("big".to_owned(), Value::String("x".repeat(3000)))]);
        let body = OpBody::Put {
            collection: "notes".into(),
            id: "a".into(),
            fields: fields.clone(),
        };
        let max = u32::try_from(body.encode().expect("encode").len() + overhead).expect("small");
        let params = EventParams {
            subscription: u64::MAX,
            changes: vec![Change {
                cursor: u64::MAX,
                collection: "notes".into(),
                id: "a".into(),
                kind: ChangeKind::Put,
                seq: u64::MAX,
                fields,
                unset: Vec::new(),
                origin: "X".repeat(63),
                hlc: Hlc(u64::MAX),
                rejected: None,
            }],
            cursor: u64::MAX,
        };
        let mut frame = Vec::new();
        encode_notification(&mut frame, EVENT_METHOD, &params, max).expect("fits");
    }
}
