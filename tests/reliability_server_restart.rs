//! Reliability scenario 1: the server is killed and restarted on the same port.
//!
//! What it proves, over real loopback TCP: every call in flight when the server dies
//! fails exactly once with `Closed` (no reply, no hang, no timeout); while the server
//! is away checkouts fail fast with the real connect error; once the server listens
//! again, new calls succeed within `backoff_max` (plus slack); and every connection
//! reports exactly one `ConnectionEvent::Closed`, the old ones when the server went
//! and the new ones when the pool closes.
//!
//! How the fault is made: a real restart, no proxy. The server (a `ServerBroker`
//! behind a TCP `Listener`, from `broker_support`) is stopped with `Stop { abort: true
//! }`, which aborts its connections and closes the listening socket; a new server is
//! then bound on the same port. Calls are held in flight by a route the server
//! answers only after a minute.
//!
//! ```text
//! cargo test --all-features --test reliability_server_restart
//! ```
#![cfg(feature = "testkit")]

mod broker_support;
mod reliability_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use broker_support::{eventually, within, WAIT};
use bytes::Bytes;
use reliability_support::*;
use switchboard::protocol::frame::FrameRequest;
use switchboard::server::Stop;
use switchboard::{Authority, Call, CallError, CloseReason, ConnectError, ConnectionId, PoolError};

/// Connections in the pool (`min_idle` = `max_size`).
const SIZE: usize = 3;

/// Slow calls put in flight on each leased connection.
const CALLS_PER_CONNECTION: usize = 2;

/// The longest reconnect delay; new calls must succeed within it once the server is
/// back.
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// How long a checkout may wait in the first test; one that fails while the server
/// is away must fail well before it.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(2);

/// Failed connects the first test waits for before the server comes back. With
/// `backoff_base` 50 ms doubling, the tenth retry would come 25 s after the ninth if
/// `backoff_max` did not cap it, so a missing cap fails the bound by far more than
/// the slack.
const OUTAGE_FAILURES: u32 = 10;

/// Slack on the bound for a loaded machine: connecting, scheduling, polling.
const SLACK: Duration = Duration::from_secs(1);

/// Whether `error` is what a checkout may say while nothing listens: the refused
/// connect itself, or the authority marked down because of it. Never a bare timeout.
fn is_refused(error: &PoolError) -> bool {
    let connect = match error {
        PoolError::Connect(error) => error,
        PoolError::Down { error, .. } => error,
        _ => return false,
    };
    matches!(connect, ConnectError::Io { source, .. }
        if source.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Checks that a call in flight on a connection the server killed failed with
/// `Closed` and the reason its connection reported: the connection failed the call
/// itself (a peer close or an I/O error), and did not just drop it (which the caller
/// would see as `Closed(Stopped)`).
fn assert_failed_with_its_connection(
    result: &Result<Bytes, CallError>,
    (closed, _): &(CloseReason, Instant),
    what: &str,
) {
    assert!(
        matches!(closed, CloseReason::PeerClosed | CloseReason::Io(_)),
        "{what}: the connection closed with {closed:?}"
    );
    match result {
        Err(CallError::Closed(reason)) if reason.kind() == closed.kind() => {}
        other => panic!("{what}: expected Closed({closed:?}), got {other:?}"),
    }
}

#[actix::test]
async fn a_restarted_server_fails_calls_in_flight_once_and_serves_new_calls_within_backoff_max() {
    let (server, _) = start_echo_server(None).await;
    let port = server.port;
    let authority = server.authority();
    let mut events = Events::new();
    let config = pool_config()
        .min_idle(SIZE)
        .max_size(SIZE)
        .backoff_max(BACKOFF_MAX)
        .checkout_timeout(CHECKOUT_TIMEOUT);
    let pool = start_pool(&authority, config, connection_config(), &events);
    let old = wait_full(&pool, &authority, SIZE, WAIT).await;

    // Every connection leased, each with calls the server is still working on.
    let mut leases = Vec::new();
    for n in 0..SIZE {
        let lease = within(WAIT, "checkout", pool.checkout(&authority))
            .await
            .unwrap();
        echo(&lease, &format!("before the restart {n}")).await;
        leases.push(lease);
    }
    let mut calls = Vec::new();
    for (n, lease) in leases.iter().enumerate() {
        for k in 0..CALLS_PER_CONNECTION {
            let call = spawn_slow_call(lease, &format!("in flight {n}.{k}"));
            calls.push((lease.id(), call));
        }
    }
    let in_flight = SIZE * CALLS_PER_CONNECTION;
    server
        .wait_stats("the slow calls reached the server", |stats| {
            stats.requests >= (SIZE + in_flight) as u64
        })
        .await;

    // Kill the server: its connections are aborted and the port closes.
    within(WAIT, "stop", server.listener.send(Stop { abort: true }))
        .await
        .expect("listener alive");

    // Every old connection reported Closed, for a reason the pool did not choose, and
    // each call in flight fails exactly once, with its connection's reason.
    let closed = events.wait_closed(&old, WAIT).await;
    for (n, (id, call)) in calls.into_iter().enumerate() {
        let result = within(WAIT, "a call in flight", call).await.unwrap();
        assert_failed_with_its_connection(&result, &closed[&id], &format!("call {n} on {id}"));
    }
    for lease in &leases {
        let error = within(WAIT, "call on a dead lease", lease.call("still there?"))
            .await
            .unwrap_err();
        assert!(matches!(error, CallError::Closed(_)), "{error:?}");
    }
    drop(leases);

    // While nothing listens, checkouts fail with the refused connect, long before the
    // checkout timeout: nobody hangs on a dead server.
    let status = wait_status(&pool, &authority, WAIT, "the authority marked down", |s| {
        s.down
    })
    .await;
    assert_eq!(status.size, 0, "{status:#?}");
    let asked = Instant::now();
    let error = within(WAIT, "checkout while down", pool.checkout(&authority))
        .await
        .unwrap_err();
    assert!(is_refused(&error), "{error:?}");
    assert!(asked.elapsed() < CHECKOUT_TIMEOUT, "{error:?}");
    // A long outage: the reconnect delay has grown to its cap.
    wait_status(
        &pool,
        &authority,
        WAIT,
        "the outage outlasts the backoff",
        |s| s.consecutive_failures >= OUTAGE_FAILURES,
    )
    .await;

    let restarted = restart_on(port).await;
    let back = Instant::now();
    first_call_within(&pool, &authority, back, BACKOFF_MAX + SLACK).await;

    // And the pool is back to full size, with new connections that all work.
    let new = wait_full(&pool, &authority, SIZE, WAIT).await;
    assert!(new.is_disjoint(&old), "old {old:?}, new {new:?}");
    let mut leases = Vec::new();
    for n in 0..SIZE {
        let lease = within(WAIT, "checkout", pool.checkout(&authority))
            .await
            .unwrap();
        echo(&lease, &format!("after the restart {n}")).await;
        leases.push(lease);
    }
    let used: BTreeSet<ConnectionId> = leases.iter().map(|lease| lease.id()).collect();
    assert_eq!(used, new);
    drop(leases);
    restarted.wait_open(SIZE).await;

    // Exactly one Closed per connection: the old ones once so far, the new ones not
    // yet; closing the pool closes each new one once.
    let counts = events.assert_closed_at_most_once();
    for id in &old {
        assert_eq!(counts.get(id), Some(&1), "{id}");
    }
    for id in &new {
        assert_eq!(counts.get(id), None, "{id} closed while in use");
    }
    close_and_check_events(&pool, &mut events).await;
    restarted.wait_open(0).await;
}

#[actix::test]
async fn a_quick_restart_fails_shared_calls_in_flight_once_and_the_pool_refills() {
    let (server, _) = start_echo_server(None).await;
    let port = server.port;
    let authority = server.authority();
    let mut events = Events::new();
    let config = pool_config()
        .min_idle(SIZE)
        .max_size(SIZE)
        .backoff_max(BACKOFF_MAX);
    let pool = start_pool(&authority, config, connection_config(), &events);
    let old = wait_full(&pool, &authority, SIZE, WAIT).await;

    // Multiplexed use: many calls in flight on shared connections.
    let mut calls = Vec::new();
    let mut used = BTreeSet::new();
    for n in 0..SIZE * CALLS_PER_CONNECTION * 2 {
        let shared = within(WAIT, "shared checkout", pool.shared(&authority))
            .await
            .unwrap();
        used.insert(shared.id());
        let request = FrameRequest::new(payload(&format!("shared {n}"))).with_topic(SLOW);
        let addr = shared.addr().clone();
        let call = actix::spawn(async move { addr.send(Call::new(request)).await? });
        calls.push((shared.id(), call));
    }
    server
        .wait_stats("the shared calls reached the server", |stats| {
            stats.requests >= calls.len() as u64
        })
        .await;
    assert!(used.is_subset(&old), "{used:?} not in {old:?}");

    // Killed and at once listening again on the same port.
    within(WAIT, "stop", server.listener.send(Stop { abort: true }))
        .await
        .expect("listener alive");
    let restarted = restart_on(port).await;
    let back = Instant::now();

    let closed = events.wait_closed(&used, WAIT).await;
    for (n, (id, call)) in calls.into_iter().enumerate() {
        let result = within(WAIT, "a shared call in flight", call).await.unwrap();
        let what = format!("shared call {n} on {id}");
        assert_failed_with_its_connection(&result, &closed[&id], &what);
    }
    first_call_within(&pool, &authority, back, BACKOFF_MAX + SLACK).await;

    let new = wait_full(&pool, &authority, SIZE, WAIT).await;
    assert!(new.is_disjoint(&old), "old {old:?}, new {new:?}");
    for n in 0..SIZE {
        let shared = within(WAIT, "shared checkout", pool.shared(&authority))
            .await
            .unwrap();
        let text = format!("shared after the restart {n}");
        let reply = within(WAIT, "call", shared.call(FrameRequest::new(payload(&text))))
            .await
            .unwrap();
        assert_eq!(&reply[..], text.as_bytes());
    }
    restarted.wait_open(SIZE).await;

    let counts = events.assert_closed_at_most_once();
    for id in &old {
        assert_eq!(counts.get(id), Some(&1), "{id}");
    }
    for id in &new {
        assert_eq!(counts.get(id), None, "{id} closed while in use");
    }
    close_and_check_events(&pool, &mut events).await;
    restarted.wait_open(0).await;
}

/// Binds a new echo server on `port`, once the old listening socket is gone.
async fn restart_on(port: u16) -> broker_support::Server {
    let socket = eventually(WAIT, "bind the same port again", || async move {
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
    let (restarted, _) = start_echo_server(Some(socket)).await;
    assert_eq!(restarted.port, port);
    restarted
}

/// Retries checkout-and-call until one succeeds, failing the test if none did within
/// `bound` of `back` (when the server listened again).
async fn first_call_within(pool: &TcpPool, authority: &Authority, back: Instant, bound: Duration) {
    eventually(bound, "a call after the restart", || async move {
        let lease = pool
            .checkout_within(authority, Duration::from_millis(200))
            .await
            .ok()?;
        lease.call("after the restart").await.ok().map(|_| ())
    })
    .await;
    assert!(
        back.elapsed() <= bound,
        "first reply {:?} after the server came back",
        back.elapsed()
    );
}
