//! Subscribing before the server is up (issue 15, item 6; docs/reliability.md T6).
//! A subscription is desired state: made while the server is down it is kept, says
//! it is pending, is retried with backoff, and is live once the server is back;
//! invalid ones still fail at once.

mod broker_support;
mod shapes_broker_support;

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

/// Outages from 100 ms to 10 minutes (virtual time, a scripted server on the
/// in-memory network): a subscription made at the start of the outage is pending
/// throughout, and joins within the longest backoff (plus the pool's) of the server
/// coming back, then gets what is published.
#[test]
fn pending_subscriptions_join_within_a_bound_after_outages_of_any_length() {
    use shapes_broker_support as scripted;
    use switchboard::broker::Delivery;
    use switchboard::protocol::frame::FrameKind;
    use switchboard::testkit::Probe;
    use switchboard::transport::MemoryNetwork;
    use switchboard::Authority;
    use tokio::time::Instant;

    let outages = [
        Duration::from_millis(100),
        Duration::from_secs(2),
        Duration::from_secs(30),
        Duration::from_secs(600),
    ];
    for outage in outages {
        actix::System::new().block_on(async move {
            tokio::time::pause();
            let network = MemoryNetwork::new();
            let client = scripted::start_client_to(
                &network,
                Authority::memory("server"),
                1,
                BrokerConfig::default(),
            );
            let mut probe = Probe::<Delivery>::start();
            let id =
                tokio::time::timeout(scripted::WAIT, client.subscribe("news", probe.recipient()))
                    .await
                    .expect("subscribe resolves")
                    .unwrap_or_else(|error| panic!("outage {outage:?}: not kept: {error}"));
            tokio::time::sleep(outage).await;
            let status = client.subscription_status(id).await.expect("known");
            assert!(
                matches!(
                    status,
                    SubscriptionStatus::Pending {
                        last_error: Some(_)
                    }
                ),
                "outage {outage:?}: {status:?}"
            );

            let mut listener = network.bind("server");
            let back = Instant::now();
            let mut peer = scripted::accept(&mut listener).await;
            let subscribe = scripted::expect(&mut peer, FrameKind::Subscribe).await;
            let joined_after = back.elapsed();
            // The broker's longest backoff (2 s by default) and the pool's (100 ms
            // in these tests), and a little for the connect itself.
            assert!(
                joined_after <= Duration::from_millis(2_200),
                "outage {outage:?}: joined {joined_after:?} after the server came back"
            );
            peer.reply(&subscribe, scripted::joined(0, 0, 7)).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            let status = client.subscription_status(id).await.expect("known");
            assert!(
                matches!(status, SubscriptionStatus::Live),
                "outage {outage:?}: {status:?}"
            );
            peer.send(scripted::push("news", 1, "first")).await;
            let delivery = probe.expect(scripted::WAIT).await;
            assert_eq!((delivery.seq, delivery.missed_before), (1, 0));
        });
    }
}
