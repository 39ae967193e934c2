//! Reliability scenario 11 (issue 5): an actor stops in the middle of requests.
//!
//! What a user of the Pool can rely on:
//! - (a) a pooled Connection that stops with calls pending, whether it is aborted
//!   (`Abort`), closed (`Close`, whose timeout runs out for the calls never
//!   answered) or loses its arbiter, fails every pending call exactly once with a
//!   `CallError::Closed` whose reason says why (`Aborted`, `CloseTimeout`,
//!   `Stopped`); calls answered before the end get their replies; later calls fail at
//!   once; the pool counts the connection out and serves again on a new one;
//! - (b) a Pool started with `start_supervised` that stops (its `Close` or `Drain`
//!   finishes, and the `Supervisor` restarts it) while checkouts wait and leases are
//!   out: every waiter ends with a connection or a typed error (`Closed`,
//!   `Draining`), none hangs; the calls on the leases end (answered, or
//!   `Closed(Aborted)`); the old leases can be dropped after the restart without
//!   harm; and the restarted pool opens `min_idle` new connections and serves;
//! - (c) a supervised pool closed while its connects are under way (held), with an
//!   exclusive and a shared waiter behind them: every waiter gets `Closed`; the held
//!   connects go with the old incarnation (they never connect, and nothing counts
//!   them), and the restarted pool counts only its own (`connecting`, `size`,
//!   `created` and the server's accepted connections agree), opens `min_idle` and
//!   serves exclusive and shared checkouts;
//! - (d) a pool whose own arbiter stops (its `stopped` runs, no `Close` or `Drain`)
//!   while a connect is held, a lease is out with a call in flight, and exclusive
//!   and shared waiters wait (through the handle and as messages): every waiter ends
//!   at once with `PoolError::Closed` (or, for a message, the actor's
//!   `MailboxError::Closed`), not at the end of its checkout timeout; the call fails
//!   with `Closed(Stopped)`; later checkouts fail at once; the held connect never
//!   reaches the server. (A supervisor stops with its arbiter, so nothing restarts
//!   here.) The wait of an eager `build` is covered by a unit test in
//!   `src/pool/mod.rs`, as its message is not public.
//! - (e) a pool whose arbiter stops while its connections run on another arbiter,
//!   and handles to it live on: its connections close (0.1 left them open and
//!   heartbeating for as long as a handle lived).
//!
//! How the fault is made: `Abort` and `Close` sent to a leased connection; a pool
//! that places its connections on a second Arbiter which the test stops (real time);
//! a supervised pool told to `Close` or `Drain` (with a timeout) while waiters and
//! leases are out; a connector that holds connects until the test releases them
//! (`Gate::Hold`); a pool started on an Arbiter of its own, which the test stops
//! (real time). The far end is `tests/pool_support`'s in-memory echo server, whose
//! `sleep:<ms>` requests are answered late.
//!
//! ```text
//! cargo test --all-features --test reliability_actor_stops
//! ```
#![cfg(feature = "testkit")]

mod pool_support;
mod reliability_common;

use std::time::Duration;

use actix::Arbiter;
use pool_support::*;
use reliability_common::{closed_reason, eventually, REAL_WAIT};
use switchboard::pool::{Checkout, CheckoutShared, Drain, ShutdownOutcome};
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::{Abort, Authority, CallError, Close, CloseReason, ConnectionId, PoolError};
use tokio::task::JoinHandle;

/// `count` calls on the lease's connection, each in its own task, each answered after
/// `ms` milliseconds; resolves with each call's result.
fn spawn_calls(
    lease: &TestLease,
    count: usize,
    ms: u64,
) -> Vec<JoinHandle<Result<bytes::Bytes, CallError>>> {
    (0..count)
        .map(|_| {
            let addr = lease.addr().clone();
            actix::spawn(async move {
                let call = switchboard::Call::new(FrameRequest::new(format!("sleep:{ms}")));
                addr.send(call).await?
            })
        })
        .collect()
}

/// Awaits every call (bounded), returning the results: one per call, so each caller
/// heard exactly once.
async fn results(
    calls: Vec<JoinHandle<Result<bytes::Bytes, CallError>>>,
    bound: std::time::Duration,
) -> Vec<Result<bytes::Bytes, CallError>> {
    let mut results = Vec::new();
    for call in calls {
        results.push(within(bound, "every caller hears", call).await.unwrap());
    }
    results
}

#[actix::test]
async fn an_aborted_connection_fails_every_pending_call_once_and_the_pool_serves_on() {
    tokio::time::pause();
    let (server, _, pool) = start_pool(config().min_idle(1).max_size(2)).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    let calls = spawn_calls(&lease, 10, 60_000);
    settle().await;
    assert_eq!(lease.in_flight(), 10);

    let reason = within(WAIT, "abort", lease.send(Abort)).await.unwrap();
    assert!(matches!(reason, CloseReason::Aborted), "{reason:?}");
    for result in results(calls, WAIT).await {
        let error = result.unwrap_err();
        assert!(
            matches!(closed_reason(&error), CloseReason::Aborted),
            "{error:?}"
        );
    }
    let late = lease.call(FrameRequest::new("after")).await.unwrap_err();
    assert!(matches!(late, CallError::Closed(_)), "{late:?}");
    drop(lease);

    let replaced = until(&pool, WAIT, |s| s.idle == 1 && !ids(s).contains(&id)).await;
    assert_eq!(replaced.counters.closed.get("aborted"), Some(&1));
    checkout_and_echo(&pool, &a, "replacement").await;
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn a_closed_connection_answers_what_comes_in_time_and_fails_the_rest_once() {
    tokio::time::pause();
    let (server, _, pool) = start_pool(config().min_idle(1).max_size(2)).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    let answered = spawn_calls(&lease, 5, 200);
    let unanswered = spawn_calls(&lease, 5, 60_000);
    settle().await;
    assert_eq!(lease.in_flight(), 10);

    let close_timeout = Duration::from_secs(1);
    let closing = lease.send(Close {
        timeout: Some(close_timeout),
    });
    settle().await;
    // Closing: no new calls.
    let refused = lease.call(FrameRequest::new("during")).await.unwrap_err();
    assert!(matches!(refused, CallError::Closing), "{refused:?}");

    for result in results(answered, WAIT).await {
        assert_eq!(&result.unwrap()[..], b"sleep:200");
    }
    for result in results(unanswered, WAIT).await {
        let error = result.unwrap_err();
        assert!(
            matches!(closed_reason(&error), CloseReason::CloseTimeout { after } if *after == close_timeout),
            "{error:?}"
        );
    }
    let reason = within(WAIT, "close", closing).await.unwrap();
    assert!(
        matches!(reason, CloseReason::CloseTimeout { .. }),
        "{reason:?}"
    );
    drop(lease);

    let replaced = until(&pool, WAIT, |s| s.idle == 1 && !ids(s).contains(&id)).await;
    assert_eq!(replaced.counters.closed.get("close_timeout"), Some(&1));
    checkout_and_echo(&pool, &a, "replacement").await;
    finish_without_leaks(&pool, &server).await;
}

/// Real time: the connections run on other arbiters, which a paused clock here would
/// not govern.
#[actix::test]
async fn connections_whose_arbiter_stops_fail_every_pending_call_and_the_pool_serves_on() {
    let bed = TestBed::new();
    let server = bed.server.clone();
    let a = server.authority();
    let (doomed, spare) = (Arbiter::new(), Arbiter::new());
    let config = config()
        .min_idle(2)
        .max_size(2)
        .maintenance_interval(Duration::from_millis(50))
        .checkout_timeout(REAL_WAIT);
    // Connections go to the two arbiters in turn: the first to `doomed`.
    let pool = within(
        REAL_WAIT,
        "eager build",
        bed.pool(config)
            .arbiters(vec![doomed.handle(), spare.handle()])
            .build(),
    )
    .await
    .unwrap();
    let first = pool.checkout(&a).await.unwrap();
    let second = pool.checkout(&a).await.unwrap();
    let calls: Vec<_> = [&first, &second]
        .into_iter()
        .map(|lease| spawn_calls(lease, 5, 60_000))
        .collect();
    eventually(REAL_WAIT, "calls in flight", || async {
        (first.in_flight() == 5 && second.in_flight() == 5).then_some(())
    })
    .await;

    doomed.stop();
    doomed.join().unwrap();
    // One of the two connections lived on `doomed`: its callers all fail, once each,
    // with `Stopped`; the other's callers are still waiting for their replies.
    let mut stopped = 0;
    let mut survivors = Vec::new();
    for (calls, lease) in calls.into_iter().zip([&first, &second]) {
        let alive = stats_alive(lease).await;
        if alive {
            survivors.push(lease.id());
            for call in calls {
                call.abort();
            }
            continue;
        }
        for result in results(calls, REAL_WAIT).await {
            let error = result.unwrap_err();
            assert!(
                matches!(closed_reason(&error), CloseReason::Stopped),
                "{error:?}"
            );
            stopped += 1;
        }
    }
    assert_eq!((stopped, survivors.len()), (5, 1));
    let dead: Vec<_> = [first.id(), second.id()]
        .into_iter()
        .filter(|id| !survivors.contains(id))
        .collect();
    drop((first, second));

    // The pool counts the dead connection out and serves on the live arbiter; a
    // replacement placed on the stopped arbiter never starts, and is counted out too.
    let lease = eventually(REAL_WAIT, "a checkout that works", || async {
        let lease = pool
            .checkout_within(&a, Duration::from_millis(200))
            .await
            .ok()?;
        if dead.contains(&lease.id()) {
            return None;
        }
        let reply = tokio::time::timeout(
            Duration::from_millis(500),
            lease.call(FrameRequest::new("alive")),
        )
        .await;
        matches!(reply, Ok(Ok(_))).then_some(lease)
    })
    .await;
    echo(&lease, "served").await;
    drop(lease);
    within(REAL_WAIT, "close", pool.close()).await;
    spare.stop();
}

/// Whether the lease's connection still answers.
async fn stats_alive(lease: &TestLease) -> bool {
    matches!(
        tokio::time::timeout(REAL_WAIT, lease.addr().send(switchboard::GetStats)).await,
        Ok(Ok(_))
    )
}

/// A supervised pool of two, both leased (one with a call in flight that would take a
/// minute), with waiters through the handle and through the actor's message.
struct Busy {
    server: Server,
    pool: TestPool,
    leases: Vec<TestLease>,
    in_flight: Vec<JoinHandle<Result<bytes::Bytes, CallError>>>,
    waiters: Vec<JoinHandle<Result<TestLease, PoolError>>>,
    by_message: Vec<JoinHandle<Result<Result<TestLease, PoolError>, actix::MailboxError>>>,
}

async fn busy_supervised_pool() -> Busy {
    let bed = TestBed::new();
    let server = bed.server.clone();
    let a = server.authority();
    let config = config()
        .min_idle(2)
        .max_size(2)
        .checkout_timeout(Duration::from_secs(600))
        .shutdown_timeout(Duration::from_secs(600));
    let pool = bed.pool(config).start_supervised();
    until(&pool, WAIT, |s| s.idle == 2).await;
    let leases = vec![
        pool.checkout(&a).await.unwrap(),
        pool.checkout(&a).await.unwrap(),
    ];
    let in_flight = spawn_calls(&leases[0], 3, 60_000);
    let waiters: Vec<_> = (0..4).map(|_| spawn_checkout(&pool, &a)).collect();
    let by_message: Vec<_> = (0..2)
        .map(|_| {
            let request = pool
                .addr()
                .send(Checkout::<ScriptedConnector, FrameProtocol>::new(a.clone()));
            actix::spawn(request)
        })
        .collect();
    let queued = until(&pool, WAIT, |s| s.waiters == 6).await;
    assert_consistent(only(&queued));
    assert_eq!(leases[0].in_flight(), 3);
    Busy {
        server,
        pool,
        leases,
        in_flight,
        waiters,
        by_message,
    }
}

/// Checks every waiter ended with `expected` (none hangs, none got a connection of
/// the pool that stopped).
async fn assert_waiters_refused(busy: &mut Busy, expected: fn(&PoolError) -> bool) {
    for waiter in busy.waiters.drain(..) {
        let result = within(WAIT, "waiter ends", waiter).await.unwrap();
        assert!(
            matches!(&result, Err(error) if expected(error)),
            "{:?}",
            result.map(|lease| lease.id())
        );
    }
    for waiter in busy.by_message.drain(..) {
        let result = within(WAIT, "waiter ends", waiter).await.unwrap();
        assert!(
            matches!(&result, Ok(Err(error)) if expected(error)),
            "{:?}",
            result.map(|r| r.map(|lease| lease.id()))
        );
    }
}

/// After a restart: old leases dropped harmlessly, `min_idle` new connections, and
/// checkouts (handle, message, shared) that work.
async fn assert_serves_after_restart(busy: Busy) {
    let Busy {
        server,
        pool,
        leases,
        ..
    } = busy;
    let a = server.authority();
    let old: std::collections::BTreeSet<_> = leases.iter().map(|lease| lease.id()).collect();
    drop(leases);
    let back = until(&pool, WAIT, |s| {
        s.idle == 2 && s.leased == 0 && s.busy == 0 && s.connecting == 0 && s.waiters == 0
    })
    .await;
    assert_consistent(only(&back));
    assert!(ids(only(&back)).is_disjoint(&old), "{back:#?}");
    let lease = within(WAIT, "checkout after restart", pool.checkout(&a))
        .await
        .unwrap();
    echo(&lease, "after restart").await;
    let by_message = within(
        WAIT,
        "checkout by message after restart",
        pool.addr()
            .send(Checkout::<ScriptedConnector, FrameProtocol>::new(a.clone())),
    )
    .await
    .unwrap()
    .unwrap();
    echo(&by_message, "by message").await;
    drop((lease, by_message));
    // A supervised pool restarts after every close, so end without closing it.
    let settled = assert_settled(&pool, &server).await;
    assert_eq!(only(&settled).size, 2);
}

#[actix::test]
async fn a_supervised_pool_closed_with_waiters_and_leases_out_answers_everyone_and_comes_back() {
    tokio::time::pause();
    let mut busy = busy_supervised_pool().await;
    let outcome = within(WAIT, "close", busy.pool.close()).await;
    assert_eq!(outcome, ShutdownOutcome::Clean);
    assert_waiters_refused(&mut busy, |e| matches!(e, PoolError::Closed)).await;
    for result in results(std::mem::take(&mut busy.in_flight), WAIT).await {
        let error = result.unwrap_err();
        assert!(
            matches!(closed_reason(&error), CloseReason::Aborted),
            "{error:?}"
        );
    }
    let error = busy.leases[1]
        .call(FrameRequest::new("old lease"))
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Closed(_)), "{error:?}");
    assert_serves_after_restart(busy).await;
}

#[actix::test]
async fn a_supervised_pool_drained_with_waiters_and_leases_out_answers_everyone_and_comes_back() {
    tokio::time::pause();
    let mut busy = busy_supervised_pool().await;
    let drain = {
        let pool = busy.pool.clone();
        actix::spawn(async move {
            pool.addr()
                .send(Drain {
                    timeout: Some(Duration::from_secs(2)),
                })
                .await
        })
    };
    assert_waiters_refused(&mut busy, |e| matches!(e, PoolError::Draining)).await;
    // The idle-less pool waits for its leases; the one returned now closes, the other
    // is still out with its calls when the drain's timeout aborts it.
    echo(&busy.leases[1], "still mine while draining").await;
    let returned = busy.leases.pop().unwrap();
    drop(returned);
    let outcome = within(WAIT, "drain", drain).await.unwrap().unwrap();
    assert_eq!(outcome, ShutdownOutcome::TimedOut { aborted: 1 });
    for result in results(std::mem::take(&mut busy.in_flight), WAIT).await {
        let error = result.unwrap_err();
        assert!(
            matches!(closed_reason(&error), CloseReason::Aborted),
            "{error:?}"
        );
    }
    assert_serves_after_restart(busy).await;
}

#[actix::test]
async fn checkouts_racing_a_supervised_pool_restart_each_end_with_a_lease_or_an_error() {
    tokio::time::pause();
    let bed = TestBed::new();
    let server = bed.server.clone();
    let a = server.authority();
    let config = config()
        .min_idle(1)
        .max_size(2)
        .checkout_timeout(Duration::from_secs(1));
    let pool = bed.pool(config).start_supervised();
    until(&pool, WAIT, |s| s.idle == 1).await;

    // Borrowers check out, make a call that takes 10 ms and return, in a loop, while
    // the pool drains and restarts, then closes and restarts, under them.
    let borrowers: Vec<_> = (0..4)
        .map(|n| {
            let (pool, a) = (pool.clone(), a.clone());
            actix::spawn(async move {
                let (mut served, mut refused) = (0, 0);
                for _ in 0..60 {
                    match within(WAIT, "checkout ends", pool.checkout(&a)).await {
                        Ok(lease) => {
                            let call = lease.call(FrameRequest::new("sleep:10"));
                            match within(WAIT, "call ends", call).await {
                                Ok(reply) => assert_eq!(&reply[..], b"sleep:10"),
                                Err(error) => assert!(
                                    matches!(error, CallError::Closed(_)),
                                    "borrower {n}: {error:?}"
                                ),
                            }
                            served += 1;
                        }
                        Err(PoolError::Closed | PoolError::Draining) => refused += 1,
                        Err(other) => panic!("borrower {n}: {other:?}"),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (served, refused)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let drained = within(WAIT, "drain", pool.drain()).await;
    assert_eq!(drained, ShutdownOutcome::Clean);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let closed = within(WAIT, "close", pool.close()).await;
    assert_eq!(closed, ShutdownOutcome::Clean);
    let (mut served, mut refused) = (0, 0);
    for borrower in borrowers {
        let (ok, no) = within(WAIT, "borrower ends", borrower).await.unwrap();
        served += ok;
        refused += no;
    }
    assert_eq!(served + refused, 4 * 60, "every checkout ended");
    assert!(
        served > 0 && refused > 0,
        "served {served}, refused {refused}"
    );
    let settled = assert_settled(&pool, &server).await;
    assert!(only(&settled).size >= 1);
    checkout_and_echo(&pool, &a, "after the races").await;
}

/// A shared checkout in a task of its own; resolves with the connection's id.
fn spawn_shared(
    pool: &TestPool,
    authority: &Authority,
) -> JoinHandle<Result<ConnectionId, PoolError>> {
    let (pool, authority) = (pool.clone(), authority.clone());
    actix::spawn(async move { pool.shared(&authority).await.map(|shared| shared.id()) })
}

/// What a checkout sent as a message to the pool actor (exclusive or shared) ended
/// with: the connection's id, the pool's error, or the actor's.
type ByMessage = JoinHandle<Result<Result<ConnectionId, PoolError>, actix::MailboxError>>;

/// An exclusive and a shared checkout sent to the pool actor as messages, each in a
/// task of its own.
fn spawn_by_message(pool: &TestPool, authority: &Authority) -> [ByMessage; 2] {
    let exclusive = pool
        .addr()
        .send(Checkout::<ScriptedConnector, FrameProtocol>::new(
            authority.clone(),
        ));
    let shared = pool
        .addr()
        .send(CheckoutShared::<ScriptedConnector, FrameProtocol>::new(
            authority.clone(),
        ));
    [
        actix::spawn(async move { exclusive.await.map(|r| r.map(|lease| lease.id())) }),
        actix::spawn(async move { shared.await.map(|r| r.map(|shared| shared.id())) }),
    ]
}

/// One waiter of each kind queued behind a held connect.
struct Waiters {
    exclusive: JoinHandle<Result<TestLease, PoolError>>,
    shared: JoinHandle<Result<ConnectionId, PoolError>>,
    by_message: [ByMessage; 2],
}

/// Queues, in this order, an exclusive checkout (behind the connect under way), a
/// shared one, and one of each sent to the pool actor as messages; returns once the
/// first two are in line, the messages sent.
async fn queue_one_of_each(pool: &TestPool, authority: &Authority, limit: Duration) -> Waiters {
    let exclusive = spawn_checkout(pool, authority);
    until(pool, limit, |s| s.waiters == 1 && s.connecting == 1).await;
    let shared = spawn_shared(pool, authority);
    until(pool, limit, |s| s.waiters == 2).await;
    let by_message = spawn_by_message(pool, authority);
    Waiters {
        exclusive,
        shared,
        by_message,
    }
}

impl Waiters {
    /// The exclusive and the shared waiter end with `PoolError::Closed` within
    /// `limit`; returns the waiters by message, whose ends the test checks.
    async fn assert_closed(self, limit: Duration) -> [ByMessage; 2] {
        let exclusive = within(limit, "exclusive waiter ends", self.exclusive)
            .await
            .unwrap();
        assert!(
            matches!(exclusive, Err(PoolError::Closed)),
            "{:?}",
            exclusive.map(|lease| lease.id())
        );
        let shared = within(limit, "shared waiter ends", self.shared)
            .await
            .unwrap();
        assert!(matches!(shared, Err(PoolError::Closed)), "{shared:?}");
        self.by_message
    }
}

#[actix::test]
async fn a_supervised_pool_closed_while_its_connects_are_held_answers_its_waiters_and_counts_right_after_the_restart(
) {
    tokio::time::pause();
    let bed = TestBed::new();
    let (server, connector) = (bed.server.clone(), bed.connector.clone());
    let a = server.authority();
    connector.set_gate(Gate::Hold);
    let config = config()
        .min_idle(1)
        .max_size(2)
        .checkout_timeout(Duration::from_secs(600));
    let pool = bed.pool(config).start_supervised();

    // The connect for `min_idle` is held; an exclusive waiter queues behind it, then
    // a shared one (whose demand starts a second connect, held too), then one of
    // each through the actor's messages.
    let waiters = queue_one_of_each(&pool, &a, WAIT).await;
    let queued = until(&pool, WAIT, |s| s.waiters == 4 && s.connecting == 2).await;
    assert_eq!(only(&queued).size, 0, "{queued:#?}");
    assert_eq!(connector.held(), 2);

    let outcome = within(WAIT, "close", pool.close()).await;
    assert_eq!(outcome, ShutdownOutcome::Clean);
    for waiter in waiters.assert_closed(WAIT).await {
        let result = within(WAIT, "waiter by message ends", waiter)
            .await
            .unwrap();
        assert!(matches!(result, Ok(Err(PoolError::Closed))), "{result:?}");
    }

    // Restarted: the held connects went with the old incarnation (nothing counts
    // them, and releasing the gate cannot make them connect); the new one holds
    // only its own connect for `min_idle`.
    let restarted = until(&pool, WAIT, |s| {
        s.connecting == 1 && s.waiters == 0 && connector.held() == 1
    })
    .await;
    assert_eq!(only(&restarted).size, 0, "{restarted:#?}");
    assert_eq!(server.accepted(), 0);
    connector.release();
    let filled = until(&pool, WAIT, |s| s.idle == 1 && s.connecting == 0).await;
    assert_consistent(only(&filled));
    assert_eq!(only(&filled).size, 1, "{filled:#?}");
    assert_eq!(connector.held(), 0);
    assert_eq!(
        server.accepted(),
        1,
        "a connect of the old incarnation got through"
    );
    assert_eq!(filled.counters.created, 1);
    assert_eq!(filled.counters.connect_failures, 0);

    // It serves: an exclusive lease and, beside it, a shared connection (a second
    // one, opened for it).
    let lease = within(WAIT, "checkout after restart", pool.checkout(&a))
        .await
        .unwrap();
    let shared = within(WAIT, "shared checkout after restart", pool.shared(&a))
        .await
        .unwrap();
    assert_ne!(lease.id(), shared.id());
    echo(&lease, "exclusive after restart").await;
    let reply = within(
        WAIT,
        "shared call",
        shared.call(FrameRequest::new("shared")),
    )
    .await;
    assert_eq!(&reply.unwrap()[..], b"shared");
    drop((lease, shared));
    let settled = assert_settled(&pool, &server).await;
    assert_eq!(only(&settled).size, 2);
    assert_eq!(server.accepted(), 2);
    assert_eq!(settled.counters.created, 2);
}

/// Starts a supervised pool over `connector` on `arbiter`; returns its handle.
async fn start_on(
    arbiter: &Arbiter,
    connector: ScriptedConnector,
    authority: Authority,
    config: switchboard::PoolConfigBuilder,
) -> TestPool {
    let config = config.build().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = arbiter.spawn_fn(move || {
        let pool = switchboard::Pool::builder(connector, FrameProtocol::default())
            .config(config)
            .connection(connection_config())
            .authority(authority)
            .start_supervised();
        let _ = tx.send(pool);
    });
    assert!(spawned, "the arbiter runs");
    within(REAL_WAIT, "the pool starts on its arbiter", rx)
        .await
        .unwrap()
}

/// Real time: the pool runs on an arbiter of its own, which a paused clock here would
/// not govern. The bound on every wait (`REAL_WAIT`, 10 s) is far below the waiters'
/// `checkout_timeout` (600 s): a waiter that is not told ends the test.
#[actix::test]
async fn a_pool_whose_arbiter_stops_fails_every_waiter_at_once_and_refuses_later_checkouts() {
    let bed = TestBed::new();
    let (server, connector) = (bed.server.clone(), bed.connector.clone());
    let a = server.authority();
    let doomed = Arbiter::new();
    let config = config()
        .min_idle(1)
        .max_size(2)
        .checkout_timeout(Duration::from_secs(600));
    let pool = start_on(&doomed, connector.clone(), a.clone(), config).await;
    until(&pool, REAL_WAIT, |s| s.idle == 1).await;

    // The one connection leased with a call in flight; the connect for the next one
    // held, with an exclusive waiter behind it, a shared one behind that, and one of
    // each through the actor's messages.
    let lease = pool.checkout(&a).await.unwrap();
    let calls = spawn_calls(&lease, 1, 60_000);
    connector.set_gate(Gate::Hold);
    let waiters = queue_one_of_each(&pool, &a, REAL_WAIT).await;
    let queued = until(&pool, REAL_WAIT, |s| s.waiters == 4 && s.leased == 1).await;
    assert_eq!(only(&queued).connecting, 1, "{queued:#?}");
    eventually(REAL_WAIT, "the connect is held", || async {
        (connector.held() == 1).then_some(())
    })
    .await;
    eventually(REAL_WAIT, "the call is in flight", || async {
        (lease.in_flight() == 1).then_some(())
    })
    .await;

    doomed.stop();
    doomed.join().unwrap();
    // Everyone hears at once (the pool's `stopped` fails its waiters), not at the end
    // of their checkout timeout.
    let by_message = waiters.assert_closed(REAL_WAIT).await;
    // Checkouts by message answer from a task on the pool's arbiter, which went with
    // it: the sender hears that the actor is gone.
    for waiter in by_message {
        let result = within(REAL_WAIT, "waiter by message ends", waiter)
            .await
            .unwrap();
        assert!(
            matches!(
                result,
                Ok(Err(PoolError::Closed)) | Err(actix::MailboxError::Closed)
            ),
            "{result:?}"
        );
    }
    for result in results(calls, REAL_WAIT).await {
        let error = result.unwrap_err();
        assert!(
            matches!(closed_reason(&error), CloseReason::Stopped),
            "{error:?}"
        );
    }

    // Later checkouts fail at once, by the handle (also for an authority it never
    // had) and by message; the status says the pool is gone.
    let later = within(REAL_WAIT, "checkout after the stop", pool.checkout(&a)).await;
    assert!(
        matches!(later, Err(PoolError::Closed)),
        "{:?}",
        later.map(|l| l.id())
    );
    let later = within(REAL_WAIT, "shared after the stop", pool.shared(&a)).await;
    assert!(
        matches!(later, Err(PoolError::Closed)),
        "{:?}",
        later.map(|s| s.id())
    );
    let elsewhere = Authority::memory("elsewhere");
    let later = within(REAL_WAIT, "new authority", pool.checkout(&elsewhere)).await;
    assert!(
        matches!(later, Err(PoolError::Closed)),
        "{:?}",
        later.map(|l| l.id())
    );
    for waiter in spawn_by_message(&pool, &a) {
        let result = within(REAL_WAIT, "message after the stop", waiter)
            .await
            .unwrap();
        assert!(
            matches!(result, Err(actix::MailboxError::Closed)),
            "{result:?}"
        );
    }
    assert!(matches!(pool.status().await, Err(PoolError::Closed)));
    assert_eq!(pool.close().await, ShutdownOutcome::AlreadyClosed);

    // The held connect went with the arbiter and never reached the server; the one
    // connection is closed on the server's side too; the old lease drops harmlessly.
    eventually(REAL_WAIT, "the held connect is dropped", || async {
        (connector.held() == 0).then_some(())
    })
    .await;
    drop(lease);
    until_server_open(&server, 0, REAL_WAIT).await;
    assert_eq!(server.accepted(), 1);
}

/// Real time, as (d). Issue 15, item 15.
#[actix::test]
async fn a_pool_whose_arbiter_stops_closes_its_connections_on_other_arbiters() {
    let bed = TestBed::new();
    let server = bed.server.clone();
    let a = server.authority();
    let (doomed, spare) = (Arbiter::new(), Arbiter::new());
    let (connector, config, placed_on) = (
        bed.connector.clone(),
        config().min_idle(2).max_size(3).build().unwrap(),
        spare.handle(),
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    assert!(doomed.spawn_fn(move || {
        let pool = switchboard::Pool::builder(connector, FrameProtocol::default())
            .config(config)
            .connection(connection_config())
            .authority(Authority::memory("db"))
            .arbiters(vec![placed_on])
            .start();
        let _ = tx.send(pool);
    }));
    let pool = within(REAL_WAIT, "the pool starts on its arbiter", rx)
        .await
        .unwrap();
    until(&pool, REAL_WAIT, |s| s.idle == 2).await;
    // A shared handle and a lease outlive the pool's arbiter, as the handle does.
    let shared = pool.shared(&a).await.unwrap();
    let lease = pool.checkout(&a).await.unwrap();
    until_server_open(&server, 2, REAL_WAIT).await;

    doomed.stop();
    doomed.join().unwrap();
    // The connections live on `spare`, which runs on; the pool that owned them is
    // gone, so they close.
    until_server_open(&server, 0, REAL_WAIT).await;
    let call = shared.call(FrameRequest::new("after")).await;
    assert!(call.is_err(), "{call:?}");
    drop((shared, lease, pool));
    spare.stop();
    spare.join().unwrap();
}
