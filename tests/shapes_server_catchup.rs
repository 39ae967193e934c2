//! A subscriber that was away while more was published than its connection can hold
//! at once catches up: the server paces the replay against the peer's queue
//! (`subscriber_queue`) and write buffer (`max_write_buffer`) instead of queueing it
//! all at once, disconnecting its own catch-up as a slow consumer and starting again
//! for ever.
//!
//! The shape: a subscriber behind a `FaultProxy` has seen message 1; its link is cut
//! and new connects are refused while a publisher publishes `count` messages of
//! `size` bytes; then the link is allowed back. Every message still in the replay
//! window must arrive exactly once and in order, what fell out of the window must be
//! counted in the client's `missed`, and a message published afterwards must arrive.

mod broker_support;

use std::net::SocketAddr;
use std::time::Duration;

use broker_support::*;
use futures::future::join_all;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
use switchboard::broker::{BrokerConfig, ProducerId, Publish};
use switchboard::server::ServerConfig;
use switchboard::testkit::{AcceptMode, FaultProxy};
use switchboard::{ConnectionConfig, PoolConfig};

const TOPIC: &str = "catch-up";

/// The bound on a whole catch-up: generous, for a loaded 2-core machine.
const CATCH_UP: Duration = Duration::from_secs(60);

/// A payload of `size` bytes (at least 8) that names message `n`.
fn message(n: u32, size: usize) -> bytes::Bytes {
    let mut bytes = tagged(1, n).to_vec();
    bytes.resize(size.max(8), 0xA5);
    bytes.into()
}

/// Publishes messages `from..to` of `size` bytes, in order, `batch` at a time (the
/// server queues the confirmations of a batch to the publisher at once, within its
/// `subscriber_queue`).
async fn publish_range(publisher: &Client, from: u32, to: u32, size: usize, batch: u32) {
    let mut n = from;
    while n < to {
        let end = (n + batch.max(1)).min(to);
        let pending: Vec<_> = (n..end)
            .map(|n| {
                publisher
                    .addr()
                    .send(Publish::ordered(ProducerId(1), TOPIC, message(n, size)))
            })
            .collect();
        for outcome in within(WAIT, "publishes", join_all(pending)).await {
            outcome.expect("broker alive").expect("confirmed");
        }
        n = end;
    }
}

/// One catch-up shape.
#[derive(Debug, Clone, Copy)]
struct Shape {
    size: usize,
    count: u32,
    replay_window: usize,
    subscriber_queue: usize,
    max_write_buffer: usize,
}

/// Runs `shape` end to end and checks the promise.
async fn catch_up(shape: Shape) {
    let connection = ConnectionConfig::builder()
        .max_write_buffer(shape.max_write_buffer)
        .build()
        .expect("valid connection config");
    let server = start_server_with(
        ServerConfig::default()
            .replay_window(shape.replay_window)
            .subscriber_queue(shape.subscriber_queue),
        ServerOptions {
            connection: Some(connection.clone()),
            ..ServerOptions::default()
        },
    )
    .await;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], server.port))).unwrap();
    let quick_reconnects = PoolConfig::builder()
        .min_idle(1)
        .max_size(1)
        .backoff_base(Duration::from_millis(10))
        .backoff_max(Duration::from_millis(200))
        .build()
        .expect("valid pool config");
    let subscriber = start_client_with(
        proxy.local_addr().port(),
        quick_reconnects,
        Some(connection.clone()),
        BrokerConfig::default()
            .resubscribe_backoff(Duration::from_millis(10), Duration::from_millis(200)),
    );
    // The publisher's own connection keeps the default write buffer: the shapes are
    // the subscriber's.
    let publisher = start_client(server.port, pool_config(1, 1));
    let batch = (shape.subscriber_queue / 2)
        .min(1024 * 1024 / shape.size.max(1))
        .clamp(1, 256) as u32;
    let (collector, collected) = Collector::start_new();
    within(
        WAIT,
        "subscribe",
        subscriber.subscribe(TOPIC, collector.recipient()),
    )
    .await
    .expect("subscribed");

    publish_range(&publisher, 0, 1, shape.size, batch).await;
    collected.wait_for(1, WAIT).await;

    // Away: the link is cut and no new one can be made while the publisher goes on.
    proxy.set_accept(AcceptMode::Refuse).await;
    proxy.reset().await;
    server
        .wait_stats("the subscription dropped", |s| s.subscriptions == 0)
        .await;
    publish_range(&publisher, 1, 1 + shape.count, shape.size, batch).await;
    proxy.set_accept(AcceptMode::Forward).await;

    // Back: what is still in the window arrives, in order, exactly once.
    let published = u64::from(1 + shape.count);
    let window = shape.replay_window as u64;
    // The subscriber has seen message 1; the window holds the last `window`.
    let oldest = (published + 1).saturating_sub(window).max(2);
    let expected_missed = oldest - 2;
    let expected: Vec<u64> = std::iter::once(1).chain(oldest..=published).collect();
    let deliveries = collected.wait_for(expected.len(), CATCH_UP).await;
    let got: Vec<(u64, u32)> = deliveries
        .iter()
        .map(|d| (d.seq, untag(&d.payload).1))
        .collect();
    let want: Vec<(u64, u32)> = expected
        .iter()
        .map(|seq| (*seq, (*seq - 1) as u32))
        .collect();
    assert_eq!(got.len(), want.len(), "{shape:?}: deliveries");
    assert!(
        got == want,
        "{shape:?}: not every retained message once and in order"
    );
    let stats = within(WAIT, "client stats", subscriber.stats())
        .await
        .unwrap();
    assert_eq!(stats.missed, expected_missed, "{shape:?}: {stats:?}");

    // Then live messages flow again.
    publish_range(
        &publisher,
        1 + shape.count,
        2 + shape.count,
        shape.size,
        batch,
    )
    .await;
    let deliveries = collected.wait_for(expected.len() + 1, WAIT).await;
    let last = deliveries.last().unwrap();
    assert_eq!(last.seq, published + 1, "{shape:?}: the live message");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        collected.len(),
        expected.len() + 1,
        "{shape:?}: extra deliveries"
    );
    proxy.stop().await;
}

/// All defaults: 1,500 messages of 8 KiB published while away, 1,024 of them
/// retained: 8 MiB of replay against a 4 MiB write buffer.
#[actix::test]
async fn a_replay_larger_than_the_write_buffer_catches_up() {
    catch_up(Shape {
        size: 8 * 1024,
        count: 1_500,
        replay_window: 1_024,
        subscriber_queue: 4_096,
        max_write_buffer: 4 * 1024 * 1024,
    })
    .await;
}

/// A replay window larger than the subscriber queue: 6,000 small messages retained,
/// replayed through a queue of 4,096.
#[actix::test]
async fn a_replay_longer_than_the_subscriber_queue_catches_up() {
    catch_up(Shape {
        size: 64,
        count: 6_000,
        replay_window: 10_000,
        subscriber_queue: 4_096,
        max_write_buffer: 4 * 1024 * 1024,
    })
    .await;
}

/// Generated shapes over (message size, count, replay_window, subscriber_queue,
/// max_write_buffer), three cases from each of three fixed seeds; each case is
/// printed.
#[actix::test]
async fn generated_catch_up_shapes() {
    let shapes = (
        prop_oneof![1usize..512, 512usize..16 * 1024, 16 * 1024usize..64 * 1024],
        1u32..3_000,
        prop_oneof![Just(1usize), 2usize..64, 64usize..8_192],
        prop_oneof![
            Just(64 * 1024usize),
            64 * 1024usize..1024 * 1024,
            1024 * 1024usize..8 * 1024 * 1024
        ],
        prop_oneof![Just(1usize), 2usize..1_024, 1_024usize..10_000],
    );
    for seed in [15u8, 16, 17] {
        let mut runner = TestRunner::new_with_rng(
            ProptestConfig::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
        );
        for case in 0..3 {
            let (size, count, subscriber_queue, max_write_buffer, replay_window) =
                shapes.new_tree(&mut runner).expect("a shape").current();
            // What one message costs on the wire must fit the write buffer, and a
            // case stays under 16 MiB of publishes.
            let size = size.min(max_write_buffer / 2);
            let count = count.min((16 * 1024 * 1024 / size) as u32).max(1);
            let shape = Shape {
                size,
                count,
                replay_window,
                subscriber_queue,
                max_write_buffer,
            };
            eprintln!("seed {seed} case {case}: {shape:?}");
            catch_up(shape).await;
        }
    }
}

/// Messages published while the subscriber catches up follow its replay: nothing
/// overtakes, nothing comes twice, and every message it does not get is counted in
/// `missed` (the window is small, so the live ones may push the replay out of it).
#[actix::test]
async fn live_messages_during_a_catch_up_keep_their_order() {
    let server = start_server(ServerConfig::default().replay_window(512)).await;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], server.port))).unwrap();
    let quick_reconnects = PoolConfig::builder()
        .min_idle(1)
        .max_size(1)
        .backoff_base(Duration::from_millis(10))
        .backoff_max(Duration::from_millis(200))
        .build()
        .expect("valid pool config");
    let subscriber = start_client_with(
        proxy.local_addr().port(),
        quick_reconnects,
        None,
        BrokerConfig::default()
            .resubscribe_backoff(Duration::from_millis(10), Duration::from_millis(200)),
    );
    let publisher = start_client(server.port, pool_config(1, 1));
    let (collector, collected) = Collector::start_new();
    within(
        WAIT,
        "subscribe",
        subscriber.subscribe(TOPIC, collector.recipient()),
    )
    .await
    .expect("subscribed");
    let size = 16 * 1024;
    publish_range(&publisher, 0, 1, size, 64).await;
    collected.wait_for(1, WAIT).await;

    proxy.set_accept(AcceptMode::Refuse).await;
    proxy.reset().await;
    server
        .wait_stats("the subscription dropped", |s| s.subscriptions == 0)
        .await;
    publish_range(&publisher, 1, 1_000, size, 64).await;
    proxy.set_accept(AcceptMode::Forward).await;
    // Published on while the subscriber comes back and catches up.
    publish_range(&publisher, 1_000, 3_000, size, 64).await;
    let last = 3_000u64;
    eventually(CATCH_UP, "the last message", || {
        let collected = collected.clone();
        async move { (collected.snapshot().last()?.seq == last).then_some(()) }
    })
    .await;

    let deliveries = collected.snapshot();
    let mut gaps = 0;
    let mut previous = 0;
    for delivery in &deliveries {
        assert!(
            delivery.seq > previous,
            "out of order or twice: {} after {previous}",
            delivery.seq
        );
        assert_eq!(
            u64::from(untag(&delivery.payload).1),
            delivery.seq - 1,
            "payload of {}",
            delivery.seq
        );
        gaps += delivery.seq - previous - 1;
        previous = delivery.seq;
    }
    let stats = within(WAIT, "client stats", subscriber.stats())
        .await
        .unwrap();
    assert_eq!(
        stats.missed, gaps,
        "every message not delivered is counted: {stats:?}"
    );
    proxy.stop().await;
}
