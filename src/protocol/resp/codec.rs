//! [`RespCodec`]: RESP2/RESP3 values in, [`Command`]s out, within [`RespLimits`].
//!
//! # Decoding
//! The decoder is a small state machine that consumes the read buffer as it goes: a
//! finished element is cut out of the buffer at once (bulk strings with
//! `split_to(..).freeze()`, no copy) and kept in the aggregate it belongs to, which
//! waits on a stack. A large array arriving in many small reads is therefore read
//! once, not re-parsed from its start after every read, and a line that has not
//! ended is searched for its `\n` only in the bytes that arrived since the last look.
//!
//! Every claimed size is checked before anything is reserved for it: a bulk length
//! against `max_bulk_length` (and then room for the body is reserved 64 KiB at a
//! time as it arrives), an aggregate count against `max_elements` (and its vector
//! starts small and grows with what arrives), nesting against `max_depth`, and a
//! line that has no `\r\n` within `max_line_length` is an error rather than a
//! reason to buffer more. No input makes it panic.
//!
//! # Reading the stream: replies and pushes
//! The decoder also decides what each top-level value is, because that depends on
//! what was written before it (see the [module documentation](super) for the rules):
//! it yields [`RespFrame::Reply`] or [`RespFrame::Push`].

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::push::{confirmation, Count, RespPush};
use super::{Command, RespError, RespFrame, RespLimits, Value};

/// The most the decoder reserves at once for the rest of a bulk string.
const RESERVE_STEP: usize = 64 * 1024;
/// Elements an aggregate's vector has room for before any arrive.
const INITIAL_ITEMS: usize = 16;
/// Confirmations remembered at most; past it the oldest is forgotten. Redis answers
/// in order, so only a long run of refused subscribes could leave this many.
const MAX_EXPECTED: usize = 4096;

/// The RESP codec of one connection: decodes replies and pushes, encodes commands.
///
/// One codec serves both directions of a connection, and it must: what the decoder
/// makes of a subscribe confirmation depends on the encoder having written the
/// subscribe (see the [module documentation](super)).
#[derive(Debug, Default)]
pub struct RespCodec {
    limits: RespLimits,
    /// Aggregates begun and not yet complete, innermost last.
    stack: Vec<Partial>,
    /// A bulk-like value whose header has been read and whose body is awaited.
    body: Option<(Body, usize)>,
    /// How far into the buffer the current line has been searched for its `\n`.
    scanned: usize,
    /// Subscribe and unsubscribe commands written whose confirmation has not arrived:
    /// the command and its channel, oldest first.
    expected: VecDeque<(&'static str, Bytes)>,
    /// The subscription counts of the last RESP2 (array) confirmations: channels and
    /// patterns, and shard channels. A RESP2 connection is in subscribed mode while
    /// either is above zero, and only then are `message` arrays pushes.
    resp2_subscriptions: [i64; 2],
}

#[derive(Debug)]
struct Partial {
    kind: Aggregate,
    /// Elements still to come (a map's keys and values count apart).
    remaining: usize,
    items: Vec<Value>,
}

#[derive(Debug)]
enum Aggregate {
    Array,
    Set,
    Push,
    Map,
    Attribute,
    /// An attribute that is complete and waits for the value it describes.
    Attributed(Vec<(Value, Value)>),
}

#[derive(Debug, Clone, Copy)]
enum Body {
    Bulk,
    Error,
    Verbatim,
}

/// What one step of the decoder achieved.
enum Step {
    /// More bytes are needed.
    Pending,
    /// An aggregate was opened (or a body is awaited); nothing complete yet.
    Opened,
    /// A value is complete.
    Value(Value),
}

impl RespCodec {
    /// A codec within `limits`.
    pub fn new(limits: RespLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The limits this codec holds the peer to.
    pub fn limits(&self) -> RespLimits {
        self.limits
    }

    /// Whether a value is partly read.
    fn in_value(&self) -> bool {
        !self.stack.is_empty() || self.body.is_some()
    }

    /// Reads the next complete top-level value, or `None` if more bytes are needed.
    fn next_value(&mut self, src: &mut BytesMut) -> Result<Option<Value>, RespError> {
        loop {
            let mut value = match self.step(src)? {
                Step::Pending => return Ok(None),
                Step::Opened => continue,
                Step::Value(value) => value,
            };
            // Fold the value into the aggregates that wait for it, closing each one
            // that it completes.
            loop {
                let Some(top) = self.stack.last_mut() else {
                    return Ok(Some(value));
                };
                if let Aggregate::Attributed(_) = top.kind {
                    let Some(Partial {
                        kind: Aggregate::Attributed(attributes),
                        ..
                    }) = self.stack.pop()
                    else {
                        unreachable!("the top was just seen to be an attribute");
                    };
                    value = Value::Attribute {
                        attributes,
                        data: Box::new(value),
                    };
                    continue;
                }
                top.items.push(value);
                top.remaining -= 1;
                if top.remaining > 0 {
                    break;
                }
                let done = self.stack.pop().expect("the top was just seen");
                value = match done.kind {
                    Aggregate::Array => Value::Array(done.items),
                    Aggregate::Set => Value::Set(done.items),
                    Aggregate::Push => Value::Push(done.items),
                    Aggregate::Map => Value::Map(pairs(done.items)),
                    Aggregate::Attribute => {
                        // Same depth as the attribute it replaces.
                        self.stack.push(Partial {
                            kind: Aggregate::Attributed(pairs(done.items)),
                            remaining: 1,
                            items: Vec::new(),
                        });
                        break;
                    }
                    Aggregate::Attributed(_) => unreachable!("handled above"),
                };
            }
        }
    }

    /// Reads one scalar, one awaited body, or one aggregate header.
    fn step(&mut self, src: &mut BytesMut) -> Result<Step, RespError> {
        if let Some((kind, len)) = self.body {
            let total = len + 2;
            if src.len() < total {
                // Room for what is missing, a step at a time: a peer that sends a
                // header and stalls costs at most one step, not the length it claims.
                src.reserve((total - src.len()).min(RESERVE_STEP));
                return Ok(Step::Pending);
            }
            if &src[len..total] != b"\r\n" {
                return Err(RespError::Malformed("bulk string not followed by CRLF"));
            }
            let data = src.split_to(len).freeze();
            src.advance(2);
            self.body = None;
            return Ok(Step::Value(match kind {
                Body::Bulk => Value::Bulk(data),
                Body::Error => Value::Error(data),
                Body::Verbatim if data[3] != b':' => {
                    return Err(RespError::Malformed("verbatim string"))
                }
                Body::Verbatim => Value::Verbatim {
                    format: [data[0], data[1], data[2]],
                    text: data.slice(4..),
                },
            }));
        }

        let Some(end) = self.find_line(src)? else {
            return Ok(Step::Pending);
        };
        // Whatever happens to this line next, the search for the next one starts afresh.
        self.scanned = 0;
        let marker = src[0];
        let content = &src[1..end];
        let value = match marker {
            b'+' | b'-' | b'(' => {
                let mut line = src.split_to(end).freeze();
                src.advance(2);
                line.advance(1);
                return Ok(Step::Value(match marker {
                    b'+' => Value::Simple(line),
                    b'-' => Value::Error(line),
                    _ => Value::BigNumber(line),
                }));
            }
            b':' => Value::Integer(parse_int(content).ok_or(RespError::Malformed("integer"))?),
            b'_' if content.is_empty() => Value::Nil,
            b'_' => return Err(RespError::Malformed("null")),
            b'#' => match content {
                b"t" => Value::Boolean(true),
                b"f" => Value::Boolean(false),
                _ => return Err(RespError::Malformed("boolean")),
            },
            b',' => Value::Double(
                std::str::from_utf8(content)
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .ok_or(RespError::Malformed("double"))?,
            ),
            b'$' | b'!' | b'=' => {
                let len = parse_length(content)?;
                src.advance(end + 2);
                let Some(len) = len else {
                    return match marker {
                        b'$' => Ok(Step::Value(Value::Nil)),
                        _ => Err(RespError::InvalidLength("-1".to_owned())),
                    };
                };
                if len > self.limits.max_bulk_length as u64 {
                    return Err(RespError::BulkTooLong {
                        length: len,
                        max: self.limits.max_bulk_length,
                    });
                }
                let kind = match marker {
                    b'$' => Body::Bulk,
                    b'!' => Body::Error,
                    _ if len < 4 => return Err(RespError::Malformed("verbatim string")),
                    _ => Body::Verbatim,
                };
                self.body = Some((kind, len as usize));
                return Ok(Step::Opened);
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let count = parse_length(content)?;
                src.advance(end + 2);
                return self.open(marker, count);
            }
            other => return Err(RespError::UnknownType(other)),
        };
        src.advance(end + 2);
        Ok(Step::Value(value))
    }

    /// Opens an aggregate of `count` elements (`None`: a null array).
    fn open(&mut self, marker: u8, count: Option<u64>) -> Result<Step, RespError> {
        let Some(count) = count else {
            return match marker {
                b'*' => Ok(Step::Value(Value::Nil)),
                _ => Err(RespError::InvalidLength("-1".to_owned())),
            };
        };
        let max = self.limits.max_elements;
        if count > max as u64 {
            return Err(RespError::TooManyElements { count, max });
        }
        let count = count as usize;
        let (kind, remaining) = match marker {
            b'*' => (Aggregate::Array, count),
            b'~' => (Aggregate::Set, count),
            b'>' => (Aggregate::Push, count),
            b'%' => (Aggregate::Map, count * 2),
            _ => (Aggregate::Attribute, count * 2),
        };
        if remaining == 0 {
            match kind {
                Aggregate::Array => return Ok(Step::Value(Value::Array(Vec::new()))),
                Aggregate::Set => return Ok(Step::Value(Value::Set(Vec::new()))),
                Aggregate::Push => return Ok(Step::Value(Value::Push(Vec::new()))),
                Aggregate::Map => return Ok(Step::Value(Value::Map(Vec::new()))),
                _ => {}
            }
        }
        if self.stack.len() >= self.limits.max_depth {
            return Err(RespError::TooDeep {
                max: self.limits.max_depth,
            });
        }
        let partial = match kind {
            Aggregate::Attribute if remaining == 0 => Partial {
                kind: Aggregate::Attributed(Vec::new()),
                remaining: 1,
                items: Vec::new(),
            },
            kind => Partial {
                kind,
                remaining,
                items: Vec::with_capacity(remaining.min(INITIAL_ITEMS)),
            },
        };
        self.stack.push(partial);
        Ok(Step::Opened)
    }

    /// The index of the `\r` that ends the line at the start of `src`, if it has
    /// arrived; an error if it cannot end within `max_line_length`.
    fn find_line(&mut self, src: &BytesMut) -> Result<Option<usize>, RespError> {
        let max = self.limits.max_line_length;
        // The `\n` may be at most at `max + 1` (the line, then `\r`). Saturating, so
        // that `usize::MAX` means no limit rather than an overflow.
        let room = max.saturating_add(2);
        let upto = src.len().min(room);
        let from = self.scanned.min(upto);
        let window = &src[from..upto];
        match window.iter().position(|&b| b == b'\n') {
            Some(at) => {
                let newline = from + at;
                if newline == 0 || src[newline - 1] != b'\r' {
                    return Err(RespError::Malformed("line ended by LF without CR"));
                }
                if newline == 1 {
                    return Err(RespError::Malformed("empty line"));
                }
                Ok(Some(newline - 1))
            }
            None if src.len() >= room => Err(RespError::LineTooLong { max }),
            None => {
                self.scanned = src.len();
                Ok(None)
            }
        }
    }

    /// What a complete top-level value is: a reply or a push.
    fn classify(&mut self, value: Value) -> RespFrame {
        match value {
            Value::Push(items) => {
                if self.confirms(&items).is_some() {
                    return RespFrame::Reply(Value::Push(items));
                }
                RespFrame::Push(RespPush::from_push(items))
            }
            Value::Array(items) => {
                if let Some((which, count)) = self.confirms(&items) {
                    self.resp2_subscriptions[which.index()] = count;
                    return RespFrame::Reply(Value::Array(items));
                }
                if self.resp2_subscriptions.iter().any(|&count| count > 0) {
                    // A subscribed RESP2 connection runs only (un)subscribes and PING,
                    // so a confirmation that answers none of ours is unsolicited
                    // (a cluster's `sunsubscribe`), and it still says what the
                    // connection is subscribed to.
                    if let Some((which, count)) = confirmation(&items) {
                        self.resp2_subscriptions[which.index()] = count;
                        return RespFrame::Push(RespPush::from_push(items));
                    }
                    match RespPush::from_message(items) {
                        Ok(push) => return RespFrame::Push(push),
                        Err(items) => return RespFrame::Reply(Value::Array(items)),
                    }
                }
                RespFrame::Reply(Value::Array(items))
            }
            // An attribute describes the value after it; before a push, the push is
            // still out of band, never the answer to a call. `RespPush` has no place
            // for attributes, so they are dropped.
            mut value @ Value::Attribute { .. } if is_attributed_push(&value) => {
                while let Value::Attribute { data, .. } = value {
                    value = *data;
                }
                self.classify(value)
            }
            other => RespFrame::Reply(other),
        }
    }

    /// Whether `items` confirms a subscribe or unsubscribe this codec wrote, and
    /// which count it carries. The match is by command and channel; since redis
    /// answers in order, the commands remembered before the matched one were
    /// answered otherwise (refused with an error) and are forgotten with it.
    fn confirms(&mut self, items: &[Value]) -> Option<(Count, i64)> {
        if self.expected.is_empty() {
            return None;
        }
        let (which, count) = confirmation(items)?;
        let kind = items[0].as_bytes()?;
        let channel = items[1].as_bytes()?;
        let at = self.expected.iter().position(|(command, expected)| {
            command.as_bytes().eq_ignore_ascii_case(kind) && expected == channel
        })?;
        self.expected.drain(..=at);
        Some((which, count))
    }

    /// Checks `command` and writes it to `dst`; nothing is written if it is refused.
    fn encode_command(&mut self, command: &Command, dst: &mut BytesMut) -> Result<(), RespError> {
        if command.name().is_empty() {
            return Err(RespError::EmptyCommand);
        }
        if command.longest_arg() > self.limits.max_bulk_length {
            return Err(RespError::BulkTooLong {
                length: command.longest_arg() as u64,
                max: self.limits.max_bulk_length,
            });
        }
        if let Some(name) = command.subscription() {
            let channels = command.arg_count() - 1;
            if channels != 1 {
                return Err(RespError::SubscribeArity {
                    command: name.to_owned(),
                    channels,
                });
            }
            let channel = command.iter().nth(1).unwrap_or_default();
            if self.expected.len() == MAX_EXPECTED {
                self.expected.pop_front();
            }
            self.expected
                .push_back((name, Bytes::copy_from_slice(channel)));
        }
        command.write_to(dst);
        Ok(())
    }
}

impl Count {
    fn index(self) -> usize {
        self as usize
    }
}

/// Keys and values, alternating, as pairs.
/// Whether `value` is a push with one or more attributes before it.
fn is_attributed_push(mut value: &Value) -> bool {
    while let Value::Attribute { data, .. } = value {
        value = data;
    }
    matches!(value, Value::Push(_))
}

fn pairs(items: Vec<Value>) -> Vec<(Value, Value)> {
    let mut pairs = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        pairs.push((key, value));
    }
    pairs
}

fn parse_int(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A length or count: `Some(n)`, or `None` for `-1`.
fn parse_length(digits: &[u8]) -> Result<Option<u64>, RespError> {
    let invalid = || RespError::InvalidLength(String::from_utf8_lossy(digits).into_owned());
    match parse_int(digits).ok_or_else(invalid)? {
        -1 => Ok(None),
        n => u64::try_from(n).map(Some).map_err(|_| invalid()),
    }
}

impl Decoder for RespCodec {
    type Item = RespFrame;
    type Error = RespError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RespFrame>, RespError> {
        Ok(self.next_value(src)?.map(|value| self.classify(value)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<RespFrame>, RespError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && !self.in_value() => Ok(None),
            None => Err(RespError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<RespFrame> for RespCodec {
    type Error = RespError;

    /// Writes a command; a reply or push (for a test peer or a server) is written as
    /// the value it is.
    fn encode(&mut self, frame: RespFrame, dst: &mut BytesMut) -> Result<(), RespError> {
        match frame {
            RespFrame::Command(command) => self.encode_command(&command, dst),
            RespFrame::Reply(value) => {
                value.write_to(dst);
                Ok(())
            }
            RespFrame::Push(push) => {
                push.to_value().write_to(dst);
                Ok(())
            }
        }
    }
}

impl Encoder<Command> for RespCodec {
    type Error = RespError;

    fn encode(&mut self, command: Command, dst: &mut BytesMut) -> Result<(), RespError> {
        self.encode_command(&command, dst)
    }
}

impl Encoder<&Command> for RespCodec {
    type Error = RespError;

    fn encode(&mut self, command: &Command, dst: &mut BytesMut) -> Result<(), RespError> {
        self.encode_command(command, dst)
    }
}
