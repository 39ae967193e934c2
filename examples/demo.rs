//! The main job: an embedded echo server and a client of switchboard Connection actors
//! talking over loopback, with a fault in the middle.
//!
//! ```text
//! cargo run --release --example demo [-- --seconds N] [--connections C] [--callers K]
//! ```
//!
//! It starts an echo server speaking the `frame` protocol on 127.0.0.1 (its own thread),
//! opens C Connection actors to it over TCP, and runs K callers that each send calls in
//! a loop and check every reply against its request. Half way through it kills the
//! server's side of one connection: that connection closes, its pending calls fail
//! with the reason, and the callers reconnect it. Every second it prints a progress
//! line; at the end, a summary: calls made, answered, failed by error kind,
//! reconnects, p50/p99 latency. It exits non-zero if a reply did not match its request
//! or a call never resolved.
//!
//! Until the Pool exists, reconnecting is done here by hand, a few lines that the Pool
//! will replace.

#[path = "support/echo_server.rs"]
mod echo_server;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler};
use bytes::Bytes;
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::transport::{Connector, TcpConnector};
use switchboard::{Authority, Call, CallError, Connection, ConnectionConfig, ConnectionEvent};
use tokio::net::TcpStream;
use tokio::time::Instant;

use echo_server::EchoServer;

type Conn = Addr<Connection<TcpStream, FrameProtocol>>;

struct Options {
    seconds: u64,
    connections: usize,
    callers: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        seconds: 5,
        connections: 4,
        callers: 64,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--seconds" => options.seconds = value("--seconds")?.max(1),
            "--connections" => options.connections = value("--connections")?.max(1) as usize,
            "--callers" => options.callers = value("--callers")?.max(1) as usize,
            "--help" | "-h" => {
                return Err("usage: demo [--seconds N] [--connections C] [--callers K]".into());
            }
            other => return Err(format!("unknown argument {other}; try --help")),
        }
    }
    Ok(options)
}

/// Counts what the connections report about themselves.
#[derive(Default)]
struct EventLog {
    connected: Rc<Cell<u64>>,
    closed: Rc<RefCell<BTreeMap<&'static str, u64>>>,
}

impl Actor for EventLog {
    type Context = Context<Self>;
}

impl Handler<ConnectionEvent> for EventLog {
    type Result = ();

    fn handle(&mut self, event: ConnectionEvent, _: &mut Context<Self>) {
        match event {
            ConnectionEvent::Connected { .. } => self.connected.set(self.connected.get() + 1),
            ConnectionEvent::Closed { id, reason } => {
                println!("  event: {id} closed: {reason}");
                *self.closed.borrow_mut().entry(reason.kind()).or_default() += 1;
            }
            _ => {}
        }
    }
}

/// One connection slot: the current connection and whether someone is replacing it.
struct Slot {
    conn: RefCell<Conn>,
    reconnecting: Cell<bool>,
}

/// What the callers share.
struct Client {
    authority: Authority,
    connector: TcpConnector,
    config: ConnectionConfig,
    events: Addr<EventLog>,
    slots: Vec<Slot>,
    made: Cell<u64>,
    answered: Cell<u64>,
    mismatched: Cell<u64>,
    reconnects: Cell<u64>,
    failed: RefCell<BTreeMap<&'static str, u64>>,
    latencies_us: RefCell<Vec<u32>>,
}

impl Client {
    async fn open(&self) -> Result<Conn, switchboard::ConnectError> {
        let stream = self.connector.connect(&self.authority).await?;
        Ok(Connection::builder(stream, FrameProtocol::default())
            .config(self.config.clone())
            .peer(self.authority.to_string())
            .events(self.events.clone().recipient())
            .start())
    }

    /// Replaces the connection in `slot` if it stopped; one caller does it, the others
    /// wait for it.
    async fn repair(&self, slot: &Slot) {
        if slot.conn.borrow().connected() {
            return;
        }
        if slot.reconnecting.replace(true) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            return;
        }
        match self.open().await {
            Ok(conn) => {
                *slot.conn.borrow_mut() = conn;
                self.reconnects.set(self.reconnects.get() + 1);
            }
            Err(error) => {
                eprintln!("  reconnect failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        slot.reconnecting.set(false);
    }

    fn fail(&self, kind: &'static str) {
        *self.failed.borrow_mut().entry(kind).or_default() += 1;
    }

    async fn caller(self: Rc<Self>, caller: usize, until: Instant) {
        let slot = &self.slots[caller % self.slots.len()];
        let mut seq = 0u64;
        while Instant::now() < until {
            seq += 1;
            let payload = Bytes::from(format!("caller {caller} call {seq}"));
            let conn = slot.conn.borrow().clone();
            self.made.set(self.made.get() + 1);
            let started = Instant::now();
            match conn
                .send(Call::new(FrameRequest::new(payload.clone())))
                .await
            {
                Ok(Ok(reply)) => {
                    let micros = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    self.latencies_us.borrow_mut().push(micros);
                    self.answered.set(self.answered.get() + 1);
                    if reply != payload {
                        self.mismatched.set(self.mismatched.get() + 1);
                    }
                }
                Ok(Err(error)) => {
                    self.fail(error.kind());
                    if matches!(error, CallError::Closed(_)) {
                        self.repair(slot).await;
                    }
                }
                Err(_mailbox_closed) => {
                    self.fail("closed");
                    self.repair(slot).await;
                }
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

async fn run(options: Options, server: &EchoServer) -> Result<bool, Box<dyn std::error::Error>> {
    let log = EventLog::default();
    let (connected, closed) = (log.connected.clone(), log.closed.clone());
    let events = log.start();
    let config = ConnectionConfig::builder()
        .call_timeout(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_secs(1))
        .heartbeat_timeout(Duration::from_secs(3))
        .build()?;
    let mut client = Client {
        authority: Authority::from(server.addr()),
        connector: TcpConnector::new().connect_timeout(Duration::from_secs(2)),
        config,
        events,
        slots: Vec::new(),
        made: Cell::new(0),
        answered: Cell::new(0),
        mismatched: Cell::new(0),
        reconnects: Cell::new(0),
        failed: RefCell::new(BTreeMap::new()),
        latencies_us: RefCell::new(Vec::new()),
    };
    for _ in 0..options.connections {
        let conn = client.open().await?;
        client.slots.push(Slot {
            conn: RefCell::new(conn),
            reconnecting: Cell::new(false),
        });
    }
    let client = Rc::new(client);
    println!(
        "switchboard demo: {} callers over {} connections to echo server {} for {} s",
        options.callers,
        options.connections,
        server.addr(),
        options.seconds
    );

    let started = Instant::now();
    let until = started + Duration::from_secs(options.seconds);
    let callers: Vec<_> = (0..options.callers)
        .map(|caller| actix_rt::spawn(client.clone().caller(caller, until)))
        .collect();

    let mut killed = false;
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    while Instant::now() < until {
        tick.tick().await;
        let elapsed = started.elapsed();
        if !killed && elapsed >= Duration::from_secs(options.seconds) / 2 {
            killed = server.kill_one();
            println!("  fault: killed the server's side of one connection");
        }
        let failed: u64 = client.failed.borrow().values().sum();
        println!(
            "  {:>5.1}s  calls {:>9}  answered {:>9}  failed {:>5}  reconnects {}",
            elapsed.as_secs_f64(),
            client.made.get(),
            client.answered.get(),
            failed,
            client.reconnects.get()
        );
    }

    // Every caller stops at `until`; a call in flight then ends within call_timeout.
    let mut unresolved = 0;
    for caller in callers {
        if tokio::time::timeout(Duration::from_secs(5), caller)
            .await
            .is_err()
        {
            unresolved += 1;
        }
    }

    let mut latencies = client.latencies_us.borrow().clone();
    latencies.sort_unstable();
    let elapsed = started.elapsed().as_secs_f64();
    let failed = client.failed.borrow();
    println!("\nsummary");
    println!("  calls made        {}", client.made.get());
    println!(
        "  answered          {} ({:.0} calls/s)",
        client.answered.get(),
        client.answered.get() as f64 / elapsed
    );
    println!("  failed            {}", failed.values().sum::<u64>());
    for (kind, count) in failed.iter() {
        println!("    {kind:<15} {count}");
    }
    println!("  mismatched        {}", client.mismatched.get());
    println!("  unresolved        {unresolved}");
    println!(
        "  connections       {} opened, {} reconnects",
        connected.get(),
        client.reconnects.get()
    );
    for (kind, count) in closed.borrow().iter() {
        println!("    closed: {kind:<8} {count}");
    }
    println!("  latency p50       {} us", percentile(&latencies, 0.50));
    println!("  latency p99       {} us", percentile(&latencies, 0.99));
    let accounted = client.answered.get() + failed.values().sum::<u64>();
    println!(
        "  every call resolved exactly once: {}",
        if accounted == client.made.get() && unresolved == 0 {
            "yes"
        } else {
            "NO"
        }
    );
    Ok(client.mismatched.get() == 0 && unresolved == 0 && accounted == client.made.get())
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let server = match EchoServer::start() {
        Ok(server) => server,
        Err(error) => {
            eprintln!("could not start the echo server: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = actix::System::new().block_on(run(options, &server));
    server.shutdown();
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("demo failed: {error}");
            ExitCode::FAILURE
        }
    }
}
