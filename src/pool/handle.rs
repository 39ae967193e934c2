//! [`PoolBuilder`] (how a Pool starts) and [`PoolHandle`] (how it is used).

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use actix::{Actor, Addr, ArbiterHandle, AsyncContext, Recipient, Supervisor};
use rustc_hash::FxHashMap;

use super::group::Group;
use super::lease::{Lease, SharedConnection};
use super::messages::{
    AwaitReady, Close, Drain, GetStatus, PoolStatus, Register, Resize, ShutdownOutcome,
};
use super::Spread;
use super::{Placement, Pool, PoolConfig};
use crate::protocol::Protocol;
use crate::transport::Connector;
use crate::{
    Authority, ConfigError, Connection, ConnectionConfig, ConnectionEvent, PoolError, Pushed,
};

/// The groups of a pool by authority, readable by handles without the actor.
pub(crate) struct Registry<C: Connector, P: Protocol> {
    groups: RwLock<FxHashMap<Authority, Arc<Group<C, P>>>>,
}

impl<C: Connector, P: Protocol> Registry<C, P> {
    pub(crate) fn new() -> Self {
        Self {
            groups: RwLock::new(FxHashMap::default()),
        }
    }

    pub(crate) fn get(&self, authority: &Authority) -> Option<Arc<Group<C, P>>> {
        let groups = self.groups.read().unwrap_or_else(PoisonError::into_inner);
        groups.get(authority).cloned()
    }

    pub(crate) fn insert(&self, group: Arc<Group<C, P>>) {
        let mut groups = self.groups.write().unwrap_or_else(PoisonError::into_inner);
        groups.insert(group.authority.clone(), group);
    }

    pub(crate) fn all(&self) -> Vec<Arc<Group<C, P>>> {
        let groups = self.groups.read().unwrap_or_else(PoisonError::into_inner);
        groups.values().cloned().collect()
    }
}

/// Sets up a [`Pool`]; see [`Pool::builder`].
#[must_use]
pub struct PoolBuilder<C: Connector, P: Protocol> {
    pub(crate) connector: C,
    pub(crate) protocol: P,
    pub(crate) config: PoolConfig,
    pub(crate) connection: ConnectionConfig,
    pub(crate) pushes: Option<Recipient<Pushed<P>>>,
    pub(crate) events: Option<Recipient<ConnectionEvent>>,
    pub(crate) placement: Option<Placement<C, P>>,
    pub(crate) authorities: Vec<Authority>,
}

impl<C: Connector, P: Protocol> fmt::Debug for PoolBuilder<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("config", &self.config)
            .field("connection", &self.connection)
            .field("authorities", &self.authorities)
            .finish_non_exhaustive()
    }
}

impl<C: Connector, P: Protocol> PoolBuilder<C, P> {
    /// Capacity, waiting, health and restart settings. Defaults to
    /// [`PoolConfig::default`].
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// The settings of every connection the pool opens. Defaults to
    /// [`ConnectionConfig::default`].
    pub fn connection(mut self, config: ConnectionConfig) -> Self {
        self.connection = config;
        self
    }

    /// Who receives the pushes of every pooled connection (see
    /// [`ConnectionBuilder::pushes`](crate::ConnectionBuilder::pushes)). Defaults to
    /// nobody.
    pub fn pushes(mut self, recipient: Recipient<Pushed<P>>) -> Self {
        self.pushes = Some(recipient);
        self
    }

    /// Who hears about the life of every pooled connection: its
    /// [`ConnectionEvent::Connected`], [`ConnectionEvent::Closing`] and
    /// [`ConnectionEvent::Closed`], forwarded by the pool after it handled them (a
    /// [`Broker`](crate::Broker) uses them to move its work off closing
    /// connections). Defaults to nobody.
    pub fn events(mut self, recipient: Recipient<ConnectionEvent>) -> Self {
        self.events = Some(recipient);
        self
    }

    /// Registers an authority up front, so its `min_idle` connections open when the
    /// pool starts (and [`build`](Self::build) waits for them). Authorities not
    /// registered are added on their first checkout.
    pub fn authority(mut self, authority: Authority) -> Self {
        self.authorities.push(authority);
        self
    }

    /// Starts the pool in the current arbiter without waiting for connections (lazy
    /// start: registered authorities fill up to `min_idle` in the background).
    ///
    /// The pool runs until [`Close`] or [`Drain`] completes (or its arbiter stops),
    /// also when every handle is dropped: its connections hold its address.
    pub fn start(self) -> PoolHandle<C, P> {
        let registry = Arc::new(Registry::new());
        let shared = registry.clone();
        let pool = Pool::create(move |ctx| Pool::new(self, shared, ctx.address()));
        PoolHandle { pool, registry }
    }

    /// Starts the pool under an [`actix::Supervisor`]: if it stops (after a
    /// [`Close`], say) it restarts afresh with the same address and counters, and
    /// opens its authorities again. Such a pool stops for good only with its
    /// arbiter or system.
    pub fn start_supervised(self) -> PoolHandle<C, P> {
        let registry = Arc::new(Registry::new());
        let shared = registry.clone();
        let pool = Supervisor::start(move |ctx: &mut actix::Context<Pool<C, P>>| {
            Pool::new(self, shared, ctx.address())
        });
        PoolHandle { pool, registry }
    }

    /// Starts the pool and waits until every registered authority has `min_idle`
    /// connections (eager start). Fails with the first connect error, or with
    /// [`PoolError::Timeout`] if an authority is not filled within `checkout_timeout`
    /// or `connect_timeout`, whichever is longer (the global cap leaves no room,
    /// say), after closing the pool.
    pub async fn build(self) -> Result<PoolHandle<C, P>, PoolError> {
        let authorities = self.authorities.clone();
        // A failed connect is reported within `connect_timeout`; an authority that
        // cannot fill up must not hang the start either.
        let bound = self
            .config
            .checkout_timeout
            .max(self.config.connect_timeout);
        let handle = self.start();
        for authority in authorities {
            let ready = handle.pool.send(AwaitReady {
                authority: authority.clone(),
            });
            let ready = match tokio::time::timeout(bound, ready).await {
                Ok(ready) => ready.unwrap_or(Err(PoolError::Closed)),
                Err(_) => Err(PoolError::Timeout {
                    authority,
                    waited: bound,
                    last_connect_error: None,
                }),
            };
            match ready {
                Ok(()) => {}
                Err(error) => {
                    handle.close().await;
                    return Err(error);
                }
            }
        }
        Ok(handle)
    }
}

impl<C, P> PoolBuilder<C, P>
where
    C: Connector,
    C::Io: Send,
    P: Protocol + Send,
{
    /// Starts connections on these arbiters in turn instead of the pool's own, so a
    /// pool can use every core. An empty list keeps them on the pool's arbiter, the
    /// default.
    pub fn arbiters(mut self, arbiters: Vec<ArbiterHandle>) -> Self {
        if arbiters.is_empty() {
            self.placement = None;
            return self;
        }
        let mut next = 0;
        self.placement = Some(Box::new(move |builder| {
            let arbiter = &arbiters[next % arbiters.len()];
            next = next.wrapping_add(1);
            Connection::start_in_arbiter(arbiter, move |_| builder.build())
        }));
        self
    }
}

/// How to use a [`Pool`]: check out connections, look at its status, resize it and
/// shut it down. Cheap to clone, `Send` and `Sync`.
///
/// A checkout that finds an idle connection takes it straight from the pool's shared
/// state, without a round trip through the actor; only checkouts that must wait
/// involve the actor (to open connections). The same operations are available as
/// messages to [`PoolHandle::addr`] for actors that hold only the address.
///
/// Its futures may run on any Tokio runtime (an actix arbiter, or a multi-threaded
/// Tokio runtime beside the actix system): waiting uses Tokio's timers.
pub struct PoolHandle<C: Connector, P: Protocol> {
    pool: Addr<Pool<C, P>>,
    registry: Arc<Registry<C, P>>,
}

impl<C: Connector, P: Protocol> PoolHandle<C, P> {
    /// The pool actor's address, for sending it messages.
    pub fn addr(&self) -> &Addr<Pool<C, P>> {
        &self.pool
    }

    async fn group(&self, authority: &Authority) -> Result<Arc<Group<C, P>>, PoolError> {
        if let Some(group) = self.registry.get(authority) {
            return Ok(group);
        }
        let register = Register {
            authority: authority.clone(),
            marker: std::marker::PhantomData,
        };
        self.pool
            .send(register)
            .await
            .unwrap_or(Err(PoolError::Closed))
    }

    /// Checks out a connection to `authority` for exclusive use, waiting up to the
    /// pool's `checkout_timeout`; see [`Checkout`](super::Checkout).
    pub async fn checkout(&self, authority: &Authority) -> Result<Lease<C, P>, PoolError> {
        self.group(authority).await?.checkout(None).await
    }

    /// Like [`checkout`](Self::checkout), waiting up to `timeout`.
    pub async fn checkout_within(
        &self,
        authority: &Authority,
        timeout: Duration,
    ) -> Result<Lease<C, P>, PoolError> {
        self.group(authority).await?.checkout(Some(timeout)).await
    }

    /// The least loaded connection to `authority` for shared (multiplexed) use; see
    /// [`CheckoutShared`](super::CheckoutShared). Waits up to the pool's
    /// `checkout_timeout` when there is no connection yet.
    pub async fn shared(&self, authority: &Authority) -> Result<SharedConnection<C, P>, PoolError> {
        self.group(authority)
            .await?
            .shared(None, Spread::LeastLoaded, 1)
            .await
    }

    /// Like [`shared`](Self::shared), waiting up to `timeout`.
    pub async fn shared_within(
        &self,
        authority: &Authority,
        timeout: Duration,
    ) -> Result<SharedConnection<C, P>, PoolError> {
        self.group(authority)
            .await?
            .shared(Some(timeout), Spread::LeastLoaded, 1)
            .await
    }

    /// A connection to `authority` for shared use, picked as `spread` says, waiting up
    /// to `timeout` (or the pool's `checkout_timeout`) when there is none yet.
    pub async fn shared_by(
        &self,
        authority: &Authority,
        spread: Spread,
        timeout: Option<Duration>,
    ) -> Result<SharedConnection<C, P>, PoolError> {
        self.group(authority)
            .await?
            .shared(timeout, spread, 1)
            .await
    }

    /// Like [`shared_by`](Self::shared_by), for a user that holds the handle for a
    /// stream of calls (an ordered producer, whose window is `claim`): the handle
    /// counts as that much load, up to one `grow_threshold`, so that such users
    /// spread over the connections and grow the pool before their calls are
    /// written, without one user's window alone opening connections it may never
    /// fill.
    pub(crate) async fn shared_claiming(
        &self,
        authority: &Authority,
        spread: Spread,
        timeout: Option<Duration>,
        claim: usize,
    ) -> Result<SharedConnection<C, P>, PoolError> {
        let group = self.group(authority).await?;
        let claim = claim.clamp(1, group.limits.threshold.min(group.limits.capacity));
        group.shared(timeout, spread, claim).await
    }

    /// A snapshot of the pool; [`PoolError::Closed`] if the pool actor has stopped.
    pub async fn status(&self) -> Result<PoolStatus, PoolError> {
        self.pool
            .send(GetStatus)
            .await
            .map_err(|_| PoolError::Closed)
    }

    /// Changes an authority's `min_idle` and `max_size`; see [`Resize`].
    pub async fn resize(
        &self,
        authority: &Authority,
        min_idle: usize,
        max_size: usize,
    ) -> Result<(), ConfigError> {
        let resize = Resize::new(authority.clone(), min_idle, max_size);
        // A stopped pool has nothing to resize.
        self.pool.send(resize).await.unwrap_or(Ok(()))
    }

    /// Drains the pool with its `shutdown_timeout`; see [`Drain`]. Returns once every
    /// connection has closed or the timeout ran out, saying which.
    pub async fn drain(&self) -> ShutdownOutcome {
        let drain = self.pool.send(Drain::default()).await;
        drain.unwrap_or(ShutdownOutcome::AlreadyClosed)
    }

    /// Closes the pool with its `shutdown_timeout`; see [`Close`]. Returns once every
    /// connection has closed or the timeout ran out, saying which.
    pub async fn close(&self) -> ShutdownOutcome {
        let close = self.pool.send(Close::default()).await;
        close.unwrap_or(ShutdownOutcome::AlreadyClosed)
    }
}

impl<C: Connector, P: Protocol> Clone for PoolHandle<C, P> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            registry: self.registry.clone(),
        }
    }
}

impl<C: Connector, P: Protocol> fmt::Debug for PoolHandle<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolHandle").finish_non_exhaustive()
    }
}
