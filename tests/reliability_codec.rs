//! Every built-in protocol's decoder under hostile input, driven the way a
//! `Connection` drives it: bytes arrive in arbitrary chunks, `decode` runs after each
//! chunk until it waits or fails, `decode_eof` runs once the stream ends, and nothing
//! more is fed after the first error.
//!
//! The only built-in protocol today is `frame` ([`FrameProtocol`], whose codec is
//! [`FrameCodec`]); a new built-in protocol gets its own section below. The decoder is
//! always taken from [`Protocol::codec`], as a Connection takes it.
//!
//! What the properties prove, for any bytes and any chunking:
//! - every call gives a frame, a wait, or a [`FrameError`] that malformed input can
//!   cause and whose fields describe the bytes in the buffer; never a panic, an `Io`
//!   error or an encoder's error;
//! - a decoded frame is exactly the bytes it consumed (it re-encodes to them), a wait
//!   consumes nothing, and `decode_eof` ends cleanly only on an empty buffer: no byte
//!   is dropped or invented, and a stream cut inside a frame is `Truncated`;
//! - valid frames followed by garbage come out whole and in order, however they are
//!   split, before the garbage gives its error;
//! - a length prefix over `max_frame_length` is refused on the call that sees its
//!   fourth byte, whatever follows it, and the buffer does not grow for it;
//! - the read buffer stays under 64 KiB while inputs are at most a few KiB and the
//!   limit is at most 4 KiB, although random length prefixes claim up to 4 GiB.
//!
//! `tests/frame_codec.rs` has the example-based tests (each error at its exact byte,
//! the wire layout) and the chunking-invariance properties; this file is about what a
//! hostile peer can do. Run it with:
//!
//! ```text
//! cargo test --all-features --test reliability_codec
//! ```

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{TestCaseError, TestRunner};
use switchboard::protocol::frame::{
    Frame, FrameCodec, FrameError, FrameKind, FrameProtocol, DEFAULT_MAX_FRAME_LENGTH,
};
use switchboard::protocol::Protocol;
use tokio_util::codec::{Decoder, Encoder};

/// Cases per property: enough to reach every check (see
/// `hostile_inputs_reach_every_outcome`), few enough to run in seconds in debug builds.
const CASES: u32 = 512;

/// Bytes in the `frame` protocol's length prefix.
const PREFIX: usize = 4;
/// Bytes after the length prefix that every frame has: kind, flags, id.
const FIXED_HEADER: usize = 10;
/// Bytes in the topic length field.
const TOPIC_LENGTH_FIELD: usize = 2;
/// The `flags` bit that announces a topic.
const FLAG_TOPIC: u8 = 0b0000_0001;
/// The most the read buffer may reach in these tests: inputs of a few KiB, limits of
/// at most 4 KiB (or a refused prefix), and `BytesMut`'s doubling growth fit well
/// inside it; any prefix honoured beyond the limit would not.
const CAPACITY_BOUND: usize = 64 * 1024;

const ALL_KINDS: [FrameKind; 10] = [
    FrameKind::Request,
    FrameKind::Response,
    FrameKind::Error,
    FrameKind::Push,
    FrameKind::Ping,
    FrameKind::Pong,
    FrameKind::Publish,
    FrameKind::PublishOrdered,
    FrameKind::Subscribe,
    FrameKind::Unsubscribe,
];

// ---------------------------------------------------------------------------------
// Driving the decoder
// ---------------------------------------------------------------------------------

/// What a stream of bytes decoded to, fed as a Connection feeds it.
#[derive(Debug)]
struct Run {
    /// The frames, in order, up to the first error or the end of the stream.
    frames: Vec<Frame>,
    /// The error that stopped decoding, if any.
    error: Option<FrameError>,
    /// Bytes of the input fed when decoding stopped: all of them, or up to the end of
    /// the chunk whose decoding failed.
    fed: usize,
    /// Whether the error came from `decode_eof` rather than `decode`.
    error_at_eof: bool,
    /// The largest capacity the read buffer reached.
    peak_capacity: usize,
    /// Which outcomes occurred, by name (for `hostile_inputs_reach_every_outcome`).
    outcomes: BTreeSet<&'static str>,
}

/// Feeds `wire` to the codec of `FrameProtocol::new(max)`, split at `cuts` (sorted
/// positions, repeats allowed: a repeat is an empty chunk, after which `decode` must
/// wait again without consuming), and checks every outcome as it happens.
fn feed(max: usize, wire: &[u8], cuts: &[usize]) -> Result<Run, TestCaseError> {
    let mut codec = FrameProtocol::new(max).codec();
    let mut buffer = BytesMut::new();
    let mut run = Run {
        frames: Vec::new(),
        error: None,
        fed: 0,
        error_at_eof: false,
        peak_capacity: 0,
        outcomes: BTreeSet::new(),
    };
    let ends = cuts.iter().copied().chain([wire.len()]);
    for end in ends {
        buffer.extend_from_slice(&wire[run.fed..end]);
        run.fed = end;
        loop {
            let before = buffer.clone();
            let capacity_before = buffer.capacity();
            let outcome = codec.decode(&mut buffer);
            run.peak_capacity = run.peak_capacity.max(buffer.capacity());
            match outcome {
                Ok(Some(frame)) => {
                    check_frame(&frame, &before, &buffer, max)?;
                    run.outcomes.insert("frame");
                    run.frames.push(frame);
                }
                Ok(None) => {
                    prop_assert_eq!(&buffer, &before, "a wait consumed bytes");
                    if let Some(claimed) = claimed_length(&buffer) {
                        prop_assert!(
                            buffer.len() < PREFIX + claimed,
                            "waited with a whole {claimed}-byte frame buffered"
                        );
                        run.outcomes.insert("wait inside a frame");
                    }
                    break;
                }
                Err(error) => {
                    prop_assert!(
                        buffer.capacity() <= capacity_before,
                        "the buffer grew for a frame that was refused"
                    );
                    run.outcomes
                        .insert(check_error(&error, &before, max, false)?);
                    run.error = Some(error);
                    return Ok(run);
                }
            }
        }
    }
    loop {
        let before = buffer.clone();
        let capacity_before = buffer.capacity();
        let outcome = codec.decode_eof(&mut buffer);
        run.peak_capacity = run.peak_capacity.max(buffer.capacity());
        match outcome {
            Ok(Some(frame)) => {
                check_frame(&frame, &before, &buffer, max)?;
                run.outcomes.insert("frame");
                run.frames.push(frame);
            }
            Ok(None) => {
                prop_assert!(
                    before.is_empty(),
                    "decode_eof ended cleanly with {} bytes unread",
                    before.len()
                );
                run.outcomes.insert("clean end");
                return Ok(run);
            }
            Err(error) => {
                prop_assert!(
                    buffer.capacity() <= capacity_before,
                    "the buffer grew for a frame that was refused"
                );
                run.outcomes
                    .insert(check_error(&error, &before, max, true)?);
                run.error = Some(error);
                run.error_at_eof = true;
                return Ok(run);
            }
        }
    }
}

/// What the length prefix at the start of `buffer` claims, once all four bytes are in.
fn claimed_length(buffer: &[u8]) -> Option<usize> {
    let prefix: [u8; PREFIX] = buffer.get(..PREFIX)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// `frame` came out of `before`, leaving `after`: it took bytes from the front only,
/// and exactly the bytes it re-encodes to.
fn check_frame(
    frame: &Frame,
    before: &BytesMut,
    after: &BytesMut,
    max: usize,
) -> Result<(), TestCaseError> {
    let consumed = before.len() - after.len();
    prop_assert_eq!(
        &before[consumed..],
        &after[..],
        "decode consumed from the middle"
    );
    prop_assert!(
        consumed - PREFIX <= max,
        "a frame over the limit was decoded"
    );
    let mut encoded = BytesMut::new();
    FrameCodec::new(max)
        .encode(frame, &mut encoded)
        .map_err(|error| TestCaseError::fail(format!("decoded frame does not encode: {error}")))?;
    prop_assert_eq!(
        &encoded[..],
        &before[..consumed],
        "the frame is not the bytes it came from"
    );
    Ok(())
}

/// Asserts that `error`, returned by a call made on `buffer`, is one that malformed
/// input can cause and that its fields describe the bytes in `buffer`. Returns the
/// variant's name.
fn check_error(
    error: &FrameError,
    buffer: &[u8],
    max: usize,
    at_eof: bool,
) -> Result<&'static str, TestCaseError> {
    let claimed = claimed_length(buffer);
    match error {
        FrameError::TooLarge { length, max: limit } => {
            prop_assert_eq!(*limit, max);
            prop_assert_eq!(Some(*length), claimed);
            prop_assert!(*length > max);
            Ok("TooLarge")
        }
        FrameError::TooShort { length } => {
            prop_assert_eq!(Some(*length), claimed);
            prop_assert!(*length < FIXED_HEADER && *length <= max);
            Ok("TooShort")
        }
        FrameError::UnknownKind(kind) => {
            prop_assert_eq!(buffer.get(PREFIX), Some(kind));
            prop_assert!(!ALL_KINDS.iter().any(|known| *known as u8 == *kind));
            Ok("UnknownKind")
        }
        FrameError::ReservedFlags(flags) => {
            prop_assert_eq!(buffer.get(PREFIX + 1), Some(flags));
            prop_assert_ne!(flags & !FLAG_TOPIC, 0);
            Ok("ReservedFlags")
        }
        FrameError::TopicLengthMissing { length } => {
            prop_assert_eq!(Some(*length), claimed);
            prop_assert!(
                buffer.len() >= PREFIX + length,
                "the topic was judged before the frame arrived"
            );
            prop_assert_ne!(buffer[PREFIX + 1] & FLAG_TOPIC, 0);
            prop_assert!(length - FIXED_HEADER < TOPIC_LENGTH_FIELD);
            Ok("TopicLengthMissing")
        }
        FrameError::TopicOverrun { topic_len, length } => {
            prop_assert_eq!(Some(*length), claimed);
            prop_assert!(
                buffer.len() >= PREFIX + length,
                "the topic was judged before the frame arrived"
            );
            prop_assert_ne!(buffer[PREFIX + 1] & FLAG_TOPIC, 0);
            let after_header = length - FIXED_HEADER;
            prop_assert!(after_header >= TOPIC_LENGTH_FIELD);
            let at = PREFIX + FIXED_HEADER;
            let field = u16::from_be_bytes([buffer[at], buffer[at + 1]]) as usize;
            prop_assert_eq!(*topic_len, field);
            prop_assert!(field > after_header - TOPIC_LENGTH_FIELD);
            Ok("TopicOverrun")
        }
        FrameError::Truncated { buffered } => {
            prop_assert!(at_eof, "Truncated before the stream ended");
            prop_assert_eq!(*buffered, buffer.len());
            prop_assert!(*buffered > 0);
            prop_assert!(
                !claimed.is_some_and(|claimed| buffer.len() >= PREFIX + claimed),
                "a whole frame was called truncated"
            );
            Ok("Truncated")
        }
        other => Err(TestCaseError::fail(format!(
            "malformed input gave an error it cannot cause: {other:?}"
        ))),
    }
}

/// Sorted cut positions in a `len`-byte input.
fn cut_positions(cuts: &[prop::sample::Index], len: usize) -> Vec<usize> {
    let mut positions: Vec<usize> = cuts.iter().map(|cut| cut.index(len + 1)).collect();
    positions.sort_unstable();
    positions
}

/// `frames` encoded back to back.
fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut codec = FrameCodec::default();
    let mut wire = BytesMut::new();
    for frame in frames {
        codec.encode(frame, &mut wire).expect("valid frame encodes");
    }
    wire.to_vec()
}

// ---------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------

/// A valid frame of at most 92 bytes after the length prefix.
fn small_frame() -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(ALL_KINDS.to_vec()),
        any::<u64>(),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(kind, id, topic, payload)| Frame {
            kind,
            id,
            topic: topic.map(Bytes::from),
            payload: Bytes::from(payload),
        })
}

/// Limits from degenerate (below the fixed header) to a few KiB.
fn max_frame_length() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..=16, 10usize..=4096]
}

/// One piece of a hostile stream for a codec limited to `max`: a valid frame; a forged
/// frame whose length, kind, flags and topic length are each often wrong (lengths
/// around the fixed header, around the limit, or anything a `u32` holds); or noise.
fn hostile_piece(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let limit = u32::try_from(max).unwrap_or(u32::MAX - 1);
    let length = prop_oneof![
        0u32..=(FIXED_HEADER + TOPIC_LENGTH_FIELD) as u32,
        13u32..=160,
        limit.saturating_sub(1)..=limit + 1,
        any::<u32>(),
    ];
    let forged = (
        length,
        prop_oneof![1u8..=10, any::<u8>()],
        prop_oneof![Just(0u8), Just(FLAG_TOPIC), any::<u8>()],
        any::<u64>(),
        prop::option::of(prop_oneof![0u16..=16, any::<u16>()]),
        prop::collection::vec(any::<u8>(), 0..96),
    )
        .prop_map(|(length, kind, flags, id, topic_len, body)| {
            let mut wire = BytesMut::new();
            wire.put_u32(length);
            wire.put_u8(kind);
            wire.put_u8(flags);
            wire.put_u64(id);
            if let Some(topic_len) = topic_len {
                wire.put_u16(topic_len);
            }
            wire.extend_from_slice(&body);
            wire.to_vec()
        });
    prop_oneof![
        3 => small_frame().prop_map(|frame| encode_all(&[frame])),
        3 => forged,
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// A hostile stream of up to 4 KiB, the limit its codec has, and where it is cut.
fn hostile_case() -> impl Strategy<Value = (usize, Vec<u8>, Vec<prop::sample::Index>)> {
    max_frame_length().prop_flat_map(|max| {
        (
            Just(max),
            prop::collection::vec(hostile_piece(max), 0..12).prop_map(|pieces| {
                let mut wire = pieces.concat();
                wire.truncate(4096);
                wire
            }),
            prop::collection::vec(any::<prop::sample::Index>(), 0..24),
        )
    })
}

/// Feeds a hostile case and checks what holds for any input.
fn check_hostile(
    max: usize,
    wire: &[u8],
    cuts: &[prop::sample::Index],
) -> Result<Run, TestCaseError> {
    let run = feed(max, wire, &cut_positions(cuts, wire.len()))?;
    prop_assert!(
        run.peak_capacity < CAPACITY_BOUND,
        "read buffer reached {} bytes",
        run.peak_capacity
    );
    let consumed: usize = run.frames.iter().map(Frame::encoded_len).sum();
    prop_assert!(consumed <= run.fed);
    if run.error.is_none() {
        prop_assert_eq!(
            consumed,
            wire.len(),
            "a clean end means every byte was a frame"
        );
    }
    // What a Connection does next with each frame must not panic either.
    let protocol = FrameProtocol::new(max);
    for frame in &run.frames {
        let _ = protocol.classify(frame.clone());
    }
    Ok(run)
}

// ---------------------------------------------------------------------------------
// Properties of the `frame` protocol's decoder
// ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Hostile bytes in random chunks: every call gives a frame, a wait or a typed error
    /// that describes the bytes, nothing is lost, and the buffer stays small.
    #[test]
    fn hostile_bytes_in_random_chunks_give_only_frames_waits_and_typed_errors(
        (max, wire, cuts) in hostile_case(),
    ) {
        check_hostile(max, &wire, &cuts)?;
    }

    /// Valid frames, then garbage (possibly none), split anywhere: the frames come out
    /// exactly as sent before the garbage has any effect, and the split changes nothing.
    #[test]
    fn valid_frames_then_garbage_decode_the_same_however_split(
        sent in prop::collection::vec(small_frame(), 0..8),
        garbage in prop_oneof![
            Just(Vec::new()),
            prop::collection::vec(any::<u8>(), 1..64),
            hostile_piece(1024),
        ],
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        const MAX: usize = 1024;
        let valid = encode_all(&sent);
        let wire = [&valid[..], &garbage[..]].concat();

        let split = feed(MAX, &wire, &cut_positions(&cuts, wire.len()))?;
        let whole = feed(MAX, &wire, &[])?;
        let byte_by_byte = feed(MAX, &wire, &(1..wire.len()).collect::<Vec<_>>())?;

        for run in [&split, &whole, &byte_by_byte] {
            prop_assert!(run.frames.len() >= sent.len(), "{:?}", run.error);
            prop_assert_eq!(&run.frames[..sent.len()], &sent[..]);
            prop_assert_eq!(&run.frames, &whole.frames);
            prop_assert_eq!(
                run.error.as_ref().map(ToString::to_string),
                whole.error.as_ref().map(ToString::to_string)
            );
            if let Some(error) = &run.error {
                prop_assert!(!garbage.is_empty(), "valid frames alone failed: {}", error);
            }
        }
        if garbage.is_empty() {
            prop_assert_eq!(&whole.frames, &sent);
        }
    }

    /// A length prefix over the limit, after some valid frames and before anything at
    /// all, is refused on the call that sees its fourth byte, at the end of the stream
    /// too, and never reserved.
    #[test]
    fn length_prefix_over_the_limit_is_refused_at_its_fourth_byte_without_reserving(
        (max, claimed) in prop_oneof![
            Just(DEFAULT_MAX_FRAME_LENGTH),
            FIXED_HEADER..=65_536usize,
        ]
        .prop_flat_map(|max| (Just(max), (max as u32 + 1)..=u32::MAX)),
        pings in prop::collection::vec(any::<u64>(), 0..4),
        after_prefix in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        stream_ends_after_prefix in any::<bool>(),
    ) {
        let pings: Vec<Frame> = pings.into_iter().map(Frame::ping).collect();
        let mut wire = encode_all(&pings);
        let prefix_start = wire.len();
        wire.extend_from_slice(&claimed.to_be_bytes());
        if !stream_ends_after_prefix {
            wire.extend_from_slice(&after_prefix);
        }
        let cuts = cut_positions(&cuts, wire.len());

        let run = feed(max, &wire, &cuts)?;
        prop_assert_eq!(&run.frames, &pings);
        match &run.error {
            Some(FrameError::TooLarge { length, max: limit }) => {
                prop_assert_eq!(*length, claimed as usize);
                prop_assert_eq!(*limit, max);
            }
            other => prop_assert!(false, "expected TooLarge, got {:?}", other),
        }
        // Refused in the first chunk that completed the prefix, not later.
        let first_end_with_prefix = cuts
            .iter()
            .copied()
            .chain([wire.len()])
            .find(|&end| end >= prefix_start + PREFIX);
        prop_assert_eq!(Some(run.fed), first_end_with_prefix);
        prop_assert!(run.peak_capacity < CAPACITY_BOUND, "{}", run.peak_capacity);
    }

    /// Valid frames cut anywhere at the end of the stream: the whole frames come out,
    /// then `Truncated` with the bytes of the unfinished one, or a clean end if the cut
    /// fell between frames.
    #[test]
    fn stream_cut_anywhere_yields_the_whole_frames_then_truncated(
        sent in prop::collection::vec(small_frame(), 1..8),
        cut in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let wire = encode_all(&sent);
        let cut = cut.index(wire.len() + 1);
        let received = &wire[..cut];

        let mut whole_frames = 0;
        let mut boundary = 0;
        for frame in &sent {
            if boundary + frame.encoded_len() > cut {
                break;
            }
            boundary += frame.encoded_len();
            whole_frames += 1;
        }

        let run = feed(DEFAULT_MAX_FRAME_LENGTH, received, &cut_positions(&cuts, cut))?;
        prop_assert_eq!(&run.frames[..], &sent[..whole_frames]);
        if cut == boundary {
            prop_assert!(run.error.is_none(), "{:?}", run.error);
        } else {
            prop_assert!(run.error_at_eof);
            match &run.error {
                Some(FrameError::Truncated { buffered }) => {
                    prop_assert_eq!(*buffered, cut - boundary);
                }
                other => prop_assert!(false, "expected Truncated, got {:?}", other),
            }
        }
    }
}

/// The hostile generator is not vacuous: over a fixed-seed run it reaches every error
/// the decoder has for malformed input, decodes frames, waits inside frames and ends
/// cleanly. If the codec gains a check, add its variant here and to `check_error`.
#[test]
fn hostile_inputs_reach_every_outcome() {
    let strategy = hostile_case();
    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeSet::new();
    for _ in 0..CASES {
        let (max, wire, cuts) = strategy.new_tree(&mut runner).unwrap().current();
        let run = check_hostile(max, &wire, &cuts).unwrap_or_else(|failure| {
            panic!("max {max}, wire {wire:02x?}, cuts {cuts:?}: {failure}")
        });
        seen.extend(run.outcomes);
    }
    let expected: BTreeSet<&str> = [
        "frame",
        "wait inside a frame",
        "clean end",
        "TooLarge",
        "TooShort",
        "UnknownKind",
        "ReservedFlags",
        "TopicLengthMissing",
        "TopicOverrun",
        "Truncated",
    ]
    .into();
    assert_eq!(seen, expected);
}
