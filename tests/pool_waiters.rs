//! Waiting in line: checkouts that find no idle connection are served first come,
//! first served; past `max_waiters` a checkout fails at once; a waiter that times out
//! or is cancelled leaves the line and holds nothing; broken connections are replaced
//! without starving anyone; the `Checkout` message behaves like `PoolHandle::checkout`.

mod pool_support;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use pool_support::*;
use switchboard::pool::{AuthorityStatus, Checkout};
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::{Authority, CallError, ConnectionId, PoolError};
use tokio::time::Instant;

/// A pool of `max_size` connections, open before the test starts, and every one of
/// them leased (`held`): the next checkout waits in line.
async fn start_with_every_connection_leased(
    max_size: usize,
) -> (Server, TestPool, Authority, Vec<TestLease>) {
    let (server, _, pool) = start_pool(config().min_idle(max_size).max_size(max_size)).await;
    let a = server.authority();
    let mut held = Vec::new();
    for _ in 0..max_size {
        held.push(pool.checkout(&a).await.unwrap());
    }
    (server, pool, a, held)
}

/// A pool of one connection, open before the test starts, and that connection leased
/// (`held`): the next checkout waits in line.
async fn start_with_the_only_connection_leased() -> (Server, TestPool, Authority, TestLease) {
    let (server, pool, a, mut held) = start_with_every_connection_leased(1).await;
    (server, pool, a, held.remove(0))
}

/// Waits until exactly `count` checkouts wait in line.
async fn waiters(pool: &TestPool, count: usize) -> AuthorityStatus {
    let status = until(pool, WAIT, |s| s.waiters == count).await;
    only(&status).clone()
}

#[actix::test]
async fn fifty_waiters_on_two_connections_are_served_in_arrival_order() {
    tokio::time::pause();
    // Empty at first: the first two waiters wait for connections to open, the rest
    // for connections to come back.
    let (server, _, pool) = start_pool(config().min_idle(0).max_size(2)).await;
    let a = server.authority();
    let arrived = Rc::new(RefCell::new(Vec::new()));
    let served = Rc::new(RefCell::new(Vec::new()));
    let mut borrowers = Vec::new();
    for n in 0..50usize {
        let (pool, a) = (pool.clone(), a.clone());
        let (arrived, served) = (arrived.clone(), served.clone());
        borrowers.push(actix::spawn(async move {
            // The group is known, so the checkout joins the line in this same poll:
            // the arrival order is the order in the line.
            arrived.borrow_mut().push(n);
            let lease = pool.checkout(&a).await?;
            served.borrow_mut().push(n);
            echo(&lease, &format!("borrower {n}")).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, PoolError>(lease.id())
        }));
    }
    let status = until(&pool, WAIT, |s| s.waiters >= 48).await;
    assert!(only(&status).size <= 2, "{status:#?}");

    for (n, borrower) in borrowers.into_iter().enumerate() {
        let served = within(WAIT, "borrower", borrower).await.unwrap();
        served.unwrap_or_else(|error| panic!("borrower {n}: {error}"));
    }
    assert_eq!(arrived.borrow().len(), 50);
    assert_eq!(
        *served.borrow(),
        *arrived.borrow(),
        "served in arrival order"
    );

    let status = assert_all_returned(&pool).await;
    assert_eq!(status.size, 2);
    assert_eq!(status.checkouts.waited, 50);
    assert_eq!(status.checkouts.timed_out, 0);
    assert_eq!(status.checkouts.failed, 0);
    // Two connections served everyone: none was opened past `max_size` or churned.
    assert_eq!(server.accepted(), 2);
}

#[actix::test]
async fn a_returned_connection_goes_to_the_longest_waiter_not_a_newcomer() {
    tokio::time::pause();
    let (_server, pool, a, held) = start_with_the_only_connection_leased().await;
    let id = held.id();

    let first = spawn_checkout(&pool, &a);
    waiters(&pool, 1).await;
    let second = spawn_checkout(&pool, &a);
    waiters(&pool, 2).await;

    drop(held);
    let first = within(WAIT, "first waiter", first).await.unwrap().unwrap();
    assert_eq!(first.id(), id);
    // A newcomer finds no idle connection and lines up behind the second waiter.
    let newcomer = spawn_checkout(&pool, &a);
    let status = waiters(&pool, 2).await;
    assert_eq!(status.idle, 0);

    drop(first);
    let second = within(WAIT, "second waiter", second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.id(), id);
    let status = waiters(&pool, 1).await;
    assert!(!newcomer.is_finished(), "the newcomer jumped the line");
    assert_eq!(status.leased, 1);

    drop(second);
    let newcomer = within(WAIT, "newcomer", newcomer).await.unwrap().unwrap();
    echo(&newcomer, "newcomer").await;
    drop(newcomer);

    let status = assert_all_returned(&pool).await;
    assert_eq!(status.size, 1);
    assert_eq!(status.checkouts.waited, 3);
}

#[actix::test]
async fn past_max_waiters_a_checkout_fails_at_once() {
    tokio::time::pause();
    let config = config().min_idle(1).max_size(1).max_waiters(3);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let held = pool.checkout(&a).await.unwrap();
    let mut line: Vec<_> = (0..3)
        .map(|n| {
            let waiter = spawn_checkout(&pool, &a);
            (n, waiter)
        })
        .collect();
    waiters(&pool, 3).await;

    let started = Instant::now();
    let error = pool.checkout(&a).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1),
        "refused after {:?}",
        started.elapsed()
    );
    match &error {
        PoolError::TooManyWaiters { authority, limit } => {
            assert_eq!(authority, &a);
            assert_eq!(*limit, 3);
        }
        other => panic!("expected TooManyWaiters, got {other:?}"),
    }
    let status = waiters(&pool, 3).await;
    assert_eq!(status.checkouts.refused, 1);

    // Once the first waiter is served there is room in the line again.
    drop(held);
    let (_, first) = line.remove(0);
    let first = within(WAIT, "first waiter", first).await.unwrap().unwrap();
    waiters(&pool, 2).await;
    line.push((3, spawn_checkout(&pool, &a)));
    waiters(&pool, 3).await;

    drop(first);
    for (n, waiter) in line {
        let lease = within(WAIT, "waiter", waiter)
            .await
            .unwrap()
            .unwrap_or_else(|error| panic!("waiter {n}: {error}"));
        echo(&lease, "in line").await;
    }

    let status = assert_all_returned(&pool).await;
    assert_eq!(status.checkouts.refused, 1);
    assert_eq!(status.checkouts.waited, 4);
}

#[actix::test]
async fn a_waiter_that_times_out_gets_timeout_and_leaves_the_line() {
    tokio::time::pause();
    let (_server, pool, a, held) = start_with_the_only_connection_leased().await;
    let id = held.id();

    let patience = Duration::from_millis(300);
    let impatient = {
        let (pool, a) = (pool.clone(), a.clone());
        actix::spawn(async move { pool.checkout_within(&a, patience).await })
    };
    waiters(&pool, 1).await;
    let started = Instant::now();
    let patient = spawn_checkout(&pool, &a);
    waiters(&pool, 2).await;

    let error = within(WAIT, "impatient waiter", impatient)
        .await
        .unwrap()
        .unwrap_err();
    let (waited, last_connect_error) = assert_timed_out(&error, &a, patience);
    assert!(waited < patience + Duration::from_millis(50), "{waited:?}");
    assert!(last_connect_error.is_none(), "{last_connect_error:?}");
    assert!(started.elapsed() < patience + Duration::from_millis(50));
    // It left the line: only the patient waiter is still there.
    let status = waiters(&pool, 1).await;
    assert_eq!(status.checkouts.timed_out, 1);

    drop(held);
    let lease = within(WAIT, "patient waiter", patient)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.id(), id);
    echo(&lease, "patient").await;
    drop(lease);

    let status = assert_all_returned(&pool).await;
    assert_eq!(status.checkouts.timed_out, 1);
    assert_eq!(status.checkouts.waited, 1);
}

#[actix::test]
async fn a_cancelled_checkout_leaves_the_line_and_holds_nothing() {
    tokio::time::pause();
    let (server, pool, a, held) = start_with_the_only_connection_leased().await;
    let id = held.id();

    // Given up by a timeout around the checkout future.
    let given_up = tokio::time::timeout(Duration::from_millis(100), pool.checkout(&a)).await;
    assert!(given_up.is_err(), "nothing was free: {given_up:?}");
    let status = waiters(&pool, 0).await;
    assert_eq!(status.checkouts.timed_out, 0, "cancelled, not timed out");

    // Given up by aborting the task that waits.
    let aborted = spawn_checkout(&pool, &a);
    waiters(&pool, 1).await;
    aborted.abort();
    let aborted = within(WAIT, "aborted checkout", aborted).await;
    assert!(aborted.unwrap_err().is_cancelled());
    waiters(&pool, 0).await;

    // The connection returned goes to the next real waiter, not to a ghost.
    let next = spawn_checkout(&pool, &a);
    waiters(&pool, 1).await;
    drop(held);
    let lease = within(WAIT, "next waiter", next).await.unwrap().unwrap();
    assert_eq!(lease.id(), id);
    echo(&lease, "after the cancelled ones").await;
    drop(lease);

    // And later checkouts get it straight from the idle stack.
    let started = Instant::now();
    let lease = pool.checkout(&a).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(lease.id(), id);
    drop(lease);

    let status = assert_all_returned(&pool).await;
    assert_eq!(status.size, 1);
    assert_eq!(status.checkouts.waited, 1);
    assert_eq!(status.checkouts.timed_out, 0);
    assert_eq!(server.accepted(), 1);
}

#[actix::test]
async fn a_checkout_cancelled_as_it_is_served_returns_the_connection() {
    tokio::time::pause();
    let (_server, pool, a, held) = start_with_the_only_connection_leased().await;
    let id = held.id();

    let waiter = spawn_checkout(&pool, &a);
    waiters(&pool, 1).await;
    // The return hands the lease to the waiter at once; the waiter is aborted before
    // it runs to pick it up.
    drop(held);
    waiter.abort();
    let waiter = within(WAIT, "aborted waiter", waiter).await;
    assert!(waiter.unwrap_err().is_cancelled());

    let status = until(&pool, WAIT, |s| s.idle == 1).await;
    assert_eq!(only(&status).leased, 0);
    let lease = pool.checkout(&a).await.unwrap();
    assert_eq!(lease.id(), id);
    echo(&lease, "after the abort").await;
    drop(lease);

    let status = assert_all_returned(&pool).await;
    assert_eq!(status.size, 1);
}

/// A borrower that waits for a connection, calls through it, and holds it a moment.
/// Retries when the connection it got turns out to be broken (a call fails with
/// `Closed`), at most `tries` times. Returns the connection that worked and how many
/// broken ones it got first.
fn spawn_borrower(
    pool: &TestPool,
    authority: &Authority,
    n: usize,
    tries: usize,
) -> tokio::task::JoinHandle<(ConnectionId, usize)> {
    let (pool, authority) = (pool.clone(), authority.clone());
    actix::spawn(async move {
        let mut broken = 0;
        for _ in 0..tries {
            let lease = pool
                .checkout(&authority)
                .await
                .unwrap_or_else(|error| panic!("borrower {n}: {error}"));
            let what = format!("borrower {n}");
            match lease.call(FrameRequest::new(what.clone())).await {
                Ok(reply) => {
                    assert_eq!(&reply[..], what.as_bytes());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return (lease.id(), broken);
                }
                Err(CallError::Closed(_)) => broken += 1,
                Err(error) => panic!("borrower {n}: unexpected {error:?}"),
            }
        }
        panic!("borrower {n}: {broken} broken connections in a row");
    })
}

#[actix::test]
async fn connections_killed_while_leased_are_replaced_for_the_waiters() {
    tokio::time::pause();
    let (server, pool, a, held) = start_with_every_connection_leased(5).await;
    let old: Vec<ConnectionId> = held.iter().map(|lease| lease.id()).collect();
    let borrowers: Vec<_> = (0..10).map(|n| spawn_borrower(&pool, &a, n, 1)).collect();
    waiters(&pool, 10).await;

    server.kill_all();
    for lease in &held {
        let error = within(WAIT, "call on a killed connection", lease.call("x"))
            .await
            .unwrap_err();
        assert!(matches!(error, CallError::Closed(_)), "{error:?}");
    }
    drop(held);

    for (n, borrower) in borrowers.into_iter().enumerate() {
        let (id, broken) = within(WAIT, "borrower", borrower).await.unwrap();
        assert_eq!(broken, 0, "borrower {n} got a broken connection");
        assert!(
            !old.contains(&id),
            "borrower {n} got killed connection {id:?}"
        );
    }

    let status = assert_all_returned(&pool).await;
    assert_eq!(status.size, 5);
    assert!(status.connections.iter().all(|c| !old.contains(&c.id)));
    assert_eq!(status.checkouts.waited, 10);
    assert_eq!(status.checkouts.timed_out, 0);
    assert_eq!(server.accepted(), 10);
}

#[actix::test]
async fn broken_connections_returned_before_the_pool_notices_do_not_starve_waiters() {
    tokio::time::pause();
    let (server, pool, a, held) = start_with_every_connection_leased(5).await;
    let borrowers: Vec<_> = (0..10).map(|n| spawn_borrower(&pool, &a, n, 4)).collect();
    waiters(&pool, 10).await;

    // Killed and returned at once: the pool cannot know yet, and hands them on.
    server.kill_all();
    drop(held);
    // More die later, while waiters still wait and borrowers hold leases.
    tokio::time::sleep(Duration::from_millis(30)).await;
    server.kill(2);

    let mut broken = 0;
    for borrower in borrowers {
        broken += within(WAIT, "borrower", borrower).await.unwrap().1;
    }
    // Each killed connection fails at most one call: a borrower that saw it broken
    // and dropped it does not get it handed to the next waiter.
    assert!(broken <= 7, "{broken} calls met broken connections");

    let status = until(&pool, WAIT, |s| s.size == 5 && s.idle == 5).await;
    assert_consistent(only(&status));
    let status = assert_all_returned(&pool).await;
    assert_eq!(status.checkouts.timed_out, 0);
    assert_eq!(status.checkouts.failed, 0);
    assert_eq!(status.size, 5);
}

#[actix::test]
async fn the_checkout_message_works_like_the_handle() {
    tokio::time::pause();
    let config = config().min_idle(1).max_size(1).max_waiters(3);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let send = |checkout: Checkout<ScriptedConnector, FrameProtocol>| {
        let addr = pool.addr().clone();
        actix::spawn(async move { addr.send(checkout).await.expect("pool running") })
    };

    // Served at once from the idle stack.
    let lease = within(WAIT, "checkout message", send(Checkout::new(a.clone())))
        .await
        .unwrap()
        .unwrap();
    let id = lease.id();
    echo(&lease, "by message").await;

    // Waits in line with handle checkouts, first come, first served.
    let order = Rc::new(RefCell::new(Vec::new()));
    let record = |name: &'static str, waiter: tokio::task::JoinHandle<_>| {
        let order = order.clone();
        actix::spawn(async move {
            let result: Result<switchboard::Lease<_, FrameProtocol>, PoolError> =
                waiter.await.unwrap();
            let lease = result.unwrap_or_else(|error| panic!("{name}: {error}"));
            order.borrow_mut().push(name);
            echo(&lease, name).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        })
    };
    let by_handle = record("handle 1", spawn_checkout(&pool, &a));
    waiters(&pool, 1).await;
    let by_message = record("message", send(Checkout::new(a.clone())));
    waiters(&pool, 2).await;
    let by_handle_again = record("handle 2", spawn_checkout(&pool, &a));
    waiters(&pool, 3).await;

    // Past `max_waiters`, refused at once.
    let started = Instant::now();
    let error = within(WAIT, "refused", send(Checkout::new(a.clone())))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(error, PoolError::TooManyWaiters { limit: 3, .. }),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(1));

    drop(lease);
    for served in [by_handle, by_message, by_handle_again] {
        within(WAIT, "served", served).await.unwrap();
    }
    assert_eq!(*order.borrow(), ["handle 1", "message", "handle 2"]);

    // Its own timeout: a `Timeout` error, and it leaves the line.
    let held = pool.checkout(&a).await.unwrap();
    assert_eq!(held.id(), id);
    let patience = Duration::from_millis(300);
    let error = within(
        WAIT,
        "timed out",
        send(Checkout::new(a.clone()).timeout(patience)),
    )
    .await
    .unwrap()
    .unwrap_err();
    match &error {
        PoolError::Timeout { waited, .. } => assert!(*waited >= patience, "{waited:?}"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    waiters(&pool, 0).await;
    drop(held);

    let status = assert_all_returned(&pool).await;
    assert_eq!(status.size, 1);
    assert_eq!(status.checkouts.refused, 1);
    assert_eq!(status.checkouts.timed_out, 1);
    assert_eq!(status.checkouts.waited, 3);
}

#[actix::test]

async fn a_dropped_checkout_message_leaves_the_line() {
    tokio::time::pause();
    let (_server, pool, a, held) = start_with_the_only_connection_leased().await;
    let id = held.id();

    // The requester gives up after the pool took the message and queued the checkout.
    let request = pool.addr().send(Checkout::new(a.clone()));
    let given_up = tokio::time::timeout(Duration::from_millis(100), request).await;
    assert!(given_up.is_err(), "nothing was free: {given_up:?}");
    let status = pool.status().await.unwrap();
    assert_eq!(
        only(&status).waiters,
        0,
        "the abandoned checkout still waits in line"
    );

    let next = spawn_checkout(&pool, &a);
    waiters(&pool, 1).await;
    drop(held);
    let lease = within(WAIT, "next waiter", next).await.unwrap().unwrap();
    assert_eq!(lease.id(), id);
    drop(lease);

    let status = assert_all_returned(&pool).await;
    assert_eq!(status.checkouts.waited, 1, "a ghost was served");
}
