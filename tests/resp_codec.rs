//! The RESP codec on its own, synchronously: every RESP2 and RESP3 type decodes,
//! frames split anywhere decode the same, truncation and oversized claims are typed
//! errors that allocate nothing, garbage never panics, commands round-trip, and the
//! codec tells replies from pushes (subscribe confirmations included) as the module
//! documentation says.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use switchboard::protocol::resp::{
    Command, PushKind, RespCodec, RespError, RespFrame, RespLimits, RespPush, Value,
};
use tokio_util::codec::{Decoder, Encoder};

fn bulk(bytes: &'static [u8]) -> Value {
    Value::Bulk(Bytes::from_static(bytes))
}

fn simple(bytes: &'static [u8]) -> Value {
    Value::Simple(Bytes::from_static(bytes))
}

/// Every frame `input` holds, decoded in one go; panics on an error.
fn decode_all(codec: &mut RespCodec, input: &[u8]) -> Vec<RespFrame> {
    let mut buffer = BytesMut::from(input);
    let mut frames = Vec::new();
    while let Some(frame) = codec.decode_eof(&mut buffer).expect("valid input") {
        frames.push(frame);
    }
    assert!(buffer.is_empty(), "{} bytes left over", buffer.len());
    frames
}

/// The one reply `input` holds.
fn reply(input: &[u8]) -> Value {
    match &decode_all(&mut RespCodec::default(), input)[..] {
        [RespFrame::Reply(value)] => value.clone(),
        other => panic!("expected one reply, got {other:?}"),
    }
}

/// Feeds `input` in chunks of the given sizes (cycled), decoding after each one as
/// `Framed` does, then `decode_eof` at the end.
fn decode_chunked(
    codec: &mut RespCodec,
    input: &[u8],
    sizes: &[usize],
) -> Result<Vec<RespFrame>, RespError> {
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = input;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let take = sizes.next().unwrap_or(1).clamp(1, rest.len());
        buffer.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        while let Some(frame) = codec.decode(&mut buffer)? {
            frames.push(frame);
        }
    }
    while let Some(frame) = codec.decode_eof(&mut buffer)? {
        frames.push(frame);
    }
    Ok(frames)
}

fn decode_error(codec: &mut RespCodec, input: &[u8]) -> (RespError, BytesMut) {
    let mut buffer = BytesMut::from(input);
    loop {
        match codec.decode(&mut buffer) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error for {:?}", String::from_utf8_lossy(input)),
            Err(error) => return (error, buffer),
        }
    }
}

/// One encoding of each type, with the value it decodes to.
fn samples() -> Vec<(&'static [u8], Value)> {
    vec![
        // RESP2
        (b"+OK\r\n", simple(b"OK")),
        (
            b"-ERR wrong type\r\n",
            Value::Error(Bytes::from_static(b"ERR wrong type")),
        ),
        (b":42\r\n", Value::Integer(42)),
        (b":-9223372036854775808\r\n", Value::Integer(i64::MIN)),
        (b"$5\r\nhello\r\n", bulk(b"hello")),
        (b"$0\r\n\r\n", bulk(b"")),
        (b"$4\r\na\r\nb\r\n", bulk(b"a\r\nb")),
        (b"$-1\r\n", Value::Nil),
        (b"*-1\r\n", Value::Nil),
        (b"*0\r\n", Value::Array(vec![])),
        (
            b"*3\r\n:1\r\n$1\r\nx\r\n*1\r\n+y\r\n",
            Value::Array(vec![
                Value::Integer(1),
                bulk(b"x"),
                Value::Array(vec![simple(b"y")]),
            ]),
        ),
        // RESP3
        (b"_\r\n", Value::Nil),
        (b",3.25\r\n", Value::Double(3.25)),
        (b",-1e3\r\n", Value::Double(-1000.0)),
        (b",inf\r\n", Value::Double(f64::INFINITY)),
        (b",-inf\r\n", Value::Double(f64::NEG_INFINITY)),
        (b"#t\r\n", Value::Boolean(true)),
        (b"#f\r\n", Value::Boolean(false)),
        (
            b"!21\r\nSYNTAX invalid syntax\r\n",
            Value::Error(Bytes::from_static(b"SYNTAX invalid syntax")),
        ),
        (
            b"=15\r\ntxt:Some string\r\n",
            Value::Verbatim {
                format: *b"txt",
                text: Bytes::from_static(b"Some string"),
            },
        ),
        (
            b"(3492890328409238509324850943850943825024385\r\n",
            Value::BigNumber(Bytes::from_static(
                b"3492890328409238509324850943850943825024385",
            )),
        ),
        (
            b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n#f\r\n",
            Value::Map(vec![
                (simple(b"first"), Value::Integer(1)),
                (bulk(b"second"), Value::Boolean(false)),
            ]),
        ),
        (b"%0\r\n", Value::Map(vec![])),
        (
            b"~2\r\n+a\r\n:2\r\n",
            Value::Set(vec![simple(b"a"), Value::Integer(2)]),
        ),
        (
            b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.1923\r\n*1\r\n:2039\r\n",
            Value::Attribute {
                attributes: vec![(
                    simple(b"key-popularity"),
                    Value::Map(vec![(bulk(b"a"), Value::Double(0.1923))]),
                )],
                data: Box::new(Value::Array(vec![Value::Integer(2039)])),
            },
        ),
        (
            b"*2\r\n|0\r\n:1\r\n>1\r\n+nested push\r\n",
            Value::Array(vec![
                Value::Attribute {
                    attributes: vec![],
                    data: Box::new(Value::Integer(1)),
                },
                Value::Push(vec![simple(b"nested push")]),
            ]),
        ),
    ]
}

#[test]
fn every_type_decodes() {
    for (input, expected) in samples() {
        assert_eq!(
            reply(input),
            expected,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    match reply(b",nan\r\n") {
        Value::Double(x) => assert!(x.is_nan()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bulk_payloads_are_cut_from_the_read_buffer_without_a_copy() {
    let mut buffer = BytesMut::from(&b"$5\r\nhello\r\n"[..]);
    let start = buffer.as_ptr() as usize;
    let frame = RespCodec::default().decode(&mut buffer).unwrap();
    let Some(RespFrame::Reply(Value::Bulk(bytes))) = frame else {
        panic!("{frame:?}");
    };
    assert_eq!(
        bytes.as_ptr() as usize,
        start + 4,
        "points into the read buffer"
    );
}

#[test]
fn frames_split_at_every_byte_decode_the_same() {
    let all: Vec<u8> = samples()
        .iter()
        .flat_map(|(bytes, _)| bytes.to_vec())
        .collect();
    let expected: Vec<RespFrame> = samples()
        .into_iter()
        .map(|(_, value)| RespFrame::Reply(value))
        .collect();
    for split in 0..=all.len() {
        let mut codec = RespCodec::default();
        let mut buffer = BytesMut::from(&all[..split]);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(&mut buffer).unwrap() {
            frames.push(frame);
        }
        buffer.extend_from_slice(&all[split..]);
        while let Some(frame) = codec.decode_eof(&mut buffer).unwrap() {
            frames.push(frame);
        }
        assert_eq!(frames, expected, "split at {split}");
    }
    // And one byte at a time.
    let frames = decode_chunked(&mut RespCodec::default(), &all, &[1]).unwrap();
    assert_eq!(frames, expected);
}

#[test]
fn a_value_cut_short_at_eof_is_an_error_not_silence() {
    for (input, _) in samples() {
        for cut in 1..input.len() {
            let mut codec = RespCodec::default();
            let mut buffer = BytesMut::from(&input[..cut]);
            while let Ok(Some(_)) = codec.decode(&mut buffer) {}
            let result = codec.decode_eof(&mut buffer);
            assert!(
                matches!(result, Err(RespError::Truncated { .. })),
                "{:?} cut at {cut}: {result:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
    // A clean end between values is no error.
    let mut buffer = BytesMut::new();
    assert!(RespCodec::default()
        .decode_eof(&mut buffer)
        .unwrap()
        .is_none());
}

#[test]
fn an_oversized_bulk_is_refused_before_anything_is_reserved() {
    let limits = RespLimits::default().max_bulk_length(1024);
    let mut codec = RespCodec::new(limits);
    let (error, buffer) = decode_error(&mut codec, b"$1025\r\n");
    assert!(
        matches!(
            error,
            RespError::BulkTooLong {
                length: 1025,
                max: 1024
            }
        ),
        "{error:?}"
    );
    assert!(buffer.capacity() < 1024, "capacity {}", buffer.capacity());

    // The same inside an array, and for blob errors and verbatim strings.
    for input in [
        &b"*2\r\n:1\r\n$99999999999\r\n"[..],
        b"!2000\r\n",
        b"=5000\r\n",
    ] {
        let (error, _) = decode_error(&mut RespCodec::new(limits), input);
        assert!(matches!(error, RespError::BulkTooLong { .. }), "{error:?}");
    }
}

#[test]
fn a_large_bulk_within_the_limit_is_reserved_a_step_at_a_time() {
    // 60 MiB claimed, within the 64 MiB default; only the header has arrived.
    let mut codec = RespCodec::default();
    let mut buffer = BytesMut::from(&b"$62914560\r\nabc"[..]);
    assert!(codec.decode(&mut buffer).unwrap().is_none());
    assert!(
        buffer.capacity() <= 128 * 1024,
        "reserved {} bytes for a body that has not arrived",
        buffer.capacity()
    );
}

#[test]
fn too_many_elements_are_refused_before_anything_is_reserved() {
    let limits = RespLimits::default().max_elements(100);
    for input in [
        &b"*101\r\n"[..],
        b"~101\r\n",
        b">101\r\n",
        b"%101\r\n",
        b"|101\r\n",
    ] {
        let (error, _) = decode_error(&mut RespCodec::new(limits), input);
        assert!(
            matches!(
                error,
                RespError::TooManyElements {
                    count: 101,
                    max: 100
                }
            ),
            "{error:?}"
        );
    }
    // A huge count within the limit reserves little until elements arrive: the
    // codec's memory is bounded by what was sent, not by what was claimed.
    let mut codec = RespCodec::default();
    let mut buffer = BytesMut::from(&b"*1048576\r\n:1\r\n"[..]);
    assert!(codec.decode(&mut buffer).unwrap().is_none());
    assert!(
        buffer.is_empty(),
        "complete elements are taken from the buffer"
    );
}

#[test]
fn nesting_deeper_than_the_limit_is_refused() {
    let limits = RespLimits::default().max_depth(8);
    let within: Vec<u8> = b"*1\r\n".repeat(8).into_iter().chain(*b":1\r\n").collect();
    assert_eq!(decode_all(&mut RespCodec::new(limits), &within).len(), 1);

    let deeper = b"*1\r\n".repeat(9);
    let (error, _) = decode_error(&mut RespCodec::new(limits), &deeper);
    assert!(matches!(error, RespError::TooDeep { max: 8 }), "{error:?}");

    // Also with the default limit: 100,000 nested arrays are an error, not a stack
    // overflow or a hundred thousand vectors.
    let (error, _) = decode_error(&mut RespCodec::default(), &b"*1\r\n".repeat(100_000));
    assert!(matches!(error, RespError::TooDeep { max: 64 }), "{error:?}");
}

#[test]
fn a_line_without_crlf_cannot_grow_the_buffer_past_the_limit() {
    let limits = RespLimits::default().max_line_length(1000);
    // Fed a little at a time, the error comes as soon as the line cannot end within
    // the limit, not later.
    let mut codec = RespCodec::new(limits);
    let mut buffer = BytesMut::new();
    buffer.put_u8(b'+');
    let mut fed = 1;
    let error = loop {
        buffer.extend_from_slice(&[b'a'; 100]);
        fed += 100;
        match codec.decode(&mut buffer) {
            Ok(None) => assert!(fed <= 1002, "still waiting after {fed} bytes"),
            Ok(Some(frame)) => panic!("{frame:?}"),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(error, RespError::LineTooLong { max: 1000 }),
        "{error:?}"
    );

    // A line just within the limit is fine; one byte over is not.
    let mut ok = vec![b'+'];
    ok.extend_from_slice(&[b'x'; 999]);
    ok.extend_from_slice(b"\r\n");
    assert_eq!(decode_all(&mut RespCodec::new(limits), &ok).len(), 1);
    let mut over = vec![b'+'];
    over.extend_from_slice(&[b'x'; 1000]);
    over.extend_from_slice(b"\r\n");
    let (error, _) = decode_error(&mut RespCodec::new(limits), &over);
    assert!(matches!(error, RespError::LineTooLong { .. }), "{error:?}");

    // Headers are lines too.
    let mut header = vec![b'$'];
    header.extend_from_slice(&[b'1'; 2000]);
    let (error, _) = decode_error(&mut RespCodec::new(limits), &header);
    assert!(matches!(error, RespError::LineTooLong { .. }), "{error:?}");
}

/// Regression: `max_line_length(usize::MAX)`, the natural way to say "no limit",
/// overflowed `max + 2` while looking for the line's end: a panic in debug builds, and
/// every line refused as `LineTooLong` in release builds.
#[test]
fn a_line_limit_of_usize_max_means_no_limit() {
    for max in [usize::MAX, usize::MAX - 1] {
        let limits = RespLimits::default().max_line_length(max);
        let mut line = vec![b'+'];
        line.extend_from_slice(&[b'x'; 100_000]);
        line.extend_from_slice(b"\r\n:42\r\n");
        let frames = decode_chunked(&mut RespCodec::new(limits), &line, &[7, 4096]).unwrap();
        assert_eq!(frames.len(), 2, "max_line_length {max}");
        assert!(matches!(&frames[1], RespFrame::Reply(Value::Integer(42))));
    }
}

#[test]
fn unknown_type_bytes_are_errors() {
    for byte in [b'?', b'x', 0, b' ', b'.', b';', 0xff] {
        let input = [byte, b'1', b'\r', b'\n'];
        let (error, _) = decode_error(&mut RespCodec::default(), &input);
        assert!(
            matches!(error, RespError::UnknownType(found) if found == byte),
            "{byte:#x}: {error:?}"
        );
    }
}

#[test]
fn negative_lengths_other_than_minus_one_are_errors() {
    for input in [
        &b"$-2\r\n"[..],
        b"*-5\r\n",
        b"%-1\r\n",
        b"~-1\r\n",
        b">-1\r\n",
        b"!-1\r\n",
        b"=-1\r\n",
        b"$-9223372036854775808\r\n",
        b"$abc\r\n",
        b"$?\r\n",
        b"*?\r\n",
        b"$\r\n",
        b"$99999999999999999999999\r\n",
    ] {
        let (error, _) = decode_error(&mut RespCodec::default(), input);
        assert!(
            matches!(error, RespError::InvalidLength(_)),
            "{:?}: {error:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn malformed_scalars_are_errors() {
    for input in [
        &b":12a\r\n"[..],
        b":\r\n",
        b"#x\r\n",
        b"#\r\n",
        b"_x\r\n",
        b",abc\r\n",
        b"$3\r\nabcXY",
        b"=3\r\ntxt\r\n",
        b"=5\r\ntxt-x\r\n",
        b"+OK\n",
        b"\r\n",
        b"\n",
    ] {
        let (error, _) = decode_error(&mut RespCodec::default(), input);
        assert!(
            matches!(error, RespError::Malformed(_)),
            "{:?}: {error:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn commands_encode_as_arrays_of_bulk_strings_and_round_trip() {
    let command = Command::new("SET")
        .arg("key")
        .arg(b"va\r\nlue")
        .arg(Bytes::from_static(b""))
        .arg(-42i64)
        .arg(7u64)
        .arg(String::from("x"))
        .arg(1.5f64);
    let mut buffer = BytesMut::new();
    RespCodec::default()
        .encode(command.clone(), &mut buffer)
        .unwrap();
    assert_eq!(
        &buffer[..],
        &b"*8\r\n$3\r\nSET\r\n$3\r\nkey\r\n$7\r\nva\r\nlue\r\n$0\r\n\r\n$3\r\n-42\r\n$1\r\n7\r\n$1\r\nx\r\n$3\r\n1.5\r\n"[..]
    );
    assert_eq!(buffer.len(), command.encoded_len());
    let args: Vec<&[u8]> = command.iter().collect();
    assert_eq!(args[2], b"va\r\nlue");
    assert_eq!(args.len(), 8);
    match reply(&buffer) {
        Value::Array(items) => {
            let decoded: Vec<Bytes> = items.into_iter().map(|v| v.into_bytes().unwrap()).collect();
            assert_eq!(decoded, args);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(format!("{:?}", Command::get("k")), r#"Command["GET", "k"]"#);
}

#[test]
fn commands_that_cannot_be_sent_are_refused_and_nothing_is_written() {
    let limits = RespLimits::default().max_bulk_length(8);
    let mut codec = RespCodec::new(limits);
    let mut buffer = BytesMut::from(&b"earlier"[..]);
    let refused = [
        (Command::new(""), "empty"),
        (Command::new("SUBSCRIBE"), "no channel"),
        (Command::new("subscribe").arg("a").arg("b"), "two channels"),
        (Command::new("UNSUBSCRIBE"), "unsubscribe all"),
        (
            Command::new("PUnsubscribe").arg("a").arg("b"),
            "two patterns",
        ),
        (
            Command::set("k", "123456789"),
            "argument over the bulk limit",
        ),
    ];
    for (command, why) in refused {
        let result = codec.encode(command, &mut buffer);
        assert!(result.is_err(), "{why}");
        assert_eq!(&buffer[..], b"earlier", "{why}");
    }
    assert!(matches!(
        codec.encode(Command::new(""), &mut buffer),
        Err(RespError::EmptyCommand)
    ));
    let mut codec = RespCodec::default();
    assert!(matches!(
        codec.encode(Command::new("SSUBSCRIBE"), &mut buffer),
        Err(RespError::SubscribeArity { channels: 0, .. })
    ));
}

/// Encodes `command` with `codec`, as a connection writes it.
fn send(codec: &mut RespCodec, command: Command) {
    codec.encode(command, &mut BytesMut::new()).unwrap();
}

#[test]
fn resp3_pushes_are_pushes_and_confirmations_answer_their_command() {
    let mut codec = RespCodec::default();
    // A message push with no command outstanding.
    let frames = decode_all(
        &mut codec,
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
    );
    assert_eq!(frames, [RespFrame::Push(RespPush::message("ch", "hi"))]);

    // SUBSCRIBE: its confirmation is the reply; the messages around it are pushes.
    send(&mut codec, Command::subscribe("ch"));
    send(&mut codec, Command::get("k"));
    let frames = decode_all(
        &mut codec,
        b">4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$1\r\nx\r\n\
          >3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n\
          >3\r\n$8\r\nsmessage\r\n$2\r\nsh\r\n$1\r\ny\r\n\
          $1\r\nv\r\n",
    );
    assert_eq!(frames.len(), 4);
    assert_eq!(
        frames[0],
        RespFrame::Push(RespPush::pmessage("c*", "ch", "x"))
    );
    assert_eq!(
        frames[1],
        RespFrame::Reply(Value::Push(vec![
            bulk(b"subscribe"),
            bulk(b"ch"),
            Value::Integer(1)
        ]))
    );
    match &frames[2] {
        RespFrame::Push(push) => {
            assert_eq!(push.kind, PushKind::SMessage);
            assert_eq!(
                (&push.channel[..], &push.payload[..]),
                (&b"sh"[..], &b"y"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(frames[3], RespFrame::Reply(bulk(b"v")));

    // A confirmation nobody asked for (redis's own sunsubscribe when a cluster slot
    // moves) is a push, not a reply.
    let frames = decode_all(
        &mut codec,
        b">3\r\n$12\r\nsunsubscribe\r\n$2\r\nsh\r\n:0\r\n",
    );
    match &frames[..] {
        [RespFrame::Push(push)] => {
            assert_eq!(
                push.kind,
                PushKind::Other(Bytes::from_static(b"sunsubscribe"))
            );
            assert_eq!(&push.channel[..], b"sh");
            assert!(push.raw.is_some());
        }
        other => panic!("{other:?}"),
    }
    // Other kinds (client-side caching) are pushes with their raw value.
    let frames = decode_all(
        &mut codec,
        b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nkey\r\n",
    );
    match &frames[..] {
        [RespFrame::Push(push)] => {
            assert_eq!(
                push.kind,
                PushKind::Other(Bytes::from_static(b"invalidate"))
            );
            assert_eq!(
                push.raw.as_deref(),
                Some(&Value::Push(vec![
                    bulk(b"invalidate"),
                    Value::Array(vec![bulk(b"key")])
                ]))
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn resp2_message_arrays_are_pushes_only_in_subscribed_mode() {
    let mut codec = RespCodec::default();
    let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
    // Not subscribed: an array that looks like a message is somebody's reply.
    assert!(matches!(
        &decode_all(&mut codec, message)[..],
        [RespFrame::Reply(_)]
    ));

    send(&mut codec, Command::subscribe("ch"));
    send(&mut codec, Command::ssubscribe("sh"));
    let frames = decode_all(
        &mut codec,
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n\
          *3\r\n$10\r\nssubscribe\r\n$2\r\nsh\r\n:1\r\n",
    );
    assert!(frames
        .iter()
        .all(|f| matches!(f, RespFrame::Reply(Value::Array(_)))));
    assert_eq!(
        decode_all(&mut codec, message),
        [RespFrame::Push(RespPush::message("ch", "hi"))]
    );
    // PING in subscribed mode answers ["pong", ""]: a reply.
    let pong = decode_all(&mut codec, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert!(
        matches!(&pong[..], [RespFrame::Reply(Value::Array(_))]),
        "{pong:?}"
    );

    // Unsubscribed from the channel, still subscribed to the shard channel.
    send(&mut codec, Command::unsubscribe("ch"));
    decode_all(
        &mut codec,
        b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n",
    );
    let smessage = b"*3\r\n$8\r\nsmessage\r\n$2\r\nsh\r\n$1\r\nz\r\n";
    assert!(matches!(
        &decode_all(&mut codec, smessage)[..],
        [RespFrame::Push(_)]
    ));
    // Redis unsubscribes the shard channel on its own (a cluster slot moved): a push,
    // and the connection is no longer subscribed.
    let unsolicited = decode_all(
        &mut codec,
        b"*3\r\n$12\r\nsunsubscribe\r\n$2\r\nsh\r\n:0\r\n",
    );
    assert!(
        matches!(&unsolicited[..], [RespFrame::Push(push)] if push.kind == PushKind::Other(Bytes::from_static(b"sunsubscribe"))),
        "{unsolicited:?}"
    );
    // Out of subscribed mode: arrays are replies again.
    assert!(matches!(
        &decode_all(&mut codec, message)[..],
        [RespFrame::Reply(_)]
    ));
}

#[test]
fn a_confirmation_shaped_reply_with_no_subscribe_written_is_just_a_reply() {
    let mut codec = RespCodec::default();
    // Say EVAL returned this: it must not switch the codec into subscribed mode.
    decode_all(&mut codec, b"*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n");
    let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
    assert!(matches!(
        &decode_all(&mut codec, message)[..],
        [RespFrame::Reply(_)]
    ));
}

#[test]
fn confirmations_are_matched_by_command_and_channel() {
    let mut codec = RespCodec::default();
    // An EVAL written before a SUBSCRIBE returns an array shaped like a confirmation,
    // of another channel: it is EVAL's reply, and the real confirmation still counts.
    send(&mut codec, Command::new("EVAL").arg("return x").arg(0));
    send(&mut codec, Command::subscribe("news"));
    let frames = decode_all(
        &mut codec,
        b"*3\r\n$9\r\nsubscribe\r\n$5\r\nother\r\n:1\r\n\
          >3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n",
    );
    assert!(
        matches!(frames[0], RespFrame::Reply(Value::Array(_))),
        "{frames:?}"
    );
    assert!(
        matches!(frames[1], RespFrame::Reply(Value::Push(_))),
        "{frames:?}"
    );
    // The EVAL reply did not put the codec in RESP2 subscribed mode.
    let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
    assert!(matches!(
        &decode_all(&mut codec, message)[..],
        [RespFrame::Reply(_)]
    ));

    // A subscribe refused with an error leaves nothing behind once a later one is
    // confirmed: an unsolicited confirmation of the refused channel is then a push.
    send(&mut codec, Command::subscribe("forbidden"));
    send(&mut codec, Command::subscribe("allowed"));
    let frames = decode_all(
        &mut codec,
        b"-NOPERM no permissions\r\n>3\r\n$9\r\nsubscribe\r\n$7\r\nallowed\r\n:2\r\n\
          >3\r\n$9\r\nsubscribe\r\n$9\r\nforbidden\r\n:3\r\n",
    );
    assert!(
        matches!(frames[0], RespFrame::Reply(Value::Error(_))),
        "{frames:?}"
    );
    assert!(
        matches!(frames[1], RespFrame::Reply(Value::Push(_))),
        "{frames:?}"
    );
    assert!(matches!(frames[2], RespFrame::Push(_)), "{frames:?}");
    // A confirmation of another command or channel is not the reply either.
    send(&mut codec, Command::psubscribe("n*"));
    let frames = decode_all(
        &mut codec,
        b">3\r\n$9\r\nsubscribe\r\n$2\r\nn*\r\n:1\r\n\
          >3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:1\r\n",
    );
    assert!(matches!(frames[0], RespFrame::Push(_)), "{frames:?}");
    assert!(matches!(frames[1], RespFrame::Reply(_)), "{frames:?}");
}

#[test]
fn a_big_array_in_small_reads_is_consumed_as_it_arrives() {
    let mut input = BytesMut::new();
    Value::Array((0..50_000).map(Value::Integer).collect()).write_to(&mut input);
    let mut codec = RespCodec::default();
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in input.chunks(7) {
        buffer.extend_from_slice(chunk);
        while let Some(frame) = codec.decode(&mut buffer).unwrap() {
            frames.push(frame);
        }
        // What was read is never re-read: at most one unfinished line stays behind.
        assert!(buffer.len() < 32, "{} bytes kept", buffer.len());
    }
    match &frames[..] {
        [RespFrame::Reply(Value::Array(items))] => assert_eq!(items.len(), 50_000),
        other => panic!("{} frames", other.len()),
    }
}

/// Values of every type, nested, that encode and decode to themselves.
fn any_value() -> impl Strategy<Value = Value> {
    let text = proptest::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from);
    let line = "[a-zA-Z0-9 :._-]{0,16}".prop_map(|s| Bytes::from(s.into_bytes()));
    let leaf = prop_oneof![
        Just(Value::Nil),
        line.clone().prop_map(Value::Simple),
        text.clone().prop_map(Value::Error),
        any::<i64>().prop_map(Value::Integer),
        text.clone().prop_map(Value::Bulk),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |x| !x.is_nan())
            .prop_map(Value::Double),
        any::<bool>().prop_map(Value::Boolean),
        "-?[1-9][0-9]{0,40}".prop_map(|s| Value::BigNumber(Bytes::from(s.into_bytes()))),
        (prop_oneof![Just(*b"txt"), Just(*b"mkd")], text)
            .prop_map(|(format, text)| Value::Verbatim { format, text }),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        let items = proptest::collection::vec(inner.clone(), 0..6);
        let pairs = proptest::collection::vec((inner.clone(), inner.clone()), 0..4);
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

/// A top-level value: anything but a push (which the codec turns into a `RespPush`).
fn top_level_value() -> impl Strategy<Value = Value> {
    any_value().prop_filter("pushes are classified", |value| {
        let mut inner = value;
        while let Value::Attribute { data, .. } = inner {
            inner = data;
        }
        !matches!(inner, Value::Push(_))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_in_random_chunks_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        sizes in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let limits = RespLimits::default()
            .max_bulk_length(256)
            .max_elements(64)
            .max_depth(8)
            .max_line_length(64);
        let _ = decode_chunked(&mut RespCodec::new(limits), &bytes, &sizes);
    }

    #[test]
    fn random_bytes_after_a_valid_prefix_never_panic(
        value in top_level_value(),
        bytes in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'*'), Just(b'$'), Just(b'-'), any::<u8>()],
            0..64,
        ),
        sizes in proptest::collection::vec(1usize..16, 1..4),
    ) {
        let mut input = BytesMut::new();
        value.write_to(&mut input);
        input.extend_from_slice(&bytes);
        let _ = decode_chunked(&mut RespCodec::default(), &input, &sizes);
    }

    #[test]
    fn valid_encodings_decode_the_same_in_any_chunking(
        values in proptest::collection::vec(top_level_value(), 1..6),
        sizes in proptest::collection::vec(1usize..48, 1..8),
    ) {
        let mut input = BytesMut::new();
        for value in &values {
            value.write_to(&mut input);
        }
        let whole = decode_chunked(&mut RespCodec::default(), &input, &[input.len()]).unwrap();
        let chunked = decode_chunked(&mut RespCodec::default(), &input, &sizes).unwrap();
        let expected: Vec<RespFrame> = values.into_iter().map(RespFrame::Reply).collect();
        prop_assert_eq!(&whole, &expected);
        prop_assert_eq!(&chunked, &expected);
    }

    #[test]
    fn commands_round_trip(
        args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
        sizes in proptest::collection::vec(1usize..32, 1..4),
    ) {
        let mut command = Command::new("CMD");
        for arg in &args {
            command.push_arg(arg);
        }
        let mut input = BytesMut::new();
        RespCodec::default().encode(&command, &mut input).unwrap();
        let frames = decode_chunked(&mut RespCodec::default(), &input, &sizes).unwrap();
        let mut expected = vec![bulk(b"CMD")];
        expected.extend(args.into_iter().map(|arg| Value::Bulk(Bytes::from(arg))));
        prop_assert_eq!(frames, vec![RespFrame::Reply(Value::Array(expected))]);
    }
}

/// An attribute before a push leaves it a push: were it taken for a reply, the
/// connection would hand it to the oldest call as its answer. An attribute before a
/// reply stays with the reply.
#[test]
fn an_attribute_before_a_push_leaves_it_a_push() {
    let mut codec = RespCodec::default();
    let input = b"|1\r\n+key-popularity\r\n:3\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n\
                  |1\r\n+ttl\r\n:5\r\n+OK\r\n";
    let frames = decode_all(&mut codec, input);
    assert_eq!(frames.len(), 2, "{frames:?}");
    match &frames[0] {
        RespFrame::Push(push) => assert_eq!(push, &RespPush::message("ch", "hi")),
        other => panic!("an attributed push came out as {other:?}"),
    }
    match &frames[1] {
        RespFrame::Reply(Value::Attribute { data, .. }) => assert_eq!(**data, simple(b"OK")),
        other => panic!("an attributed reply came out as {other:?}"),
    }
}
