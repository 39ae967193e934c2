//! What the fuzz targets share: feeding bytes to a built-in decoder the way a
//! `Connection` does (decode after every read, `decode_eof` once the peer closes, stop
//! at the first error), with the codec's contract checked on every outcome. A broken
//! contract panics, which libFuzzer reports as a crash and saves the input.
//!
//! The contract checked for `frame` ([`decode_stream`]):
//! - a decoded frame is exactly the bytes it consumed (it re-encodes to them), so no
//!   byte is dropped or invented;
//! - `decode` returning `Ok(None)` consumes nothing, and `decode_eof` returning
//!   `Ok(None)` only on an empty buffer (a stream cut inside a frame is an error);
//! - every error is one that malformed input can cause, never `Io` or an encoder's
//!   error;
//! - the read buffer never grows past what the bytes fed and `max_frame_length`
//!   allow, whatever a length prefix claims.
//!
//! The contract checked for RESP ([`decode_resp_stream`]), against what
//! [`resp_reader::read`], a second reader of the RESP rules, makes of the whole
//! stream (RESP has several wire forms for one value, so re-encoding cannot show which
//! bytes a value came from):
//! - each decoded value is the one the reader finds next, and the codec has taken
//!   exactly the bytes up to where the reader says it ends; a reply also survives its
//!   own encoding;
//! - a wait happens only while no whole value is buffered and no broken rule is
//!   visible, and it has taken exactly the elements (lines, bulk bodies) that arrived
//!   whole: unlike `frame`'s, a RESP wait may take bytes, as the codec keeps the
//!   finished elements of a partial aggregate;
//! - every error is one that bad input can cause, never `Io` or an encoder's error,
//!   and it is the reader's, with the same fields, on the first call that has the byte
//!   deciding it; `Truncated` comes at the end of the stream only, counting the bytes
//!   of the unfinished element; `decode_eof` returns `Ok(None)` only on an empty
//!   buffer between values;
//! - every call takes bytes from the front of the buffer only, and the read buffer never
//!   grows past what the bytes fed and one 64 KiB reserve step allow, whatever a bulk
//!   length claims.

use bytes::BytesMut;
use switchboard::protocol::frame::{Frame, FrameCodec, FrameError};
use switchboard::protocol::resp::{RespCodec, RespError, RespFrame, RespLimits, RespProtocol};
use switchboard::protocol::Protocol;
use tokio_util::codec::{Decoder, Encoder};

pub mod resp_reader;

use resp_reader::{as_decoded, End, Reading};

/// Bytes in the `frame` protocol's length prefix.
const PREFIX: usize = 4;

/// What a stream of bytes decoded to.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The frames, in order, up to the first error or the end of the stream.
    pub frames: Vec<Frame>,
    /// The error that stopped decoding, as its message, if any.
    pub error: Option<String>,
}

/// Feeds `chunks` one at a time to a codec limited to `max_frame_length`, decoding
/// every frame after each chunk and at end of stream, and checks the codec's contract
/// on every call.
pub fn decode_stream<'a>(
    max_frame_length: usize,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Decoded {
    let mut codec = FrameCodec::new(max_frame_length);
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    for chunk in chunks {
        buffer.extend_from_slice(chunk);
        fed += chunk.len();
        loop {
            let before = buffer.clone();
            let outcome = codec.decode(&mut buffer);
            check_capacity(&buffer, fed, max_frame_length);
            match outcome {
                Ok(Some(frame)) => {
                    check_consumed(&frame, &before, &buffer, max_frame_length);
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buffer, before, "decode waited but consumed bytes");
                    break;
                }
                Err(error) => return stopped(frames, error),
            }
        }
    }
    loop {
        let before = buffer.clone();
        let outcome = codec.decode_eof(&mut buffer);
        check_capacity(&buffer, fed, max_frame_length);
        match outcome {
            Ok(Some(frame)) => {
                check_consumed(&frame, &before, &buffer, max_frame_length);
                frames.push(frame);
            }
            Ok(None) => {
                assert!(
                    before.is_empty(),
                    "decode_eof ended cleanly with {} bytes unread",
                    before.len()
                );
                return Decoded {
                    frames,
                    error: None,
                };
            }
            Err(error) => return stopped(frames, error),
        }
    }
}

/// Decoding stopped at `error`, which must be one malformed input can cause.
fn stopped(frames: Vec<Frame>, error: FrameError) -> Decoded {
    match error {
        FrameError::TooLarge { .. }
        | FrameError::TooShort { .. }
        | FrameError::UnknownKind(_)
        | FrameError::ReservedFlags(_)
        | FrameError::TopicLengthMissing { .. }
        | FrameError::TopicOverrun { .. }
        | FrameError::Truncated { .. } => Decoded {
            frames,
            error: Some(error.to_string()),
        },
        other => panic!("malformed input gave an error it cannot cause: {other:?}"),
    }
}

/// `frame` came out of `before`, leaving `after`: it must re-encode to exactly the
/// bytes it took.
fn check_consumed(frame: &Frame, before: &BytesMut, after: &BytesMut, max_frame_length: usize) {
    let consumed = before.len() - after.len();
    assert_eq!(
        &before[consumed..],
        &after[..],
        "decode consumed from the middle"
    );
    let mut encoded = BytesMut::new();
    FrameCodec::new(max_frame_length)
        .encode(frame, &mut encoded)
        .expect("a decoded frame encodes under the same limit");
    assert_eq!(
        &encoded[..],
        &before[..consumed],
        "decoded frame differs from its bytes"
    );
}

/// The read buffer holds at most what was fed plus one frame of `max_frame_length`;
/// the factor of four leaves room for `BytesMut`'s doubling growth. A length prefix
/// over the limit must not move this at all.
fn check_capacity(buffer: &BytesMut, fed: usize, max_frame_length: usize) {
    let bound = fed
        .saturating_add(PREFIX)
        .saturating_add(max_frame_length)
        .saturating_mul(4);
    assert!(
        buffer.capacity() <= bound,
        "buffer capacity {} exceeds {bound} after {fed} bytes fed (max_frame_length {max_frame_length})",
        buffer.capacity()
    );
}

/// The most the RESP codec reserves at once for the rest of a bulk body.
const RESERVE_STEP: usize = 64 * 1024;

/// What a RESP stream decoded to.
#[derive(Debug, PartialEq, Eq)]
pub struct RespDecoded {
    /// The frames, in order, up to the first error or the end of the stream, each as
    /// the codec encodes it (a reply as its value, a push as the value redis sends).
    pub frames: Vec<Vec<u8>>,
    /// The error that stopped decoding, as its message, if any.
    pub error: Option<String>,
}

/// Feeds `chunks` one at a time to the codec of `RespProtocol::with_limits(limits)`,
/// decoding every frame after each chunk and at end of stream, and checks every call
/// against what [`resp_reader::read`] makes of the whole stream.
pub fn decode_resp_stream<'a>(
    limits: RespLimits,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> RespDecoded {
    let chunks: Vec<&[u8]> = chunks.into_iter().collect();
    let reading = resp_reader::read(&chunks.concat(), limits);
    let mut codec = RespProtocol::with_limits(limits).codec();
    let mut buffer = BytesMut::new();
    let mut fed = 0;
    let mut frames = Vec::new();
    // Each chunk, then `None` for the end of the stream.
    for chunk in chunks.into_iter().map(Some).chain([None]) {
        if let Some(chunk) = chunk {
            buffer.extend_from_slice(chunk);
            fed += chunk.len();
        }
        let at_eof = chunk.is_none();
        loop {
            let before = buffer.clone();
            let capacity_before = buffer.capacity();
            let outcome = if at_eof {
                codec.decode_eof(&mut buffer)
            } else {
                codec.decode(&mut buffer)
            };
            let taken_now = before.len() - buffer.len();
            assert_eq!(
                &before[taken_now..],
                &buffer[..],
                "a call took bytes from the middle"
            );
            check_resp_capacity(&buffer, fed, limits);
            // Bytes of the stream taken so far.
            let taken = fed - buffer.len();
            match outcome {
                Ok(Some(frame)) => {
                    check_resp_value(&frame, taken, &reading, frames.len());
                    frames.push(frame_wire(&frame));
                }
                Ok(None) if at_eof => {
                    assert!(
                        before.is_empty(),
                        "decode_eof ended cleanly with {} bytes unread",
                        before.len()
                    );
                    assert!(
                        matches!(reading.end, End::Clean),
                        "ended cleanly, but {:?}",
                        reading.end
                    );
                    assert_eq!(
                        frames.len(),
                        reading.values.len(),
                        "ended cleanly before a value"
                    );
                    return RespDecoded {
                        frames,
                        error: None,
                    };
                }
                Ok(None) => {
                    check_resp_wait(fed, taken, &reading, frames.len());
                    break;
                }
                Err(error) => {
                    assert!(
                        buffer.capacity() <= capacity_before,
                        "the buffer grew on a call that failed"
                    );
                    check_resp_error(&error, at_eof, fed, buffer.len(), &reading, frames.len());
                    return RespDecoded {
                        frames,
                        error: Some(error.to_string()),
                    };
                }
            }
        }
    }
    unreachable!("decode_eof is called until it ends the stream")
}

/// `frame`, decoded once `taken` bytes of the stream were taken and after `decoded`
/// others, is the value the reader found next, and ends where it does; a reply's value,
/// encoded, decodes to itself.
fn check_resp_value(frame: &RespFrame, taken: usize, reading: &Reading, decoded: usize) {
    let Some((value, end)) = reading.values.get(decoded) else {
        panic!("decoded {frame:?}, which the input lacks");
    };
    assert_eq!(taken, *end, "{frame:?} did not end where its bytes do");
    assert_eq!(
        matches!(frame, RespFrame::Push(_)),
        resp_reader::is_push(value),
        "{frame:?} came of {value:?}: only a push is a push"
    );
    let mut expected = BytesMut::new();
    as_decoded(value).write_to(&mut expected);
    assert_eq!(frame_wire(frame), expected, "{frame:?} came of {value:?}");

    if let RespFrame::Reply(value) = frame {
        let mut encoded = BytesMut::new();
        value.write_to(&mut encoded);
        // Limits out of the way: the encoding's lines may be longer than the ones
        // received (`,1e3` is written `,1000.0`).
        let unlimited = RespLimits::default()
            .max_bulk_length(usize::MAX)
            .max_elements(usize::MAX)
            .max_depth(usize::MAX)
            .max_line_length(usize::MAX);
        let again = RespCodec::new(unlimited)
            .decode(&mut encoded)
            .expect("a reply's encoding decodes")
            .expect("a reply's encoding is a whole value");
        assert!(encoded.is_empty(), "a reply's encoding leaves bytes over");
        assert_eq!(
            frame_wire(&again),
            frame_wire(frame),
            "a reply does not survive its encoding"
        );
    }
}

/// A wait once `fed` bytes have arrived, with `taken` of them taken and `decoded`
/// values decoded: nothing more could be decided, and exactly the elements that arrived
/// whole were taken.
fn check_resp_wait(fed: usize, taken: usize, reading: &Reading, decoded: usize) {
    let whole = reading.values.partition_point(|(_, end)| *end <= fed);
    assert_eq!(decoded, whole, "waited with a whole value buffered");
    if let End::Broken { error, at } = &reading.end {
        assert!(fed < *at, "waited with {error:?} buffered");
    }
    let arrived = reading.element_ends.partition_point(|&end| end <= fed);
    let elements_end = arrived
        .checked_sub(1)
        .map_or(0, |i| reading.element_ends[i]);
    assert_eq!(taken, elements_end, "a wait took part of an element");
}

/// A frame as the codec encodes it, to compare frames by (NaN doubles included).
fn frame_wire(frame: &RespFrame) -> Vec<u8> {
    let mut wire = BytesMut::new();
    RespCodec::default()
        .encode(frame.clone(), &mut wire)
        .expect("a reply or push encodes");
    wire.to_vec()
}

/// Decoding stopped at `error`, returned by `decode_eof` if `at_eof`, once `fed` bytes
/// had arrived and with `buffered` left, after `decoded` values: it must be one bad
/// input can cause, and the one the reader found, decided by bytes that have arrived.
fn check_resp_error(
    error: &RespError,
    at_eof: bool,
    fed: usize,
    buffered: usize,
    reading: &Reading,
    decoded: usize,
) {
    match error {
        RespError::BulkTooLong { .. }
        | RespError::TooManyElements { .. }
        | RespError::TooDeep { .. }
        | RespError::LineTooLong { .. }
        | RespError::UnknownType(_)
        | RespError::InvalidLength(_)
        | RespError::Malformed(_)
        | RespError::Truncated { .. } => {}
        other => panic!("bad input gave an error it cannot cause: {other:?}"),
    }
    assert_eq!(
        decoded,
        reading.values.len(),
        "{error:?} before a whole value"
    );
    match (&reading.end, error) {
        (End::Truncated { from }, RespError::Truncated { buffered: counted }) => {
            assert!(at_eof, "Truncated before the stream ended");
            assert_eq!(
                *counted,
                fed - from,
                "Truncated miscounts the unfinished element"
            );
            assert_eq!(*counted, buffered, "Truncated miscounts the bytes left");
        }
        (
            End::Broken {
                error: expected,
                at,
            },
            _,
        ) => {
            assert!(!at_eof, "decode waited, then decode_eof found {error:?}");
            assert!(*at <= fed, "{error:?} before the byte deciding it arrived");
            assert_eq!(format!("{error:?}"), format!("{expected:?}"));
        }
        (end, _) => panic!("{error:?}, but the input {end:?}"),
    }
}

/// The read buffer holds at most what was fed plus one reserve step for a bulk body
/// (at most `max_bulk_length`); the factor of four leaves room for `BytesMut`'s
/// doubling and for bytes read but not yet reclaimed. A bulk length honoured past the
/// limit or past one step must not move this at all.
fn check_resp_capacity(buffer: &BytesMut, fed: usize, limits: RespLimits) {
    let step = limits.max_bulk_length.min(RESERVE_STEP);
    let bound = fed.saturating_add(step).saturating_add(2).saturating_mul(4) + 64;
    assert!(
        buffer.capacity() <= bound,
        "buffer capacity {} exceeds {bound} after {fed} bytes fed ({limits:?})",
        buffer.capacity()
    );
}

/// `stream` in chunks of the given sizes, cycled (0 is read as 1; no sizes: one chunk).
pub fn chunks<'a>(sizes: &[u8], stream: &'a [u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut remaining = stream;
    let mut sizes = sizes.iter().map(|&size| usize::from(size.max(1))).cycle();
    while !remaining.is_empty() {
        let size = sizes.next().unwrap_or(remaining.len()).min(remaining.len());
        let (chunk, tail) = remaining.split_at(size);
        chunks.push(chunk);
        remaining = tail;
    }
    chunks
}
