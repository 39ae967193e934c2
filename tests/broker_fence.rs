//! An ordered producer's messages that reach the server late, on a connection the
//! client already gave up, are refused by the server's producer fence instead of
//! being published after the messages the producer sent next on a new connection.
//!
//! The link: a `FaultProxy` delays everything the client sends by a second and drops
//! everything the server sends back. The client's heartbeat gives up on the
//! connection long before the delayed publishes arrive; the producer moves to a new
//! connection (the faults healed by then) and publishes more, which arrive first.
#![cfg(feature = "testkit")]

mod broker_support;

use std::net::SocketAddr;
use std::time::Duration;

use broker_support::*;
use futures::future::join_all;
use switchboard::broker::{BrokerConfig, ProducerId, Publish, Subscribe};
use switchboard::server::ServerConfig;
use switchboard::testkit::{Direction, Fault, FaultProxy};
use switchboard::ConnectionConfig;

const TOPIC: &str = "fenced";

#[actix::test]
async fn late_messages_on_an_abandoned_connection_do_not_overtake_later_ones() {
    let server = start_server(ServerConfig::default()).await;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], server.port))).unwrap();

    // The subscriber talks to the server directly.
    let watcher = start_client(server.port, pool_config(1, 1));
    let (collector, collected) = Collector::start_new();
    within(
        WAIT,
        "subscribe",
        watcher.addr().send(Subscribe {
            topic: TOPIC.into(),
            subscriber: collector.recipient(),
        }),
    )
    .await
    .expect("broker alive")
    .expect("subscribed");

    let heartbeats = ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let producer = start_client_with(
        proxy.local_addr().port(),
        pool_config(1, 1),
        Some(heartbeats),
        BrokerConfig::default(),
    );
    wait_pool_size(&producer, proxy.local_addr().port(), 1).await;

    proxy
        .inject(Direction::Upstream, Fault::Latency(Duration::from_secs(1)))
        .await;
    proxy.inject(Direction::Downstream, Fault::Blackhole).await;
    let early: Vec<_> = (0..5)
        .map(|n| {
            producer
                .addr()
                .send(Publish::ordered(ProducerId(1), TOPIC, tagged(1, n)))
        })
        .collect();
    let early = within(WAIT, "the early publishes to fail", join_all(early)).await;
    for outcome in &early {
        let unconfirmed = outcome
            .as_ref()
            .expect("broker alive")
            .as_ref()
            .unwrap_err();
        assert!(
            unconfirmed.maybe_delivered(),
            "written on a connection that closed: {unconfirmed:?}"
        );
    }

    // The old link still carries the early messages, due in under a second; the new
    // connection is quick.
    proxy.heal().await;
    let late: Vec<_> = (5..10)
        .map(|n| {
            producer
                .addr()
                .send(Publish::ordered(ProducerId(1), TOPIC, tagged(1, n)))
        })
        .collect();
    for outcome in within(WAIT, "the later publishes", join_all(late)).await {
        outcome.expect("broker alive").expect("confirmed");
    }

    server
        .wait_stats("the early messages to arrive", |stats| {
            stats.published + stats.fenced == 10
        })
        .await;
    collected.wait_for(5, WAIT).await;
    // Anything published is on its way to the subscriber by now; give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let delivered: Vec<u32> = collected
        .snapshot()
        .iter()
        .map(|delivery| untag(&delivery.payload).1)
        .collect();
    assert_eq!(
        delivered,
        vec![5, 6, 7, 8, 9],
        "in order, the late ones refused"
    );
    let stats = server.stats().await;
    assert_eq!((stats.published, stats.fenced), (5, 5));
}
