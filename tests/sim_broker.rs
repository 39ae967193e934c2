//! A Broker through a bounce of the server host, in a deterministic simulation: the
//! requests in flight when the server's process restarts each end in exactly one
//! error; once the pool has reconnected, requests are answered again and the
//! subscription is made again on the restarted server, which numbers the topic from
//! scratch, so a message published after the restart is delivered (not taken for a
//! duplicate of the one numbered alike before it), and so is one the restarted server
//! published before the subscription was back.
//!
//! ```text
//! cargo test --features sim --test sim_broker
//! ```
#![cfg(feature = "sim")]

mod sim_support;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use actix::{Actor, Context, Handler};
use bytes::Bytes;
use sim_support::{
    add_server, authority, connection_config, now, pool_builder, seed, simulation, until_full,
    CALL_TIMEOUT, CLIENT, PORT, REFILL, SERVER, WAIT,
};
use switchboard::broker::{BrokerError, Delivery, Publish, Request};
use switchboard::server::{Broadcast, Listener, ServerBroker, ServerConfig};
use switchboard::testkit::sim::{self, Faults, SimConnector};
use switchboard::{Broker, BrokerHandle};

const TOPIC: &str = "news";
/// Requests in flight when the server restarts.
const IN_FLIGHT: usize = 20;

/// What a [`Collector`] was delivered, with when.
type Deliveries = Rc<RefCell<Vec<(Duration, Delivery)>>>;

/// A subscriber that records its deliveries.
struct Collector(Deliveries);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<Delivery> for Collector {
    type Result = ();

    fn handle(&mut self, delivery: Delivery, _: &mut Context<Self>) {
        self.0.borrow_mut().push((now(), delivery));
    }
}

/// Waits until a delivery of `payload` arrived, at most `within`; returns its
/// sequence number.
async fn delivered(deliveries: &Deliveries, payload: &str, within: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let found = deliveries
            .borrow()
            .iter()
            .find(|(_, delivery)| delivery.payload == payload.as_bytes())
            .map(|(_, delivery)| delivery.seq);
        if let Some(seq) = found {
            return seq;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{payload:?} not delivered within {within:?}: {:?}",
            deliveries.borrow()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Requests on their way.
type Pending = Vec<tokio::task::JoinHandle<Result<Bytes, BrokerError>>>;

/// Sends `count` requests with payloads `{prefix}-{n}` to the fallback handler.
fn start_requests(broker: &BrokerHandle<SimConnector>, prefix: &str, count: usize) -> Pending {
    (0..count)
        .map(|n| {
            let broker = broker.clone();
            let request = Request::new("echo", format!("{prefix}-{n}"));
            actix::spawn(async move { broker.request(request).await })
        })
        .collect()
}

/// How each request ended, in the order they were sent.
///
/// # Panics
/// If one has not ended within [`WAIT`].
async fn all_ended(pending: Pending) -> Vec<Result<Bytes, BrokerError>> {
    let mut ended = Vec::new();
    for request in pending {
        let outcome = tokio::time::timeout(WAIT, request)
            .await
            .expect("every request ends")
            .expect("request task");
        ended.push(outcome);
    }
    ended
}

/// Starts the client broker with a subscriber on [`TOPIC`], publishes `before` and
/// waits for its delivery (sequence number 1).
async fn subscribed_broker() -> Result<(BrokerHandle<SimConnector>, Deliveries), BrokerError> {
    let broker =
        Broker::builder(pool_builder(connection_config(CALL_TIMEOUT)), authority()).start();
    let deliveries = Deliveries::default();
    let collector = Collector(deliveries.clone()).start();
    broker.subscribe(TOPIC, collector.recipient()).await?;
    broker
        .publish(Publish::unordered(TOPIC, "before"))
        .await
        .map_err(|unconfirmed| unconfirmed.error)?;
    assert_eq!(delivered(&deliveries, "before", WAIT).await, 1);
    Ok((broker, deliveries))
}

#[test]
fn a_brokers_requests_fail_once_each_across_a_bounce_and_its_subscription_comes_back(
) -> turmoil::Result {
    let mut sim = simulation(seed());
    add_server(&mut sim);
    let faults = Faults::new();
    let control = faults.clone();
    sim.client(CLIENT, async move {
        let (broker, deliveries) = subscribed_broker().await?;

        // The server restarts with the requests on the wire: each ends once, failed.
        let in_flight = start_requests(&broker, "cut", IN_FLIGHT);
        control.bounce(SERVER);
        for (n, outcome) in all_ended(in_flight).await.into_iter().enumerate() {
            assert!(outcome.is_err(), "request {n}: {outcome:?}");
        }

        // Back: once the pool is full, the subscription is made again on the restarted
        // server (one round trip later; waited for generously: a publish that reaches
        // the server before the subscription is back is replayed, see the test below).
        until_full(broker.pool(), REFILL + WAIT).await;
        tokio::time::sleep(WAIT).await;
        let stats = broker.stats().await?;
        assert_eq!(stats.resubscribes, 1, "{stats:?}");
        broker.publish(Publish::unordered(TOPIC, "after")).await?;
        assert_eq!(
            delivered(&deliveries, "after", WAIT).await,
            1,
            "the restarted server numbers the topic from 1, and the broker follows"
        );
        assert_eq!(deliveries.borrow().len(), 2, "{:?}", deliveries.borrow());

        let after = start_requests(&broker, "after", IN_FLIGHT);
        for (n, outcome) in all_ended(after).await.into_iter().enumerate() {
            assert_eq!(outcome?, format!("after-{n}").as_bytes(), "request {n}");
        }
        let stats = broker.stats().await?;
        assert_eq!(stats.requests_failed, IN_FLIGHT as u64, "{stats:?}");
        Ok(())
    });
    sim::run(&mut sim, &faults)
}

/// A message published to a restarted server before the broker's subscription is
/// back there is still delivered: the restarted server numbers the topic from 1
/// again, so the broker's "after 1" (the last number it saw from the old server)
/// would say it has it. The subscribe names the server incarnation that number came
/// from; the restarted server sees another one and replays everything it retained,
/// and the broker restarts its numbering with it.
///
/// The restarted server publishes the message itself before it listens, so the
/// subscription cannot be back first, whatever the seed.
#[test]
fn a_message_published_before_the_subscription_is_back_on_a_restarted_server_is_delivered(
) -> turmoil::Result {
    let mut sim = simulation(seed());
    let lives = Rc::new(Cell::new(0u32));
    sim.host(SERVER, move || {
        let lives = lives.clone();
        async move {
            lives.set(lives.get() + 1);
            let broker = ServerBroker::start(ServerConfig::default())?;
            if lives.get() > 1 {
                let early = Broadcast {
                    topic: Bytes::from_static(TOPIC.as_bytes()),
                    payload: Bytes::from_static(b"early"),
                };
                assert_eq!(broker.send(early).await?, Some(1));
            }
            let socket = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
            let _listener = Listener::builder(socket, broker)
                .connection(connection_config(CALL_TIMEOUT))
                .start();
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let faults = Faults::new();
    let control = faults.clone();
    sim.client(CLIENT, async move {
        let (broker, deliveries) = subscribed_broker().await?;
        control.bounce(SERVER);
        let seq = delivered(&deliveries, "early", REFILL + WAIT).await;
        assert_eq!(seq, 1, "the restarted server numbers from 1");
        let stats = broker.stats().await?;
        assert_eq!((stats.missed, stats.duplicates), (0, 0), "{stats:?}");
        assert_eq!(deliveries.borrow().len(), 2, "{:?}", deliveries.borrow());
        Ok(())
    });
    sim::run(&mut sim, &faults)
}
