//! Connect failures: a checkout that waited for a connection that could not open gets
//! the connector's error (not a bare timeout); one failure is survived; after
//! `failure_threshold` in a row the authority is down until a probe connects; a
//! hanging connect ends at `connect_timeout`; a server that stops fails each call in
//! flight once, and capacity comes back soon after it listens again.

mod pool_support;

use std::time::Duration;

use pool_support::*;
use switchboard::protocol::frame::FrameRequest;
use switchboard::{Authority, Call, CallError, ConnectError, PoolError};
use tokio::time::Instant;

fn assert_refused(error: &PoolError, authority: &Authority) {
    match error {
        PoolError::Connect(ConnectError::Refused { authority: to }) => assert_eq!(to, authority),
        other => panic!("expected Connect(Refused), got {other:?}"),
    }
}

#[actix::test]
async fn the_nth_connect_fails_once_and_the_pool_recovers() {
    tokio::time::pause();
    let (server, connector, pool) = start_pool_lazily(config().min_idle(0).max_size(2));
    let a = server.authority();
    connector.fail_attempt(2);

    let first = within(WAIT, "first checkout", pool.checkout(&a))
        .await
        .unwrap();
    // The connection opened for this checkout is attempt 2, which fails: the checkout
    // hears why, at once.
    let started = Instant::now();
    let error = within(WAIT, "second checkout", pool.checkout(&a))
        .await
        .unwrap_err();
    assert_refused(&error, &a);
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    let status = pool.status().await.unwrap();
    let authority = only(&status);
    assert_eq!(authority.consecutive_failures, 1);
    assert!(!authority.down);
    assert!(matches!(
        authority.last_connect_error,
        Some(ConnectError::Refused { .. })
    ));
    assert_eq!(authority.checkouts.failed, 1);
    assert_eq!(authority.waiters, 0);

    // The next one connects (attempt 3) and works.
    let second = within(WAIT, "third checkout", pool.checkout(&a))
        .await
        .unwrap();
    assert_ne!(second.id(), first.id());
    echo(&first, "first").await;
    echo(&second, "second").await;
    let status = pool.status().await.unwrap();
    let authority = only(&status);
    assert_eq!(authority.consecutive_failures, 0);
    assert!(authority.last_connect_error.is_none());
    drop((first, second));

    let status = assert_all_returned(&pool).await;
    assert_eq!(status.size, 2);
    assert_eq!(connector.attempts(), 3);
    assert_eq!(server.accepted(), 2);
    assert_eq!(
        pool.status().await.unwrap().counters.connect_failures,
        1,
        "one failed connect"
    );
}

#[actix::test]
async fn a_failed_connect_while_filling_min_idle_is_retried() {
    tokio::time::pause();
    let (server, connector, pool) = start_pool_lazily(config().min_idle(3).max_size(3));
    connector.fail_attempt(2);
    let status = until(&pool, WAIT, |s| s.idle == 3).await;
    let authority = only(&status);
    assert_eq!(authority.consecutive_failures, 0);
    assert!(authority.last_connect_error.is_none());
    assert_eq!(connector.attempts(), 4);
    assert_eq!(server.accepted(), 3);

    checkout_and_echo(&pool, &server.authority(), "after a failed connect").await;
    let status = assert_all_returned(&pool).await;
    assert_eq!(status.size, 3);
}

#[actix::test]
async fn when_connects_always_fail_waiters_get_the_connect_error_not_a_timeout() {
    tokio::time::pause();
    let (server, connector, pool) = start_pool_lazily(config().min_idle(0).max_size(3));
    let a = server.authority();
    connector.set_gate(Gate::Refuse);

    let started = Instant::now();
    let waiters: Vec<_> = (0..3).map(|_| spawn_checkout(&pool, &a)).collect();
    for waiter in waiters {
        let error = within(WAIT, "waiter", waiter).await.unwrap().unwrap_err();
        assert_refused(&error, &a);
    }
    // Long before the checkout timeout (2 s).
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let status = pool.status().await.unwrap();
    let authority = only(&status);
    assert_eq!(authority.checkouts.failed, 3);
    assert_eq!(authority.checkouts.timed_out, 0);
    assert_eq!(authority.waiters, 0);
    assert_eq!(authority.size, 0);
    assert!(authority.consecutive_failures >= 3);
    assert!(!authority.down, "below the failure threshold (5)");
    assert_eq!(server.accepted(), 0);

    // Once connects work again, so do checkouts.
    connector.set_gate(Gate::Open);
    checkout_and_echo(&pool, &a, "connected").await;
    let status = assert_all_returned(&pool).await;
    assert_eq!(status.consecutive_failures, 0);
    assert!(status.last_connect_error.is_none());
}

#[actix::test]
async fn after_failure_threshold_failures_the_authority_is_down_until_a_probe_connects() {
    tokio::time::pause();
    let backoff_max = Duration::from_millis(500);
    let config = config()
        .min_idle(0)
        .max_size(1)
        .failure_threshold(3)
        .backoff_max(backoff_max);
    let (server, connector, pool) = start_pool_lazily(config);
    let a = server.authority();
    connector.set_gate(Gate::Refuse);

    // One connection at a time (max_size 1): the first two failures go to the first
    // two waiters; the third marks the authority down and fails everyone still in line.
    let mut waiters = Vec::new();
    for _ in 0..5 {
        waiters.push(spawn_checkout(&pool, &a));
    }
    let mut errors = Vec::new();
    for waiter in waiters {
        errors.push(within(WAIT, "waiter", waiter).await.unwrap().unwrap_err());
    }
    assert_refused(&errors[0], &a);
    assert_refused(&errors[1], &a);
    for error in &errors[2..] {
        match error {
            PoolError::Down {
                authority,
                failures,
                error,
            } => {
                assert_eq!(authority, &a);
                assert_eq!(*failures, 3);
                assert!(matches!(error, ConnectError::Refused { .. }), "{error:?}");
            }
            other => panic!("expected Down, got {other:?}"),
        }
    }
    let status = pool.status().await.unwrap();
    assert!(only(&status).down);
    assert_eq!(status.counters.marked_down, 1);

    // While down, a checkout fails at once, without waiting.
    let started = Instant::now();
    let error = pool.checkout(&a).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(matches!(error, PoolError::Down { .. }), "{error:?}");
    assert!(error.to_string().contains("down"), "{error}");

    // Let a few probes fail, then open the gate: the next probe connects within
    // `backoff_max` (plus a poll of `until`).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = pool.status().await.unwrap();
    assert!(only(&status).down);
    assert!(only(&status).consecutive_failures > 3);
    connector.set_gate(Gate::Open);
    let opened = Instant::now();
    let status = until(&pool, backoff_max + Duration::from_millis(50), |s| {
        !s.down && s.idle == 1
    })
    .await;
    assert!(opened.elapsed() <= backoff_max + Duration::from_millis(20));
    let authority = only(&status);
    assert_eq!(authority.consecutive_failures, 0);
    assert!(authority.last_connect_error.is_none());

    checkout_and_echo(&pool, &a, "up again").await;
    let status = assert_all_returned(&pool).await;
    assert_eq!(status.size, 1);
    assert_eq!(server.accepted(), 1);
}

#[actix::test]
async fn a_hanging_connect_ends_with_connect_timeout() {
    tokio::time::pause();
    let connect_timeout = Duration::from_secs(1);
    let config = config()
        .min_idle(0)
        .max_size(1)
        .connect_timeout(connect_timeout)
        .checkout_timeout(Duration::from_secs(5));
    let (server, connector, pool) = start_pool_lazily(config);
    let a = server.authority();
    connector.set_gate(Gate::Hang);

    let started = Instant::now();
    let error = within(WAIT + WAIT, "checkout", pool.checkout(&a))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    match &error {
        PoolError::Connect(ConnectError::Timeout { authority, after }) => {
            assert_eq!(authority, &a);
            assert_eq!(*after, connect_timeout);
        }
        other => panic!("expected Connect(Timeout), got {other:?}"),
    }
    assert!(waited >= connect_timeout, "{waited:?}");
    assert!(
        waited <= connect_timeout + Duration::from_millis(20),
        "{waited:?}"
    );
    // The hung attempt no longer counts as connecting.
    let status = until(&pool, WAIT, |s| s.connecting == 0).await;
    assert_eq!(only(&status).consecutive_failures, 1);
    assert_eq!(only(&status).size, 0);

    connector.set_gate(Gate::Open);
    checkout_and_echo(&pool, &a, "connected").await;
    let status = assert_all_returned(&pool).await;
    assert_eq!(status.size, 1);
}

#[actix::test]
async fn a_checkout_timeout_names_the_last_connect_error() {
    tokio::time::pause();
    let config = config()
        .min_idle(0)
        .max_size(1)
        .connect_timeout(Duration::from_secs(1));
    let (server, connector, pool) = start_pool_lazily(config);
    let a = server.authority();

    connector.set_gate(Gate::Refuse);
    let error = within(WAIT, "refused checkout", pool.checkout(&a))
        .await
        .unwrap_err();
    assert_refused(&error, &a);

    // The next connect hangs past this checkout's patience.
    connector.set_gate(Gate::Hang);
    let patience = Duration::from_millis(300);
    let error = within(
        WAIT,
        "timed-out checkout",
        pool.checkout_within(&a, patience),
    )
    .await
    .unwrap_err();
    let (_, last_connect_error) = assert_timed_out(&error, &a, patience);
    assert!(
        matches!(last_connect_error, Some(ConnectError::Refused { .. })),
        "{last_connect_error:?}"
    );
    assert!(
        error.to_string().contains("last connect error"),
        "the message says why: {error}"
    );

    // The hung connect times out; with the gate open the pool connects again.
    let status = until(&pool, WAIT, |s| s.connecting == 0).await;
    assert!(matches!(
        only(&status).last_connect_error,
        Some(ConnectError::Timeout { .. })
    ));
    connector.set_gate(Gate::Open);
    checkout_and_echo(&pool, &a, "connected").await;
    let status = assert_all_returned(&pool).await;
    assert_eq!(status.checkouts.timed_out, 1);
    assert_eq!(status.checkouts.failed, 1);
}

#[actix::test]
async fn calls_in_flight_fail_once_when_the_server_stops_and_capacity_returns_after_restart() {
    tokio::time::pause();
    let backoff_max = Duration::from_millis(500);
    let config = config().min_idle(3).max_size(3).backoff_max(backoff_max);
    let (server, _, pool) = start_pool_lazily(config);
    let a = server.authority();
    until(&pool, WAIT, |s| s.idle == 3).await;

    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(pool.checkout(&a).await.unwrap());
    }
    // Two slow calls on each leased connection.
    let mut calls = Vec::new();
    for lease in &leases {
        for _ in 0..2 {
            let addr = lease.addr().clone();
            calls.push(actix::spawn(async move {
                addr.send(Call::new(FrameRequest::new("sleep:1000")))
                    .await
                    .map_err(CallError::from)
                    .and_then(|reply| reply)
            }));
        }
    }
    until(&pool, WAIT, |s| {
        s.connections.iter().map(|c| c.in_flight).sum::<usize>() == 6
    })
    .await;

    let stopped = Instant::now();
    server.stop();
    let mut closed = 0;
    for call in calls {
        match within(WAIT, "call in flight", call).await.unwrap() {
            Err(CallError::Closed(_)) => closed += 1,
            other => panic!("expected Closed, got {other:?}"),
        }
    }
    assert_eq!(closed, 6, "each call in flight failed exactly once");
    // They failed when the server went, not when their replies were due.
    assert!(
        stopped.elapsed() < Duration::from_millis(100),
        "{:?}",
        stopped.elapsed()
    );

    // The pool counts the dead connections out and cannot replace them yet.
    let status = until(&pool, WAIT, |s| s.down).await;
    let authority = only(&status);
    assert_eq!(authority.size, 0, "{authority:#?}");
    assert_eq!(authority.leased, 0);
    assert!(matches!(
        authority.last_connect_error,
        Some(ConnectError::Refused { .. })
    ));
    for lease in &leases {
        let error = lease.call("still there?").await.unwrap_err();
        assert!(matches!(error, CallError::Closed(_)), "{error:?}");
    }
    drop(leases);
    let error = pool.checkout(&a).await.unwrap_err();
    assert!(matches!(error, PoolError::Down { .. }), "{error:?}");

    server.restart();
    let restarted = Instant::now();
    let status = until(&pool, backoff_max + Duration::from_millis(100), |s| {
        s.idle == 3
    })
    .await;
    assert!(restarted.elapsed() <= backoff_max + Duration::from_millis(50));
    assert!(!only(&status).down);

    checkout_and_echo(&pool, &a, "after the restart").await;
    let status = assert_all_returned(&pool).await;
    assert_eq!(status.size, 3);
    assert_eq!(server.accepted(), 6);
}

#[actix::test]

async fn a_waiter_hears_the_connect_error_while_min_idle_connects_fail() {
    tokio::time::pause();
    // Two connects for `min_idle` are always under way; the waiter counts on them
    // (the pool opens nothing extra for it), so their failures are its failures.
    let config = config().min_idle(2).max_size(2).failure_threshold(100);
    let (server, connector, pool) = start_pool_lazily(config);
    let a = server.authority();
    connector.set_gate(Gate::Refuse);

    let started = Instant::now();
    let error = within(WAIT, "checkout", pool.checkout(&a))
        .await
        .unwrap_err();
    assert_refused(&error, &a);
    // Not after the whole checkout timeout (2 s).
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    connector.set_gate(Gate::Open);
    let status = until(&pool, WAIT, |s| s.idle == 2).await;
    assert_eq!(only(&status).checkouts.failed, 1);
    checkout_and_echo(&pool, &a, "connected").await;
    let status = assert_all_returned(&pool).await;
    assert_eq!(status.size, 2);
}
