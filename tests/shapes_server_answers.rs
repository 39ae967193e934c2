//! A handler's answer too large for a frame is answered at once with a typed error,
//! not dropped: the caller's request fails with `CallError::Remote` instead of
//! waiting out its whole call timeout, and the connection stays usable.
//!
//! Answer sizes are taken around the frame limit (one byte under, exactly at, one
//! byte over) and far past it.

mod broker_support;

use std::time::Duration;

use actix::{Actor, Context, Handler};
use broker_support::*;
use bytes::Bytes;
use switchboard::broker::{BrokerConfig, BrokerError, Request};
use switchboard::protocol::frame::DEFAULT_MAX_FRAME_LENGTH;
use switchboard::protocol::RemoteError;
use switchboard::server::{ServerConfig, ServerRequest};
use switchboard::{CallError, ConnectionConfig};

/// The bytes of a response frame after the length prefix, beside its payload: kind,
/// flags and id.
const RESPONSE_HEADER: usize = 1 + 1 + 8;

/// A handler that answers with as many bytes as the request asks for (a big-endian
/// `u64`).
struct Sized;

impl Actor for Sized {
    type Context = Context<Self>;
}

impl Handler<ServerRequest> for Sized {
    type Result = Result<Bytes, RemoteError>;

    fn handle(&mut self, request: ServerRequest, _: &mut Context<Self>) -> Self::Result {
        let size = u64::from_be_bytes(request.payload[..8].try_into().unwrap());
        Ok(Bytes::from(vec![7u8; size as usize]))
    }
}

#[actix::test]
async fn an_answer_too_large_for_a_frame_fails_the_call_at_once() {
    // A write buffer that holds the largest frame, so that only the frame limit is
    // in play.
    let roomy = ConnectionConfig::builder()
        .max_write_buffer(2 * DEFAULT_MAX_FRAME_LENGTH)
        .build()
        .unwrap();
    let server = start_server_with(
        ServerConfig::default(),
        ServerOptions {
            connection: Some(roomy.clone()),
            ..ServerOptions::default()
        },
    )
    .await;
    server.route("sized", Sized.start().recipient()).await;
    // A call timeout far beyond the test's own bound on each request.
    let patient = ConnectionConfig::builder()
        .call_timeout(Duration::from_secs(600))
        .max_write_buffer(2 * DEFAULT_MAX_FRAME_LENGTH)
        .build()
        .unwrap();
    let client = start_client_with(
        server.port,
        pool_config(1, 1),
        Some(patient),
        BrokerConfig::default(),
    );
    wait_pool_size(&client, server.port, 1).await;

    let fits = DEFAULT_MAX_FRAME_LENGTH - RESPONSE_HEADER;
    for (size, too_large) in [
        (fits - 1, false),
        (fits, false),
        (fits + 1, true),
        (fits + 4096, true),
        (3 * DEFAULT_MAX_FRAME_LENGTH, true),
        (16, false),
    ] {
        let request = Request::new("sized", (size as u64).to_be_bytes().to_vec());
        let answer = within(
            WAIT,
            &format!("an answer of {size} bytes"),
            client.request(request),
        )
        .await;
        match answer {
            Ok(body) => {
                assert!(!too_large, "an answer of {size} bytes arrived whole");
                assert_eq!(body.len(), size);
            }
            Err(error) => {
                assert!(too_large, "an answer of {size} bytes failed: {error:?}");
                assert!(
                    matches!(&error, BrokerError::Call(CallError::Remote(remote)) if remote.message().starts_with(b"answer too large")),
                    "an answer of {size} bytes: expected a remote `answer too large`, got {error:?}"
                );
            }
        }
    }
    // One connection throughout: an answer too large does not cost the connection.
    let status = within(WAIT, "status", client.pool().status())
        .await
        .unwrap();
    assert!(status.counters.closed.is_empty(), "{:?}", status.counters);
    let stats = server.stats().await;
    assert_eq!(stats.request_errors, 3, "{stats:?}");
}
