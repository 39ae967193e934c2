//! `resp`: Redis's protocol, RESP2 and RESP3, as a [`Protocol`] of switchboard.
//!
//! A [`Pool`](crate::Pool) of [`Connection`](crate::Connection)s speaking
//! [`RespProtocol`] talks to a real `redis-server`: build it with a
//! [`RespConnector`] around any [`Connector`](crate::transport::Connector) (it runs
//! the `HELLO`/`AUTH`/`SELECT` handshake on each new stream), and use it through the
//! typed [`Redis`] client or with raw [`Command`]s. The user guide is
//! `docs/resp.md`.
//!
//! # What maps to what
//! | switchboard                    | RESP                                                |
//! |--------------------------------|-----------------------------------------------------|
//! | [`Protocol::Request`]          | [`Command`]: an array of bulk strings               |
//! | [`Protocol::Reply`]            | [`Value`]: any reply but an error                   |
//! | error reply                    | `-ERR ...` or a blob error `!`: [`RemoteError`]     |
//! | [`Protocol::Push`]             | [`RespPush`]: `message`, `pmessage`, `smessage`, ... |
//! | [`Correlation`]                | [`Correlation::InOrder`]: redis answers in order    |
//! | heartbeat ping                 | `PING` (its reply takes its place in the order)     |
//! | [`Protocol::Frame`]            | [`RespFrame`]: a command out, a reply or push in    |
//!
//! # Replies, pushes and subscribe confirmations
//! Replies carry no id, so the [`Connection`](crate::Connection) hands each reply to
//! the oldest call waiting; anything that is not a reply must never be taken for
//! one. The [`RespCodec`] serves both directions of a connection and decides, as it
//! reads each top-level value, which it is:
//!
//! - **RESP3**: a `>` push is a [`RespPush`], with one exception. Redis confirms
//!   `SUBSCRIBE`, `UNSUBSCRIBE`, `PSUBSCRIBE`, `PUNSUBSCRIBE`, `SSUBSCRIBE` and
//!   `SUNSUBSCRIBE` with a push (`>3 subscribe <channel> <count>`), and that push
//!   is the command's reply: it takes the command's place in the order.
//! - **RESP2**: a connection in subscribed mode receives messages as plain arrays
//!   (`["message", channel, payload]`, `["pmessage", pattern, channel, payload]`,
//!   `["smessage", channel, payload]`). The codec enters subscribed mode when a
//!   confirmation (an array reply to one of the six commands) counts one or more
//!   subscriptions, and leaves it when the counts are back to zero; only in that
//!   mode are arrays of a message's shape pushes (and so are confirmations that
//!   answer none of its commands: redis's own `sunsubscribe`). In subscribed mode redis answers
//!   `PING` with `["pong", ""]`: a reply, like any other array.
//!
//! **The rule that keeps the order sound: one channel per (un)subscribe command.**
//! Redis sends one confirmation per channel named, and an `UNSUBSCRIBE` with no
//! channel one per current subscription (or, subscribed to nothing, one with a nil
//! channel, as redis 7.0 does), so such a command would get several replies, or a
//! number the client cannot know in advance. The encoder therefore refuses any of
//! the six commands that does not name exactly one channel or pattern
//! ([`RespError::SubscribeArity`]: the call fails, nothing is written, the
//! connection carries on), and remembers the command and channel of each one it
//! writes. A confirmation is a reply when it names a remembered command and
//! channel; since redis answers in order, the commands remembered before that one
//! were answered otherwise (refused with an error, say) and are forgotten with it.
//! Any other confirmation-shaped value is not a reply to a subscribe: a push is
//! unsolicited (redis sends `sunsubscribe` on its own when a cluster slot moves)
//! and goes to the push recipient as [`PushKind::Other`]; an array is some other
//! command's reply (an `EVAL` can return anything).
//!
//! What this does not cover, so do not do it: subscribing inside `MULTI` (the
//! confirmations come back inside `EXEC`'s reply, and a RESP2 connection would not
//! know it is subscribed), or sending a subscribe with
//! [`SendFrame`](crate::SendFrame) (its confirmation would arrive as a reply nobody
//! asked for, which closes the connection). A subscribe that redis refused, or that
//! the connection could not write for lack of buffer room after encoding it, stays
//! remembered until a later confirmation is matched; meanwhile an unsolicited push
//! confirming that very command and channel would be taken for a reply.
//! Subscriptions belong to the [`Broker`](crate::Broker), which
//! sends one channel per command; the [`Redis`] client does not subscribe.
//!
//! # Limits
//! [`RespLimits`]: bulk length (default 64 MiB, also applied to each outgoing
//! argument), elements per aggregate (1,048,576), nesting depth (64) and line length
//! (64 KiB), each checked before anything is reserved for what the peer claims; see
//! [`codec`](RespCodec).
//!
//! [`RemoteError`]: crate::protocol::RemoteError

mod client;
mod codec;
mod command;
mod error;
mod handshake;
mod limits;
mod push;
mod value;

use std::sync::Arc;

use crate::protocol::{Correlation, Inbound, Protocol, RemoteError};
use crate::CloseReason;

pub use client::{Redis, RedisError};
pub use codec::RespCodec;
pub use command::{Command, CommandArg};
pub use error::RespError;
pub use handshake::{HandshakeError, RespConnector, RespVersion, DEFAULT_HANDSHAKE_TIMEOUT};
pub use limits::{
    RespLimits, DEFAULT_MAX_BULK_LENGTH, DEFAULT_MAX_DEPTH, DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_LINE_LENGTH,
};
pub use push::{PushKind, RespPush};
pub use value::Value;

/// One RESP frame: a command on its way out, or a reply or push that came in.
#[derive(Debug, Clone, PartialEq)]
pub enum RespFrame {
    /// A command to write.
    Command(Command),
    /// A reply (an error reply too) to the oldest command not yet answered.
    Reply(Value),
    /// A push: not a reply to anything.
    Push(RespPush),
}

impl From<Command> for RespFrame {
    fn from(command: Command) -> Self {
        RespFrame::Command(command)
    }
}

/// Redis's protocol: [`Command`]s in order, [`Value`] replies, [`RespPush`]es.
///
/// The same protocol serves RESP2 and RESP3 connections: the codec tells them apart
/// by what arrives, and the version is chosen by the [`RespConnector`]'s handshake.
#[derive(Debug, Clone, Copy, Default)]
pub struct RespProtocol {
    limits: RespLimits,
}

impl RespProtocol {
    /// The protocol with the default [`RespLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The protocol within `limits`. Defaults to [`RespLimits::default`].
    pub fn with_limits(limits: RespLimits) -> Self {
        Self { limits }
    }

    /// The limits every connection's codec holds the peer to.
    pub fn limits(&self) -> RespLimits {
        self.limits
    }
}

impl Protocol for RespProtocol {
    type Frame = RespFrame;
    type Codec = RespCodec;
    type CodecError = RespError;
    type Request = Command;
    type Reply = Value;
    type Push = RespPush;

    fn codec(&self) -> RespCodec {
        RespCodec::new(self.limits)
    }

    fn correlation(&self) -> Correlation {
        Correlation::InOrder
    }

    fn request(&self, _id: u64, command: Command) -> RespFrame {
        RespFrame::Command(command)
    }

    fn ping(&self, _id: u64) -> RespFrame {
        RespFrame::Command(Command::ping())
    }

    /// Redis's blocking commands ([`Command::is_blocking`]).
    fn is_blocking(&self, command: &Command) -> bool {
        command.is_blocking()
    }

    fn classify(&self, frame: RespFrame) -> Inbound<Self> {
        match frame {
            RespFrame::Reply(value) => Inbound::Reply {
                id: 0,
                reply: match value {
                    Value::Error(message) => Err(RemoteError::new(message)),
                    // An error keeps no attributes: a RemoteError is only a message.
                    Value::Attribute { .. } if is_error(&value) => {
                        match value.without_attributes() {
                            Value::Error(message) => Err(RemoteError::new(message)),
                            value => Ok(value),
                        }
                    }
                    value => Ok(value),
                },
            },
            RespFrame::Push(push) => Inbound::Push(push),
            // The decoder never yields a command; a client connection treats a
            // request from the peer as the protocol violation it is.
            command @ RespFrame::Command(_) => Inbound::Request(command),
        }
    }

    fn close_reason(error: RespError) -> CloseReason {
        match error {
            RespError::Io(error) => CloseReason::Io(Arc::new(error)),
            other => CloseReason::Decode(Arc::new(other)),
        }
    }
}

/// Whether `value`, under any attributes, is an error.
fn is_error(value: &Value) -> bool {
    match value {
        Value::Error(_) => true,
        Value::Attribute { data, .. } => is_error(data),
        _ => false,
    }
}
