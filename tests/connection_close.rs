//! How a Connection ends, and what its callers see when it does.
//!
//! Whatever the cause — `Abort`, a graceful `Close` (drained or timed out), the peer
//! hanging up — every call pending at that moment resolves exactly once with
//! `CallError::Closed(reason)`, answered calls keep their replies, the supervisor gets
//! exactly one `Closed` event, the peer sees its transport closed, and later calls fail
//! instead of hanging.
#![cfg(feature = "testkit")]

mod common;

use std::time::Duration;

use common::{
    assert_no_more_events, call, closed_exactly_once, closed_reason, connect, finish, next_closed,
    numbered, reply_of, spawn_calls, CallResult, Setup, WAIT,
};
use switchboard::{Abort, CallError, Close, CloseReason, ConnectionConfig, GetStats};
use tokio::time::Instant;

const CALLS: usize = 1000;

/// A call made after the connection closed: it must fail, with `Closed` if the actor
/// still handles it or a mailbox error if the actor is already gone.
fn assert_failed_after_close(result: &CallResult) {
    assert!(
        matches!(result, Ok(Err(CallError::Closed(_))) | Err(_)),
        "a call after the close must fail, got {result:?}"
    );
}

#[actix::test]
async fn abort_fails_every_one_of_a_thousand_pending_calls_once() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let results = spawn_calls(&addr, (0..CALLS).map(numbered));
    // All of them are on the wire, so all of them are pending.
    peer.expect_frames(CALLS, WAIT).await;
    assert_eq!(addr.send(GetStats).await.unwrap().in_flight, CALLS);

    let reason = addr.send(Abort).await.unwrap();
    assert!(matches!(reason, CloseReason::Aborted), "{reason:?}");

    let results = finish(results).await;
    assert_eq!(results.len(), CALLS, "every call resolved");
    let aborted = results
        .iter()
        .filter(|r| matches!(closed_reason(r), Some(CloseReason::Aborted)))
        .count();
    assert_eq!(aborted, CALLS, "every call failed with Closed(Aborted)");

    assert!(matches!(
        closed_exactly_once(&mut events).await,
        CloseReason::Aborted
    ));
    peer.expect_closed(WAIT).await;
    assert_failed_after_close(&addr.send(call("too late")).await);
}

#[actix::test]
async fn graceful_close_keeps_answered_calls_and_times_out_the_rest() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;
    const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

    let results = spawn_calls(&addr, (0..CALLS).map(numbered));
    let requests = peer.expect_frames(CALLS, WAIT).await;

    let start = Instant::now();
    let close = actix_rt::spawn(addr.send(Close {
        timeout: Some(CLOSE_TIMEOUT),
    }));
    let stats = addr.send(GetStats).await.unwrap();
    assert!(stats.closing);

    // New calls are refused while closing; nothing is written for them.
    let refused = addr.send(call("during close")).await;
    assert!(
        matches!(refused, Ok(Err(CallError::Closing))),
        "{refused:?}"
    );

    // The peer answers the even-numbered calls only.
    let is_even = |payload: &[u8]| {
        let n: usize = std::str::from_utf8(&payload[b"call-".len()..])
            .unwrap()
            .parse()
            .unwrap();
        n % 2 == 0
    };
    for request in requests.iter().filter(|r| is_even(&r.payload)) {
        peer.reply(request, request.payload.clone()).await;
    }

    let reason = finish(close).await.unwrap();
    let closed_after = start.elapsed();
    match reason {
        CloseReason::CloseTimeout { after } => assert_eq!(after, CLOSE_TIMEOUT),
        other => panic!("expected CloseTimeout, got {other:?}"),
    }
    assert!(
        closed_after >= CLOSE_TIMEOUT && closed_after < CLOSE_TIMEOUT + Duration::from_millis(100),
        "closed after {closed_after:?}"
    );

    let results = finish(results).await;
    assert_eq!(results.len(), CALLS, "every call resolved");
    for (i, result) in results.into_iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(reply_of(result), numbered(i), "answered call {i}");
        } else {
            assert!(
                matches!(
                    closed_reason(&result),
                    Some(CloseReason::CloseTimeout { .. })
                ),
                "call {i}: {result:?}"
            );
        }
    }
    assert!(matches!(
        closed_exactly_once(&mut events).await,
        CloseReason::CloseTimeout { .. }
    ));
    peer.expect_closed(WAIT).await;
}

#[actix::test]
async fn graceful_close_finishes_as_soon_as_every_call_is_answered() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let results = spawn_calls(&addr, (0..10).map(numbered));
    let requests = peer.expect_frames(10, WAIT).await;
    let start = Instant::now();
    let close = actix_rt::spawn(addr.send(Close::default()));
    // A second Close while closing resolves with the same reason.
    let second_close = actix_rt::spawn(addr.send(Close::default()));
    addr.send(GetStats).await.unwrap();
    for request in &requests {
        peer.reply(request, request.payload.clone()).await;
    }

    assert!(matches!(finish(close).await.unwrap(), CloseReason::Closed));
    assert!(matches!(
        finish(second_close).await.unwrap(),
        CloseReason::Closed
    ));
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "closed after {:?}",
        start.elapsed()
    );
    for (i, result) in finish(results).await.into_iter().enumerate() {
        assert_eq!(reply_of(result), numbered(i));
    }
    assert!(matches!(
        closed_exactly_once(&mut events).await,
        CloseReason::Closed
    ));
    peer.expect_closed(WAIT).await;
}

#[actix::test]
async fn graceful_close_with_nothing_in_flight_closes_at_once() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let start = Instant::now();
    let reason = tokio::time::timeout(WAIT, addr.send(Close::default()))
        .await
        .expect("Close resolves")
        .unwrap();
    assert!(matches!(reason, CloseReason::Closed), "{reason:?}");
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "closed after {:?}",
        start.elapsed()
    );
    assert!(matches!(
        closed_exactly_once(&mut events).await,
        CloseReason::Closed
    ));
    peer.expect_closed(WAIT).await;
    assert_failed_after_close(&addr.send(call("too late")).await);
}

#[actix::test]
async fn a_close_racing_an_abort_resolves_with_the_abort() {
    tokio::time::pause();
    let Setup {
        addr, mut events, ..
    } = connect(ConnectionConfig::default()).await;

    // Both sent before either is handled: the second sees the first one's reason.
    let abort = addr.send(Abort);
    let close = addr.send(Close::default());
    assert!(matches!(abort.await.unwrap(), CloseReason::Aborted));
    // It resolves, never hangs: with the first reason, or with a mailbox error if the
    // actor had already stopped and dropped the message.
    let close = tokio::time::timeout(WAIT, close)
        .await
        .expect("Close resolves");
    if let Ok(reason) = close {
        assert!(matches!(reason, CloseReason::Aborted), "{reason:?}");
    }
    assert!(matches!(
        closed_exactly_once(&mut events).await,
        CloseReason::Aborted
    ));
}

/// How the peer goes away in the two tests below.
enum PeerLeaves {
    /// It shuts its side down.
    Closing,
    /// Its end of the pipe is dropped.
    Dropped,
}

/// Ten calls are pending when the peer leaves: each fails once with `PeerClosed`, the
/// supervisor hears `Closed` once, and later calls fail.
async fn the_peer_leaving_fails_pending_calls_with_peer_closed(leaves: PeerLeaves) {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let results = spawn_calls(&addr, (0..10).map(numbered));
    peer.expect_frames(10, WAIT).await;
    match leaves {
        PeerLeaves::Closing => peer.close().await,
        PeerLeaves::Dropped => drop(peer),
    }

    assert!(matches!(
        closed_exactly_once(&mut events).await,
        CloseReason::PeerClosed
    ));
    let results = finish(results).await;
    assert_eq!(results.len(), 10);
    for result in &results {
        assert!(
            matches!(closed_reason(result), Some(CloseReason::PeerClosed)),
            "{result:?}"
        );
    }
    assert_no_more_events(&mut events).await;
    for result in finish(spawn_calls(&addr, (0..3).map(numbered))).await {
        assert_failed_after_close(&result);
    }
}

#[actix::test]
async fn the_peer_closing_fails_pending_calls_with_peer_closed() {
    the_peer_leaving_fails_pending_calls_with_peer_closed(PeerLeaves::Closing).await;
}

#[actix::test]
async fn the_peer_going_away_fails_pending_calls_with_peer_closed() {
    the_peer_leaving_fails_pending_calls_with_peer_closed(PeerLeaves::Dropped).await;
}

#[actix::test]
async fn dropping_the_last_address_closes_gracefully_after_in_flight_calls() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let results = spawn_calls(&addr, (0..10).map(numbered));
    let requests = peer.expect_frames(10, WAIT).await;
    drop(addr);
    // Calls already made still get their replies...
    for request in &requests {
        peer.reply(request, request.payload.clone()).await;
    }
    for (i, result) in finish(results).await.into_iter().enumerate() {
        assert_eq!(reply_of(result), numbered(i));
    }
    // ...then the connection closes on its own and releases the transport.
    assert!(matches!(
        next_closed(&mut events).await,
        CloseReason::Closed
    ));
    peer.expect_closed(WAIT).await;
}

#[actix::test]
async fn dropping_the_last_address_of_an_idle_connection_closes_it_promptly() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let start = Instant::now();
    drop(addr);
    assert!(matches!(
        next_closed(&mut events).await,
        CloseReason::Closed
    ));
    // Not at the next heartbeat (10 s by default): at once.
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "closed after {:?}",
        start.elapsed()
    );
    peer.expect_closed(WAIT).await;
}

/// Issue 15, item 13 (docs/reliability.md T13): the earliest deadline wins. Shapes: a
/// second `Close` shorter than the first, and longer; calls in flight that the peer
/// never answers, so only the deadline can end the close.
#[actix::test]
async fn a_second_close_with_a_shorter_timeout_ends_at_its_own_deadline() {
    tokio::time::pause();
    for (first, second) in [
        (Duration::from_secs(60), Duration::from_secs(1)),
        (Duration::from_secs(3600), Duration::from_millis(10)),
        (Duration::MAX, Duration::from_secs(2)),
        // A longer second close does not extend the first one.
        (Duration::from_secs(1), Duration::from_secs(60)),
    ] {
        let Setup {
            addr,
            mut peer,
            mut events,
            ..
        } = connect(ConnectionConfig::default()).await;
        let results = spawn_calls(&addr, (0..3).map(numbered));
        peer.expect_frames(3, WAIT).await;

        let start = Instant::now();
        let first_close = actix_rt::spawn(addr.send(Close {
            timeout: Some(first),
        }));
        // The first close is under way before the second one comes.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let second_close = actix_rt::spawn(addr.send(Close {
            timeout: Some(second),
        }));
        let earliest = first.min(second + Duration::from_millis(1));

        // Fails here if the close waits out the later deadline.
        let reason = next_closed(&mut events).await;
        let closed_after = start.elapsed();
        assert!(
            closed_after >= earliest.min(Duration::from_secs(3600))
                && closed_after < earliest + Duration::from_millis(100),
            "({first:?}, {second:?}): closed after {closed_after:?}, expected {earliest:?}"
        );
        let after = first.min(second);
        assert!(
            matches!(reason, CloseReason::CloseTimeout { after: a } if a == after),
            "({first:?}, {second:?}): {reason:?}"
        );
        // Both closers hear the one reason; every call fails once with it.
        for close in [first_close, second_close] {
            let heard = tokio::time::timeout(WAIT, close)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert!(
                matches!(heard, CloseReason::CloseTimeout { after: a } if a == after),
                "{heard:?}"
            );
        }
        for result in finish(results).await {
            assert!(
                matches!(
                    closed_reason(&result),
                    Some(CloseReason::CloseTimeout { .. })
                ),
                "{result:?}"
            );
        }
        assert_no_more_events(&mut events).await;
    }
}
