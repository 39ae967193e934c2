//! What the [`Broker`](super::Broker) needs of a protocol: how to say publish,
//! request, subscribe and unsubscribe on the wire, and how to read the answers and
//! the pushed messages.
//!
//! Two kinds of server fit:
//! - **sequenced** ([`BrokerProtocol::SEQUENCED`]): the server numbers each topic's
//!   messages, replays what a returning subscriber missed, and fences ordered
//!   publishes that arrive late (the built-in [`frame`](crate::protocol::frame)
//!   protocol with [`ServerBroker`](crate::server::ServerBroker)). Subscriptions move
//!   between connections without loss or duplicates.
//! - **plain**: the server forwards what is published to whoever is subscribed at
//!   that moment, like Redis's pub/sub ([`resp`](crate::protocol::resp)). The broker
//!   numbers deliveries itself, a subscription moves only when its connection has
//!   closed, and what was published while no connection was subscribed is not seen:
//!   at most once, as the server itself promises.

use bytes::Bytes;

use super::messages::{BrokerError, Confirmed};
use crate::protocol::frame::{FrameProtocol, FramePush, FrameRequest};
use crate::protocol::resp::{Command, PushKind, RespProtocol, RespPush, Value};
use crate::protocol::Protocol;

/// Where an ordered publish stands in its producer's sequence, for servers that fence
/// late messages (see [`FrameKind::PublishOrdered`]).
///
/// [`FrameKind::PublishOrdered`]: crate::protocol::frame::FrameKind::PublishOrdered
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fence {
    /// The broker's random instance number, so that two clients' producers with the
    /// same id are fenced apart.
    pub instance: u64,
    /// The producer's id.
    pub producer: u64,
    /// The message's fence number: it only grows within one broker.
    pub number: u64,
}

/// Where a returning subscription resumes, for servers that replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Resume {
    /// The last sequence number this broker saw in the topic (0 for none).
    pub after: u64,
    /// The incarnation (life of the topic on the server) `after` belongs to (0 for
    /// none).
    pub incarnation: u64,
}

/// The server's answer to a subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Joined {
    /// Messages after [`Resume::after`] the server could no longer replay.
    pub missed: u64,
    /// The number the pushes that follow the answer continue from: the topic's last
    /// sequence number for a first subscribe, [`Resume::after`] (or 0, in another
    /// incarnation) when the server replays from there. Everything up to it has been
    /// seen or counted in `missed`.
    pub head: u64,
    /// The topic's incarnation on the server: a new one after a restart, or after
    /// the topic was reclaimed and forgotten (0 from a server that does not say).
    pub incarnation: u64,
}

impl Joined {
    /// An answer with these numbers.
    pub fn new(missed: u64, head: u64, incarnation: u64) -> Self {
        Self {
            missed,
            head,
            incarnation,
        }
    }
}

/// A message pushed to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Its topic.
    pub topic: Bytes,
    /// Its sequence number in the topic, from a sequenced server; `None` from a plain
    /// one.
    pub seq: Option<u64>,
    /// The message.
    pub payload: Bytes,
}

impl Message {
    /// A message of `topic`.
    pub fn new(topic: Bytes, seq: Option<u64>, payload: Bytes) -> Self {
        Self {
            topic,
            seq,
            payload,
        }
    }
}

/// A [`Protocol`] the [`Broker`](super::Broker) can route application messages over.
///
/// Implemented by the built-in [`FrameProtocol`] (sequenced) and
/// [`RespProtocol`](crate::protocol::resp::RespProtocol) (plain); implement it to put
/// the broker in front of your own server.
pub trait BrokerProtocol: Protocol {
    /// Whether the server numbers each topic's messages, replays what a returning
    /// subscriber missed and fences ordered publishes that arrive late. A sequenced
    /// server's subscriptions move between connections without loss or duplicates;
    /// over a plain one the broker numbers deliveries itself, moves a subscription
    /// only when its connection has closed, and what is published while no
    /// connection is subscribed is not seen (at most once).
    const SEQUENCED: bool;

    /// The request that publishes `payload` to `topic`.
    fn publish(&self, topic: Bytes, payload: Bytes) -> Self::Request;

    /// The request that publishes an ordered producer's message. Defaults to
    /// [`publish`](Self::publish): a server that does not fence keeps the order of one
    /// connection only.
    fn publish_ordered(&self, topic: Bytes, fence: Fence, payload: Bytes) -> Self::Request {
        let _ = fence;
        self.publish(topic, payload)
    }

    /// Reads the answer to a publish.
    fn published(&self, reply: Self::Reply) -> Result<Confirmed, BrokerError>;

    /// The request for the server's handler of `route` (`None`: its fallback
    /// handler), or an error if the server has no such thing
    /// ([`BrokerError::Unsupported`]).
    fn call(&self, route: Option<Bytes>, payload: Bytes) -> Result<Self::Request, BrokerError>;

    /// Reads the answer to a request.
    fn answer(&self, reply: Self::Reply) -> Result<Bytes, BrokerError>;

    /// The request that subscribes this connection to `topic`. `resume` is ignored by
    /// a plain server.
    fn subscribe(&self, topic: Bytes, resume: Resume) -> Self::Request;

    /// Reads the answer to a subscribe. A plain server's is [`Joined::default`].
    fn subscribed(&self, reply: Self::Reply) -> Result<Joined, BrokerError>;

    /// The request that ends this connection's subscription to `topic`.
    fn unsubscribe(&self, topic: Bytes) -> Self::Request;

    /// The subscribed message a push carries, or `None` for a push that is not one.
    fn message(&self, push: Self::Push) -> Option<Message>;
}

impl BrokerProtocol for FrameProtocol {
    const SEQUENCED: bool = true;

    fn publish(&self, topic: Bytes, payload: Bytes) -> FrameRequest {
        FrameRequest::publish(topic, payload)
    }

    fn publish_ordered(&self, topic: Bytes, fence: Fence, payload: Bytes) -> FrameRequest {
        FrameRequest::publish_ordered(
            topic,
            fence.instance,
            fence.producer,
            fence.number,
            &payload,
        )
    }

    fn published(&self, reply: Bytes) -> Result<Confirmed, BrokerError> {
        let seq = <[u8; 8]>::try_from(&reply[..])
            .map_err(|_| BrokerError::BadAnswer("publish confirmation is not an 8-byte number"))?;
        Ok(Confirmed::numbered(u64::from_be_bytes(seq)))
    }

    fn call(&self, route: Option<Bytes>, payload: Bytes) -> Result<FrameRequest, BrokerError> {
        let mut request = FrameRequest::new(payload);
        request.topic = route;
        Ok(request)
    }

    fn answer(&self, reply: Bytes) -> Result<Bytes, BrokerError> {
        Ok(reply)
    }

    fn subscribe(&self, topic: Bytes, resume: Resume) -> FrameRequest {
        FrameRequest::subscribe(topic, resume.after, resume.incarnation)
    }

    fn subscribed(&self, reply: Bytes) -> Result<Joined, BrokerError> {
        let number = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&reply[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        match reply.len() {
            16 | 24 => Ok(Joined {
                missed: number(0),
                head: number(8),
                incarnation: if reply.len() == 24 { number(16) } else { 0 },
            }),
            _ => Err(BrokerError::BadAnswer(
                "subscribe answer is not two or three 8-byte numbers",
            )),
        }
    }

    fn unsubscribe(&self, topic: Bytes) -> FrameRequest {
        FrameRequest::unsubscribe(topic)
    }

    fn message(&self, push: FramePush) -> Option<Message> {
        Some(Message {
            topic: push.topic?,
            seq: Some(push.seq),
            payload: push.payload,
        })
    }
}

impl BrokerProtocol for RespProtocol {
    const SEQUENCED: bool = false;

    fn publish(&self, topic: Bytes, payload: Bytes) -> Command {
        Command::publish(topic, payload)
    }

    fn published(&self, reply: Value) -> Result<Confirmed, BrokerError> {
        match reply.as_integer().map(u64::try_from) {
            Some(Ok(receivers)) => Ok(Confirmed::received_by(receivers)),
            _ => Err(BrokerError::BadAnswer(
                "PUBLISH was not answered with a count of receivers",
            )),
        }
    }

    fn call(&self, _: Option<Bytes>, _: Bytes) -> Result<Command, BrokerError> {
        Err(BrokerError::Unsupported(
            "redis has no request handlers; use the Redis client or a Command",
        ))
    }

    fn answer(&self, _: Value) -> Result<Bytes, BrokerError> {
        Err(BrokerError::Unsupported("redis has no request handlers"))
    }

    fn subscribe(&self, topic: Bytes, _: Resume) -> Command {
        Command::subscribe(topic)
    }

    fn subscribed(&self, reply: Value) -> Result<Joined, BrokerError> {
        // `["subscribe", channel, count]`: an array in RESP2, a push in RESP3.
        let confirmed = match &reply {
            Value::Array(items) | Value::Push(items) => items
                .first()
                .and_then(Value::as_bytes)
                .is_some_and(|kind| kind.eq_ignore_ascii_case(b"subscribe")),
            _ => false,
        };
        if confirmed {
            Ok(Joined::default())
        } else {
            Err(BrokerError::BadAnswer(
                "SUBSCRIBE was not answered with a subscribe confirmation",
            ))
        }
    }

    fn unsubscribe(&self, topic: Bytes) -> Command {
        Command::unsubscribe(topic)
    }

    fn message(&self, push: RespPush) -> Option<Message> {
        // The broker subscribes channels only; pattern and shard messages, and
        // invalidations, belong to someone else.
        (push.kind == PushKind::Message).then(|| Message {
            topic: push.channel,
            seq: None,
            payload: push.payload,
        })
    }
}
