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

/// A subscriber that records every delivery, with a mailbox of its own size.
struct Recorder {
    capacity: usize,
    sender: tokio::sync::mpsc::UnboundedSender<Delivery>,
}

impl actix::Actor for Recorder {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut actix::Context<Self>) {
        ctx.set_mailbox_capacity(self.capacity);
    }
}

impl actix::Handler<Delivery> for Recorder {
    type Result = ();

    fn handle(&mut self, delivery: Delivery, _: &mut actix::Context<Self>) {
        let _ = self.sender.send(delivery);
    }
}

/// One generated shape: how many messages, the subscriber's mailbox, and which
/// numbers the server skips.
#[derive(Debug)]
struct Shape {
    messages: u64,
    mailbox: usize,
    skip_one_in: Option<u64>,
    pause_every: Option<u64>,
}

impl Shape {
    fn of(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        Self {
            messages: match rng.u8(..4) {
                0 => rng.u64(1..=16),
                1 => rng.u64(17..=2_001),
                _ => rng.u64(2_002..=20_000),
            },
            mailbox: [1, 2, 16, 64, 4_096][rng.usize(..5)],
            skip_one_in: [None, Some(2), Some(7), Some(100)][rng.usize(..4)],
            pause_every: [None, Some(1), Some(50), Some(1_000)][rng.usize(..4)],
        }
    }
}

/// Bursts from 1 to 20,000 messages, mailboxes from 1 to 4,096, numbers skipped or
/// not, sent all at once or paced: in every case what the subscriber received plus
/// what it was told it missed is every number up to the last, each delivery's
/// `missed_before` is exactly the step since the one before, and the last message
/// arrives. Seeds are fixed (and printed); `SWITCHBOARD_SHAPES_SEED=S` runs seed `S`.
#[test]
fn every_burst_shape_is_received_or_reported() {
    let seeds: Vec<u64> = match std::env::var("SWITCHBOARD_SHAPES_SEED") {
        Ok(seed) => vec![seed.parse().expect("SWITCHBOARD_SHAPES_SEED is a number")],
        Err(_) => (1..=12).collect(),
    };
    for seed in seeds {
        let shape = Shape::of(seed);
        println!("shape seed {seed}: {shape:?}");
        actix::System::new().block_on(run_shape(seed, shape));
    }
}

async fn run_shape(seed: u64, shape: Shape) {
    tokio::time::pause();
    let network = MemoryNetwork::new();
    let mut listener = network.bind("server");
    let client = start_client(&network, &listener, 1, BrokerConfig::default());
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let recorder = actix::Actor::start(Recorder {
        capacity: shape.mailbox,
        sender,
    });
    let subscribing = {
        let client = client.clone();
        actix_rt::spawn(async move { client.subscribe("news", recorder.recipient()).await })
    };
    let mut peer = accept(&mut listener).await;
    let subscribe = expect(&mut peer, FrameKind::Subscribe).await;
    peer.reply(&subscribe, joined(0, 0, 7)).await;
    subscribing.await.unwrap().expect("subscribed");

    let mut skipped = 0u64;
    let last = shape.messages;
    for seq in 1..=last {
        // Never skip the last one: the subscriber learns of a gap with a message.
        if seq != last && shape.skip_one_in.is_some_and(|one_in| seq % one_in == 0) {
            skipped += 1;
            continue;
        }
        peer.send(push("news", seq, seq.to_be_bytes().to_vec()))
            .await;
        if shape.pause_every.is_some_and(|every| seq % every == 0) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    let (mut previous, mut accounted, mut deliveries, mut told) = (0u64, 0u64, 0u64, 0u64);
    while accounted < last {
        let delivery = tokio::time::timeout(WAIT, received.recv())
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: stalled at {accounted} of {last}"))
            .expect("recorder alive");
        assert_eq!(
            delivery.seq,
            previous + 1 + delivery.missed_before,
            "seed {seed}: wrong gap reported after seq {previous}"
        );
        assert_eq!(&delivery.payload[..], &delivery.seq.to_be_bytes()[..]);
        previous = delivery.seq;
        accounted += 1 + delivery.missed_before;
        told += delivery.missed_before;
        deliveries += 1;
    }
    assert_eq!(
        previous, last,
        "seed {seed}: the last message did not arrive"
    );
    let stats = client.stats().await.expect("broker alive");
    assert_eq!(stats.missed, skipped, "seed {seed}: {stats:?}");
    assert_eq!(stats.deliveries, deliveries, "seed {seed}: {stats:?}");
    assert_eq!(
        stats.deliveries_dropped,
        told - skipped,
        "seed {seed}: {stats:?}"
    );
}
