//! One authority's share of a Pool: its idle connections, its queue of waiters and
//! its counts, behind one mutex.
//!
//! Checkouts and returns take this lock directly, from whatever thread the borrower
//! runs on: a checkout that finds an idle connection is one lock, a pop and an
//! unlock, with no actor round trip. Everything that changes how many connections
//! exist (opening, closing, reaping, health) stays with the Pool actor, which the
//! fast path only *signals* (`Demand`, `Returned`) and never waits for.
//!
//! Every member is in exactly one place, recorded in its `state` (changed only with
//! the lock held), and the counts add up: `members == idle + leased + busy`.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix::Addr;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::lease::{Lease, SharedConnection};
use super::messages::{CheckoutStats, Demand, Detached, Returned, ReturnedBecause};
use super::Spread;
use super::{Pool, PoolConfig};
use crate::connection::InFlightGauge;
use crate::metrics::{PoolFigures, PoolMetrics};
use crate::protocol::Protocol;
use crate::transport::Connector;
use crate::{Abort, Authority, ConnectError, Connection, ConnectionId, Ping, PoolError};

/// Where a member is. Changed only with its group's lock held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Place {
    /// In the idle stack.
    Idle = 0,
    /// Out on a lease.
    Leased = 1,
    /// Held by the Pool actor: being checked, drained or closed.
    Busy = 2,
    /// Closed and counted out of the group.
    Gone = 3,
    /// Taken out of the pool by `Lease::detach`.
    Detached = 4,
}

/// One pooled connection.
pub(crate) struct Member<C: Connector, P: Protocol> {
    pub(crate) id: ConnectionId,
    pub(crate) addr: Addr<Connection<C::Io, P>>,
    pub(crate) gauge: InFlightGauge,
    pub(crate) created: Instant,
    pub(crate) expires: Option<Instant>,
    place: AtomicU8,
    /// Whether it was handed out for shared use; set with the lock held. Such a
    /// member is never leased: a lease is exclusive.
    shared: AtomicBool,
    /// Whether the actor is closing it; set with the lock held.
    retiring: AtomicBool,
    /// Work handed out on it and not yet given back: what its live
    /// [`SharedConnection`]s claim (one call each, or a producer's whole window).
    /// Unlike the gauge, which counts calls the connection has written, this moves
    /// the moment a pick is made, so the picks of a burst see each other.
    handed: AtomicUsize,
}

impl<C: Connector, P: Protocol> Member<C, P> {
    pub(crate) fn new(
        id: ConnectionId,
        addr: Addr<Connection<C::Io, P>>,
        gauge: InFlightGauge,
        created: Instant,
        expires: Option<Instant>,
    ) -> Self {
        Self {
            id,
            addr,
            gauge,
            created,
            expires,
            place: AtomicU8::new(Place::Busy as u8),
            shared: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            handed: AtomicUsize::new(0),
        }
    }

    /// Its load for picking: calls written and waiting for replies, or work handed
    /// out on it, whichever is more. (A caller's call is counted by both once it is
    /// written, so the larger one, not the sum, is the work it carries.)
    pub(crate) fn load(&self) -> usize {
        self.gauge.get().max(self.handed.load(Ordering::Relaxed))
    }

    /// Counts `claim` more handed out on it (a new [`SharedConnection`]).
    pub(crate) fn claim(&self, claim: usize) {
        self.handed.fetch_add(claim, Ordering::Relaxed);
    }

    /// What its live [`SharedConnection`]s claim.
    pub(crate) fn handed(&self) -> usize {
        self.handed.load(Ordering::Relaxed)
    }

    /// Gives back what a dropped [`SharedConnection`] claimed.
    pub(crate) fn release(&self, claim: usize) {
        self.handed.fetch_sub(claim, Ordering::Relaxed);
    }

    pub(crate) fn place(&self) -> Place {
        match self.place.load(Ordering::Relaxed) {
            0 => Place::Idle,
            1 => Place::Leased,
            2 => Place::Busy,
            3 => Place::Gone,
            _ => Place::Detached,
        }
    }

    // Relaxed is enough: the place is only read and written with the group's lock
    // held, and the lock orders those accesses.
    fn set_place(&self, place: Place) {
        self.place.store(place as u8, Ordering::Relaxed);
    }

    /// Whether its connection can take calls: running, and not closing (a borrower
    /// may have sent it `Close` through the lease's address).
    pub(crate) fn is_usable(&self) -> bool {
        self.addr.connected() && !self.gauge.is_closing()
    }

    pub(crate) fn is_expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|expires| expires <= now)
    }
}

/// An idle member and since when it has been idle.
pub(crate) struct Idle<C: Connector, P: Protocol> {
    /// The member's id, kept here so that finding a member in a long idle list
    /// (10,000 closing at once when a server dies) scans this list, not every
    /// member's allocation.
    pub(crate) id: ConnectionId,
    pub(crate) member: Arc<Member<C, P>>,
    pub(crate) since: Instant,
    /// When it last passed a health check (or became idle).
    pub(crate) checked: Instant,
}

/// A checkout waiting for a connection.
enum Waiter<C: Connector, P: Protocol> {
    Exclusive {
        id: u64,
        since: Instant,
        tx: oneshot::Sender<Result<Lease<C, P>, PoolError>>,
    },
    Shared {
        id: u64,
        since: Instant,
        /// What its pick will claim on a connection.
        claim: usize,
        tx: oneshot::Sender<Result<SharedConnection<C, P>, PoolError>>,
    },
}

impl<C: Connector, P: Protocol> Waiter<C, P> {
    fn id(&self) -> u64 {
        match self {
            Self::Exclusive { id, .. } | Self::Shared { id, .. } => *id,
        }
    }

    fn fail(self, error: PoolError) {
        // A waiter that gave up is gone; nobody to tell.
        match self {
            Self::Exclusive { tx, .. } => drop(tx.send(Err(error))),
            Self::Shared { tx, .. } => drop(tx.send(Err(error))),
        }
    }
}

/// Whether a group (or the pool) takes checkouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    Draining,
    Closed,
}

impl Phase {
    /// The error a checkout gets in this phase, if any.
    pub(crate) fn admit(self) -> Result<(), PoolError> {
        match self {
            Self::Open => Ok(()),
            Self::Draining => Err(PoolError::Draining),
            Self::Closed => Err(PoolError::Closed),
        }
    }
}

/// The state behind a group's lock.
pub(crate) struct GroupState<C: Connector, P: Protocol> {
    /// Idle members; the top is the most recently returned, so surplus connections
    /// at the bottom go unused and reach their idle timeout.
    pub(crate) idle: Vec<Idle<C, P>>,
    waiters: VecDeque<Waiter<C, P>>,
    shared_waiters: usize,
    /// What the shared waiters claim, together.
    shared_claims_waiting: usize,
    next_waiter: u64,
    /// Where the next shared pick starts looking, for round-robin ties.
    next_shared: usize,
    /// Live pooled connections: idle + leased + busy.
    pub(crate) members: usize,
    pub(crate) leased: usize,
    pub(crate) busy: usize,
    /// Connect attempts scheduled or under way.
    pub(crate) connecting: usize,
    /// Extra connects wanted to replace expired members without going below `min_idle`.
    pub(crate) replacing: usize,
    /// Members the actor is closing (counted in `busy` until their `Closed` event);
    /// they do not count towards `min_idle`.
    pub(crate) retiring: usize,
    pub(crate) min_idle: usize,
    pub(crate) max_size: usize,
    pub(crate) phase: Phase,
    /// Consecutive connect failures.
    pub(crate) failures: u32,
    /// Consecutive connections that failed soon after opening.
    pub(crate) flaps: u32,
    pub(crate) down: bool,
    pub(crate) last_connect_error: Option<ConnectError>,
    /// A `Demand` is on its way to the actor; set so bursts send one.
    pub(crate) demand_signalled: bool,
    /// Connections shared use wants on top of those open and opening: its load
    /// passed `grow_threshold` per connection.
    pub(crate) grow_wanted: usize,
    pub(crate) counters: CheckoutStats,
    /// The authority's metric handles and what they were last told (feature
    /// `metrics`; published as the lock is released, see `GroupGuard`).
    pub(crate) metrics: PoolMetrics,
}

impl<C: Connector, P: Protocol> GroupState<C, P> {
    pub(crate) fn waiters(&self) -> usize {
        self.waiters.len()
    }

    /// Connections the waiters need: one each for exclusive waiters, one for all
    /// shared ones.
    pub(crate) fn waiting_demand(&self) -> usize {
        self.waiters.len() - self.shared_waiters + usize::from(self.shared_waiters > 0)
    }

    /// How many more connections this group wants, before capacity limits.
    pub(crate) fn wanted(&self) -> usize {
        if self.phase != Phase::Open || self.down {
            return 0;
        }
        let have = self.members - self.retiring + self.connecting;
        let for_min = (self.min_idle + self.replacing).saturating_sub(have);
        let for_waiters = self.waiting_demand().saturating_sub(self.connecting);
        // Growth is counted against what is open and opening when it is asked for.
        for_min.max(for_waiters).max(self.grow_wanted)
    }

    /// Room under `max_size` (replacements may go one over `min_idle`, never over
    /// `max_size`).
    pub(crate) fn room(&self) -> usize {
        self.max_size.saturating_sub(self.members + self.connecting)
    }

    fn refuse(&self, authority: &Authority) -> Result<(), PoolError> {
        self.phase.admit()?;
        if self.down {
            if let Some(error) = &self.last_connect_error {
                return Err(PoolError::Down {
                    authority: authority.clone(),
                    failures: self.failures,
                    error: error.clone(),
                });
            }
        }
        Ok(())
    }

    /// Counts a checkout that ran out of time and says why it did.
    fn timed_out(&mut self, authority: &Authority, waited: Duration) -> PoolError {
        self.counters.timed_out += 1;
        PoolError::Timeout {
            authority: authority.clone(),
            waited,
            last_connect_error: self.last_connect_error.clone(),
        }
    }

    fn push_waiter(&mut self, make: impl FnOnce(u64) -> Waiter<C, P>) -> u64 {
        self.next_waiter += 1;
        let id = self.next_waiter;
        let waiter = make(id);
        if let Waiter::Shared { claim, .. } = &waiter {
            self.shared_waiters += 1;
            self.shared_claims_waiting = self.shared_claims_waiting.saturating_add(*claim);
        }
        self.waiters.push_back(waiter);
        id
    }

    /// Counts a waiter out of the queue.
    fn note_left(&mut self, waiter: &Waiter<C, P>) {
        if let Waiter::Shared { claim, .. } = waiter {
            self.shared_waiters -= 1;
            self.shared_claims_waiting = self.shared_claims_waiting.saturating_sub(*claim);
        }
    }

    fn pop_waiter(&mut self) -> Option<Waiter<C, P>> {
        let waiter = self.waiters.pop_front()?;
        self.note_left(&waiter);
        Some(waiter)
    }

    fn remove_waiter_at(&mut self, at: usize) -> Option<Waiter<C, P>> {
        let waiter = self.waiters.remove(at)?;
        self.note_left(&waiter);
        Some(waiter)
    }

    /// Takes a waiter out of the queue; `None` if it was served (or failed) already.
    fn remove_waiter(&mut self, id: u64) -> Option<Waiter<C, P>> {
        let at = self.waiters.iter().position(|waiter| waiter.id() == id)?;
        self.remove_waiter_at(at)
    }

    /// Fails every waiter with `error` (sending an error drops nothing that would
    /// take the lock again).
    pub(crate) fn fail_waiters(&mut self, error: &PoolError) {
        while let Some(waiter) = self.pop_waiter() {
            self.counters.failed += 1;
            waiter.fail(error.clone());
        }
    }

    /// Fails the longest waiter with `error` (the connect made for it failed).
    pub(crate) fn fail_front_waiter(&mut self, error: PoolError) {
        if let Some(waiter) = self.pop_waiter() {
            self.counters.failed += 1;
            waiter.fail(error);
        }
    }

    /// Pops the most recently idle member whose connection still runs. Members whose
    /// connection stopped (their `Closed` event not yet handled by the actor) are set
    /// aside as busy; that event counts them out.
    fn pop_live_idle(&mut self) -> Option<Idle<C, P>> {
        let mut at = self.idle.len();
        while at > 0 {
            at -= 1;
            let member = &self.idle[at].member;
            if !member.is_usable() {
                let dead = self.idle.remove(at);
                self.make_busy(&dead.member);
            } else if !member.shared.load(Ordering::Relaxed) {
                return Some(self.idle.remove(at));
            }
        }
        None
    }

    /// Picks a member for shared use, or says to wait for one on its way.
    ///
    /// Load is [`Member::load`]: what was handed out counts at once, so the picks of
    /// a burst see each other. The group's shared demand (the load of its shared
    /// members, what shared waiters claim, and this pick's `claim`) decides how many
    /// connections it wants, one per `grow_threshold` up to `max_size`; growth is
    /// asked for through `grow_wanted`. Each connection should carry its fair share
    /// of that demand (never less than `grow_threshold`, never more than
    /// `max_in_flight`): the least loaded member below its share is picked (ties go
    /// round robin), else an idle member not yet shared is recruited, else, if
    /// connections are on their way, the pick waits for one (bounded by what they
    /// will take), else the least loaded member is picked whatever its load. The pick
    /// counts as use for the idle timeout.
    fn pick_shared(
        &mut self,
        limits: ShareLimits,
        claim: usize,
        spread: Spread,
        now: Instant,
    ) -> SharePick<C, P> {
        let mut at = 0;
        while at < self.idle.len() {
            if self.idle[at].member.is_usable() {
                at += 1;
            } else {
                let dead = self.idle.remove(at);
                self.make_busy(&dead.member);
            }
        }
        let count = self.idle.len();
        if spread == Spread::TwoChoices {
            // A picker that spreads by load wants every open connection in the
            // running, so that its random picks cover all of them.
            for idle in &self.idle {
                idle.member.shared.store(true, Ordering::Relaxed);
            }
        }
        let start = if count == 0 {
            0
        } else {
            self.next_shared % count
        };
        self.next_shared = self.next_shared.wrapping_add(1);
        let mut least: Option<(usize, usize)> = None;
        let mut unshared = None;
        let (mut shared, mut unshared_count, mut load_sum) = (0usize, 0usize, 0usize);
        for offset in 0..count {
            let at = (start + offset) % count;
            let member = &self.idle[at].member;
            if !member.shared.load(Ordering::Relaxed) {
                // The most recently idle one, as an exclusive checkout would take.
                unshared = Some(unshared.map_or(at, |other: usize| other.max(at)));
                unshared_count += 1;
                continue;
            }
            shared += 1;
            let load = member.load();
            load_sum = load_sum.saturating_add(load);
            match least {
                Some((fewest, _)) if fewest <= load => {}
                _ => least = Some((load, at)),
            }
        }
        let demand = load_sum
            .saturating_add(self.shared_claims_waiting)
            .saturating_add(claim);
        let planned = shared + unshared_count + self.connecting;
        let growth = demand
            // A connection carries at most `max_in_flight`, whatever the threshold.
            .div_ceil(limits.threshold.min(limits.capacity))
            .saturating_sub(planned)
            .min(self.room());
        if growth > self.grow_wanted {
            self.grow_wanted = growth;
        }
        let share = limits.share(demand, planned + growth);
        let mut best = least;
        if spread == Spread::TwoChoices && shared >= 2 {
            if let Some(two) = self.two_choices(shared) {
                if two.0 < share {
                    best = Some(two);
                }
            }
        }
        let coming = self.connecting + growth;
        let at = match (best, unshared) {
            (Some((load, at)), _) if load < share => at,
            (_, Some(recruit)) => {
                self.idle[recruit]
                    .member
                    .shared
                    .store(true, Ordering::Relaxed);
                recruit
            }
            // Connections are on their way and will take this pick: wait for one,
            // as far as they can take waiters.
            _ if coming > 0
                && self.shared_claims_waiting < coming.saturating_mul(limits.capacity) =>
            {
                return SharePick::Wait;
            }
            (Some((_, at)), None) => at,
            (None, None) => return SharePick::None,
        };
        let idle = &mut self.idle[at];
        // Last picked, or last passed a periodic check: for the test on checkout.
        let last_known_good = idle.since.max(idle.checked);
        idle.since = now;
        SharePick::Member(idle.member.clone(), last_known_good)
    }

    /// Hands every shared waiter to the least loaded shared member, when no
    /// connection is on its way to take them: they are served by what there is
    /// (a connection at its `max_in_flight` refuses or queues their calls as its
    /// config says) rather than left to time out.
    pub(crate) fn serve_shared_waiters(&mut self, authority: &Authority) {
        if self.connecting > 0 {
            return;
        }
        self.serve_shared_waiters_now(authority);
    }

    /// Hands every shared waiter to the least loaded shared member now, whatever is
    /// on its way: a connect just failed, so what is coming may not come.
    pub(crate) fn serve_shared_waiters_now(&mut self, authority: &Authority) {
        if self.shared_waiters == 0 {
            return;
        }
        let mut at = 0;
        while at < self.waiters.len() {
            if !matches!(self.waiters[at], Waiter::Shared { .. }) {
                at += 1;
                continue;
            }
            let least = self
                .idle
                .iter()
                .filter(|idle| {
                    idle.member.is_usable() && idle.member.shared.load(Ordering::Relaxed)
                })
                .min_by_key(|idle| idle.member.load())
                .map(|idle| idle.member.clone());
            let Some(member) = least else {
                return;
            };
            if let Some(Waiter::Shared {
                tx, since, claim, ..
            }) = self.remove_waiter_at(at)
            {
                self.hand_shared(member, authority, claim, since, tx);
            }
        }
    }

    /// Hands a shared waiter (taken out of the queue) a handle to `member`, which
    /// goes into shared use. A waiter that gave up drops the handle, and its claim
    /// with it.
    fn hand_shared(
        &mut self,
        member: Arc<Member<C, P>>,
        authority: &Authority,
        claim: usize,
        since: Instant,
        tx: oneshot::Sender<Result<SharedConnection<C, P>, PoolError>>,
    ) {
        member.shared.store(true, Ordering::Relaxed);
        self.counters.shared += 1;
        let shared = SharedConnection::new(member, authority.clone(), claim);
        if tx.send(Ok(shared)).is_ok() {
            self.metrics.checkout_waited(since.elapsed());
        }
    }

    /// Of two shared idle members picked at random, the less loaded (its load and
    /// place). `shared` is how many there are (at least two).
    fn two_choices(&self, shared: usize) -> Option<(usize, usize)> {
        let first = fastrand::usize(..shared);
        let second = (first + 1 + fastrand::usize(..shared - 1)) % shared;
        let mut nth = 0;
        let (mut a, mut b) = (None, None);
        for (at, idle) in self.idle.iter().enumerate() {
            if !idle.member.shared.load(Ordering::Relaxed) {
                continue;
            }
            if nth == first {
                a = Some((idle.member.gauge.get(), at));
            } else if nth == second {
                b = Some((idle.member.gauge.get(), at));
            }
            nth += 1;
        }
        // A tie goes to the first pick, itself random: in a burst every load reads
        // zero, and preferring either place would skew the spread.
        match (a, b) {
            (Some(a), Some(b)) if b.0 < a.0 => Some(b),
            (Some(a), _) => Some(a),
            (None, b) => b,
        }
    }

    /// Takes an idle member out for the actor (a check or retirement).
    pub(crate) fn take_idle(&mut self, at: usize) -> Idle<C, P> {
        let idle = self.idle.remove(at);
        idle.member.set_place(Place::Busy);
        self.busy += 1;
        idle
    }

    /// Takes an idle member out for the actor to close.
    pub(crate) fn retire_idle(&mut self, at: usize) -> Arc<Member<C, P>> {
        let idle = self.take_idle(at);
        self.mark_retiring(&idle.member);
        idle.member
    }

    /// Counts a member in `busy` that nobody may have (an offer found no taker).
    pub(crate) fn make_busy(&mut self, member: &Member<C, P>) {
        member.set_place(Place::Busy);
        self.busy += 1;
    }

    /// Takes connection `id` off the idle list (it failed a test), counted as busy
    /// until its close counts it out.
    fn take_out_of_idle(&mut self, id: ConnectionId) {
        if let Some(at) = self.idle.iter().position(|idle| idle.id == id) {
            let failed = self.idle.remove(at);
            self.make_busy(&failed.member);
        }
    }

    /// Notes that the actor is closing a member, once.
    pub(crate) fn mark_retiring(&mut self, member: &Member<C, P>) {
        if !member.retiring.swap(true, Ordering::Relaxed) {
            self.retiring += 1;
        }
    }

    /// Counts a member out of the group for good, wherever it was.
    pub(crate) fn forget(&mut self, member: &Member<C, P>) {
        match member.place() {
            Place::Idle => {
                if let Some(at) = self.idle.iter().position(|idle| idle.id == member.id) {
                    self.idle.remove(at);
                }
            }
            Place::Leased => self.leased -= 1,
            Place::Busy => self.busy -= 1,
            Place::Gone | Place::Detached => return,
        }
        if member.retiring.load(Ordering::Relaxed) {
            self.retiring -= 1;
        }
        self.members -= 1;
        member.set_place(Place::Gone);
    }

    /// The sizes and counts the metrics show.
    fn figures(&self) -> PoolFigures {
        let shared = self
            .idle
            .iter()
            .filter(|idle| idle.member.shared.load(Ordering::Relaxed))
            .count();
        PoolFigures {
            idle: self.idle.len() - shared,
            shared,
            leased: self.leased,
            busy: self.busy,
            connecting: self.connecting,
            waiters: self.waiters.len(),
            down: self.down,
            direct: self.counters.direct,
            waited: self.counters.waited,
            shared_checkouts: self.counters.shared,
            timed_out: self.counters.timed_out,
            refused: self.counters.refused,
            failed: self.counters.failed,
        }
    }
}

/// The lock on a group's state. Every change to the state is made through one, so
/// releasing it is where the metrics learn of changes (feature `metrics`): they are
/// told before the lock is released, so they hear of changes in the order they were
/// made.
pub(crate) struct GroupGuard<'a, C: Connector, P: Protocol>(MutexGuard<'a, GroupState<C, P>>);

impl<C: Connector, P: Protocol> Deref for GroupGuard<'_, C, P> {
    type Target = GroupState<C, P>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<C: Connector, P: Protocol> DerefMut for GroupGuard<'_, C, P> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<C: Connector, P: Protocol> Drop for GroupGuard<'_, C, P> {
    fn drop(&mut self) {
        if crate::metrics::ENABLED {
            let figures = self.0.figures();
            self.0.metrics.publish(figures);
        }
    }
}

/// What a checkout got on its first look.
enum Attempt<C: Connector, P: Protocol> {
    Taken(Lease<C, P>, Instant),
    Queued(
        u64,
        oneshot::Receiver<Result<Lease<C, P>, PoolError>>,
        Instant,
    ),
}

/// What a shared checkout got on its first look.
enum Shared<C: Connector, P: Protocol> {
    /// A connection at once, and when it was last known good.
    Now(SharedConnection<C, P>, Instant),
    Queued(
        u64,
        oneshot::Receiver<Result<SharedConnection<C, P>, PoolError>>,
        Instant,
    ),
}

/// How a test on checkout ended.
enum Test {
    /// The connection answered its ping in time.
    Passed,
    /// It did not answer within `health_check_timeout`, or it stopped.
    Failed,
    /// The caller's deadline came first; the connection was not judged.
    CallerOutOfTime,
}

/// What a shared pick found on the idle list.
enum SharePick<C: Connector, P: Protocol> {
    /// This member, and when it was last known good.
    Member(Arc<Member<C, P>>, Instant),
    /// Every member carries its share, and connections are on their way.
    Wait,
    /// No member at all.
    None,
}

/// The bounds a shared pick works within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShareLimits {
    /// Load per connection past which the group grows (`grow_threshold`).
    pub(crate) threshold: usize,
    /// Calls one connection takes at most (its `max_in_flight`).
    pub(crate) capacity: usize,
}

impl ShareLimits {
    /// The load each of `connections` should carry of `demand`: the fair share, at
    /// least the grow threshold and at most a connection's capacity.
    fn share(self, demand: usize, connections: usize) -> usize {
        demand
            .div_ceil(connections.max(1))
            .max(self.threshold)
            .min(self.capacity)
    }
}

/// One authority's connections; shared by the Pool actor, its handles and leases.
pub(crate) struct Group<C: Connector, P: Protocol> {
    pub(crate) authority: Authority,
    /// How shared use is spread and grown.
    pub(crate) limits: ShareLimits,
    /// The authority as each connection names its peer, shared by all of them.
    pub(crate) peer: Arc<str>,
    pub(crate) config: Arc<PoolConfig>,
    pub(crate) pool: Addr<Pool<C, P>>,
    state: Mutex<GroupState<C, P>>,
}

impl<C: Connector, P: Protocol> Group<C, P> {
    pub(crate) fn new(
        authority: Authority,
        config: Arc<PoolConfig>,
        pool: Addr<Pool<C, P>>,
        min_idle: usize,
        max_size: usize,
        call_capacity: usize,
    ) -> Self {
        Self {
            limits: ShareLimits {
                threshold: config.grow_threshold,
                capacity: call_capacity,
            },
            pool,
            state: Mutex::new(GroupState {
                idle: Vec::new(),
                waiters: VecDeque::new(),
                shared_waiters: 0,
                shared_claims_waiting: 0,
                next_waiter: 0,
                next_shared: 0,
                members: 0,
                leased: 0,
                busy: 0,
                connecting: 0,
                replacing: 0,
                retiring: 0,
                min_idle,
                max_size,
                phase: Phase::Open,
                failures: 0,
                flaps: 0,
                down: false,
                last_connect_error: None,
                demand_signalled: false,
                grow_wanted: 0,
                counters: CheckoutStats::default(),
                metrics: PoolMetrics::new(&authority),
            }),
            peer: Arc::from(authority.to_string()),
            authority,
            config,
        }
    }

    /// The group's state. Nothing that locks it again (dropping a `Lease`, above all)
    /// may run while the guard is held; a panic elsewhere does not poison it for good.
    pub(crate) fn lock(&self) -> GroupGuard<'_, C, P> {
        GroupGuard(self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Checks out a connection: an idle one at once, else the longest waiter gets the
    /// next one returned or opened, within `timeout` (the pool's `checkout_timeout`
    /// when `None`).
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        timeout: Option<Duration>,
    ) -> Result<Lease<C, P>, PoolError> {
        let timeout = timeout.unwrap_or(self.config.checkout_timeout);
        let mut started = None;
        loop {
            let attempt = match self.attempt(&mut started) {
                Ok(attempt) => attempt,
                Err(error) => return Err(refused(error).await),
            };
            match attempt {
                Attempt::Taken(lease, idle_since) => {
                    let Some(after) = self.config.test_on_checkout_after else {
                        return Ok(lease);
                    };
                    let now = Instant::now();
                    if now.saturating_duration_since(idle_since) < after {
                        return Ok(lease);
                    }
                    // Testing counts against the checkout's timeout like waiting does.
                    let deadline = crate::connection::later(*started.get_or_insert(now), timeout);
                    match self.test(lease.addr(), deadline).await {
                        Test::Passed => return Ok(lease),
                        Test::CallerOutOfTime => {
                            // Back untested, still due for its test.
                            let member = lease.into_member();
                            self.check_in_since(member, idle_since);
                            let waited =
                                started.map_or(Duration::ZERO, |started| started.elapsed());
                            return Err(self.lock().timed_out(&self.authority, waited));
                        }
                        Test::Failed => {}
                    }
                    // Its connection failed the ping; try the next one, in time.
                    self.discard(lease.into_member(), ReturnedBecause::FailedTest);
                    if Instant::now() >= deadline {
                        let waited = started.map_or(Duration::ZERO, |started| started.elapsed());
                        return Err(self.lock().timed_out(&self.authority, waited));
                    }
                }
                Attempt::Queued(id, receiver, started) => {
                    return self.wait(id, receiver, started, timeout).await;
                }
            }
        }
    }

    fn attempt(
        self: &Arc<Self>,
        started: &mut Option<Instant>,
    ) -> Result<Attempt<C, P>, PoolError> {
        let mut state = self.lock();
        if let Err(error) = state.refuse(&self.authority) {
            state.counters.refused += 1;
            return Err(error);
        }
        // The queue is empty whenever a member is idle (a member made idle goes to
        // the longest waiter first), but shared waiters do not take members; never
        // jump over anyone waiting.
        if state.waiters.is_empty() {
            if let Some(idle) = state.pop_live_idle() {
                idle.member.set_place(Place::Leased);
                state.leased += 1;
                state.counters.direct += 1;
                // A periodic check counts as use for the test on checkout.
                let last_known_good = idle.since.max(idle.checked);
                return Ok(Attempt::Taken(
                    Lease::new(self.clone(), idle.member),
                    last_known_good,
                ));
            }
        }
        if state.waiters.len() >= self.config.max_waiters {
            state.counters.refused += 1;
            return Err(PoolError::TooManyWaiters {
                authority: self.authority.clone(),
                limit: self.config.max_waiters,
            });
        }
        let now = Instant::now();
        let since = *started.get_or_insert(now);
        let (tx, rx) = oneshot::channel();
        let id = state.push_waiter(|id| Waiter::Exclusive { id, since, tx });
        self.signal_demand(&mut state);
        Ok(Attempt::Queued(id, rx, since))
    }

    /// Tests a connection not used for longer than `test_on_checkout_after` before
    /// it is handed out: it must answer a ping within `health_check_timeout`. The
    /// connection is judged by that timeout alone; a caller whose own `deadline`
    /// comes first gives up without judging it, so one caller's short deadline
    /// never costs a healthy connection (or the other callers on it).
    async fn test(&self, connection: &Addr<Connection<C::Io, P>>, deadline: Instant) -> Test {
        let ping = connection.send(Ping);
        let judged_by = crate::connection::later(Instant::now(), self.config.health_check_timeout);
        let bound = deadline.min(judged_by);
        match tokio::time::timeout_at(bound, ping).await {
            Ok(Ok(Ok(_rtt))) => Test::Passed,
            Err(_elapsed) if deadline < judged_by => Test::CallerOutOfTime,
            _ => {
                self.lock().counters.tests_failed += 1;
                Test::Failed
            }
        }
    }

    async fn wait<T>(
        self: &Arc<Self>,
        id: u64,
        mut receiver: oneshot::Receiver<Result<T, PoolError>>,
        started: Instant,
        timeout: Duration,
    ) -> Result<T, PoolError> {
        // Leaves the queue if this future is dropped while it waits; whatever was
        // handed over meanwhile goes back with the receiver.
        let mut guard = QueueGuard {
            group: self,
            id: Some(id),
        };
        let deadline = crate::connection::later(started, timeout);
        match tokio::time::timeout_at(deadline, &mut receiver).await {
            Ok(Ok(result)) => {
                guard.id = None;
                result
            }
            // The sender went away unanswered: the pool stopped.
            Ok(Err(_)) => {
                guard.id = None;
                Err(PoolError::Closed)
            }
            Err(_elapsed) => {
                guard.id = None;
                let mut state = self.lock();
                match state.remove_waiter(id) {
                    Some(waiter) => {
                        let error = state.timed_out(&self.authority, started.elapsed());
                        drop(state);
                        drop(waiter);
                        Err(error)
                    }
                    // Served as the timer fired: the answer is already in the channel
                    // (it is sent before the waiter leaves the queue's lock).
                    None => {
                        drop(state);
                        receiver.try_recv().unwrap_or(Err(PoolError::Closed))
                    }
                }
            }
        }
    }

    /// A handle to a connection for shared use, picked as [`GroupState::pick_shared`]
    /// says, claiming `claim` of its load while the handle lives. One unused for
    /// longer than `test_on_checkout_after` must answer a ping first; one that does
    /// not is aborted (the pool replaces it) and the next is tried.
    pub(crate) async fn shared(
        self: &Arc<Self>,
        timeout: Option<Duration>,
        spread: Spread,
        claim: usize,
    ) -> Result<SharedConnection<C, P>, PoolError> {
        let timeout = timeout.unwrap_or(self.config.checkout_timeout);
        let started = Instant::now();
        let deadline = crate::connection::later(started, timeout);
        loop {
            let (id, receiver, queued) = match self.share_or_queue(spread, claim) {
                Ok(Shared::Now(shared, last_known_good)) => {
                    let stale = self.config.test_on_checkout_after.is_some_and(|after| {
                        Instant::now().saturating_duration_since(last_known_good) >= after
                    });
                    // A connection with calls in flight is in use, and its heartbeat
                    // judges it; a ping would only queue behind those calls (on an
                    // in-order protocol) and a failed one would fail them all.
                    if !stale || shared.in_use_by_others() {
                        return Ok(shared);
                    }
                    match self.test(shared.addr(), deadline).await {
                        Test::Passed => return Ok(shared),
                        Test::CallerOutOfTime => {
                            // The connection was not judged: only this caller's time
                            // ran out.
                            return Err(self.lock().timed_out(&self.authority, started.elapsed()));
                        }
                        Test::Failed => {}
                    }
                    // Out of the running at once, so that no retry picks it again;
                    // then closed, and its `Closed` counts it out of the pool. Calls
                    // other callers started on it meanwhile get their replies or time
                    // out by their own timeouts: the close is graceful, and aborts
                    // only if nothing was in flight.
                    self.lock().take_out_of_idle(shared.id());
                    if shared.in_use_by_others() {
                        shared.addr().do_send(crate::Close::default());
                    } else {
                        // `do_send`: past a full mailbox; if the connection has
                        // stopped already, nothing is lost.
                        shared.addr().do_send(Abort);
                    }
                    if Instant::now() >= deadline {
                        return Err(self.lock().timed_out(&self.authority, started.elapsed()));
                    }
                    continue;
                }
                Ok(Shared::Queued(id, receiver, queued)) => (id, receiver, queued),
                Err(error) => return Err(refused(error).await),
            };
            let left = deadline.saturating_duration_since(queued);
            return self.wait(id, receiver, queued, left).await;
        }
    }

    fn share_or_queue(
        self: &Arc<Self>,
        spread: Spread,
        claim: usize,
    ) -> Result<Shared<C, P>, PoolError> {
        let mut state = self.lock();
        if let Err(error) = state.refuse(&self.authority) {
            state.counters.refused += 1;
            return Err(error);
        }
        let wanted_before = state.grow_wanted;
        let pick = state.pick_shared(self.limits, claim, spread, Instant::now());
        if state.grow_wanted > wanted_before {
            self.signal_demand(&mut state);
        }
        match pick {
            SharePick::Member(member, last_known_good) => {
                state.counters.shared += 1;
                return Ok(Shared::Now(
                    SharedConnection::new(member, self.authority.clone(), claim),
                    last_known_good,
                ));
            }
            // Waiting for capacity on its way is bounded by what that capacity takes.
            SharePick::Wait => {}
            SharePick::None => {
                if state.waiters.len() >= self.config.max_waiters {
                    state.counters.refused += 1;
                    return Err(PoolError::TooManyWaiters {
                        authority: self.authority.clone(),
                        limit: self.config.max_waiters,
                    });
                }
            }
        }
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        let id = state.push_waiter(|id| Waiter::Shared {
            id,
            since: started,
            claim,
            tx,
        });
        self.signal_demand(&mut state);
        Ok(Shared::Queued(id, rx, started))
    }

    /// Tells the actor this group wants connections, once per burst.
    pub(crate) fn signal_demand(self: &Arc<Self>, state: &mut GroupState<C, P>) {
        // At `max_size` the actor could open nothing: a waiter is served by a return,
        // and the actor would only be woken for nothing, once per waiter.
        if state.demand_signalled || state.wanted().min(state.room()) == 0 {
            return;
        }
        state.demand_signalled = true;
        // `do_send` is right here: the message is tiny, at most one is outstanding
        // per group, and if the actor is gone the group is closed anyway.
        self.pool.do_send(Demand {
            group: self.clone(),
        });
    }

    /// Hands `member` (counted in `members` only) to the longest waiter it may
    /// serve, or makes it idle. `since` is when it became idle. Returns it, counted
    /// as busy, if nobody wants it and the phase says not to keep it (the caller
    /// closes it).
    pub(crate) fn offer(
        self: &Arc<Self>,
        state: &mut GroupState<C, P>,
        mut member: Arc<Member<C, P>>,
        since: Instant,
        checked: Instant,
    ) -> Option<Arc<Member<C, P>>> {
        if !member.is_usable() {
            // Its connection stopped already (its `Closed` event, or the actor's
            // check for a silent death, counts it out): nobody may have it.
            state.make_busy(&member);
            return None;
        }
        // Shared waiters take this member up to its fair share while more
        // connections are on their way for the rest; the last one takes them all.
        // The share is of what was handed out (the waiters' claims are of the same
        // kind): calls that long-held handles (ordered producers) have written since
        // would otherwise make the share so large that the first new connection took
        // every waiter.
        let share = if state.connecting == 0 {
            usize::MAX
        } else {
            let (shared, shared_load) = state
                .idle
                .iter()
                .filter(|idle| idle.member.shared.load(Ordering::Relaxed))
                .fold((0usize, 0usize), |(count, load), idle| {
                    (count + 1, load.saturating_add(idle.member.handed()))
                });
            let connections = shared + 1 + state.connecting;
            let demand = shared_load
                .saturating_add(member.handed())
                .saturating_add(state.shared_claims_waiting);
            self.limits.share(demand, connections)
        };
        let mut at = 0;
        while at < state.waiters.len() {
            let shared_only = member.shared.load(Ordering::Relaxed);
            if shared_only && matches!(state.waiters[at], Waiter::Exclusive { .. }) {
                // A member in shared use is never leased; this waiter keeps its
                // place for an unshared one.
                at += 1;
                continue;
            }
            if shared_only
                && matches!(state.waiters[at], Waiter::Shared { .. })
                && member.handed() >= share
            {
                // Its share is taken; the next connection serves the rest.
                at += 1;
                continue;
            }
            let Some(waiter) = state.remove_waiter_at(at) else {
                break;
            };
            match waiter {
                Waiter::Shared {
                    tx, since, claim, ..
                } => state.hand_shared(member.clone(), &self.authority, claim, since, tx),
                Waiter::Exclusive { tx, since, .. } => {
                    member.set_place(Place::Leased);
                    state.leased += 1;
                    match tx.send(Ok(Lease::new(self.clone(), member))) {
                        Ok(()) => {
                            let waited = since.elapsed();
                            state.counters.waited += 1;
                            state.counters.wait_time += waited;
                            state.metrics.checkout_waited(waited);
                            return None;
                        }
                        // The waiter gave up just now: take the member back without
                        // dropping the lease (its drop would take this lock again).
                        Err(Ok(lease)) => {
                            state.leased -= 1;
                            member = lease.into_member();
                        }
                        Err(Err(_)) => unreachable!("a lease was sent, not an error"),
                    }
                }
            }
        }
        if state.phase != Phase::Open {
            state.make_busy(&member);
            return Some(member);
        }
        member.set_place(Place::Idle);
        state.idle.push(Idle {
            id: member.id,
            member,
            since,
            checked,
        });
        None
    }

    /// Takes back a lease's member: idle again (or to the longest waiter) if it is
    /// healthy and quiet, else to the actor to drain or close.
    pub(crate) fn check_in(self: &Arc<Self>, member: Arc<Member<C, P>>) {
        self.check_in_since(member, Instant::now());
    }

    /// Like [`check_in`](Self::check_in), for a member idle since `since` (one
    /// returned unused keeps its place in line for the test on checkout).
    fn check_in_since(self: &Arc<Self>, member: Arc<Member<C, P>>, since: Instant) {
        let mut state = self.lock();
        if member.place() != Place::Leased {
            // Closed and counted out while it was leased.
            return;
        }
        if !member.is_usable() {
            // The connection stopped or is closing; its `Closed` event is on its way
            // to the actor, which counts it out. Keep it off the idle stack meanwhile.
            state.leased -= 1;
            state.make_busy(&member);
            return;
        }
        let now = Instant::now();
        // Shutting down (and nobody left to serve), expired, not to be reused, or
        // above a reduced size: close it.
        let retire = (state.phase != Phase::Open && state.waiters.is_empty())
            || !self.config.reuse
            || member.is_expired(now)
            || state.members - state.retiring > state.max_size;
        let because = if retire {
            Some(ReturnedBecause::Retire)
        } else if member.gauge.get() > 0 {
            Some(ReturnedBecause::InFlight)
        } else {
            None
        };
        state.leased -= 1;
        let (member, because) = match because {
            None => match self.offer(&mut state, member, since, since) {
                None => return,
                Some(member) => (member, ReturnedBecause::Retire),
            },
            Some(because) => {
                state.make_busy(&member);
                (member, because)
            }
        };
        drop(state);
        self.hand_to_pool(member, because);
    }

    /// Sends a member (already counted busy) to the actor to drain or close.
    fn hand_to_pool(self: &Arc<Self>, member: Arc<Member<C, P>>, because: ReturnedBecause) {
        // Loses nothing that matters: if the actor is gone, so is the pool.
        self.pool.do_send(Returned {
            group: self.clone(),
            member,
            because,
        });
    }

    /// Takes a lease's member out of the pool for good.
    pub(crate) fn detach(self: &Arc<Self>, member: &Member<C, P>) {
        let mut state = self.lock();
        if member.place() == Place::Leased {
            state.leased -= 1;
            state.members -= 1;
            member.set_place(Place::Detached);
            self.signal_demand(&mut state);
        }
        drop(state);
        // The actor forgets it, so that nothing of the pool keeps the connection
        // alive once its borrower drops the address.
        self.pool.do_send(Detached { id: member.id });
    }

    /// Takes a lease's member back to be closed: its borrower found it unfit.
    pub(crate) fn discard(self: &Arc<Self>, member: Arc<Member<C, P>>, because: ReturnedBecause) {
        let mut state = self.lock();
        if member.place() != Place::Leased {
            return;
        }
        state.leased -= 1;
        state.make_busy(&member);
        drop(state);
        self.hand_to_pool(member, because);
    }
}

/// Yields to the runtime before a refusal is returned. A refusal needs no waiting, so
/// without this a caller retrying in a loop on a single-threaded runtime would never
/// let the actor run that could end the refusal (reconnect, say).
async fn refused(error: PoolError) -> PoolError {
    tokio::task::yield_now().await;
    error
}

/// Takes a waiter out of the queue when its checkout is dropped mid-wait.
struct QueueGuard<'a, C: Connector, P: Protocol> {
    group: &'a Arc<Group<C, P>>,
    id: Option<u64>,
}

impl<C: Connector, P: Protocol> Drop for QueueGuard<'_, C, P> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let waiter = self.group.lock().remove_waiter(id);
            // Dropped after the lock is released.
            drop(waiter);
        }
    }
}
