//! Reliability scenario 10 (issue 5): callers drop their futures mid-call.
//!
//! What a user of the Pool can rely on when callers give up (a dropped future, an
//! aborted task, a `select!` or `timeout` that lost the race):
//! - a dropped `Call` future leaves nothing behind: the connection's in-flight count
//!   (`ConnectionStats::in_flight`, the lease's `in_flight()`) returns to zero once
//!   the reply arrives, and that reply goes to no one else; a call dropped before the
//!   connection handled it is never sent at all;
//! - a checkout dropped while it waits leaves the queue at once (`waiters` back to
//!   zero) and is never served: a connection returned later goes idle, not to a
//!   caller that left; one served at the very moment it left comes back too;
//! - a lease dropped mid-call (with its task) is returned: held back while its call
//!   is in flight, idle again once the reply came, or closed and replaced if it never
//!   comes; `leased`, `busy` and `waiters` all return to zero and the next borrower
//!   sees only its own replies;
//! - a Broker `publish` or `request` (ordered, unordered, request) whose caller drops
//!   it before the broker handled it is never handled or sent; one dropped after it
//!   was written resolves to no one, over a slow link (answered late) or a mute one
//!   (the call's timeout); either way the broker holds nothing afterwards
//!   (`BrokerStats::publishes_in_flight`, `publishes_queued`, `requests_in_flight`
//!   back to 0, no lease or call in flight in its pool), its counters account for
//!   every message it handled, callers that kept waiting beside them get their own
//!   answers (a confirmation numbering their own message), and later publishes and
//!   requests work.
//!
//! How the fault is made: callers are tasks the test aborts, futures it drops, or
//! calls wrapped in a timeout that expires; the far end is `tests/pool_support`'s
//! in-memory echo server (whose `sleep:<ms>` requests are answered late, and which
//! can be muted), or a scripted `MockPeer`, all on virtual time. The Broker tests
//! run as the other Broker tests do, on real time over loopback
//! (`tests/broker_support`): a `ServerBroker` whose `echo` route answers after
//! 300 ms, behind a `FaultProxy` that adds a second of latency each way or
//! blackholes what the client sends.
//!
//! ```text
//! cargo test --all-features --test reliability_dropped_callers
//! ```
#![cfg(feature = "testkit")]

mod broker_support;
mod pool_support;
mod reliability_common;

use std::pin::Pin;
use std::time::Duration;

use futures::Future;
use pool_support::*;
use reliability_common::{quiet_connection, stats_of, ScriptedBed};
use switchboard::broker::{
    BrokerConfig, BrokerError, BrokerStats, Confirmed, ProducerId, Publish, Request, Unconfirmed,
};
use switchboard::pool::Checkout;
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::server::ServerConfig;
use switchboard::testkit::{Direction, Fault, FaultProxy, ProxyHandle};
use switchboard::Call;
use tokio::task::JoinHandle;

/// A call on `lease` that the test holds (and drops) itself.
type HeldCall = Pin<
    Box<
        dyn Future<
            Output = Result<Result<bytes::Bytes, switchboard::CallError>, actix::MailboxError>,
        >,
    >,
>;

fn slow_call(lease: &TestLease, ms: u64) -> HeldCall {
    Box::pin(lease.send(Call::new(FrameRequest::new(format!("sleep:{ms}")))))
}

#[actix::test]
async fn dropped_call_futures_leave_nothing_in_flight_and_their_replies_reach_no_one() {
    tokio::time::pause();
    let (server, _, pool) = start_pool(config().min_idle(1).max_size(1)).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();

    // Ten calls handed to the connection, then dropped by their callers.
    let calls: Vec<HeldCall> = (0..10).map(|_| slow_call(&lease, 200)).collect();
    settle().await;
    assert_eq!(lease.in_flight(), 10);
    drop(calls);
    // One more given up by a timeout that runs out before the reply.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        lease.call(FrameRequest::new("sleep:300")),
    )
    .await;
    assert!(gave_up.is_err(), "the reply came before the caller gave up");

    // A caller still waiting meanwhile gets its own reply, not one of theirs.
    echo(&lease, "mine").await;

    // Their replies arrive, go to no one, and nothing stays in flight.
    let stats = reliability_common::eventually(WAIT, "replies to dropped calls arrive", || async {
        let stats = stats_of(lease.addr()).await;
        (stats.in_flight == 0).then_some(stats)
    })
    .await;
    assert_eq!(stats.calls, 12);
    assert_eq!(stats.replies, 12, "answered, to receivers that were gone");
    assert_eq!((stats.timeouts, stats.late_replies), (0, 0));
    assert_eq!(lease.in_flight(), 0);
    echo(&lease, "mine again").await;
    drop(lease);
    let back = assert_all_returned(&pool).await;
    assert_eq!(back.connections[0].in_flight, 0);
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn a_call_dropped_before_the_connection_handled_it_is_never_sent() {
    tokio::time::pause();
    let mut bed = ScriptedBed::new("dropped-early");
    let pool = within(
        WAIT,
        "eager build",
        bed.pool(
            config().min_idle(1).max_size(1),
            quiet_connection().build().unwrap(),
        )
        .build(),
    )
    .await
    .unwrap();
    let mut peer = bed.accept().await;
    let lease = pool.checkout(&bed.authority).await.unwrap();

    // Queued in the connection's mailbox, then dropped before the connection ran.
    drop(lease.send(Call::new(FrameRequest::new("abandoned"))));
    let kept = actix::spawn(lease.send(Call::new(FrameRequest::new("kept"))));
    let request = peer.expect_request(WAIT).await;
    assert_eq!(&request.payload[..], b"kept", "the abandoned call was sent");
    peer.reply(&request, "kept").await;
    let reply = within(WAIT, "kept call", kept).await.unwrap().unwrap();
    assert_eq!(&reply.unwrap()[..], b"kept");
    peer.expect_nothing(Duration::from_millis(100)).await;
    let stats = stats_of(lease.addr()).await;
    assert_eq!((stats.calls, stats.in_flight), (1, 0));
    drop(lease);
    within(WAIT, "close", pool.close()).await;
}

#[actix::test]
async fn checkouts_dropped_while_waiting_leave_the_queue_and_are_never_served() {
    tokio::time::pause();
    let config = config()
        .min_idle(1)
        .max_size(1)
        .checkout_timeout(Duration::from_secs(60));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();

    // Waiters of every kind: through the handle, through the actor's message, and
    // one whose own timeout gives up.
    let mut waiters: Vec<_> = (0..5).map(|_| spawn_checkout(&pool, &a)).collect();
    let by_message: Vec<_> = (0..3)
        .map(|_| {
            let request = pool
                .addr()
                .send(Checkout::<ScriptedConnector, FrameProtocol>::new(a.clone()));
            actix::spawn(async move { request.await.map(|r| r.map(|lease| lease.id())) })
        })
        .collect();
    let impatient = {
        let (pool, a) = (pool.clone(), a.clone());
        actix::spawn(async move {
            tokio::time::timeout(Duration::from_millis(500), pool.checkout(&a))
                .await
                .is_err()
        })
    };
    let queued = until(&pool, WAIT, |s| s.waiters == 9).await;
    assert_consistent(only(&queued));
    assert!(within(WAIT, "impatient waiter", impatient).await.unwrap());

    // Every other waiter leaves too.
    for waiter in waiters.drain(..) {
        waiter.abort();
    }
    for waiter in by_message {
        waiter.abort();
    }
    let empty = until(&pool, WAIT, |s| s.waiters == 0).await;
    assert_eq!(only(&empty).leased, 1);

    // The lease comes back: nobody takes it; it is idle for the next checkout.
    drop(lease);
    let back = assert_all_returned(&pool).await;
    assert_eq!(back.idle, 1);
    assert_eq!(back.checkouts.waited, 0, "a waiter that left was served");
    let lease = pool.checkout(&a).await.unwrap();
    assert_eq!(lease.id(), id);
    echo(&lease, "served").await;
    drop(lease);
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn a_checkout_abandoned_as_it_is_served_gives_the_connection_back() {
    tokio::time::pause();
    let config = config()
        .min_idle(1)
        .max_size(1)
        .checkout_timeout(Duration::from_secs(60));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();

    // Through the handle: the waiter is handed the lease, then dropped unread.
    let lease = pool.checkout(&a).await.unwrap();
    let mut waiter = Box::pin(pool.checkout(&a));
    assert!(futures::poll!(waiter.as_mut()).is_pending());
    until(&pool, WAIT, |s| s.waiters == 1).await;
    drop(lease);
    // Served: out of the queue, its lease waiting in the checkout's channel.
    let served = status(&pool).await;
    assert_eq!((only(&served).waiters, only(&served).leased), (0, 1));
    drop(waiter);
    let back = assert_all_returned(&pool).await;
    assert_eq!((back.idle, back.leased), (1, 0));

    // Through the actor's message: the request dropped as its lease is handed over.
    let lease = pool.checkout(&a).await.unwrap();
    let request = pool
        .addr()
        .send(Checkout::<ScriptedConnector, FrameProtocol>::new(a.clone()));
    until(&pool, WAIT, |s| s.waiters == 1).await;
    drop(lease);
    drop(request);
    let back = assert_all_returned(&pool).await;
    assert_eq!((back.idle, back.leased), (1, 0));

    checkout_and_echo(&pool, &a, "still here").await;
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn leases_dropped_mid_call_come_back_once_their_calls_are_answered() {
    tokio::time::pause();
    let config = config()
        .min_idle(3)
        .max_size(3)
        .return_drain_timeout(Duration::from_secs(2));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();

    // Three borrowers, each in a call when its task is aborted.
    let borrowers: Vec<_> = (0..3)
        .map(|_| {
            let (pool, a) = (pool.clone(), a.clone());
            actix::spawn(async move {
                let lease = pool.checkout(&a).await.unwrap();
                lease.call(FrameRequest::new("sleep:500")).await
            })
        })
        .collect();
    let busy = until(&pool, WAIT, |s| {
        s.leased == 3 && s.connections.iter().all(|c| c.in_flight == 1)
    })
    .await;
    assert_consistent(only(&busy));
    for borrower in &borrowers {
        borrower.abort();
    }
    for borrower in borrowers {
        let ended = within(WAIT, "aborted borrower", borrower).await;
        assert!(ended.unwrap_err().is_cancelled());
    }

    // Returned, but held back while their calls are in flight...
    let held = status(&pool).await;
    assert_eq!((only(&held).leased, only(&held).busy), (0, 3), "{held:#?}");
    assert_consistent(only(&held));
    // ...and idle again once the replies came, which nobody received.
    let back = assert_all_returned(&pool).await;
    assert_eq!(back.idle, 3);
    assert!(back.connections.iter().all(|c| c.in_flight == 0));
    let done = status(&pool).await;
    assert_eq!(done.counters.returned_in_flight, 3);
    assert_eq!(done.counters.drain_timeouts, 0);
    assert_eq!(done.counters.created, 3);

    // Each connection's next borrower sees only its own replies.
    let leases: Vec<_> = futures::future::join_all((0..3).map(|_| pool.checkout(&a)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (n, lease) in leases.iter().enumerate() {
        echo(lease, &format!("next borrower {n}")).await;
    }
    drop(leases);
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn a_lease_dropped_mid_call_that_is_never_answered_is_closed_and_replaced() {
    tokio::time::pause();
    let drain = Duration::from_millis(500);
    let config = config().min_idle(1).max_size(1).return_drain_timeout(drain);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    assert_eq!(server.mute_all(), 1);
    let call = slow_call(&lease, 0);
    settle().await;
    assert_eq!(lease.in_flight(), 1);
    drop(call);
    drop(lease);

    let replaced = until(&pool, WAIT, |s| {
        s.idle == 1 && s.busy == 0 && !ids(s).contains(&id)
    })
    .await;
    assert_eq!(replaced.counters.drain_timeouts, 1);
    assert_eq!(replaced.counters.closed.get("aborted"), Some(&1));
    assert_eq!(only(&replaced).waiters, 0);
    checkout_and_echo(&pool, &a, "replacement").await;
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn shared_callers_aborted_mid_call_leave_nothing_in_flight() {
    tokio::time::pause();
    let (server, _, pool) = start_pool(config().min_idle(1).max_size(1)).await;
    let a = server.authority();
    let shared = pool.shared(&a).await.unwrap();
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let shared = shared.clone();
            actix::spawn(async move { shared.call(FrameRequest::new("sleep:300")).await })
        })
        .collect();
    until(&pool, WAIT, |s| s.connections[0].in_flight == 20).await;
    for caller in &callers {
        caller.abort();
    }
    drop(callers);

    let quiet = until(&pool, WAIT, |s| s.connections[0].in_flight == 0).await;
    assert_eq!(only(&quiet).leased, 0);
    let stats = stats_of(shared.addr()).await;
    assert_eq!((stats.calls, stats.replies, stats.in_flight), (20, 20, 0));
    let reply = within(WAIT, "call", shared.call(FrameRequest::new("after"))).await;
    assert_eq!(&reply.unwrap()[..], b"after");
    drop(shared);
    finish_without_leaks(&pool, &server).await;
}

// ---------------------------------------------------------------------------------
// The Broker: publishes and requests whose callers give up
// ---------------------------------------------------------------------------------

/// A client broker (a pool of 2 over loopback TCP, through a `FaultProxy`) to a
/// `ServerBroker` whose `echo` route answers after 300 ms, subscribed to `TOPIC`.
/// Heartbeats are far apart, so a slow or mute link is found out by the calls'
/// timeout (`call_timeout`) alone.
struct BrokerBed {
    server: broker_support::Server,
    proxy: ProxyHandle,
    client: broker_support::Client,
    handled: broker_support::SeenBy,
    delivered: broker_support::Collected,
}

const TOPIC: &str = "given-up";

async fn broker_bed(call_timeout: Duration) -> BrokerBed {
    use broker_support::{start_client_with, start_server, Collector, Echo, WAIT};
    let server = start_server(ServerConfig::default()).await;
    let (echo, handled) = Echo::start_new(Some(Duration::from_millis(300)));
    server.route("echo", echo.recipient()).await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port).into()).unwrap();
    let port = proxy.local_addr().port();
    let connection = quiet_connection()
        .call_timeout(call_timeout)
        .build()
        .unwrap();
    let client = start_client_with(
        port,
        broker_support::pool_config(2, 2),
        Some(connection),
        BrokerConfig::default(),
    );
    broker_support::wait_pool_size(&client, port, 2).await;
    let (subscriber, delivered) = Collector::start_new();
    broker_support::within(
        WAIT,
        "subscribe",
        client.subscribe(TOPIC, subscriber.recipient()),
    )
    .await
    .unwrap();
    BrokerBed {
        server,
        proxy,
        client,
        handled,
        delivered,
    }
}

impl BrokerBed {
    async fn stats(&self) -> BrokerStats {
        broker_support::within(broker_support::WAIT, "broker stats", self.client.stats())
            .await
            .unwrap()
    }

    /// Waits until the broker holds no publish or request; returns its stats.
    async fn settled(&self) -> BrokerStats {
        let client = self.client.clone();
        broker_support::eventually(broker_support::WAIT, "nothing held", || {
            let client = client.clone();
            async move {
                let stats = client.stats().await.ok()?;
                (stats.publishes_in_flight + stats.publishes_queued + stats.requests_in_flight == 0)
                    .then_some(stats)
            }
        })
        .await
    }

    /// Requests the `echo` route handled.
    fn handled(&self) -> usize {
        self.handled.counts().values().sum()
    }

    /// Checks that the pool holds nothing: no lease, no waiter, no call in flight on
    /// any connection.
    async fn assert_pool_quiet(&self) {
        let status = self.client.pool().status().await.unwrap();
        let group = status.authority(&self.proxy.authority()).unwrap();
        assert_eq!((group.leased, group.waiters), (0, 0), "{group:#?}");
        assert!(
            group.connections.iter().all(|c| c.in_flight == 0),
            "{group:#?}"
        );
    }

    /// A publish and a request after the rest: answered, each with its own answer.
    async fn assert_serves(&self, producer: ProducerId, tag: &str) -> Confirmed {
        let payload = format!("{tag} ordered");
        let confirmed = broker_support::within(
            broker_support::WAIT,
            "a later publish",
            self.client
                .publish(Publish::ordered(producer, TOPIC, payload)),
        )
        .await
        .unwrap();
        let payload = format!("{tag} request");
        let answer = broker_support::within(
            broker_support::WAIT,
            "a later request",
            self.client.request(Request::new("echo", payload.clone())),
        )
        .await
        .unwrap();
        assert_eq!(&answer[..], payload.as_bytes());
        confirmed
    }
}

/// Kept callers beside the ones that give up: each must get its own answer.
struct Kept {
    publishes: Vec<(String, JoinHandle<Result<Confirmed, Unconfirmed>>)>,
    requests: Vec<(String, JoinHandle<Result<bytes::Bytes, BrokerError>>)>,
}

fn keep(client: &broker_support::Client, producer: ProducerId, count: usize) -> Kept {
    let publishes = (0..count)
        .map(|n| {
            let payload = format!("kept publish {n}");
            let publish = client.publish(Publish::ordered(producer, TOPIC, payload.clone()));
            (payload, actix::spawn(publish))
        })
        .collect();
    let requests = (0..count)
        .map(|n| {
            let (client, payload) = (client.clone(), format!("kept request {n}"));
            let request = Request::new("echo", payload.clone());
            (
                payload,
                actix::spawn(async move { client.request(request).await }),
            )
        })
        .collect();
    Kept {
        publishes,
        requests,
    }
}

/// Every publish and request handed to the broker by a caller that drops its future
/// at once or later: `count` of each kind (ordered for `producer`, unordered,
/// request), tagged with `tag`.
fn give_up_later(
    client: &broker_support::Client,
    producer: ProducerId,
    tag: &str,
    count: usize,
) -> Vec<Pin<Box<dyn Future<Output = ()>>>> {
    let mut futures: Vec<Pin<Box<dyn Future<Output = ()>>>> = Vec::new();
    for n in 0..count {
        let ordered = client.publish(Publish::ordered(producer, TOPIC, format!("{tag} {n}")));
        futures.push(Box::pin(async move { drop(ordered.await) }));
        let unordered = client.publish(Publish::unordered(TOPIC, format!("{tag} spread {n}")));
        futures.push(Box::pin(async move { drop(unordered.await) }));
        // `send` queues the request at once, as `publish` does.
        let request = client
            .addr()
            .send(Request::new("echo", format!("{tag} request {n}")));
        futures.push(Box::pin(async move { drop(request.await) }));
    }
    futures
}

/// Real time over loopback (the broker tests' set-up): callers drop Broker publishes
/// and requests before the broker handled them (never sent) and after they were
/// written (answered late, over a link with a second of latency each way, to no
/// one). Nothing stays held, the kept callers beside them get their own answers, the
/// counts add up, and later publishes and requests work.
#[actix::test]
async fn broker_publishes_and_requests_dropped_by_their_callers_leave_nothing_held() {
    use broker_support::{within, WAIT};
    let bed = broker_bed(Duration::from_secs(10)).await;
    let producer = ProducerId(1);

    // Dropped before the broker ran: queued to its mailbox, then let go. None is
    // handled, so none is sent, and no producer state is made for them.
    drop(give_up_later(&bed.client, producer, "early", 10));
    let stats = bed.stats().await;
    assert_eq!(
        (
            stats.confirmed,
            stats.unconfirmed,
            stats.requests,
            stats.requests_failed
        ),
        (0, 0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(
        (
            stats.producers,
            stats.publishes_in_flight,
            stats.requests_in_flight
        ),
        (0, 0, 0),
        "{stats:?}"
    );

    // Dropped after they were written, on a slow link: every one under way at once,
    // beside callers that wait for their answers.
    bed.proxy
        .inject(Direction::Both, Fault::Latency(Duration::from_secs(1)))
        .await;
    let given_up = give_up_later(&bed.client, producer, "late", 20);
    let kept = keep(&bed.client, ProducerId(2), 5);
    let client = bed.client.clone();
    let busy = broker_support::eventually(WAIT, "every publish and request under way", || {
        let client = client.clone();
        async move {
            let stats = client.stats().await.ok()?;
            (stats.publishes_in_flight == 20 + 20 + 5 && stats.requests_in_flight == 20 + 5)
                .then_some(stats)
        }
    })
    .await;
    assert_eq!((busy.publishes_queued, busy.confirmed), (0, 0), "{busy:?}");
    drop(given_up);

    // The kept callers get their own answers: a confirmation numbering their own
    // message (as the subscriber sees it), and their own payload back.
    let mut confirmed = Vec::new();
    for (payload, publish) in kept.publishes {
        let outcome = within(WAIT, "kept publish", publish).await.unwrap();
        confirmed.push((payload, outcome.unwrap().seq));
    }
    for (payload, request) in kept.requests {
        let answer = within(WAIT, "kept request", request).await.unwrap();
        assert_eq!(&answer.unwrap()[..], payload.as_bytes());
    }

    // The dropped ones resolve to no one, and nothing stays held.
    let settled = bed.settled().await;
    assert_eq!(settled.confirmed, 45, "{settled:?}");
    assert_eq!(settled.requests, 25, "{settled:?}");
    assert_eq!(
        (settled.unconfirmed, settled.requests_failed),
        (0, 0),
        "{settled:?}"
    );
    bed.assert_pool_quiet().await;
    assert_eq!(bed.server.stats().await.published, 45);
    assert_eq!(
        bed.handled(),
        25,
        "each request handled once, the early ones never"
    );
    let deliveries = bed.delivered.wait_for(45, WAIT).await;
    for (payload, seq) in confirmed {
        let delivered: Vec<_> = deliveries
            .iter()
            .filter(|d| d.payload == payload.as_bytes())
            .map(|d| d.seq)
            .collect();
        assert_eq!(delivered, [seq], "{payload}");
    }

    bed.proxy.heal().await;
    let later = bed.assert_serves(producer, "after").await;
    assert_eq!(later.seq, 46);
    let stats = bed.settled().await;
    assert_eq!((stats.confirmed, stats.requests), (46, 26), "{stats:?}");
    assert_eq!((stats.unconfirmed, stats.requests_failed), (0, 0));
}

/// Real time: the same over a mute link (a blackhole towards the server), where the
/// publishes and requests that callers dropped end by the calls' timeout; then the
/// links are reset and the broker serves again on new ones.
#[actix::test]
async fn broker_publishes_and_requests_dropped_on_a_mute_link_time_out_and_leave_nothing_held() {
    use broker_support::WAIT;
    let call_timeout = Duration::from_millis(500);
    let bed = broker_bed(call_timeout).await;
    let producer = ProducerId(1);
    bed.proxy
        .inject(Direction::Upstream, Fault::Blackhole)
        .await;
    let given_up = give_up_later(&bed.client, producer, "muted", 10);
    let client = bed.client.clone();
    broker_support::eventually(WAIT, "every publish and request under way", || {
        let client = client.clone();
        async move {
            let stats = client.stats().await.ok()?;
            (stats.publishes_in_flight == 20 && stats.requests_in_flight == 10).then_some(())
        }
    })
    .await;
    drop(given_up);

    let settled = bed.settled().await;
    assert_eq!(settled.unconfirmed, 20, "{settled:?}");
    assert_eq!(settled.requests_failed, 10, "{settled:?}");
    assert_eq!((settled.confirmed, settled.requests), (0, 0), "{settled:?}");
    bed.assert_pool_quiet().await;

    // The links lived through a blackhole: reset them; the pool opens new ones.
    bed.proxy.heal().await;
    assert_eq!(bed.proxy.reset().await, 2);
    let later = bed.assert_serves(producer, "after").await;
    assert_eq!(
        later.seq, 1,
        "nothing of the muted publishes reached the server"
    );
    let stats = bed.settled().await;
    assert_eq!((stats.confirmed, stats.unconfirmed), (1, 20), "{stats:?}");
    assert_eq!(
        (stats.requests, stats.requests_failed),
        (1, 10),
        "{stats:?}"
    );
    assert_eq!(bed.server.stats().await.published, 1);
    assert_eq!(bed.handled(), 1);
    let deliveries = bed.delivered.wait_for(1, WAIT).await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(&deliveries[0].payload[..], b"after ordered");
}
