//! Traffic shape: a peer that keeps sending but stopped reading (issue 15, item 9;
//! docs/reliability.md T9).
//!
//! Its frames keep the read side fresh, so the heartbeat never finds it dead; what
//! finds it is the write side: a write buffer that makes no progress for
//! `heartbeat_timeout` closes the connection with `CloseReason::WriteStalled`. And a
//! `SendFrame` is bounded by its own timeout (or the connection's `call_timeout`),
//! ending with `CallError::Timeout` rather than waiting as long as the link lives.
//! Shapes: pipes of a few capacities, frames smaller and larger than them, the peer
//! pinging faster and slower than the heartbeat interval; all in virtual time.
#![cfg(feature = "testkit")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{assert_not_closed, next_closed, start_on, WAIT};
use switchboard::protocol::frame::Frame;
use switchboard::testkit::{MockPeer, Probe};
use switchboard::{CallError, CloseReason, ConnectionConfig, ConnectionEvent, GetStats, SendFrame};
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(3);

fn config() -> ConnectionConfig {
    ConnectionConfig::builder()
        .heartbeat_interval(INTERVAL)
        .heartbeat_timeout(TIMEOUT)
        .call_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// Writes a ping every `every` and never reads, until the connection hangs up (or
/// `limit` runs out).
fn keep_pinging(
    mut peer: MockPeer,
    every: Duration,
    limit: Duration,
) -> tokio::task::JoinHandle<()> {
    actix_rt::spawn(async move {
        let start = Instant::now();
        let mut id = 1;
        while start.elapsed() < limit {
            let frame = Frame::ping(id);
            id += 1;
            let sent =
                tokio::time::timeout(WAIT, futures::SinkExt::send(peer.framed(), frame)).await;
            if !matches!(sent, Ok(Ok(()))) {
                return;
            }
            tokio::time::sleep(every).await;
        }
    })
}

#[actix::test]
async fn a_peer_that_sends_but_never_reads_is_closed_as_write_stalled() {
    tokio::time::pause();
    for (pipe, frame_len, ping_every) in [
        (4 * 1024, 100 * 1024, Duration::from_millis(500)),
        (64, 2_000, Duration::from_millis(100)),
        (64 * 1024, 1024 * 1024, Duration::from_millis(900)),
        // Only pongs: the peer pings faster than it could ever read, and reads nothing.
        (1024, 0, Duration::from_millis(1)),
    ] {
        let shape = format!("pipe {pipe} B, frame {frame_len} B, ping every {ping_every:?}");
        let (client, server) = tokio::io::duplex(pipe);
        let mut events = Probe::<ConnectionEvent>::start();
        let start = Instant::now();
        let addr = start_on(client, config(), &events).await;
        let pinger = keep_pinging(MockPeer::new(server), ping_every, Duration::from_secs(600));

        let send = (frame_len > 0).then(|| {
            actix_rt::spawn(addr.send(SendFrame::new(Frame::push("big", vec![1u8; frame_len]))))
        });

        // Found within heartbeat_timeout of the last progress (which is at the start,
        // or soon after once the pipe is full), plus an interval of timer slack.
        let reason = tokio::time::timeout(
            Duration::from_secs(60),
            events.within(Duration::from_secs(600), |event| {
                matches!(event, ConnectionEvent::Closed { .. })
            }),
        )
        .await
        .map(|event| match event {
            ConnectionEvent::Closed { reason, .. } => reason,
            _ => unreachable!(),
        });
        let closed_after = start.elapsed();
        let Ok(reason) = reason else {
            let stats = addr.send(GetStats).await.unwrap();
            panic!("{shape}: not closed after {closed_after:?}: {stats:?}");
        };
        match &reason {
            CloseReason::WriteStalled {
                stalled_for,
                buffered,
            } => {
                assert!(*stalled_for >= TIMEOUT, "{shape}: {reason:?}");
                assert!(*buffered > 0, "{shape}: {reason:?}");
            }
            other => panic!("{shape}: closed with {other:?}"),
        }
        assert!(
            closed_after >= TIMEOUT && closed_after <= TIMEOUT + INTERVAL + Duration::from_secs(1),
            "{shape}: closed after {closed_after:?}"
        );
        // The send ended by its own timeout (2 s, before the stall was judged).
        if let Some(send) = send {
            let result = tokio::time::timeout(WAIT, send).await.unwrap().unwrap();
            assert!(
                matches!(result, Ok(Err(CallError::Timeout { after })) if after == Duration::from_secs(2)),
                "{shape}: {result:?}"
            );
        }
        pinger.abort();
    }
}

#[actix::test]
async fn a_send_ends_with_a_timeout_when_the_peer_does_not_read() {
    tokio::time::pause();
    // The peer is alive (it keeps pinging) but reads nothing: the send's bytes never
    // leave the buffer.
    let (client, server) = tokio::io::duplex(64);
    let mut events = Probe::<ConnectionEvent>::start();
    let config = ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_secs(10))
        .heartbeat_timeout(Duration::from_secs(30))
        .call_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let addr = start_on(client, config, &events).await;
    let pinger = keep_pinging(
        MockPeer::new(server),
        Duration::from_millis(500),
        Duration::from_secs(600),
    );

    let start = Instant::now();
    let own = actix_rt::spawn(
        addr.send(
            SendFrame::new(Frame::push("t", Bytes::from(vec![2u8; 10_000])))
                .timeout(Duration::from_millis(1500)),
        ),
    );
    let default = actix_rt::spawn(addr.send(SendFrame::new(Frame::push("t", "small"))));

    let own = tokio::time::timeout(WAIT, own)
        .await
        .expect("the send ends by its timeout")
        .unwrap();
    let took = start.elapsed();
    assert!(
        matches!(own, Ok(Err(CallError::Timeout { after })) if after == Duration::from_millis(1500)),
        "{own:?}"
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(1600),
        "{took:?}"
    );

    // The other one has the connection's call timeout (30 s); the link is judged stalled
    // at the heartbeat timeout (30 s) too: it ends either way, exactly once, typed.
    let default = tokio::time::timeout(Duration::from_secs(40), default)
        .await
        .expect("the send ends by its timeout")
        .unwrap();
    assert!(
        matches!(
            default,
            Ok(Err(
                CallError::Timeout { .. } | CallError::Closed(CloseReason::WriteStalled { .. })
            ))
        ),
        "{default:?}"
    );
    let reason = next_closed(&mut events).await;
    assert!(
        matches!(reason, CloseReason::WriteStalled { .. }),
        "{reason:?}"
    );
    pinger.abort();
}

#[actix::test]
async fn a_slow_reader_that_keeps_taking_bytes_is_not_stalled() {
    tokio::time::pause();
    // The peer reads 1 KiB every 500 ms, far slower than the connection writes: the
    // buffer drains slowly, but it drains, so the link is not stalled.
    let (client, mut server) = tokio::io::duplex(1024);
    let mut events = Probe::<ConnectionEvent>::start();
    let addr = start_on(client, config(), &events).await;
    let send = actix_rt::spawn(addr.send(
        SendFrame::new(Frame::push("t", vec![3u8; 40 * 1024])).timeout(Duration::from_secs(60)),
    ));
    let reader = actix_rt::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut taken = 0usize;
        let mut chunk = vec![0u8; 1024];
        // Pings too, so that the heartbeat does not close a silent peer.
        let mut id = 1;
        while taken < 40 * 1024 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let n = server.read(&mut chunk).await.unwrap();
            taken += n;
            let ping = {
                let mut bytes = bytes::BytesMut::new();
                tokio_util::codec::Encoder::encode(
                    &mut switchboard::protocol::frame::FrameCodec::default(),
                    Frame::ping(id),
                    &mut bytes,
                )
                .unwrap();
                bytes
            };
            id += 1;
            use tokio::io::AsyncWriteExt;
            server.write_all(&ping).await.unwrap();
        }
        server
    });
    let result = tokio::time::timeout(Duration::from_secs(60), send)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    assert_not_closed(&mut events);
    let _server = reader.await.unwrap();
}
