//! Fan-out: every subscriber of a topic gets every message, in order, whether the
//! subscribers share one client broker or are spread over several.

mod broker_support;

use broker_support::*;
use futures::future::join_all;
use switchboard::broker::{ProducerId, Publish};
use switchboard::server::{Broadcast, ServerConfig};

const TOPIC: &str = "fan";
const SUBSCRIBERS: usize = 100;
const MESSAGES: u32 = 200;

/// Publishes `MESSAGES` ordered messages from `publisher`, 32 at a time in flight.
async fn publish_all(publisher: &Client) {
    let mut pending = Vec::new();
    for n in 0..MESSAGES {
        pending.push(
            publisher
                .addr()
                .send(Publish::ordered(ProducerId(7), TOPIC, tagged(7, n))),
        );
        if pending.len() == 32 {
            for outcome in within(WAIT, "publishes", join_all(pending.drain(..))).await {
                outcome.expect("broker alive").expect("confirmed");
            }
        }
    }
    for outcome in within(WAIT, "publishes", join_all(pending)).await {
        outcome.expect("broker alive").expect("confirmed");
    }
}

/// Every collector got exactly the `MESSAGES` messages, in order, seq 1.. with no gap.
async fn check_all(collected: &[Collected]) {
    for (i, collected) in collected.iter().enumerate() {
        let deliveries = collected.wait_for(MESSAGES as usize, WAIT).await;
        let got: Vec<(u64, u32)> = deliveries
            .iter()
            .map(|d| (d.seq, untag(&d.payload).1))
            .collect();
        let want: Vec<(u64, u32)> = (0..MESSAGES).map(|n| (u64::from(n) + 1, n)).collect();
        assert_eq!(got, want, "subscriber {i} got the wrong messages");
    }
    // Nothing more trickles in.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for (i, collected) in collected.iter().enumerate() {
        assert_eq!(
            collected.len(),
            MESSAGES as usize,
            "subscriber {i}: extra deliveries"
        );
    }
}

#[actix::test]
async fn a_hundred_subscribers_on_one_broker_each_get_everything_in_order() {
    let server = start_server(ServerConfig::default()).await;
    let subscribers = start_client(server.port, pool_config(1, 2));
    let mut collected = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let (collector, c) = Collector::start_new();
        within(
            WAIT,
            "subscribe",
            subscribers.subscribe(TOPIC, collector.recipient()),
        )
        .await
        .unwrap();
        collected.push(c);
    }
    // One server subscription serves them all.
    assert_eq!(server.stats().await.subscriptions, 1);

    let publisher = start_client(server.port, pool_config(1, 2));
    publish_all(&publisher).await;
    check_all(&collected).await;

    let stats = within(WAIT, "stats", subscribers.stats()).await.unwrap();
    assert_eq!(stats.deliveries, (SUBSCRIBERS as u64) * u64::from(MESSAGES));
    assert_eq!(stats.deliveries_dropped, 0);
    assert_eq!(stats.duplicates, 0);
}

#[actix::test]
async fn subscribers_spread_over_several_brokers_each_get_everything_in_order() {
    const BROKERS: usize = 5;
    let server = start_server(ServerConfig::default()).await;
    let brokers: Vec<Client> = (0..BROKERS)
        .map(|_| start_client(server.port, pool_config(1, 2)))
        .collect();
    let mut collected = Vec::new();
    for i in 0..SUBSCRIBERS {
        let (collector, c) = Collector::start_new();
        let broker = &brokers[i % BROKERS];
        within(
            WAIT,
            "subscribe",
            broker.subscribe(TOPIC, collector.recipient()),
        )
        .await
        .unwrap();
        collected.push(c);
    }
    assert_eq!(server.stats().await.subscriptions, BROKERS);

    // Publishing from one of the subscribing brokers works the same.
    publish_all(&brokers[0]).await;
    check_all(&collected).await;
}

#[actix::test]
async fn server_broadcasts_reach_every_subscriber_in_order() {
    let server = start_server(ServerConfig::default()).await;
    let brokers: Vec<Client> = (0..4)
        .map(|_| start_client(server.port, pool_config(1, 1)))
        .collect();
    let mut collected = Vec::new();
    for i in 0..SUBSCRIBERS {
        let (collector, c) = Collector::start_new();
        within(
            WAIT,
            "subscribe",
            brokers[i % 4].subscribe(TOPIC, collector.recipient()),
        )
        .await
        .unwrap();
        collected.push(c);
    }
    for n in 0..MESSAGES {
        let seq = within(
            WAIT,
            "broadcast",
            server.broker.send(Broadcast {
                topic: TOPIC.into(),
                payload: tagged(7, n),
            }),
        )
        .await
        .unwrap();
        assert_eq!(seq, Some(u64::from(n) + 1));
    }
    check_all(&collected).await;
}
