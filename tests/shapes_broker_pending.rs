//! Subscribing before the server is up (issue 15, item 6; docs/reliability.md T6).
//! A subscription is desired state: made while the server is down it is kept, says
//! it is pending, is retried with backoff, and is live once the server is back;
//! invalid ones still fail at once.

mod broker_support;

use std::time::Duration;

use broker_support::*;
use switchboard::broker::{BrokerConfig, BrokerError, Publish, SubscriptionStatus};
use switchboard::server::ServerConfig;
use switchboard::{CallError, PoolConfig};
use tokio::net::TcpListener;

/// A loopback port with nothing listening on it (bound, then let go).
async fn free_port() -> u16 {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    socket.local_addr().expect("bound").port()
}

fn quick_backoff() -> (PoolConfig, BrokerConfig) {
    let pool = PoolConfig::builder()
        .max_size(1)
        .backoff_base(Duration::from_millis(20))
        .backoff_max(Duration::from_millis(500))
        .build()
        .expect("valid pool config");
    let broker = BrokerConfig::default()
        .resubscribe_backoff(Duration::from_millis(20), Duration::from_millis(500));
    (pool, broker)
}

/// Subscribed while nothing listens: `Ok` and pending at once; once a server comes
/// up on that port, the subscription joins it by itself and gets what is published.
#[actix::test]
async fn a_subscription_made_while_the_server_is_down_joins_when_it_comes_up() {
    let port = free_port().await;
    let (pool, broker) = quick_backoff();
    let client = start_client_with(port, pool, None, broker);
    let (collector, collected) = Collector::start_new();

    let id = within(
        WAIT,
        "subscribe with the server down",
        client.subscribe("news", collector.recipient()),
    )
    .await
    .expect("a subscription is kept while the server is down");
    let status = client.subscription_status(id).await.expect("known");
    assert!(
        matches!(status, SubscriptionStatus::Pending { .. }),
        "not live yet: {status:?}"
    );
    // Down a while longer: the broker keeps trying.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = client.subscription_status(id).await.expect("known");
    let SubscriptionStatus::Pending { last_error } = status else {
        panic!("live with no server: {status:?}");
    };
    assert!(last_error.is_some(), "says why it is not live");

    let socket = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is free again");
    let server = start_server_with(
        ServerConfig::default(),
        ServerOptions {
            socket: Some(socket),
            ..ServerOptions::default()
        },
    )
    .await;
    let publisher = start_client(server.port, pool_config(1, 1));
    // Publishes until one reaches the subscriber: the subscription joins by itself.
    let mut n = 0u32;
    eventually(WAIT, "a delivery after the server came up", || {
        n += 1;
        let publish = publisher.publish(Publish::unordered("news", tagged(1, n)));
        let collected = collected.clone();
        async move {
            publish.await.expect("the server is up");
            tokio::time::sleep(Duration::from_millis(20)).await;
            (collected.len() > 0).then_some(())
        }
    })
    .await;
    let status = client.subscription_status(id).await.expect("known");
    assert!(matches!(status, SubscriptionStatus::Live), "{status:?}");
    let stats = client.stats().await.expect("broker alive");
    assert_eq!(stats.topics, 1, "{stats:?}");
}

/// An invalid subscription (a topic the protocol cannot carry) fails at once and is
/// not kept, server or no server.
#[actix::test]
async fn an_invalid_subscription_still_fails_at_once() {
    let server = start_server(ServerConfig::default()).await;
    let client = start_client(server.port, pool_config(1, 1));
    let (collector, _) = Collector::start_new();
    let topic = vec![b'x'; 70_000];
    let outcome = within(
        WAIT,
        "subscribe to a topic too long to encode",
        client.subscribe(topic, collector.recipient()),
    )
    .await;
    assert!(
        matches!(outcome, Err(BrokerError::Call(CallError::Encode(_)))),
        "{outcome:?}"
    );
    let stats = client.stats().await.expect("broker alive");
    assert_eq!(stats.topics, 0, "not kept: {stats:?}");
}
