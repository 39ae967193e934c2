//! Traffic shape: bursts larger than `max_in_flight` on a connection configured to
//! wait (issue 15, item 2; docs/reliability.md T2).
//!
//! With `max_waiting_calls(n)`, a call past `max_in_flight` waits for room, first come
//! first served, bounded by its own timeout (`Timeout`) and by `n` waiting calls
//! (`Overloaded(Waiting)` at once past it); a connection that closes fails every waiting
//! call exactly once. The default (0) keeps `Overloaded` at once. Shapes: bursts of 1×
//! to 300× `max_in_flight`, `max_in_flight` from 1 to 64, a peer that answers at once or
//! after a delay; all in virtual time.
#![cfg(feature = "testkit")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{call, connect, finish, numbered, spawn_calls, CallResult, Setup, WAIT};
use switchboard::protocol::frame::FrameKind;
use switchboard::testkit::MockPeer;
use switchboard::{Abort, CallError, Close, CloseReason, ConnectionConfig, GetStats, Overload};
use tokio::time::Instant;

fn waiting(max_in_flight: usize, max_waiting: usize) -> ConnectionConfig {
    ConnectionConfig::builder()
        .max_in_flight(max_in_flight)
        .max_waiting_calls(max_waiting)
        .build()
        .unwrap()
}

/// Answers every request with its own payload, after `delay`, until `count` are done;
/// returns the payloads in the order the requests arrived.
fn echo(
    mut peer: MockPeer,
    count: usize,
    delay: Duration,
) -> tokio::task::JoinHandle<(MockPeer, Vec<Bytes>)> {
    actix_rt::spawn(async move {
        let mut seen = Vec::with_capacity(count);
        while seen.len() < count {
            let frame = peer.expect_frame(Duration::from_secs(60)).await;
            if frame.kind != FrameKind::Request {
                continue;
            }
            tokio::time::sleep(delay).await;
            seen.push(frame.payload.clone());
            peer.reply(&frame, frame.payload.clone()).await;
        }
        (peer, seen)
    })
}

fn outcome(result: &CallResult) -> &'static str {
    match result {
        Ok(Ok(_)) => "ok",
        Ok(Err(CallError::Overloaded(_))) => "overloaded",
        Ok(Err(CallError::Timeout { .. })) => "timeout",
        Ok(Err(CallError::Closed(_))) => "closed",
        Ok(Err(CallError::Closing)) => "closing",
        Ok(Err(_)) => "other",
        Err(_) => "mailbox",
    }
}

#[actix::test]
async fn a_burst_larger_than_max_in_flight_all_succeeds_in_arrival_order() {
    tokio::time::pause();
    for (max_in_flight, burst, delay) in [
        (1, 50, Duration::ZERO),
        (8, 500, Duration::from_millis(1)),
        (64, 2_000, Duration::ZERO),
        (4, 1_200, Duration::ZERO),
    ] {
        let shape = format!("max_in_flight {max_in_flight}, burst {burst}, peer delay {delay:?}");
        let Setup { addr, peer, .. } = connect(waiting(max_in_flight, burst)).await;
        let peer = echo(peer, burst, delay);
        let results = finish(spawn_calls(&addr, (0..burst).map(numbered))).await;
        let failed: Vec<_> = results.iter().map(outcome).filter(|o| *o != "ok").collect();
        assert!(
            failed.is_empty(),
            "{shape}: {} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        for (i, result) in results.into_iter().enumerate() {
            assert_eq!(
                common::reply_of(result),
                numbered(i),
                "{shape}: call {i} got another's reply"
            );
        }
        // First come, first served: the peer saw the requests in the order they were made.
        let (_peer, seen) = finish(peer).await;
        let expected: Vec<_> = (0..burst).map(numbered).collect();
        assert_eq!(seen, expected, "{shape}: requests out of arrival order");
        let stats = addr.send(GetStats).await.unwrap();
        assert_eq!(stats.overloaded, 0, "{shape}: {stats:?}");
        assert_eq!(stats.queued_calls, 0, "{shape}: {stats:?}");
    }
}

#[actix::test]
async fn without_the_wait_policy_a_burst_past_max_in_flight_is_overloaded_at_once() {
    tokio::time::pause();
    let Setup { addr, mut peer, .. } = connect(waiting(4, 0)).await;
    let results = spawn_calls(&addr, (0..10).map(numbered));
    let requests = peer.expect_frames(4, WAIT).await;
    for request in &requests {
        peer.reply(request, "ok").await;
    }
    let results = finish(results).await;
    let overloaded = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Ok(Err(CallError::Overloaded(Overload::InFlight { limit: 4 })))
            )
        })
        .count();
    assert_eq!(overloaded, 6);
}

#[actix::test]
async fn a_waiting_call_ends_by_its_own_timeout_and_never_reaches_the_peer() {
    tokio::time::pause();
    let Setup { addr, mut peer, .. } = connect(waiting(1, 10)).await;
    // The one slot is taken by a call the peer holds for 5 s.
    let first = actix_rt::spawn(addr.send(call("first")));
    let held = peer.expect_request(WAIT).await;
    let start = Instant::now();
    let second = actix_rt::spawn(addr.send(call("second").timeout(Duration::from_millis(500))));
    let third = actix_rt::spawn(addr.send(call("third")));

    let second = finish(second).await;
    let took = start.elapsed();
    assert!(
        matches!(second, Ok(Err(CallError::Timeout { after })) if after == Duration::from_millis(500)),
        "{second:?}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(600),
        "{took:?}"
    );

    tokio::time::sleep(Duration::from_secs(5)).await;
    peer.reply(&held, "first").await;
    assert_eq!(common::reply_of(finish(first).await), "first");
    // The next request on the wire is the third: the second gave up before it was sent.
    let next = peer.expect_request(WAIT).await;
    assert_eq!(next.payload, "third");
    peer.reply(&next, "third").await;
    assert_eq!(common::reply_of(finish(third).await), "third");
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.calls, 2, "{stats:?}");
}

#[actix::test]
async fn past_max_waiting_calls_a_call_is_overloaded_at_once() {
    tokio::time::pause();
    let Setup { addr, mut peer, .. } = connect(waiting(2, 3)).await;
    let results = spawn_calls(&addr, (0..8).map(numbered));
    let requests = peer.expect_frames(2, WAIT).await;
    // 2 in flight, 3 waiting, 3 refused at once.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!((stats.in_flight, stats.queued_calls), (2, 3), "{stats:?}");
    for request in &requests {
        peer.reply(request, request.payload.clone()).await;
    }
    for _ in 0..3 {
        let request = peer.expect_request(WAIT).await;
        peer.reply(&request, request.payload.clone()).await;
    }
    let results = finish(results).await;
    let outcomes: Vec<_> = results.iter().map(outcome).collect();
    assert_eq!(
        outcomes,
        [
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "overloaded",
            "overloaded",
            "overloaded"
        ]
    );
    assert!(
        matches!(
            results[7],
            Ok(Err(CallError::Overloaded(Overload::Waiting { limit: 3 })))
        ),
        "{:?}",
        results[7]
    );
}

#[actix::test]
async fn a_connection_that_closes_fails_every_waiting_call_exactly_once() {
    tokio::time::pause();
    // Abort: every call, in flight or waiting, fails once with Closed(Aborted).
    let Setup { addr, mut peer, .. } = connect(waiting(4, 1000)).await;
    let results = spawn_calls(&addr, (0..500).map(numbered));
    peer.expect_frames(4, WAIT).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(addr.send(GetStats).await.unwrap().queued_calls, 496);
    addr.send(Abort).await.unwrap();
    let results = finish(results).await;
    assert_eq!(results.len(), 500);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(Err(CallError::Closed(CloseReason::Aborted))))),
        "{:?}",
        results.iter().map(outcome).collect::<Vec<_>>()
    );

    // A graceful close: waiting calls never reached the wire, so they fail with
    // Closing at once (safe to retry elsewhere); calls in flight get their replies.
    let Setup { addr, mut peer, .. } = connect(waiting(2, 1000)).await;
    let results = spawn_calls(&addr, (0..10).map(numbered));
    let requests = peer.expect_frames(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let close = actix_rt::spawn(addr.send(Close::default()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    for request in &requests {
        peer.reply(request, request.payload.clone()).await;
    }
    let reason = finish(close).await.unwrap();
    assert!(matches!(reason, CloseReason::Closed), "{reason:?}");
    let outcomes: Vec<_> = finish(results).await.iter().map(outcome).collect();
    let mut expected = vec!["ok"; 2];
    expected.extend(["closing"; 8]);
    assert_eq!(outcomes, expected);
    peer.expect_closed(WAIT).await;
}

mod generated {
    //! Generated shapes: `max_in_flight`, `max_waiting_calls`, burst size, each call's
    //! timeout and the peer's pace. Every call ends exactly once, with its own reply or
    //! a typed error that the shape explains; the peer sees requests in arrival order.
    //! A fixed seed, so CI runs the same cases every time.
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    #[derive(Debug, Clone)]
    struct Shape {
        max_in_flight: usize,
        max_waiting: usize,
        burst: usize,
        /// Per call: its own timeout in ms, or the config's (30 s).
        timeouts: Vec<Option<u64>>,
        peer_delay_ms: u64,
    }

    fn shapes() -> impl Strategy<Value = Shape> {
        (1usize..=16, 0usize..=64, 1usize..=200, 0u64..=20).prop_flat_map(
            |(max_in_flight, max_waiting, burst, peer_delay_ms)| {
                proptest::collection::vec(proptest::option::weighted(0.2, 1u64..=2_000), burst)
                    .prop_map(move |timeouts| Shape {
                        max_in_flight,
                        max_waiting,
                        burst,
                        timeouts,
                        peer_delay_ms,
                    })
            },
        )
    }

    async fn run(shape: Shape) -> Result<(), TestCaseError> {
        let Setup { addr, peer, .. } =
            connect(waiting(shape.max_in_flight, shape.max_waiting)).await;
        // The peer answers whatever reaches it, one at a time.
        let peer = actix_rt::spawn(async move {
            let mut peer = peer;
            let mut seen = Vec::new();
            while let Ok(Some(Ok(frame))) = tokio::time::timeout(
                Duration::from_secs(5),
                futures::StreamExt::next(peer.framed()),
            )
            .await
            {
                if frame.kind != FrameKind::Request {
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(shape.peer_delay_ms)).await;
                seen.push(frame.payload.clone());
                peer.reply(&frame, frame.payload.clone()).await;
            }
            seen
        });
        let requests: Vec<_> = (0..shape.burst)
            .map(|i| {
                let mut call = call(numbered(i));
                if let Some(ms) = shape.timeouts[i] {
                    call = call.timeout(Duration::from_millis(ms));
                }
                addr.send(call)
            })
            .collect();
        let results = finish(actix_rt::spawn(futures::future::join_all(requests))).await;
        prop_assert_eq!(results.len(), shape.burst);
        // In one mailbox batch: the first max_in_flight are written, the next
        // max_waiting wait, the rest are refused at once.
        let admitted = shape.max_in_flight + shape.max_waiting;
        for (i, result) in results.iter().enumerate() {
            match result {
                Ok(Ok(reply)) => {
                    prop_assert_eq!(reply, &numbered(i), "call {} got another's reply", i)
                }
                Ok(Err(CallError::Overloaded(_))) => {
                    prop_assert!(
                        i >= admitted,
                        "call {} refused though it fit ({} admitted)",
                        i,
                        admitted
                    )
                }
                Ok(Err(CallError::Timeout { after })) => {
                    prop_assert!(i < admitted, "call {} timed out though it was refused", i);
                    prop_assert_eq!(Some(after.as_millis() as u64), shape.timeouts[i]);
                }
                other => prop_assert!(false, "call {}: {:?}", i, other),
            }
            if i >= admitted {
                prop_assert!(
                    matches!(result, Ok(Err(CallError::Overloaded(_)))),
                    "call {}: {:?}",
                    i,
                    result
                );
            }
            if i < admitted && shape.timeouts[i].is_none() {
                prop_assert!(
                    matches!(result, Ok(Ok(_))),
                    "call {} with 30 s: {:?}",
                    i,
                    result
                );
            }
        }
        // Requests reached the peer in arrival order (those that gave up while waiting
        // never did).
        drop(addr);
        let seen = finish(peer).await;
        let mut last = None;
        for payload in seen {
            let i: usize = std::str::from_utf8(&payload[5..]).unwrap().parse().unwrap();
            prop_assert!(
                last.map_or(true, |l| i > l),
                "request {} after {:?}",
                i,
                last
            );
            last = Some(i);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(Config {
            cases: 32,
            rng_seed: RngSeed::Fixed(15),
            failure_persistence: None,
            ..Config::default()
        })]

        #[test]
        fn every_call_of_any_burst_ends_once_as_its_shape_says(shape in shapes()) {
            actix_rt::System::new().block_on(async move {
                tokio::time::pause();
                run(shape).await
            })?;
        }
    }
}
