//! A second reader of the RESP rules: the oracle that `RespCodec` is checked against by
//! the fuzz harness and by `tests/reliability_codec.rs` (which includes this file with
//! `#[path]`, so that the two checks share one copy of it).
//!
//! It follows the rules as `RespCodec` and `RespError` document them, and shares no
//! code with the codec: it reads by plain recursion over a whole input, where the codec
//! is a state machine that keeps its place between reads and takes each element from
//! the buffer as it completes. Besides the values, it says where each element ends and
//! where a broken rule becomes visible, so that a checker can tell, for any chunking,
//! what each call of `decode` must return and how many bytes it must have taken.

use std::collections::BTreeSet;

use bytes::Bytes;
use switchboard::protocol::resp::{PushKind, RespError, RespLimits, Value};

/// What the RESP rules make of a whole input, according to [`read`].
#[derive(Debug)]
pub struct Reading {
    /// The complete top-level values, each with the offset just past it.
    pub values: Vec<(Value, usize)>,
    /// The offset just past each element: a line with its CRLF (a scalar, or the
    /// header of a bulk or aggregate), or a bulk body with its CRLF. The codec takes
    /// an element from the buffer once it is whole, and nothing of one that is not.
    pub element_ends: Vec<usize>,
    /// Where each bulk body starts, whether or not it arrived whole.
    pub body_starts: BTreeSet<usize>,
    /// How the input ends.
    pub end: End,
}

/// How an input ends, according to [`read`].
#[derive(Debug)]
pub enum End {
    /// Between two values.
    Clean,
    /// The input breaks a rule, which a decoder can tell once `at` bytes have arrived.
    Broken { error: RespError, at: usize },
    /// The input stops inside a value, whose unfinished element starts at `from` (the
    /// end of the input if the next element has not begun).
    Truncated { from: usize },
}

/// Why [`Reader`] stopped inside a value.
enum Stop {
    Broken(RespError, usize),
    Truncated(usize),
}

/// Reads RESP values from a complete input, by recursion.
struct Reader<'a> {
    wire: &'a [u8],
    limits: RespLimits,
    /// Where the next element starts.
    at: usize,
    element_ends: Vec<usize>,
    body_starts: BTreeSet<usize>,
}

/// What the RESP rules make of `wire` under `limits`.
pub fn read(wire: &[u8], limits: RespLimits) -> Reading {
    let mut reader = Reader {
        wire,
        limits,
        at: 0,
        element_ends: Vec::new(),
        body_starts: BTreeSet::new(),
    };
    let mut values = Vec::new();
    let end = loop {
        if reader.at == wire.len() {
            break End::Clean;
        }
        match reader.value(0) {
            Ok(value) => values.push((value, reader.at)),
            Err(Stop::Broken(error, at)) => break End::Broken { error, at },
            Err(Stop::Truncated(from)) => break End::Truncated { from },
        }
    };
    Reading {
        values,
        element_ends: reader.element_ends,
        body_starts: reader.body_starts,
        end,
    }
}

impl<'a> Reader<'a> {
    /// A value that starts at the read position, inside `depth` aggregates.
    fn value(&mut self, depth: usize) -> Result<Value, Stop> {
        let line = self.line()?;
        let at = self.at;
        let broken = |error| Err(Stop::Broken(error, at));
        let (marker, content) = (line[0], &line[1..]);
        let text = || Bytes::copy_from_slice(content);
        match marker {
            b'+' => Ok(Value::Simple(text())),
            b'-' => Ok(Value::Error(text())),
            b'(' => Ok(Value::BigNumber(text())),
            b':' => match integer(content) {
                Some(n) => Ok(Value::Integer(n)),
                None => broken(RespError::Malformed("integer")),
            },
            b'_' if content.is_empty() => Ok(Value::Nil),
            b'_' => broken(RespError::Malformed("null")),
            b'#' => match content {
                b"t" => Ok(Value::Boolean(true)),
                b"f" => Ok(Value::Boolean(false)),
                _ => broken(RespError::Malformed("boolean")),
            },
            b',' => match std::str::from_utf8(content)
                .ok()
                .and_then(|t| t.parse().ok())
            {
                Some(x) => Ok(Value::Double(x)),
                None => broken(RespError::Malformed("double")),
            },
            b'$' | b'!' | b'=' => self.blob(marker, content),
            b'*' | b'~' | b'>' | b'%' | b'|' => self.aggregate(marker, content, depth),
            other => broken(RespError::UnknownType(other)),
        }
    }

    /// The line at the read position, type byte first, without its CRLF. A line ends
    /// at its first `\n`, which must follow a `\r`, and holds at most
    /// `max_line_length` bytes: if its `\n` is not among the first
    /// `max_line_length + 2` bytes, it is too long.
    fn line(&mut self) -> Result<&'a [u8], Stop> {
        let start = self.at;
        let rest = &self.wire[start..];
        let max = self.limits.max_line_length;
        let room = max.saturating_add(2);
        let Some(newline) = rest.iter().take(room).position(|&b| b == b'\n') else {
            return Err(if rest.len() >= room {
                Stop::Broken(RespError::LineTooLong { max }, start + room)
            } else {
                Stop::Truncated(start)
            });
        };
        let end = start + newline + 1;
        if newline == 0 || rest[newline - 1] != b'\r' {
            let error = RespError::Malformed("line ended by LF without CR");
            return Err(Stop::Broken(error, end));
        }
        if newline == 1 {
            return Err(Stop::Broken(RespError::Malformed("empty line"), end));
        }
        self.finish(end);
        Ok(&rest[..newline - 1])
    }

    /// A bulk string, blob error or verbatim string whose header line was `marker`
    /// and `content`.
    fn blob(&mut self, marker: u8, content: &[u8]) -> Result<Value, Stop> {
        let broken = |error| Stop::Broken(error, self.at);
        let Some(length) = self.length(content)? else {
            return match marker {
                b'$' => Ok(Value::Nil),
                _ => Err(broken(RespError::InvalidLength("-1".to_owned()))),
            };
        };
        let max = self.limits.max_bulk_length;
        if length > max as u64 {
            return Err(broken(RespError::BulkTooLong { length, max }));
        }
        if marker == b'=' && length < 4 {
            return Err(broken(RespError::Malformed("verbatim string")));
        }
        let body = self.body(length as usize)?;
        let data = Bytes::copy_from_slice(body);
        match marker {
            b'$' => Ok(Value::Bulk(data)),
            b'!' => Ok(Value::Error(data)),
            _ if body[3] != b':' => Err(Stop::Broken(
                RespError::Malformed("verbatim string"),
                self.at,
            )),
            _ => Ok(Value::Verbatim {
                format: [body[0], body[1], body[2]],
                text: data.slice(4..),
            }),
        }
    }

    /// The `length` bytes of a body at the read position, which its CRLF must follow.
    fn body(&mut self, length: usize) -> Result<&'a [u8], Stop> {
        let start = self.at;
        self.body_starts.insert(start);
        let end = start + length + 2;
        let Some(body) = self.wire.get(start..end) else {
            return Err(Stop::Truncated(start));
        };
        if !body.ends_with(b"\r\n") {
            let error = RespError::Malformed("bulk string not followed by CRLF");
            return Err(Stop::Broken(error, end));
        }
        self.finish(end);
        Ok(&body[..length])
    }

    /// An array, set, push, map or attribute whose header line was `marker` and
    /// `content`, inside `depth` aggregates.
    fn aggregate(&mut self, marker: u8, content: &[u8], depth: usize) -> Result<Value, Stop> {
        let broken = |error| Stop::Broken(error, self.at);
        let Some(count) = self.length(content)? else {
            return match marker {
                b'*' => Ok(Value::Nil),
                _ => Err(broken(RespError::InvalidLength("-1".to_owned()))),
            };
        };
        let max = self.limits.max_elements;
        if count > max as u64 {
            return Err(broken(RespError::TooManyElements { count, max }));
        }
        // An empty aggregate holds nothing, so it nests nothing; an attribute, even an
        // empty one, holds the value that follows it.
        if (count > 0 || marker == b'|') && depth >= self.limits.max_depth {
            let max = self.limits.max_depth;
            return Err(broken(RespError::TooDeep { max }));
        }
        let elements = match marker {
            b'%' | b'|' => 2 * count,
            _ => count,
        };
        let mut items = Vec::new();
        for _ in 0..elements {
            items.push(self.value(depth + 1)?);
        }
        Ok(match marker {
            b'*' => Value::Array(items),
            b'~' => Value::Set(items),
            b'>' => Value::Push(items),
            b'%' => Value::Map(pairs(items)),
            _ => Value::Attribute {
                attributes: pairs(items),
                data: Box::new(self.value(depth + 1)?),
            },
        })
    }

    /// A length or count from a header line just read: `None` for `-1`.
    fn length(&self, content: &[u8]) -> Result<Option<u64>, Stop> {
        let invalid = || {
            let text = String::from_utf8_lossy(content).into_owned();
            Stop::Broken(RespError::InvalidLength(text), self.at)
        };
        match integer(content) {
            Some(-1) => Ok(None),
            Some(n) => u64::try_from(n).map(Some).map_err(|_| invalid()),
            None => Err(invalid()),
        }
    }

    /// The element that began at the read position ends at `end`.
    fn finish(&mut self, end: usize) {
        self.at = end;
        self.element_ends.push(end);
    }
}

/// A RESP integer, as `i64`'s `FromStr` reads it (so `+5` and `007` are numbers).
pub fn integer(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Keys and values, alternating, as pairs.
fn pairs(items: Vec<Value>) -> Vec<(Value, Value)> {
    let mut items = items.into_iter();
    let mut pairs = Vec::new();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        pairs.push((key, value));
    }
    pairs
}

/// The kind of message a push's `items` are, if they have a message's shape: a kind
/// and two strings (three for `pmessage`).
pub fn message_kind(items: &[Value]) -> Option<PushKind> {
    if !items.iter().all(|item| item.as_bytes().is_some()) {
        return None;
    }
    match (&items.first()?.as_bytes()?[..], items.len()) {
        (b"message", 3) => Some(PushKind::Message),
        (b"smessage", 3) => Some(PushKind::SMessage),
        (b"pmessage", 4) => Some(PushKind::PMessage),
        _ => None,
    }
}

/// Whether the codec hands a top-level `value` over as a push (when no subscribe was
/// written): a `>` push, with or without attributes before it.
pub fn is_push(value: &Value) -> bool {
    push_items(value).is_some()
}

/// The items of a top-level push, past any attributes before it.
pub fn push_items(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Push(items) => Some(items),
        Value::Attribute { data, .. } => push_items(data),
        _ => None,
    }
}

/// What the codec hands over for a top-level `value` when no subscribe was written, as
/// the value it encodes back to: a push of a message's shape keeps its strings' bytes
/// but not their wire forms (each comes back a bulk string); anything else is itself.
pub fn as_decoded(value: &Value) -> Value {
    match value {
        // Attributes before a push are dropped, the push handed over.
        Value::Attribute { data, .. } if is_push(data) => as_decoded(data),
        Value::Push(items) if message_kind(items).is_some() => Value::Push(
            items
                .iter()
                .map(|item| Value::Bulk(item.as_bytes().cloned().unwrap_or_default()))
                .collect(),
        ),
        other => other.clone(),
    }
}
