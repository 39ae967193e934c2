//! Edge cases found in review: extreme timeouts, transports that buffer inside, a
//! close nobody asked for in words, and how often the supervisor hears about load.
#![cfg(feature = "testkit")]

use std::time::Duration;

use futures::StreamExt;
use switchboard::protocol::frame::{FrameCodec, FrameProtocol, FrameRequest};
use switchboard::testkit::{MockPeer, Probe};
use switchboard::{
    Call, CallError, Close, CloseReason, Connection, ConnectionConfig, ConnectionEvent,
};
use tokio::time::Instant;
use tokio_util::codec::Framed;

const WAIT: Duration = Duration::from_secs(5);

#[actix::test]
async fn duration_max_means_no_timeout_not_a_panic() {
    tokio::time::pause();
    let (io, mut peer) = MockPeer::pair();
    let mut events = Probe::<ConnectionEvent>::start();
    // Heartbeats out of the way: the silent peer must outlive the default call timeout.
    let config = ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_secs(2 * 3600))
        .heartbeat_timeout(Duration::from_secs(4 * 3600))
        .build()
        .unwrap();
    let conn = Connection::builder(io, FrameProtocol::default())
        .config(config)
        .events(events.recipient())
        .start();

    let call = conn.send(Call::new(FrameRequest::new("x")).timeout(Duration::MAX));
    let answer = async {
        let request = peer.expect_request(WAIT).await;
        // Far longer than any default timeout, in virtual time.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        peer.reply(&request, "late but wanted").await;
    };
    let (reply, ()) = tokio::join!(call, answer);
    assert_eq!(&reply.unwrap().unwrap()[..], b"late but wanted");

    // A close with no real bound still closes once nothing is in flight.
    let reason = conn
        .send(Close {
            timeout: Some(Duration::MAX),
        })
        .await
        .unwrap();
    assert!(matches!(reason, CloseReason::Closed), "{reason:?}");
    events
        .within(WAIT, |event| {
            matches!(
                event,
                ConnectionEvent::Closed {
                    reason: CloseReason::Closed,
                    ..
                }
            )
        })
        .await;
}

#[actix::test]
async fn bytes_a_buffering_transport_holds_are_flushed_when_it_can() {
    tokio::time::pause();
    // A BufWriter takes the whole request at once, then cannot flush it into a
    // 64-byte pipe until the peer reads: its own flush must be retried.
    let (client, server) = tokio::io::duplex(64);
    let conn =
        Connection::builder(tokio::io::BufWriter::new(client), FrameProtocol::default()).start();
    let call =
        conn.send(Call::new(FrameRequest::new(vec![7u8; 1000])).timeout(Duration::from_secs(30)));
    let peer = async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut framed = Framed::new(server, FrameCodec::default());
        let frame = tokio::time::timeout(Duration::from_secs(10), framed.next())
            .await
            .expect("the request reaches the peer")
            .expect("stream open")
            .expect("a valid frame");
        assert_eq!(frame.payload.len(), 1000);
        framed
    };
    let (call, _framed) = tokio::join!(call, peer);
    // The peer never answered; the call ends with its own timeout, not a hang.
    assert!(matches!(call.unwrap(), Err(CallError::Timeout { .. })));
}

#[actix::test]
async fn dropping_the_last_address_closes_within_close_timeout() {
    tokio::time::pause();
    let (io, mut peer) = MockPeer::pair();
    let mut events = Probe::<ConnectionEvent>::start();
    let config = ConnectionConfig::builder()
        .close_timeout(Duration::from_secs(1))
        .heartbeat_interval(Duration::from_secs(20))
        .heartbeat_timeout(Duration::from_secs(60))
        .call_timeout(Duration::from_secs(50))
        .build()
        .unwrap();
    let conn = Connection::builder(io, FrameProtocol::default())
        .config(config)
        .events(events.recipient())
        .start();
    let call = conn.send(Call::new(FrameRequest::new("x")));
    drop(conn);
    let started = Instant::now();
    let _request = peer.expect_request(WAIT).await;
    let result = call.await.unwrap();
    assert!(
        matches!(
            result,
            Err(CallError::Closed(CloseReason::CloseTimeout { .. }))
        ),
        "{result:?}"
    );
    let closed = events
        .within(Duration::from_secs(120), |event| {
            matches!(event, ConnectionEvent::Closed { .. })
        })
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(matches!(
        closed,
        ConnectionEvent::Closed {
            reason: CloseReason::CloseTimeout { .. },
            ..
        }
    ));
}

#[actix::test]
async fn load_is_reported_at_heartbeat_cadence_not_per_deadline() {
    tokio::time::pause();
    let (io, mut peer) = MockPeer::pair();
    let mut events = Probe::<ConnectionEvent>::start();
    let conn = Connection::builder(io, FrameProtocol::default())
        .events(events.recipient())
        .start();
    // 200 calls with staggered deadlines: 200 timer firings in half a second.
    let mut calls = Vec::new();
    for i in 0..200u64 {
        calls.push(
            conn.send(Call::new(FrameRequest::new("x")).timeout(Duration::from_millis(10 + i))),
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = peer.expect_frames(200, WAIT).await;
    for call in calls {
        assert!(matches!(
            call.await.unwrap(),
            Err(CallError::Timeout { .. })
        ));
    }
    let loads = events
        .drain()
        .into_iter()
        .filter(|event| matches!(event, ConnectionEvent::Load { .. }))
        .count();
    // The default heartbeat interval is 10 s; half a second allows one report at most.
    assert!(loads <= 1, "{loads} load reports in half a second");
}
