//! Request/reply through the Broker: many requests in flight each come back to their
//! own caller, a request nobody handles fails without harming the connection, and a
//! slow handler does not make heartbeats time out.

mod broker_support;

use std::time::Duration;

use broker_support::*;
use futures::future::join_all;
use switchboard::broker::{BrokerConfig, BrokerError, Request};
use switchboard::server::ServerConfig;
use switchboard::{CallError, ConnectionConfig, PoolConfig};

#[actix::test]
async fn ten_thousand_requests_in_flight_each_get_their_own_answer() {
    const REQUESTS: u64 = 10_000;
    let server = start_server(
        ServerConfig::default()
            .max_requests_per_connection(20_000)
            .mailbox(40_000),
    )
    .await;
    // Held a moment, so that they really are in flight together.
    let (echo, seen) = Echo::start_new(Some(Duration::from_millis(200)));
    server.route("echo", echo.recipient()).await;
    let connection = ConnectionConfig::builder()
        .max_in_flight(20_000)
        .build()
        .unwrap();
    let client = start_client_with(
        server.port,
        pool_config(4, 4),
        Some(connection),
        BrokerConfig::default(),
    );
    wait_pool_size(&client, server.port, 4).await;

    let answers = within(
        WAIT * 2,
        "10,000 requests",
        join_all((0..REQUESTS).map(|n| {
            let client = client.clone();
            async move {
                let answer = client
                    .request(Request::new("echo", n.to_be_bytes().to_vec()))
                    .await;
                (n, answer)
            }
        })),
    )
    .await;
    for (n, answer) in answers {
        let answer = answer.unwrap_or_else(|e| panic!("request {n} failed: {e}"));
        assert_eq!(
            &answer[..],
            &n.to_be_bytes()[..],
            "request {n} got another's answer"
        );
    }
    let handled: usize = seen.counts().values().sum();
    assert_eq!(handled, REQUESTS as usize, "each request handled once");
    let stats = within(WAIT, "stats", client.stats()).await.unwrap();
    assert_eq!(stats.requests, REQUESTS, "{stats:?}");
    assert_eq!(stats.requests_failed, 0, "{stats:?}");
}

#[actix::test]
async fn a_request_without_handler_fails_remotely_and_the_connection_stays_usable() {
    let server = start_server(ServerConfig::default()).await;
    let (echo, _) = Echo::start_new(None);
    server.route("echo", echo.recipient()).await;
    let client = start_client(server.port, pool_config(1, 1));
    wait_pool_size(&client, server.port, 1).await;

    for _ in 0..3 {
        let error = within(WAIT, "request", client.request(Request::new("nobody", "x")))
            .await
            .expect_err("no handler for this route");
        assert!(
            matches!(error, BrokerError::Call(CallError::Remote(_))),
            "expected a remote error, got {error:?}"
        );
        let answer = within(WAIT, "request", client.request(Request::new("echo", "ok")))
            .await
            .unwrap();
        assert_eq!(&answer[..], b"ok");
    }
    let status = within(WAIT, "status", client.pool().status())
        .await
        .unwrap();
    assert!(status.counters.closed.is_empty(), "{:?}", status.counters);
    assert_eq!(status.counters.created, 1, "{:?}", status.counters);
    let server_stats = server.stats().await;
    assert_eq!(server_stats.request_errors, 3, "{server_stats:?}");
    assert_eq!(server.listener_stats().await.accepted, 1);
}

#[actix::test]
async fn a_slow_handler_does_not_starve_heartbeats() {
    let heartbeat = ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let server = start_server_with(
        ServerConfig::default(),
        ServerOptions {
            connection: Some(heartbeat.clone()),
            ..ServerOptions::default()
        },
    )
    .await;
    let (slow, _) = Echo::start_new(Some(Duration::from_secs(1)));
    server.route("slow", slow.recipient()).await;
    let pool = PoolConfig::builder()
        .min_idle(1)
        .max_size(1)
        .build()
        .unwrap();
    let client = start_client_with(server.port, pool, Some(heartbeat), BrokerConfig::default());
    wait_pool_size(&client, server.port, 1).await;

    // Several slow requests at once, each held three heartbeat timeouts long.
    let answers = within(
        WAIT,
        "slow requests",
        join_all((0..5u8).map(|n| client.request(Request::new("slow", vec![n])))),
    )
    .await;
    for (n, answer) in answers.into_iter().enumerate() {
        assert_eq!(&answer.expect("slow request answered")[..], &[n as u8]);
    }
    let status = within(WAIT, "status", client.pool().status())
        .await
        .unwrap();
    assert!(
        status.counters.closed.is_empty(),
        "a connection closed: {:?}",
        status.counters.closed
    );
    assert_eq!(status.counters.created, 1, "{:?}", status.counters);
    let listener = server.listener_stats().await;
    assert_eq!(listener.accepted, 1, "{listener:?}");
    assert_eq!(listener.open, 1, "{listener:?}");
}
