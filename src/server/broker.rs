//! The server's broker: the one actor that knows every accepted connection, routes
//! their requests to handlers and fans publishes out to subscribers.
//!
//! # Messages
//! - From each [`Connection`](crate::Connection) (its request recipient):
//!   [`Incoming`] frames: `Request` (dispatched by its topic, the *route*, to a
//!   handler), `Publish`, `PublishOrdered` (fenced per producer, see
//!   [`FrameKind::PublishOrdered`]), `Subscribe` and `Unsubscribe`. Each is answered with a
//!   `Response` or an `Error` frame of the same id.
//! - From the [`Listener`](super::Listener): `Register` when it starts a connection,
//!   and the connection's [`ConnectionEvent::Closed`], after which every subscription
//!   of that connection is dropped.
//! - From the application: [`Route`] (handlers), [`Broadcast`] (publish from the
//!   server itself), [`GetServerStats`].
//!
//! # Topics, sequence numbers and catching up
//! Every message published on a topic gets the topic's next sequence number (from 1),
//! carried in the id of the push frame each subscriber receives and in the publish's
//! confirmation. Each topic keeps its last `replay_window` messages: a client that
//! lost its connection subscribes again with the last number it saw and first gets
//! what it missed, in order, then what comes next. The subscribe's answer comes
//! first and is three big-endian `u64`s: how many messages were too old to replay,
//! the number the pushes that follow continue from (the number resumed from plus
//! those too old, or the topic's last number for a first subscribe), and the
//! topic's incarnation (random per life
//! of the topic). A client subscribing again sends the incarnation its numbers came
//! from: a topic in another life (the server restarted, or the topic was reclaimed
//! and its number forgotten), numbered from 1 again, then replays all it retained.
//!
//! A topic with no subscriber and no publish for `topic_idle_timeout` is reclaimed;
//! its last number is remembered, so that a subscriber coming back is told exactly
//! what it missed (see the `topics` module).
//!
//! The replay is a cursor into the window, paced to the peer's bounds: frames go out
//! only while the peer's queue holds fewer than half of `subscriber_queue` and its
//! write buffer, looked at with
//! [`GetStats`], is under half of its `max_write_buffer`; otherwise the broker looks
//! again every 10 ms. New messages of the topic reach a subscriber catching
//! up through the same cursor, so they never overtake its replay; if they push what it
//! has still to get out of the window, the `slow_subscriber` policy applies.
//!
//! # Slow subscribers
//! Each connection has a bounded queue of frames on their way to it
//! (`subscriber_queue` messages) and a bounded write buffer (its
//! `max_write_buffer`). When either is full, the `slow_subscriber` policy applies:
//! [`Overflow::Close`] disconnects that peer (it reconnects and catches up from the
//! replay window), [`Overflow::Drop`] drops the message for that peer only. Either
//! way the broker never waits for a peer, so one slow subscriber never stalls the
//! others or the publisher.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, MessageResult, Recipient,
    WrapFuture,
};
use bytes::{Buf, Bytes};
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::time::Instant;

use super::fences::Fences;
use super::topics::{Reclaimed, Topic};

use crate::connection::{Evict, QueueTicket};
use crate::protocol::frame::{
    Frame, FrameKind, FrameProtocol, LENGTH_PREFIX, PUBLISH_FENCE_LENGTH,
};
use crate::protocol::RemoteError;
use crate::GetStats;
use crate::{CloseReason, ConfigError, ConnectionEvent, ConnectionId, Deliver, Incoming, Overflow};

/// A request a handler answers: what a client sent with
/// [`Broker::request`](crate::Broker) (or any `Request` frame).
#[derive(Debug, Clone)]
pub struct ServerRequest {
    /// The connection it came in on.
    pub connection: ConnectionId,
    /// The route it was sent to (the frame's topic), if any.
    pub route: Option<Bytes>,
    /// The request's bytes.
    pub payload: Bytes,
}

impl Message for ServerRequest {
    type Result = Result<Bytes, RemoteError>;
}

/// Sets the handler of requests sent to `route`, or of every request with no
/// handler of its own when `route` is `None`. A later `Route` for the same route
/// replaces the earlier one.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Route {
    /// The route, or `None` for the fallback handler.
    pub route: Option<Bytes>,
    /// Who answers.
    pub handler: Recipient<ServerRequest>,
}

/// Publishes from the server itself, as if a client had; resolves with the message's
/// sequence number in its topic, or `None` if the topic could not be created
/// (`max_topics`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Option<u64>")]
pub struct Broadcast {
    /// The topic.
    pub topic: Bytes,
    /// The message.
    pub payload: Bytes,
}

/// Asks for the server broker's counters.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "ServerStats")]
pub struct GetServerStats;

/// The server broker's counters and sizes.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections registered now.
    pub connections: usize,
    /// Topics known (with or without subscribers).
    pub topics: usize,
    /// Subscriptions now, over all topics and connections.
    pub subscriptions: usize,
    /// Messages published (by clients and [`Broadcast`]).
    pub published: u64,
    /// Copies of messages queued to subscribers. Under [`Overflow::Drop`] a copy may
    /// still be dropped at the subscriber's write buffer, which its connection counts
    /// in [`ConnectionStats::deliveries_dropped`](crate::ConnectionStats::deliveries_dropped).
    pub delivered: u64,
    /// Copies dropped because a subscriber's queue here was full ([`Overflow::Drop`]).
    pub dropped: u64,
    /// Peers disconnected for being slow ([`Overflow::Close`]).
    pub slow_disconnects: u64,
    /// Messages replayed to subscribers catching up.
    pub replayed: u64,
    /// Topics forgotten after `topic_idle_timeout` with no subscriber and no
    /// publish.
    pub topics_reclaimed: u64,
    /// Subscriptions catching up now: their replay is sent as their connection's
    /// queue and write buffer make room, and new messages of the topic follow it.
    pub catching_up: usize,
    /// Requests handed to handlers.
    pub requests: u64,
    /// Requests answered with an error (no handler, handler failed or gone, too many
    /// in flight, bad frame).
    pub request_errors: u64,
    /// Ordered publishes refused because a later message of the same producer was
    /// published first (it arrived late, on a connection the client had given up).
    pub fenced: u64,
}

/// The limits and policies of a [`ServerBroker`].
///
/// With the `serde` feature it can be read from a file (see `docs/config.md`): fields
/// are named as the setters, `handler_timeout` is written as `"30s"`,
/// `slow_subscriber` as `"close"` or `"drop"`, missing fields take their defaults,
/// unknown ones are an error, and the values are checked as
/// [`validate`](Self::validate) checks them.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(try_from = "file::ServerConfigFile", into = "file::ServerConfigFile")
)]
pub struct ServerConfig {
    pub(crate) subscriber_queue: usize,
    pub(crate) slow_subscriber: Overflow,
    pub(crate) replay_window: usize,
    pub(crate) max_topics: usize,
    pub(crate) max_requests_per_connection: usize,
    pub(crate) handler_timeout: Duration,
    pub(crate) producer_fences: usize,
    pub(crate) mailbox: usize,
    pub(crate) topic_idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            subscriber_queue: 4096,
            slow_subscriber: Overflow::Close,
            replay_window: 1024,
            max_topics: 65_536,
            max_requests_per_connection: 1024,
            handler_timeout: Duration::from_secs(30),
            producer_fences: 65_536,
            mailbox: 16_384,
            topic_idle_timeout: Duration::from_secs(600),
        }
    }
}

impl ServerConfig {
    /// Frames that may wait on their way to one connection (pushes and answers),
    /// beyond its write buffer. A subscriber catching up is sent its replay as room
    /// frees, using at most half of this (and half of the connection's write
    /// buffer) at a time, so a replay of any length fits. Defaults to 4,096.
    #[must_use]
    pub fn subscriber_queue(mut self, messages: usize) -> Self {
        self.subscriber_queue = messages;
        self
    }

    /// What happens to a subscriber whose queue or write buffer is full. Defaults
    /// to [`Overflow::Close`].
    #[must_use]
    pub fn slow_subscriber(mut self, policy: Overflow) -> Self {
        self.slow_subscriber = policy;
        self
    }

    /// Messages kept per topic for subscribers catching up. Defaults to 1,024.
    #[must_use]
    pub fn replay_window(mut self, messages: usize) -> Self {
        self.replay_window = messages;
        self
    }

    /// Topics the broker keeps at most; a publish or subscribe to a new topic past it
    /// is refused. Defaults to 65,536.
    #[must_use]
    pub fn max_topics(mut self, topics: usize) -> Self {
        self.max_topics = topics;
        self
    }

    /// Requests of one connection that may wait for their handlers; more are
    /// refused with an error. Defaults to 1,024.
    #[must_use]
    pub fn max_requests_per_connection(mut self, requests: usize) -> Self {
        self.max_requests_per_connection = requests;
        self
    }

    /// How long a handler may take before its request is answered with an error.
    /// Defaults to 30 seconds.
    #[must_use]
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// Ordered producers whose last fence number the broker remembers (see
    /// [`FrameKind::PublishOrdered`]); a producer idle while twice half this many
    /// others publish is forgotten, long after its late messages could arrive.
    /// Defaults to 65,536.
    #[must_use]
    pub fn producer_fences(mut self, producers: usize) -> Self {
        self.producer_fences = producers;
        self
    }

    /// The broker's mailbox capacity: requests from connections past it are refused
    /// by the connection itself, with an error frame. At most 1,048,576 (a larger
    /// capacity would overflow actix's count of senders). Defaults to 16,384.
    #[must_use]
    pub fn mailbox(mut self, messages: usize) -> Self {
        self.mailbox = messages;
        self
    }

    /// How long a topic with no subscriber and no publish is kept, with its retained
    /// messages; then it is forgotten, so that topics nobody uses do not hold
    /// `max_topics` for ever. Its last sequence number is remembered (for as many
    /// topics as `max_topics`), so a subscriber that comes back is told exactly how
    /// many messages it missed, and the topic numbers on from there if it is used
    /// again. Defaults to 10 minutes.
    #[must_use]
    pub fn topic_idle_timeout(mut self, timeout: Duration) -> Self {
        self.topic_idle_timeout = timeout;
        self
    }

    /// Checks the limits.
    pub fn validate(self) -> Result<Self, ConfigError> {
        for (name, value) in [
            ("subscriber_queue", self.subscriber_queue),
            ("max_topics", self.max_topics),
            (
                "max_requests_per_connection",
                self.max_requests_per_connection,
            ),
            ("producer_fences", self.producer_fences),
            ("mailbox", self.mailbox),
        ] {
            if value == 0 {
                return Err(ConfigError::new(name, "must be at least 1"));
            }
        }
        if self.mailbox > crate::MAX_MAILBOX {
            return Err(ConfigError::new(
                "mailbox",
                format!(
                    "{} is more than actix can count; at most {}",
                    self.mailbox,
                    crate::MAX_MAILBOX
                ),
            ));
        }
        Ok(self)
    }
}

/// [`ServerConfig`] as a file has it: every field, unchecked. Deserializing a
/// `ServerConfig` reads this and then validates it, so a file cannot make a config
/// that [`ServerConfig::validate`] would refuse.
#[cfg(feature = "serde")]
mod file {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    use super::ServerConfig;
    use crate::{ConfigError, Overflow};

    #[derive(Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub(super) struct ServerConfigFile {
        subscriber_queue: usize,
        slow_subscriber: Overflow,
        replay_window: usize,
        max_topics: usize,
        max_requests_per_connection: usize,
        #[serde(with = "humantime_serde")]
        handler_timeout: Duration,
        producer_fences: usize,
        mailbox: usize,
        #[serde(with = "humantime_serde")]
        topic_idle_timeout: Duration,
    }

    impl Default for ServerConfigFile {
        fn default() -> Self {
            ServerConfig::default().into()
        }
    }

    impl From<ServerConfig> for ServerConfigFile {
        fn from(c: ServerConfig) -> Self {
            Self {
                subscriber_queue: c.subscriber_queue,
                slow_subscriber: c.slow_subscriber,
                replay_window: c.replay_window,
                max_topics: c.max_topics,
                max_requests_per_connection: c.max_requests_per_connection,
                handler_timeout: c.handler_timeout,
                producer_fences: c.producer_fences,
                mailbox: c.mailbox,
                topic_idle_timeout: c.topic_idle_timeout,
            }
        }
    }

    impl TryFrom<ServerConfigFile> for ServerConfig {
        type Error = ConfigError;

        fn try_from(f: ServerConfigFile) -> Result<Self, ConfigError> {
            ServerConfig {
                subscriber_queue: f.subscriber_queue,
                slow_subscriber: f.slow_subscriber,
                replay_window: f.replay_window,
                max_topics: f.max_topics,
                max_requests_per_connection: f.max_requests_per_connection,
                handler_timeout: f.handler_timeout,
                producer_fences: f.producer_fences,
                mailbox: f.mailbox,
                topic_idle_timeout: f.topic_idle_timeout,
            }
            .validate()
        }
    }
}

/// Tells the broker about a connection the listener started.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Register {
    pub(crate) connection: ConnectionId,
    pub(crate) deliver: Recipient<Deliver<FrameProtocol>>,
    pub(crate) evict: Recipient<Evict>,
    /// How the broker looks at the connection's write buffer while it replays.
    pub(crate) stats: Recipient<GetStats>,
    /// The connection's `max_write_buffer`.
    pub(crate) max_write_buffer: usize,
    /// The connection's codec's `max_frame_length`: an answer longer is refused.
    pub(crate) max_frame_length: usize,
}

/// How long a replay waits before it looks again at a peer that had no room.
const REPLAY_TICK: Duration = Duration::from_millis(10);

/// The bound on a look at a peer's write buffer; past it, the replay looks again
/// after a tick.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One registered connection.
struct Peer {
    deliver: Recipient<Deliver<FrameProtocol>>,
    evict: Recipient<Evict>,
    stats: Recipient<GetStats>,
    /// Frames sent to it and not yet handled by it.
    queued: Arc<AtomicUsize>,
    topics: FxHashSet<Bytes>,
    /// Requests waiting for their handlers.
    requests: usize,
    /// Set once the peer was disconnected for being slow: nothing more is sent.
    evicted: bool,
    /// Topics it is catching up on (each has a cursor for it), served in turn.
    catching_up: VecDeque<Bytes>,
    /// The share of its write buffer a replay may fill: half of it, so that live
    /// messages of other topics and answers still fit.
    replay_budget: usize,
    /// Replay bytes it may still be sent before its write buffer is looked at again.
    replay_credit: usize,
    /// Whether its write buffer was empty at the last look: then one message larger
    /// than the budget may go.
    replay_fresh: bool,
    /// Whether a look at its write buffer is under way.
    probing: bool,
    /// The largest frame its codec encodes (after the length prefix).
    max_frame_length: usize,
}

/// The server side's router: routes each connection's `Request` frames to handler
/// actors by route, fans `Publish`es out to the topic's subscribers with per-topic
/// sequence numbers, keeps a replay window per topic for subscribers catching up,
/// drops a closed connection's subscriptions, and bounds what waits for each peer
/// (`subscriber_queue`; a slow one is disconnected or loses messages as
/// `slow_subscriber` says, and never stalls the others). See the
/// [`server`](crate::server) module and `docs/broker.md`.
///
/// Start one with [`ServerBroker::start`], then give its address to a
/// [`Listener`](super::Listener).
pub struct ServerBroker {
    config: ServerConfig,
    peers: FxHashMap<ConnectionId, Peer>,
    topics: FxHashMap<Bytes, Topic>,
    routes: FxHashMap<Bytes, Recipient<ServerRequest>>,
    fallback: Option<Recipient<ServerRequest>>,
    fences: Fences,
    /// The last numbers of topics reclaimed lately, so that one created again goes on
    /// from them.
    reclaimed: Reclaimed,
    stats: ServerStats,
}

impl fmt::Debug for ServerBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBroker")
            .field("connections", &self.peers.len())
            .field("topics", &self.topics.len())
            .finish_non_exhaustive()
    }
}

/// How a frame is handed to a peer.
enum Sent {
    Queued,
    Dropped,
    Evicted,
}

impl ServerBroker {
    /// A broker with `config` (checked), not yet started.
    pub fn new(config: ServerConfig) -> Result<Self, ConfigError> {
        let config = config.validate()?;
        Ok(Self {
            fences: Fences::new(config.producer_fences),
            reclaimed: Reclaimed::new(config.max_topics),
            config,
            peers: FxHashMap::default(),
            topics: FxHashMap::default(),
            routes: FxHashMap::default(),
            fallback: None,
            stats: ServerStats::default(),
        })
    }

    /// Starts a broker with `config` in the current arbiter.
    pub fn start(config: ServerConfig) -> Result<actix::Addr<Self>, ConfigError> {
        Ok(Actor::start(Self::new(config)?))
    }

    /// Queues `frame` to `connection` within its queue bound, applying `overflow`
    /// when it does not fit.
    fn send(&mut self, connection: ConnectionId, frame: Frame, overflow: Overflow) -> Sent {
        let Some(peer) = self.peers.get_mut(&connection) else {
            return Sent::Dropped;
        };
        if peer.evicted {
            return Sent::Dropped;
        }
        let limit = self.config.subscriber_queue;
        let full = match QueueTicket::take(&peer.queued, limit) {
            Ok(ticket) => {
                let deliver = Deliver {
                    frame,
                    overflow,
                    _ticket: Some(ticket),
                };
                // `do_send`: the ticket bounds what is queued to this peer, and a
                // connection that stopped drops the frame, which is then nobody's.
                peer.deliver.do_send(deliver);
                return Sent::Queued;
            }
            Err(queued) => queued,
        };
        match overflow {
            Overflow::Drop => Sent::Dropped,
            Overflow::Close => {
                self.evict(connection, full);
                Sent::Evicted
            }
        }
    }

    /// Answers request `id` on `connection`. A peer that does not read its answers
    /// is disconnected, whatever the policy for subscribers.
    fn answer(&mut self, connection: ConnectionId, frame: Frame) {
        self.send(connection, frame, Overflow::Close);
    }

    fn refuse(&mut self, connection: ConnectionId, id: u64, message: impl Into<Bytes>) {
        self.stats.request_errors += 1;
        self.answer(connection, Frame::error(id, message));
    }

    /// The topic, created if there is room: numbered on from where it was if it was
    /// reclaimed lately, or a new life of it.
    fn topic(&mut self, name: &Bytes) -> Option<&mut Topic> {
        if !self.topics.contains_key(name) && self.topics.len() >= self.config.max_topics {
            return None;
        }
        let reclaimed = &mut self.reclaimed;
        Some(
            self.topics
                .entry(name.clone())
                .or_insert_with(|| Topic::new(reclaimed.take(name))),
        )
    }

    /// Forgets every topic that has had no subscriber and no publish for
    /// `topic_idle_timeout`, remembering its last number and life.
    fn reclaim(&mut self) {
        let now = Instant::now();
        let timeout = self.config.topic_idle_timeout;
        let idle: Vec<Bytes> = self
            .topics
            .iter()
            .filter(|(_, topic)| topic.is_idle(now, timeout))
            .map(|(name, _)| name.clone())
            .collect();
        for name in idle {
            if let Some(topic) = self.topics.remove(&name) {
                self.reclaimed.remember(name, &topic);
                self.stats.topics_reclaimed = self.stats.topics_reclaimed.saturating_add(1);
            }
        }
    }

    /// Publishes `payload` on `topic` to every subscriber; the message's sequence
    /// number, or `None` if the topic could not be created.
    fn publish(&mut self, topic: &Bytes, payload: Bytes) -> Option<u64> {
        let window = self.config.replay_window;
        let entry = self.topic(topic)?;
        entry.touch();
        entry.head += 1;
        let seq = entry.head;
        if window > 0 {
            if entry.retained.len() == window {
                entry.retained.pop_front();
            }
            entry.retained.push_back((seq, payload.clone()));
        }
        // Those catching up get it through their replay, after what they missed.
        let subscribers: Vec<ConnectionId> = entry
            .subscribers
            .iter()
            .filter(|id| !entry.cursors.contains_key(id))
            .copied()
            .collect();
        self.stats.published += 1;
        let overflow = self.config.slow_subscriber;
        for subscriber in subscribers {
            let push = Frame {
                kind: FrameKind::Push,
                id: seq,
                topic: Some(topic.clone()),
                payload: payload.clone(),
            };
            match self.send(subscriber, push, overflow) {
                Sent::Queued => self.stats.delivered += 1,
                Sent::Dropped | Sent::Evicted => self.stats.dropped += 1,
            }
        }
        Some(seq)
    }

    fn on_publish(&mut self, connection: ConnectionId, frame: Frame) {
        let Some(topic) = frame.topic else {
            return self.refuse(connection, frame.id, "publish without a topic");
        };
        match self.publish(&topic, frame.payload) {
            Some(seq) => self.answer(
                connection,
                Frame::response(frame.id, Bytes::copy_from_slice(&seq.to_be_bytes())),
            ),
            None => self.refuse(connection, frame.id, "too many topics"),
        }
    }

    /// An ordered publish: published only if its fence number is above its
    /// producer's last.
    fn on_publish_ordered(&mut self, connection: ConnectionId, mut frame: Frame) {
        if frame.payload.len() < PUBLISH_FENCE_LENGTH {
            return self.refuse(connection, frame.id, "ordered publish without its fence");
        }
        let mut fence = frame.payload.split_to(PUBLISH_FENCE_LENGTH);
        let producer = (fence.get_u64(), fence.get_u64());
        if !self.fences.pass(producer, fence.get_u64()) {
            self.stats.fenced += 1;
            return self.refuse(connection, frame.id, "stale: a later message was published");
        }
        self.on_publish(connection, frame);
    }

    fn on_subscribe(&mut self, connection: ConnectionId, frame: Frame, ctx: &mut Context<Self>) {
        let Some(name) = frame.topic else {
            return self.refuse(connection, frame.id, "subscribe without a topic");
        };
        let payload = &frame.payload[..];
        let number =
            |at: usize| u64::from_be_bytes(payload[at..at + 8].try_into().expect("8 bytes"));
        // The last number the client saw, and the topic's life it came from (0: this
        // one).
        let resume = match payload.len() {
            // A first subscribe: only what comes next.
            0 => None,
            8 => Some((number(0), 0)),
            16 => Some((number(0), number(8))),
            _ => return self.refuse(connection, frame.id, "subscribe: bad sequence number"),
        };
        self.join_topic(connection, frame.id, name, resume, ctx);
    }

    /// Subscribes `connection` to `name`, answers request `id`, and starts replaying
    /// what it missed since `resume` (the last number it saw and the topic's life
    /// that number came from), if given.
    ///
    /// The answer comes first and names the number the pushes that follow continue
    /// from (`after` plus what was missed, or the head for a first subscribe), so
    /// the client takes the replay as new messages. The replay itself is paced by
    /// `pump`.
    fn join_topic(
        &mut self,
        connection: ConnectionId,
        id: u64,
        name: Bytes,
        resume: Option<(u64, u64)>,
        ctx: &mut Context<Self>,
    ) {
        if !self.peers.contains_key(&connection) {
            return;
        }
        let Some(topic) = self.topic(&name) else {
            return self.refuse(connection, id, "too many topics");
        };
        topic.touch();
        if !topic.subscribers.contains(&connection) {
            topic.subscribers.push(connection);
        }
        // Numbers from another life of the topic (the server restarted, or the topic
        // was reclaimed and its number forgotten, since the client saw them) say
        // nothing here: catch up on everything retained.
        let after = resume.map(|(after, incarnation)| {
            if incarnation == 0 || incarnation == topic.incarnation {
                after
            } else {
                0
            }
        });
        // Catch up from `after`, if it is a number this topic has given out (one
        // ahead of `head` gets only what comes next).
        let from = after.map_or(topic.head, |after| after.min(topic.head));
        let oldest = topic.oldest();
        let missed = if from < topic.head {
            oldest.saturating_sub(from + 1)
        } else {
            0
        };
        let catching_up = from < topic.head && !topic.retained.is_empty();
        let incarnation = topic.incarnation;
        if catching_up {
            topic.cursors.insert(connection, (from + 1).max(oldest));
        } else {
            topic.cursors.remove(&connection);
        }
        if let Some(peer) = self.peers.get_mut(&connection) {
            peer.topics.insert(name.clone());
            if catching_up && !peer.catching_up.contains(&name) {
                peer.catching_up.push_back(name);
            }
        }
        // The pushes that follow go on from `from` plus what it missed: the number
        // before the oldest one the replay sends. (A client checks that `missed`
        // fits between the number it resumed from and this head.)
        let head = from.saturating_add(missed);
        let mut answer = Vec::with_capacity(24);
        answer.extend_from_slice(&missed.to_be_bytes());
        answer.extend_from_slice(&head.to_be_bytes());
        answer.extend_from_slice(&incarnation.to_be_bytes());
        self.answer(connection, Frame::response(id, answer));
        if catching_up {
            self.pump(connection, ctx);
        }
    }

    /// Sends `connection` the next messages of its replays while its queue and its
    /// write buffer have room; when they have none, looks at its write buffer again
    /// (a [`GetStats`] behind the frames already sent, so its answer also means the
    /// connection has taken them) and goes on from there, or after a tick.
    fn pump(&mut self, connection: ConnectionId, ctx: &mut Context<Self>) {
        let replay_frames = (self.config.subscriber_queue / 2).max(1);
        let overflow = self.config.slow_subscriber;
        loop {
            let Some(peer) = self.peers.get_mut(&connection) else {
                return;
            };
            if peer.evicted || peer.probing {
                return;
            }
            let Some(name) = peer.catching_up.front().cloned() else {
                return;
            };
            let Some(topic) = self.topics.get_mut(&name) else {
                peer.catching_up.pop_front();
                continue;
            };
            let Some(&cursor) = topic.cursors.get(&connection) else {
                peer.catching_up.pop_front();
                continue;
            };
            let oldest = topic.oldest();
            if cursor > topic.head {
                // Caught up: live from here.
                topic.cursors.remove(&connection);
                peer.catching_up.pop_front();
                continue;
            }
            if cursor < oldest {
                // Published faster than it takes them: what it was still to get fell
                // out of the window.
                let lost = oldest - cursor;
                match overflow {
                    Overflow::Drop => {
                        self.stats.dropped = self.stats.dropped.saturating_add(lost);
                        topic.cursors.insert(connection, oldest);
                        continue;
                    }
                    Overflow::Close => {
                        // It subscribes again from the last message it got, and
                        // that answer tells it exactly how many it missed.
                        let queued = peer.queued.load(std::sync::atomic::Ordering::Acquire);
                        return self.evict(connection, queued);
                    }
                }
            }
            let index = usize::try_from(cursor - oldest).expect("within the window");
            let payload = topic.retained[index].1.clone();
            let push = Frame {
                kind: FrameKind::Push,
                id: cursor,
                topic: Some(name.clone()),
                payload,
            };
            let size = push.encoded_len();
            let fits = size <= peer.replay_credit || (peer.replay_fresh && size > 0);
            let ticket = if fits {
                QueueTicket::take(&peer.queued, replay_frames).ok()
            } else {
                None
            };
            let Some(ticket) = ticket else {
                return self.probe(connection, ctx);
            };
            peer.replay_credit = peer.replay_credit.saturating_sub(size);
            peer.replay_fresh = false;
            // `do_send`: the ticket bounds what is queued to this peer, and a
            // connection that stopped drops the frame, which is then nobody's.
            peer.deliver.do_send(Deliver {
                frame: push,
                overflow,
                _ticket: Some(ticket),
            });
            topic.cursors.insert(connection, cursor + 1);
            peer.catching_up.rotate_left(1);
            self.stats.replayed += 1;
        }
    }

    /// Looks at `connection`'s write buffer, then pumps its replays on.
    fn probe(&mut self, connection: ConnectionId, ctx: &mut Context<Self>) {
        let Some(peer) = self.peers.get_mut(&connection) else {
            return;
        };
        peer.probing = true;
        let look = peer.stats.send(GetStats).timeout(PROBE_TIMEOUT);
        ctx.spawn(look.into_actor(self).map(move |stats, this, ctx| {
            let Some(peer) = this.peers.get_mut(&connection) else {
                return;
            };
            peer.probing = false;
            let Ok(stats) = stats else {
                // Gone (its `Closed` forgets it) or too busy to answer: later.
                ctx.run_later(REPLAY_TICK, move |this, ctx| this.pump(connection, ctx));
                return;
            };
            let buffered = stats.buffered_write_bytes;
            peer.replay_credit = peer.replay_budget.saturating_sub(buffered);
            peer.replay_fresh = buffered == 0;
            let replay_frames = (this.config.subscriber_queue / 2).max(1);
            let queued = peer.queued.load(std::sync::atomic::Ordering::Acquire);
            if peer.replay_credit > 0 && queued < replay_frames {
                this.pump(connection, ctx);
            } else {
                ctx.run_later(REPLAY_TICK, move |this, ctx| this.pump(connection, ctx));
            }
        }));
    }

    /// Disconnects a slow peer.
    fn evict(&mut self, connection: ConnectionId, queued: usize) {
        let limit = self.config.subscriber_queue;
        let Some(peer) = self.peers.get_mut(&connection) else {
            return;
        };
        if peer.evicted {
            return;
        }
        peer.evicted = true;
        tracing::info!(%connection, queued, limit, "slow peer disconnected");
        // `do_send` passes the full mailbox; the eviction must get through.
        peer.evict
            .do_send(Evict(CloseReason::SlowConsumer { queued, limit }));
        self.stats.slow_disconnects += 1;
    }

    fn on_unsubscribe(&mut self, connection: ConnectionId, frame: Frame) {
        let Some(name) = frame.topic else {
            return self.refuse(connection, frame.id, "unsubscribe without a topic");
        };
        if let Some(peer) = self.peers.get_mut(&connection) {
            peer.topics.remove(&name);
            peer.catching_up.retain(|topic| *topic != name);
        }
        if let Some(topic) = self.topics.get_mut(&name) {
            topic.leave(connection);
        }
        self.answer(connection, Frame::response(frame.id, Bytes::new()));
    }

    fn on_request(&mut self, connection: ConnectionId, frame: Frame, ctx: &mut Context<Self>) {
        let handler = frame
            .topic
            .as_ref()
            .and_then(|route| self.routes.get(route))
            .or(self.fallback.as_ref())
            .cloned();
        let Some(handler) = handler else {
            return self.refuse(connection, frame.id, "no handler for this route");
        };
        let limit = self.config.max_requests_per_connection;
        match self.peers.get_mut(&connection) {
            Some(peer) if peer.requests < limit => peer.requests += 1,
            Some(_) => return self.refuse(connection, frame.id, "too many requests in flight"),
            None => return,
        }
        self.stats.requests += 1;
        let id = frame.id;
        let request = ServerRequest {
            connection,
            route: frame.topic,
            payload: frame.payload,
        };
        let answer = handler.send(request).timeout(self.config.handler_timeout);
        ctx.spawn(answer.into_actor(self).map(move |answer, this, _| {
            let mut max_frame_length = usize::MAX;
            if let Some(peer) = this.peers.get_mut(&connection) {
                peer.requests -= 1;
                max_frame_length = peer.max_frame_length;
            }
            let frame = match answer {
                Ok(Ok(reply)) => {
                    let frame = Frame::response(id, reply);
                    // Past the codec's limit the connection could not encode it and
                    // the caller would wait out its whole timeout: say so at once.
                    let length = frame.encoded_len() - LENGTH_PREFIX;
                    if length > max_frame_length {
                        this.stats.request_errors += 1;
                        tracing::warn!(%connection, length, max_frame_length, "answer too large for a frame");
                        let mut message = format!(
                            "answer too large: {length} bytes, a frame carries at most {max_frame_length}"
                        );
                        // Under an absurdly small limit, as much of it as fits.
                        let room = max_frame_length.saturating_sub(Frame::error(id, "").encoded_len() - LENGTH_PREFIX);
                        message.truncate(room);
                        Frame::error(id, message)
                    } else {
                        frame
                    }
                }
                Ok(Err(error)) => {
                    this.stats.request_errors += 1;
                    Frame::error(id, error.message().clone())
                }
                Err(actix::MailboxError::Timeout) => {
                    this.stats.request_errors += 1;
                    Frame::error(id, "handler timed out")
                }
                Err(actix::MailboxError::Closed) => {
                    this.stats.request_errors += 1;
                    Frame::error(id, "handler gone")
                }
            };
            this.answer(connection, frame);
        }));
    }

    fn forget(&mut self, connection: ConnectionId) {
        let Some(peer) = self.peers.remove(&connection) else {
            return;
        };
        for name in peer.topics {
            if let Some(topic) = self.topics.get_mut(&name) {
                topic.leave(connection);
            }
        }
    }

    fn stats(&self) -> ServerStats {
        ServerStats {
            connections: self.peers.len(),
            topics: self.topics.len(),
            subscriptions: self.topics.values().map(|t| t.subscribers.len()).sum(),
            catching_up: self.topics.values().map(|t| t.cursors.len()).sum(),
            ..self.stats.clone()
        }
    }
}

impl Actor for ServerBroker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.config.mailbox);
        // Often enough that a topic is reclaimed within a quarter of its idle
        // timeout after it, and no more than once a second.
        let sweep = (self.config.topic_idle_timeout / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut next_sweep = tokio::time::Instant::now() + sweep;
        // Ticks each second: a running interval keeps an actor alive, so the tick
        // also stops the broker within a second once nobody holds its address (the
        // listener and every connection are gone), as it stopped before it had a
        // sweep. The sweep itself runs at its own cadence.
        ctx.run_interval(Duration::from_secs(1), move |this, ctx| {
            if !ctx.connected() {
                actix::ActorContext::stop(ctx);
                return;
            }
            let now = tokio::time::Instant::now();
            if now >= next_sweep {
                next_sweep = now + sweep;
                this.reclaim();
            }
        });
    }
}

impl Handler<Register> for ServerBroker {
    type Result = ();

    /// Starts routing for a new connection.
    fn handle(&mut self, register: Register, _: &mut Context<Self>) {
        self.peers.insert(
            register.connection,
            Peer {
                deliver: register.deliver,
                evict: register.evict,
                stats: register.stats,
                queued: Arc::new(AtomicUsize::new(0)),
                topics: FxHashSet::default(),
                requests: 0,
                evicted: false,
                catching_up: VecDeque::new(),
                replay_budget: (register.max_write_buffer / 2).max(1),
                replay_credit: 0,
                replay_fresh: false,
                probing: false,
                max_frame_length: register.max_frame_length,
            },
        );
    }
}

impl Handler<ConnectionEvent> for ServerBroker {
    type Result = ();

    /// Drops a closed connection and every subscription it had.
    fn handle(&mut self, event: ConnectionEvent, _: &mut Context<Self>) {
        if let ConnectionEvent::Closed { id, reason } = event {
            // A peer whose write buffer filled closed itself; one whose queue here
            // filled was evicted and counted already.
            let evicted = self.peers.get(&id).is_some_and(|peer| peer.evicted);
            if matches!(reason, CloseReason::SlowConsumer { .. }) && !evicted {
                self.stats.slow_disconnects += 1;
            }
            self.forget(id);
        }
    }
}

impl Handler<Incoming<FrameProtocol>> for ServerBroker {
    type Result = ();

    /// Routes one request frame from a connection.
    fn handle(&mut self, incoming: Incoming<FrameProtocol>, ctx: &mut Context<Self>) {
        let Incoming { connection, frame } = incoming;
        match frame.kind {
            FrameKind::Request => self.on_request(connection, frame, ctx),
            FrameKind::Publish => self.on_publish(connection, frame),
            FrameKind::PublishOrdered => self.on_publish_ordered(connection, frame),
            FrameKind::Subscribe => self.on_subscribe(connection, frame, ctx),
            FrameKind::Unsubscribe => self.on_unsubscribe(connection, frame),
            // The connection hands over only frames that expect an answer.
            _ => self.refuse(connection, frame.id, "not a request"),
        }
    }
}

impl Handler<Route> for ServerBroker {
    type Result = ();

    /// Sets a route's handler.
    fn handle(&mut self, route: Route, _: &mut Context<Self>) {
        match route.route {
            Some(name) => {
                self.routes.insert(name, route.handler);
            }
            None => self.fallback = Some(route.handler),
        }
    }
}

impl Handler<Broadcast> for ServerBroker {
    type Result = Option<u64>;

    /// Publishes from the server.
    fn handle(&mut self, broadcast: Broadcast, _: &mut Context<Self>) -> Option<u64> {
        self.publish(&broadcast.topic, broadcast.payload)
    }
}

impl Handler<GetServerStats> for ServerBroker {
    type Result = MessageResult<GetServerStats>;

    /// A snapshot of the counters.
    fn handle(&mut self, _: GetServerStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats())
    }
}
