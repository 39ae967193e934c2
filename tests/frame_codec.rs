//! The `frame` protocol's codec, driven synchronously: bytes pushed into a `BytesMut`,
//! every outcome read back from `decode` and `decode_eof`.
//!
//! What a user of the codec relies on: every frame comes back exactly as it was sent,
//! however the transport splits the bytes; a stream cut off inside a frame is an error
//! rather than a silent end; a hostile length prefix is refused before it costs memory;
//! every malformed frame is a `FrameError` (never a panic, never a hang); and
//! [`FrameProtocol::classify`] gives each kind of frame its meaning.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use switchboard::protocol::frame::{
    Frame, FrameCodec, FrameError, FrameKind, FrameProtocol, FramePush, FrameRequest,
    DEFAULT_MAX_FRAME_LENGTH,
};
use switchboard::protocol::{Inbound, Protocol, RemoteError};
use tokio_util::codec::{Decoder, Encoder};

/// Bytes in the length prefix.
const PREFIX: usize = 4;
/// Bytes after the length prefix that every frame has: kind, flags, id.
const FIXED_HEADER: usize = 10;
/// The `flags` bit that announces a topic.
const FLAG_TOPIC: u8 = 0b0000_0001;

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// `frames` encoded back to back by a default codec.
fn encode_all<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> BytesMut {
    let mut codec = FrameCodec::default();
    let mut wire = BytesMut::new();
    for frame in frames {
        codec.encode(frame, &mut wire).expect("valid frame encodes");
    }
    wire
}

/// The raw start of a frame: a length prefix, then kind, flags and id.
fn raw_header(length: u32, kind: u8, flags: u8, id: u64) -> BytesMut {
    let mut wire = BytesMut::new();
    wire.put_u32(length);
    wire.put_u8(kind);
    wire.put_u8(flags);
    wire.put_u64(id);
    wire
}

/// Decodes every frame `buffer` holds now, as a `Framed` would after a read.
fn drain(
    codec: &mut FrameCodec,
    buffer: &mut BytesMut,
    decoded: &mut Vec<Frame>,
) -> Result<(), FrameError> {
    while let Some(frame) = codec.decode(buffer)? {
        decoded.push(frame);
    }
    Ok(())
}

/// Decodes every frame at end of stream, as a `Framed` does once the read side closes.
fn drain_eof(
    codec: &mut FrameCodec,
    buffer: &mut BytesMut,
    decoded: &mut Vec<Frame>,
) -> Result<(), FrameError> {
    while let Some(frame) = codec.decode_eof(buffer)? {
        decoded.push(frame);
    }
    Ok(())
}

/// What a stream of bytes decoded to.
#[derive(Debug)]
struct Decoded {
    /// The frames decoded before the stream ended or failed.
    frames: Vec<Frame>,
    /// The error that stopped decoding, if any.
    error: Option<FrameError>,
    /// The largest capacity the read buffer reached.
    peak_capacity: usize,
}

/// Feeds `wire` in chunks whose sizes cycle through `chunk_sizes`, decoding after every
/// chunk and at end of stream, and stops at the first error as a `Framed` does.
fn decode_chunked(codec: &mut FrameCodec, wire: &[u8], chunk_sizes: &[usize]) -> Decoded {
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut peak_capacity = 0;
    let mut rest = wire;
    let mut sizes = chunk_sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        buffer.extend_from_slice(chunk);
        let drained = drain(codec, &mut buffer, &mut frames);
        peak_capacity = peak_capacity.max(buffer.capacity());
        if let Err(error) = drained {
            return Decoded {
                frames,
                error: Some(error),
                peak_capacity,
            };
        }
    }
    let error = drain_eof(codec, &mut buffer, &mut frames).err();
    if error.is_none() {
        assert!(buffer.is_empty(), "a clean end of stream leaves no bytes");
    }
    Decoded {
        frames,
        error,
        peak_capacity,
    }
}

/// A stream that mixes every kind, with and without topics, empty and non-empty.
fn mixed_stream() -> Vec<Frame> {
    vec![
        Frame::request(1, "get user 42").with_topic("users"),
        Frame::response(1, Bytes::new()),
        Frame::error(2, "no such user"),
        Frame::push("news", Bytes::new()),
        Frame::ping(u64::MAX),
        Frame::pong(0),
        Frame::request(3, vec![0xAB; 300]).with_topic(Bytes::new()),
        Frame::new(FrameKind::Push, 7, vec![0u8; 17]).with_topic(vec![b't'; 200]),
    ]
}

// ---------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------

#[test]
fn every_kind_round_trips_with_and_without_topic_and_payload() {
    let topics = [
        None,
        Some(Bytes::new()),
        Some(Bytes::from_static(b"orders.eu")),
    ];
    let payloads = [Bytes::new(), Bytes::from_static(b"\x00payload\xff")];
    let mut codec = FrameCodec::default();
    for kind in FrameKind::ALL {
        for topic in &topics {
            for payload in &payloads {
                let sent = Frame {
                    kind,
                    id: 0x0102_0304_0506_0708,
                    topic: topic.clone(),
                    payload: payload.clone(),
                };
                let mut wire = BytesMut::new();
                codec.encode(&sent, &mut wire).unwrap();

                let received = codec.decode(&mut wire).unwrap();
                assert_eq!(received.as_ref(), Some(&sent), "round trip of {sent:?}");
                assert!(wire.is_empty(), "decode consumed exactly one frame");
                assert!(codec.decode_eof(&mut wire).unwrap().is_none());
            }
        }
    }
}

#[test]
fn owned_and_borrowed_encoders_write_the_same_bytes() {
    let frame = Frame::push("topic", "payload");
    let mut codec = FrameCodec::default();
    let mut by_ref = BytesMut::new();
    let mut by_value = BytesMut::new();
    codec.encode(&frame, &mut by_ref).unwrap();
    codec.encode(frame, &mut by_value).unwrap();
    assert_eq!(by_ref, by_value);
}

#[test]
fn wire_format_matches_the_documented_layout() {
    let mut wire = BytesMut::new();
    FrameCodec::default()
        .encode(Frame::push("ab", "xyz"), &mut wire)
        .unwrap();
    let expected: Vec<u8> = [
        &17u32.to_be_bytes()[..], // length: header 10 + topic_len 2 + topic 2 + payload 3
        &[FrameKind::Push as u8], // kind
        &[FLAG_TOPIC],            // flags
        &0u64.to_be_bytes(),      // id
        &2u16.to_be_bytes(),      // topic_len
        b"ab",                    // topic
        b"xyz",                   // payload
    ]
    .concat();
    assert_eq!(&wire[..], expected);
}

// ---------------------------------------------------------------------------------
// Split delivery
// ---------------------------------------------------------------------------------

#[test]
fn stream_fed_one_byte_at_a_time_yields_each_frame_as_its_last_byte_arrives() {
    let sent = mixed_stream();
    let wire = encode_all(&sent);

    // The byte count after which each frame is complete.
    let frame_ends: Vec<usize> = sent
        .iter()
        .scan(0, |end, frame| {
            *end += frame.encoded_len();
            Some(*end)
        })
        .collect();
    assert_eq!(frame_ends.last(), Some(&wire.len()));

    let mut codec = FrameCodec::default();
    let mut buffer = BytesMut::new();
    let mut decoded = Vec::new();
    let mut completed_at = Vec::new();
    for (fed, byte) in wire.iter().enumerate() {
        buffer.put_u8(*byte);
        while let Some(frame) = codec.decode(&mut buffer).unwrap() {
            decoded.push(frame);
            completed_at.push(fed + 1);
        }
    }
    assert!(codec.decode_eof(&mut buffer).unwrap().is_none());
    assert_eq!(decoded, sent);
    assert_eq!(
        completed_at, frame_ends,
        "a frame is yielded neither before nor after its last byte"
    );
}

#[test]
fn stream_split_in_two_at_every_position_decodes_identically() {
    let sent = mixed_stream();
    let wire = encode_all(&sent);
    for split in 0..=wire.len() {
        let mut codec = FrameCodec::default();
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();

        buffer.extend_from_slice(&wire[..split]);
        drain(&mut codec, &mut buffer, &mut decoded).unwrap();
        buffer.extend_from_slice(&wire[split..]);
        drain(&mut codec, &mut buffer, &mut decoded).unwrap();

        assert!(
            codec.decode_eof(&mut buffer).unwrap().is_none(),
            "split at {split}"
        );
        assert_eq!(decoded, sent, "split at {split}");
    }
}

// ---------------------------------------------------------------------------------
// End of stream
// ---------------------------------------------------------------------------------

#[test]
fn eof_on_an_empty_buffer_is_a_clean_end() {
    let mut codec = FrameCodec::default();
    let mut buffer = BytesMut::new();
    assert!(codec.decode_eof(&mut buffer).unwrap().is_none());
}

#[test]
fn eof_inside_any_part_of_a_frame_is_truncated_not_a_clean_end() {
    // Cut points cover the length prefix (1..4), the header (4..16), the topic and
    // the payload, up to one byte short of the whole frame.
    let frame = Frame::request(9, "payload bytes").with_topic("topic");
    let wire = encode_all([&frame]);
    for cut in 1..wire.len() {
        let mut codec = FrameCodec::default();
        let mut buffer = BytesMut::from(&wire[..cut]);
        match codec.decode_eof(&mut buffer) {
            Err(FrameError::Truncated { buffered }) => assert_eq!(buffered, cut),
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn eof_after_whole_frames_and_a_partial_one_yields_the_whole_frames_then_truncated() {
    let whole = Frame::response(1, "done");
    let partial = encode_all([&Frame::response(2, "not quite")]);
    let mut buffer = encode_all([&whole]);
    buffer.extend_from_slice(&partial[..partial.len() - 1]);

    let mut codec = FrameCodec::default();
    assert_eq!(codec.decode_eof(&mut buffer).unwrap(), Some(whole));
    match codec.decode_eof(&mut buffer) {
        Err(FrameError::Truncated { buffered }) => assert_eq!(buffered, partial.len() - 1),
        other => panic!("expected Truncated, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// Length prefix
// ---------------------------------------------------------------------------------

#[test]
fn oversized_length_prefix_is_refused_before_any_allocation() {
    let claimed = u32::MAX - 1;
    let mut codec = FrameCodec::default();
    let mut buffer = BytesMut::new();
    buffer.put_u32(claimed);

    match codec.decode(&mut buffer) {
        Err(FrameError::TooLarge { length, max }) => {
            assert_eq!(length, claimed as usize);
            assert_eq!(max, DEFAULT_MAX_FRAME_LENGTH);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(
        buffer.capacity() < 1024 * 1024,
        "buffer grew to {} bytes for a frame it refused",
        buffer.capacity()
    );
}

#[test]
fn a_stalled_header_costs_one_reserve_step_not_the_claimed_length() {
    // The largest frame the default codec accepts, announced and then not sent.
    let mut codec = FrameCodec::default();
    let mut buffer = raw_header(
        DEFAULT_MAX_FRAME_LENGTH as u32,
        FrameKind::Request as u8,
        0,
        1,
    );
    assert!(matches!(codec.decode(&mut buffer), Ok(None)));
    assert!(
        buffer.capacity() <= 128 * 1024,
        "buffer reserved {} bytes for a frame that has not arrived",
        buffer.capacity()
    );
}

#[test]
fn a_limit_past_the_length_prefix_is_capped() {
    assert_eq!(
        FrameCodec::new(usize::MAX).max_frame_length(),
        u32::MAX as usize - 4
    );
}

#[test]
fn oversized_length_prefix_is_refused_at_eof_too() {
    let mut codec = FrameCodec::new(1024);
    let mut buffer = BytesMut::new();
    buffer.put_u32(1025);
    assert!(matches!(
        codec.decode_eof(&mut buffer),
        Err(FrameError::TooLarge {
            length: 1025,
            max: 1024
        })
    ));
    assert!(buffer.capacity() < 1024);
}

#[test]
fn frame_of_exactly_max_frame_length_decodes_and_one_more_byte_is_refused() {
    const MAX: usize = 64;
    let mut codec = FrameCodec::new(MAX);

    let at_limit = Frame::request(1, vec![7u8; MAX - FIXED_HEADER]);
    assert_eq!(at_limit.encoded_len(), PREFIX + MAX);
    let mut buffer = BytesMut::new();
    codec.encode(&at_limit, &mut buffer).unwrap();
    assert_eq!(codec.decode(&mut buffer).unwrap(), Some(at_limit));

    // One byte over, built by hand since the encoder refuses to write it.
    let mut over = raw_header((MAX + 1) as u32, FrameKind::Request as u8, 0, 1);
    over.extend_from_slice(&[7u8; MAX + 1 - FIXED_HEADER]);
    assert!(matches!(
        codec.decode(&mut over),
        Err(FrameError::TooLarge { length, max }) if length == MAX + 1 && max == MAX
    ));
}

#[test]
fn frame_of_exactly_the_default_max_decodes_and_one_more_byte_is_refused() {
    let mut codec = FrameCodec::default();
    assert_eq!(codec.max_frame_length(), DEFAULT_MAX_FRAME_LENGTH);

    let at_limit = Frame::push(
        "big",
        vec![1u8; DEFAULT_MAX_FRAME_LENGTH - FIXED_HEADER - 5],
    );
    let mut buffer = BytesMut::new();
    codec.encode(&at_limit, &mut buffer).unwrap();
    assert_eq!(buffer.len(), PREFIX + DEFAULT_MAX_FRAME_LENGTH);
    assert_eq!(codec.decode(&mut buffer).unwrap(), Some(at_limit));

    let mut over = BytesMut::new();
    over.put_u32(DEFAULT_MAX_FRAME_LENGTH as u32 + 1);
    assert!(matches!(
        codec.decode(&mut over),
        Err(FrameError::TooLarge { length, .. }) if length == DEFAULT_MAX_FRAME_LENGTH + 1
    ));
}

#[test]
fn length_below_the_fixed_header_is_too_short() {
    for claimed in 0..FIXED_HEADER as u32 {
        let mut codec = FrameCodec::default();
        let mut buffer = BytesMut::new();
        buffer.put_u32(claimed);
        match codec.decode(&mut buffer) {
            Err(FrameError::TooShort { length }) => assert_eq!(length, claimed as usize),
            other => panic!("length {claimed}: expected TooShort, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------
// Malformed headers
// ---------------------------------------------------------------------------------

#[test]
fn unknown_kind_is_refused_as_soon_as_the_kind_byte_arrives() {
    for kind in [0u8, 11, 255] {
        // Only the length prefix and the kind byte of a frame that claims 1000 bytes.
        let mut codec = FrameCodec::default();
        let mut buffer = BytesMut::new();
        buffer.put_u32(1000);
        buffer.put_u8(kind);
        assert!(
            matches!(codec.decode(&mut buffer), Err(FrameError::UnknownKind(k)) if k == kind),
            "kind {kind}"
        );

        // And in a complete frame.
        let mut whole = raw_header(FIXED_HEADER as u32, kind, 0, 1);
        assert!(
            matches!(codec.decode(&mut whole), Err(FrameError::UnknownKind(k)) if k == kind),
            "kind {kind} in a complete frame"
        );
    }
}

#[test]
fn every_known_kind_byte_is_accepted() {
    for kind in FrameKind::ALL {
        let mut codec = FrameCodec::default();
        let mut buffer = raw_header(FIXED_HEADER as u32, kind as u8, 0, 5);
        let frame = codec.decode(&mut buffer).unwrap().unwrap();
        assert_eq!(frame.kind, kind);
        assert_eq!(frame.id, 5);
    }
}

#[test]
fn reserved_flag_bits_are_refused_as_soon_as_the_flags_byte_arrives() {
    let reserved = (1..8).map(|bit| 1u8 << bit).chain([0xFF, 0b1000_0001]);
    for flags in reserved {
        // Only the length prefix, kind and flags of a frame that claims 1000 bytes.
        let mut codec = FrameCodec::default();
        let mut buffer = BytesMut::new();
        buffer.put_u32(1000);
        buffer.put_u8(FrameKind::Push as u8);
        buffer.put_u8(flags);
        assert!(
            matches!(codec.decode(&mut buffer), Err(FrameError::ReservedFlags(f)) if f == flags),
            "flags {flags:#010b}"
        );
    }
}

#[test]
fn topic_length_running_past_the_frame_end_is_an_error() {
    let mut codec = FrameCodec::default();

    // The topic flag is set, but the frame ends before the topic length field.
    let mut no_room = raw_header(FIXED_HEADER as u32, FrameKind::Push as u8, FLAG_TOPIC, 1);
    assert!(matches!(
        codec.decode(&mut no_room),
        Err(FrameError::TopicLengthMissing { length }) if length == FIXED_HEADER
    ));

    // Half of the topic length field.
    let mut half = raw_header(
        FIXED_HEADER as u32 + 1,
        FrameKind::Push as u8,
        FLAG_TOPIC,
        1,
    );
    half.put_u8(0);
    assert!(matches!(
        codec.decode(&mut half),
        Err(FrameError::TopicLengthMissing { length }) if length == FIXED_HEADER + 1
    ));

    // A topic length of 5 with 3 bytes left in the frame.
    let mut overrun = raw_header(
        FIXED_HEADER as u32 + 5,
        FrameKind::Push as u8,
        FLAG_TOPIC,
        1,
    );
    overrun.put_u16(5);
    overrun.extend_from_slice(b"abc");
    assert!(matches!(
        codec.decode(&mut overrun),
        Err(FrameError::TopicOverrun {
            topic_len: 5,
            length
        }) if length == FIXED_HEADER + 5
    ));

    // The largest topic length that fits: the topic fills the frame, the payload is empty.
    let mut exact = raw_header(
        FIXED_HEADER as u32 + 5,
        FrameKind::Push as u8,
        FLAG_TOPIC,
        1,
    );
    exact.put_u16(3);
    exact.extend_from_slice(b"abc");
    let frame = codec.decode(&mut exact).unwrap().unwrap();
    assert_eq!(frame.topic.as_deref(), Some(&b"abc"[..]));
    assert!(frame.payload.is_empty());
}

// ---------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------

#[test]
fn encoding_a_frame_over_max_frame_length_fails_and_writes_nothing() {
    const MAX: usize = 64;
    let mut codec = FrameCodec::new(MAX);
    let mut dst = BytesMut::from(&b"earlier frames"[..]);

    let too_big = Frame::request(1, vec![0u8; MAX - FIXED_HEADER + 1]);
    match codec.encode(&too_big, &mut dst) {
        Err(FrameError::TooLarge { length, max }) => {
            assert_eq!(length, MAX + 1);
            assert_eq!(max, MAX);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(&dst[..], b"earlier frames");

    // The topic counts toward the limit too.
    let topic_too_big = Frame::push(vec![b't'; MAX], Bytes::new());
    assert!(matches!(
        codec.encode(topic_too_big, &mut dst),
        Err(FrameError::TooLarge { .. })
    ));
    assert_eq!(&dst[..], b"earlier frames");
}

#[test]
fn encoding_a_topic_longer_than_65535_bytes_fails_and_writes_nothing() {
    let mut codec = FrameCodec::default();
    let mut dst = BytesMut::from(&b"earlier frames"[..]);

    let too_long = Frame::push(vec![b't'; 65_536], "payload");
    assert!(matches!(
        codec.encode(&too_long, &mut dst),
        Err(FrameError::TopicTooLong(65_536))
    ));
    assert_eq!(&dst[..], b"earlier frames");

    // 65,535 bytes is the longest topic the u16 field holds, and it round trips.
    let longest = Frame::push(vec![b't'; 65_535], "payload");
    let mut wire = BytesMut::new();
    codec.encode(&longest, &mut wire).unwrap();
    assert_eq!(codec.decode(&mut wire).unwrap(), Some(longest));
}

#[test]
fn encoded_len_equals_the_bytes_written() {
    let mut codec = FrameCodec::default();
    let mut dst = BytesMut::new();
    for frame in mixed_stream() {
        let before = dst.len();
        let expected = frame.encoded_len();
        codec.encode(frame, &mut dst).unwrap();
        assert_eq!(dst.len() - before, expected);
    }
}

// ---------------------------------------------------------------------------------
// FrameProtocol
// ---------------------------------------------------------------------------------

#[test]
fn classify_gives_each_kind_its_meaning() {
    let protocol = FrameProtocol::default();

    match protocol.classify(Frame::response(11, "ok")) {
        Inbound::Reply {
            id,
            reply: Ok(reply),
        } => {
            assert_eq!(id, 11);
            assert_eq!(reply, "ok");
        }
        other => panic!("Response: {other:?}"),
    }

    match protocol.classify(Frame::error(12, "denied")) {
        Inbound::Reply {
            id,
            reply: Err(error),
        } => {
            assert_eq!(id, 12);
            assert_eq!(error, RemoteError::new("denied"));
            assert_eq!(error.message(), "denied");
        }
        other => panic!("Error: {other:?}"),
    }

    match protocol.classify(Frame::ping(13)) {
        Inbound::Ping { pong } => assert_eq!(pong, Frame::pong(13)),
        other => panic!("Ping: {other:?}"),
    }

    match protocol.classify(Frame::pong(14)) {
        Inbound::Pong { id } => assert_eq!(id, 14),
        other => panic!("Pong: {other:?}"),
    }

    match protocol.classify(Frame::push("prices", "42")) {
        Inbound::Push(push) => assert_eq!(
            push,
            FramePush {
                seq: 0,
                topic: Some(Bytes::from_static(b"prices")),
                payload: Bytes::from_static(b"42"),
            }
        ),
        other => panic!("Push: {other:?}"),
    }

    let request = Frame::request(15, "from the peer").with_topic("rpc");
    match protocol.classify(request.clone()) {
        Inbound::Request(frame) => assert_eq!(frame, request),
        other => panic!("Request: {other:?}"),
    }
}

#[test]
fn protocol_request_and_ping_frames_carry_the_id_through_the_wire() {
    let protocol = FrameProtocol::new(1024);
    let mut codec = protocol.codec();
    assert_eq!(codec.max_frame_length(), 1024);

    let request = protocol.request(77, FrameRequest::new("body").with_topic("svc"));
    let ping = protocol.ping(78);
    let mut wire = BytesMut::new();
    codec.encode(&request, &mut wire).unwrap();
    codec.encode(&ping, &mut wire).unwrap();

    let decoded_request = codec.decode(&mut wire).unwrap().unwrap();
    assert_eq!(decoded_request.kind, FrameKind::Request);
    assert_eq!(decoded_request.id, 77);
    assert_eq!(decoded_request.topic.as_deref(), Some(&b"svc"[..]));
    assert_eq!(decoded_request.payload, "body");

    // The peer's view of our ping: it answers with a pong for the same id.
    match protocol.classify(codec.decode(&mut wire).unwrap().unwrap()) {
        Inbound::Ping { pong } => assert_eq!(pong, Frame::pong(78)),
        other => panic!("expected Ping, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------

fn any_kind() -> impl Strategy<Value = FrameKind> {
    prop::sample::select(FrameKind::ALL.to_vec())
}

fn any_frame() -> impl Strategy<Value = Frame> {
    (
        any_kind(),
        any::<u64>(),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(kind, id, topic, payload)| Frame {
            kind,
            id,
            topic: topic.map(Bytes::from),
            payload: Bytes::from(payload),
        })
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=64, 1..32)
}

/// Up to 4 KiB of bad input: uniformly random bytes (whose length prefix is almost
/// always huge); a valid stream with a few bytes overwritten and maybe cut short; or
/// hand-forged frames whose small length, kind, flags and topic length are each often
/// wrong, which reach every check past the length prefix.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let uniform = prop::collection::vec(any::<u8>(), 0..4096);
    let corrupted = (
        prop::collection::vec(any_frame(), 1..8),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(frames, overwrites, cut)| {
            let mut wire = encode_all(&frames).to_vec();
            for (at, byte) in overwrites {
                let at = at.index(wire.len());
                wire[at] = byte;
            }
            if let Some(cut) = cut {
                wire.truncate(cut.index(wire.len()));
            }
            wire.truncate(4096);
            wire
        });
    let forged_frame = (
        prop_oneof![0u32..16, 0u32..1100],
        0u8..8,
        prop_oneof![Just(0u8), Just(FLAG_TOPIC), any::<u8>()],
        any::<u64>(),
        prop_oneof![0u16..64, any::<u16>()],
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(length, kind, flags, id, topic_len, body)| {
            let mut wire = raw_header(length, kind, flags, id);
            if flags & FLAG_TOPIC != 0 {
                wire.put_u16(topic_len);
            }
            wire.extend_from_slice(&body);
            wire.to_vec()
        });
    let forged = prop::collection::vec(forged_frame, 1..8).prop_map(|frames| {
        let mut wire = frames.concat();
        wire.truncate(4096);
        wire
    });
    prop_oneof![uniform, corrupted, forged]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Garbage never panics, never makes the buffer grow toward a claimed length over
    /// the limit, and gives the same frames and the same error however it is chunked.
    #[test]
    fn random_bytes_in_random_chunks_never_panic_and_decode_identically(
        wire in garbage(),
        chunks in chunk_sizes(),
    ) {
        const MAX: usize = 1024;
        let chunked = decode_chunked(&mut FrameCodec::new(MAX), &wire, &chunks);
        let whole = decode_chunked(&mut FrameCodec::new(MAX), &wire, &[wire.len()]);

        prop_assert_eq!(&chunked.frames, &whole.frames);
        prop_assert_eq!(
            chunked.error.as_ref().map(ToString::to_string),
            whole.error.as_ref().map(ToString::to_string)
        );
        // Random length prefixes mostly claim megabytes or gigabytes; none may be
        // reserved. 16 KiB leaves room for the 4 KiB input and allocator rounding.
        prop_assert!(chunked.peak_capacity <= 16 * 1024, "{}", chunked.peak_capacity);
        for frame in &chunked.frames {
            prop_assert!(frame.encoded_len() <= PREFIX + MAX);
        }
        let consumed: usize = chunked.frames.iter().map(Frame::encoded_len).sum();
        prop_assert!(consumed <= wire.len());
        if chunked.error.is_none() {
            prop_assert_eq!(consumed, wire.len(), "a clean end means every byte was a frame");
        }
    }

    /// Valid frames come back exactly as sent whatever the chunking, and the stream
    /// ends cleanly.
    #[test]
    fn valid_frames_in_random_chunks_decode_to_the_originals(
        sent in prop::collection::vec(any_frame(), 0..8),
        chunks in chunk_sizes(),
        other_chunks in chunk_sizes(),
    ) {
        let wire = encode_all(&sent);
        let expected_len: usize = sent.iter().map(Frame::encoded_len).sum();
        prop_assert_eq!(wire.len(), expected_len);

        for sizes in [&chunks[..], &other_chunks[..], &[1], &[wire.len().max(1)]] {
            let decoded = decode_chunked(&mut FrameCodec::default(), &wire, sizes);
            prop_assert!(decoded.error.is_none(), "chunks {:?}: {:?}", sizes, decoded.error);
            prop_assert_eq!(&decoded.frames, &sent, "chunks {:?}", sizes);
        }
    }
}
