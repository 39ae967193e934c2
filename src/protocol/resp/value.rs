//! [`Value`]: one RESP2 or RESP3 reply, as the decoder hands it over.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// One RESP value, RESP2 and RESP3 types alike.
///
/// Payloads are [`Bytes`] cut out of the connection's read buffer without a copy.
/// The three nulls of the protocols (RESP2's null bulk string `$-1` and null array
/// `*-1`, RESP3's `_`) all decode to [`Value::Nil`]; RESP3's blob error `!` decodes
/// to [`Value::Error`] like RESP2's simple error `-`.
#[derive(Clone, PartialEq)]
pub enum Value {
    /// A null: `$-1`, `*-1` or `_`.
    Nil,
    /// A simple string (`+OK`).
    Simple(Bytes),
    /// An error: a simple error (`-ERR ...`) or a RESP3 blob error (`!`). At the top
    /// of a reply it reaches the caller as a
    /// [`RemoteError`](crate::protocol::RemoteError) instead.
    Error(Bytes),
    /// An integer (`:42`).
    Integer(i64),
    /// A bulk string (`$5\r\nhello`), binary-safe.
    Bulk(Bytes),
    /// An array (`*N`).
    Array(Vec<Value>),
    /// A RESP3 double (`,3.14`, `,inf`, `,nan`).
    Double(f64),
    /// A RESP3 boolean (`#t`, `#f`).
    Boolean(bool),
    /// A RESP3 big number (`(3492890328409238509324850943850943825024385`), its
    /// digits as sent.
    BigNumber(Bytes),
    /// A RESP3 verbatim string (`=15\r\ntxt:Some string`): a three-byte format
    /// (`txt`, `mkd`, ...) and the text.
    Verbatim {
        /// The format, such as `b"txt"`.
        format: [u8; 3],
        /// The text after the format and its colon.
        text: Bytes,
    },
    /// A RESP3 map (`%N`): key and value pairs in the order sent.
    Map(Vec<(Value, Value)>),
    /// A RESP3 set (`~N`).
    Set(Vec<Value>),
    /// A RESP3 push (`>N`). Pushes at the top of a frame are turned into
    /// [`RespPush`](super::RespPush)es (or, for subscribe confirmations, replies)
    /// by the codec; this variant is what a nested one, or a confirmation, looks like.
    Push(Vec<Value>),
    /// A RESP3 attribute (`|N`) and the value it describes.
    Attribute {
        /// The attribute's key and value pairs.
        attributes: Vec<(Value, Value)>,
        /// The value the attribute came before.
        data: Box<Value>,
    },
}

impl Value {
    /// The value without any attribute around it.
    pub fn without_attributes(self) -> Value {
        let mut value = self;
        while let Value::Attribute { data, .. } = value {
            value = *data;
        }
        value
    }

    /// The bytes of a bulk string, simple string or verbatim string's text.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Bulk(bytes) | Value::Simple(bytes) => Some(bytes),
            Value::Verbatim { text, .. } => Some(text),
            Value::Attribute { data, .. } => data.as_bytes(),
            _ => None,
        }
    }

    /// Like [`as_bytes`](Self::as_bytes), taking the value.
    pub fn into_bytes(self) -> Option<Bytes> {
        match self.without_attributes() {
            Value::Bulk(bytes) | Value::Simple(bytes) => Some(bytes),
            Value::Verbatim { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The number of an integer.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            Value::Attribute { data, .. } => data.as_integer(),
            _ => None,
        }
    }

    /// Whether this is [`Value::Nil`].
    pub fn is_nil(&self) -> bool {
        match self {
            Value::Nil => true,
            Value::Attribute { data, .. } => data.is_nil(),
            _ => false,
        }
    }

    /// Whether this is the simple string `OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self.as_simple(), Some(b"OK"))
    }

    fn as_simple(&self) -> Option<&[u8]> {
        match self {
            Value::Simple(bytes) => Some(bytes),
            Value::Attribute { data, .. } => data.as_simple(),
            _ => None,
        }
    }

    /// The elements of an array, set or push.
    pub fn as_slice(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) | Value::Set(items) | Value::Push(items) => Some(items),
            Value::Attribute { data, .. } => data.as_slice(),
            _ => None,
        }
    }

    /// Appends this value's RESP encoding to `dst` (the encoding a server would send;
    /// [`Value::Nil`] is written as `_` in RESP3 form). For tests and servers: a
    /// client sends [`Command`](super::Command)s.
    pub fn write_to(&self, dst: &mut BytesMut) {
        match self {
            Value::Nil => dst.put_slice(b"_\r\n"),
            Value::Simple(bytes) => line(dst, b'+', bytes),
            // A simple error where the message allows one, so RESP2 peers read it too.
            Value::Error(bytes) if !bytes.iter().any(|&b| b == b'\r' || b == b'\n') => {
                line(dst, b'-', bytes)
            }
            Value::Error(bytes) => blob(dst, b'!', bytes),
            Value::Integer(n) => number(dst, b':', *n),
            Value::Bulk(bytes) => blob(dst, b'$', bytes),
            Value::Array(items) => {
                header(dst, b'*', items.len());
                items.iter().for_each(|item| item.write_to(dst));
            }
            Value::Double(x) => {
                let text = if x.is_nan() {
                    "nan".to_owned()
                } else if x.is_infinite() {
                    if *x > 0.0 { "inf" } else { "-inf" }.to_owned()
                } else {
                    // `{:?}` prints the shortest text that reads back as the same f64.
                    format!("{x:?}")
                };
                line(dst, b',', text.as_bytes());
            }
            Value::Boolean(b) => dst.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Value::BigNumber(digits) => line(dst, b'(', digits),
            Value::Verbatim { format, text } => {
                header(dst, b'=', text.len() + 4);
                dst.put_slice(format);
                dst.put_u8(b':');
                dst.put_slice(text);
                dst.put_slice(b"\r\n");
            }
            Value::Map(pairs) => pairs_to(dst, b'%', pairs),
            Value::Set(items) => {
                header(dst, b'~', items.len());
                items.iter().for_each(|item| item.write_to(dst));
            }
            Value::Push(items) => {
                header(dst, b'>', items.len());
                items.iter().for_each(|item| item.write_to(dst));
            }
            Value::Attribute { attributes, data } => {
                pairs_to(dst, b'|', attributes);
                data.write_to(dst);
            }
        }
    }
}

fn pairs_to(dst: &mut BytesMut, marker: u8, pairs: &[(Value, Value)]) {
    header(dst, marker, pairs.len());
    for (key, value) in pairs {
        key.write_to(dst);
        value.write_to(dst);
    }
}

fn line(dst: &mut BytesMut, marker: u8, bytes: &[u8]) {
    dst.reserve(bytes.len() + 3);
    dst.put_u8(marker);
    dst.put_slice(bytes);
    dst.put_slice(b"\r\n");
}

fn blob(dst: &mut BytesMut, marker: u8, bytes: &[u8]) {
    header(dst, marker, bytes.len());
    dst.reserve(bytes.len() + 2);
    dst.put_slice(bytes);
    dst.put_slice(b"\r\n");
}

/// `<marker><n>\r\n` for a length or count.
pub(super) fn header(dst: &mut BytesMut, marker: u8, n: usize) {
    let mut digits = Digits::new();
    dst.reserve(24);
    dst.put_u8(marker);
    dst.put_slice(digits.unsigned(n as u64));
    dst.put_slice(b"\r\n");
}

fn number(dst: &mut BytesMut, marker: u8, n: i64) {
    let mut digits = Digits::new();
    dst.reserve(24);
    dst.put_u8(marker);
    dst.put_slice(digits.signed(n));
    dst.put_slice(b"\r\n");
}

/// Decimal digits of an integer, formatted on the stack.
pub(super) struct Digits {
    buf: [u8; 20],
}

impl Digits {
    pub(super) fn new() -> Self {
        Self { buf: [0; 20] }
    }

    pub(super) fn unsigned(&mut self, mut n: u64) -> &[u8] {
        let mut at = self.buf.len();
        loop {
            at -= 1;
            self.buf[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return &self.buf[at..];
            }
        }
    }

    /// `n` with a leading `-` if negative (20 bytes hold `-9223372036854775808`).
    pub(super) fn signed(&mut self, n: i64) -> &[u8] {
        let len = self.unsigned(n.unsigned_abs()).len();
        if n >= 0 {
            return &self.buf[self.buf.len() - len..];
        }
        let at = self.buf.len() - len - 1;
        self.buf[at] = b'-';
        &self.buf[at..]
    }
}

/// Bytes shown in `Debug` before the rest is elided, so a 4 MiB value does not flood
/// a log line.
const DEBUG_BYTES: usize = 128;

pub(super) struct Lossy<'a>(pub(super) &'a [u8]);

impl fmt::Debug for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(DEBUG_BYTES)];
        write!(f, "{:?}", String::from_utf8_lossy(shown))?;
        if self.0.len() > DEBUG_BYTES {
            write!(f, "...({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("Nil"),
            Value::Simple(b) => f.debug_tuple("Simple").field(&Lossy(b)).finish(),
            Value::Error(b) => f.debug_tuple("Error").field(&Lossy(b)).finish(),
            Value::Integer(n) => f.debug_tuple("Integer").field(n).finish(),
            Value::Bulk(b) => f.debug_tuple("Bulk").field(&Lossy(b)).finish(),
            Value::Array(items) => f.debug_tuple("Array").field(items).finish(),
            Value::Double(x) => f.debug_tuple("Double").field(x).finish(),
            Value::Boolean(b) => f.debug_tuple("Boolean").field(b).finish(),
            Value::BigNumber(b) => f.debug_tuple("BigNumber").field(&Lossy(b)).finish(),
            Value::Verbatim { format, text } => f
                .debug_struct("Verbatim")
                .field("format", &Lossy(format))
                .field("text", &Lossy(text))
                .finish(),
            Value::Map(pairs) => f.debug_tuple("Map").field(pairs).finish(),
            Value::Set(items) => f.debug_tuple("Set").field(items).finish(),
            Value::Push(items) => f.debug_tuple("Push").field(items).finish(),
            Value::Attribute { attributes, data } => f
                .debug_struct("Attribute")
                .field("attributes", attributes)
                .field("data", data)
                .finish(),
        }
    }
}
