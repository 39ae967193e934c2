//! Malformed input from a peer closes that one connection with `CloseReason::Decode`:
//! its pending calls fail, the peer sees its transport closed, and every other
//! connection carries on untouched. A hostile length prefix is refused outright.
#![cfg(feature = "testkit")]

mod common;

use common::{
    assert_no_more_events, assert_not_closed, call, closed_reason, connect, finish, next_closed,
    reply_of, Setup, WAIT,
};
use switchboard::protocol::frame::{FrameError, DEFAULT_MAX_FRAME_LENGTH};
use switchboard::{CloseReason, ConnectionConfig};

/// The codec error behind a `Decode` close reason.
fn frame_error(reason: &CloseReason) -> &FrameError {
    match reason {
        CloseReason::Decode(source) => source
            .downcast_ref::<FrameError>()
            .expect("a frame codec error"),
        other => panic!("expected a Decode close, got {other:?}"),
    }
}

/// Sends `garbage` from A's peer while a call is pending on A and on B; asserts that
/// A closes with a decode error and B keeps working. Returns A's close reason.
async fn garbage_on_one_of_two_connections(garbage: &[u8]) -> CloseReason {
    let Setup {
        addr: a,
        peer: mut peer_a,
        events: mut events_a,
        ..
    } = connect(ConnectionConfig::default()).await;
    let Setup {
        addr: b,
        peer: mut peer_b,
        events: mut events_b,
        ..
    } = connect(ConnectionConfig::default()).await;

    let call_a = actix_rt::spawn(a.send(call("on A")));
    let call_b = actix_rt::spawn(b.send(call("on B")));
    peer_a.expect_request(WAIT).await;
    let request_b = peer_b.expect_request(WAIT).await;

    peer_a.send_raw(garbage).await;

    // A closes, its pending call fails with the same reason, and its peer sees EOF.
    let reason = next_closed(&mut events_a).await;
    let result_a = finish(call_a).await;
    match closed_reason(&result_a) {
        Some(CloseReason::Decode(_)) => {}
        _ => panic!("expected Closed(Decode) on A, got {result_a:?}"),
    }
    assert_no_more_events(&mut events_a).await;
    peer_a.expect_closed(WAIT).await;

    // B never noticed: its pending call gets its reply, and a new call succeeds.
    peer_b.reply(&request_b, "B is fine").await;
    assert_eq!(reply_of(finish(call_b).await), "B is fine");
    let next_b = actix_rt::spawn(b.send(call("still on B")));
    let request = peer_b.expect_request(WAIT).await;
    peer_b.reply(&request, "yes").await;
    assert_eq!(reply_of(finish(next_b).await), "yes");
    assert_not_closed(&mut events_b);
    reason
}

#[actix::test]
async fn a_too_short_frame_closes_only_its_connection() {
    tokio::time::pause();
    let reason = garbage_on_one_of_two_connections(&[0, 0, 0, 3, 1, 2, 3]).await;
    assert!(
        matches!(frame_error(&reason), FrameError::TooShort { length: 3 }),
        "{reason:?}"
    );
}

#[actix::test]
async fn an_unknown_frame_kind_closes_only_its_connection() {
    tokio::time::pause();
    let mut frame = vec![0, 0, 0, 10, 0x63, 0];
    frame.extend_from_slice(&1u64.to_be_bytes());
    let reason = garbage_on_one_of_two_connections(&frame).await;
    assert!(
        matches!(frame_error(&reason), FrameError::UnknownKind(0x63)),
        "{reason:?}"
    );
}

#[actix::test]
async fn an_oversized_length_prefix_is_refused_and_the_connection_closed() {
    tokio::time::pause();
    let reason = garbage_on_one_of_two_connections(&[0xFF, 0xFF, 0xFF, 0xFF]).await;
    match frame_error(&reason) {
        FrameError::TooLarge { length, max } => {
            assert_eq!(*length, u32::MAX as usize);
            assert_eq!(*max, DEFAULT_MAX_FRAME_LENGTH);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[actix::test]
async fn a_stream_cut_inside_a_frame_is_a_decode_error() {
    tokio::time::pause();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(ConnectionConfig::default()).await;

    let pending = actix_rt::spawn(addr.send(call("question")));
    let request = peer.expect_request(WAIT).await;
    // The first bytes of a valid response, then the peer hangs up.
    let mut partial = vec![0, 0, 0, 20, 2, 0];
    partial.extend_from_slice(&request.id.to_be_bytes());
    peer.send_raw(&partial).await;
    peer.close().await;

    let reason = next_closed(&mut events).await;
    assert!(
        matches!(frame_error(&reason), FrameError::Truncated { .. }),
        "{reason:?}"
    );
    let result = finish(pending).await;
    assert!(
        matches!(closed_reason(&result), Some(CloseReason::Decode(_))),
        "{result:?}"
    );
}
