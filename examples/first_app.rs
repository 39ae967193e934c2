//! A first application, written from the docs alone: an embedded server and a client
//! on loopback, a request burst, a publish burst with subscribers, a direct call on a
//! shared pool connection, and a clean shutdown.
//!
//! ```text
//! cargo run --example first_app
//! ```
//!
//! It shows:
//! - a `ServerBroker` with an `echo` route served by an actor of ours (`Upper`, which
//!   upper-cases), behind a `Listener` on 127.0.0.1:0;
//! - a client `Broker` over a `Pool` (`TcpConnector`, `frame` protocol, `max_size` 4);
//! - 2,000 requests fired at once, counted as answered / wrong / failed by kind;
//! - a subscriber (`Counter`) subscribed before a burst of 500 ordered publishes and a
//!   second one subscribed after it, each counting what it received and what it was
//!   told it missed (`Delivery::missed_before`);
//! - one call straight on a shared pool connection (`PoolHandle::shared`);
//! - unsubscribe, pool drain, listener stop, and a short report.
//!
//! Every wait is bounded by a timeout; nothing leaves loopback.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::{Actor, Context, Handler};
use bytes::Bytes;
use futures::future::join_all;
use switchboard::broker::{Delivery, ProducerId, Publish, Request};
use switchboard::pool::PoolConfig;
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::protocol::RemoteError;
use switchboard::server::{
    GetListenerStats, GetServerStats, Listener, Route, ServerBroker, ServerConfig, ServerRequest,
    Stop,
};
use switchboard::transport::TcpConnector;
use switchboard::{Authority, Broker, ConnectionConfig, Pool};
use tokio::time::timeout;

const BURST: usize = 2_000;
const PUBLISHES: usize = 500;
const TOPIC: &str = "news";
/// Bounds every single wait of this program.
const WAIT: Duration = Duration::from_secs(10);

type Error = Box<dyn std::error::Error>;

// ---------------------------------------------------------------------------------
// Our server-side handler
// ---------------------------------------------------------------------------------

/// Answers each request with its payload upper-cased; refuses an empty one.
struct Upper {
    served: Rc<Cell<u64>>,
}

impl Actor for Upper {
    type Context = Context<Self>;
}

impl Handler<ServerRequest> for Upper {
    type Result = Result<Bytes, RemoteError>;

    fn handle(&mut self, request: ServerRequest, _: &mut Context<Self>) -> Self::Result {
        if request.payload.is_empty() {
            return Err(RemoteError::new("empty request"));
        }
        self.served.set(self.served.get() + 1);
        Ok(Bytes::from(request.payload.to_ascii_uppercase()))
    }
}

// ---------------------------------------------------------------------------------
// Our subscriber
// ---------------------------------------------------------------------------------

#[derive(Default)]
struct Counts {
    received: Cell<u64>,
    missed: Cell<u64>,
    last_seq: Cell<u64>,
    first_seq: Cell<u64>,
}

/// Counts deliveries and what it was told it missed. `mailbox` None keeps actix's
/// default mailbox (16 messages).
struct Counter {
    counts: Rc<Counts>,
    mailbox: Option<usize>,
}

impl Actor for Counter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(capacity) = self.mailbox {
            ctx.set_mailbox_capacity(capacity);
        }
    }
}

impl Handler<Delivery> for Counter {
    type Result = ();

    fn handle(&mut self, delivery: Delivery, _: &mut Context<Self>) {
        let c = &self.counts;
        if c.first_seq.get() == 0 {
            c.first_seq.set(delivery.seq);
        }
        c.received.set(c.received.get() + 1);
        c.missed.set(c.missed.get() + delivery.missed_before);
        c.last_seq.set(delivery.seq);
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

/// Waits (bounded) until `done()` holds; returns whether it did.
async fn settle(bound: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() >= bound {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

async fn run() -> Result<bool, Error> {
    let mut ok = true;

    // --- Server -------------------------------------------------------------------
    let server = ServerBroker::start(ServerConfig::default())?;
    let served = Rc::new(Cell::new(0));
    timeout(
        WAIT,
        server.send(Route {
            route: Some(Bytes::from_static(b"echo")),
            handler: Upper {
                served: served.clone(),
            }
            .start()
            .recipient(),
        }),
    )
    .await??;
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = socket.local_addr()?;
    let listener = Listener::builder(socket, server.clone()).start();
    println!("server listening on {address}");

    // --- Client -------------------------------------------------------------------
    let pool = Pool::builder(TcpConnector::new(), FrameProtocol::default())
        .config(
            PoolConfig::builder()
                .max_size(4)
                .checkout_timeout(Duration::from_secs(5))
                .shutdown_timeout(Duration::from_secs(5))
                .build()?,
        )
        .connection(
            ConnectionConfig::builder()
                .call_timeout(Duration::from_secs(5))
                .build()?,
        );
    let authority = Authority::tcp(address.ip().to_string(), address.port());
    let broker = Broker::builder(pool, authority.clone()).start();

    // --- 1. A burst of 2,000 requests fired at once -------------------------------
    let started = Instant::now();
    let calls = (0..BURST).map(|n| {
        let payload = format!("request {n}");
        let expected = payload.to_ascii_uppercase();
        let request = Request::new("echo", payload).timeout(Duration::from_secs(5));
        let reply = broker.request(request);
        async move { (expected, reply.await) }
    });
    let outcomes = timeout(WAIT, join_all(calls)).await?;
    let burst_took = started.elapsed();
    let mut answered = 0u64;
    let mut wrong = 0u64;
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    for (expected, outcome) in outcomes {
        match outcome {
            Ok(answer) if answer == expected.as_bytes() => answered += 1,
            Ok(_) => wrong += 1,
            Err(error) => bump(&mut failed, format!("{} ({error})", error.kind())),
        }
    }
    let status = timeout(WAIT, broker.pool().status()).await??;
    println!(
        "request burst: {BURST} sent, {answered} answered, {wrong} wrong, {} failed, in {:?}; \
         pool has {} connections",
        failed.values().sum::<u64>(),
        burst_took,
        status.connections
    );
    for (kind, n) in &failed {
        println!("  failed: {kind}: {n}");
    }
    ok &= answered == BURST as u64;

    // --- 2. Subscribers around a burst of 500 publishes ---------------------------
    let early = Rc::new(Counts::default());
    let early_id = timeout(
        WAIT,
        broker.subscribe(
            TOPIC,
            Counter {
                counts: early.clone(),
                mailbox: None, // actix's default: 16
            }
            .start()
            .recipient(),
        ),
    )
    .await??;

    let publishes = (0..PUBLISHES).map(|n| {
        broker.publish(Publish::ordered(
            ProducerId(1),
            TOPIC,
            format!("message {n}").into_bytes(),
        ))
    });
    let results = timeout(WAIT, join_all(publishes)).await?;
    let mut confirmed = 0u64;
    let mut unconfirmed: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_confirmed_seq = 0;
    for result in results {
        match result {
            Ok(c) => {
                confirmed += 1;
                last_confirmed_seq = last_confirmed_seq.max(c.seq);
            }
            Err(u) => bump(
                &mut unconfirmed,
                format!("{} maybe_delivered={}", u.error.kind(), u.maybe_delivered()),
            ),
        }
    }
    println!(
        "publish burst: {PUBLISHES} published, {confirmed} confirmed (last seq {last_confirmed_seq}), \
         {} unconfirmed",
        unconfirmed.values().sum::<u64>()
    );
    for (kind, n) in &unconfirmed {
        println!("  unconfirmed: {kind}: {n}");
    }

    // What the early subscriber got plus what it was told it missed should come to
    // every confirmed message; `missed_before` arrives with the next delivery, so
    // wait until the newest (the burst's last) has reached it.
    let early_settled = settle(WAIT, || early.last_seq.get() >= last_confirmed_seq).await;

    // A second subscriber after the burst: the topic is already subscribed through
    // this broker, so it joins at once and gets only what comes next.
    let late = Rc::new(Counts::default());
    let late_id = timeout(
        WAIT,
        broker.subscribe(
            TOPIC,
            Counter {
                counts: late.clone(),
                mailbox: Some(1024),
            }
            .start()
            .recipient(),
        ),
    )
    .await??;
    let tail = timeout(WAIT, broker.publish(Publish::unordered(TOPIC, "tail"))).await?;
    let tail_seq = match &tail {
        Ok(c) => c.seq,
        Err(u) => {
            println!("tail publish unconfirmed: {}", u.error);
            0
        }
    };
    let late_settled = settle(WAIT, || {
        late.last_seq.get() >= tail_seq && early.last_seq.get() >= tail_seq
    })
    .await;
    let report = |name: &str, c: &Counts, settled: bool| {
        println!(
            "  {name}: received {}, told missed {}, sum {} (seqs {}..={}){}",
            c.received.get(),
            c.missed.get(),
            c.received.get() + c.missed.get(),
            c.first_seq.get(),
            c.last_seq.get(),
            if settled {
                ""
            } else {
                " [did not settle in time]"
            }
        );
    };
    println!(
        "subscribers (topic {TOPIC:?}, {} messages in all incl. tail):",
        PUBLISHES + 1
    );
    report("early (mailbox 16) ", &early, early_settled);
    report("late (mailbox 1024)", &late, late_settled);
    ok &= early.received.get() + early.missed.get() == confirmed + u64::from(tail.is_ok());
    ok &= late.received.get() + late.missed.get() == u64::from(tail.is_ok());

    // --- 3. A shared pool connection, used directly for one call ------------------
    let shared = timeout(WAIT, broker.pool().shared(&authority)).await??;
    let direct = timeout(
        WAIT,
        shared.call(FrameRequest::new("direct hello").with_topic("echo")),
    )
    .await?;
    println!(
        "direct call on shared connection {:?} (in flight {}): {:?}",
        shared.id(),
        shared.in_flight(),
        direct
    );
    ok &= matches!(&direct, Ok(reply) if &reply[..] == b"DIRECT HELLO");
    drop(shared);

    // --- 4. Shut down ---------------------------------------------------------------
    let stats = timeout(WAIT, broker.stats()).await??;
    timeout(WAIT, broker.unsubscribe(early_id)).await??;
    timeout(WAIT, broker.unsubscribe(late_id)).await??;
    let server_stats = timeout(WAIT, server.send(GetServerStats)).await??;
    let drained = timeout(WAIT, broker.pool().drain()).await?;
    // What the broker says once its pool is drained (the docs do not tell).
    let after_drain = match timeout(WAIT, broker.request(Request::new("echo", "late"))).await {
        Ok(Ok(_)) => "answered".to_string(),
        Ok(Err(error)) => format!("{} ({error})", error.kind()),
        Err(_) => "timed out".to_string(),
    };
    timeout(WAIT, listener.send(Stop { abort: false })).await??;
    // The listener lives until its last connection closed; wait (bounded) for that.
    let start = Instant::now();
    let open_after = loop {
        match timeout(WAIT, listener.send(GetListenerStats)).await {
            Ok(Ok(s)) if s.open == 0 => break "0".to_string(),
            Ok(Ok(s)) if start.elapsed() >= WAIT => break format!("{} (still open)", s.open),
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(Err(_)) => break "0 (listener stopped)".to_string(),
            Err(_) => break "timed out".to_string(),
        }
    };

    println!("report:");
    println!(
        "  broker: requests {} (failed {}), confirmed {}, unconfirmed {}, deliveries {}, \
         deliveries dropped {}, missed {}",
        stats.requests,
        stats.requests_failed,
        stats.confirmed,
        stats.unconfirmed,
        stats.deliveries,
        stats.deliveries_dropped,
        stats.missed
    );
    println!("  server: {server_stats:?}");
    println!("  handler served {}", served.get());
    println!("  pool drain: {drained:?}; a request after the drain: {after_drain}");
    println!("  listener open connections after stop: {open_after}");
    ok &= matches!(drained, switchboard::pool::ShutdownOutcome::Clean);
    Ok(ok)
}

fn main() -> ExitCode {
    let system = actix::System::new();
    let outcome = system.block_on(async { timeout(Duration::from_secs(60), run()).await });
    match outcome {
        Ok(Ok(true)) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Ok(Ok(false)) => {
            eprintln!("FAILED: a count did not add up (see above)");
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("error: the whole run took longer than 60 s");
            ExitCode::FAILURE
        }
    }
}
