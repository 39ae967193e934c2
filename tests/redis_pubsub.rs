//! Pub/sub through the Broker against a real redis-server: subscribers get what is
//! published (through the broker and by another client), in order; a subscription
//! comes back after its connection is killed and after the server restarts; requests
//! by route are refused with a typed error, not sent.

mod forward;
mod redis_support;

use forward::forward;
use std::time::Duration;

use bytes::Bytes;
use redis_support::RedisServer;
use switchboard::broker::{BrokerError, Delivery, ProducerId, Publish, Request};
use switchboard::protocol::resp::{RespConnector, RespProtocol, RespVersion};
use switchboard::transport::TcpConnector;
use switchboard::{Broker, BrokerHandle, Pool, PoolConfig};
use tokio::sync::mpsc;

/// Bound on every wait for a message.
const WAIT: Duration = Duration::from_secs(10);

type RedisBroker = BrokerHandle<RespConnector<TcpConnector>, RespProtocol>;

fn broker(server: &RedisServer, version: RespVersion) -> RedisBroker {
    let connector = RespConnector::new(TcpConnector::new()).version(version);
    let config = PoolConfig::builder()
        .max_size(4)
        .backoff_base(Duration::from_millis(20))
        .backoff_max(Duration::from_millis(200))
        .build()
        .unwrap();
    Broker::builder(
        Pool::builder(connector, RespProtocol::new()).config(config),
        server.authority(),
    )
    .start()
}

async fn subscribe(broker: &RedisBroker, topic: &'static str) -> mpsc::UnboundedReceiver<Delivery> {
    let (subscriber, receiver) = forward();
    tokio::time::timeout(WAIT, broker.subscribe(topic, subscriber))
        .await
        .expect("subscribe answered in time")
        .expect("subscribed");
    receiver
}

async fn next(deliveries: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(WAIT, deliveries.recv())
        .await
        .expect("a delivery in time")
        .expect("the subscriber lives")
}

/// Publishes `payload` through the broker until a subscriber has it: after a
/// reconnect, redis drops what is published before the subscription is back.
async fn publish_until_delivered(
    broker: &RedisBroker,
    topic: &'static str,
    deliveries: &mut mpsc::UnboundedReceiver<Delivery>,
) -> Delivery {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery after {WAIT:?}"
        );
        let _ = broker.publish(Publish::unordered(topic, "again")).await;
        if let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(100), deliveries.recv()).await
        {
            return delivery;
        }
    }
}

#[actix::test]
async fn published_messages_reach_subscribers_in_order() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for version in [RespVersion::Resp3, RespVersion::Auto] {
        let broker = broker(&server, version);
        let mut first = subscribe(&broker, "news").await;
        let mut second = subscribe(&broker, "news").await;

        for n in 0..200u32 {
            let confirmed = broker
                .publish(Publish::ordered(ProducerId(1), "news", n.to_string()))
                .await
                .expect("confirmed");
            // One redis subscription serves both local subscribers.
            assert_eq!(confirmed.receivers, Some(1), "{version:?}");
        }
        for deliveries in [&mut first, &mut second] {
            for n in 0..200u64 {
                let delivery = next(deliveries).await;
                assert_eq!(delivery.topic, Bytes::from_static(b"news"));
                assert_eq!(delivery.payload, Bytes::from(n.to_string()));
                assert_eq!(delivery.seq, n + 1, "the broker numbers deliveries");
            }
        }
        broker.pool().close().await;
    }
}

#[actix::test]
async fn messages_from_another_client_are_delivered() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = broker(&server, RespVersion::Auto);
    let mut deliveries = subscribe(&broker, "alerts").await;
    assert_eq!(
        server.command(&["PUBLISH", "alerts", "disk full"]),
        ":1\r\n"
    );
    assert_eq!(
        server.command(&["PUBLISH", "other", "not for us"]),
        ":0\r\n"
    );
    let delivery = next(&mut deliveries).await;
    assert_eq!(delivery.payload, Bytes::from_static(b"disk full"));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), deliveries.recv())
            .await
            .is_err(),
        "only the subscribed channel is delivered"
    );
}

#[actix::test]
async fn requests_by_route_are_refused_without_touching_the_server() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = broker(&server, RespVersion::Auto);
    let error = broker
        .request(Request::new("echo", "hi"))
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::Unsupported(_)), "{error:?}");
    let stats = broker.stats().await.unwrap();
    assert_eq!(stats.requests_failed, 1);
}

#[actix::test]
async fn a_killed_subscriber_connection_is_replaced_and_delivers_again() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = broker(&server, RespVersion::Auto);
    let mut deliveries = subscribe(&broker, "jobs").await;
    server.command(&["PUBLISH", "jobs", "before"]);
    assert_eq!(
        next(&mut deliveries).await.payload,
        Bytes::from_static(b"before")
    );

    // Redis kills the connection that holds the subscription.
    let killed = server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, ":1\r\n", "one subscribed connection");

    let delivery = publish_until_delivered(&broker, "jobs", &mut deliveries).await;
    assert_eq!(delivery.payload, Bytes::from_static(b"again"));
    assert!(delivery.seq > 1, "numbering goes on across the move");
    let stats = broker.stats().await.unwrap();
    assert!(stats.resubscribes >= 1, "{stats:?}");
}

#[actix::test]
async fn subscriptions_come_back_after_a_server_restart() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let broker = broker(&server, RespVersion::Auto);
    let mut deliveries = subscribe(&broker, "events").await;
    server.command(&["PUBLISH", "events", "first"]);
    assert_eq!(
        next(&mut deliveries).await.payload,
        Bytes::from_static(b"first")
    );

    // `restart` blocks this thread until the new server answers; the broker notices
    // the closed connections when this task yields again.
    server.restart();

    let delivery = publish_until_delivered(&broker, "events", &mut deliveries).await;
    assert_eq!(delivery.payload, Bytes::from_static(b"again"));
    // Publishes go on working too, and are confirmed by the new server.
    let confirmed = broker
        .publish(Publish::unordered("events", "after"))
        .await
        .expect("confirmed after the restart");
    assert_eq!(confirmed.receivers, Some(1));
}
