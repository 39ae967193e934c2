//! Reliability scenario 3: a half-open link, where the socket stays open but nothing
//! comes back.
//!
//! What it proves, over real loopback TCP: each connection on the dead link is found
//! dead by its heartbeat and reports `Closed { reason: HeartbeatTimeout }` within
//! `heartbeat_interval + heartbeat_timeout` of the fault (plus a second of slack for
//! a loaded machine: a correctness bound, not a speed test); every call pending on it
//! fails once with that reason, long before its own call timeout; and once the link
//! heals the pool is back to full size with new connections whose calls succeed and
//! which stay up.
//!
//! How the fault is made: a `FaultProxy` between the pool and the server blackholes
//! the link (`Fault::Blackhole`): bytes are read and dropped, nothing is closed, no
//! RST, no FIN, exactly what a dead peer behind a NAT looks like. Both directions in
//! one test, the server-to-client direction only in the other (the server gets the
//! requests; the replies never arrive). `heal()` ends it. Heartbeats are short (250
//! ms interval, 1 s timeout) so that the test takes a few seconds, and not shorter:
//! the healthy connections after the heal must not miss a pong on a busy machine.
//! The exact bound, without slack, is checked in virtual time by `sim_partition`.
//!
//! ```text
//! cargo test --all-features --test reliability_half_open
//! ```
#![cfg(feature = "testkit")]

mod broker_support;
mod reliability_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use broker_support::{within, WAIT};
use bytes::Bytes;
use reliability_support::*;
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::testkit::{Direction, Fault, FaultProxy, ProxyHandle};
use switchboard::transport::TcpConnector;
use switchboard::{
    Authority, Call, CallError, CloseReason, ConnectionId, SharedConnection, Spread,
};

/// Connections in the pool (`min_idle` = `max_size`).
const SIZE: usize = 2;

/// A ping goes out after this long without a frame from the server.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);

/// A connection that hears nothing for this long closes with `HeartbeatTimeout`.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// Slack on the detection bound for a loaded machine.
const SLACK: Duration = Duration::from_secs(1);

/// Calls pending on each connection when the link dies.
const CALLS_PER_CONNECTION: usize = 3;

struct Bed {
    proxy: ProxyHandle,
    server: broker_support::Server,
    authority: Authority,
    events: Events,
    pool: TcpPool,
    /// The connections open before the fault.
    old: BTreeSet<ConnectionId>,
}

/// A server behind a proxy, and a full pool of connections with short heartbeats
/// through the proxy.
async fn start() -> Bed {
    let (server, _) = start_echo_server(None).await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port).into()).unwrap();
    let authority = proxy.authority();
    let events = Events::new();
    let connection = connection_config()
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .heartbeat_timeout(HEARTBEAT_TIMEOUT);
    let config = pool_config().min_idle(SIZE).max_size(SIZE);
    let pool = start_pool(&authority, config, connection, &events);
    let old = wait_full(&pool, &authority, SIZE, WAIT).await;
    server.wait_open(SIZE).await;
    Bed {
        proxy,
        server,
        authority,
        events,
        pool,
        old,
    }
}

/// Blackholes `direction` and returns when the fault took effect.
async fn blackhole(bed: &Bed, direction: Direction) -> Instant {
    bed.proxy.inject(direction, Fault::Blackhole).await;
    Instant::now()
}

/// Waits for every old connection's `Closed`, and checks it came for the heartbeat,
/// within `heartbeat_interval + heartbeat_timeout` (plus slack) of `fault`.
async fn assert_detected(bed: &mut Bed, fault: Instant) {
    let bound = HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT + SLACK;
    let closed = bed.events.wait_closed(&bed.old, bound + SLACK).await;
    for (id, (reason, at)) in &closed {
        assert!(
            matches!(reason, CloseReason::HeartbeatTimeout { silent_for } if *silent_for >= HEARTBEAT_TIMEOUT),
            "{id} closed with {reason:?}"
        );
        let after = at.duration_since(fault);
        assert!(after <= bound, "{id} found dead {after:?} after the fault");
    }
}

/// Heals the link, then waits until the pool is full again with connections opened
/// after the heal, checks a call succeeds on each, and that they are still the pool's
/// after a few heartbeat timeouts (they are not dying of the fault too).
async fn assert_replaced_after_heal(bed: &mut Bed) {
    bed.proxy.heal().await;
    let healed = Instant::now();
    // Connections opened during the fault may still be open, with their pings lost:
    // they die of it soon. Wait for a pool made only of connections opened since.
    let status = wait_status(
        &bed.pool,
        &bed.authority,
        WAIT,
        "a full pool of connections opened after the heal",
        |s| {
            let since = healed.elapsed();
            s.size == SIZE && s.idle == SIZE && s.connections.iter().all(|c| c.age < since)
        },
    )
    .await;
    let new = ids(&status);
    assert!(new.is_disjoint(&bed.old), "old {:?}, new {new:?}", bed.old);
    for round in 0..2 {
        let mut leases = Vec::new();
        for n in 0..SIZE {
            let lease = within(WAIT, "checkout", bed.pool.checkout(&bed.authority))
                .await
                .unwrap();
            echo(&lease, &format!("healed {round}.{n}")).await;
            leases.push(lease);
        }
        let used: BTreeSet<ConnectionId> = leases.iter().map(|lease| lease.id()).collect();
        assert_eq!(used, new, "round {round}");
        drop(leases);
        // Long enough for a dead connection to be found dead again.
        tokio::time::sleep(HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT * 2).await;
    }
    let status = authority_status(&bed.pool, &bed.authority).await;
    assert_eq!(ids(&status), new, "{status:#?}");
    bed.server.wait_open(SIZE).await;
}

#[actix::test]
async fn a_link_blackholed_both_ways_is_detected_its_calls_fail_and_it_is_replaced() {
    let mut bed = start().await;
    let mut leases = Vec::new();
    for _ in 0..SIZE {
        leases.push(
            within(WAIT, "checkout", bed.pool.checkout(&bed.authority))
                .await
                .unwrap(),
        );
    }

    let fault = blackhole(&bed, Direction::Both).await;
    // Calls into the dead link: the server never sees them, nothing answers.
    let mut calls = Vec::new();
    for (n, lease) in leases.iter().enumerate() {
        for k in 0..CALLS_PER_CONNECTION {
            let addr = lease.addr().clone();
            let request = FrameRequest::new(payload(&format!("lost {n}.{k}")));
            calls.push(actix::spawn(
                async move { addr.send(Call::new(request)).await? },
            ));
        }
    }

    assert_detected(&mut bed, fault).await;
    assert_calls_failed_with_heartbeat_timeout(calls).await;
    drop(leases);

    assert_replaced_after_heal(&mut bed).await;
    close_and_check_events(&bed.pool, &mut bed.events).await;
}

#[actix::test]
async fn a_link_whose_replies_are_blackholed_is_detected_and_shared_calls_fail() {
    let mut bed = start().await;
    let fault = blackhole(&bed, Direction::Downstream).await;
    // Shared callers on both connections; their requests reach the server, the
    // replies (and the pongs) are dropped on the way back.
    let handles = shared_handle_per_connection(&bed).await;
    let mut calls = Vec::new();
    for n in 0..SIZE * CALLS_PER_CONNECTION {
        let shared = handles[n % SIZE].clone();
        let request = FrameRequest::new(payload(&format!("unanswered {n}")));
        calls.push(actix::spawn(async move { shared.call(request).await }));
    }

    assert_detected(&mut bed, fault).await;
    assert_calls_failed_with_heartbeat_timeout(calls).await;
    // The server did get them: the link is half-open, not down.
    bed.server
        .wait_stats("the server saw the requests", |stats| {
            stats.requests >= (SIZE * CALLS_PER_CONNECTION) as u64
        })
        .await;

    assert_replaced_after_heal(&mut bed).await;
    close_and_check_events(&bed.pool, &mut bed.events).await;
}

/// A shared handle on each of the pool's connections (picked by two random choices,
/// which put every idle connection into shared use).
async fn shared_handle_per_connection(
    bed: &Bed,
) -> Vec<SharedConnection<TcpConnector, FrameProtocol>> {
    let mut handles = BTreeMap::new();
    for _ in 0..1000 {
        let shared = within(
            WAIT,
            "shared",
            bed.pool.shared_by(&bed.authority, Spread::TwoChoices, None),
        )
        .await
        .unwrap();
        handles.entry(shared.id()).or_insert(shared);
        if handles.len() == SIZE {
            break;
        }
    }
    let ids: BTreeSet<ConnectionId> = handles.keys().copied().collect();
    assert_eq!(ids, bed.old, "a shared handle on every connection");
    handles.into_values().collect()
}

/// Every call fails exactly once with the heartbeat's reason (not its own timeout:
/// the call timeout is 10 s).
async fn assert_calls_failed_with_heartbeat_timeout(
    calls: Vec<tokio::task::JoinHandle<Result<Bytes, CallError>>>,
) {
    for (n, call) in calls.into_iter().enumerate() {
        let result = within(WAIT, "a pending call", call).await.unwrap();
        let reason = assert_broken(&result, &format!("call {n}"));
        assert!(
            matches!(reason, CloseReason::HeartbeatTimeout { .. }),
            "call {n}: {reason:?}"
        );
    }
}
