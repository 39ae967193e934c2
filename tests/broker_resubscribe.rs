//! Subscriptions outlive their connections: when the server-side connection carrying
//! a subscription is killed, the broker subscribes again and catches up from the
//! server's replay window, with nothing lost and nothing twice.

mod broker_support;

use std::time::Duration;

use broker_support::*;
use futures::future::join_all;
use switchboard::broker::{Delivery, ProducerId, Publish};
use switchboard::server::{Disconnect, ServerConfig};
use switchboard::{ConnectionId, PoolConfig};

const TOPIC: &str = "news";

async fn publish_range(publisher: &Client, from: u32, to: u32) {
    let pending: Vec<_> = (from..to)
        .map(|n| {
            publisher
                .addr()
                .send(Publish::ordered(ProducerId(1), TOPIC, tagged(1, n)))
        })
        .collect();
    for outcome in within(WAIT, "publishes", join_all(pending)).await {
        outcome.expect("broker alive").expect("confirmed");
    }
}

fn assert_exactly(deliveries: &[Delivery], count: u32) {
    let got: Vec<(u64, u32)> = deliveries
        .iter()
        .map(|d| (d.seq, untag(&d.payload).1))
        .collect();
    let want: Vec<(u64, u32)> = (0..count).map(|n| (u64::from(n) + 1, n)).collect();
    assert_eq!(got, want, "deliveries not exactly 1..={count} in order");
}

/// Starts a subscriber broker with `pool` (its connections only are open then);
/// returns it, what it collects, and its server-side connections.
async fn subscriber(
    server: &Server,
    pool: PoolConfig,
    connections: usize,
) -> (Client, Collected, Vec<ConnectionId>) {
    let client = start_client(server.port, pool);
    let (collector, collected) = Collector::start_new();
    within(
        WAIT,
        "subscribe",
        client.subscribe(TOPIC, collector.recipient()),
    )
    .await
    .unwrap();
    let ids = server.wait_open(connections).await;
    (client, collected, ids)
}

async fn kill_all(server: &Server, ids: &[ConnectionId]) {
    for id in ids {
        let killed = within(WAIT, "disconnect", server.listener.send(Disconnect(*id)))
            .await
            .unwrap();
        assert!(killed, "connection {id:?} was not open");
    }
}

/// The subscription's only connection is killed; messages published meanwhile and
/// after arrive once the pool reconnects.
#[actix::test]
async fn resubscribes_and_catches_up_after_its_connection_is_killed() {
    let server = start_server(ServerConfig::default()).await;
    let (client, collected, ids) = subscriber(&server, pool_config(1, 1), 1).await;
    let publisher = start_client(server.port, pool_config(1, 1));

    publish_range(&publisher, 0, 100).await;
    collected.wait_for(100, WAIT).await;

    kill_all(&server, &ids).await;
    // Published while the subscriber has no connection (it is reconnecting).
    publish_range(&publisher, 100, 200).await;
    publish_range(&publisher, 200, 300).await;

    let deliveries = collected.wait_for(300, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(collected.len(), 300, "extra deliveries");
    assert_exactly(&deliveries, 300);

    let stats = within(WAIT, "stats", client.stats()).await.unwrap();
    assert!(stats.resubscribes >= 1, "{stats:?}");
    assert_eq!(stats.missed, 0, "{stats:?}");
    assert_eq!(stats.deliveries, 300, "{stats:?}");
    let server_stats = server.stats().await;
    assert_eq!(server_stats.subscriptions, 1, "{server_stats:?}");
}

/// The subscriber has two connections: the subscription moves to the other one at
/// once, while a producer keeps publishing.
#[actix::test]
async fn resubscribes_on_another_connection_while_publishing_continues() {
    const TOTAL: u32 = 3000;
    let server = start_server(ServerConfig::default().replay_window(10_000)).await;
    let (client, collected, subscriber_ids) = subscriber(&server, pool_config(2, 2), 2).await;
    let publisher = start_client(server.port, pool_config(1, 1));

    let producing = {
        let publisher = publisher.clone();
        actix_rt::spawn(async move {
            for chunk in 0..(TOTAL / 50) {
                publish_range(&publisher, chunk * 50, (chunk + 1) * 50).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    collected.wait_for(TOTAL as usize / 3, WAIT).await;
    // Kill one of the subscriber's two connections, then the other: whichever
    // carried the subscription, it moves (the publisher's connection is left alone).
    kill_all(&server, &subscriber_ids[..1]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    kill_all(&server, &subscriber_ids[1..]).await;
    within(WAIT * 2, "producer", producing).await.unwrap();

    let deliveries = collected.wait_for(TOTAL as usize, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(collected.len(), TOTAL as usize, "extra deliveries");
    assert_exactly(&deliveries, TOTAL);
    let stats = within(WAIT, "stats", client.stats()).await.unwrap();
    assert!(stats.resubscribes >= 1, "{stats:?}");
    assert_eq!(stats.missed, 0, "{stats:?}");
}

/// A draining connection hands its subscription over before it goes: nothing lost,
/// duplicates (both connections deliver for a moment) are dropped.
#[actix::test]
async fn subscription_moves_off_a_draining_connection_without_loss() {
    const TOTAL: u32 = 2000;
    let server = start_server(ServerConfig::default().replay_window(10_000)).await;
    let pool = PoolConfig::builder()
        .min_idle(2)
        .max_size(2)
        .max_lifetime(Some(Duration::from_millis(300)))
        .maintenance_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let (client, collected, _) = subscriber(&server, pool, 2).await;
    let publisher = start_client(server.port, pool_config(1, 1));
    for chunk in 0..(TOTAL / 50) {
        publish_range(&publisher, chunk * 50, (chunk + 1) * 50).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deliveries = collected.wait_for(TOTAL as usize, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(collected.len(), TOTAL as usize, "extra deliveries");
    assert_exactly(&deliveries, TOTAL);
    let stats = within(WAIT, "stats", client.stats()).await.unwrap();
    assert!(
        stats.resubscribes >= 1,
        "the subscription never moved: {stats:?}"
    );
    assert_eq!(stats.missed, 0, "{stats:?}");
}

/// A subscription that saw no message yet and moves to another connection does not
/// get the topic's history from before it subscribed: the first answer's head is
/// where it catches up from.
#[actix::test]
async fn a_quiet_subscription_that_moves_gets_no_history_from_before_it() {
    let server = start_server(ServerConfig::default()).await;
    let publisher = start_client(server.port, pool_config(1, 1));
    for n in 0..5 {
        let publish = Publish::ordered(ProducerId(1), TOPIC, tagged(1, n));
        publisher.addr().send(publish).await.unwrap().unwrap();
    }
    let before = server.wait_open(1).await;
    let client = start_client(server.port, pool_config(1, 1));
    let (collector, collected) = Collector::start_new();
    within(
        WAIT,
        "subscribe",
        client.subscribe(TOPIC, collector.recipient()),
    )
    .await
    .unwrap();
    let all = server.wait_open(2).await;
    for id in all.iter().filter(|id| !before.contains(id)) {
        assert!(server.listener.send(Disconnect(*id)).await.unwrap());
    }
    eventually(WAIT, "the subscription back", || {
        let client = client.clone();
        async move { (client.stats().await.ok()?.resubscribes >= 1).then_some(()) }
    })
    .await;
    let publish = Publish::ordered(ProducerId(1), TOPIC, tagged(1, 5));
    publisher.addr().send(publish).await.unwrap().unwrap();
    let got: Vec<u64> = collected
        .wait_for(1, WAIT)
        .await
        .iter()
        .map(|delivery| delivery.seq)
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(got, vec![6]);
    assert_eq!(
        collected.len(),
        1,
        "history delivered: {:?}",
        collected.snapshot()
    );
}
