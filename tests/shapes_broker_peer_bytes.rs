//! Peer bytes never panic the client Broker (issue 15, item 11; docs/reliability.md
//! T11). A scripted server answers subscribes with numbers at their extremes: huge but
//! consistent ones are counted with saturation, absurd ones (more missed than the
//! sequence range could hold) are a typed error on that one connection. Either way the Broker stays alive and later calls
//! work.

mod shapes_broker_support;

use shapes_broker_support::*;
use switchboard::broker::{BrokerConfig, BrokerError, Delivery};
use switchboard::protocol::frame::FrameKind;
use switchboard::testkit::Probe;
use switchboard::transport::MemoryNetwork;

/// Answers (missed, head) for topics subscribed one after the other on one connection:
/// the first two are extreme and consistent, the others absurd.
#[actix::test]
async fn subscribe_answers_at_the_extremes_never_kill_the_broker() {
    tokio::time::pause();
    let network = MemoryNetwork::new();
    let mut listener = network.bind("server");
    let client = start_client(&network, &listener, 1, BrokerConfig::default());
    let probe = Probe::<Delivery>::start();

    // Consistent but at the top of the range: counted, saturating.
    let answers = [(u64::MAX, u64::MAX), (u64::MAX, u64::MAX), (1, u64::MAX)];
    let mut peer = None;
    for (n, (missed, head)) in answers.into_iter().enumerate() {
        let topic = format!("extreme-{n}");
        let subscribing = {
            let client = client.clone();
            let recipient = probe.recipient();
            actix_rt::spawn(async move { client.subscribe(topic, recipient).await })
        };
        let peer = match &mut peer {
            Some(peer) => peer,
            None => peer.insert(accept(&mut listener).await),
        };
        let subscribe = expect(peer, FrameKind::Subscribe).await;
        peer.reply(&subscribe, joined(missed, head, 7)).await;
        let outcome = tokio::time::timeout(WAIT, subscribing)
            .await
            .expect("subscribe resolves")
            .expect("task ran");
        assert!(
            outcome.is_ok(),
            "answer {n} ({missed}, {head}) refused: {outcome:?}"
        );
    }
    let stats = client
        .stats()
        .await
        .expect("broker alive after huge counts");
    assert_eq!(stats.missed, u64::MAX, "{stats:?}");

    // Absurd: more missed than the range up to head holds.
    let subscribing = {
        let client = client.clone();
        let recipient = probe.recipient();
        actix_rt::spawn(async move { client.subscribe("absurd", recipient).await })
    };
    let mut peer = peer.expect("connected");
    let subscribe = expect(&mut peer, FrameKind::Subscribe).await;
    peer.reply(&subscribe, joined(u64::MAX, 5, 7)).await;
    let outcome = tokio::time::timeout(WAIT, subscribing)
        .await
        .expect("subscribe resolves")
        .expect("task ran");
    assert!(
        matches!(outcome, Err(BrokerError::BadAnswer(_))),
        "an absurd answer is a typed error: {outcome:?}"
    );
    // That connection is given up as a protocol violator.
    peer.expect_closed(WAIT).await;

    // The broker lives on, and its topics move to a new connection.
    let stats = client
        .stats()
        .await
        .expect("broker alive after an absurd answer");
    assert_eq!(stats.missed, u64::MAX, "{stats:?}");
    let mut peer = accept(&mut listener).await;
    let mut resumed = Vec::new();
    for _ in 0..3 {
        let subscribe = expect(&mut peer, FrameKind::Subscribe).await;
        resumed.push(resume_of(&subscribe));
        peer.reply(&subscribe, joined(0, u64::MAX, 7)).await;
    }
    assert!(
        resumed.iter().all(|&resume| resume == (u64::MAX, 7)),
        "{resumed:?}"
    );

    // A new subscribe still works.
    let subscribing = {
        let client = client.clone();
        let recipient = probe.recipient();
        actix_rt::spawn(async move { client.subscribe("after", recipient).await })
    };
    let subscribe = expect(&mut peer, FrameKind::Subscribe).await;
    peer.reply(&subscribe, joined(0, 3, 7)).await;
    let outcome = tokio::time::timeout(WAIT, subscribing)
        .await
        .expect("subscribe resolves")
        .expect("task ran");
    assert!(outcome.is_ok(), "{outcome:?}");
    peer.send(push("after", 4, "four")).await;
    let mut probe = probe;
    let delivery = probe.expect(WAIT).await;
    assert_eq!((delivery.seq, &delivery.payload[..]), (4, &b"four"[..]));
}

/// A resubscribe whose answer says more were missed than lie between the number
/// the client resumed from and the head is absurd too. (A head behind that number
/// in the same server life is not: the server forgot the topic, and numbers it from
/// 1 again.)
#[actix::test]
async fn resubscribe_answers_that_miss_more_than_the_range_are_refused() {
    tokio::time::pause();
    let network = MemoryNetwork::new();
    let mut listener = network.bind("server");
    let client = start_client(&network, &listener, 1, BrokerConfig::default());
    let mut probe = Probe::<Delivery>::start();

    let subscribing = {
        let client = client.clone();
        let recipient = probe.recipient();
        actix_rt::spawn(async move { client.subscribe("news", recipient).await })
    };
    let mut peer = accept(&mut listener).await;
    let subscribe = expect(&mut peer, FrameKind::Subscribe).await;
    peer.reply(&subscribe, joined(0, 10, 7)).await;
    subscribing.await.unwrap().expect("subscribed");
    peer.send(push("news", 11, "eleven")).await;
    assert_eq!(probe.expect(WAIT).await.seq, 11);

    // The connection closes; the client resumes after 11 on the next ones.
    peer.close().await;
    for (missed, head) in [(u64::MAX, 20), (10, 20), (12, 3)] {
        let mut peer = accept(&mut listener).await;
        let subscribe = expect(&mut peer, FrameKind::Subscribe).await;
        assert_eq!(resume_of(&subscribe), (11, 7));
        peer.reply(&subscribe, joined(missed, head, 7)).await;
        peer.expect_closed(WAIT).await;
    }
    // A sane answer: 2 missed (12, 13), 14 replayed ahead of the answer.
    let mut peer = accept(&mut listener).await;
    let subscribe = expect(&mut peer, FrameKind::Subscribe).await;
    assert_eq!(resume_of(&subscribe), (11, 7));
    peer.send(push("news", 14, "fourteen")).await;
    peer.reply(&subscribe, joined(2, 14, 7)).await;
    let delivery = probe.expect(WAIT).await;
    assert_eq!((delivery.seq, delivery.missed_before), (14, 2));
    let stats = client.stats().await.expect("broker alive");
    assert_eq!(stats.missed, 2, "{stats:?}");

    // The server forgot the topic (it reclaims idle ones): its head is 3 now, in
    // the same life. The numbering starts again; 4 is new, not a duplicate.
    peer.close().await;
    let mut peer = accept(&mut listener).await;
    let subscribe = expect(&mut peer, FrameKind::Subscribe).await;
    assert_eq!(resume_of(&subscribe), (14, 7));
    peer.reply(&subscribe, joined(0, 3, 7)).await;
    peer.send(push("news", 4, "four")).await;
    let delivery = probe.expect(WAIT).await;
    assert_eq!((delivery.seq, &delivery.payload[..]), (4, &b"four"[..]));
}
