//! Reliability scenario 6 (issue 5): a call times out and its reply comes late.
//!
//! What a user of the Pool can rely on, proved end to end through pooled connections:
//! - the caller gets `CallError::Timeout` carrying its timeout, at its deadline;
//! - the late reply is delivered to no one: not to the next borrower of the same
//!   connection (whose call is in flight when the late reply lands), not to another
//!   caller multiplexed on a shared connection, not to the pool's push recipient;
//! - the connection stays open and usable, as `CallError::Timeout` documents ("a reply
//!   that arrives later is dropped"): same `ConnectionId`, no `Closed` event, nothing
//!   replaced, and its stats count the timeout and the dropped late reply.
//!
//! How the fault is made: the pool's far end is a scripted `MockPeer` (in-memory
//! pipe, virtual time) that holds a request past its caller's timeout and answers it
//! afterwards; and over real TCP, a `FaultProxy` adds downstream latency longer than
//! the call timeout, so every reply arrives late.
//!
//! ```text
//! cargo test --all-features --test reliability_late_reply
//! ```
#![cfg(feature = "testkit")]

mod reliability_common;

use std::time::Duration;

use bytes::Bytes;
use reliability_common::*;
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::testkit::{Direction, Fault, FaultProxy, Probe};
use switchboard::{Call, CallError, ConnectionEvent, Pushed};
use tokio::time::Instant;

/// A call carrying `text` with its own timeout.
fn call_within(text: &'static str, timeout: Duration) -> Call<FrameProtocol> {
    Call::new(FrameRequest::new(text)).timeout(timeout)
}

#[actix::test]
async fn a_late_reply_is_never_given_to_the_next_borrower_of_the_connection() {
    tokio::time::pause();
    let mut bed = ScriptedBed::new("late");
    let mut events = Probe::<ConnectionEvent>::start();
    let mut pushes = Probe::<Pushed<FrameProtocol>>::start();
    let pool = within(
        WAIT,
        "eager build",
        bed.pool(
            pool_config().min_idle(1).max_size(1),
            quiet_connection().build().unwrap(),
        )
        .events(events.recipient())
        .pushes(pushes.recipient())
        .build(),
    )
    .await
    .unwrap();
    let mut peer = bed.accept().await;
    let a = bed.authority.clone();

    // Borrower A asks; the peer sits on the request past A's timeout.
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    let started = Instant::now();
    let first = actix::spawn(lease.send(call_within("question A", Duration::from_secs(1))));
    let request_a = peer.expect_request(WAIT).await;
    let result = within(WAIT, "A's call ends", first).await.unwrap().unwrap();
    match result {
        Err(CallError::Timeout { after }) => assert_eq!(after, Duration::from_secs(1)),
        other => panic!("A expected a Timeout, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_millis(1100),
        "A timed out after {waited:?}"
    );
    // A gives up and returns the lease; a timed-out call leaves nothing in flight, so
    // the connection goes straight back to idle.
    assert_eq!(lease.in_flight(), 0);
    drop(lease);

    // Borrower B gets the same connection, and its call is in flight when the late
    // reply to A lands, right before B's own reply.
    let lease = pool.checkout(&a).await.unwrap();
    assert_eq!(lease.id(), id, "the only connection, reused");
    let second = actix::spawn(lease.send(call_within("question B", Duration::from_secs(5))));
    let request_b = peer.expect_request(WAIT).await;
    assert_ne!(request_b.id, request_a.id);
    peer.reply(&request_a, "answer A (late)").await;
    peer.reply(&request_b, "answer B").await;
    let reply = within(WAIT, "B's call ends", second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.unwrap(), Bytes::from_static(b"answer B"));

    // And B's next call gets its own reply too: nothing late is queued for anyone.
    let third = actix::spawn(lease.send(call_within("again B", Duration::from_secs(5))));
    let request = peer.expect_request(WAIT).await;
    peer.reply(&request, "again B").await;
    let reply = within(WAIT, "B's second call", third)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.unwrap(), Bytes::from_static(b"again B"));

    // The connection is the same one, open, and counted the late replies as dropped.
    let stats = stats_of(lease.addr()).await;
    assert_eq!(stats.id, id);
    assert_eq!(stats.timeouts, 1);
    assert_eq!(stats.late_replies, 1);
    assert_eq!(stats.replies, 2);
    assert_eq!(stats.in_flight, 0);
    drop(lease);
    pushes.expect_none(Duration::from_millis(100)).await;
    assert_no_close(&mut events);
    let status = pool.status().await.unwrap();
    let group = status.authority(&a).unwrap();
    assert_eq!(group.size, 1);
    assert_eq!(group.connections[0].id, id);
    assert!(status.counters.closed.is_empty(), "{status:#?}");
    assert_eq!(status.counters.created, 1, "nothing was replaced");
    within(WAIT, "close", pool.close()).await;
}

#[actix::test]
async fn late_replies_on_a_shared_connection_reach_none_of_the_callers_multiplexed_on_it() {
    tokio::time::pause();
    let mut bed = ScriptedBed::new("late-shared");
    let mut events = Probe::<ConnectionEvent>::start();
    let mut pushes = Probe::<Pushed<FrameProtocol>>::start();
    let pool = within(
        WAIT,
        "eager build",
        bed.pool(
            pool_config().min_idle(1).max_size(1),
            quiet_connection().build().unwrap(),
        )
        .events(events.recipient())
        .pushes(pushes.recipient())
        .build(),
    )
    .await
    .unwrap();
    let mut peer = bed.accept().await;
    let shared = pool.shared(&bed.authority).await.unwrap();

    // Ten callers share the connection: the even ones give up after a second, the odd
    // ones wait long enough to be answered.
    const CALLERS: usize = 10;
    let short = Duration::from_secs(1);
    let long = Duration::from_secs(30);
    let callers: Vec<_> = (0..CALLERS)
        .map(|n| {
            let timeout = if n % 2 == 0 { short } else { long };
            let call = shared
                .addr()
                .send(Call::new(FrameRequest::new(payload(n, 16))).timeout(timeout));
            actix::spawn(async move { (n, call.await) })
        })
        .collect();
    let requests = peer.expect_frames(CALLERS, WAIT).await;
    tokio::time::sleep(short + Duration::from_millis(100)).await;

    // Then every request is answered, newest first, the timed-out ones with their own
    // payload or an error: late, while the odd callers still wait for theirs.
    for (i, request) in requests.iter().rev().enumerate() {
        let n = CALLERS - 1 - i;
        assert_eq!(request.payload, payload(n, 16), "requests go out in order");
        if n % 2 == 1 || n % 4 == 0 {
            peer.reply(request, request.payload.clone()).await;
        } else {
            peer.reply_error(request, "late error").await;
        }
    }

    for caller in callers {
        let (n, result) = within(WAIT, "every caller is answered", caller)
            .await
            .unwrap();
        match result.unwrap() {
            Ok(reply) if n % 2 == 1 => assert_eq!(reply, payload(n, 16), "caller {n}"),
            Err(CallError::Timeout { after }) if n % 2 == 0 => assert_eq!(after, short),
            other => panic!("caller {n} got {other:?}"),
        }
    }
    let stats = stats_of(shared.addr()).await;
    assert_eq!(stats.timeouts, 5);
    assert_eq!(stats.late_replies, 5);
    assert_eq!(stats.replies, 5);
    assert_eq!(stats.in_flight, 0);

    // The connection carries on: a new call gets its own reply.
    let next = actix::spawn(shared.addr().send(Call::new(FrameRequest::new("next"))));
    let request = peer.expect_request(WAIT).await;
    peer.reply(&request, "next").await;
    let reply = within(WAIT, "next call", next).await.unwrap().unwrap();
    assert_eq!(reply.unwrap(), Bytes::from_static(b"next"));
    pushes.expect_none(Duration::from_millis(100)).await;
    assert_no_close(&mut events);
    let status = pool.status().await.unwrap();
    assert!(status.counters.closed.is_empty(), "{status:#?}");
    within(WAIT, "close", pool.close()).await;
}

/// Real TCP: a slow network (downstream latency longer than the call timeout) makes
/// every reply late; once the latency is gone the same connection serves again.
#[actix::test]
async fn replies_delayed_by_the_network_past_the_call_timeout_are_dropped_and_the_connection_recovers(
) {
    let server = EchoServer::new();
    let upstream = server.listen_tcp().await;
    let proxy = FaultProxy::start(upstream).unwrap();
    let mut events = Probe::<ConnectionEvent>::start();
    let mut pushes = Probe::<Pushed<FrameProtocol>>::start();
    // Only the slow calls have a short timeout: the calls that must succeed keep the
    // default, so a busy machine cannot fail them.
    let call_timeout = Duration::from_millis(300);
    let pool = within(
        REAL_WAIT,
        "eager build",
        switchboard::Pool::builder(
            switchboard::transport::TcpConnector::new(),
            FrameProtocol::default(),
        )
        .config(pool_config().min_idle(1).max_size(1).build().unwrap())
        .connection(quiet_connection().build().unwrap())
        .authority(proxy.authority())
        .events(events.recipient())
        .pushes(pushes.recipient())
        .build(),
    )
    .await
    .unwrap();
    let a = proxy.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    let reply = within(REAL_WAIT, "call", lease.call(FrameRequest::new("before")))
        .await
        .unwrap();
    assert_eq!(reply, Bytes::from_static(b"before"));

    proxy
        .inject(
            Direction::Downstream,
            Fault::Latency(Duration::from_secs(1)),
        )
        .await;
    for text in ["slow 1", "slow 2"] {
        let started = std::time::Instant::now();
        let call = Call::new(FrameRequest::new(text)).timeout(call_timeout);
        let error = within(REAL_WAIT, "slow call", lease.addr().send(call))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(error, CallError::Timeout { after } if after == call_timeout),
            "{error:?}"
        );
        assert!(started.elapsed() >= call_timeout);
    }
    proxy.heal().await;

    // The late replies arrive (latency was set when they were read) and are dropped.
    let stats = eventually(REAL_WAIT, "both late replies arrive", || async {
        let stats = stats_of(lease.addr()).await;
        (stats.late_replies == 2).then_some(stats)
    })
    .await;
    assert_eq!(stats.timeouts, 2);
    assert_eq!(stats.in_flight, 0);

    // The same connection answers the next call with that call's own reply.
    let reply = within(REAL_WAIT, "call", lease.call(FrameRequest::new("after")))
        .await
        .unwrap();
    assert_eq!(reply, Bytes::from_static(b"after"));
    assert_eq!(lease.id(), id);
    drop(lease);
    pushes.expect_none(Duration::from_millis(50)).await;
    assert_no_close(&mut events);
    let status = pool.status().await.unwrap();
    assert!(status.counters.closed.is_empty(), "{status:#?}");
    assert_eq!(status.counters.created, 1);
    within(REAL_WAIT, "close", pool.close()).await;
    proxy.stop().await;
}
