//! Buffer sizing: a connection's buffers start small, grow for a burst and are
//! replaced by small ones at heartbeat cadence once empty. What a user must be able
//! to count on through that: big frames in both directions arrive whole, before and
//! after the buffers were given back, and a frame that is half-way in when the
//! buffers are checked is neither lost nor corrupted. In virtual time.
#![cfg(feature = "testkit")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{call, connect, finish, reply_of, Setup, WAIT};
use switchboard::protocol::frame::{Frame, FrameCodec, FrameKind};
use switchboard::testkit::MockPeer;
use switchboard::{ConnectionConfig, GetStats};
use tokio_util::codec::Encoder;

const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(10);
/// Larger than any buffer a connection starts with, many times over.
const BIG: usize = 512 * 1024;

fn config() -> ConnectionConfig {
    ConnectionConfig::builder()
        .heartbeat_interval(INTERVAL)
        .heartbeat_timeout(TIMEOUT)
        .call_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn big_payload(seed: u8) -> Bytes {
    (0..BIG)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// Answers pings for `intervals` heartbeat intervals, so that the connection's
/// heartbeat-cadence housekeeping runs that many times.
async fn stay_quiet(peer: &mut MockPeer, intervals: usize) {
    for _ in 0..intervals {
        let ping = peer.expect_kind(FrameKind::Ping, INTERVAL * 2).await;
        peer.send(Frame::pong(ping.id)).await;
    }
}

async fn big_round_trip(setup: &mut Setup, seed: u8) {
    let payload = big_payload(seed);
    let pending = actix_rt::spawn(setup.addr.send(call(payload.clone())));
    let request = setup.peer.expect_request(WAIT).await;
    assert_eq!(request.payload, payload, "the request arrived whole");
    let answer = big_payload(seed.wrapping_add(1));
    setup.peer.reply(&request, answer.clone()).await;
    assert_eq!(
        reply_of(finish(pending).await),
        answer,
        "the reply arrived whole"
    );
}

#[actix::test]
async fn big_frames_arrive_whole_before_and_after_the_buffers_are_given_back() {
    tokio::time::pause();
    let mut setup = connect(config()).await;

    big_round_trip(&mut setup, 1).await;
    stay_quiet(&mut setup.peer, 3).await;
    big_round_trip(&mut setup, 2).await;
    stay_quiet(&mut setup.peer, 2).await;
    big_round_trip(&mut setup, 3).await;

    let stats = setup.addr.send(GetStats).await.unwrap();
    assert_eq!((stats.calls, stats.replies), (3, 3), "{stats:?}");
    assert!(stats.pings_sent >= 5, "{stats:?}");
}

#[actix::test]
async fn a_frame_half_way_in_survives_the_housekeeping() {
    tokio::time::pause();
    let Setup { addr, mut peer, .. } = connect(config()).await;

    let pending = actix_rt::spawn(addr.send(call("big one, please")));
    let request = peer.expect_request(WAIT).await;
    let answer = big_payload(9);
    let mut encoded = bytes::BytesMut::new();
    FrameCodec::default()
        .encode(Frame::response(request.id, answer.clone()), &mut encoded)
        .unwrap();

    // Half of the reply, then a pause of several heartbeat intervals: the connection
    // pings (it has seen no whole frame) and runs its housekeeping meanwhile, with
    // part of a frame in its read buffer.
    let half = encoded.len() / 2;
    peer.send_raw(&encoded[..half]).await;
    for _ in 0..3 {
        tokio::time::sleep(INTERVAL).await;
    }
    assert!(
        !pending.is_finished(),
        "the call waits for the rest of its reply"
    );

    // The rest arrives; the pings sent meanwhile are answered after it.
    peer.send_raw(&encoded[half..]).await;
    assert_eq!(reply_of(finish(pending).await), answer);
    let stats = addr.send(GetStats).await.unwrap();
    assert!(stats.pings_sent >= 1, "{stats:?}");
    assert_eq!(stats.replies, 1, "{stats:?}");
}
