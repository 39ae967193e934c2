//! Traffic shape: many large answers ready at once (issue 15, item 4;
//! docs/reliability.md T4).
//!
//! A server connection handles its whole mailbox before its driver flushes, so answers
//! that become ready together reach it as one batch of `Deliver`s. The bound on what a
//! peer has not taken (`max_write_buffer`) must not be a bound on one batch: what does
//! not fit waits for room, in order, and goes out as the peer reads. A peer is slow only
//! if it does not read. Shapes: batches of 2 to 64 answers of 64 KiB to 1 MiB against
//! write buffers of 256 KiB to the default 4 MiB, and an end-to-end server answering 8
//! concurrent requests with 1 MiB each, all defaults.
#![cfg(feature = "testkit")]

mod broker_support;
mod common;

use std::time::Duration;

use actix::{Actor, Context, Handler, ResponseFuture};
use broker_support::{pool_config, start_client, start_server, wait_pool_size, within};
use bytes::Bytes;
use common::{assert_not_closed, connect, next_closed, Setup, WAIT};
use futures::future::join_all;
use switchboard::broker::Request;
use switchboard::protocol::frame::{Frame, FrameKind};
use switchboard::protocol::RemoteError;
use switchboard::server::{ServerConfig, ServerRequest};
use switchboard::{CloseReason, ConnectionConfig, Deliver, GetStats, Overflow};

/// Delivers `count` answers of `size` bytes in one mailbox batch and reads them all
/// promptly at the peer; returns how many arrived, in order, before anything closed.
async fn batch(count: usize, size: usize, max_write_buffer: usize) {
    let shape = format!("{count} answers of {size} B, write buffer {max_write_buffer} B");
    let config = ConnectionConfig::builder()
        .max_write_buffer(max_write_buffer)
        .build()
        .unwrap();
    let Setup {
        addr,
        mut peer,
        mut events,
        ..
    } = connect(config).await;
    // All sent from this task without yielding: one mailbox batch, handled before the
    // driver flushes a byte.
    for id in 1..=count as u64 {
        addr.do_send(Deliver::new(
            Frame::response(id, Bytes::from(vec![id as u8; size])),
            Overflow::Close,
        ));
    }
    for id in 1..=count as u64 {
        let frame = tokio::time::timeout(WAIT, futures::StreamExt::next(peer.framed()))
            .await
            .unwrap_or_else(|_| panic!("{shape}: answer {id} never came"));
        let frame = match frame {
            Some(Ok(frame)) => frame,
            other => {
                let reason = next_closed(&mut events).await;
                panic!("{shape}: answer {id}: {other:?}; the connection closed: {reason:?}")
            }
        };
        assert_eq!(frame.kind, FrameKind::Response, "{shape}");
        assert_eq!(frame.id, id, "{shape}: answers out of order");
        assert_eq!(frame.payload.len(), size, "{shape}");
    }
    assert_not_closed(&mut events);
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.deliveries_dropped, 0, "{shape}: {stats:?}");
}

#[actix::test]
async fn a_batch_of_answers_larger_than_the_write_buffer_all_reach_a_prompt_reader() {
    tokio::time::pause();
    for (count, size, max_write_buffer) in [
        // The shape, on one connection: 8 answers of 1 MiB, default buffer.
        (8, 1024 * 1024, 4 * 1024 * 1024),
        (2, 1024 * 1024, 1024 * 1024),
        (64, 64 * 1024, 256 * 1024),
        (16, 300 * 1024, 1024 * 1024),
    ] {
        batch(count, size, max_write_buffer).await;
    }
}

#[actix::test]
async fn a_peer_that_does_not_read_is_still_a_slow_consumer_or_stalled() {
    tokio::time::pause();
    // The peer reads nothing: what waits for room is bounded, and the connection ends
    // typed: the pipe fills, then the write buffer, then the connection's own queue of
    // delivers without a sender's ticket (max_in_flight of them), then SlowConsumer.
    let config = ConnectionConfig::builder()
        .max_write_buffer(64 * 1024)
        .max_in_flight(16)
        .build()
        .unwrap();
    let Setup {
        addr,
        peer: _peer,
        mut events,
        ..
    } = connect(config).await;
    for id in 1..=200u64 {
        addr.do_send(Deliver::new(
            Frame::response(id, Bytes::from(vec![0u8; 16 * 1024])),
            Overflow::Close,
        ));
    }
    let reason = next_closed(&mut events).await;
    assert!(
        matches!(reason, CloseReason::SlowConsumer { .. }),
        "{reason:?}"
    );
}

/// Answers every request with `size` bytes, after `delay`, so that answers to requests
/// that came together are ready together.
struct Big {
    size: usize,
    delay: Duration,
}

impl Actor for Big {
    type Context = Context<Self>;
}

impl Handler<ServerRequest> for Big {
    type Result = ResponseFuture<Result<Bytes, RemoteError>>;

    fn handle(&mut self, _: ServerRequest, _: &mut Context<Self>) -> Self::Result {
        let (size, delay) = (self.size, self.delay);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(Bytes::from(vec![9u8; size]))
        })
    }
}

#[actix::test]
async fn a_server_answers_eight_concurrent_one_mib_requests_with_all_defaults() {
    let server = start_server(ServerConfig::default()).await;
    let big = Big {
        size: 1024 * 1024,
        delay: Duration::from_millis(200),
    }
    .start();
    server.route("big", big.recipient()).await;
    let client = start_client(server.port, pool_config(1, 1));
    wait_pool_size(&client, server.port, 1).await;

    let answers = within(
        Duration::from_secs(60),
        "8 requests",
        join_all((0..8).map(|_| client.request(Request::new("big", "x")))),
    )
    .await;
    let failed: Vec<_> = answers
        .iter()
        .filter_map(|a| a.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 8 failed: {failed:?}",
        failed.len()
    );
    for answer in answers {
        assert_eq!(answer.unwrap().len(), 1024 * 1024);
    }
    let stats = server.stats().await;
    assert_eq!(stats.slow_disconnects, 0, "{stats:?}");
}
