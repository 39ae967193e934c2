//! The client-side Broker: typed routing of application messages over a [`Pool`](crate::Pool).
//!
//! # Who talks to it
//! Application actors send it [`Publish`], [`Request`], [`Subscribe`] and
//! [`Unsubscribe`] (or call the same through a [`BrokerHandle`]). It owns the pool it
//! routes over: it is the pool's push recipient (subscribed messages arrive as pushes)
//! and hears the pool's connection events, so it knows when a connection closes or
//! begins to drain.
//!
//! ```text
//!  app ──Publish(ordered)──▶ Broker ──one connection per producer──▶ Connection ──▶ server
//!  app ──Publish(unordered) / Request──▶ two random connections, the less loaded
//!  app ──Subscribe──▶ Broker ──one server subscription per topic──▶ Connection
//!  Connection ──Pushed──▶ Broker ──Delivery──▶ every subscriber of the topic
//!  Pool ──ConnectionEvent::{Closing, Closed}──▶ Broker: move producers and subscriptions
//! ```
//!
//! # Guarantees
//! - Every [`Publish`] and [`Request`] resolves exactly once. A publish resolves with
//!   [`Confirmed`] (the server took it, and says its sequence number in the topic) or
//!   [`Unconfirmed`] (which says whether it may still have been delivered).
//! - Ordered publishes of one producer reach the server in the order they were
//!   published, across connection closes and drains; see `producer.rs`.
//! - Subscriptions outlive their connections: on a close the broker subscribes again
//!   elsewhere and the server replays what was missed (within its replay window); on a
//!   drain it subscribes elsewhere before letting go of the old connection. Each
//!   subscriber sees a topic's messages in order and at most once. They outlive
//!   outages too: one made while the server cannot be reached is kept, pending
//!   ([`SubscriptionStatus`]), and retried with jittered backoff until it is live.
//! - Unsubscribes reach the server: retried until acknowledged, within a bound, and
//!   sent again (rate-limited) when a push shows the server still sends a topic
//!   nobody here subscribes to (docs/broker.md, "Building a client").
//! - Bounds: `max_unconfirmed` messages per producer, `max_producers`, the broker's
//!   mailbox, and subscribers' mailboxes: the broker never waits for a subscriber,
//!   holds at most one message for a full mailbox, and tells every loss in the next
//!   [`Delivery::missed_before`] (see `fanout.rs`).
//! - Gaps are found from sequence numbers (numbers skipped, a replay short of its
//!   answer's head, what the server could no longer replay): counted in
//!   [`BrokerStats::missed`] and told to the topic's subscribers the same way.
//! - Heartbeats never wait behind application messages: connections send and answer
//!   pings themselves, outside any mailbox.
//!
//! The server side it talks to is [`server`](crate::server).
//!
//! # Protocols
//! The broker speaks any [`BrokerProtocol`]: the built-in `frame` protocol (the
//! default type parameter, against a [`ServerBroker`](crate::server::ServerBroker))
//! is *sequenced*, and every guarantee above holds in full. Over a *plain* server such
//! as Redis ([`resp`](crate::protocol::resp)), which neither numbers nor replays,
//! publishes and ordering on one connection work the same, [`Request`]s are
//! [`BrokerError::Unsupported`], and subscriptions are at most once: they move only
//! when their connection closes, and what is published while none is subscribed is
//! not seen.

mod fanout;
mod messages;
mod producer;
mod protocol;
mod subscriptions;
mod unsubscribes;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, MessageResult, ResponseActFuture,
    ResponseFuture, WrapFuture,
};
use bytes::Bytes;
use rustc_hash::FxHashMap;

pub use messages::{
    BrokerConfig, BrokerError, BrokerStats, Confirmed, Delivery, GetBrokerStats,
    GetSubscriptionStatus, Order, ProducerId, Publish, Request, Subscribe, SubscriptionId,
    SubscriptionStatus, Unconfirmed, Unsubscribe,
};

pub use protocol::{BrokerProtocol, Fence, Joined, Message, Resume};

use crate::protocol::frame::FrameProtocol;
use crate::transport::Connector;
use crate::{Authority, Call, CallError, ConnectionEvent, PoolBuilder, PoolHandle, Pushed, Spread};
use producer::Producer;
use subscriptions::Topic;

/// Messages the broker's mailbox holds: pushes from connections are dropped (and
/// counted by the connection) past it.
const MAILBOX: usize = 65_536;

/// The client-side broker actor; see the [module documentation](self). Start one with
/// [`Broker::builder`].
pub struct Broker<C: Connector, P: BrokerProtocol = FrameProtocol> {
    pool: PoolHandle<C, P>,
    protocol: P,
    authority: Authority,
    config: BrokerConfig,
    producers: FxHashMap<ProducerId, Producer<C, P>>,
    /// This broker's number in the server's producer fences: random, so that two
    /// clients' producers with the same id are fenced apart.
    instance: u64,
    /// The next fence number of an ordered message, over all producers: it only
    /// grows, so a producer forgotten while idle and published for again still goes
    /// up.
    next_fence: u64,
    topics: FxHashMap<Bytes, Topic<C, P>>,
    subscriptions: FxHashMap<SubscriptionId, Bytes>,
    next_subscription: u64,
    /// Held deliveries to offer again, and the rate of warnings about losses.
    lag: fanout::Lag,
    /// Unsubscribes under way, and where a stray push can be answered with one.
    unsubscribes: unsubscribes::Unsubscribes<C, P>,
    stats: BrokerStats,
    /// Unordered publishes handled and not yet resolved.
    unordered_in_flight: usize,
    /// Requests handled and not yet resolved.
    requests_in_flight: usize,
}

impl<C: Connector, P: BrokerProtocol> fmt::Debug for Broker<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("authority", &self.authority)
            .field("producers", &self.producers.len())
            .field("topics", &self.topics.len())
            .finish_non_exhaustive()
    }
}

/// Sets up a [`Broker`]; see [`Broker::builder`].
#[must_use]
pub struct BrokerBuilder<C: Connector, P: BrokerProtocol = FrameProtocol> {
    pool: PoolBuilder<C, P>,
    authority: Authority,
    config: BrokerConfig,
}

impl<C: Connector, P: BrokerProtocol> fmt::Debug for BrokerBuilder<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerBuilder")
            .field("authority", &self.authority)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C: Connector, P: BrokerProtocol> BrokerBuilder<C, P> {
    /// The broker's limits. Defaults to [`BrokerConfig::default`].
    pub fn config(mut self, config: BrokerConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the pool and the broker in the current arbiter.
    pub fn start(self) -> BrokerHandle<C, P> {
        let BrokerBuilder {
            pool,
            authority,
            config,
        } = self;
        let mut handle = None;
        let protocol = pool.protocol.clone();
        let addr = Broker::create(|ctx| {
            let pool = pool
                .authority(authority.clone())
                .pushes(ctx.address().recipient())
                .events(ctx.address().recipient())
                .start();
            handle = Some(pool.clone());
            Broker {
                pool,
                protocol,
                authority,
                config,
                producers: FxHashMap::default(),
                instance: fastrand::u64(..),
                next_fence: 1,
                topics: FxHashMap::default(),
                subscriptions: FxHashMap::default(),
                next_subscription: 0,
                lag: fanout::Lag::default(),
                unsubscribes: unsubscribes::Unsubscribes::default(),
                stats: BrokerStats::default(),
                unordered_in_flight: 0,
                requests_in_flight: 0,
            }
        });
        BrokerHandle {
            broker: addr,
            pool: handle.expect("Actor::create runs its closure at once"),
        }
    }
}

impl<C: Connector, P: BrokerProtocol> Broker<C, P> {
    /// Sets up a broker that routes to `authority` over the pool `pool` will start.
    /// The broker sets the pool's push and event recipients to itself.
    pub fn builder(pool: PoolBuilder<C, P>, authority: Authority) -> BrokerBuilder<C, P> {
        BrokerBuilder {
            pool,
            authority,
            config: BrokerConfig::default(),
        }
    }

    fn stats(&self) -> BrokerStats {
        let (written, queued) =
            self.producers
                .values()
                .fold((0, 0), |(written, queued), producer| {
                    (written + producer.outstanding(), queued + producer.queued())
                });
        BrokerStats {
            producers: self.producers.len(),
            topics: self.topics.len(),
            publishes_in_flight: written + self.unordered_in_flight,
            publishes_queued: queued,
            requests_in_flight: self.requests_in_flight,
            ..self.stats.clone()
        }
    }
}

/// Sends `request` over a connection picked by two random choices.
async fn call_spread<C: Connector, P: BrokerProtocol>(
    pool: PoolHandle<C, P>,
    authority: Authority,
    request: P::Request,
    timeout: Option<Duration>,
) -> Result<P::Reply, BrokerError> {
    let connection = pool.shared_by(&authority, Spread::TwoChoices, None).await?;
    let mut call = Call::new(request);
    call.timeout = timeout;
    Ok(answered(connection.addr().send(call).await)?)
}

/// A call's answer, with a message that never reached the connection's handler
/// (its mailbox closed) as the call error it amounts to.
fn answered<T>(answer: Result<Result<T, CallError>, actix::MailboxError>) -> Result<T, CallError> {
    answer?
}

/// Reads the server's answer to a publish.
fn confirmation<P: BrokerProtocol>(
    protocol: &P,
    answer: Result<P::Reply, BrokerError>,
) -> Result<Confirmed, Unconfirmed> {
    answer
        .and_then(|reply| protocol.published(reply))
        .map_err(|error| Unconfirmed { error })
}

impl<C: Connector, P: BrokerProtocol> Actor for Broker<C, P> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl<C: Connector, P: BrokerProtocol> Handler<Publish> for Broker<C, P> {
    type Result = ResponseActFuture<Self, Result<Confirmed, Unconfirmed>>;

    /// Publishes in order for its producer, or spread by load.
    fn handle(&mut self, publish: Publish, ctx: &mut Context<Self>) -> Self::Result {
        match publish.order {
            Order::Ordered(producer) => {
                let outcome = self.publish_ordered(producer, publish.topic, publish.payload, ctx);
                Box::pin(
                    async move {
                        outcome.await.unwrap_or(Err(Unconfirmed {
                            error: BrokerError::Stopped,
                        }))
                    }
                    .into_actor(self),
                )
            }
            Order::Unordered => {
                let request = self.protocol.publish(publish.topic, publish.payload);
                let answer = call_spread(self.pool.clone(), self.authority.clone(), request, None);
                // The future runs to its end in the broker's context, also when the
                // caller has gone, so this count always comes down again.
                self.unordered_in_flight += 1;
                Box::pin(answer.into_actor(self).map(|answer, this, _| {
                    this.unordered_in_flight -= 1;
                    let outcome = confirmation(&this.protocol, answer);
                    match &outcome {
                        Ok(_) => this.stats.confirmed += 1,
                        Err(_) => this.stats.unconfirmed += 1,
                    }
                    outcome
                }))
            }
        }
    }
}

impl<C: Connector, P: BrokerProtocol> Handler<Request> for Broker<C, P> {
    type Result = ResponseActFuture<Self, Result<Bytes, BrokerError>>;

    /// Sends the request over the less loaded of two connections.
    fn handle(&mut self, request: Request, _: &mut Context<Self>) -> Self::Result {
        let frame = match self.protocol.call(request.route, request.payload) {
            Ok(frame) => frame,
            Err(error) => {
                self.stats.requests_failed += 1;
                return Box::pin(actix::fut::ready(Err(error)));
            }
        };
        let answer = call_spread(
            self.pool.clone(),
            self.authority.clone(),
            frame,
            request.timeout,
        );
        self.requests_in_flight += 1;
        Box::pin(answer.into_actor(self).map(|answer, this, _| {
            this.requests_in_flight -= 1;
            let answer = answer.and_then(|reply| this.protocol.answer(reply));
            match &answer {
                Ok(_) | Err(BrokerError::Call(CallError::Remote(_))) => this.stats.requests += 1,
                Err(_) => this.stats.requests_failed += 1,
            }
            answer
        }))
    }
}

impl<C: Connector, P: BrokerProtocol> Handler<Subscribe> for Broker<C, P> {
    type Result = ResponseFuture<Result<SubscriptionId, BrokerError>>;

    /// Subscribes, and resolves once the server confirmed, or pending once it could
    /// not be reached; see [`Subscribe`].
    fn handle(&mut self, subscribe: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        let subscribed = self.subscribe(subscribe.topic, subscribe.subscriber, ctx);
        Box::pin(async move { subscribed.await.unwrap_or(Err(BrokerError::Stopped)) })
    }
}

impl<C: Connector, P: BrokerProtocol> Handler<Unsubscribe> for Broker<C, P> {
    type Result = ResponseFuture<Result<(), BrokerError>>;

    /// Ends a subscription at once, and tells the server when it was the topic's
    /// last (retried until acknowledged, within a bound; docs/broker.md, "Building a client").
    fn handle(&mut self, Unsubscribe(id): Unsubscribe, ctx: &mut Context<Self>) -> Self::Result {
        if !self.subscriptions.contains_key(&id) {
            return Box::pin(async { Err(BrokerError::NotSubscribed) });
        }
        if let Some((name, source)) = self.forget_subscriber(id) {
            self.unsubscribe_on(name, source, ctx);
        }
        Box::pin(async { Ok(()) })
    }
}

impl<C: Connector, P: BrokerProtocol> Handler<Pushed<P>> for Broker<C, P> {
    type Result = ();

    /// Hands a subscribed message to its topic's subscribers.
    fn handle(&mut self, pushed: Pushed<P>, ctx: &mut Context<Self>) {
        if let Some(message) = self.protocol.message(pushed.push) {
            self.deliver(pushed.connection, message, ctx);
        }
    }
}

impl<C: Connector, P: BrokerProtocol> Handler<ConnectionEvent> for Broker<C, P> {
    type Result = ();

    /// Moves producers and subscriptions off a connection that closes or drains.
    fn handle(&mut self, event: ConnectionEvent, ctx: &mut Context<Self>) {
        match event {
            ConnectionEvent::Closing { id } => {
                self.unpin_all(id, ctx);
                self.move_subscriptions(id, false, ctx);
            }
            ConnectionEvent::Closed { id, .. } => {
                self.unsubscribes.closed(id);
                self.unpin_all(id, ctx);
                self.move_subscriptions(id, true, ctx);
            }
            _ => {}
        }
    }
}

impl<C: Connector, P: BrokerProtocol> Handler<GetSubscriptionStatus> for Broker<C, P> {
    type Result = Result<SubscriptionStatus, BrokerError>;

    /// Whether the subscription is live now.
    fn handle(&mut self, query: GetSubscriptionStatus, _: &mut Context<Self>) -> Self::Result {
        self.subscription_status(query.0)
    }
}

impl<C: Connector, P: BrokerProtocol> Handler<GetBrokerStats> for Broker<C, P> {
    type Result = MessageResult<GetBrokerStats>;

    /// A snapshot of the counters.
    fn handle(&mut self, _: GetBrokerStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats())
    }
}

/// The way to a running [`Broker`] and its pool.
pub struct BrokerHandle<C: Connector, P: BrokerProtocol = FrameProtocol> {
    broker: Addr<Broker<C, P>>,
    pool: PoolHandle<C, P>,
}

impl<C: Connector, P: BrokerProtocol> Clone for BrokerHandle<C, P> {
    fn clone(&self) -> Self {
        Self {
            broker: self.broker.clone(),
            pool: self.pool.clone(),
        }
    }
}

impl<C: Connector, P: BrokerProtocol> fmt::Debug for BrokerHandle<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerHandle").finish_non_exhaustive()
    }
}

impl<C: Connector, P: BrokerProtocol> BrokerHandle<C, P> {
    /// The broker's address, to send it messages.
    pub fn addr(&self) -> &Addr<Broker<C, P>> {
        &self.broker
    }

    /// The pool the broker routes over.
    pub fn pool(&self) -> &PoolHandle<C, P> {
        &self.pool
    }

    /// Publishes; see [`Publish`].
    ///
    /// The message is queued to the broker when this is called, not when the future
    /// is first polled, so one producer's ordered publishes keep the order of the
    /// calls even when the caller keeps many in flight and polls them in any order.
    pub fn publish(
        &self,
        publish: Publish,
    ) -> impl Future<Output = Result<Confirmed, Unconfirmed>> + 'static {
        // A fresh sender is never parked by a full mailbox: `send` queues at once.
        let sent = self.broker.clone().send(publish);
        async move {
            sent.await.unwrap_or(Err(Unconfirmed {
                error: BrokerError::Stopped,
            }))
        }
    }

    /// Sends a request to the server's handler for `route`; see [`Request`].
    pub async fn request(&self, request: Request) -> Result<Bytes, BrokerError> {
        self.broker.send(request).await?
    }

    /// Subscribes `subscriber` to `topic`; see [`Subscribe`].
    pub async fn subscribe(
        &self,
        topic: impl Into<Bytes>,
        subscriber: actix::Recipient<Delivery>,
    ) -> Result<SubscriptionId, BrokerError> {
        let subscribe = Subscribe {
            topic: topic.into(),
            subscriber,
        };
        self.broker.send(subscribe).await?
    }

    /// Whether a subscription is live on the server now; see
    /// [`GetSubscriptionStatus`].
    pub async fn subscription_status(
        &self,
        id: SubscriptionId,
    ) -> Result<SubscriptionStatus, BrokerError> {
        self.broker.send(GetSubscriptionStatus(id)).await?
    }

    /// Ends a subscription; see [`Unsubscribe`].
    pub async fn unsubscribe(&self, id: SubscriptionId) -> Result<(), BrokerError> {
        self.broker.send(Unsubscribe(id)).await?
    }

    /// The broker's counters.
    pub async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        Ok(self.broker.send(GetBrokerStats).await?)
    }
}
