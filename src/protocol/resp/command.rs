//! [`Command`]: a request to redis, built argument by argument, and [`CommandArg`],
//! what an argument can be.

use std::fmt;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use super::value::{header, Digits, Lossy};

/// Something that can be a command argument: text, bytes or a number.
///
/// Implemented for `str`, `String`, `[u8]`, `[u8; N]`, `Vec<u8>`, [`Bytes`],
/// the integer types (written in decimal, formatted on the stack), `f64` and `f32`,
/// and references to any of these.
pub trait CommandArg {
    /// Calls `write` once with this argument's bytes.
    fn with_bytes(&self, write: &mut dyn FnMut(&[u8]));
}

impl<T: CommandArg + ?Sized> CommandArg for &T {
    fn with_bytes(&self, write: &mut dyn FnMut(&[u8])) {
        (**self).with_bytes(write)
    }
}

macro_rules! bytes_arg {
    ($($ty:ty),*) => {$(
        impl CommandArg for $ty {
            fn with_bytes(&self, write: &mut dyn FnMut(&[u8])) {
                write(AsRef::<[u8]>::as_ref(self))
            }
        }
    )*};
}
bytes_arg!(str, String, [u8], Vec<u8>, Bytes, BytesMut);

impl<const N: usize> CommandArg for [u8; N] {
    fn with_bytes(&self, write: &mut dyn FnMut(&[u8])) {
        write(self)
    }
}

macro_rules! signed_arg {
    ($($ty:ty),*) => {$(
        impl CommandArg for $ty {
            fn with_bytes(&self, write: &mut dyn FnMut(&[u8])) {
                write(Digits::new().signed(*self as i64))
            }
        }
    )*};
}
signed_arg!(i8, i16, i32, i64, isize);

macro_rules! unsigned_arg {
    ($($ty:ty),*) => {$(
        impl CommandArg for $ty {
            fn with_bytes(&self, write: &mut dyn FnMut(&[u8])) {
                write(Digits::new().unsigned(*self as u64))
            }
        }
    )*};
}
unsigned_arg!(u16, u32, u64, usize);

impl CommandArg for f64 {
    fn with_bytes(&self, write: &mut dyn FnMut(&[u8])) {
        // Redis reads `inf`, `-inf` and the shortest round-trip text `{:?}` prints.
        let text = if self.is_infinite() {
            if *self > 0.0 { "inf" } else { "-inf" }.to_owned()
        } else {
            format!("{self:?}")
        };
        write(text.as_bytes())
    }
}

impl CommandArg for f32 {
    fn with_bytes(&self, write: &mut dyn FnMut(&[u8])) {
        f64::from(*self).with_bytes(write)
    }
}

/// One redis command: its name and arguments, each a binary-safe bulk string.
///
/// ```
/// use switchboard::protocol::resp::Command;
///
/// let set = Command::new("SET").arg("greeting").arg(b"hello").arg("EX").arg(60);
/// assert_eq!(set.name(), b"SET");
/// assert_eq!(set.arg_count(), 5);
/// assert_eq!(Command::get("greeting"), Command::new("GET").arg("greeting"));
/// ```
///
/// Arguments are written into one buffer as they are added (`$<len>\r\n<bytes>\r\n`
/// each), so encoding a command is one header and one copy, with no allocation per
/// argument. A command with an empty name is refused when it is sent
/// ([`RespError::EmptyCommand`](super::RespError::EmptyCommand)), and so is a
/// subscribe or unsubscribe with other than one channel
/// ([`RespError::SubscribeArity`](super::RespError::SubscribeArity)).
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    /// Every argument, name first, as `$<len>\r\n<bytes>\r\n`.
    body: BytesMut,
    /// Arguments in `body`, the name included.
    argc: usize,
    /// Where the name's bytes are in `body`.
    name: Range<usize>,
    /// The longest argument's length, checked against the codec's bulk limit.
    longest: usize,
}

impl Command {
    /// A command named `name` (`"GET"`, `"CLIENT"`, ...) with no arguments yet.
    pub fn new(name: impl CommandArg) -> Self {
        let mut command = Command {
            body: BytesMut::new(),
            argc: 0,
            name: 0..0,
            longest: 0,
        };
        command.name = command.push_arg(name);
        command
    }

    /// This command with `arg` appended.
    #[must_use]
    pub fn arg(mut self, arg: impl CommandArg) -> Self {
        self.push_arg(arg);
        self
    }

    /// Appends `arg`, for building a command in a loop; returns where its bytes are
    /// in the body.
    pub fn push_arg(&mut self, arg: impl CommandArg) -> Range<usize> {
        let body = &mut self.body;
        let mut range = 0..0;
        let mut longest = self.longest;
        arg.with_bytes(&mut |bytes| {
            header(body, b'$', bytes.len());
            let start = body.len();
            body.reserve(bytes.len() + 2);
            body.put_slice(bytes);
            body.put_slice(b"\r\n");
            range = start..start + bytes.len();
            longest = longest.max(bytes.len());
        });
        self.longest = longest;
        self.argc += 1;
        range
    }

    /// The command's name as given.
    pub fn name(&self) -> &[u8] {
        &self.body[self.name.clone()]
    }

    /// How many arguments the command has, its name included.
    pub fn arg_count(&self) -> usize {
        self.argc
    }

    /// The length of the longest argument.
    pub fn longest_arg(&self) -> usize {
        self.longest
    }

    /// The arguments, name first.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut rest: &[u8] = &self.body;
        std::iter::from_fn(move || {
            // `$<len>\r\n<bytes>\r\n`, as `push_arg` wrote it.
            let end = rest.iter().position(|&b| b == b'\r')?;
            let len: usize = std::str::from_utf8(&rest[1..end]).ok()?.parse().ok()?;
            let arg = &rest[end + 2..end + 2 + len];
            rest = &rest[end + 2 + len + 2..];
            Some(arg)
        })
    }

    /// Bytes this command takes on the wire.
    pub fn encoded_len(&self) -> usize {
        Digits::new().unsigned(self.argc as u64).len() + 3 + self.body.len()
    }

    /// Appends the command's encoding, `*<argc>\r\n` and the arguments, to `dst`.
    pub(super) fn write_to(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        header(dst, b'*', self.argc);
        dst.put_slice(&self.body);
    }

    /// Which pub/sub (un)subscribe command this is, if it is one.
    pub(super) fn subscription(&self) -> Option<&'static str> {
        const NAMES: [&str; 6] = [
            "SUBSCRIBE",
            "UNSUBSCRIBE",
            "PSUBSCRIBE",
            "PUNSUBSCRIBE",
            "SSUBSCRIBE",
            "SUNSUBSCRIBE",
        ];
        let name = self.name();
        if !(9..=12).contains(&name.len()) {
            return None;
        }
        NAMES
            .into_iter()
            .find(|known| known.as_bytes().eq_ignore_ascii_case(name))
    }

    /// Whether redis may hold this command's reply until something happens or its
    /// own timeout passes: `BLPOP`, `BRPOP`, `BRPOPLPUSH`, `BLMOVE`, `BLMPOP`,
    /// `BZPOPMIN`, `BZPOPMAX`, `BZMPOP`, `WAIT`, `WAITAOF`, and `XREAD` or
    /// `XREADGROUP` with the `BLOCK` option (before `STREAMS`: a stream named `BLOCK`
    /// does not count). The Connection bounds such a call by its own timeout rather
    /// than by the heartbeat (see [`Call::blocking`](crate::Call::blocking)), which
    /// [`RespProtocol`](super::RespProtocol) applies to these commands by itself.
    pub fn is_blocking(&self) -> bool {
        const BLOCKING: [&str; 10] = [
            "BLPOP",
            "BRPOP",
            "BRPOPLPUSH",
            "BLMOVE",
            "BLMPOP",
            "BZPOPMIN",
            "BZPOPMAX",
            "BZMPOP",
            "WAIT",
            "WAITAOF",
        ];
        let name = self.name();
        // Every call asks: answer the common case from the first letter.
        if !matches!(
            name.first().map(u8::to_ascii_uppercase),
            Some(b'B' | b'W' | b'X')
        ) {
            return false;
        }
        if BLOCKING
            .into_iter()
            .any(|known| known.as_bytes().eq_ignore_ascii_case(name))
        {
            return true;
        }
        if name.eq_ignore_ascii_case(b"XREAD") || name.eq_ignore_ascii_case(b"XREADGROUP") {
            return self
                .iter()
                .skip(1)
                .take_while(|arg| !arg.eq_ignore_ascii_case(b"STREAMS"))
                .any(|arg| arg.eq_ignore_ascii_case(b"BLOCK"));
        }
        false
    }

    /// `GET key`: the value, or nil.
    pub fn get(key: impl CommandArg) -> Self {
        Command::new("GET").arg(key)
    }

    /// `SET key value`: `OK`.
    pub fn set(key: impl CommandArg, value: impl CommandArg) -> Self {
        Command::new("SET").arg(key).arg(value)
    }

    /// `SET key value EX seconds`: `OK`; the key expires after `seconds` (at least 1).
    pub fn set_ex(key: impl CommandArg, value: impl CommandArg, seconds: u64) -> Self {
        Command::set(key, value).arg("EX").arg(seconds.max(1))
    }

    /// `DEL key`: how many keys were removed (0 or 1).
    pub fn del(key: impl CommandArg) -> Self {
        Command::new("DEL").arg(key)
    }

    /// `INCR key`: the value after the increment.
    pub fn incr(key: impl CommandArg) -> Self {
        Command::new("INCR").arg(key)
    }

    /// `PING`: `PONG` (`["pong", ""]` on a RESP2 connection in subscribed mode).
    pub fn ping() -> Self {
        Command::new("PING")
    }

    /// `PUBLISH channel message`: how many subscribers received it.
    pub fn publish(channel: impl CommandArg, message: impl CommandArg) -> Self {
        Command::new("PUBLISH").arg(channel).arg(message)
    }

    /// `SUBSCRIBE channel`: the confirmation `[subscribe, channel, count]`; then the
    /// channel's messages arrive as pushes.
    pub fn subscribe(channel: impl CommandArg) -> Self {
        Command::new("SUBSCRIBE").arg(channel)
    }

    /// `UNSUBSCRIBE channel`: the confirmation `[unsubscribe, channel, count]`.
    pub fn unsubscribe(channel: impl CommandArg) -> Self {
        Command::new("UNSUBSCRIBE").arg(channel)
    }

    /// `PSUBSCRIBE pattern`: the confirmation `[psubscribe, pattern, count]`.
    pub fn psubscribe(pattern: impl CommandArg) -> Self {
        Command::new("PSUBSCRIBE").arg(pattern)
    }

    /// `PUNSUBSCRIBE pattern`: the confirmation `[punsubscribe, pattern, count]`.
    pub fn punsubscribe(pattern: impl CommandArg) -> Self {
        Command::new("PUNSUBSCRIBE").arg(pattern)
    }

    /// `SSUBSCRIBE shardchannel` (redis 7): `[ssubscribe, channel, count]`.
    pub fn ssubscribe(channel: impl CommandArg) -> Self {
        Command::new("SSUBSCRIBE").arg(channel)
    }

    /// `SUNSUBSCRIBE shardchannel` (redis 7): `[sunsubscribe, channel, count]`.
    pub fn sunsubscribe(channel: impl CommandArg) -> Self {
        Command::new("SUNSUBSCRIBE").arg(channel)
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Command")?;
        f.debug_list().entries(self.iter().map(Lossy)).finish()
    }
}
