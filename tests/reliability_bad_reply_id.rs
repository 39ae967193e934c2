//! Reliability scenario 7 (issue 5): the peer answers with an unknown or a duplicate
//! reply id.
//!
//! What a user of the Pool can rely on, proved end to end through pooled connections:
//! - the connection that got the bad reply closes with `CloseReason::Protocol` (its
//!   message names the id), and only that connection: another pooled connection's
//!   call in flight is answered as usual;
//! - every call pending on it fails exactly once with
//!   `CallError::Closed(CloseReason::Protocol(..))`, except that a good first reply
//!   to an id reached its caller before the duplicate came;
//! - its peer sees the transport closed, later calls on the dead lease fail at once
//!   rather than hang, and the pool counts it (`closed["protocol"]`) and replaces it:
//!   the next checkout gets a new `ConnectionId` that works.
//!
//! How the fault is made: the pool's far end is a scripted `MockPeer` per connection
//! (in-memory pipes, virtual time) that answers with an id that was never sent, with
//! id 0, or twice for the same id (reply then reply, reply then error).
//!
//! ```text
//! cargo test --all-features --test reliability_bad_reply_id
//! ```
#![cfg(feature = "testkit")]

mod reliability_common;

use std::time::Duration;

use bytes::Bytes;
use reliability_common::*;
use switchboard::protocol::frame::{Frame, FrameRequest};
use switchboard::testkit::Probe;
use switchboard::{Call, CallError, CloseReason, ConnectionEvent};

/// How the peer breaks the rules.
#[derive(Debug, Clone, Copy)]
enum BadReply {
    /// A response for an id far past any that was sent.
    UnknownId,
    /// A response for id 0, which is never sent.
    IdZero,
    /// A good response to the first call, then a second response for the same id.
    DuplicateReply,
    /// A good response to the first call, then an error for the same id.
    DuplicateError,
}

/// Calls pending on the connection that gets the bad reply.
const CALLS: usize = 5;

/// Two pooled connections, each leased, one call pending on the healthy one and
/// `CALLS` on the other, which then gets `bad`. Checks what the module doc promises.
async fn a_bad_reply_closes_only_its_connection_and_the_pool_replaces_it(bad: BadReply) {
    tokio::time::pause();
    let mut bed = ScriptedBed::new("bad-reply");
    let mut events = Probe::<ConnectionEvent>::start();
    let pool = within(
        WAIT,
        "eager build",
        bed.pool(
            pool_config().min_idle(2).max_size(2),
            quiet_connection().build().unwrap(),
        )
        .events(events.recipient())
        .build(),
    )
    .await
    .unwrap();
    let a = bed.authority.clone();
    let mut peers = [bed.accept().await, bed.accept().await];

    // Which peer is whose: the first call on each lease tells.
    let broken = pool.checkout(&a).await.unwrap();
    let healthy = pool.checkout(&a).await.unwrap();
    let hello = actix::spawn(broken.send(Call::new(FrameRequest::new("hello"))));
    let (at, request) = next_frame_on_either(&mut peers, WAIT).await;
    peers[at].reply(&request, "hello").await;
    within(WAIT, "hello", hello)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let [first, second] = peers;
    let (mut bad_peer, mut good_peer) = if at == 0 {
        (first, second)
    } else {
        (second, first)
    };
    let broken_id = broken.id();
    let healthy_id = healthy.id();

    // A call in flight on the healthy connection, `CALLS` on the other.
    let healthy_call = actix::spawn(healthy.send(Call::new(FrameRequest::new("healthy"))));
    let healthy_request = good_peer.expect_request(WAIT).await;
    let callers: Vec<_> = (0..CALLS)
        .map(|n| {
            let call = broken.send(Call::new(FrameRequest::new(payload(n, 8))));
            actix::spawn(async move { (n, call.await) })
        })
        .collect();
    let requests = bad_peer.expect_frames(CALLS, WAIT).await;
    let first_id = requests[0].id;
    let bad_id = match bad {
        BadReply::UnknownId => {
            let unknown = requests.iter().map(|r| r.id).max().unwrap() + 1000;
            bad_peer.send(Frame::response(unknown, "who asked?")).await;
            unknown
        }
        BadReply::IdZero => {
            bad_peer.send(Frame::response(0, "nobody asked")).await;
            0
        }
        BadReply::DuplicateReply => {
            bad_peer.reply(&requests[0], "first").await;
            bad_peer.reply(&requests[0], "again").await;
            first_id
        }
        BadReply::DuplicateError => {
            bad_peer.reply(&requests[0], "first").await;
            bad_peer.reply_error(&requests[0], "changed my mind").await;
            first_id
        }
    };

    // The pool hears the connection closed, for the protocol violation naming the id.
    let (closed, reason) = next_closed(&mut events, WAIT).await;
    assert_eq!(closed, broken_id);
    match &reason {
        CloseReason::Protocol(problem) => assert!(
            problem.contains(&format!("id {bad_id}")),
            "{bad:?}: the reason names the id: {problem}"
        ),
        other => panic!("{bad:?}: expected a protocol violation, got {other:?}"),
    }

    // Every caller hears exactly once (one result per spawned caller), with that reason;
    // a first good reply to a duplicated id reached its own caller before.
    let mut failed = 0;
    for caller in callers {
        let (n, result) = within(WAIT, "every caller is answered", caller)
            .await
            .unwrap();
        match result.expect("the connection handled the call") {
            Ok(reply)
                if n == 0 && matches!(bad, BadReply::DuplicateReply | BadReply::DuplicateError) =>
            {
                assert_eq!(reply, Bytes::from_static(b"first"));
            }
            Err(error) => {
                assert!(
                    matches!(closed_reason(&error), CloseReason::Protocol(_)),
                    "{bad:?}: caller {n}: {error:?}"
                );
                failed += 1;
            }
            other => panic!("{bad:?}: caller {n} got {other:?}"),
        }
    }
    let expected_failures = match bad {
        BadReply::UnknownId | BadReply::IdZero => CALLS,
        BadReply::DuplicateReply | BadReply::DuplicateError => CALLS - 1,
    };
    assert_eq!(failed, expected_failures);
    bad_peer.expect_closed(WAIT).await;

    // A later call on the dead lease fails at once; dropping the lease is harmless.
    let late = within(
        WAIT,
        "call on the closed lease",
        broken.call(FrameRequest::new("x")),
    )
    .await
    .unwrap_err();
    assert!(matches!(late, CallError::Closed(_)), "{late:?}");
    drop(broken);

    // The other connection never noticed.
    good_peer.reply(&healthy_request, "healthy").await;
    let reply = within(WAIT, "healthy call", healthy_call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.unwrap(), Bytes::from_static(b"healthy"));

    // The pool replaces the broken connection: a new one connects and the next
    // checkout gets it, under a new id, and it works.
    let mut new_peer = bed.accept().await;
    let replaced = eventually(WAIT, "the pool replaces the connection", || async {
        let status = pool.status().await.unwrap();
        let group = status.authority(&a).unwrap();
        (group.size == 2 && group.idle == 1 && group.connecting == 0).then_some(status)
    })
    .await;
    assert_eq!(replaced.counters.closed.get("protocol"), Some(&1));
    assert_eq!(replaced.counters.closed.values().sum::<u64>(), 1);
    assert_eq!(replaced.counters.created, 3);
    let lease = within(WAIT, "checkout", pool.checkout(&a)).await.unwrap();
    assert_ne!(lease.id(), broken_id);
    assert_ne!(lease.id(), healthy_id);
    let call = actix::spawn(lease.send(Call::new(FrameRequest::new("fresh"))));
    let request = new_peer.expect_request(WAIT).await;
    new_peer.reply(&request, "fresh").await;
    let reply = within(WAIT, "call on the replacement", call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.unwrap(), Bytes::from_static(b"fresh"));
    drop((lease, healthy));

    let status = pool.status().await.unwrap();
    let group = status.authority(&a).unwrap();
    assert_eq!(
        (group.size, group.idle, group.leased),
        (2, 2, 0),
        "{group:#?}"
    );
    within(WAIT, "close", pool.close()).await;
}

#[actix::test]
async fn a_reply_for_an_id_never_sent_closes_only_that_connection() {
    a_bad_reply_closes_only_its_connection_and_the_pool_replaces_it(BadReply::UnknownId).await;
}

#[actix::test]
async fn a_reply_for_id_zero_closes_only_that_connection() {
    a_bad_reply_closes_only_its_connection_and_the_pool_replaces_it(BadReply::IdZero).await;
}

#[actix::test]
async fn a_second_reply_for_the_same_id_closes_only_that_connection() {
    a_bad_reply_closes_only_its_connection_and_the_pool_replaces_it(BadReply::DuplicateReply).await;
}

#[actix::test]
async fn an_error_after_a_reply_for_the_same_id_closes_only_that_connection() {
    a_bad_reply_closes_only_its_connection_and_the_pool_replaces_it(BadReply::DuplicateError).await;
}

/// Shared use: callers from many tasks multiplexed on one connection all fail once,
/// and the next shared handle the pool gives out is the replacement.
#[actix::test]
async fn every_caller_multiplexed_on_a_shared_connection_fails_once_and_shared_use_moves_on() {
    tokio::time::pause();
    let mut bed = ScriptedBed::new("bad-reply-shared");
    let pool = within(
        WAIT,
        "eager build",
        bed.pool(
            pool_config().min_idle(1).max_size(1),
            quiet_connection().build().unwrap(),
        )
        .build(),
    )
    .await
    .unwrap();
    let a = bed.authority.clone();
    let mut peer = bed.accept().await;
    let shared = pool.shared(&a).await.unwrap();
    let broken_id = shared.id();

    const CALLERS: usize = 20;
    let callers: Vec<_> = (0..CALLERS)
        .map(|n| {
            let shared = shared.clone();
            actix::spawn(async move { shared.call(FrameRequest::new(payload(n, 8))).await })
        })
        .collect();
    let requests = peer.expect_frames(CALLERS, WAIT).await;
    // The even callers are answered; then comes a reply for an id never sent.
    let even: Vec<_> = (0..CALLERS).step_by(2).map(|n| payload(n, 8)).collect();
    for request in requests
        .iter()
        .filter(|r| even.contains(&r.payload.to_vec()))
    {
        peer.reply(request, request.payload.clone()).await;
    }
    let unknown = requests.iter().map(|r| r.id).max().unwrap() + 1;
    peer.send(Frame::response(unknown, "stray")).await;

    let (mut answered, mut failed) = (0, 0);
    for (n, caller) in callers.into_iter().enumerate() {
        match within(WAIT, "every caller is answered", caller)
            .await
            .unwrap()
        {
            Ok(reply) if n % 2 == 0 => {
                assert_eq!(reply, payload(n, 8));
                answered += 1;
            }
            Err(error) if n % 2 == 1 => {
                assert!(
                    matches!(closed_reason(&error), CloseReason::Protocol(_)),
                    "caller {n}: {error:?}"
                );
                failed += 1;
            }
            other => panic!("caller {n} got {other:?}"),
        }
    }
    assert_eq!((answered, failed), (CALLERS / 2, CALLERS / 2));

    // The next shared handle is the replacement, and it works.
    let mut new_peer = bed.accept().await;
    let replacement = eventually(WAIT, "a shared handle on the replacement", || async {
        let shared = pool.shared_within(&a, Duration::from_secs(1)).await.ok()?;
        (shared.id() != broken_id).then_some(shared)
    })
    .await;
    let call = {
        let replacement = replacement.clone();
        actix::spawn(async move { replacement.call(FrameRequest::new("fresh")).await })
    };
    let request = new_peer.expect_request(WAIT).await;
    new_peer.reply(&request, "fresh").await;
    let reply = within(WAIT, "call on the replacement", call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, Bytes::from_static(b"fresh"));
    let status = pool.status().await.unwrap();
    assert_eq!(status.counters.closed.get("protocol"), Some(&1));
    within(WAIT, "close", pool.close()).await;
}
