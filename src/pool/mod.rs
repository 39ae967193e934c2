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

mod config;
mod group;
mod handle;
mod lease;
mod messages;

use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, MessageResult,
    Recipient, ResponseFuture, SpawnHandle, Supervised, WrapFuture,
};
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use config::{PoolConfig, PoolConfigBuilder};
pub use handle::{PoolBuilder, PoolHandle};
pub use lease::{Lease, SharedConnection};
pub use messages::{
    AuthorityStatus, Checkout, CheckoutShared, CheckoutStats, Close, Drain, GetStatus, MemberState,
    MemberStatus, PoolCounters, PoolStatus, Resize,
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
use messages::{AwaitReady, Demand, Register, Returned, ReturnedBecause};

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
pub struct Pool<C: Connector, P: Protocol> {
    connector: Rc<C>,
    protocol: P,
    config: Arc<PoolConfig>,
    connection: ConnectionConfig,
    pushes: Option<Recipient<Pushed<P>>>,
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
    shutdown: Option<Shutdown>,
    counters: PoolCounters,
    span: tracing::Span,
}

/// A connection the actor knows, with what its events told.
struct Tracked<C: Connector, P: Protocol> {
    member: Arc<Member<C, P>>,
    group: Arc<Group<C, P>>,
    rtt: Option<Duration>,
}

/// A connection the actor holds out of circulation for a while.
struct Held<C: Connector, P: Protocol> {
    member: Arc<Member<C, P>>,
    group: Arc<Group<C, P>>,
    /// For a drain: when to give up. For a check: since when it was idle.
    at: Instant,
}

struct Shutdown {
    waiters: Vec<oneshot::Sender<()>>,
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
            shutdown: None,
            counters: PoolCounters::default(),
            span: tracing::debug_span!("pool"),
        }
    }

    fn refuse(&self) -> Result<(), PoolError> {
        match self.phase {
            Phase::Open => Ok(()),
            Phase::Draining => Err(PoolError::Draining),
            Phase::Closed => Err(PoolError::Closed),
        }
    }

    /// The group of `authority`, created (and filled to `min_idle`) if new.
    fn group_for(&mut self, authority: &Authority, ctx: &mut Context<Self>) -> Arc<Group<C, P>> {
        if let Some(group) = self.registry.get(authority) {
            return group;
        }
        let group = Arc::new(Group::new(
            authority.clone(),
            self.config.clone(),
            self.addr.clone(),
            self.config.min_idle,
            self.config.max_size,
        ));
        self.registry.insert(group.clone());
        tracing::debug!(parent: &self.span, %authority, "authority registered");
        self.replenish(&group, Duration::ZERO, ctx);
        group
    }

    /// Connections open or opening across all authorities.
    fn total_open(&self) -> usize {
        self.registry
            .all()
            .iter()
            .map(|group| {
                let state = group.lock();
                state.members + state.connecting
            })
            .sum()
    }

    /// Opens what `group` wants, within its `max_size` and the pool's
    /// `max_connections`, after `delay` (or the backoff, after failures).
    fn replenish(&mut self, group: &Arc<Group<C, P>>, delay: Duration, ctx: &mut Context<Self>) {
        let global_room = self
            .config
            .max_connections
            .saturating_sub(self.total_open());
        let mut state = group.lock();
        state.demand_signalled = false;
        let count = state.wanted().min(state.room()).min(global_room);
        if count == 0 {
            return;
        }
        state.grow_wanted = false;
        let delay = if state.failures > 0 {
            self.backoff(state.failures)
        } else {
            delay
        };
        state.connecting += count;
        drop(state);
        for _ in 0..count {
            self.open(group.clone(), delay, ctx);
        }
    }

    fn replenish_all(&mut self, ctx: &mut Context<Self>) {
        for group in self.registry.all() {
            self.replenish(&group, Duration::ZERO, ctx);
        }
    }

    /// The delay before the next connect after `failures` failures in a row:
    /// exponential from `backoff_base`, capped at `backoff_max`, jittered.
    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let delay = self
            .config
            .backoff_base
            .saturating_mul(1 << doublings)
            .min(self.config.backoff_max);
        jitter(delay)
    }

    /// Starts one connect attempt (already counted in `connecting`).
    fn open(&mut self, group: Arc<Group<C, P>>, delay: Duration, ctx: &mut Context<Self>) {
        let connector = self.connector.clone();
        let authority = group.authority.clone();
        let timeout = self.config.connect_timeout;
        let attempt = async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match tokio::time::timeout(timeout, connector.connect(&authority)).await {
                Ok(result) => result,
                Err(_) => Err(ConnectError::Timeout {
                    authority,
                    after: timeout,
                }),
            }
        };
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(move |result, pool, ctx| pool.on_connect(group, result, ctx)),
        );
    }

    fn on_connect(
        &mut self,
        group: Arc<Group<C, P>>,
        result: Result<C::Io, ConnectError>,
        ctx: &mut Context<Self>,
    ) {
        match result {
            Ok(io) => self.on_connected(group, io, ctx),
            Err(error) => self.on_connect_failed(group, error, ctx),
        }
    }

    fn on_connected(&mut self, group: Arc<Group<C, P>>, io: C::Io, ctx: &mut Context<Self>) {
        if group.lock().phase != Phase::Open {
            group.lock().connecting -= 1;
            // Shutting down: the transport closes as it drops.
            return;
        }
        let now = Instant::now();
        let id = ConnectionId::next();
        let gauge = InFlightGauge::default();
        let mut builder = Connection::builder(io, self.protocol.clone())
            .config(self.connection.clone())
            .peer(group.authority.to_string())
            .events(ctx.address().recipient())
            .gauge(gauge.clone())
            .id(id);
        if let Some(pushes) = &self.pushes {
            builder = builder.pushes(pushes.clone());
        }
        let addr = match &mut self.placement {
            Some(place) => place(builder),
            None => builder.start(),
        };
        let expires = self.config.max_lifetime.map(|lifetime| {
            // Up to a tenth shorter, so a pool opened at once does not expire at once.
            later(
                now,
                lifetime.saturating_sub(lifetime.mul_f64(fastrand::f64() / 10.0)),
            )
        });
        let member = Arc::new(Member::new(id, addr, gauge, now, expires));
        self.tracked.insert(
            id,
            Tracked {
                member: member.clone(),
                group: group.clone(),
                rtt: None,
            },
        );
        self.counters.created += 1;
        tracing::debug!(parent: &self.span, authority = %group.authority, %id, "connected");

        let mut state = group.lock();
        state.connecting -= 1;
        state.members += 1;
        if state.down {
            tracing::info!(parent: &self.span, authority = %group.authority, "authority up again");
        }
        state.failures = 0;
        state.down = false;
        state.last_connect_error = None;
        state.replacing = state.replacing.saturating_sub(1);
        let unwanted = group.offer(&mut state, member, now, now);
        drop(state);
        if let Some(member) = unwanted {
            self.retire(&group, &member, true);
        }
        // A replacement for an expired member may let it go now.
        self.maintain_group(&group, now, ctx);
        self.answer_ready(&group.authority);
        self.replenish(&group, Duration::ZERO, ctx);
    }

    fn on_connect_failed(
        &mut self,
        group: Arc<Group<C, P>>,
        error: ConnectError,
        ctx: &mut Context<Self>,
    ) {
        self.counters.connect_failures += 1;
        let mut state = group.lock();
        state.connecting -= 1;
        state.failures = state.failures.saturating_add(1);
        state.last_connect_error = Some(error.clone());
        let failures = state.failures;
        tracing::debug!(parent: &self.span, authority = %group.authority, failures, %error, "connect failed");
        if !state.down && failures >= self.config.failure_threshold {
            state.down = true;
            self.counters.marked_down += 1;
            tracing::warn!(parent: &self.span, authority = %group.authority, failures, %error, "authority marked down");
            state.fail_waiters(&PoolError::Down {
                authority: group.authority.clone(),
                failures,
                error: error.clone(),
            });
        } else if !state.down && state.waiting_demand() > state.connecting {
            // This attempt was the one the longest waiter was waiting for.
            state.fail_front_waiter(PoolError::Connect(error.clone()));
        }
        let probe = state.down && state.connecting == 0 && state.phase == Phase::Open;
        if probe {
            state.connecting += 1;
        }
        drop(state);
        self.fail_ready(&group.authority, &error);
        if probe {
            let delay = self.backoff(failures);
            self.open(group, delay, ctx);
        } else {
            self.replenish(&group, Duration::ZERO, ctx);
        }
    }

    /// Closes a member held by the actor (`Busy`): gracefully (calls in flight get
    /// their replies) or at once.
    fn retire(&mut self, group: &Group<C, P>, member: &Member<C, P>, graceful: bool) {
        group.lock().mark_retiring(member);
        // `do_send` loses nothing here: a connection whose mailbox is closed has
        // stopped, and its `Closed` event counts it out just the same.
        if graceful {
            member.addr.do_send(crate::Close::default());
        } else {
            member.addr.do_send(Abort);
        }
    }

    /// Reaps idle and expired members of one group, starts health checks, and asks
    /// for replacements.
    fn maintain_group(&mut self, group: &Arc<Group<C, P>>, now: Instant, ctx: &mut Context<Self>) {
        let config = self.config.clone();
        let mut idle_expired = Vec::new();
        let mut lifetime_expired = Vec::new();
        let mut to_check = Vec::new();
        {
            let mut state = group.lock();
            if state.phase != Phase::Open {
                return;
            }
            let mut expired_at_min = 0;
            let mut at = 0;
            // Oldest first: the bottom of the stack has been idle longest.
            while at < state.idle.len() {
                let above_min = state.members - state.retiring > state.min_idle;
                let idle = &state.idle[at];
                let idle_for_too_long = config
                    .idle_timeout
                    .is_some_and(|t| later(idle.since, t) <= now);
                let expired = idle.member.expires.is_some_and(|e| e <= now);
                let check_due = config
                    .health_check_interval
                    .is_some_and(|i| later(idle.checked, i) <= now);
                if above_min && idle_for_too_long {
                    let idle = state.take_idle(at);
                    state.mark_retiring(&idle.member);
                    idle_expired.push(idle.member);
                } else if above_min && expired {
                    let idle = state.take_idle(at);
                    state.mark_retiring(&idle.member);
                    lifetime_expired.push(idle.member);
                } else if check_due {
                    if expired {
                        expired_at_min += 1;
                    }
                    to_check.push(state.take_idle(at));
                } else {
                    if expired {
                        expired_at_min += 1;
                    }
                    at += 1;
                }
            }
            // Expired members at `min_idle` stay in service until their replacements
            // connect; then they are above the minimum and go.
            state.replacing = expired_at_min;
        }
        for member in &idle_expired {
            self.counters.idle_expired += 1;
            member.addr.do_send(crate::Close::default());
        }
        for member in &lifetime_expired {
            self.counters.lifetime_expired += 1;
            member.addr.do_send(crate::Close::default());
        }
        for idle in to_check {
            self.check(group.clone(), idle.member, idle.since, ctx);
        }
        self.replenish(group, Duration::ZERO, ctx);
    }

    fn maintain(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        for group in self.registry.all() {
            self.maintain_group(&group, now, ctx);
        }
    }

    /// Pings a member taken out of the idle stack; back it goes if it answers.
    fn check(
        &mut self,
        group: Arc<Group<C, P>>,
        member: Arc<Member<C, P>>,
        idle_since: Instant,
        ctx: &mut Context<Self>,
    ) {
        let id = member.id;
        let ping = member.addr.send(Ping);
        let timeout = self.config.health_check_timeout;
        self.checks.insert(
            id,
            Held {
                member,
                group,
                at: idle_since,
            },
        );
        let answered =
            async move { matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(Ok(_)))) };
        ctx.spawn(
            answered
                .into_actor(self)
                .map(move |alive, pool, _| pool.on_checked(id, alive)),
        );
    }

    fn on_checked(&mut self, id: ConnectionId, alive: bool) {
        // Gone if the connection closed meanwhile, or the pool restarted.
        let Some(held) = self.checks.remove(&id) else {
            return;
        };
        if !alive {
            self.counters.health_check_failures += 1;
            tracing::debug!(parent: &self.span, %id, "health check failed");
            self.retire(&held.group, &held.member, false);
            return;
        }
        self.put_back(held.group, held.member, held.at);
    }

    /// Returns a `Busy` member to circulation, or closes it if nobody may have it.
    fn put_back(&mut self, group: Arc<Group<C, P>>, member: Arc<Member<C, P>>, since: Instant) {
        let mut state = group.lock();
        if member.place() != Place::Busy {
            return;
        }
        state.busy -= 1;
        let unwanted = group.offer(&mut state, member, since, Instant::now());
        if let Some(member) = &unwanted {
            state.make_busy(member);
        }
        drop(state);
        if let Some(member) = unwanted {
            self.retire(&group, &member, true);
        }
    }

    /// Looks at leases returned with calls in flight.
    fn poll_draining(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        for held in std::mem::take(&mut self.draining) {
            if held.member.place() == Place::Gone {
                continue;
            } else if held.member.gauge.get() == 0 {
                self.put_back(held.group, held.member, now);
            } else if now >= held.at {
                self.counters.drain_timeouts += 1;
                tracing::debug!(parent: &self.span, id = %held.member.id, "returned connection did not go quiet; closing it");
                self.retire(&held.group, &held.member, false);
            } else {
                self.draining.push(held);
            }
        }
        if self.draining.is_empty() {
            if let Some(tick) = self.drain_tick.take() {
                ctx.cancel_future(tick);
            }
        }
    }

    fn arm_drain_tick(&mut self, ctx: &mut Context<Self>) {
        if self.drain_tick.is_none() && !self.draining.is_empty() {
            self.drain_tick =
                Some(ctx.run_interval(DRAIN_POLL, |pool, ctx| pool.poll_draining(ctx)));
        }
    }

    fn on_closed(&mut self, id: ConnectionId, reason: crate::CloseReason, ctx: &mut Context<Self>) {
        let Some(tracked) = self.tracked.remove(&id) else {
            return;
        };
        *self.counters.closed.entry(reason.kind()).or_default() += 1;
        tracked.group.lock().forget(&tracked.member);
        self.checks.remove(&id);
        self.draining.retain(|held| held.member.id != id);
        tracing::debug!(parent: &self.span, authority = %tracked.group.authority, %id, %reason, "connection closed");
        // A connection that failed is replaced after a jittered pause, so a pool
        // whose server restarted does not reconnect all at once.
        let delay = if reason.is_requested() {
            Duration::ZERO
        } else {
            jitter(self.config.backoff_base)
        };
        self.replenish(&tracked.group, delay, ctx);
        self.replenish_all(ctx);
        self.check_shutdown(ctx);
    }

    fn answer_ready(&mut self, authority: &Authority) {
        let Some(group) = self.registry.get(authority) else {
            return;
        };
        let ready = {
            let state = group.lock();
            state.members - state.retiring >= state.min_idle
        };
        if ready {
            for (_, tx) in extract(&mut self.ready, |(a, _)| a == authority) {
                let _ = tx.send(Ok(()));
            }
        }
    }

    fn fail_ready(&mut self, authority: &Authority, error: &ConnectError) {
        for (_, tx) in extract(&mut self.ready, |(a, _)| a == authority) {
            let _ = tx.send(Err(PoolError::Connect(error.clone())));
        }
    }

    /// Stops taking checkouts and closes every connection, gracefully or at once.
    fn begin_shutdown(
        &mut self,
        graceful: bool,
        timeout: Option<Duration>,
        ctx: &mut Context<Self>,
    ) {
        let (phase, error) = if graceful {
            (Phase::Draining, PoolError::Draining)
        } else {
            (Phase::Closed, PoolError::Closed)
        };
        if self.phase == Phase::Closed || (self.phase == Phase::Draining && graceful) {
            return;
        }
        self.phase = phase;
        tracing::debug!(parent: &self.span, graceful, "pool shutting down");
        for (_, tx) in self.ready.drain(..) {
            let _ = tx.send(Err(error.clone()));
        }
        let mut to_close = Vec::new();
        for group in self.registry.all() {
            let mut state = group.lock();
            state.phase = phase;
            state.fail_waiters(&error);
            while !state.idle.is_empty() {
                let idle = state.take_idle(0);
                to_close.push((group.clone(), idle.member));
            }
        }
        for (group, member) in &to_close {
            self.retire(group, member, graceful);
        }
        if !graceful {
            // Leased and busy connections too: calls in flight fail with `Aborted`.
            for tracked in self.tracked.values() {
                if tracked.member.place() != Place::Detached {
                    tracked.member.addr.do_send(Abort);
                }
            }
        }
        let timeout = timeout.unwrap_or(self.config.shutdown_timeout);
        ctx.run_later(timeout, |pool, ctx| {
            if pool.shutdown.is_some() {
                tracing::debug!(parent: &pool.span, "shutdown timed out; aborting the rest");
                for tracked in pool.tracked.values() {
                    tracked.member.addr.do_send(Abort);
                }
                pool.finish_shutdown(ctx);
            }
        });
    }

    /// Whether every pooled connection has closed.
    fn is_empty(&self) -> bool {
        self.tracked
            .values()
            .all(|tracked| tracked.member.place() == Place::Detached)
    }

    fn check_shutdown(&mut self, ctx: &mut Context<Self>) {
        if self.shutdown.is_some() && self.is_empty() {
            self.finish_shutdown(ctx);
        }
    }

    fn finish_shutdown(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Closed;
        for group in self.registry.all() {
            let mut state = group.lock();
            state.phase = Phase::Closed;
            state.fail_waiters(&PoolError::Closed);
        }
        if let Some(shutdown) = self.shutdown.take() {
            for waiter in shutdown.waiters {
                let _ = waiter.send(());
            }
        }
        tracing::debug!(parent: &self.span, "pool closed");
        ctx.stop();
    }

    fn shutdown_message(
        &mut self,
        graceful: bool,
        timeout: Option<Duration>,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<()> {
        let (tx, rx) = oneshot::channel();
        if self.phase == Phase::Closed && self.shutdown.is_none() {
            return Box::pin(async {});
        }
        self.shutdown
            .get_or_insert_with(|| Shutdown {
                waiters: Vec::new(),
            })
            .waiters
            .push(tx);
        self.begin_shutdown(graceful, timeout, ctx);
        self.check_shutdown(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }

    fn status(&self) -> PoolStatus {
        let now = Instant::now();
        let mut authorities = Vec::new();
        let mut connections = 0;
        let mut counters = self.counters.clone();
        for group in self.registry.all() {
            let state = group.lock();
            let c = state.counters;
            let sum = &mut counters.checkouts;
            sum.direct += c.direct;
            sum.waited += c.waited;
            sum.wait_time += c.wait_time;
            sum.timed_out += c.timed_out;
            sum.refused += c.refused;
            sum.failed += c.failed;
            sum.shared += c.shared;
            sum.tests_failed += c.tests_failed;
            connections += state.members;
            let members = self
                .tracked
                .values()
                .filter(|tracked| Arc::ptr_eq(&tracked.group, &group))
                .filter_map(|tracked| {
                    let state = match tracked.member.place() {
                        Place::Idle => MemberState::Idle,
                        Place::Leased => MemberState::Leased,
                        Place::Busy => MemberState::Busy,
                        Place::Gone | Place::Detached => return None,
                    };
                    Some(MemberStatus {
                        id: tracked.member.id,
                        state,
                        in_flight: tracked.member.gauge.get(),
                        rtt: tracked.rtt,
                        age: now - tracked.member.created,
                    })
                })
                .collect();
            authorities.push(AuthorityStatus {
                authority: group.authority.clone(),
                size: state.members,
                idle: state.idle.len(),
                leased: state.leased,
                busy: state.busy,
                connecting: state.connecting,
                waiters: state.waiters(),
                min_idle: state.min_idle,
                max_size: state.max_size,
                down: state.down,
                consecutive_failures: state.failures,
                last_connect_error: state.last_connect_error.clone(),
                checkouts: CheckoutStats {
                    direct: c.direct,
                    waited: c.waited,
                    wait_time: c.wait_time,
                    timed_out: c.timed_out,
                    refused: c.refused,
                    failed: c.failed,
                    shared: c.shared,
                    tests_failed: c.tests_failed,
                },
                connections: members,
            });
        }
        PoolStatus {
            authorities,
            connections,
            counters,
        }
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
        ctx.run_interval(self.config.maintenance_interval, |pool, ctx| {
            pool.maintain(ctx)
        });
        for authority in self.initial.clone() {
            self.group_for(&authority, ctx);
        }
        self.replenish_all(ctx);
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
    }
}

impl<C: Connector, P: Protocol> Supervised for Pool<C, P> {
    /// Starts afresh: open again, connects that were under way forgotten (their
    /// futures died with the old context), health checks in progress put back.
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::info!(parent: &self.span, "pool restarting");
        self.phase = Phase::Open;
        self.drain_tick = None;
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

impl<C: Connector, P: Protocol> Handler<Checkout<C, P>> for Pool<C, P> {
    type Result = ResponseFuture<Result<Lease<C, P>, PoolError>>;

    /// Checks out a connection (waiting in line if none is idle).
    fn handle(&mut self, checkout: Checkout<C, P>, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(error) = self.refuse() {
            return Box::pin(async move { Err(error) });
        }
        let group = self.group_for(&checkout.authority, ctx);
        Box::pin(async move { group.checkout(checkout.timeout).await })
    }
}

impl<C: Connector, P: Protocol> Handler<CheckoutShared<C, P>> for Pool<C, P> {
    type Result = ResponseFuture<Result<SharedConnection<C, P>, PoolError>>;

    /// Hands out the least loaded connection for shared use.
    fn handle(&mut self, checkout: CheckoutShared<C, P>, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(error) = self.refuse() {
            return Box::pin(async move { Err(error) });
        }
        let group = self.group_for(&checkout.authority, ctx);
        Box::pin(async move { group.shared(checkout.timeout).await })
    }
}

impl<C: Connector, P: Protocol> Handler<Register<C, P>> for Pool<C, P> {
    type Result = Result<Arc<Group<C, P>>, PoolError>;

    /// Finds or creates an authority's group for a handle.
    fn handle(&mut self, register: Register<C, P>, ctx: &mut Context<Self>) -> Self::Result {
        self.refuse()?;
        Ok(self.group_for(&register.authority, ctx))
    }
}

impl<C: Connector, P: Protocol> Handler<AwaitReady> for Pool<C, P> {
    type Result = ResponseFuture<Result<(), PoolError>>;

    /// Resolves once the authority has `min_idle` connections, or with a connect error.
    fn handle(&mut self, ready: AwaitReady, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(error) = self.refuse() {
            return Box::pin(async move { Err(error) });
        }
        let (tx, rx) = oneshot::channel();
        self.ready.push((ready.authority.clone(), tx));
        self.group_for(&ready.authority, ctx);
        self.answer_ready(&ready.authority);
        Box::pin(async move { rx.await.unwrap_or(Err(PoolError::Closed)) })
    }
}

impl<C: Connector, P: Protocol> Handler<Demand<C, P>> for Pool<C, P> {
    type Result = ();

    /// Opens connections for checkouts that are waiting.
    fn handle(&mut self, demand: Demand<C, P>, ctx: &mut Context<Self>) {
        self.replenish(&demand.group, Duration::ZERO, ctx);
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
                self.counters.health_check_failures += 1;
                self.retire(&group, &member, false);
            }
        }
    }
}

impl<C: Connector, P: Protocol> Handler<ConnectionEvent> for Pool<C, P> {
    type Result = ();

    /// Learns round trips, and counts out and replaces connections that closed.
    fn handle(&mut self, event: ConnectionEvent, ctx: &mut Context<Self>) {
        match event {
            ConnectionEvent::Rtt { id, rtt } => {
                if let Some(tracked) = self.tracked.get_mut(&id) {
                    tracked.rtt = Some(rtt);
                }
            }
            ConnectionEvent::Closed { id, reason } => self.on_closed(id, reason, ctx),
            _ => {}
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
    fn handle(&mut self, resize: Resize, ctx: &mut Context<Self>) -> Self::Result {
        PoolConfig::check_sizes(resize.min_idle, resize.max_size)?;
        let group = self.group_for(&resize.authority, ctx);
        let mut surplus = Vec::new();
        {
            let mut state = group.lock();
            state.min_idle = resize.min_idle;
            state.max_size = resize.max_size;
            while state.members - state.retiring > state.max_size && !state.idle.is_empty() {
                let idle = state.take_idle(0);
                state.mark_retiring(&idle.member);
                surplus.push(idle.member);
            }
        }
        for member in surplus {
            member.addr.do_send(crate::Close::default());
        }
        self.replenish(&group, Duration::ZERO, ctx);
        Ok(())
    }
}

impl<C: Connector, P: Protocol> Handler<Drain> for Pool<C, P> {
    type Result = ResponseFuture<()>;

    /// Takes no new checkouts, lets calls in flight finish, then closes.
    fn handle(&mut self, drain: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.shutdown_message(true, drain.timeout, ctx)
    }
}

impl<C: Connector, P: Protocol> Handler<Close> for Pool<C, P> {
    type Result = ResponseFuture<()>;

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
