//! The messages a [`Pool`](super::Pool) handles, and the status it reports.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use actix::Message;

use super::group::{Group, Member};
use super::lease::{Lease, SharedConnection};
use crate::protocol::Protocol;
use crate::transport::Connector;
use crate::{Authority, ConfigError, ConnectError, ConnectionId, PoolError};

/// Checks out a connection to `authority` for exclusive use.
///
/// Resolves with a [`Lease`] at once if a connection is idle; otherwise the checkout
/// waits in line (first come, first served) for one to be returned or opened, up to
/// the timeout. Fails with the connect error if the connection opened for it could
/// not connect, at once with [`PoolError::TooManyWaiters`] past `max_waiters`, and
/// with [`PoolError::Down`] while the authority is marked down.
///
/// [`PoolHandle::checkout`](super::PoolHandle::checkout) does the same without a
/// round trip through the actor when a connection is idle.
pub struct Checkout<C: Connector, P: Protocol> {
    /// Where to.
    pub authority: Authority,
    /// How long to wait, or `None` for the pool's `checkout_timeout`.
    pub timeout: Option<Duration>,
    marker: std::marker::PhantomData<fn() -> (C, P)>,
}

impl<C: Connector, P: Protocol> Checkout<C, P> {
    /// A checkout from `authority` with the pool's checkout timeout.
    pub fn new(authority: Authority) -> Self {
        Self {
            authority,
            timeout: None,
            marker: std::marker::PhantomData,
        }
    }

    /// This checkout with its own timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl<C: Connector, P: Protocol> fmt::Debug for Checkout<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkout")
            .field("authority", &self.authority)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<C: Connector, P: Protocol> Message for Checkout<C, P> {
    type Result = Result<Lease<C, P>, PoolError>;
}

/// How a connection for shared use is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Spread {
    /// The one with the fewest calls in flight, ties taken in turn.
    #[default]
    LeastLoaded,
    /// The less loaded of two picked at random ("power of two choices") among every
    /// idle connection of the authority, which all go into shared use: close to the
    /// least loaded, without every picker piling onto the same one between two load
    /// readings (in a burst, loads read zero until the connections have written).
    TwoChoices,
}

/// Gets the least loaded connection to `authority` for shared (multiplexed) use.
///
/// Every handle out counts as load on its connection from the moment it is handed
/// out. The pool wants one connection per `grow_threshold` of shared load (up to
/// `max_size`) and spreads the load in fair shares; a checkout that finds every
/// connection at its share while more are on their way waits for one (within its
/// timeout). Waits like [`Checkout`] when there is no connection yet.
pub struct CheckoutShared<C: Connector, P: Protocol> {
    /// Where to.
    pub authority: Authority,
    /// How long to wait, or `None` for the pool's `checkout_timeout`.
    pub timeout: Option<Duration>,
    marker: std::marker::PhantomData<fn() -> (C, P)>,
}

impl<C: Connector, P: Protocol> CheckoutShared<C, P> {
    /// A shared checkout from `authority` with the pool's checkout timeout.
    pub fn new(authority: Authority) -> Self {
        Self {
            authority,
            timeout: None,
            marker: std::marker::PhantomData,
        }
    }

    /// This checkout with its own timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl<C: Connector, P: Protocol> fmt::Debug for CheckoutShared<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckoutShared")
            .field("authority", &self.authority)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<C: Connector, P: Protocol> Message for CheckoutShared<C, P> {
    type Result = Result<SharedConnection<C, P>, PoolError>;
}

/// Asks for a snapshot of the pool: per authority sizes, waiters and connections,
/// and the pool's counters.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "PoolStatus")]
pub struct GetStatus;

/// Shuts the pool down gently: no new checkouts ([`PoolError::Draining`], also for
/// checkouts already waiting), calls in flight finish, leased connections close when
/// returned, then the pool closes. Resolves when every connection has closed, or at
/// the timeout, when the rest are aborted.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "ShutdownOutcome")]
pub struct Drain {
    /// How long to wait, or `None` for the pool's `shutdown_timeout`.
    pub timeout: Option<Duration>,
}

/// Shuts the pool down now: waiting checkouts fail with [`PoolError::Closed`] at once,
/// every connection is aborted (calls in flight fail with `Aborted`). Resolves when
/// every connection has reported closing, or at the timeout.
///
/// A pool started with [`PoolBuilder::start_supervised`](super::PoolBuilder::start_supervised)
/// restarts afresh after closing, like any supervised actor that stops.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "ShutdownOutcome")]
pub struct Close {
    /// How long to wait, or `None` for the pool's `shutdown_timeout`.
    pub timeout: Option<Duration>,
}

/// How a [`Drain`] or [`Close`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownOutcome {
    /// Every connection closed within the timeout.
    Clean,
    /// The timeout ran out and the connections still open were aborted.
    TimedOut {
        /// How many were aborted.
        aborted: usize,
    },
    /// The pool had already closed (or its actor had stopped).
    AlreadyClosed,
}

/// Changes an authority's `min_idle` and `max_size` at run time. Shrinking closes
/// idle connections above the new size at once and leased ones when returned;
/// growing opens connections up to the new `min_idle`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), ConfigError>")]
#[non_exhaustive]
pub struct Resize {
    /// Which authority (registered if new).
    pub authority: Authority,
    /// The new `min_idle`.
    pub min_idle: usize,
    /// The new `max_size`.
    pub max_size: usize,
}

impl Resize {
    /// Sets `authority`'s `min_idle` and `max_size`.
    pub fn new(authority: Authority, min_idle: usize, max_size: usize) -> Self {
        Self {
            authority,
            min_idle,
            max_size,
        }
    }
}

/// A snapshot of a pool.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolStatus {
    /// Each authority the pool knows, in no particular order.
    pub authorities: Vec<AuthorityStatus>,
    /// Connections open across all authorities.
    pub connections: usize,
    /// The pool's counters since it started.
    pub counters: PoolCounters,
}

impl PoolStatus {
    /// The status of one authority, if the pool knows it.
    pub fn authority(&self, authority: &Authority) -> Option<&AuthorityStatus> {
        self.authorities.iter().find(|a| &a.authority == authority)
    }
}

/// A snapshot of one authority's connections.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthorityStatus {
    /// The authority.
    pub authority: Authority,
    /// Open connections: `idle + leased + busy`.
    pub size: usize,
    /// Connections ready for checkout.
    pub idle: usize,
    /// Connections out on leases.
    pub leased: usize,
    /// Connections held by the pool: being health-checked, drained or closed.
    pub busy: usize,
    /// Connect attempts scheduled or under way.
    pub connecting: usize,
    /// Checkouts waiting in line.
    pub waiters: usize,
    /// The current `min_idle`.
    pub min_idle: usize,
    /// The current `max_size`.
    pub max_size: usize,
    /// Whether the authority is marked down (failure accrual).
    pub down: bool,
    /// Consecutive connect failures.
    pub consecutive_failures: u32,
    /// The last connect error, until a connect succeeds.
    pub last_connect_error: Option<ConnectError>,
    /// Checkout counters.
    pub checkouts: CheckoutStats,
    /// Each open connection.
    pub connections: Vec<MemberStatus>,
}

/// Checkout counters of one authority.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct CheckoutStats {
    /// Checkouts served at once from an idle connection.
    pub direct: u64,
    /// Checkouts served after waiting in line.
    pub waited: u64,
    /// Total time served checkouts waited.
    pub wait_time: Duration,
    /// Checkouts that timed out in line.
    pub timed_out: u64,
    /// Checkouts refused at once (too many waiters, down, draining, closed).
    pub refused: u64,
    /// Checkouts that failed while waiting (a failed connect, shutdown).
    pub failed: u64,
    /// Shared handles given out.
    pub shared: u64,
    /// Connections that failed their test on checkout.
    pub tests_failed: u64,
}

impl CheckoutStats {
    /// Adds another authority's counters to these.
    pub(crate) fn add(&mut self, other: &Self) {
        self.direct += other.direct;
        self.waited += other.waited;
        self.wait_time += other.wait_time;
        self.timed_out += other.timed_out;
        self.refused += other.refused;
        self.failed += other.failed;
        self.shared += other.shared;
        self.tests_failed += other.tests_failed;
    }
}

/// Where a pooled connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberState {
    /// Ready for checkout.
    Idle,
    /// Out on a lease.
    Leased,
    /// Held by the pool: being checked, drained or closed.
    Busy,
}

/// A snapshot of one pooled connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemberStatus {
    /// The connection.
    pub id: ConnectionId,
    /// Where it is.
    pub state: MemberState,
    /// Calls awaiting replies.
    pub in_flight: usize,
    /// The last heartbeat round trip, if one completed.
    pub rtt: Option<Duration>,
    /// How long it has been open.
    pub age: Duration,
}

/// A pool's counters since it started.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PoolCounters {
    /// Connections opened.
    pub created: u64,
    /// Connect attempts that failed.
    pub connect_failures: u64,
    /// Connections closed, by [`CloseReason::kind`](crate::CloseReason::kind).
    pub closed: BTreeMap<&'static str, u64>,
    /// Connections closed because a health check or test on checkout failed.
    pub health_check_failures: u64,
    /// Connections closed because their borrower discarded them ([`Lease::discard`]).
    pub discarded: u64,
    /// Connections closed for being idle past `idle_timeout`.
    pub idle_expired: u64,
    /// Connections closed for reaching `max_lifetime`.
    pub lifetime_expired: u64,
    /// Idle connections closed to make room for another authority under
    /// `max_connections`.
    pub evicted: u64,
    /// Leases returned with calls in flight (held back to drain).
    pub returned_in_flight: u64,
    /// Of those, connections closed because draining took too long.
    pub drain_timeouts: u64,
    /// Times an authority was marked down.
    pub marked_down: u64,
    /// Checkout counters summed over authorities.
    pub checkouts: CheckoutStats,
}

/// A group wants connections (sent by checkouts that had to wait).
pub(crate) struct Demand<C: Connector, P: Protocol> {
    pub(crate) group: Arc<Group<C, P>>,
}

impl<C: Connector, P: Protocol> Message for Demand<C, P> {
    type Result = ();
}

/// Why a lease's connection went to the actor instead of back to the idle stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReturnedBecause {
    /// Calls are still in flight: wait for them, within `return_drain_timeout`.
    InFlight,
    /// Close it gracefully (expired, not reused, pool shrinking or shutting down).
    Retire,
    /// Abort it: its borrower discarded it.
    Discard,
    /// Abort it: it failed its test on checkout.
    FailedTest,
}

/// A lease's connection handed to the actor.
pub(crate) struct Returned<C: Connector, P: Protocol> {
    pub(crate) group: Arc<Group<C, P>>,
    pub(crate) member: Arc<Member<C, P>>,
    pub(crate) because: ReturnedBecause,
}

impl<C: Connector, P: Protocol> Message for Returned<C, P> {
    type Result = ();
}

/// A lease's connection was detached: the pool forgets it.
pub(crate) struct Detached {
    pub(crate) id: ConnectionId,
}

impl Message for Detached {
    type Result = ();
}

/// Finds or creates the group of an authority (for handles meeting it first).
pub(crate) struct Register<C: Connector, P: Protocol> {
    pub(crate) authority: Authority,
    pub(crate) marker: std::marker::PhantomData<fn() -> (C, P)>,
}

impl<C: Connector, P: Protocol> Message for Register<C, P> {
    type Result = Result<Arc<Group<C, P>>, PoolError>;
}

/// Resolves once the authority has `min_idle` connections, or with the first connect
/// error (an eager `build`).
pub(crate) struct AwaitReady {
    pub(crate) authority: Authority,
}

impl Message for AwaitReady {
    type Result = Result<(), PoolError>;
}
