//! The messages a [`Broker`](super::Broker) handles, what it delivers, and its errors.

use std::fmt;
use std::time::Duration;

use actix::{Message, Recipient};
use bytes::Bytes;

use crate::{CallError, PoolError};

/// Identifies a producer whose messages must arrive in the order it published them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProducerId(pub u64);

/// Identifies one subscription, to end it with [`Unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub(crate) u64);

/// How a publish is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// In order with the producer's other messages: they all go over one connection
    /// at a time, and a message is written only after every earlier one on an old
    /// connection was confirmed or failed.
    Ordered(ProducerId),
    /// No order: over the less loaded of two connections picked at random.
    Unordered,
}

/// Publishes `payload` on `topic`; resolves once the server confirmed it, or with
/// [`Unconfirmed`], exactly once.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The topic.
    pub topic: Bytes,
    /// The message.
    pub payload: Bytes,
    /// How it is routed.
    pub order: Order,
}

impl Publish {
    /// A publish in order with the producer's other ordered publishes.
    pub fn ordered(
        producer: ProducerId,
        topic: impl Into<Bytes>,
        payload: impl Into<Bytes>,
    ) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            order: Order::Ordered(producer),
        }
    }

    /// A publish with no order, spread by load.
    pub fn unordered(topic: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            order: Order::Unordered,
        }
    }
}

impl Message for Publish {
    type Result = Result<Confirmed, Unconfirmed>;
}

/// The server took a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Confirmed {
    /// The message's sequence number in its topic, from a sequenced server
    /// ([`BrokerProtocol::SEQUENCED`](super::BrokerProtocol::SEQUENCED)); 0 from one
    /// that does not number messages.
    pub seq: u64,
    /// How many subscribers the server handed it to, where the server says (Redis's
    /// `PUBLISH` does).
    pub receivers: Option<u64>,
}

impl Confirmed {
    /// A confirmation that numbers the message `seq` in its topic.
    pub fn numbered(seq: u64) -> Self {
        Self {
            seq,
            receivers: None,
        }
    }

    /// A confirmation from a server that does not number messages but says how many
    /// subscribers got it.
    pub fn received_by(receivers: u64) -> Self {
        Self {
            seq: 0,
            receivers: Some(receivers),
        }
    }
}

/// A published message the server did not confirm.
#[derive(Debug, Clone, thiserror::Error)]
#[error("publish not confirmed: {error}")]
pub struct Unconfirmed {
    /// Why.
    pub error: BrokerError,
}

impl Unconfirmed {
    /// Whether the message may still have reached the server (its connection closed
    /// or the confirmation timed out after it was written). When this is `false` it
    /// was never delivered to anyone.
    pub fn maybe_delivered(&self) -> bool {
        matches!(
            self.error,
            BrokerError::Call(CallError::Closed(_) | CallError::Timeout { .. })
        )
    }
}

/// Sends a request to the server's handler for `route` and resolves with its answer.
#[derive(Debug, Clone)]
pub struct Request {
    /// The route (the handler's name), or `None` for the server's fallback handler.
    pub route: Option<Bytes>,
    /// The request's bytes.
    pub payload: Bytes,
    /// This request's timeout, or `None` for the connection's `call_timeout`.
    pub timeout: Option<Duration>,
}

impl Request {
    /// A request to `route`.
    pub fn new(route: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            route: Some(route.into()),
            payload: payload.into(),
            timeout: None,
        }
    }

    /// This request with its own timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl Message for Request {
    type Result = Result<Bytes, BrokerError>;
}

/// Subscribes `subscriber` to `topic`. A subscription is desired state: it is kept
/// until [`Unsubscribe`], and the broker keeps it subscribed on the server across
/// connection closes and server outages.
///
/// Resolves with its id once the server confirmed it (at once when the topic is
/// subscribed here already), or once the first attempt failed because the server
/// could not be reached (no connection, a connection that closed, a timeout): then
/// the subscription is kept, pending, and tried again with `resubscribe_backoff`
/// (jittered) until it is live; [`GetSubscriptionStatus`] says which. A subscription
/// the server or the protocol refuses (an error answer, a topic too long to encode,
/// an answer that breaks the protocol) fails at once with that error and is not
/// kept; so does one made while the pool is closing. A subscription that becomes
/// live late gets what is published from then on, like any first subscription.
///
/// Messages reach the subscriber as [`Delivery`]s with `try_send`: the broker never
/// waits for a subscriber, nor buffers for it without bound. When its mailbox is full
/// the broker holds the newest message for it and offers it again every 10 ms; an
/// older held message is lost for it, counted in
/// [`BrokerStats::deliveries_dropped`], and told in the next delivery's
/// [`Delivery::missed_before`]. Size the subscriber's mailbox
/// (`ctx.set_mailbox_capacity`) for the largest burst it must take between two of its
/// turns: actix's default of 16 loses most of any burst. One whose mailbox is closed
/// is unsubscribed.
#[derive(Debug, Clone)]
pub struct Subscribe {
    /// The topic.
    pub topic: Bytes,
    /// Who receives its messages.
    pub subscriber: Recipient<Delivery>,
}

impl Message for Subscribe {
    type Result = Result<SubscriptionId, BrokerError>;
}

/// Asks whether a subscription is live on the server now; resolves with
/// [`BrokerError::NotSubscribed`] for an unknown one.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<SubscriptionStatus, BrokerError>")]
pub struct GetSubscriptionStatus(pub SubscriptionId);

/// Where a subscription stands; see [`GetSubscriptionStatus`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SubscriptionStatus {
    /// Subscribed on the server: its messages reach the subscriber.
    Live,
    /// Not subscribed on the server now: it could not be reached yet, or the
    /// subscription's connection closed and it is joining again. The broker keeps
    /// trying, with `resubscribe_backoff`, for as long as the subscription exists.
    Pending {
        /// Why the last attempt failed (`None` while the first is under way).
        last_error: Option<BrokerError>,
    },
}

/// Ends a subscription at once: its subscriber gets nothing more, and the call
/// resolves without waiting for the server. When it was the topic's last one here,
/// the server is told, again until it acknowledges (within a bound); a push of the
/// topic that still arrives later makes the broker tell it once more.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(), BrokerError>")]
pub struct Unsubscribe(pub SubscriptionId);

/// One message on a subscribed topic.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub struct Delivery {
    /// The topic.
    pub topic: Bytes,
    /// Its sequence number in the topic: the server's where it numbers messages
    /// ([`BrokerProtocol::SEQUENCED`](super::BrokerProtocol::SEQUENCED)), else this
    /// broker's count of the topic's deliveries, from 1.
    pub seq: u64,
    /// The message.
    pub payload: Bytes,
    /// Messages of the topic this subscriber will never get, between the delivery
    /// before this one (or its subscribe) and this one: lost because its mailbox was
    /// full, numbers the server skipped, or messages the server could no longer
    /// replay after a reconnect. So `seq` is the previous delivery's `seq` plus 1
    /// plus this (on a sequenced server, within one server life), and what a
    /// subscriber received plus the sum of these is every message of the topic since
    /// it subscribed. 0 when nothing was lost, which is the rule: see
    /// [`Subscribe`] for how to size a subscriber's mailbox. Like
    /// `tokio::sync::broadcast`'s `Lagged`, the count is told with the next message
    /// that gets through.
    pub missed_before: u64,
}

/// Asks for the broker's counters.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "BrokerStats")]
pub struct GetBrokerStats;

/// A broker's counters and sizes.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BrokerStats {
    /// Publishes confirmed.
    pub confirmed: u64,
    /// Publishes not confirmed.
    pub unconfirmed: u64,
    /// Publishes refused by a closing connection before they were written, and sent
    /// again on the producer's next connection.
    pub resent: u64,
    /// Requests answered (error answers from handlers included).
    pub requests: u64,
    /// Requests that failed without an answer.
    pub requests_failed: u64,
    /// Producers moved to another connection.
    pub repins: u64,
    /// Messages handed to subscribers.
    pub deliveries: u64,
    /// Messages lost for a subscriber because its mailbox was full (each one told to
    /// it in its next delivery's [`Delivery::missed_before`]).
    pub deliveries_dropped: u64,
    /// Copies that arrived twice while a subscription moved, dropped.
    pub duplicates: u64,
    /// Messages of subscribed topics that never reached this broker: those the
    /// server could no longer replay when a subscription caught up, and gaps in the
    /// sequence numbers (pushes the server or this broker's connection dropped, a
    /// replay short of its answer's head). Told to the subscribers in
    /// [`Delivery::missed_before`].
    pub missed: u64,
    /// Subscriptions made again on another connection (after a close or a drain).
    pub resubscribes: u64,
    /// Producers with state now.
    pub producers: usize,
    /// Topics subscribed now.
    pub topics: usize,
    /// Publishes under way now, not yet confirmed or failed: ordered ones written to
    /// their producer's connection (over all producers), and unordered ones from the
    /// moment the broker handled them (waiting for a connection included). A caller
    /// that drops its publish once the broker handled it does not take it out: it
    /// resolves all the same, to no one, and counts in `confirmed` or `unconfirmed`.
    pub publishes_in_flight: usize,
    /// Ordered publishes waiting now for their producer's connection (while one is
    /// picked, or while the producer moves and its earlier messages are answered).
    /// With `publishes_in_flight`, what `max_unconfirmed` bounds per producer.
    pub publishes_queued: usize,
    /// Requests under way now, from the moment the broker handled them until they
    /// are answered or fail (counted then in `requests` or `requests_failed`); a
    /// dropped caller's request included.
    pub requests_in_flight: usize,
}

/// Why a broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// No connection could be had.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The call over the connection failed, or the server answered with an error.
    #[error(transparent)]
    Call(#[from] CallError),
    /// Too many messages of one producer, or too many producers, are unconfirmed.
    #[error("overloaded: {what} limit {limit} reached")]
    Overloaded {
        /// Which limit.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The subscription is not known.
    #[error("no such subscription")]
    NotSubscribed,
    /// The server's answer did not have the expected form.
    #[error("unexpected answer from the server: {0}")]
    BadAnswer(&'static str),
    /// The broker actor stopped.
    #[error("broker stopped")]
    Stopped,
    /// The protocol has no way to do this (requests by route over Redis, say).
    #[error("not supported by this protocol: {0}")]
    Unsupported(&'static str),
}

impl BrokerError {
    /// A short, stable name for the kind of error, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Pool(error) => error.kind(),
            Self::Call(error) => error.kind(),
            Self::Overloaded { .. } => "overloaded",
            Self::NotSubscribed => "not_subscribed",
            Self::BadAnswer(_) => "bad_answer",
            Self::Stopped => "stopped",
            Self::Unsupported(_) => "unsupported",
        }
    }
}

impl From<actix::MailboxError> for BrokerError {
    fn from(_: actix::MailboxError) -> Self {
        Self::Stopped
    }
}

/// The limits of a [`Broker`](super::Broker).
#[derive(Clone)]
#[non_exhaustive]
pub struct BrokerConfig {
    pub(crate) max_unconfirmed: usize,
    pub(crate) max_producers: usize,
    pub(crate) resubscribe_backoff: (Duration, Duration),
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_unconfirmed: 4096,
            max_producers: 65_536,
            resubscribe_backoff: (Duration::from_millis(50), Duration::from_secs(2)),
        }
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("max_unconfirmed", &self.max_unconfirmed)
            .field("max_producers", &self.max_producers)
            .field("resubscribe_backoff", &self.resubscribe_backoff)
            .finish()
    }
}

impl BrokerConfig {
    /// Messages of one ordered producer that may be unconfirmed (written and not
    /// answered, or waiting for a connection); past it a publish fails at once with
    /// [`BrokerError::Overloaded`]. Defaults to 4,096.
    #[must_use]
    pub fn max_unconfirmed(mut self, messages: usize) -> Self {
        self.max_unconfirmed = messages.max(1);
        self
    }

    /// Ordered producers the broker keeps state for; idle ones are forgotten past
    /// it, and a new one is refused if none is idle. Defaults to 65,536.
    #[must_use]
    pub fn max_producers(mut self, producers: usize) -> Self {
        self.max_producers = producers.max(1);
        self
    }

    /// The first and the longest wait between attempts to subscribe again after a
    /// subscription's connection closed and no other could be had, or while the
    /// server cannot be reached. The wait doubles from `first` up to `max`, and each
    /// one is less up to half of it at random (jitter), so that topics that failed
    /// together do not retry in lockstep. Defaults to 50 milliseconds and 2 seconds.
    #[must_use]
    pub fn resubscribe_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.resubscribe_backoff = (first, max.max(first));
        self
    }
}
