//! Traffic shape: a large reply trickling in (issue 15, item 8; docs/reliability.md T8).
//!
//! Liveness counts bytes, not frames: a peer that is in the middle of sending a large
//! frame slowly is alive, however long the whole frame takes, as long as no gap between
//! its bytes reaches `heartbeat_timeout`. A gap that does reach it is still a dead link,
//! mid-frame or not. Shapes: payload sizes, piece sizes and gaps between pieces (shorter
//! than the heartbeat interval, and between the interval and the timeout, so that pings
//! go out mid-frame and cannot be answered), each run in virtual time.
#![cfg(feature = "testkit")]

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{assert_not_closed, call, connect, finish, next_closed, reply_of, Setup, WAIT};
use switchboard::protocol::frame::{Frame, FrameCodec};
use switchboard::{CloseReason, ConnectionConfig, GetStats};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::codec::Encoder;

const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(3);

fn config() -> ConnectionConfig {
    ConnectionConfig::builder()
        .heartbeat_interval(INTERVAL)
        .heartbeat_timeout(TIMEOUT)
        // Far beyond the whole transfer: only the heartbeat can end the call early.
        .call_timeout(Duration::from_secs(3600))
        .build()
        .unwrap()
}

/// One shape: a reply of `payload` bytes sent in pieces of `piece` bytes, `gap` apart.
#[derive(Debug, Clone, Copy)]
struct Trickle {
    payload: usize,
    piece: usize,
    gap: Duration,
}

/// Makes a call, answers it with the trickling reply, and returns the reply (or the
/// close reason) and how long the transfer took.
async fn run(shape: Trickle) -> (Result<usize, &'static str>, Duration) {
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(config()).await;
    let pending = actix_rt::spawn(addr.send(call("send me a lot")));
    let request = peer.expect_request(WAIT).await;

    let mut bytes = BytesMut::new();
    FrameCodec::default()
        .encode(
            Frame::response(request.id, vec![7u8; shape.payload]),
            &mut bytes,
        )
        .unwrap();
    let start = Instant::now();
    let pieces: Vec<_> = bytes.chunks(shape.piece).map(<[u8]>::to_vec).collect();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(shape.gap).await;
        }
        // The pings the connection sends mid-frame are left unread in the pipe (it has
        // room for them): the peer is busy sending, as a real one would be.
        // A write that fails means the connection closed: the outcome says why.
        let io = peer.framed().get_mut();
        if io.write_all(piece).await.is_err() || io.flush().await.is_err() {
            break;
        }
    }
    let took = start.elapsed();
    let result = finish(pending).await;
    match result {
        Ok(Ok(_)) => {
            let reply = reply_of(result);
            assert_eq!(reply.len(), shape.payload);
            assert_not_closed(&mut events);
            let stats = addr.send(GetStats).await.unwrap();
            assert!(!stats.closing, "{stats:?}");
            (Ok(reply.len()), took)
        }
        Ok(Err(switchboard::CallError::Closed(reason))) => {
            assert_eq!(next_closed(&mut events).await.kind(), reason.kind());
            (Err(reason.kind()), took)
        }
        other => panic!("{shape:?}: unexpected outcome {other:?}"),
    }
}

#[actix::test]
async fn a_large_reply_trickling_in_keeps_the_connection_alive() {
    tokio::time::pause();
    let shapes = [
        // The shape: 100 KB in 1 KB pieces every 100 ms, about 10 s in all.
        Trickle {
            payload: 100 * 1000,
            piece: 1000,
            gap: Duration::from_millis(100),
        },
        // Gaps longer than the heartbeat interval: pings go out mid-frame and cannot be
        // answered before the frame ends; the bytes still prove the peer alive.
        Trickle {
            payload: 64 * 1024,
            piece: 4 * 1024,
            gap: Duration::from_millis(2500),
        },
        // One byte at a time.
        Trickle {
            payload: 300,
            piece: 1,
            gap: Duration::from_millis(50),
        },
        // 1 MiB in 8 KiB pieces every 250 ms: half a minute.
        Trickle {
            payload: 1024 * 1024,
            piece: 8 * 1024,
            gap: Duration::from_millis(250),
        },
    ];
    for shape in shapes {
        let (outcome, took) = run(shape).await;
        assert_eq!(
            outcome,
            Ok(shape.payload),
            "{shape:?}: closed mid-frame after {took:?}"
        );
        assert!(
            took > TIMEOUT * 3,
            "{shape:?}: the transfer must outlast the heartbeat timeout ({took:?})"
        );
    }
}

#[actix::test]
async fn a_gap_mid_frame_as_long_as_the_heartbeat_timeout_is_still_a_dead_link() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(config()).await;
    let pending = actix_rt::spawn(addr.send(call("send me a lot")));
    let request = peer.expect_request(WAIT).await;
    let mut bytes = BytesMut::new();
    FrameCodec::default()
        .encode(Frame::response(request.id, vec![7u8; 10_000]), &mut bytes)
        .unwrap();
    // Half the frame, then silence.
    peer.send_raw(&bytes[..5_000]).await;
    let stalled_at = Instant::now();
    let reason = next_closed(&mut events).await;
    let after = stalled_at.elapsed();
    assert!(
        matches!(reason, CloseReason::HeartbeatTimeout { .. }),
        "{reason:?}"
    );
    assert!(
        after >= TIMEOUT && after < TIMEOUT + INTERVAL,
        "closed {after:?} after the last byte"
    );
    let result = finish(pending).await;
    assert!(
        matches!(
            result,
            Ok(Err(switchboard::CallError::Closed(
                CloseReason::HeartbeatTimeout { .. }
            )))
        ),
        "{result:?}"
    );
}

mod generated {
    //! The same promise over generated shapes: any payload, piece size and gap shorter
    //! than the heartbeat timeout. A fixed seed, so CI runs the same cases every time;
    //! set `PROPTEST_CASES` for more.
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    fn shapes() -> impl Strategy<Value = Trickle> {
        (1usize..=256 * 1024, 1usize..=400, 0u64..2_900).prop_map(|(payload, pieces, gap)| {
            Trickle {
                payload,
                // At most `pieces` pieces, so that a case stays a few hundred writes.
                piece: payload.div_ceil(pieces).max(1),
                gap: Duration::from_millis(gap),
            }
        })
    }

    proptest! {
        #![proptest_config(Config {
            cases: 24,
            rng_seed: RngSeed::Fixed(15),
            failure_persistence: None,
            ..Config::default()
        })]

        #[test]
        fn any_trickle_with_gaps_shorter_than_the_timeout_arrives(shape in shapes()) {
            let outcome = actix_rt::System::new().block_on(async move {
                tokio::time::pause();
                run(shape).await.0
            });
            prop_assert_eq!(outcome, Ok(shape.payload), "{:?}", shape);
        }
    }
}
