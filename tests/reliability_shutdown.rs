//! Reliability scenario 14 (issue 5): `Drain` and `Close` with calls pending, alone
//! and two at once.
//!
//! What a user of the Pool can rely on:
//! - `Drain` refuses new checkouts (handle, message, shared) and fails the waiting
//!   ones with `PoolError::Draining`, lets every call in flight finish with its reply
//!   (on leases and on shared connections, which then refuse new calls with
//!   `CallError::Closing`), lets a lease go on working until it is returned, and
//!   resolves `ShutdownOutcome::Clean` once every connection has closed;
//! - `Close` fails every pending call exactly once with
//!   `CallError::Closed(CloseReason::Aborted)` and every waiter with
//!   `PoolError::Closed`, at once, and resolves `Clean`;
//! - two shutdowns at once (drain+drain, drain+close, close+drain, close+close) both
//!   return, within a bound, with the same outcome: `Clean` when a close aborted what
//!   was out, `TimedOut { aborted: 1 }` when two drains ran out of time on a lease
//!   never returned; a shutdown after the pool closed returns `AlreadyClosed`, and
//!   checkouts then fail with `PoolError::Closed`;
//! - every shutdown waits at most its own timeout, also a `Drain` sent while another
//!   drain is under way (`a_second_drain_returns_within_its_own_timeout`; it used to
//!   wait for the first one's).
//!
//! How the fault is made: pools over `tests/pool_support`'s in-memory echo server
//! (virtual time), with leases and shared connections carrying `sleep:<ms>` calls
//! that are answered late or not within the test, and waiters queued behind them.
//!
//! ```text
//! cargo test --all-features --test reliability_shutdown
//! ```
#![cfg(feature = "testkit")]

mod pool_support;
mod reliability_common;

use std::time::Duration;

use bytes::Bytes;
use pool_support::*;
use reliability_common::closed_reason;
use switchboard::pool::{Checkout, Drain, ShutdownOutcome};
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::{CallError, CloseReason, PoolError, SharedConnection};
use tokio::task::JoinHandle;
use tokio::time::Instant;

type CallTask = JoinHandle<Result<Bytes, CallError>>;

/// `count` calls of `sleep:<ms>` on `addr`, each in its own task.
fn spawn_calls(
    addr: &actix::Addr<switchboard::Connection<tokio::io::DuplexStream, FrameProtocol>>,
    count: usize,
    ms: u64,
) -> Vec<CallTask> {
    (0..count)
        .map(|_| {
            let addr = addr.clone();
            actix::spawn(async move {
                let call = switchboard::Call::new(FrameRequest::new(format!("sleep:{ms}")));
                addr.send(call).await?
            })
        })
        .collect()
}

/// Every call's result (bounded): one per call, so each caller heard exactly once.
async fn results(calls: Vec<CallTask>) -> Vec<Result<Bytes, CallError>> {
    let mut results = Vec::new();
    for call in calls {
        results.push(within(WAIT, "every caller hears", call).await.unwrap());
    }
    results
}

/// A checkout through the actor's message, in a task of its own.
fn spawn_message_checkout(
    pool: &TestPool,
    authority: &switchboard::Authority,
) -> JoinHandle<Result<Result<TestLease, PoolError>, actix::MailboxError>> {
    let request = pool
        .addr()
        .send(Checkout::<ScriptedConnector, FrameProtocol>::new(
            authority.clone(),
        ));
    actix::spawn(request)
}

/// After a shutdown: nothing more is served and every further shutdown says so.
async fn assert_closed_for_good(pool: &TestPool, server: &Server) {
    let a = server.authority();
    assert!(matches!(pool.checkout(&a).await, Err(PoolError::Closed)));
    assert!(matches!(pool.shared(&a).await, Err(PoolError::Closed)));
    assert!(matches!(pool.status().await, Err(PoolError::Closed)));
    assert_eq!(pool.drain().await, ShutdownOutcome::AlreadyClosed);
    assert_eq!(pool.close().await, ShutdownOutcome::AlreadyClosed);
    until_server_open(server, 0, WAIT).await;
}

#[actix::test]
async fn a_drain_lets_calls_in_flight_finish_and_refuses_new_checkouts() {
    tokio::time::pause();
    let config = config()
        .min_idle(3)
        .max_size(3)
        .checkout_timeout(Duration::from_secs(60))
        .shutdown_timeout(Duration::from_secs(30));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let held = pool.checkout(&a).await.unwrap();
    let shared: SharedConnection<_, _> = pool.shared(&a).await.unwrap();
    let on_lease = spawn_calls(lease.addr(), 3, 300);
    let on_shared = spawn_calls(shared.addr(), 3, 300);
    let waiter = spawn_checkout(&pool, &a);
    let message_waiter = spawn_message_checkout(&pool, &a);
    until(&pool, WAIT, |s| s.waiters == 2).await;
    settle().await;
    assert_eq!((lease.in_flight(), shared.in_flight()), (3, 3));

    let drain = {
        let pool = pool.clone();
        actix::spawn(async move { pool.drain().await })
    };
    // Waiting checkouts are refused at once, and so is every new one.
    let refused = within(WAIT, "waiter refused", waiter).await.unwrap();
    assert!(
        matches!(refused, Err(PoolError::Draining)),
        "{:?}",
        refused.map(|l| l.id())
    );
    let refused = within(WAIT, "waiter refused", message_waiter)
        .await
        .unwrap();
    assert!(matches!(refused, Ok(Err(PoolError::Draining))));
    assert!(matches!(pool.checkout(&a).await, Err(PoolError::Draining)));
    assert!(matches!(pool.shared(&a).await, Err(PoolError::Draining)));
    let by_message = spawn_message_checkout(&pool, &a);
    let refused = within(WAIT, "message checkout refused", by_message)
        .await
        .unwrap();
    assert!(matches!(refused, Ok(Err(PoolError::Draining))));

    // The shared connection takes no new calls, but every call in flight finishes.
    let late = within(
        WAIT,
        "call on the shared",
        shared.call(FrameRequest::new("new")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            late,
            CallError::Closing | CallError::Closed(CloseReason::Closed)
        ),
        "{late:?}"
    );
    for result in results(on_lease)
        .await
        .into_iter()
        .chain(results(on_shared).await)
    {
        assert_eq!(&result.unwrap()[..], b"sleep:300");
    }
    // The lease goes on working until it is returned; the drain waits for it.
    echo(&lease, "still mine").await;
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!drain.is_finished(), "the drain waits for the lease");
    let draining = status(&pool).await;
    assert_eq!(
        (only(&draining).size, only(&draining).leased),
        (1, 1),
        "{draining:#?}"
    );
    assert_eq!(server.open(), 1);

    drop(lease);
    let outcome = within(WAIT, "drain resolves", drain).await.unwrap();
    assert_eq!(outcome, ShutdownOutcome::Clean);
    drop(shared);
    assert_closed_for_good(&pool, &server).await;
}

#[actix::test]
async fn a_close_fails_every_pending_call_exactly_once_and_every_waiter_at_once() {
    tokio::time::pause();
    let config = config()
        .min_idle(3)
        .max_size(3)
        .checkout_timeout(Duration::from_secs(60))
        .shutdown_timeout(Duration::from_secs(30));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let first = pool.checkout(&a).await.unwrap();
    let second = pool.checkout(&a).await.unwrap();
    let shared = pool.shared(&a).await.unwrap();
    let mut calls = spawn_calls(first.addr(), 5, 60_000);
    calls.extend(spawn_calls(second.addr(), 5, 60_000));
    calls.extend(spawn_calls(shared.addr(), 5, 60_000));
    let waiters: Vec<_> = (0..3).map(|_| spawn_checkout(&pool, &a)).collect();
    let message_waiter = spawn_message_checkout(&pool, &a);
    until(&pool, WAIT, |s| s.waiters == 4).await;
    settle().await;
    assert_eq!(
        (first.in_flight(), second.in_flight(), shared.in_flight()),
        (5, 5, 5)
    );

    let started = Instant::now();
    let outcome = within(WAIT, "close", pool.close()).await;
    assert_eq!(outcome, ShutdownOutcome::Clean);
    let results = results(calls).await;
    assert_eq!(results.len(), 15);
    for result in results {
        let error = result.unwrap_err();
        assert!(
            matches!(closed_reason(&error), CloseReason::Aborted),
            "{error:?}"
        );
    }
    for waiter in waiters {
        let result = within(WAIT, "waiter", waiter).await.unwrap();
        assert!(
            matches!(result, Err(PoolError::Closed)),
            "{:?}",
            result.map(|l| l.id())
        );
    }
    let result = within(WAIT, "waiter", message_waiter).await.unwrap();
    assert!(matches!(result, Ok(Err(PoolError::Closed))));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "not at once: {:?}",
        started.elapsed()
    );

    // The leases' connections are gone: calls fail, dropping them is harmless.
    let error = first.call(FrameRequest::new("after")).await.unwrap_err();
    assert!(matches!(error, CallError::Closed(_)), "{error:?}");
    drop((first, second, shared));
    assert_closed_for_good(&pool, &server).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    Drain,
    Close,
}

/// Two shutdowns sent together while a lease carries a call that would take a
/// minute; both must return (bounded) with `expected`, and the call must end once.
async fn two_shutdowns_at_once(first: Shutdown, second: Shutdown, expected: ShutdownOutcome) {
    tokio::time::pause();
    let shutdown_timeout = Duration::from_secs(2);
    let config = config()
        .min_idle(2)
        .max_size(2)
        .shutdown_timeout(shutdown_timeout);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let calls = spawn_calls(lease.addr(), 1, 60_000);
    settle().await;
    assert_eq!(lease.in_flight(), 1);

    let run = |how: Shutdown| {
        let pool = pool.clone();
        actix::spawn(async move {
            let outcome = match how {
                Shutdown::Drain => pool.drain().await,
                Shutdown::Close => pool.close().await,
            };
            (outcome, Instant::now())
        })
    };
    let started = Instant::now();
    let one = run(first);
    let two = run(second);
    let (one, one_at) = within(WAIT, "first shutdown", one).await.unwrap();
    let (two, two_at) = within(WAIT, "second shutdown", two).await.unwrap();
    assert_eq!((one, two), (expected, expected), "{first:?} + {second:?}");
    // Neither waited past the shutdown timeout; with a close, neither waited at all.
    let bound = if first == Shutdown::Close || second == Shutdown::Close {
        Duration::from_millis(100)
    } else {
        shutdown_timeout + Duration::from_millis(100)
    };
    for at in [one_at, two_at] {
        assert!(
            at - started <= bound,
            "{first:?} + {second:?}: {:?}",
            at - started
        );
    }

    let result = results(calls).await.pop().unwrap();
    let error = result.unwrap_err();
    assert!(
        matches!(closed_reason(&error), CloseReason::Aborted),
        "{error:?}"
    );
    drop(lease);
    assert_closed_for_good(&pool, &server).await;
}

#[actix::test]
async fn two_drains_at_once_both_time_out_on_a_lease_never_returned() {
    two_shutdowns_at_once(
        Shutdown::Drain,
        Shutdown::Drain,
        ShutdownOutcome::TimedOut { aborted: 1 },
    )
    .await;
}

#[actix::test]
async fn a_drain_and_a_close_at_once_both_return_clean() {
    two_shutdowns_at_once(Shutdown::Drain, Shutdown::Close, ShutdownOutcome::Clean).await;
}

#[actix::test]
async fn a_close_and_a_drain_at_once_both_return_clean() {
    two_shutdowns_at_once(Shutdown::Close, Shutdown::Drain, ShutdownOutcome::Clean).await;
}

#[actix::test]
async fn two_closes_at_once_both_return_clean() {
    two_shutdowns_at_once(Shutdown::Close, Shutdown::Close, ShutdownOutcome::Clean).await;
}

/// A drain with a short timeout, sent while a drain with a long one is under way,
/// returns at its own timeout: `Drain::timeout` bounds that caller's wait.
///
/// `Pool::begin_shutdown` used to return early for a drain while the pool was
/// already draining, before arming the timer for the new drain's timeout, so this
/// caller waited for the first drain's 60 s instead of its own 1 s.
#[actix::test]
async fn a_second_drain_returns_within_its_own_timeout() {
    tokio::time::pause();
    let config = config().min_idle(1).max_size(1);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();

    let drain = |timeout: Duration| {
        let request = pool.addr().send(Drain {
            timeout: Some(timeout),
        });
        actix::spawn(async move {
            let outcome = request.await.unwrap();
            (outcome, Instant::now())
        })
    };
    let started = Instant::now();
    let patient = drain(Duration::from_secs(60));
    settle().await;
    let hurried = drain(Duration::from_secs(1));
    let (outcome, at) = within(Duration::from_secs(120), "the hurried drain", hurried)
        .await
        .unwrap();
    let waited = at - started;
    assert!(
        waited <= Duration::from_secs(2),
        "a drain with a 1 s timeout returned after {waited:?} ({outcome:?})"
    );
    drop(lease);
    let (patient, _) = within(Duration::from_secs(120), "the patient drain", patient)
        .await
        .unwrap();
    // The hurried drain's timeout ended the shutdown for both: the lease still out
    // was aborted, and both callers hear the same outcome.
    assert_eq!(outcome, ShutdownOutcome::TimedOut { aborted: 1 });
    assert_eq!(patient, outcome);
    until_server_open(&server, 0, WAIT).await;
}
