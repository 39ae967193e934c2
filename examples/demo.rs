//! The main job: a small pub/sub and request/reply service and its clients, all
//! built from switchboard's Connection, Pool and Broker actors, talking over loopback
//! through two faults.
//!
//! ```text
//! cargo run --release --example demo [-- --seconds N] [--connections C]
//!     [--producers P] [--callers R] [--connect ADDR | --serve ADDR]
//! ```
//!
//! By default it starts the server in-process on 127.0.0.1 (a `ServerBroker` with an
//! `echo` route, behind a `Listener`), and a client `Broker` over a `Pool` of C TCP
//! connections to it. Then, for N seconds (default 10):
//! - P ordered producers publish numbered messages on four topics, each keeping up to
//!   64 publishes in flight; every publish ends `Confirmed` or `Unconfirmed`;
//! - two consumers per topic check that each producer's numbers only go up;
//! - R callers send requests to `echo` and check each answer is their own.
//!
//! At a third of the run the server kills one of its connections; at two thirds it
//! restarts its listener (every connection aborted, the port closed for 300 ms). The
//! client reconnects, re-pins producers, resubscribes and catches up from the
//! server's replay window.
//!
//! A progress line prints every second; at the end a summary: published, confirmed,
//! unconfirmed, delivered, requests answered, failures by kind, reconnects, p50/p99
//! latency, order violations and lost messages. A message is lost if it was
//! confirmed and a consumer of its topic never got it. The demo exits non-zero if
//! any message was lost, any order was violated, or any answer was not the caller's.
//!
//! `--serve ADDR` runs only the server, until Ctrl-C; `--connect ADDR` runs only the
//! clients against such a server (the faults, which need the server, are skipped).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use switchboard::broker::{BrokerConfig, Delivery, ProducerId, Publish, Request};
use switchboard::pool::PoolConfig;
use switchboard::protocol::frame::FrameProtocol;
use switchboard::protocol::RemoteError;
use switchboard::server::{
    Disconnect, GetListenerStats, GetServerStats, Listener, Route, ServerBroker, ServerConfig,
    ServerRequest, Stop,
};
use switchboard::transport::TcpConnector;
use switchboard::{Authority, Broker, BrokerHandle, ConnectionConfig, Pool};
use tokio::time::Instant;

const TOPICS: usize = 4;
const CONSUMERS_PER_TOPIC: usize = 2;
/// Publishes one producer keeps in flight.
const WINDOW: usize = 64;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const RESTART_PAUSE: Duration = Duration::from_millis(300);
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long the end of the run waits for the last deliveries.
const SETTLE_BOUND: Duration = Duration::from_secs(5);

struct Options {
    seconds: u64,
    connections: usize,
    producers: usize,
    callers: usize,
    connect: Option<SocketAddr>,
    serve: Option<SocketAddr>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        seconds: 10,
        connections: 4,
        producers: 8,
        callers: 32,
        connect: None,
        serve: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| -> Result<String, String> {
            args.next().ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |text: String, name: &str| -> Result<u64, String> {
            text.parse().map_err(|e| format!("{name}: {e}"))
        };
        let address = |text: String, name: &str| -> Result<SocketAddr, String> {
            text.parse().map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--seconds" => options.seconds = number(value(&flag)?, &flag)?.max(1),
            "--connections" => options.connections = number(value(&flag)?, &flag)?.max(1) as usize,
            "--producers" => options.producers = number(value(&flag)?, &flag)?.max(1) as usize,
            "--callers" => options.callers = number(value(&flag)?, &flag)?.max(1) as usize,
            "--connect" => options.connect = Some(address(value(&flag)?, &flag)?),
            "--serve" => options.serve = Some(address(value(&flag)?, &flag)?),
            "--help" | "-h" => {
                return Err(
                    "usage: demo [--seconds N] [--connections C] [--producers P] \
                            [--callers R] [--connect ADDR | --serve ADDR]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}; try --help")),
        }
    }
    Ok(options)
}

// ---------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------

/// Answers every request with its own payload.
struct Echo;

impl Actor for Echo {
    type Context = Context<Self>;
}

impl Handler<ServerRequest> for Echo {
    type Result = Result<Bytes, RemoteError>;

    fn handle(&mut self, request: ServerRequest, _: &mut Context<Self>) -> Self::Result {
        Ok(request.payload)
    }
}

/// The embedded server: a broker, and a listener that can be restarted.
struct Server {
    broker: Addr<ServerBroker>,
    listener: RefCell<Addr<Listener<tokio::net::TcpListener>>>,
    address: SocketAddr,
}

impl Server {
    async fn start(address: SocketAddr) -> std::io::Result<Self> {
        // A replay window large enough to cover a reconnect at full publish rate.
        let config = ServerConfig::default().replay_window(1 << 16);
        let broker = ServerBroker::start(config).expect("valid server config");
        broker
            .send(Route {
                route: Some(Bytes::from_static(b"echo")),
                handler: Echo.start().recipient(),
            })
            .await
            .expect("broker running");
        let socket = tokio::net::TcpListener::bind(address).await?;
        let address = socket.local_addr()?;
        let listener = Listener::builder(socket, broker.clone()).start();
        Ok(Self {
            broker,
            listener: RefCell::new(listener),
            address,
        })
    }

    /// Kills one server-side connection; returns whether there was one.
    async fn kill_one(&self) -> bool {
        let listener = self.listener.borrow().clone();
        let Ok(stats) = listener.send(GetListenerStats).await else {
            return false;
        };
        match stats.connections.first() {
            Some(id) => listener.send(Disconnect(*id)).await.unwrap_or(false),
            None => false,
        }
    }

    /// Aborts every connection, closes the port, and listens again after a pause.
    async fn restart_listener(&self) -> std::io::Result<()> {
        let old = self.listener.borrow().clone();
        let _ = old.send(Stop { abort: true }).await;
        tokio::time::sleep(RESTART_PAUSE).await;
        let mut attempts = 0;
        let socket = loop {
            match tokio::net::TcpListener::bind(self.address).await {
                Ok(socket) => break socket,
                Err(error) if attempts < 50 => {
                    attempts += 1;
                    tracing_free_note(&error);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(error) => return Err(error),
            }
        };
        *self.listener.borrow_mut() = Listener::builder(socket, self.broker.clone()).start();
        Ok(())
    }
}

fn tracing_free_note(error: &std::io::Error) {
    if error.kind() != std::io::ErrorKind::AddrInUse {
        eprintln!("rebinding: {error}");
    }
}

// ---------------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------------

/// What producers, consumers and callers count.
#[derive(Default)]
struct Tally {
    published: Cell<u64>,
    confirmed: Cell<u64>,
    unconfirmed_maybe: Cell<u64>,
    unconfirmed_not: Cell<u64>,
    /// Confirmed messages per producer: (producer, seq).
    confirmed_ids: RefCell<Vec<(u32, u64)>>,
    requests: Cell<u64>,
    answered: Cell<u64>,
    wrong_answers: Cell<u64>,
    failed: RefCell<BTreeMap<String, u64>>,
    publish_us: RefCell<Vec<u32>>,
    request_us: RefCell<Vec<u32>>,
}

impl Tally {
    fn fail(&self, what: &str, kind: &str) {
        *self
            .failed
            .borrow_mut()
            .entry(format!("{what} {kind}"))
            .or_default() += 1;
    }

    fn failures(&self) -> u64 {
        self.failed.borrow().values().sum()
    }
}

fn micros(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u32::MAX.into()) as u32
}

fn message(producer: u32, seq: u64) -> Bytes {
    let mut bytes = BytesMut::with_capacity(12);
    bytes.put_u32(producer);
    bytes.put_u64(seq);
    bytes.freeze()
}

/// Checks one topic's deliveries: each producer's numbers only go up.
struct Consumer {
    /// The last number seen per producer.
    last: Vec<u64>,
    /// Every (producer, seq) received, for the count of lost messages.
    seen: Rc<RefCell<Vec<Vec<bool>>>>,
    delivered: Rc<Cell<u64>>,
    violations: Rc<Cell<u64>>,
}

impl Actor for Consumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The broker hands deliveries over with `try_send` and never waits: a mailbox
        // that fills up loses messages (each loss told in the next delivery's
        // `missed_before`). 65,536 holds every burst this demo makes.
        ctx.set_mailbox_capacity(1 << 16);
    }
}

impl Handler<Delivery> for Consumer {
    type Result = ();

    fn handle(&mut self, delivery: Delivery, _: &mut Context<Self>) {
        let mut payload = delivery.payload;
        if payload.len() != 12 {
            self.violations.set(self.violations.get() + 1);
            return;
        }
        let producer = payload.get_u32() as usize;
        let seq = payload.get_u64();
        self.delivered.set(self.delivered.get() + 1);
        if producer >= self.last.len() || seq <= self.last[producer] {
            self.violations.set(self.violations.get() + 1);
            return;
        }
        self.last[producer] = seq;
        let mut seen = self.seen.borrow_mut();
        let row = &mut seen[producer];
        if row.len() <= seq as usize {
            row.resize(seq as usize + 1, false);
        }
        row[seq as usize] = true;
    }
}

struct ConsumerState {
    topic: usize,
    seen: Rc<RefCell<Vec<Vec<bool>>>>,
    delivered: Rc<Cell<u64>>,
    violations: Rc<Cell<u64>>,
}

fn topic_name(topic: usize) -> Bytes {
    Bytes::from(format!("orders.{topic}"))
}

async fn produce(
    broker: BrokerHandle<TcpConnector>,
    producer: u32,
    tally: Rc<Tally>,
    until: Instant,
) {
    let topic = topic_name(producer as usize % TOPICS);
    let mut in_flight = FuturesOrdered::new();
    let mut seq = 0u64;
    loop {
        while in_flight.len() < WINDOW && Instant::now() < until {
            seq += 1;
            tally.published.set(tally.published.get() + 1);
            let publish = Publish::ordered(
                ProducerId(u64::from(producer)),
                topic.clone(),
                message(producer, seq),
            );
            let started = Instant::now();
            let confirmed = broker.publish(publish);
            in_flight.push_back(async move { (seq, started, confirmed.await) });
        }
        let Some((seq, started, outcome)) = in_flight.next().await else {
            return;
        };
        match outcome {
            Ok(_) => {
                tally.confirmed.set(tally.confirmed.get() + 1);
                tally.confirmed_ids.borrow_mut().push((producer, seq));
                tally.publish_us.borrow_mut().push(micros(started));
            }
            Err(unconfirmed) => {
                if unconfirmed.maybe_delivered() {
                    tally
                        .unconfirmed_maybe
                        .set(tally.unconfirmed_maybe.get() + 1);
                } else {
                    tally.unconfirmed_not.set(tally.unconfirmed_not.get() + 1);
                }
                tally.fail("publish", unconfirmed.error.kind());
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

async fn call(broker: BrokerHandle<TcpConnector>, caller: usize, tally: Rc<Tally>, until: Instant) {
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let payload = Bytes::from(format!("caller {caller} request {n}"));
        tally.requests.set(tally.requests.get() + 1);
        let started = Instant::now();
        let request = Request::new("echo", payload.clone()).timeout(CALL_TIMEOUT);
        match broker.request(request).await {
            Ok(answer) => {
                tally.answered.set(tally.answered.get() + 1);
                tally.request_us.borrow_mut().push(micros(started));
                if answer != payload {
                    tally.wrong_answers.set(tally.wrong_answers.get() + 1);
                }
            }
            Err(error) => {
                tally.fail("request", error.kind());
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

fn percentile(values: &mut [u32], p: f64) -> u32 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// Confirmed messages that some consumer of their topic did not get.
fn lost(tally: &Tally, consumers: &[ConsumerState]) -> u64 {
    let mut lost = 0;
    for &(producer, seq) in tally.confirmed_ids.borrow().iter() {
        let topic = producer as usize % TOPICS;
        for consumer in consumers.iter().filter(|c| c.topic == topic) {
            let seen = consumer.seen.borrow();
            let got = seen[producer as usize]
                .get(seq as usize)
                .copied()
                .unwrap_or(false);
            if !got {
                lost += 1;
            }
        }
    }
    lost
}

async fn run(options: Options) -> Result<bool, Box<dyn std::error::Error>> {
    let server = match options.connect {
        Some(_) => None,
        None => Some(Rc::new(
            Server::start(options.serve.unwrap_or(([127, 0, 0, 1], 0).into())).await?,
        )),
    };
    let address = options
        .connect
        .or(server.as_ref().map(|s| s.address))
        .expect("a server address");
    if options.serve.is_some() {
        println!("serving on {address}; Ctrl-C stops");
        tokio::signal::ctrl_c().await?;
        return Ok(true);
    }
    println!(
        "server on {address}; client: {} connections, {} producers on {TOPICS} topics, \
         {} consumers, {} callers, {} s",
        options.connections,
        options.producers,
        TOPICS * CONSUMERS_PER_TOPIC,
        options.callers,
        options.seconds
    );

    let pool_config = PoolConfig::builder()
        .min_idle(options.connections)
        .max_size(options.connections)
        .checkout_timeout(Duration::from_secs(2))
        .backoff_base(Duration::from_millis(50))
        .backoff_max(Duration::from_secs(1))
        .build()?;
    let connection = ConnectionConfig::builder()
        .call_timeout(CALL_TIMEOUT)
        .heartbeat_interval(Duration::from_secs(1))
        .heartbeat_timeout(Duration::from_secs(3))
        .build()?;
    let authority = Authority::tcp(address.ip().to_string(), address.port());
    let broker = Broker::builder(
        Pool::builder(TcpConnector::new(), FrameProtocol::default())
            .config(pool_config)
            .connection(connection),
        authority,
    )
    .config(BrokerConfig::default())
    .start();

    // Consumers first, so that they see every message.
    let mut consumers = Vec::new();
    for topic in 0..TOPICS {
        for _ in 0..CONSUMERS_PER_TOPIC {
            let state = ConsumerState {
                topic,
                seen: Rc::new(RefCell::new(vec![Vec::new(); options.producers])),
                delivered: Rc::new(Cell::new(0)),
                violations: Rc::new(Cell::new(0)),
            };
            let consumer = Consumer {
                last: vec![0; options.producers],
                seen: state.seen.clone(),
                delivered: state.delivered.clone(),
                violations: state.violations.clone(),
            }
            .start();
            broker
                .subscribe(topic_name(topic), consumer.recipient())
                .await?;
            consumers.push(state);
        }
    }

    let tally = Rc::new(Tally::default());
    let started = Instant::now();
    let run_for = Duration::from_secs(options.seconds);
    let until = started + run_for;
    let mut tasks = Vec::new();
    for producer in 0..options.producers {
        let task = produce(broker.clone(), producer as u32, tally.clone(), until);
        tasks.push(actix_rt::spawn(task));
    }
    for caller in 0..options.callers {
        tasks.push(actix_rt::spawn(call(
            broker.clone(),
            caller,
            tally.clone(),
            until,
        )));
    }

    // Progress and faults.
    let mut killed = false;
    let mut restarted = false;
    let mut second = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = started.elapsed();
        if let Some(server) = &server {
            if !killed && elapsed >= run_for / 3 {
                killed = true;
                let done = server.kill_one().await;
                println!("  fault: killed one server-side connection ({done})");
            }
            if !restarted && elapsed >= run_for * 2 / 3 {
                restarted = true;
                println!("  fault: restarting the listener (port closed {RESTART_PAUSE:?})");
                server.restart_listener().await?;
            }
        }
        if elapsed.as_secs() > second {
            second = elapsed.as_secs();
            let status = broker.pool().status().await?;
            let delivered: u64 = consumers.iter().map(|c| c.delivered.get()).sum();
            println!(
                "{second:>3}s published {:>8} confirmed {:>8} delivered {:>8} requests {:>8} \
                 failed {:>5} connections {}",
                tally.published.get(),
                tally.confirmed.get(),
                delivered,
                tally.answered.get(),
                tally.failures(),
                status.connections
            );
        }
    }
    for task in tasks {
        tokio::time::timeout(CALL_TIMEOUT * 3, task).await??;
    }
    // Wait until every confirmed message reached its consumers, or the bound.
    let settle = Instant::now();
    while lost(&tally, &consumers) > 0 && settle.elapsed() < SETTLE_BOUND {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let lost = lost(&tally, &consumers);
    let violations: u64 = consumers.iter().map(|c| c.violations.get()).sum();
    let delivered: u64 = consumers.iter().map(|c| c.delivered.get()).sum();
    let status = broker.pool().status().await?;
    let stats = broker.stats().await?;
    let counters = &status.counters;
    let elapsed = started.elapsed().as_secs_f64();
    println!("summary after {elapsed:.1} s:");
    println!(
        "  published {} ({:.0}/s): confirmed {}, unconfirmed {} (may have been delivered {}, \
         not delivered {})",
        tally.published.get(),
        tally.published.get() as f64 / elapsed,
        tally.confirmed.get(),
        tally.unconfirmed_maybe.get() + tally.unconfirmed_not.get(),
        tally.unconfirmed_maybe.get(),
        tally.unconfirmed_not.get()
    );
    println!(
        "  delivered {delivered} to {} consumers (duplicates dropped by the broker: {}, \
         missed on catch-up: {})",
        consumers.len(),
        stats.duplicates,
        stats.missed
    );
    println!(
        "  requests {}: answered {} ({:.0}/s), wrong answers {}",
        tally.requests.get(),
        tally.answered.get(),
        tally.answered.get() as f64 / elapsed,
        tally.wrong_answers.get()
    );
    let failed = tally.failed.borrow().clone();
    if failed.is_empty() {
        println!("  failed: none");
    } else {
        let list: Vec<String> = failed.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        println!("  failed by kind: {}", list.join(", "));
    }
    println!(
        "  reconnects: {} connections opened after the first {}; producers re-pinned {}, \
         publishes resent {}, subscriptions resubscribed {}",
        counters.created.saturating_sub(options.connections as u64),
        options.connections,
        stats.repins,
        stats.resent,
        stats.resubscribes
    );
    let mut publish_us = tally.publish_us.take();
    let mut request_us = tally.request_us.take();
    println!(
        "  latency: publish confirm p50 {} us p99 {} us; request p50 {} us p99 {} us",
        percentile(&mut publish_us, 0.50),
        percentile(&mut publish_us, 0.99),
        percentile(&mut request_us, 0.50),
        percentile(&mut request_us, 0.99)
    );
    if let Some(server) = &server {
        let server_stats = server.broker.send(GetServerStats).await?;
        println!(
            "  server: published {}, delivered {}, replayed {}, late ordered publishes refused {}, slow disconnects {}",
            server_stats.published,
            server_stats.delivered,
            server_stats.replayed,
            server_stats.fenced,
            server_stats.slow_disconnects
        );
    }
    println!("  order violations: {violations}");
    println!("  lost: {lost}");
    let outcome = broker.pool().drain().await;
    println!("  pool drained: {outcome:?}");
    Ok(lost == 0 && violations == 0 && tally.wrong_answers.get() == 0)
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let system = actix::System::new();
    match system.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("FAILED: lost messages, order violations or wrong answers");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
