//! What the fuzz targets share: feeding bytes to the `frame` decoder the way a
//! `Connection` does (decode after every read, `decode_eof` once the peer closes, stop
//! at the first error), with the codec's contract checked on every outcome. A broken
//! contract panics, which libFuzzer reports as a crash and saves the input.
//!
//! The contract checked here:
//! - a decoded frame is exactly the bytes it consumed (it re-encodes to them), so no
//!   byte is dropped or invented;
//! - `decode` returning `Ok(None)` consumes nothing, and `decode_eof` returning
//!   `Ok(None)` only on an empty buffer (a stream cut inside a frame is an error);
//! - every error is one that malformed input can cause, never `Io` or an encoder's
//!   error;
//! - the read buffer never grows past what the bytes fed and `max_frame_length`
//!   allow, whatever a length prefix claims.

use bytes::BytesMut;
use switchboard::protocol::frame::{Frame, FrameCodec, FrameError};
use tokio_util::codec::{Decoder, Encoder};

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
