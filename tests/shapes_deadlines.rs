//! Traffic shapes, deadlines: callers whose own deadlines are shorter than the pool's
//! health checks, on exclusive and shared connections. The promises:
//! - a connection is judged only by `health_check_timeout`: a caller that runs out of
//!   time while its connection is being tested gets `Timeout`, and the connection is
//!   neither counted failed nor closed;
//! - a check (on checkout or periodic) never aborts a connection with calls in
//!   flight: one caller's timeout costs only that caller, and every other call on the
//!   connection ends by its own reply or its own timeout.
//!
//! 0.1 bounded the test's ping by the caller's deadline and aborted the connection
//! when the caller's time ran out first, failing every other caller's call on it with
//! `Closed(Aborted)`; periodic checks did the same to shared connections in use.
//!
//! `cargo test --all-features --test shapes_deadlines`

mod pool_support;

use std::time::Duration;

use pool_support::*;
use switchboard::protocol::frame::FrameRequest;
use switchboard::{Call, CallError, ConnectionConfig, PoolConfigBuilder, PoolError};

#[actix::test]
async fn a_caller_out_of_time_during_the_test_on_checkout_leaves_the_connection_unjudged() {
    tokio::time::pause();
    let config = config()
        .min_idle(1)
        .max_size(1)
        .test_on_checkout_after(Some(Duration::from_secs(1)))
        .health_check_timeout(Duration::from_secs(2));
    // A heartbeat slower than the test, so that only the checks judge the peer.
    let bed = TestBed::new();
    let pool = build_eagerly(
        bed.pool(config).connection(
            ConnectionConfig::builder()
                .heartbeat_interval(Duration::from_secs(60))
                .heartbeat_timeout(Duration::from_secs(180))
                .build()
                .unwrap(),
        ),
    )
    .await;
    let server = bed.server;
    let a = server.authority();
    let before = ids(only(&status(&pool).await));

    // The peer is slow to answer for a moment (it answers nothing, for now), and the
    // callers' deadlines are shorter than the test's ping.
    assert_eq!(server.mute_all(), 1);
    for deadline in [Duration::from_millis(1), Duration::from_millis(300)] {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let error = pool.checkout_within(&a, deadline).await.unwrap_err();
        assert!(matches!(error, PoolError::Timeout { .. }), "{error:?}");
        // A shared pick counts as use; a test is due again only after a while.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let error = pool.shared_within(&a, deadline).await.unwrap_err();
        assert!(matches!(error, PoolError::Timeout { .. }), "{error:?}");
    }
    let after = assert_all_returned(&pool).await;
    assert_eq!(after.checkouts.tests_failed, 0, "{after:#?}");
    assert_eq!(ids(&after), before, "the connection was kept");
    let counters = status(&pool).await.counters;
    assert!(counters.closed.is_empty(), "{counters:#?}");
    assert_eq!(counters.health_check_failures, 0, "{counters:#?}");

    // A caller with time does judge it, by `health_check_timeout`: the peer still
    // answers nothing, so that caller gets another connection.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let shared = within(
        Duration::from_secs(30),
        "shared checkout",
        pool.shared_within(&a, Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert!(!before.contains(&shared.id()));
    let reply = shared.call(FrameRequest::new("a fresh one")).await.unwrap();
    assert_eq!(&reply[..], b"a fresh one");
    assert_eq!(status(&pool).await.counters.checkouts.tests_failed, 1);
    drop(shared);
    pool.close().await;
}

/// A shared connection with a call in flight on a peer that has stopped answering
/// for now: the other caller's short deadline, or a periodic check, must not end it.
async fn call_in_flight_survives(checks: PoolConfigBuilder) {
    tokio::time::pause();
    let (server, _, pool) = start_pool(checks).await;
    let a = server.authority();
    let shared = pool.shared(&a).await.unwrap();
    // The first caller's call: a slow one, with a timeout of its own.
    let first = {
        let addr = shared.addr().clone();
        actix::spawn(async move {
            addr.send(Call::new(FrameRequest::new("sleep:600000")).timeout(Duration::from_secs(8)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(server.mute_all(), 1);
    // Long enough for the connection to be due a test on checkout and a periodic
    // check, short of the connection's own heartbeat timeout (15 s).
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A second caller with a short deadline.
    let second = pool.shared_within(&a, Duration::from_millis(100)).await;
    if let Ok(second) = &second {
        assert_eq!(
            second.id(),
            shared.id(),
            "the connection in use is handed out"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = within(WAIT, "the first call", first)
        .await
        .unwrap()
        .expect("the call reached its connection");
    assert!(
        matches!(first, Err(CallError::Timeout { .. })),
        "the first call ends by its own timeout, not by a check: {first:?}"
    );
    let after = status(&pool).await;
    assert_eq!(after.counters.checkouts.tests_failed, 0, "{after:#?}");
    assert_eq!(after.counters.health_check_failures, 0, "{after:#?}");
    assert!(!after.counters.closed.contains_key("aborted"), "{after:#?}");
    drop(second);
    drop(shared);
}

#[actix::test]
async fn a_short_deadline_on_a_shared_connection_costs_only_that_caller() {
    call_in_flight_survives(
        config()
            .min_idle(1)
            .max_size(1)
            .test_on_checkout_after(Some(Duration::from_secs(1)))
            .health_check_timeout(Duration::from_secs(1)),
    )
    .await;
}

#[actix::test]
async fn a_periodic_check_never_aborts_a_shared_connection_with_calls_in_flight() {
    call_in_flight_survives(
        config()
            .min_idle(1)
            .max_size(1)
            .health_check_interval(Some(Duration::from_millis(500)))
            .health_check_timeout(Duration::from_millis(200)),
    )
    .await;
}
