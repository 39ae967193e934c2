//! No silent drops at the subscriber (issue 15, item 5; docs/reliability.md T5).
//! Every message of a topic either reaches a subscriber or is counted in the
//! `missed_before` of the next delivery it gets: a burst into a subscriber with a
//! small mailbox, numbers the server skipped, messages the server said it could no
//! longer replay, and a replay that came up short.

mod shapes_broker_support;

use shapes_broker_support::*;
use switchboard::broker::{BrokerConfig, Delivery};
use switchboard::protocol::frame::FrameKind;
use switchboard::testkit::Probe;
use switchboard::transport::{MemoryListener, MemoryNetwork};

/// Receives until the deliveries and the gaps they report account for `total`
/// messages; checks that each delivery's `missed_before` is exactly the step in
/// sequence numbers since the one before (from `from`).
async fn account_for(probe: &mut Probe<Delivery>, from: u64, total: u64) -> Vec<Delivery> {
    let mut got = Vec::new();
    let mut last = from;
    let mut accounted = 0u64;
    while accounted < total {
        let delivery = probe.expect(WAIT).await;
        assert_eq!(
            delivery.seq,
            last + 1 + delivery.missed_before,
            "delivery #{} after seq {last} reports the wrong gap: {delivery:?}",
            got.len()
        );
        last = delivery.seq;
        accounted += 1 + delivery.missed_before;
        got.push(delivery);
    }
    assert_eq!(accounted, total, "more accounted for than sent");
    got
}

/// Subscribes `probe` to "news" on the client's first connection, which the
/// scripted server answers with `head`; returns that server connection.
async fn subscribe(
    client: &Client,
    listener: &mut MemoryListener,
    probe: &Probe<Delivery>,
    head: u64,
) -> Peer {
    let subscribing = {
        let client = client.clone();
        let recipient = probe.recipient();
        actix_rt::spawn(async move { client.subscribe("news", recipient).await })
    };
    let mut peer = accept(listener).await;
    let subscribe = expect(&mut peer, FrameKind::Subscribe).await;
    peer.reply(&subscribe, joined(0, head, 7)).await;
    subscribing.await.unwrap().expect("subscribed");
    peer
}

/// 2,001 messages at once into a subscriber whose mailbox holds 16 (actix's
/// default, the probe's): what it does not receive, it is told about, exactly.
#[actix::test]
async fn a_burst_into_a_small_mailbox_is_received_or_reported() {
    const BURST: u64 = 2_001;
    tokio::time::pause();
    let network = MemoryNetwork::new();
    let mut listener = network.bind("server");
    let client = start_client(&network, &listener, 1, BrokerConfig::default());
    let mut probe = Probe::<Delivery>::start();
    let mut peer = subscribe(&client, &mut listener, &probe, 0).await;

    for seq in 1..=BURST {
        peer.send(push("news", seq, seq.to_be_bytes().to_vec()))
            .await;
    }
    let got = account_for(&mut probe, 0, BURST).await;
    let reported: u64 = got.iter().map(|delivery| delivery.missed_before).sum();
    assert!(reported > 0, "the burst never overflowed the mailbox");
    assert_eq!(got.last().map(|d| d.seq), Some(BURST), "the newest is kept");
    probe.expect_none(std::time::Duration::from_secs(1)).await;

    let stats = client.stats().await.expect("broker alive");
    assert_eq!(stats.deliveries, got.len() as u64, "{stats:?}");
    assert_eq!(stats.deliveries_dropped, reported, "{stats:?}");
    assert_eq!(stats.missed, 0, "no gap in the topic itself: {stats:?}");
}

/// Numbers the server skipped (pushes lost on the way, or dropped at the broker's
/// own mailbox) are gaps: counted in `missed` and told to the subscriber. So are the
/// messages a resubscribe's answer says are gone, and those a replay fell short of.
#[actix::test]
async fn gaps_in_sequence_numbers_are_counted_and_told() {
    tokio::time::pause();
    let network = MemoryNetwork::new();
    let mut listener = network.bind("server");
    let client = start_client(&network, &listener, 1, BrokerConfig::default());
    let mut probe = Probe::<Delivery>::start();
    let peer = subscribe(&client, &mut listener, &probe, 0).await;

    let mut peer = peer;
    for seq in [1, 2, 5, 6, 10] {
        peer.send(push("news", seq, "m")).await;
    }
    let got = account_for(&mut probe, 0, 10).await;
    let gaps: Vec<(u64, u64)> = got.iter().map(|d| (d.seq, d.missed_before)).collect();
    assert_eq!(gaps, [(1, 0), (2, 0), (5, 2), (6, 0), (10, 3)]);
    let stats = client.stats().await.expect("broker alive");
    assert_eq!(stats.missed, 5, "{stats:?}");

    // The connection closes; the server no longer has 11 to 13, replays 14 and 15
    // of the 16 it says it holds (16 lost on the way), then goes on with 17.
    peer.close().await;
    let mut peer = accept(&mut listener).await;
    let subscribe = expect(&mut peer, FrameKind::Subscribe).await;
    assert_eq!(resume_of(&subscribe), (10, 7));
    peer.send(push("news", 14, "m")).await;
    peer.send(push("news", 15, "m")).await;
    peer.reply(&subscribe, joined(3, 16, 7)).await;
    peer.send(push("news", 17, "m")).await;
    let got = account_for(&mut probe, 10, 7).await;
    let gaps: Vec<(u64, u64)> = got.iter().map(|d| (d.seq, d.missed_before)).collect();
    assert_eq!(gaps, [(14, 3), (15, 0), (17, 1)]);
    let stats = client.stats().await.expect("broker alive");
    assert_eq!(stats.missed, 5 + 3 + 1, "{stats:?}");
}
