//! Call timeouts: a caller never waits longer than its call's timeout, and a reply that
//! arrives after its caller gave up is dropped — never handed to another call, never
//! taken for a protocol error — so the connection stays open and correct.
#![cfg(feature = "testkit")]

mod common;

use std::time::Duration;

use common::{
    assert_not_closed, call, connect, finish, numbered, reply_of, spawn_calls, Setup, WAIT,
};
use switchboard::protocol::frame::Frame;
use switchboard::{CallError, ConnectionConfig, GetStats};
use tokio::time::Instant;

/// After `late` calls timed out and their replies came late: the next call gets its
/// own reply (never a late one), the connection stays open, and the stats count each
/// timeout and each dropped late reply.
async fn assert_late_replies_were_dropped(setup: &mut Setup, late: u64) {
    let next = actix_rt::spawn(setup.addr.send(call("next")));
    let request = setup.peer.expect_request(WAIT).await;
    setup.peer.reply(&request, "own reply").await;
    assert_eq!(reply_of(finish(next).await), "own reply");
    assert_not_closed(&mut setup.events);
    let stats = setup.addr.send(GetStats).await.unwrap();
    assert_eq!((stats.timeouts, stats.late_replies), (late, late));
}

#[actix::test]
async fn a_timed_out_calls_late_reply_is_dropped_and_never_given_to_the_next_call() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let start = Instant::now();
    let first = actix_rt::spawn(addr.send(call("slow").timeout(Duration::from_secs(1))));
    let slow_request = peer.expect_request(WAIT).await;

    // The peer sits on it; the caller gives up after its own timeout, not before.
    match finish(first).await {
        Ok(Err(CallError::Timeout { after })) => assert_eq!(after, Duration::from_secs(1)),
        other => panic!("expected a Timeout, got {other:?}"),
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_millis(1100),
        "timed out after {waited:?}"
    );

    // A second call is waiting when the late reply to the first one arrives.
    let second = actix_rt::spawn(addr.send(call("fast")));
    let fast_request = peer.expect_request(WAIT).await;
    assert_ne!(fast_request.id, slow_request.id);
    peer.reply(&slow_request, "late reply to the first call")
        .await;
    peer.reply(&fast_request, "reply to the second call").await;

    assert_eq!(reply_of(finish(second).await), "reply to the second call");
    assert_not_closed(&mut events);
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.timeouts, 1);
    assert_eq!(stats.late_replies, 1);
    assert_eq!(stats.replies, 1);
    assert_eq!(stats.in_flight, 0);
}

#[actix::test]
async fn a_late_reply_after_the_caller_gave_up_does_not_close_the_connection() {
    tokio::time::pause();
    let mut setup = connect(ConnectionConfig::default()).await;
    let Setup { addr, peer, .. } = &mut setup;

    let first = actix_rt::spawn(addr.send(call("slow").timeout(Duration::from_secs(1))));
    let slow_request = peer.expect_request(WAIT).await;
    assert!(matches!(
        finish(first).await,
        Ok(Err(CallError::Timeout { .. }))
    ));

    // The late reply arrives with nothing else in flight.
    peer.reply(&slow_request, "late").await;
    assert_late_replies_were_dropped(&mut setup, 1).await;
}

#[actix::test]
async fn a_call_without_its_own_timeout_uses_the_configured_one() {
    tokio::time::pause();
    let config = ConnectionConfig::builder()
        .call_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let Setup { addr, mut peer, .. } = connect(config).await;

    let start = Instant::now();
    let pending = actix_rt::spawn(addr.send(call("unanswered")));
    peer.expect_request(WAIT).await;
    match finish(pending).await {
        Ok(Err(CallError::Timeout { after })) => assert_eq!(after, Duration::from_secs(2)),
        other => panic!("expected a Timeout, got {other:?}"),
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100),
        "timed out after {waited:?}"
    );
}

#[actix::test]
async fn each_call_times_out_at_its_own_deadline_while_answered_calls_succeed() {
    tokio::time::pause();
    let mut setup = connect(ConnectionConfig::default()).await;
    let Setup { addr, peer, .. } = &mut setup;

    // Calls with timeouts of 1..=5 s; the peer answers only the even-numbered ones.
    let start = Instant::now();
    let tasks: Vec<_> = (1..=5u64)
        .map(|secs| {
            let request =
                addr.send(call(numbered(secs as usize)).timeout(Duration::from_secs(secs)));
            actix_rt::spawn(async move {
                let result = request.await;
                (secs, result, Instant::now())
            })
        })
        .collect();
    let requests = peer.expect_frames(5, WAIT).await;
    let answered = [numbered(2), numbered(4)];
    for request in requests.iter().filter(|r| answered.contains(&r.payload)) {
        peer.reply(request, request.payload.clone()).await;
    }

    for task in tasks {
        let (secs, result, at) = finish(task).await;
        if secs % 2 == 0 {
            assert_eq!(reply_of(result), numbered(secs as usize));
        } else {
            assert!(
                matches!(result, Ok(Err(CallError::Timeout { after })) if after == Duration::from_secs(secs)),
                "call {secs}: {result:?}"
            );
            let waited = at - start;
            assert!(
                waited >= Duration::from_secs(secs)
                    && waited < Duration::from_secs(secs) + Duration::from_millis(100),
                "call {secs} timed out after {waited:?}"
            );
        }
    }
    // Every late reply is dropped quietly.
    for request in requests.iter().filter(|r| !answered.contains(&r.payload)) {
        peer.send(Frame::response(request.id, "late")).await;
    }
    assert_late_replies_were_dropped(&mut setup, 3).await;
}

#[actix::test]
async fn many_timed_out_calls_all_resolve_once() {
    tokio::time::pause();
    let config = ConnectionConfig::builder()
        .call_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let Setup { addr, mut peer, .. } = connect(config).await;
    const CALLS: usize = 500;

    let results = spawn_calls(&addr, (0..CALLS).map(numbered));
    peer.expect_frames(CALLS, WAIT).await;
    let results = finish(results).await;
    assert_eq!(results.len(), CALLS);
    for result in &results {
        assert!(
            matches!(result, Ok(Err(CallError::Timeout { .. }))),
            "{result:?}"
        );
    }
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.timeouts, CALLS as u64);
    assert_eq!(stats.in_flight, 0);
}

#[actix::test]
async fn late_replies_stay_harmless_when_more_calls_time_out_than_max_in_flight() {
    tokio::time::pause();
    // The connection remembers a bounded number of abandoned ids; replies for ids it
    // has forgotten must still be recognised as late, not as protocol violations.
    let config = ConnectionConfig::builder()
        .max_in_flight(4)
        .call_timeout(Duration::from_secs(1))
        .heartbeat_interval(Duration::from_secs(60))
        .heartbeat_timeout(Duration::from_secs(180))
        .build()
        .unwrap();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(config).await;
    const CALLS: usize = 10;

    let mut requests = Vec::new();
    for i in 0..CALLS {
        let pending = actix_rt::spawn(addr.send(call(numbered(i))));
        requests.push(peer.expect_request(WAIT).await);
        assert!(matches!(
            finish(pending).await,
            Ok(Err(CallError::Timeout { .. }))
        ));
    }
    for request in &requests {
        peer.reply(request, "late").await;
    }
    let check = actix_rt::spawn(addr.send(call("after")));
    let request = peer.expect_request(WAIT).await;
    peer.reply(&request, "own").await;
    assert_eq!(reply_of(finish(check).await), "own");
    assert_not_closed(&mut events);
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.timeouts, CALLS as u64);
    assert_eq!(stats.late_replies, CALLS as u64);
}
