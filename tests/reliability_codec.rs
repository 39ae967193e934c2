//! Every built-in protocol's decoder under hostile input, driven the way a
//! `Connection` drives it: bytes arrive in arbitrary chunks, `decode` runs after each
//! chunk until it waits or fails, `decode_eof` runs once the stream ends, and nothing
//! more is fed after the first error.
//!
//! There are two built-in protocols, with a section each: `frame` ([`FrameProtocol`],
//! whose codec is [`FrameCodec`]) and RESP ([`RespProtocol`], whose codec is
//! [`RespCodec`]); a new built-in protocol gets a section of its own. One driver,
//! `drive`, feeds them all, and the decoder is always taken from [`Protocol::codec`],
//! as a Connection takes it. On every call the driver checks what any decoder owes: it
//! takes bytes from the front of the buffer only, a call that fails does not grow the
//! buffer, and `decode_eof` ends cleanly only on an empty buffer.
//!
//! What the `frame` properties prove, for any bytes and any chunking:
//! - every call gives a frame, a wait, or a [`FrameError`] that malformed input can
//!   cause and whose fields describe the bytes in the buffer; never a panic, an `Io`
//!   error or an encoder's error;
//! - a decoded frame is exactly the bytes it consumed (it re-encodes to them), a wait
//!   consumes nothing, and a stream cut inside a frame is `Truncated`: no byte is
//!   dropped or invented;
//! - valid frames followed by garbage come out whole and in order, however they are
//!   split, before the garbage gives its error;
//! - a length prefix over `max_frame_length` is refused on the call that sees its
//!   fourth byte, whatever follows it, and the buffer does not grow for it;
//! - the read buffer stays under 64 KiB while inputs are at most a few KiB and the
//!   limit is at most 4 KiB, although random length prefixes claim up to 4 GiB.
//!
//! What the RESP properties prove, for any bytes, any chunking and any [`RespLimits`]
//! (none, `usize::MAX`, included):
//! - every call gives a value, a wait, or a [`RespError`] that bad input can cause
//!   (`BulkTooLong`, `TooManyElements`, `TooDeep`, `LineTooLong`, `UnknownType`,
//!   `InvalidLength`, `Malformed`, and `Truncated` once the stream ends); never a
//!   panic, an `Io` error or an encoder's (`EmptyCommand`, `SubscribeArity`);
//! - RESP has several wire forms for one value (RESP2's and RESP3's nulls and errors,
//!   `+3` or `003` as a length, `1e3` as a double), so re-encoding a value cannot show
//!   which bytes it came from. Instead a second reader, `read` (in
//!   `fuzz/src/resp_reader.rs`, shared with the fuzz harness), says what the rules
//!   make of the whole input: plain recursion over a slice, sharing no code with the
//!   codec, which is a state machine resumed as bytes arrive. Every call must agree
//!   with it: the same values, each ending at the same byte; the same error with the
//!   same fields, on the call whose chunk brought the byte that decides it; a wait
//!   only while nothing more can be decided, having taken exactly the elements (lines
//!   and bulk bodies) that arrived whole. Unlike a `frame` wait, a RESP wait may take
//!   bytes: the codec keeps a partial aggregate's finished elements, not their bytes;
//! - valid values followed by garbage come out as sent, and the values and the error
//!   are the same in random chunks, all at once and byte by byte; a stream cut
//!   anywhere gives the whole values, then `Truncated` with the bytes of the
//!   unfinished element;
//! - a claim over a limit (bulk length, element count, nesting depth, line length) is
//!   refused on the call that completes its header, whatever follows, and nothing is
//!   reserved for it; a claim within the limit reserves at most one 64 KiB step;
//! - aggregates nested 100,000 deep are `TooDeep` at the limit, not a stack overflow.
//!
//! `tests/frame_codec.rs` and `tests/resp_codec.rs` have the example-based tests (each
//! error at its exact byte, the wire layouts, round trips, replies told from pushes);
//! this file is about what a hostile peer can do. Run it with:
//!
//! ```text
//! cargo test --all-features --test reliability_codec
//! ```

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{TestCaseError, TestRunner};
use switchboard::protocol::frame::{
    Frame, FrameCodec, FrameError, FrameKind, FrameProtocol, DEFAULT_MAX_FRAME_LENGTH,
};
use switchboard::protocol::resp::{
    PushKind, RespCodec, RespError, RespFrame, RespLimits, RespProtocol, Value,
};
use switchboard::protocol::Protocol;
use tokio_util::codec::{Decoder, Encoder};

/// The second reader of the RESP rules, [`read`]: the oracle for the RESP properties.
/// It lives with the fuzz harness, which checks against it too, so that there is one
/// copy of it.
#[path = "../fuzz/src/resp_reader.rs"]
mod resp_reader;

use resp_reader::{as_decoded, integer, is_push, message_kind, push_items, read, End, Reading};

/// Cases per property: enough to reach every check (see the `..._reach_every_outcome`
/// tests), few enough to run in seconds in debug builds.
const CASES: u32 = 512;

// ---------------------------------------------------------------------------------
// Driving any decoder
// ---------------------------------------------------------------------------------

/// What a stream of bytes decoded to, fed as a Connection feeds it.
#[derive(Debug)]
struct Run<Item, Error> {
    /// What decoded, in order, up to the first error or the end of the stream.
    items: Vec<Item>,
    /// The error that stopped decoding, if any.
    error: Option<Error>,
    /// Bytes of the input fed when decoding stopped: all of them, or up to the end of
    /// the chunk whose decoding failed.
    fed: usize,
    /// Whether the error came from `decode_eof` rather than `decode`.
    error_at_eof: bool,
    /// The largest capacity the read buffer reached.
    peak_capacity: usize,
    /// Which outcomes occurred, by name (for the `..._reach_every_outcome` tests).
    outcomes: BTreeSet<String>,
}

/// One call of `decode` or `decode_eof`, as a protocol's checks see it.
struct Call<'a> {
    /// Whether the call was `decode_eof`.
    at_eof: bool,
    /// Bytes of the input fed before the call.
    fed: usize,
    /// The read buffer before the call.
    before: &'a BytesMut,
    /// The read buffer after the call.
    after: &'a BytesMut,
}

impl Call<'_> {
    /// Bytes of the input the decoder has taken so far, this call's included.
    fn taken(&self) -> usize {
        self.fed - self.after.len()
    }
}

/// Feeds `wire` to `decoder` split at `cuts` (sorted positions, repeats allowed: a
/// repeat is an empty chunk), as a Connection does. The driver checks each call for
/// what any decoder owes, then hands it to `check`, which checks what the protocol
/// owes and names the outcome (`None`: nothing worth recording).
fn drive<D: Decoder>(
    mut decoder: D,
    wire: &[u8],
    cuts: &[usize],
    mut check: impl FnMut(
        &Call<'_>,
        &Result<Option<D::Item>, D::Error>,
    ) -> Result<Option<String>, TestCaseError>,
) -> Result<Run<D::Item, D::Error>, TestCaseError> {
    let mut buffer = BytesMut::new();
    let mut run = Run {
        items: Vec::new(),
        error: None,
        fed: 0,
        error_at_eof: false,
        peak_capacity: 0,
        outcomes: BTreeSet::new(),
    };
    // Each chunk's end, then `None` for the end of the stream.
    let chunk_ends = cuts.iter().copied().chain([wire.len()]).map(Some);
    for chunk_end in chunk_ends.chain([None]) {
        if let Some(end) = chunk_end {
            buffer.extend_from_slice(&wire[run.fed..end]);
            run.fed = end;
        }
        let at_eof = chunk_end.is_none();
        loop {
            let before = buffer.clone();
            let capacity_before = buffer.capacity();
            let outcome = if at_eof {
                decoder.decode_eof(&mut buffer)
            } else {
                decoder.decode(&mut buffer)
            };
            run.peak_capacity = run.peak_capacity.max(buffer.capacity());
            prop_assert!(buffer.len() <= before.len(), "a call added bytes");
            let taken = before.len() - buffer.len();
            prop_assert_eq!(
                &before[taken..],
                &buffer[..],
                "a call took bytes from the middle"
            );
            match &outcome {
                Ok(None) if at_eof => prop_assert!(
                    before.is_empty(),
                    "decode_eof ended cleanly with {} bytes unread",
                    before.len()
                ),
                Err(_) => prop_assert!(
                    buffer.capacity() <= capacity_before,
                    "the buffer grew on a call that failed"
                ),
                _ => {}
            }
            let call = Call {
                at_eof,
                fed: run.fed,
                before: &before,
                after: &buffer,
            };
            if let Some(name) = check(&call, &outcome)? {
                run.outcomes.insert(name);
            }
            match outcome {
                Ok(Some(item)) => run.items.push(item),
                Ok(None) if at_eof => return Ok(run),
                Ok(None) => break,
                Err(error) => {
                    run.error = Some(error);
                    run.error_at_eof = at_eof;
                    return Ok(run);
                }
            }
        }
    }
    unreachable!("decode_eof is called until it ends the stream")
}

/// Sorted cut positions in a `len`-byte input.
fn cut_positions(cuts: &[Index], len: usize) -> Vec<usize> {
    let mut positions: Vec<usize> = cuts.iter().map(|cut| cut.index(len + 1)).collect();
    positions.sort_unstable();
    positions
}

/// The first chunk end at or after `position`: where a driver fed `cuts` stops feeding
/// if the byte before `position` is what fails.
fn first_end_reaching(cuts: &[usize], len: usize, position: usize) -> Option<usize> {
    cuts.iter()
        .copied()
        .chain([len])
        .find(|&end| end >= position)
}

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

// ---------------------------------------------------------------------------------
// `frame`: checking each call
// ---------------------------------------------------------------------------------

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

/// Feeds `wire` to the codec of `FrameProtocol::new(max)`, split at `cuts`, and checks
/// every outcome as it happens.
fn feed(max: usize, wire: &[u8], cuts: &[usize]) -> Result<Run<Frame, FrameError>, TestCaseError> {
    drive(
        FrameProtocol::new(max).codec(),
        wire,
        cuts,
        |call, outcome| {
            let name = match outcome {
                Ok(Some(frame)) => {
                    check_frame(frame, call.before, call.after, max)?;
                    "frame"
                }
                Ok(None) if call.at_eof => "clean end",
                Ok(None) => {
                    prop_assert_eq!(call.after, call.before, "a wait consumed bytes");
                    let Some(claimed) = claimed_length(call.after) else {
                        return Ok(None);
                    };
                    prop_assert!(
                        call.after.len() < PREFIX + claimed,
                        "waited with a whole {claimed}-byte frame buffered"
                    );
                    "wait inside a frame"
                }
                Err(error) => check_error(error, call.before, max, call.at_eof)?,
            };
            Ok(Some(name.to_owned()))
        },
    )
}

/// What the length prefix at the start of `buffer` claims, once all four bytes are in.
fn claimed_length(buffer: &[u8]) -> Option<usize> {
    let prefix: [u8; PREFIX] = buffer.get(..PREFIX)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// `frame` came out of `before`, leaving `after` (the driver has checked that it took
/// bytes from the front only): it took exactly the bytes it re-encodes to.
fn check_frame(
    frame: &Frame,
    before: &BytesMut,
    after: &BytesMut,
    max: usize,
) -> Result<(), TestCaseError> {
    let consumed = before.len() - after.len();
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
            prop_assert!(!FrameKind::ALL.iter().any(|known| *known as u8 == *kind));
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
// `frame`: strategies
// ---------------------------------------------------------------------------------

/// A valid frame of at most 92 bytes after the length prefix.
fn small_frame() -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(FrameKind::ALL.to_vec()),
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
fn hostile_case() -> impl Strategy<Value = (usize, Vec<u8>, Vec<Index>)> {
    max_frame_length().prop_flat_map(|max| {
        (
            Just(max),
            prop::collection::vec(hostile_piece(max), 0..12).prop_map(|pieces| {
                let mut wire = pieces.concat();
                wire.truncate(4096);
                wire
            }),
            prop::collection::vec(any::<Index>(), 0..24),
        )
    })
}

/// Feeds a hostile case and checks what holds for any input.
fn check_hostile(
    max: usize,
    wire: &[u8],
    cuts: &[Index],
) -> Result<Run<Frame, FrameError>, TestCaseError> {
    let run = feed(max, wire, &cut_positions(cuts, wire.len()))?;
    prop_assert!(
        run.peak_capacity < CAPACITY_BOUND,
        "read buffer reached {} bytes",
        run.peak_capacity
    );
    let consumed: usize = run.items.iter().map(Frame::encoded_len).sum();
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
    for frame in &run.items {
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
        cuts in prop::collection::vec(any::<Index>(), 0..24),
    ) {
        const MAX: usize = 1024;
        let valid = encode_all(&sent);
        let wire = [&valid[..], &garbage[..]].concat();

        let split = feed(MAX, &wire, &cut_positions(&cuts, wire.len()))?;
        let whole = feed(MAX, &wire, &[])?;
        let byte_by_byte = feed(MAX, &wire, &(1..wire.len()).collect::<Vec<_>>())?;

        for run in [&split, &whole, &byte_by_byte] {
            prop_assert!(run.items.len() >= sent.len(), "{:?}", run.error);
            prop_assert_eq!(&run.items[..sent.len()], &sent[..]);
            prop_assert_eq!(&run.items, &whole.items);
            prop_assert_eq!(
                run.error.as_ref().map(ToString::to_string),
                whole.error.as_ref().map(ToString::to_string)
            );
            if let Some(error) = &run.error {
                prop_assert!(!garbage.is_empty(), "valid frames alone failed: {}", error);
            }
        }
        if garbage.is_empty() {
            prop_assert_eq!(&whole.items, &sent);
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
        cuts in prop::collection::vec(any::<Index>(), 0..8),
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
        prop_assert_eq!(&run.items, &pings);
        match &run.error {
            Some(FrameError::TooLarge { length, max: limit }) => {
                prop_assert_eq!(*length, claimed as usize);
                prop_assert_eq!(*limit, max);
            }
            other => prop_assert!(false, "expected TooLarge, got {:?}", other),
        }
        // Refused in the first chunk that completed the prefix, not later.
        prop_assert_eq!(
            Some(run.fed),
            first_end_reaching(&cuts, wire.len(), prefix_start + PREFIX)
        );
        prop_assert!(run.peak_capacity < CAPACITY_BOUND, "{}", run.peak_capacity);
    }

    /// Valid frames cut anywhere at the end of the stream: the whole frames come out,
    /// then `Truncated` with the bytes of the unfinished one, or a clean end if the cut
    /// fell between frames.
    #[test]
    fn stream_cut_anywhere_yields_the_whole_frames_then_truncated(
        sent in prop::collection::vec(small_frame(), 1..8),
        cut in any::<Index>(),
        cuts in prop::collection::vec(any::<Index>(), 0..16),
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
        prop_assert_eq!(&run.items[..], &sent[..whole_frames]);
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
    let expected: BTreeSet<String> = [
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
    .map(String::from)
    .into();
    assert_eq!(seen, expected);
}

// ---------------------------------------------------------------------------------
// RESP: checking each call
// ---------------------------------------------------------------------------------

/// The type bytes RESP2 and RESP3 define, streamed types aside.
const RESP_TYPES: &[u8] = b"+-:$*_#,(!=%~>|";
/// The most the codec reserves at once for the rest of a bulk body.
const RESERVE_STEP: usize = 64 * 1024;

/// Feeds `wire` to the codec of `RespProtocol::with_limits(limits)`, split at `cuts`,
/// and checks every call against what [`read`] makes of the whole input.
fn feed_resp(
    limits: RespLimits,
    wire: &[u8],
    cuts: &[usize],
) -> Result<Run<RespFrame, RespError>, TestCaseError> {
    let reading = read(wire, limits);
    let mut decoded = 0;
    let codec = RespProtocol::with_limits(limits).codec();
    drive(codec, wire, cuts, |call, outcome| {
        let taken = call.taken();
        match outcome {
            Ok(Some(frame)) => {
                let Some((value, end)) = reading.values.get(decoded) else {
                    return Err(fail(format!("decoded {frame:?}, which the input lacks")));
                };
                prop_assert_eq!(taken, *end, "the value did not end where its bytes do");
                decoded += 1;
                check_resp_frame(frame, value).map(Some)
            }
            Ok(None) if call.at_eof => {
                prop_assert!(
                    matches!(reading.end, End::Clean),
                    "ended cleanly, but {:?}",
                    reading.end
                );
                prop_assert_eq!(decoded, reading.values.len());
                Ok(Some("clean end".to_owned()))
            }
            Ok(None) => {
                // Nothing more could be decided: no whole value is left, and the byte
                // that breaks a rule, if any, has not arrived.
                let whole = reading.values.partition_point(|(_, end)| *end <= call.fed);
                prop_assert_eq!(decoded, whole, "waited with a whole value buffered");
                if let End::Broken { at, .. } = reading.end {
                    prop_assert!(call.fed < at, "waited with a broken rule buffered");
                }
                // Exactly the elements that arrived whole were taken.
                let arrived = reading.element_ends.partition_point(|&end| end <= call.fed);
                let elements_end = arrived
                    .checked_sub(1)
                    .map_or(0, |i| reading.element_ends[i]);
                prop_assert_eq!(taken, elements_end, "a wait took part of an element");
                let value_start = decoded.checked_sub(1).map_or(0, |i| reading.values[i].1);
                let name = if reading.body_starts.contains(&taken) {
                    "wait for a bulk body"
                } else if taken > value_start {
                    "wait inside a value"
                } else {
                    "wait for a value"
                };
                Ok(Some(name.to_owned()))
            }
            Err(error) => check_resp_error(error, call, &reading, limits, decoded).map(Some),
        }
    })
}

/// `frame` is what the codec makes of `value`, a top-level value [`read`] found: a
/// reply, or for a `>` push (an attribute before it or not) a push (no subscribe was
/// written, so no push confirms one).
/// Returns the outcome's name.
fn check_resp_frame(frame: &RespFrame, value: &Value) -> Result<String, TestCaseError> {
    let (decoded, name) = match (frame, value) {
        (RespFrame::Push(push), value) if is_push(value) => {
            let items = push_items(value).expect("a push");
            let name = match message_kind(items) {
                Some(kind) => {
                    prop_assert_eq!(&push.kind, &kind);
                    "message push"
                }
                None => {
                    prop_assert!(matches!(push.kind, PushKind::Other(_)), "{:?}", push);
                    "push"
                }
            };
            (push.to_value(), name)
        }
        (RespFrame::Reply(reply), value) if !is_push(value) => (reply.clone(), "reply"),
        (frame, value) => return Err(fail(format!("{frame:?} came of {value:?}"))),
    };
    prop_assert!(
        same(&decoded, &as_decoded(value)),
        "{frame:?} came of {value:?}"
    );
    Ok(name.to_owned())
}

/// Whether two values are the same, NaN doubles included: whether they encode alike.
fn same(a: &Value, b: &Value) -> bool {
    encode_values([a]) == encode_values([b])
}

/// Asserts that `error`, returned by `call`, is one that bad input can cause; that it
/// is the one `reading` says the input ends with, on a call that has the byte deciding
/// it (`Truncated`: at the end of the stream, counting the bytes of the unfinished
/// element); and that its fields agree with `limits`. Returns the variant's name.
fn check_resp_error(
    error: &RespError,
    call: &Call<'_>,
    reading: &Reading,
    limits: RespLimits,
    decoded: usize,
) -> Result<String, TestCaseError> {
    let name = match error {
        RespError::BulkTooLong { length, max } => {
            prop_assert_eq!(*max, limits.max_bulk_length);
            prop_assert!(*length > *max as u64);
            "BulkTooLong".to_owned()
        }
        RespError::TooManyElements { count, max } => {
            prop_assert_eq!(*max, limits.max_elements);
            prop_assert!(*count > *max as u64);
            "TooManyElements".to_owned()
        }
        RespError::TooDeep { max } => {
            prop_assert_eq!(*max, limits.max_depth);
            "TooDeep".to_owned()
        }
        RespError::LineTooLong { max } => {
            prop_assert_eq!(*max, limits.max_line_length);
            "LineTooLong".to_owned()
        }
        RespError::UnknownType(byte) => {
            prop_assert!(!RESP_TYPES.contains(byte), "{:#04x} is a type", byte);
            "UnknownType".to_owned()
        }
        RespError::InvalidLength(text) => {
            prop_assert!(
                !matches!(integer(text.as_bytes()), Some(n) if n >= 0),
                "{:?}",
                text
            );
            "InvalidLength".to_owned()
        }
        RespError::Malformed(what) => format!("Malformed({what})"),
        RespError::Truncated { buffered } => {
            prop_assert!(call.at_eof, "Truncated before the stream ended");
            prop_assert_eq!(
                *buffered,
                call.after.len(),
                "Truncated miscounts the buffer"
            );
            "Truncated".to_owned()
        }
        other => {
            return Err(fail(format!(
                "malformed input gave an error it cannot cause: {other:?}"
            )))
        }
    };
    prop_assert_eq!(decoded, reading.values.len(), "failed before a whole value");
    match &reading.end {
        End::Truncated { from } => {
            prop_assert!(
                matches!(error, RespError::Truncated { buffered } if *buffered == call.fed - from),
                "{error:?}, but the input stops inside a value {} bytes from its end",
                call.fed - from
            );
        }
        End::Broken {
            error: expected,
            at,
        } => {
            prop_assert!(!call.at_eof, "{error:?} waited for the end of the stream");
            prop_assert!(
                *at <= call.fed,
                "{error:?} before the byte deciding it arrived"
            );
            prop_assert_eq!(format!("{error:?}"), format!("{expected:?}"));
        }
        End::Clean => return Err(fail(format!("{error:?}, but the input is whole values"))),
    }
    Ok(name)
}

/// `values` encoded back to back, as a server writes them.
fn encode_values<'a>(values: impl IntoIterator<Item = &'a Value>) -> Vec<u8> {
    let mut wire = BytesMut::new();
    for value in values {
        value.write_to(&mut wire);
    }
    wire.to_vec()
}

/// What a frame decoded from hostile input is on the wire, to compare runs by.
fn encode_frames(frames: &[RespFrame]) -> Vec<u8> {
    let mut codec = RespCodec::default();
    let mut wire = BytesMut::new();
    for frame in frames {
        codec
            .encode(frame.clone(), &mut wire)
            .expect("a reply or push encodes");
    }
    wire.to_vec()
}

/// The most the read buffer may hold room for once `fed` bytes have arrived: what was
/// fed and one reserve step for a bulk body (a step at most `max_bulk_length`), with
/// room for `BytesMut`'s doubling and for bytes read but not yet reclaimed. A claim
/// honoured past the limit, or past one step, breaks it as soon as it is larger than
/// the inputs, which are at most a few KiB.
fn resp_capacity_bound(limits: RespLimits, fed: usize) -> usize {
    4 * (fed + limits.max_bulk_length.min(RESERVE_STEP) + 2) + 64
}

/// Where each element of `value`'s encoding (by `Value::write_to`) ends, counting on
/// from `at`, worked out from the value's shape rather than by reading its bytes.
fn element_ends(value: &Value, at: &mut usize, ends: &mut Vec<usize>) {
    let mut element = |length: usize| {
        *at += length;
        ends.push(*at);
    };
    let header = |count: usize| count.to_string().len() + 3;
    match value {
        Value::Array(items) | Value::Set(items) | Value::Push(items) => {
            element(header(items.len()));
            for item in items {
                element_ends(item, at, ends);
            }
        }
        Value::Map(pairs)
        | Value::Attribute {
            attributes: pairs, ..
        } => {
            element(header(pairs.len()));
            for (key, item) in pairs {
                element_ends(key, at, ends);
                element_ends(item, at, ends);
            }
            if let Value::Attribute { data, .. } = value {
                element_ends(data, at, ends);
            }
        }
        scalar => {
            let wire = encode_values([scalar]);
            let body = match scalar {
                Value::Bulk(bytes) => Some(bytes.len()),
                Value::Error(bytes) if wire[0] == b'!' => Some(bytes.len()),
                Value::Verbatim { text, .. } => Some(4 + text.len()),
                _ => None,
            };
            match body {
                Some(body) => {
                    element(wire.len() - body - 2);
                    element(body + 2);
                }
                None => element(wire.len()),
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// RESP: strategies
// ---------------------------------------------------------------------------------

/// Bytes for bulk strings, blob errors and verbatim text: short, often a CR, an LF or
/// a type byte.
fn resp_bytes() -> impl Strategy<Value = Bytes> {
    let byte = prop_oneof![3 => any::<u8>(), 1 => prop::sample::select(b"\r\n$*:".to_vec())];
    prop::collection::vec(byte, 0..12).prop_map(Bytes::from)
}

/// Text a simple string can hold: no CR or LF.
fn resp_line() -> impl Strategy<Value = Bytes> {
    "[a-zA-Z0-9 :._-]{0,12}".prop_map(Bytes::from)
}

/// A push of a message's shape, or a string short or over: `message`, `smessage` or
/// `pmessage`, then bulk or simple strings.
fn message_push() -> impl Strategy<Value = Value> {
    let string = prop_oneof![
        resp_bytes().prop_map(Value::Bulk),
        resp_line().prop_map(Value::Simple),
    ];
    let kinds = vec!["message", "smessage", "pmessage"];
    (
        prop::sample::select(kinds),
        prop::collection::vec(string, 2..=3),
    )
        .prop_map(|(kind, strings)| {
            let mut items = vec![Value::Bulk(Bytes::from_static(kind.as_bytes()))];
            items.extend(strings);
            Value::Push(items)
        })
}

/// A valid value of any type, RESP3's included, nested up to 4 deep.
fn small_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        resp_line().prop_map(Value::Simple),
        resp_bytes().prop_map(Value::Error),
        any::<i64>().prop_map(Value::Integer),
        resp_bytes().prop_map(Value::Bulk),
        any::<f64>().prop_map(Value::Double),
        any::<bool>().prop_map(Value::Boolean),
        "-?[1-9][0-9]{0,30}".prop_map(|digits| Value::BigNumber(Bytes::from(digits))),
        (any::<[u8; 3]>(), resp_bytes())
            .prop_map(|(format, text)| Value::Verbatim { format, text }),
        message_push(),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        let items = prop::collection::vec(inner.clone(), 0..4);
        let pairs = prop::collection::vec((inner.clone(), inner.clone()), 0..3);
        prop_oneof![
            items.clone().prop_map(Value::Array),
            items.clone().prop_map(Value::Set),
            items.prop_map(Value::Push),
            pairs.clone().prop_map(Value::Map),
            (pairs, inner).prop_map(|(attributes, data)| Value::Attribute {
                attributes,
                data: Box::new(data),
            }),
        ]
    })
}

/// Limits from degenerate (no bulk may hold a byte, nothing may nest) through the
/// defaults to none.
fn resp_limits() -> impl Strategy<Value = RespLimits> {
    prop_oneof![
        1 => Just(RespLimits::default()),
        1 => Just(no_limits()),
        4 => (0usize..=64, 0usize..=8, 0usize..=4, 32usize..=48).prop_map(
            |(bulk, elements, depth, line)| {
                RespLimits::default()
                    .max_bulk_length(bulk)
                    .max_elements(elements)
                    .max_depth(depth)
                    .max_line_length(line)
            }
        ),
    ]
}

/// No limits: `usize::MAX` for all but `max_depth`, which stays at its default because
/// it also bounds how deep a value's drop recurses.
fn no_limits() -> RespLimits {
    RespLimits::default()
        .max_bulk_length(usize::MAX)
        .max_elements(usize::MAX)
        .max_line_length(usize::MAX)
}

/// Limits that every value of `small_value` fits, from small to the defaults.
fn roomy_limits() -> impl Strategy<Value = RespLimits> {
    prop_oneof![
        Just(RespLimits::default()),
        (16usize..=65_536, 4usize..=4096, 4usize..=16, 64usize..=1024).prop_map(
            |(bulk, elements, depth, line)| {
                RespLimits::default()
                    .max_bulk_length(bulk)
                    .max_elements(elements)
                    .max_depth(depth)
                    .max_line_length(line)
            }
        ),
    ]
}

/// The text of a length or count: small, next to a limit, negative, huge, or a number
/// in a form RESP does not use.
fn resp_number(limits: RespLimits) -> impl Strategy<Value = String> {
    let near = |limit: usize| {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX - 1);
        (limit - 1)..=(limit + 1)
    };
    let odd = vec![
        "4294967295",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "99999999999999999999",
        "+3",
        "003",
        "-01",
        "",
        " 3",
        "3 ",
        "x",
        "3.0",
        "0x10",
    ];
    prop_oneof![
        4 => (-2i64..=8).prop_map(|n| n.to_string()),
        2 => prop_oneof![
            near(limits.max_bulk_length),
            near(limits.max_elements),
            near(limits.max_depth),
            near(limits.max_line_length),
        ]
        .prop_map(|n| n.to_string()),
        1 => prop::sample::select(odd).prop_map(str::to_owned),
        1 => any::<i64>().prop_map(|n| n.to_string()),
    ]
}

/// A change to a valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite a byte.
    Set(Index, u8),
    /// Insert a byte.
    Insert(Index, u8),
    /// Remove a byte.
    Remove(Index),
    /// Cut the encoding short.
    Truncate(Index),
    /// Give a line (the first to start at or after a position) another type byte.
    TypeByte(Index, u8),
    /// Give a line another number: a wrong length, a negative one, a huge one, or one
    /// RESP does not allow.
    Number(Index, String),
    /// Remove the `\r` (`true`) or the `\n` that ends a line.
    LineEnd(Index, bool),
    /// Put an empty line (a lone CRLF) before a line.
    EmptyLine(Index),
}

impl Mutation {
    fn apply(&self, wire: &mut Vec<u8>) {
        if wire.is_empty() {
            return;
        }
        let len = wire.len();
        match self {
            Mutation::Set(at, byte) => wire[at.index(len)] = *byte,
            Mutation::Insert(at, byte) => wire.insert(at.index(len + 1), *byte),
            Mutation::Remove(at) => {
                wire.remove(at.index(len));
            }
            Mutation::Truncate(at) => wire.truncate(at.index(len)),
            Mutation::TypeByte(at, byte) => {
                let start = line_start(wire, at.index(len));
                wire[start] = *byte;
            }
            Mutation::Number(at, number) => {
                let start = line_start(wire, at.index(len)) + 1;
                let end = wire[start..]
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .map_or(len, |i| start + i);
                wire.splice(start..end, number.bytes());
            }
            Mutation::LineEnd(at, cr) => {
                let start = line_start(wire, at.index(len));
                if let Some(i) = wire[start..].windows(2).position(|w| w == b"\r\n") {
                    wire.remove(start + i + usize::from(!cr));
                }
            }
            Mutation::EmptyLine(at) => {
                let start = line_start(wire, at.index(len));
                wire.splice(start..start, *b"\r\n");
            }
        }
    }
}

/// Where the first line to start at or after `from` starts (a line starts after a
/// `\n`), or the last one if none does.
fn line_start(wire: &[u8], from: usize) -> usize {
    let starts_line = |&i: &usize| i == 0 || wire[i - 1] == b'\n';
    (from..wire.len())
        .find(starts_line)
        .or_else(|| (0..from.min(wire.len())).rev().find(starts_line))
        .unwrap_or(0)
}

fn mutation(limits: RespLimits) -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        2 => prop::sample::select(b"+-:$*_#,(!=%~>|\r\n0-".to_vec()),
        1 => any::<u8>(),
    ];
    prop_oneof![
        1 => (any::<Index>(), byte.clone()).prop_map(|(at, b)| Mutation::Set(at, b)),
        1 => (any::<Index>(), byte.clone()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), byte).prop_map(|(at, b)| Mutation::TypeByte(at, b)),
        2 => (any::<Index>(), resp_number(limits)).prop_map(|(at, n)| Mutation::Number(at, n)),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(at, cr)| Mutation::LineEnd(at, cr)),
        1 => any::<Index>().prop_map(Mutation::EmptyLine),
    ]
}

/// A header line with any type byte and any number, then bytes that may or may not be
/// what it announces.
fn forged_header(limits: RespLimits) -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            3 => prop::sample::select(RESP_TYPES.to_vec()),
            1 => any::<u8>(),
        ],
        resp_number(limits),
        prop::sample::select(vec![&b"\r\n"[..], b"\n", b"\r", b""]),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..24),
            small_value().prop_map(|value| encode_values([&value])),
        ],
    )
        .prop_map(|(marker, number, line_end, rest)| {
            [&[marker][..], number.as_bytes(), line_end, &rest].concat()
        })
}

/// A bulk string, blob error or verbatim string whose length may be one off, whose
/// body may lack a format, and whose CRLF may be missing or wrong.
fn forged_blob() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(b"$!=".to_vec()),
        prop_oneof![
            resp_bytes().prop_map(|text| text.to_vec()),
            resp_bytes().prop_map(|text| [&b"txt:"[..], &text].concat()),
        ],
        prop_oneof![3 => Just(0i64), 1 => -1i64..=1],
        prop::sample::select(vec![&b"\r\n"[..], b"\n", b"", b"xy"]),
    )
        .prop_map(|(marker, body, off_by, body_end)| {
            let length = body.len() as i64 + off_by;
            let header = format!("{}{length}\r\n", marker as char);
            [header.as_bytes(), &body, body_end].concat()
        })
}

/// Aggregates of one element (or attributes of none) nested around `max_depth` deep,
/// then a leaf.
fn nested(max_depth: usize) -> impl Strategy<Value = Vec<u8>> {
    let header = prop::sample::select(vec![&b"*1\r\n"[..], b"~1\r\n", b">1\r\n", b"|0\r\n"]);
    prop::collection::vec(header, max_depth.saturating_sub(1)..=max_depth + 1)
        .prop_map(|headers| [headers.concat(), b":1\r\n".to_vec()].concat())
}

/// A line from two bytes under `max_line_length` to two over, type byte included,
/// ended by its CRLF or not (for a limit over 4 KiB, a line of 4 KiB: the stream is
/// cut there anyway).
fn long_line(max_line_length: usize) -> impl Strategy<Value = Vec<u8>> {
    let limit = max_line_length.min(4096);
    (
        prop::sample::select(b"+-(:,$*".to_vec()),
        limit.saturating_sub(2)..=limit + 2,
        prop::sample::select(vec![&b"\r\n"[..], b""]),
    )
        .prop_map(|(marker, length, line_end)| {
            let mut line = vec![marker];
            line.resize(length.max(1), b'7');
            line.extend_from_slice(line_end);
            line
        })
}

/// One piece of a hostile RESP stream for a codec within `limits`: a valid value; a
/// valid value mutated (another type byte, a wrong, negative or huge length, a lost
/// line end, a byte set, inserted or removed, the end cut off); a forged header or
/// blob; aggregates nested around the depth limit; a line around the length limit; or
/// noise.
fn hostile_resp_piece(limits: RespLimits) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (small_value(), prop::collection::vec(mutation(limits), 1..4)).prop_map(
        |(value, mutations)| {
            let mut wire = encode_values([&value]);
            for mutation in &mutations {
                mutation.apply(&mut wire);
            }
            wire
        },
    );
    let noise_byte = prop_oneof![
        prop::sample::select(b"+-:$*_#,(!=%~>|\r\n0123456789".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        3 => small_value().prop_map(|value| encode_values([&value])),
        4 => mutated,
        2 => forged_header(limits),
        1 => forged_blob(),
        1 => nested(limits.max_depth),
        1 => long_line(limits.max_line_length),
        1 => prop::collection::vec(noise_byte, 0..48),
    ]
}

/// A hostile RESP stream of up to 4 KiB, the limits its codec has, and where it is cut.
fn hostile_resp_case() -> impl Strategy<Value = (RespLimits, Vec<u8>, Vec<Index>)> {
    resp_limits().prop_flat_map(|limits| {
        (
            Just(limits),
            prop::collection::vec(hostile_resp_piece(limits), 0..12).prop_map(|pieces| {
                let mut wire = pieces.concat();
                wire.truncate(4096);
                wire
            }),
            prop::collection::vec(any::<Index>(), 0..24),
        )
    })
}

/// A header that claims more than `limits` allow, and the error it must get: a bulk
/// length or an element count from one over the limit to `i64::MAX` (`4294967295`
/// among them), one aggregate header more than `max_depth` allows, or a line with no
/// `\n` in its first `max_line_length + 2` bytes (the header ends at the last of them).
fn over_limit_header(limits: RespLimits) -> impl Strategy<Value = (Vec<u8>, RespError)> {
    let claim = |limit: usize| {
        let over = limit as u64 + 1;
        prop_oneof![Just(over.max(4_294_967_295)), over..=i64::MAX as u64]
    };
    let header = |marker: u8, n: u64| format!("{}{n}\r\n", marker as char).into_bytes();
    let RespLimits {
        max_bulk_length,
        max_elements,
        max_depth,
        max_line_length,
        ..
    } = limits;
    let nesting = [
        &b"*1\r\n"[..],
        b"~1\r\n",
        b">1\r\n",
        b"%1\r\n",
        b"|1\r\n",
        b"|0\r\n",
    ];
    // Anything but the `\n` that would end the line, a short pattern repeated: lines
    // run to 64 KiB, too many bytes to draw one at a time.
    let line_bytes = prop::collection::vec(prop_oneof![0u8..=9, 11u8..=255], 1..16);
    prop_oneof![
        (
            prop::sample::select(b"$!=".to_vec()),
            claim(max_bulk_length)
        )
            .prop_map(move |(marker, length)| {
                let max = max_bulk_length;
                (
                    header(marker, length),
                    RespError::BulkTooLong { length, max },
                )
            }),
        (prop::sample::select(b"*~>%|".to_vec()), claim(max_elements)).prop_map(
            move |(marker, count)| {
                let max = max_elements;
                (
                    header(marker, count),
                    RespError::TooManyElements { count, max },
                )
            }
        ),
        prop::collection::vec(prop::sample::select(nesting.to_vec()), max_depth + 1)
            .prop_map(move |headers| (headers.concat(), RespError::TooDeep { max: max_depth })),
        (prop::sample::select(b"+-(:,$*".to_vec()), line_bytes).prop_map(
            move |(marker, pattern)| {
                let rest = pattern.iter().cycle().take(max_line_length + 1);
                let line = [marker].into_iter().chain(rest.copied()).collect();
                (
                    line,
                    RespError::LineTooLong {
                        max: max_line_length,
                    },
                )
            }
        ),
    ]
}

/// Feeds a hostile RESP case and checks what holds for any input.
fn check_hostile_resp(
    limits: RespLimits,
    wire: &[u8],
    cuts: &[Index],
) -> Result<Run<RespFrame, RespError>, TestCaseError> {
    let run = feed_resp(limits, wire, &cut_positions(cuts, wire.len()))?;
    let bound = resp_capacity_bound(limits, wire.len());
    prop_assert!(
        run.peak_capacity <= bound,
        "read buffer reached {} bytes, over {}",
        run.peak_capacity,
        bound
    );
    // What a Connection does next with each frame must not panic either.
    let protocol = RespProtocol::with_limits(limits);
    for frame in &run.items {
        let _ = protocol.classify(frame.clone());
    }
    Ok(run)
}

// ---------------------------------------------------------------------------------
// Properties of the RESP decoder
// ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Hostile RESP in random chunks, under any limits: every call gives a value, a
    /// wait or a typed error, as the rules read the whole input, and the buffer stays
    /// small.
    #[test]
    fn hostile_resp_in_random_chunks_gives_only_values_waits_and_typed_errors(
        (limits, wire, cuts) in hostile_resp_case(),
    ) {
        check_hostile_resp(limits, &wire, &cuts)?;
    }

    /// Valid values, then garbage (possibly none), split anywhere: the values come out
    /// as sent before the garbage has any effect, and the split changes nothing.
    #[test]
    fn valid_values_then_garbage_decode_the_same_however_split(
        sent in prop::collection::vec(small_value(), 0..8),
        garbage in prop_oneof![
            Just(Vec::new()),
            prop::collection::vec(any::<u8>(), 1..64),
            hostile_resp_piece(RespLimits::default()),
        ],
        cuts in prop::collection::vec(any::<Index>(), 0..24),
    ) {
        let limits = RespLimits::default();
        let wire = [encode_values(&sent), garbage.clone()].concat();

        let split = feed_resp(limits, &wire, &cut_positions(&cuts, wire.len()))?;
        let whole = feed_resp(limits, &wire, &[])?;
        let byte_by_byte = feed_resp(limits, &wire, &(1..wire.len()).collect::<Vec<_>>())?;

        let error = |run: &Run<RespFrame, RespError>| format!("{:?}", run.error);
        for run in [&split, &whole, &byte_by_byte] {
            prop_assert!(run.items.len() >= sent.len(), "{:?}", run.error);
            for (frame, value) in run.items.iter().zip(&sent) {
                check_resp_frame(frame, value)?;
            }
            prop_assert_eq!(encode_frames(&run.items), encode_frames(&whole.items));
            prop_assert_eq!(error(run), error(&whole));
            if let Some(error) = &run.error {
                prop_assert!(!garbage.is_empty(), "valid values alone failed: {}", error);
            }
        }
        if garbage.is_empty() {
            prop_assert_eq!(whole.items.len(), sent.len());
        }
    }

    /// A header that claims more than a limit allows, after some valid values: refused
    /// on the call that completes the header, whatever follows and at the end of the
    /// stream too, and nothing is reserved for it.
    #[test]
    fn claims_over_a_limit_are_refused_on_the_call_that_completes_their_header(
        (limits, (header, expected)) in roomy_limits()
            .prop_flat_map(|limits| (Just(limits), over_limit_header(limits))),
        sent in prop::collection::vec(small_value(), 0..4),
        after_header in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        stream_ends_after_header in any::<bool>(),
    ) {
        let mut wire = encode_values(&sent);
        let header_end = wire.len() + header.len();
        wire.extend_from_slice(&header);
        if !stream_ends_after_header {
            wire.extend_from_slice(&after_header);
        }
        let cuts = cut_positions(&cuts, wire.len());

        let run = feed_resp(limits, &wire, &cuts)?;
        prop_assert_eq!(run.items.len(), sent.len());
        prop_assert_eq!(format!("{:?}", run.error), format!("{:?}", Some(expected)));
        prop_assert!(!run.error_at_eof);
        prop_assert_eq!(Some(run.fed), first_end_reaching(&cuts, wire.len(), header_end));
        // Room for the bytes that arrived, and none for the claim.
        prop_assert!(
            run.peak_capacity <= 4 * wire.len() + 64,
            "read buffer reached {} bytes for {} fed",
            run.peak_capacity,
            wire.len()
        );
    }

    /// A bulk header that claims up to its limit (the 64 MiB default, or none: up to
    /// `i64::MAX`, `4294967295` among them), after valid values, then part of its
    /// body: room for the body is reserved a 64 KiB step at a time as it arrives, not
    /// for the claim, and the stream's end is `Truncated` with the body's bytes.
    #[test]
    fn claims_within_the_limit_are_reserved_a_step_at_a_time(
        (limits, claim) in prop_oneof![
            (Just(RespLimits::default()), 1024..=RespLimits::default().max_bulk_length as u64),
            (Just(no_limits()), prop_oneof![Just(4_294_967_295), 1024..=i64::MAX as u64]),
        ],
        marker in prop::sample::select(b"$!=".to_vec()),
        sent in prop::collection::vec(small_value(), 0..4),
        body in prop::collection::vec(any::<u8>(), 0..1024),
        cuts in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let mut wire = encode_values(&sent);
        wire.extend_from_slice(format!("{}{claim}\r\n", marker as char).as_bytes());
        wire.extend_from_slice(&body);
        let run = feed_resp(limits, &wire, &cut_positions(&cuts, wire.len()))?;
        prop_assert_eq!(run.items.len(), sent.len());
        prop_assert!(
            matches!(run.error, Some(RespError::Truncated { buffered }) if buffered == body.len()),
            "{:?}",
            run.error
        );
        let bound = resp_capacity_bound(limits, wire.len());
        prop_assert!(
            run.peak_capacity <= bound,
            "read buffer reached {} bytes, over {}",
            run.peak_capacity,
            bound
        );
    }

    /// Valid values cut anywhere at the end of the stream: the whole values come out,
    /// then `Truncated` with the bytes of the unfinished element (those of the elements
    /// before it were taken as they arrived), or a clean end if the cut fell between
    /// values.
    #[test]
    fn stream_cut_anywhere_yields_the_whole_values_then_truncated(
        sent in prop::collection::vec(small_value(), 1..8),
        cut in any::<Index>(),
        cuts in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let wire = encode_values(&sent);
        let cut = cut.index(wire.len() + 1);
        let (mut at, mut value_ends, mut ends) = (0, Vec::new(), Vec::new());
        for value in &sent {
            element_ends(value, &mut at, &mut ends);
            value_ends.push(at);
        }
        prop_assert_eq!(at, wire.len());
        let whole_values = value_ends.partition_point(|&end| end <= cut);
        let last_element_end = ends.iter().copied().take_while(|&end| end <= cut).last();

        let run = feed_resp(RespLimits::default(), &wire[..cut], &cut_positions(&cuts, cut))?;
        prop_assert_eq!(run.items.len(), whole_values);
        for (frame, value) in run.items.iter().zip(&sent) {
            check_resp_frame(frame, value)?;
        }
        if value_ends[..whole_values].last().copied().unwrap_or(0) == cut {
            prop_assert!(run.error.is_none(), "{:?}", run.error);
        } else {
            prop_assert!(run.error_at_eof);
            match &run.error {
                Some(RespError::Truncated { buffered }) => {
                    prop_assert_eq!(*buffered, cut - last_element_end.unwrap_or(0));
                }
                other => prop_assert!(false, "expected Truncated, got {:?}", other),
            }
        }
    }
}

/// Arrays nested 100,000 deep, fed whole, in 4 KiB reads and byte by byte, are
/// `TooDeep` on the call that brings the header one past the default limit of 64. The
/// codec does not recurse on depth: with the limit raised past the input, it holds the
/// 100,000 open arrays until the stream ends, then says `Truncated`.
#[test]
fn nesting_100_000_deep_is_too_deep_at_the_limit_not_a_stack_overflow() {
    const HEADER: &[u8] = b"*1\r\n";
    let mut wire = HEADER.repeat(100_000);
    wire.extend_from_slice(b":1\r\n");
    let limits = RespLimits::default();
    let refused_at = (limits.max_depth + 1) * HEADER.len();
    for read_size in [wire.len(), 4096, 1] {
        let cuts: Vec<usize> = (read_size..wire.len()).step_by(read_size).collect();
        let run = feed_resp(limits, &wire, &cuts)
            .unwrap_or_else(|failure| panic!("reads of {read_size} bytes: {failure}"));
        assert!(run.items.is_empty());
        assert!(
            matches!(run.error, Some(RespError::TooDeep { max: 64 })),
            "{:?}",
            run.error
        );
        assert_eq!(
            Some(run.fed),
            first_end_reaching(&cuts, wire.len(), refused_at)
        );
    }

    // Without the leaf: a whole value 100,000 deep would be dropped by recursion,
    // which is what `max_depth` is for.
    let open_only = &wire[..wire.len() - 4];
    let cuts: Vec<usize> = (4096..open_only.len()).step_by(4096).collect();
    let unlimited = RespProtocol::with_limits(limits.max_depth(usize::MAX));
    let run = drive(unlimited.codec(), open_only, &cuts, |_, _| Ok(None))
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert!(run.items.is_empty());
    assert!(
        matches!(run.error, Some(RespError::Truncated { buffered: 0 })),
        "{:?}",
        run.error
    );
}

/// The hostile RESP generator is not vacuous: over a fixed-seed run it reaches every
/// error the decoder has for bad input (each reason of `Malformed` apart), decodes
/// replies, pushes and messages, waits for a value, inside one and for a bulk body, and
/// ends cleanly. If the codec gains a check, add it here and to `check_resp_error`.
#[test]
fn hostile_resp_inputs_reach_every_outcome() {
    let strategy = hostile_resp_case();
    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeSet::new();
    for _ in 0..CASES {
        let (limits, wire, cuts) = strategy.new_tree(&mut runner).unwrap().current();
        let run = check_hostile_resp(limits, &wire, &cuts).unwrap_or_else(|failure| {
            let wire = String::from_utf8_lossy(&wire);
            panic!("{limits:?}, wire {wire:?}, cuts {cuts:?}: {failure}")
        });
        seen.extend(run.outcomes);
    }
    let expected: BTreeSet<String> = [
        "reply",
        "push",
        "message push",
        "wait for a value",
        "wait inside a value",
        "wait for a bulk body",
        "clean end",
        "BulkTooLong",
        "TooManyElements",
        "TooDeep",
        "LineTooLong",
        "UnknownType",
        "InvalidLength",
        "Malformed(integer)",
        "Malformed(null)",
        "Malformed(boolean)",
        "Malformed(double)",
        "Malformed(bulk string not followed by CRLF)",
        "Malformed(verbatim string)",
        "Malformed(line ended by LF without CR)",
        "Malformed(empty line)",
        "Truncated",
    ]
    .map(String::from)
    .into();
    assert_eq!(seen, expected);
}
