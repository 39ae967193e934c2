//! Resubscribe jitter and reliable unsubscribes (issue 15, item 16; docs/reliability.md
//! T16). Topics that lose their connection together do not retry in lockstep; an
//! unsubscribe the server never answered is sent again; and a push for a topic
//! nobody here subscribes to makes the broker unsubscribe once more (rate-limited).

mod shapes_broker_support;

use std::collections::BTreeSet;
use std::time::Duration;

use shapes_broker_support::*;
use switchboard::broker::{BrokerConfig, Delivery};
use switchboard::protocol::frame::FrameKind;
use switchboard::testkit::Probe;
use switchboard::transport::{MemoryListener, MemoryNetwork};
use tokio::time::Instant;

/// Subscribes `probe` to "news" on the client's first connection (answered with a
/// head of 0); returns that server connection and the subscription's id.
async fn subscribe_news(
    client: &Client,
    listener: &mut MemoryListener,
    probe: &Probe<Delivery>,
) -> (Peer, switchboard::broker::SubscriptionId) {
    let subscribing = {
        let client = client.clone();
        let recipient = probe.recipient();
        actix_rt::spawn(async move { client.subscribe("news", recipient).await })
    };
    let mut peer = accept(listener).await;
    let subscribe = expect(&mut peer, FrameKind::Subscribe).await;
    peer.reply(&subscribe, joined(0, 0, 7)).await;
    let id = subscribing.await.unwrap().expect("subscribed");
    (peer, id)
}

/// Eight topics whose subscribes all fail together (the connection closes under
/// them) come back at different moments, not in one wave.
#[actix::test]
async fn topics_that_fail_together_retry_at_different_moments() {
    const TOPICS: usize = 8;
    tokio::time::pause();
    fastrand::seed(15);
    let network = MemoryNetwork::new();
    let mut listener = network.bind("server");
    let config =
        BrokerConfig::default().resubscribe_backoff(Duration::from_secs(1), Duration::from_secs(8));
    let client = start_client(&network, &listener, 1, config);
    let probe = Probe::<Delivery>::start();
    for n in 0..TOPICS {
        let client = client.clone();
        let recipient = probe.recipient();
        actix_rt::spawn(async move { client.subscribe(format!("topic-{n}"), recipient).await });
    }
    // All eight subscribes arrive, and the connection closes before any is answered.
    let mut peer = accept(&mut listener).await;
    for _ in 0..TOPICS {
        expect(&mut peer, FrameKind::Subscribe).await;
    }
    let failed_at = Instant::now();
    peer.close().await;

    // Each comes back on its own after its backoff.
    let mut peer = accept(&mut listener).await;
    let mut arrivals = BTreeSet::new();
    for _ in 0..TOPICS {
        let subscribe = expect(&mut peer, FrameKind::Subscribe).await;
        let after = Instant::now() - failed_at;
        assert!(
            after <= Duration::from_millis(1_100),
            "the first retry waits about the first backoff at most: {after:?}"
        );
        arrivals.insert(after);
        peer.reply(&subscribe, joined(0, 0, 7)).await;
    }
    assert!(
        arrivals.len() >= TOPICS / 2,
        "resubscribes came in lockstep: {arrivals:?}"
    );
}

/// The first unsubscribe is never answered (lost on the way): the broker sends it
/// again until the server acknowledges it.
#[actix::test]
async fn an_unsubscribe_whose_first_send_was_lost_is_sent_again() {
    tokio::time::pause();
    let network = MemoryNetwork::new();
    let mut listener = network.bind("server");
    let client = start_client(&network, &listener, 1, BrokerConfig::default());
    let probe = Probe::<Delivery>::start();
    let (mut peer, id) = subscribe_news(&client, &mut listener, &probe).await;

    tokio::time::timeout(WAIT, client.unsubscribe(id))
        .await
        .expect("unsubscribe resolves")
        .expect("known subscription");
    let lost = expect(&mut peer, FrameKind::Unsubscribe).await;
    assert_eq!(lost.topic.as_deref(), Some(&b"news"[..]));
    // Not answered. It comes again, within the bound.
    let again = expect(&mut peer, FrameKind::Unsubscribe).await;
    assert_eq!(again.topic.as_deref(), Some(&b"news"[..]));
    peer.reply(&again, "").await;
    // Acknowledged: nothing more.
    peer.expect_nothing(Duration::from_secs(120)).await;
}

/// A server that goes on pushing a topic nobody here subscribes to is told again:
/// once per burst, not once per push.
#[actix::test]
async fn a_push_for_a_topic_nobody_subscribes_to_is_unsubscribed_again() {
    tokio::time::pause();
    let network = MemoryNetwork::new();
    let mut listener = network.bind("server");
    let client = start_client(&network, &listener, 1, BrokerConfig::default());
    let mut probe = Probe::<Delivery>::start();
    let (mut peer, id) = subscribe_news(&client, &mut listener, &probe).await;
    client.unsubscribe(id).await.expect("known subscription");
    let unsubscribe = expect(&mut peer, FrameKind::Unsubscribe).await;
    peer.reply(&unsubscribe, "").await;

    // The server ignored it and goes on pushing. (What it pushes while the
    // unsubscribe is still under way is expected: it was sent before the server
    // read the unsubscribe.)
    tokio::time::sleep(Duration::from_millis(50)).await;
    for seq in 1..=50 {
        peer.send(push("news", seq, "stray")).await;
    }
    let again = expect(&mut peer, FrameKind::Unsubscribe).await;
    assert_eq!(again.topic.as_deref(), Some(&b"news"[..]));
    peer.reply(&again, "").await;
    peer.expect_nothing(Duration::from_millis(500)).await;
    probe.expect_none(Duration::from_millis(10)).await;

    // Still pushing later: told once more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    peer.send(push("news", 51, "stray")).await;
    let again = expect(&mut peer, FrameKind::Unsubscribe).await;
    peer.reply(&again, "").await;
    peer.expect_nothing(Duration::from_secs(5)).await;
}
