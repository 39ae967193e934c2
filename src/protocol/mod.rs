//! The protocol layer: a codec plus the frame semantics a [`Connection`] needs.
//!
//! A [`Protocol`] tells the Connection how to turn a caller's request into a frame
//! (stamping a request id where the protocol carries one), what a heartbeat ping looks
//! like, and what each inbound frame means ([`Inbound`]): the reply to a call, a ping
//! to answer, a pong, a push for the push recipient, or a request from the peer.
//!
//! Two correlation styles are supported ([`Correlation`]):
//! - **by id**: each request carries a `u64` id and its reply carries it back, so
//!   replies may arrive in any order (the built-in [`frame`] protocol);
//! - **in order**: replies carry no id and arrive in request order (pipelined
//!   protocols such as RESP). The Connection keeps a queue; a heartbeat ping takes a
//!   place in it like any call.
//!
//! Built in: [`frame`], a compact length-prefixed binary protocol, and [`resp`],
//! Redis's RESP2/RESP3 (in-order replies, pub/sub pushes, the `HELLO` handshake).
//!
//! [`Connection`]: crate::Connection

pub mod frame;
pub mod resp;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::codec::{Decoder, Encoder};

use crate::CloseReason;

/// How replies are matched with calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correlation {
    /// Each reply carries the id of its request; replies may arrive in any order.
    ById,
    /// Replies carry no id and arrive in the order requests were written.
    InOrder,
}

/// What an inbound frame means to the [`Connection`](crate::Connection).
#[derive(Debug)]
pub enum Inbound<P: Protocol> {
    /// The reply to a call. `id` is ignored under [`Correlation::InOrder`].
    Reply {
        /// The id of the request this answers.
        id: u64,
        /// The reply, or the error the peer answered with.
        reply: Result<P::Reply, RemoteError>,
    },
    /// The peer's liveness probe; `pong` is written back at once.
    Ping {
        /// The frame that answers the ping.
        pong: P::Frame,
    },
    /// The answer to one of our heartbeat pings (only under [`Correlation::ById`]).
    Pong {
        /// The id of the ping this answers.
        id: u64,
    },
    /// An unsolicited message for the push recipient.
    Push(P::Push),
    /// A request from the peer, handed to the connection's request recipient (a
    /// server). A connection without one treats it as a protocol violation.
    Request(P::Frame),
}

/// A protocol the [`Connection`](crate::Connection) can speak: its codec and the meaning
/// of its frames.
///
/// Implement it to bring your own wire format. The codec must never panic on any
/// input, and must check a claimed length against its limit before it allocates.
pub trait Protocol: Clone + Unpin + 'static {
    /// One frame on the wire, in either direction.
    type Frame: Send + 'static;
    /// Decodes inbound frames and encodes outbound ones.
    type Codec: Decoder<Item = Self::Frame, Error = Self::CodecError>
        + Encoder<Self::Frame, Error = Self::CodecError>
        + Unpin
        + 'static;
    /// The codec's error; it must convert from I/O errors (as tokio-util requires).
    type CodecError: std::error::Error + From<std::io::Error> + Send + Sync + 'static;
    /// What a caller asks for.
    type Request: Send + 'static;
    /// What a successful call returns.
    type Reply: Send + 'static;
    /// An unsolicited message from the peer.
    type Push: Send + 'static;

    /// A fresh codec for one connection.
    fn codec(&self) -> Self::Codec;

    /// How this protocol matches replies with calls.
    fn correlation(&self) -> Correlation;

    /// The frame that carries `request`. Under [`Correlation::ById`] it must carry `id`
    /// so that the reply can be matched; under [`Correlation::InOrder`] `id` may be ignored.
    fn request(&self, id: u64, request: Self::Request) -> Self::Frame;

    /// A heartbeat ping. Under [`Correlation::ById`] its pong must carry `id`; under
    /// [`Correlation::InOrder`] its reply takes the ping's place in the reply queue and
    /// its content is ignored.
    fn ping(&self, id: u64) -> Self::Frame;

    /// What an inbound frame means.
    fn classify(&self, frame: Self::Frame) -> Inbound<Self>;

    /// Whether the peer may hold `request`'s reply for long on purpose (a blocking
    /// command): such a call is bounded by its own timeout, and while one is
    /// outstanding the heartbeat does not take silence for a dead link (see
    /// [`Call::blocking`](crate::Call::blocking), which marks any one call). Defaults to
    /// `false`.
    fn is_blocking(&self, request: &Self::Request) -> bool {
        let _ = request;
        false
    }

    /// The frame that refuses a peer's `request` with `reason` (a server that cannot
    /// take it now), or `None` if the protocol has no way to say no, in which case
    /// the connection closes instead. Defaults to `None`.
    fn reject(&self, request: &Self::Frame, reason: &str) -> Option<Self::Frame> {
        let _ = (request, reason);
        None
    }

    /// Why a connection closes after its codec failed. The default calls every codec
    /// error malformed input; override it to tell transport errors apart.
    fn close_reason(error: Self::CodecError) -> CloseReason {
        CloseReason::Decode(Arc::new(error))
    }
}

/// An error reply from the peer: the call reached it and it said no.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteError {
    message: Bytes,
}

impl RemoteError {
    /// An error reply with `message`.
    pub fn new(message: impl Into<Bytes>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The raw message the peer sent.
    pub fn message(&self) -> &Bytes {
        &self.message
    }
}

impl fmt::Debug for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RemoteError")
            .field(&String::from_utf8_lossy(&self.message))
            .finish()
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.message))
    }
}

impl std::error::Error for RemoteError {}
