//! The Pool actor: supervised capacity per authority, fair checkout, health checks and
//! restarts.
//!
//! # Who owns what
//! The [`Pool`] actor is the one owner of capacity and health: it alone opens
//! connections (with backoff), closes them (idle timeout, lifetime, failed checks,
//! shutdown) and hears their [`ConnectionEvent`]s. Each authority has a *group*
//! (`group.rs`): its idle stack, its FIFO queue of waiters and its counts, behind
//! one mutex shared with the pool's [`PoolHandle`]s and [`Lease`]s.
//!
//! A checkout that finds an idle connection pops it under that lock and is done: no
//! actor round trip on the fast path. Returning a lease pushes the connection back
//! (or hands it straight to the longest waiter). Only what changes capacity reaches
//! the actor, as signals it never makes anyone wait for:
//!
//! ```text
//!  handle ──checkout──▶ group ──idle?──▶ Lease                 (fast path)
//!                         └──no──▶ queue waiter ──Demand──▶ Pool ──connect──▶ Connection
//!  Lease ──drop──▶ group ──healthy, quiet──▶ longest waiter or idle stack
//!                    └──in flight / expired / broken──Returned──▶ Pool (drain or close)
//!  Connection ──ConnectionEvent::Closed──▶ Pool ──forget, replace with backoff
//! ```
//!
//! # Messages
//! [`Checkout`] → [`Lease`], [`CheckoutShared`] → [`SharedConnection`], [`GetStatus`]
//! → [`PoolStatus`], [`Resize`], [`Drain`], [`Close`]. [`PoolHandle`] offers the same
//! as methods (and checks out without the actor when it can).
//!
//! # States of a connection
//! ```text
//! connecting ──ok──▶ idle ◀──return (quiet)── leased ◀──checkout── idle
//!     │                │                        │
//!     │                └──check / reap──▶ busy ◀┘ return (in flight, expired, broken)
//!     └──fail──▶ backoff, then again;            busy ──closed──▶ gone (replaced)
//!               failure_threshold in a row ──▶ authority down: checkouts fail at once,
//!               a probe every backoff_max at most until one connects
//! ```

mod capacity;
mod config;
mod group;
mod handle;
mod lease;
mod messages;
mod shutdown;
mod status;
mod upkeep;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::dev::{MessageResponse, OneshotSender};
use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message,
    MessageResult, Recipient, ResponseFuture, SpawnHandle, StreamHandler, Supervised, WrapFuture,
};
use futures::future::{Either, LocalBoxFuture};
use futures::StreamExt;
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use config::{PoolConfig, PoolConfigBuilder};
pub use handle::{PoolBuilder, PoolHandle};
pub use lease::{Lease, SharedConnection};
pub use messages::{
    AuthorityStatus, Checkout, CheckoutShared, CheckoutStats, Close, Drain, GetStatus, MemberState,
    MemberStatus, PoolCounters, PoolStatus, Resize, ShutdownOutcome, Spread,
};

use crate::connection::{later, InFlightGauge};
use crate::protocol::Protocol;
use crate::transport::Connector;
use crate::{
    Abort, Authority, ConfigError, ConnectError, Connection, ConnectionBuilder, ConnectionConfig,
    ConnectionEvent, ConnectionId, Ping, PoolError, Pushed,
};
use group::{Group, Member, Phase, Place};
use handle::Registry;
use messages::{AwaitReady, Demand, Detached, Register, Returned, ReturnedBecause};

/// Starts a connection somewhere (another arbiter) and returns its address.
pub(crate) type Placement<C, P> = Box<
    dyn FnMut(
        ConnectionBuilder<<C as Connector>::Io, P>,
    ) -> Addr<Connection<<C as Connector>::Io, P>>,
>;

/// How often connections returned with calls in flight are looked at.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// The Pool actor: supervises [`Connection`]s per [`Authority`] and hands them out as
/// [`Lease`]s (exclusive) or [`SharedConnection`]s (multiplexed). See the
/// [module documentation](self) for the design; start one with [`Pool::builder`].
///
/// # Guarantees
/// - Capacity: at most `max_size` connections per authority and `max_connections`
///   in all; at least `min_idle` kept open per authority while it is reachable.
/// - Fairness: checkouts that wait are served first come, first served; at most
///   `max_waiters` wait, past that a checkout fails at once; every wait ends within
///   its timeout, and a cancelled checkout leaves the queue and holds nothing.
/// - Errors: a checkout that waited for a connection that failed to connect gets
///   that [`ConnectError`]; after `failure_threshold` failures in a row the
///   authority is marked down and checkouts fail at once with the last error until a
///   probe (every `backoff_max` at most) connects again.
/// - Health: connections idle past `test_on_checkout_after` are pinged before they
///   are handed out; idle ones are pinged every `health_check_interval`; idle ones
///   above `min_idle` close after `idle_timeout`; every one is replaced after its
///   `max_lifetime` (jittered), without going below `min_idle`.
/// - Restarts: a connection that stops is counted out at once (from its `Closed`
///   event) and replaced after a jittered backoff.
///
/// # Example
/// ```
/// use futures::{SinkExt, StreamExt};
/// use switchboard::protocol::frame::{Frame, FrameCodec, FrameKind, FrameProtocol, FrameRequest};
/// use switchboard::transport::MemoryNetwork;
/// use switchboard::{Pool, PoolConfig};
/// use tokio_util::codec::Framed;
///
/// #[actix::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     // A peer that echoes requests, listening on an in-memory network.
///     let network = MemoryNetwork::new();
///     let mut listener = network.bind("echo");
///     let authority = listener.authority().clone();
///     actix::spawn(async move {
///         while let Some(stream) = listener.accept().await {
///             actix::spawn(async move {
///                 let mut peer = Framed::new(stream, FrameCodec::default());
///                 while let Some(Ok(frame)) = peer.next().await {
///                     if frame.kind == FrameKind::Request {
///                         let _ = peer.send(Frame::response(frame.id, frame.payload)).await;
///                     }
///                 }
///             });
///         }
///     });
///
///     let pool = Pool::builder(network.connector(), FrameProtocol::default())
///         .config(PoolConfig::builder().min_idle(1).max_size(4).build()?)
///         .authority(authority.clone())
///         .build() // eager: waits for min_idle connections, or fails with the connect error
///         .await?;
///
///     // Exclusive use: the lease goes back to the pool when dropped.
///     let lease = pool.checkout(&authority).await?;
///     let reply = lease.call(FrameRequest::new("hello")).await?;
///     assert_eq!(&reply[..], b"hello");
///     drop(lease);
///
///     // Shared use: the least loaded connection, for protocols with request ids.
///     let shared = pool.shared(&authority).await?;
///     assert_eq!(&shared.call(FrameRequest::new("again")).await?[..], b"again");
///
///     let status = pool.status().await?;
///     assert_eq!(status.authority(&authority).unwrap().leased, 0);
///     pool.drain().await;
///     Ok(())
/// }
/// ```
pub struct Pool<C: Connector, P: Protocol> {
    connector: Rc<C>,
    protocol: P,
    config: Arc<PoolConfig>,
    connection: ConnectionConfig,
    pushes: Option<Recipient<Pushed<P>>>,
    /// Hears the pool's connections' lives (a Broker).
    events: Option<Recipient<ConnectionEvent>>,
    placement: Option<Placement<C, P>>,
    registry: Arc<Registry<C, P>>,
    addr: Addr<Pool<C, P>>,
    /// Authorities registered by the builder, opened when the pool starts.
    initial: Vec<Authority>,
    phase: Phase,
    tracked: FxHashMap<ConnectionId, Tracked<C, P>>,
    /// Returned with calls in flight; waiting for them to finish.
    draining: Vec<Held<C, P>>,
    drain_tick: Option<SpawnHandle>,
    /// Taken out of the idle stack for a health check.
    checks: FxHashMap<ConnectionId, Held<C, P>>,
    ready: Vec<(Authority, oneshot::Sender<Result<(), PoolError>>)>,
    /// The idle connection being closed to make room under `max_connections`.
    making_room: Option<ConnectionId>,
    /// Connections seen stopped at the last maintenance tick but still tracked.
    suspects: rustc_hash::FxHashSet<ConnectionId>,
    shutdown: Option<Shutdown>,
    counters: PoolCounters,
    /// Where connect attempts go to be run; replaced at each (re)start with the
    /// stream that runs them (see [`Attempt`]).
    attempts: Option<tokio::sync::mpsc::UnboundedSender<LocalBoxFuture<'static, Attempt<C, P>>>>,
    span: tracing::Span,
}

/// The outcome of one connect attempt.
///
/// Attempts are futures sent through a channel that the actor's context reads with
/// `buffer_unordered`, which polls only the attempts that woke. Not plain futures in
/// the context: an actix context polls every future it holds whenever any one of
/// them wakes, so with thousands of connects under way (a pool filling, or refilling
/// after its peer restarted) each wake-up cost thousands of polls. Not a task per
/// attempt either: measured with the scale bench (10,000 connections whose peer is
/// blackholed, then 10,000 reconnects), that made the heartbeat timeouts of about one
/// connection in five fire seconds late (up to 17 s instead of 3); polled in the
/// pool's task, every one was detected within the bound.
pub(crate) struct Attempt<C: Connector, P: Protocol> {
    group: Arc<group::Group<C, P>>,
    result: Result<C::Io, ConnectError>,
}

/// A connection the actor knows, and its group.
struct Tracked<C: Connector, P: Protocol> {
    member: Arc<Member<C, P>>,
    group: Arc<Group<C, P>>,
}

/// A connection the actor holds out of circulation for a while.
struct Held<C: Connector, P: Protocol> {
    member: Arc<Member<C, P>>,
    group: Arc<Group<C, P>>,
    /// For a drain: when to give up. For a check: since when it was idle.
    at: Instant,
}

struct Shutdown {
    waiters: Vec<oneshot::Sender<ShutdownOutcome>>,
}

impl<C: Connector, P: Protocol> fmt::Debug for Pool<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("phase", &self.phase)
            .field("connections", &self.tracked.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C: Connector, P: Protocol> Pool<C, P> {
    /// Sets up a pool that opens transports with `connector` and speaks `protocol`.
    pub fn builder(connector: C, protocol: P) -> PoolBuilder<C, P> {
        PoolBuilder {
            connector,
            protocol,
            config: PoolConfig::default(),
            connection: ConnectionConfig::default(),
            pushes: None,
            events: None,
            placement: None,
            authorities: Vec::new(),
        }
    }

    fn new(builder: PoolBuilder<C, P>, registry: Arc<Registry<C, P>>, addr: Addr<Self>) -> Self {
        Self {
            connector: Rc::new(builder.connector),
            protocol: builder.protocol,
            config: Arc::new(builder.config),
            connection: builder.connection,
            pushes: builder.pushes,
            events: builder.events,
            placement: builder.placement,
            registry,
            addr,
            initial: builder.authorities,
            phase: Phase::Open,
            tracked: FxHashMap::default(),
            draining: Vec::new(),
            drain_tick: None,
            checks: FxHashMap::default(),
            ready: Vec::new(),
            making_room: None,
            suspects: Default::default(),
            shutdown: None,
            counters: PoolCounters::default(),
            attempts: None,
            span: tracing::debug_span!("pool"),
        }
    }

    fn refuse(&self) -> Result<(), PoolError> {
        self.phase.admit()
    }
}

/// Tells a pooled connection to close: gracefully (calls in flight get their
/// replies) or at once.
///
/// `do_send` loses nothing here: a connection whose mailbox is closed has stopped,
/// and its `Closed` event counts it out just the same.
fn close<C: Connector, P: Protocol>(member: &Member<C, P>, graceful: bool) {
    if graceful {
        member.addr.do_send(crate::Close::default());
    } else {
        member.addr.do_send(Abort);
    }
}

/// `delay` less up to half of it, at random: spreads reconnects of many connections.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Removes and returns the items matching `pick`.
fn extract<T>(items: &mut Vec<T>, mut pick: impl FnMut(&T) -> bool) -> Vec<T> {
    let (picked, kept) = std::mem::take(items)
        .into_iter()
        .partition(|item| pick(item));
    *items = kept;
    picked
}

impl<C: Connector, P: Protocol> Actor for Pool<C, P> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Handles send `Register` and `Checkout` with `send`; room for bursts.
        ctx.set_mailbox_capacity(1024);
        // Fresh at each (re)start: the attempts of a context that is gone were dropped
        // with it. The stream never ends, as the pool holds the sender.
        let (attempts, mut queued) = tokio::sync::mpsc::unbounded_channel();
        self.attempts = Some(attempts);
        ctx.add_stream(
            futures::stream::poll_fn(move |cx| queued.poll_recv(cx)).buffer_unordered(usize::MAX),
        );
        ctx.run_interval(self.config.maintenance_interval, |pool, ctx| {
            pool.maintain(ctx)
        });
        for authority in self.initial.clone() {
            self.group_for(&authority);
        }
        self.replenish_all();
        self.arm_drain_tick(ctx);
        tracing::debug!(parent: &self.span, "pool started");
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // Stopped from outside (the system shut down) or after a shutdown: nobody may
        // wait on a pool that is gone.
        for group in self.registry.all() {
            let mut state = group.lock();
            state.phase = Phase::Closed;
            state.fail_waiters(&PoolError::Closed);
        }
        for (_, tx) in self.ready.drain(..) {
            let _ = tx.send(Err(PoolError::Closed));
        }
        // Connections on other arbiters outlive this one, and handles, leases and
        // shared handles keep their addresses: without a word they would stay open
        // and heartbeating for as long as any of those lives. They close gracefully
        // (calls in flight get their replies within `close_timeout`). After a
        // `Close` or `Drain` nothing is left to tell.
        for member in self.pooled() {
            // `do_send`: a connection that has stopped needs nothing.
            member.addr.do_send(crate::Close::default());
        }
    }
}

impl<C: Connector, P: Protocol> Supervised for Pool<C, P> {
    /// Starts afresh: open again, connects that were under way forgotten (dropped
    /// with the old context), health checks in progress put back.
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::info!(parent: &self.span, "pool restarting");
        self.phase = Phase::Open;
        self.drain_tick = None;
        self.attempts = None;
        for group in self.registry.all() {
            let mut state = group.lock();
            state.phase = Phase::Open;
            state.connecting = 0;
            state.demand_signalled = false;
        }
        for (_, held) in std::mem::take(&mut self.checks) {
            self.put_back(held.group, held.member, held.at);
        }
    }
}

/// The reply of the [`Checkout`] and [`CheckoutShared`] handlers: the checkout runs
/// on its own task, and is dropped (leaving the queue, holding nothing) as soon as the
/// sender stops waiting for its answer.
///
/// A plain `ResponseFuture` would run to the end even when nobody waits for it: an
/// abandoned checkout would keep its place in line, count as demand and be served.
pub struct CheckoutReply<T>(Pin<Box<dyn Future<Output = Result<T, PoolError>>>>);

impl<T> fmt::Debug for CheckoutReply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CheckoutReply")
    }
}

impl<C, P, M, T> MessageResponse<Pool<C, P>, M> for CheckoutReply<T>
where
    C: Connector,
    P: Protocol,
    M: Message<Result = Result<T, PoolError>>,
    T: 'static,
{
    fn handle(self, _: &mut Context<Pool<C, P>>, tx: Option<OneshotSender<M::Result>>) {
        // Sent with `do_send`: nobody would take the connection, so do not check out.
        let Some(mut tx) = tx else {
            return;
        };
        let checkout = self.0;
        actix::spawn(async move {
            let outcome = {
                let gone = tx.closed();
                futures::pin_mut!(gone);
                match futures::future::select(checkout, gone).await {
                    Either::Left((result, _)) => Some(result),
                    // Dropping the checkout here takes it out of the queue.
                    Either::Right(((), _)) => None,
                }
            };
            if let Some(result) = outcome {
                // If the sender left just now, the lease comes back as this drops.
                let _ = tx.send(result);
            }
        });
    }
}

impl<C: Connector, P: Protocol> Handler<Checkout<C, P>> for Pool<C, P> {
    type Result = CheckoutReply<Lease<C, P>>;

    /// Checks out a connection (waiting in line if none is idle).
    fn handle(&mut self, checkout: Checkout<C, P>, _: &mut Context<Self>) -> Self::Result {
        if let Err(error) = self.refuse() {
            return CheckoutReply(Box::pin(async move { Err(error) }));
        }
        let group = self.group_for(&checkout.authority);
        CheckoutReply(Box::pin(
            async move { group.checkout(checkout.timeout).await },
        ))
    }
}

impl<C: Connector, P: Protocol> Handler<CheckoutShared<C, P>> for Pool<C, P> {
    type Result = CheckoutReply<SharedConnection<C, P>>;

    /// Hands out the least loaded connection for shared use.
    fn handle(&mut self, checkout: CheckoutShared<C, P>, _: &mut Context<Self>) -> Self::Result {
        if let Err(error) = self.refuse() {
            return CheckoutReply(Box::pin(async move { Err(error) }));
        }
        let group = self.group_for(&checkout.authority);
        CheckoutReply(Box::pin(async move {
            group.shared(checkout.timeout, Spread::LeastLoaded, 1).await
        }))
    }
}

impl<C: Connector, P: Protocol> Handler<Register<C, P>> for Pool<C, P> {
    type Result = Result<Arc<Group<C, P>>, PoolError>;

    /// Finds or creates an authority's group for a handle.
    fn handle(&mut self, register: Register<C, P>, _: &mut Context<Self>) -> Self::Result {
        self.refuse()?;
        Ok(self.group_for(&register.authority))
    }
}

impl<C: Connector, P: Protocol> Handler<AwaitReady> for Pool<C, P> {
    type Result = ResponseFuture<Result<(), PoolError>>;

    /// Resolves once the authority has `min_idle` connections, or with a connect error.
    fn handle(&mut self, ready: AwaitReady, _: &mut Context<Self>) -> Self::Result {
        if let Err(error) = self.refuse() {
            return Box::pin(async move { Err(error) });
        }
        let (tx, rx) = oneshot::channel();
        self.ready.push((ready.authority.clone(), tx));
        self.group_for(&ready.authority);
        self.answer_ready(&ready.authority);
        Box::pin(async move { rx.await.unwrap_or(Err(PoolError::Closed)) })
    }
}

impl<C: Connector, P: Protocol> Handler<Demand<C, P>> for Pool<C, P> {
    type Result = ();

    /// Opens connections for checkouts that are waiting.
    fn handle(&mut self, demand: Demand<C, P>, _: &mut Context<Self>) {
        self.replenish(&demand.group, Duration::ZERO);
    }
}

impl<C: Connector, P: Protocol> Handler<Returned<C, P>> for Pool<C, P> {
    type Result = ();

    /// Drains or closes a lease's connection that could not go straight back.
    fn handle(&mut self, returned: Returned<C, P>, ctx: &mut Context<Self>) {
        let Returned {
            group,
            member,
            because,
        } = returned;
        if member.place() != Place::Busy {
            return;
        }
        match because {
            ReturnedBecause::InFlight => {
                self.counters.returned_in_flight += 1;
                let deadline = later(Instant::now(), self.config.return_drain_timeout);
                self.draining.push(Held {
                    member,
                    group,
                    at: deadline,
                });
                self.arm_drain_tick(ctx);
            }
            ReturnedBecause::Retire => {
                if member.is_expired(Instant::now()) {
                    self.counters.lifetime_expired += 1;
                }
                self.retire(&group, &member, true);
            }
            ReturnedBecause::Discard => {
                self.counters.discarded += 1;
                self.retire(&group, &member, false);
            }
            ReturnedBecause::FailedTest => {
                self.counters.health_check_failures += 1;
                self.retire(&group, &member, false);
            }
        }
    }
}

impl<C: Connector, P: Protocol> Handler<Detached> for Pool<C, P> {
    type Result = ();

    /// Forgets a detached connection: it belongs to its borrower now. A shutdown
    /// that was waiting for it as a lease has one connection fewer to wait for.
    fn handle(&mut self, detached: Detached, ctx: &mut Context<Self>) {
        if let Some(tracked) = self.tracked.get(&detached.id) {
            if tracked.member.place() == Place::Detached {
                self.tracked.remove(&detached.id);
            }
        }
        self.check_shutdown(ctx);
    }
}

impl<C: Connector, P: Protocol> StreamHandler<Attempt<C, P>> for Pool<C, P> {
    fn handle(&mut self, attempt: Attempt<C, P>, ctx: &mut Context<Self>) {
        self.on_connect(attempt.group, attempt.result, ctx);
    }

    /// The pool holds the sender, so the stream never ends while it lives; when it
    /// does, nothing is to be done (the default would stop the pool).
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl<C: Connector, P: Protocol> Handler<ConnectionEvent> for Pool<C, P> {
    type Result = ();

    /// Counts out and replaces connections that closed, and forwards the life events.
    /// (Pooled connections send no `Rtt`: the pool reads round trips from their
    /// gauges.)
    fn handle(&mut self, event: ConnectionEvent, ctx: &mut Context<Self>) {
        let forward = match &event {
            ConnectionEvent::Closed { id, reason } => {
                self.on_closed(*id, reason.clone(), ctx);
                true
            }
            ConnectionEvent::Connected { .. } | ConnectionEvent::Closing { .. } => true,
            _ => false,
        };
        if let (true, Some(events)) = (forward, &self.events) {
            // `do_send`: these are a few per connection's life, and a listener that
            // missed a `Closed` would route to a dead connection until a call failed.
            events.do_send(event);
        }
    }
}

impl<C: Connector, P: Protocol> Handler<GetStatus> for Pool<C, P> {
    type Result = MessageResult<GetStatus>;

    /// A snapshot of every authority and the pool's counters.
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status())
    }
}

impl<C: Connector, P: Protocol> Handler<Resize> for Pool<C, P> {
    type Result = Result<(), ConfigError>;

    /// Changes an authority's limits; closes idle connections above the new size.
    fn handle(&mut self, resize: Resize, _: &mut Context<Self>) -> Self::Result {
        PoolConfig::check_sizes(resize.min_idle, resize.max_size)?;
        if self.phase != Phase::Open {
            // Shutting down: nothing to size, and no authority to open.
            return Ok(());
        }
        let group = self.group_for(&resize.authority);
        let mut surplus = Vec::new();
        {
            let mut state = group.lock();
            state.min_idle = resize.min_idle;
            state.max_size = resize.max_size;
            while state.members - state.retiring > state.max_size && !state.idle.is_empty() {
                surplus.push(state.retire_idle(0));
            }
        }
        for member in &surplus {
            close(member, true);
        }
        self.replenish(&group, Duration::ZERO);
        Ok(())
    }
}

impl<C: Connector, P: Protocol> Handler<Drain> for Pool<C, P> {
    type Result = ResponseFuture<ShutdownOutcome>;

    /// Takes no new checkouts, lets calls in flight finish, then closes.
    fn handle(&mut self, drain: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.shutdown_message(true, drain.timeout, ctx)
    }
}

impl<C: Connector, P: Protocol> Handler<Close> for Pool<C, P> {
    type Result = ResponseFuture<ShutdownOutcome>;

    /// Fails waiters and aborts every connection.
    fn handle(&mut self, close: Close, ctx: &mut Context<Self>) -> Self::Result {
        self.shutdown_message(false, close.timeout, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::FrameProtocol;
    use crate::transport::{MemoryConnector, TcpConnector};

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_and_leases_cross_threads() {
        send_sync::<PoolHandle<MemoryConnector, FrameProtocol>>();
        send_sync::<Lease<MemoryConnector, FrameProtocol>>();
        send_sync::<SharedConnection<TcpConnector, FrameProtocol>>();
        send_sync::<PoolError>();
    }
}
