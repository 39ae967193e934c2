//! Heartbeats: how a Connection finds a dead peer and keeps a live one.
//!
//! A quiet link gets a ping after `heartbeat_interval` and not before; a peer that
//! stays silent for `heartbeat_timeout` is declared dead (a half-open link), which
//! fails the calls waiting on it and tells the supervisor, no sooner than the timeout
//! and no later than one interval after it; a peer that answers its pings keeps the
//! connection open indefinitely, with the round trip reported; the peer's own pings
//! are answered. All in virtual time.
#![cfg(feature = "testkit")]

mod common;

use std::time::Duration;

use common::{
    assert_no_more_events, assert_not_closed, call, closed_reason, connect, finish, next_closed,
    reply_of, start_on, within_real_time, Setup, WAIT,
};
use switchboard::protocol::frame::{Frame, FrameKind};
use switchboard::testkit::{MockPeer, Probe};
use switchboard::{CloseReason, ConnectionConfig, ConnectionEvent, GetStats};
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(3);

fn heartbeat_config() -> ConnectionConfig {
    ConnectionConfig::builder()
        .heartbeat_interval(INTERVAL)
        .heartbeat_timeout(TIMEOUT)
        .build()
        .unwrap()
}

#[actix::test]
async fn a_silent_peer_is_pinged_then_closed_after_the_heartbeat_timeout() {
    tokio::time::pause();
    let start = Instant::now();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(heartbeat_config()).await;

    // A call the peer never answers (its own timeout is far away: 30 s).
    let pending = actix_rt::spawn(addr.send(call("anyone there?")));
    peer.expect_request(WAIT).await;

    // Nothing before the interval, then a ping.
    peer.expect_nothing(INTERVAL - Duration::from_millis(10))
        .await;
    let ping = peer
        .expect_kind(FrameKind::Ping, Duration::from_millis(100))
        .await;
    let pinged_at = start.elapsed();
    assert!(
        pinged_at >= INTERVAL && pinged_at < INTERVAL + Duration::from_millis(100),
        "ping after {pinged_at:?}: {ping:?}"
    );

    // The peer does not answer. The connection gives up after the timeout, not before.
    let reason = next_closed(&mut events).await;
    let closed_at = start.elapsed();
    assert!(
        matches!(reason, CloseReason::HeartbeatTimeout { .. }),
        "{reason:?}"
    );
    assert!(
        closed_at >= TIMEOUT && closed_at < TIMEOUT + INTERVAL,
        "closed after {closed_at:?}"
    );

    // The waiting call fails with that reason.
    let result = finish(pending).await;
    match closed_reason(&result) {
        Some(CloseReason::HeartbeatTimeout { silent_for }) => {
            assert!(*silent_for >= TIMEOUT, "silent for {silent_for:?}")
        }
        _ => panic!("expected Closed(HeartbeatTimeout), got {result:?}"),
    }
    assert_no_more_events(&mut events).await;
    // The transport is released: the peer reads end of stream.
    peer.expect_closed(WAIT).await;
}

#[actix::test]
async fn an_idle_connection_with_a_silent_peer_closes_too() {
    tokio::time::pause();
    let start = Instant::now();
    // The address is held: a connection nobody can call closes itself gracefully.
    let Setup {
        addr: _addr,
        mut peer,
        mut events,
        ..
    } = connect(heartbeat_config()).await;

    let reason = next_closed(&mut events).await;
    let closed_at = start.elapsed();
    assert!(
        matches!(reason, CloseReason::HeartbeatTimeout { .. }),
        "{reason:?}"
    );
    assert!(
        closed_at >= TIMEOUT && closed_at < TIMEOUT + INTERVAL,
        "closed after {closed_at:?}"
    );
    // Whatever was written before the close was a ping: no call was made.
    let frames = peer.expect_frames(1, WAIT).await;
    assert_eq!(frames[0].kind, FrameKind::Ping);
    peer.expect_closed(WAIT).await;
}

#[actix::test]
async fn the_peers_ping_is_answered_with_a_pong_carrying_its_id() {
    tokio::time::pause();
    let Setup {
        addr: _addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    peer.send(Frame::ping(7)).await;
    let pong = peer.expect_kind(FrameKind::Pong, WAIT).await;
    assert_eq!(pong.id, 7);
    assert_not_closed(&mut events);
}

#[actix::test]
async fn an_answered_ping_reports_the_round_trip() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(heartbeat_config()).await;

    let ping = peer.expect_kind(FrameKind::Ping, WAIT).await;
    peer.send(Frame::pong(ping.id)).await;

    let event = events
        .within(WAIT, |event| matches!(event, ConnectionEvent::Rtt { .. }))
        .await;
    let stats = addr.send(GetStats).await.unwrap();
    match event {
        ConnectionEvent::Rtt { id, rtt } => {
            assert_eq!(id, stats.id);
            // The peer answered at once (in virtual time).
            assert!(rtt < INTERVAL, "rtt {rtt:?}");
            assert_eq!(stats.rtt, Some(rtt));
        }
        _ => unreachable!("matched as Rtt above"),
    }
    assert_eq!(stats.pings_sent, 1);
}

#[actix::test]
async fn a_peer_that_answers_its_pings_is_kept_open() {
    tokio::time::pause();
    let start = Instant::now();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(heartbeat_config()).await;

    // Ten virtual seconds, more than three heartbeat timeouts, answering every ping.
    let mut pongs = 0u64;
    let mut last_ping = Duration::ZERO;
    for _ in 0..20 {
        if start.elapsed() >= Duration::from_secs(10) {
            break;
        }
        let ping = peer.expect_kind(FrameKind::Ping, TIMEOUT).await;
        let at = start.elapsed();
        // A ping after each quiet interval: not sooner, not much later.
        assert!(
            at - last_ping >= INTERVAL && at - last_ping < INTERVAL + Duration::from_millis(100),
            "ping at {at:?}, previous at {last_ping:?}"
        );
        last_ping = at;
        peer.send(Frame::pong(ping.id)).await;
        pongs += 1;
        // Each answered ping is reported; the connection never closes meanwhile.
        loop {
            match events.expect(WAIT).await {
                ConnectionEvent::Rtt { .. } => break,
                event @ ConnectionEvent::Closed { .. } => {
                    panic!("closed while the peer answered its pings: {event:?}")
                }
                _ => {}
            }
        }
    }
    assert!(start.elapsed() >= Duration::from_secs(10));
    assert!(pongs >= 9, "{pongs} pings answered in 10 s");
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.pings_sent, pongs);
    assert!(stats.rtt.is_some());

    // Still usable.
    let reply = actix_rt::spawn(addr.send(call("still there?")));
    let request = peer.expect_request(WAIT).await;
    peer.reply(&request, "yes").await;
    assert_eq!(reply_of(finish(reply).await), "yes");
}

#[actix::test]
async fn any_inbound_frame_counts_as_liveness() {
    tokio::time::pause();
    let start = Instant::now();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(heartbeat_config()).await;

    // The peer keeps the link busy with a push every 400 ms and never a pong: the link
    // is never quiet for an interval, so no ping goes out (`expect_nothing` would see
    // it) and the connection stays open long past the heartbeat timeout.
    while start.elapsed() < Duration::from_secs(10) {
        peer.send(Frame::push("tick", "")).await;
        peer.expect_nothing(Duration::from_millis(400)).await;
    }
    assert_not_closed(&mut events);
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.pings_sent, 0, "no ping on a busy link");
}

#[actix::test]
async fn a_peer_that_stopped_reading_is_closed_after_the_heartbeat_timeout() {
    tokio::time::pause();
    // The half-open case the heartbeat exists for: the peer neither reads nor writes,
    // so the write buffer stays full and not even the heartbeat ping fits in it.
    let (client, server) = tokio::io::duplex(64);
    let _peer = MockPeer::new(server);
    let mut events = Probe::<ConnectionEvent>::start();
    let config = ConnectionConfig::builder()
        .heartbeat_interval(INTERVAL)
        .heartbeat_timeout(TIMEOUT)
        .max_write_buffer(1024)
        .build()
        .unwrap();
    let start = Instant::now();
    let addr = start_on(client, config, &events).await;
    // A request larger than the cap goes alone into the empty buffer and fills it.
    let pending = actix_rt::spawn(addr.send(call(vec![0u8; 2000])));

    // Halfway to the timeout the connection is quietly waiting, the request still
    // buffered. (Virtual time only passes if the connection lets the runtime idle.)
    let stats = within_real_time(Duration::from_secs(3), "virtual 2 s", async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        addr.send(GetStats).await.unwrap()
    })
    .await;
    assert!(stats.buffered_write_bytes >= 1024, "{stats:?}");
    assert_eq!(stats.in_flight, 1);
    assert_not_closed(&mut events);

    let reason = within_real_time(
        Duration::from_secs(3),
        "the heartbeat timeout",
        next_closed(&mut events),
    )
    .await;
    let closed_at = start.elapsed();
    assert!(
        matches!(reason, CloseReason::HeartbeatTimeout { .. }),
        "{reason:?}"
    );
    assert!(
        closed_at >= TIMEOUT && closed_at < TIMEOUT + INTERVAL,
        "closed after {closed_at:?}"
    );
    let result = finish(pending).await;
    assert!(
        matches!(
            closed_reason(&result),
            Some(CloseReason::HeartbeatTimeout { .. })
        ),
        "{result:?}"
    );
}

#[actix::test]
async fn a_ping_message_sends_one_ping_and_resolves_with_its_round_trip() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(heartbeat_config()).await;

    // Two pingers share one outstanding ping.
    let first = actix_rt::spawn(addr.send(switchboard::Ping));
    let second = actix_rt::spawn(addr.send(switchboard::Ping));
    let ping = peer.expect_kind(FrameKind::Ping, WAIT).await;
    peer.expect_nothing(Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    peer.send(Frame::pong(ping.id)).await;

    for pinger in [first, second] {
        let rtt = pinger
            .await
            .unwrap()
            .unwrap()
            .expect("pong answers the ping");
        assert!(rtt >= Duration::from_millis(20), "round trip {rtt:?}");
    }
    assert_not_closed(&mut events);
}

#[actix::test]
async fn a_ping_fails_with_the_close_reason_when_the_connection_stops() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(heartbeat_config()).await;

    let pinger = actix_rt::spawn(addr.send(switchboard::Ping));
    peer.expect_kind(FrameKind::Ping, WAIT).await;
    // The peer never answers: the heartbeat timeout closes the connection, and the
    // ping fails with that reason.
    let error = tokio::time::timeout(TIMEOUT * 2, pinger)
        .await
        .expect("the ping resolves by the heartbeat timeout")
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            error,
            switchboard::CallError::Closed(CloseReason::HeartbeatTimeout { .. })
        ),
        "{error}"
    );
    assert!(matches!(
        next_closed(&mut events).await,
        CloseReason::HeartbeatTimeout { .. }
    ));
}
