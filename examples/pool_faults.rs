//! The Pool on its own: an embedded echo server and a switchboard Pool talking to it over
//! loopback, through two faults: one connection killed, then a server restart.
//!
//! ```text
//! cargo run --release --example pool_faults [-- --seconds N] [--connections C] [--callers K]
//! ```
//!
//! It starts an echo server speaking the `frame` protocol on 127.0.0.1 (its own
//! thread) and a Pool of C TCP connections to it (`min_idle` = `max_size` = C), then
//! runs K callers that send calls in a loop and check every reply against its
//! request. Most callers ask the pool for a shared (multiplexed) connection for each
//! burst of calls (`pool.shared`); a few check one out for exclusive use
//! (`pool.checkout_within`, a `Lease` that goes back to the pool when dropped).
//!
//! At a third of the run it kills the server's side of one connection: the pool
//! hears that connection's `Closed` event and opens a replacement. At two thirds it
//! restarts the server: it stops listening, resets every connection, and listens
//! again on the same port 300 ms later. Calls in flight fail once each with a typed
//! error, checkouts fail fast while the pool has marked the server down, and the pool
//! reconnects with backoff (from 50 ms, doubling, at most 1 s apart); the demo prints
//! how long the pool took to be back at full size.
//!
//! Every call ends in exactly one answer or one typed error, counted by kind: a
//! `CallError` (`closed (io)` for a call in flight when its connection was reset,
//! `closed (stopped)` for one sent on a shared handle whose connection had just
//! stopped), or a `PoolError` when the checkout for the call failed (`down` while
//! the pool has marked the server down, `connect` for a waiter whose connect was
//! refused). A caller pauses 20 ms after a failure, then carries on.
//!
//! Every second it prints a progress line (calls, answers, failures, and the pool's
//! size, idle, leased and connecting connections); at the end, a summary: calls made,
//! answered, failed by error kind, connections created and closed by reason (the
//! pool's counters), checkouts, how calls spread over connections, p50/p99 latency.
//! Then it drains the pool and shows that the drain resolved. It exits non-zero if a
//! reply did not match its request or a call never resolved. Every wait is bounded:
//! calls by their 2 s timeout, checkouts by 2 s, the end of the run by 5 s.

#[path = "support/echo_server.rs"]
mod echo_server;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use switchboard::pool::{PoolConfig, PoolHandle, PoolStatus};
use switchboard::protocol::frame::FrameProtocol;
use switchboard::transport::TcpConnector;
use switchboard::{Authority, CallError, ConnectionConfig, ConnectionId, Pool, PoolError};
use tokio::time::Instant;

use echo_server::EchoServer;

type Handle = PoolHandle<TcpConnector, FrameProtocol>;

/// Calls per shared handle before a caller asks the pool again.
const SHARED_BURST: u64 = 4;
/// Calls per exclusive lease before a caller returns it.
const LEASE_BURST: u64 = 16;
/// Bounds a call's wait for its reply.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Bounds a checkout's wait for a connection.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(2);
/// The pool's first reconnect delay after a failure, doubled per failure up to
/// `BACKOFF_MAX`.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long the restarted server does not listen.
const RESTART_PAUSE: Duration = Duration::from_millis(300);
/// A caller's pause after a failure before it tries again. Checkouts fail at once
/// while the server is marked down; without a pause a caller would spin.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long the end of the run waits for callers still busy.
const OUTSTANDING_BOUND: Duration = Duration::from_secs(5);
/// How often a fault's recovery is polled with `pool.status()`.
const POLL: Duration = Duration::from_millis(5);

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
                return Err(
                    "usage: pool_faults [--seconds N] [--connections C] [--callers K]".into(),
                );
            }
            other => return Err(format!("unknown argument {other}; try --help")),
        }
    }
    Ok(options)
}

/// How many callers lease connections exclusively: a minority, and never more than
/// half the connections, so the shared callers always have some.
fn exclusive_callers(options: &Options) -> usize {
    if options.callers < 2 {
        return 0;
    }
    (options.callers / 8).clamp(1, (options.connections / 2).max(1))
}

/// How a call reached its connection.
#[derive(Clone, Copy)]
enum Via {
    Shared = 0,
    Leased = 1,
}

/// What the callers count.
#[derive(Default)]
struct Tally {
    made: Cell<u64>,
    answered: Cell<u64>,
    mismatched: Cell<u64>,
    /// Failed calls by (error type, kind).
    failed: RefCell<BTreeMap<(&'static str, String), u64>>,
    latencies_us: RefCell<Vec<u32>>,
    /// Answered calls per connection, shared and leased.
    carried: RefCell<BTreeMap<ConnectionId, [u64; 2]>>,
}

impl Tally {
    fn failed(&self) -> u64 {
        self.failed.borrow().values().sum()
    }

    fn fail(&self, source: &'static str, kind: String) {
        *self.failed.borrow_mut().entry((source, kind)).or_default() += 1;
    }

    /// A call that got no connection: the pool said why.
    fn checkout_failed(&self, error: &PoolError) {
        self.fail("PoolError", error.kind().to_string());
    }

    /// Records a call's outcome; returns whether it was answered.
    fn record(
        &self,
        via: (Via, ConnectionId),
        payload: &Bytes,
        started: Instant,
        outcome: Result<Bytes, CallError>,
    ) -> bool {
        match outcome {
            Ok(reply) => {
                self.carried.borrow_mut().entry(via.1).or_default()[via.0 as usize] += 1;
                let micros = started.elapsed().as_micros().min(u32::MAX.into()) as u32;
                self.latencies_us.borrow_mut().push(micros);
                self.answered.set(self.answered.get() + 1);
                if reply != *payload {
                    self.mismatched.set(self.mismatched.get() + 1);
                }
                true
            }
            Err(error) => {
                let kind = match &error {
                    CallError::Closed(reason) => format!("closed ({})", reason.kind()),
                    other => other.kind().to_string(),
                };
                self.fail("CallError", kind);
                false
            }
        }
    }

    /// Counts a call as made and returns its payload, unique per caller and call.
    fn next_call(&self, caller: usize, seq: &mut u64) -> Bytes {
        *seq += 1;
        self.made.set(self.made.get() + 1);
        Bytes::from(format!("caller {caller} call {seq}"))
    }
}

/// What the callers share.
struct Client {
    pool: Handle,
    authority: Authority,
    tally: Tally,
}

impl Client {
    /// Asks the pool for a shared connection per burst of calls.
    async fn shared_caller(self: Rc<Self>, caller: usize, until: Instant) {
        let mut seq = 0;
        while Instant::now() < until {
            let payload = self.tally.next_call(caller, &mut seq);
            let conn = match self.pool.shared(&self.authority).await {
                Ok(conn) => conn,
                Err(error) => {
                    self.tally.checkout_failed(&error);
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            let mut payload = Some(payload);
            for _ in 0..SHARED_BURST {
                let payload = match payload.take() {
                    Some(first) => first,
                    None if Instant::now() < until => self.tally.next_call(caller, &mut seq),
                    None => break,
                };
                let started = Instant::now();
                let outcome = conn.call(payload.clone()).await;
                let via = (Via::Shared, conn.id());
                if !self.tally.record(via, &payload, started, outcome) {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    break;
                }
            }
        }
    }

    /// Leases a connection for exclusive use per burst of calls.
    async fn exclusive_caller(self: Rc<Self>, caller: usize, until: Instant) {
        let mut seq = 0;
        while Instant::now() < until {
            let payload = self.tally.next_call(caller, &mut seq);
            let lease = match self
                .pool
                .checkout_within(&self.authority, CHECKOUT_TIMEOUT)
                .await
            {
                Ok(lease) => lease,
                Err(error) => {
                    self.tally.checkout_failed(&error);
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            let mut payload = Some(payload);
            for _ in 0..LEASE_BURST {
                let payload = match payload.take() {
                    Some(first) => first,
                    None if Instant::now() < until => self.tally.next_call(caller, &mut seq),
                    None => break,
                };
                let started = Instant::now();
                let outcome = lease.call(payload.clone()).await;
                if !self
                    .tally
                    .record((Via::Leased, lease.id()), &payload, started, outcome)
                {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    break;
                }
            }
            // Back to the pool (or, if its connection broke, to be replaced).
            drop(lease);
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

/// On how many of the `created` connections shared and leased calls were answered,
/// and the busiest connection's share of the shared ones.
fn spread(carried: &BTreeMap<ConnectionId, [u64; 2]>, created: u64) -> String {
    let on = |via: Via| carried.values().filter(|c| c[via as usize] > 0).count();
    let shared: Vec<u64> = carried.values().map(|c| c[Via::Shared as usize]).collect();
    let total: u64 = shared.iter().sum();
    let busiest = shared.iter().max().copied().unwrap_or(0);
    format!(
        "shared calls on {} of {created} connections (busiest {:.0}%), leased calls on {}",
        on(Via::Shared),
        busiest as f64 * 100.0 / total.max(1) as f64,
        on(Via::Leased)
    )
}

fn millis(duration: Duration) -> u128 {
    duration.as_millis()
}

/// Polls the pool's status until `done` holds; returns when it did, or `None` at
/// `deadline`.
async fn wait_for(
    pool: &Handle,
    deadline: Instant,
    mut done: impl FnMut(&PoolStatus) -> bool,
) -> Option<Instant> {
    loop {
        if let Ok(status) = pool.status().await {
            if done(&status) {
                return Some(Instant::now());
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Kills one connection at a third of the run and restarts the server at two
/// thirds, printing what happens; returns a line per fault for the summary.
async fn inject_faults(
    server: Rc<EchoServer>,
    pool: Handle,
    authority: Authority,
    started: Instant,
    run: Duration,
    size: usize,
) -> Vec<String> {
    let stamp = || format!("  {:>5.1}s ", started.elapsed().as_secs_f64());
    let full = |status: &PoolStatus| {
        status
            .authority(&authority)
            .is_some_and(|a| a.size == size && a.connecting == 0 && !a.down)
    };
    let mut recap = Vec::new();

    tokio::time::sleep_until(started + run / 3).await;
    let created = match pool.status().await {
        Ok(status) => status.counters.created,
        Err(error) => return vec![format!("no faults: {error}")],
    };
    let killed_at = Instant::now();
    if !server.kill_one() {
        recap.push("kill: the server had no connection to kill".to_string());
    } else {
        println!(
            "{} fault: killed the server's side of one connection",
            stamp()
        );
        let replaced = wait_for(&pool, killed_at + BACKOFF_MAX * 3, |status| {
            status.counters.created > created && full(status)
        })
        .await;
        let line = match replaced {
            Some(at) => format!(
                "kill one connection: replaced, pool back to {size} after {} ms",
                millis(at - killed_at)
            ),
            None => format!(
                "kill one connection: NOT replaced within {} ms",
                millis(BACKOFF_MAX * 3)
            ),
        };
        println!("{} pool: {line}", stamp());
        recap.push(line);
    }

    tokio::time::sleep_until(started + run * 2 / 3).await;
    let down_at = Instant::now();
    match server.go_down().await {
        Ok(open) => println!(
            "{} fault: server restarting: stopped listening, reset its {open} connections",
            stamp()
        ),
        Err(error) => {
            recap.push(format!("restart: could not stop the server: {error}"));
            return recap;
        }
    }
    tokio::time::sleep(RESTART_PAUSE).await;
    if let Err(error) = server.come_back().await {
        let line = format!("restart: could not listen again: {error}");
        println!("{} {line}", stamp());
        recap.push(line);
        return recap;
    }
    let up_at = Instant::now();
    println!(
        "{} server listening again on the same port after {} ms",
        stamp(),
        millis(up_at - down_at)
    );
    // Full size again, and every connection opened since the server went down.
    let restored = wait_for(&pool, up_at + BACKOFF_MAX * 3, |status| {
        full(status)
            && status.authority(&authority).is_some_and(|a| {
                a.connections
                    .iter()
                    .all(|member| member.age < down_at.elapsed())
            })
    })
    .await;
    let line = match restored {
        Some(at) => format!(
            "restart: server down {} ms, pool back to {size} new connections {} ms after it came back (backoff_max {} ms)",
            millis(up_at - down_at),
            millis(at - up_at),
            millis(BACKOFF_MAX)
        ),
        None => format!(
            "restart: pool NOT back to {size} connections within {} ms of the server coming back",
            millis(BACKOFF_MAX * 3)
        ),
    };
    println!("{} pool: {line}", stamp());
    recap.push(line);
    recap
}

async fn run(options: Options, server: Rc<EchoServer>) -> Result<bool, Box<dyn std::error::Error>> {
    let authority = Authority::from(server.addr());
    let config = PoolConfig::builder()
        .min_idle(options.connections)
        .max_size(options.connections)
        .checkout_timeout(CHECKOUT_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .backoff_base(BACKOFF_BASE)
        .backoff_max(BACKOFF_MAX)
        .shutdown_timeout(Duration::from_secs(2))
        .build()?;
    let connection = ConnectionConfig::builder()
        .call_timeout(CALL_TIMEOUT)
        .heartbeat_interval(Duration::from_secs(1))
        .heartbeat_timeout(Duration::from_secs(3))
        .build()?;
    let connector = TcpConnector::new().connect_timeout(Duration::from_secs(1));
    // Eager start: resolves once the authority has its `min_idle` connections.
    let pool = Pool::builder(connector, FrameProtocol::default())
        .config(config)
        .connection(connection)
        .authority(authority.clone())
        .build()
        .await?;
    let client = Rc::new(Client {
        pool: pool.clone(),
        authority: authority.clone(),
        tally: Tally::default(),
    });
    let exclusive = exclusive_callers(&options);
    println!(
        "switchboard demo: {} callers ({} shared, {} exclusive) over a pool of {} connections to echo server {} for {} s",
        options.callers,
        options.callers - exclusive,
        exclusive,
        options.connections,
        server.addr(),
        options.seconds
    );

    let started = Instant::now();
    let length = Duration::from_secs(options.seconds);
    let until = started + length;
    let mut callers: Vec<_> = (0..options.callers)
        .map(|caller| {
            let client = client.clone();
            if caller < exclusive {
                actix_rt::spawn(client.exclusive_caller(caller, until))
            } else {
                actix_rt::spawn(client.shared_caller(caller, until))
            }
        })
        .collect();
    let mut faults = actix_rt::spawn(inject_faults(
        server,
        pool.clone(),
        authority.clone(),
        started,
        length,
        options.connections,
    ));

    let tally = &client.tally;
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    while Instant::now() < until {
        tick.tick().await;
        let size = match pool.status().await {
            Ok(status) => match status.authority(&authority) {
                Some(a) => format!(
                    "size {} idle {} leased {} connecting {}",
                    a.size, a.idle, a.leased, a.connecting
                ),
                None => "unknown authority".to_string(),
            },
            Err(error) => error.to_string(),
        };
        println!(
            "  {:>5.1}s  calls {:>9}  answered {:>9}  failed {:>5}  pool: {size}",
            started.elapsed().as_secs_f64(),
            tally.made.get(),
            tally.answered.get(),
            tally.failed(),
        );
    }

    // Every caller stops at `until`; what it is waiting for then (a checkout, a call,
    // a pause) ends within its own timeout. Callers still busy at the bound are
    // stopped, and their calls without an outcome count as unresolved.
    let deadline = Instant::now() + OUTSTANDING_BOUND;
    let mut stuck = 0;
    for caller in &mut callers {
        if tokio::time::timeout_at(deadline, &mut *caller)
            .await
            .is_err()
        {
            caller.abort();
            stuck += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let recap = match tokio::time::timeout_at(deadline, &mut faults).await {
        Ok(Ok(recap)) => recap,
        _ => {
            faults.abort();
            vec!["faults: did not finish in time".to_string()]
        }
    };
    let status = pool.status().await?;

    // Drain: no new checkouts, calls in flight finish, every connection closes.
    let drain_started = Instant::now();
    // The pool's own shutdown timeout (2 s) bounds the drain; this outer bound only
    // guards the demo against a bug.
    let drained = tokio::time::timeout(Duration::from_secs(5), pool.drain())
        .await
        .ok();
    let drain_took = drain_started.elapsed();
    let after_drain = match pool.status().await {
        Ok(status) => format!("{} connections", status.connections),
        Err(error) => format!("Err({})", error.kind()),
    };

    let made = tally.made.get();
    let answered = tally.answered.get();
    let failed = tally.failed();
    let unresolved = made.saturating_sub(answered + failed);
    let mut latencies = std::mem::take(&mut *tally.latencies_us.borrow_mut());
    latencies.sort_unstable();
    let counters = &status.counters;
    let checkouts = &counters.checkouts;

    println!("\nsummary");
    println!("  calls made        {made}");
    println!(
        "  answered          {answered} ({:.0} calls/s)",
        answered as f64 / elapsed
    );
    println!("  failed            {failed}");
    for ((source, kind), count) in tally.failed.borrow().iter() {
        println!("    {source:<9} {kind:<20} {count}");
    }
    println!("  mismatched        {}", tally.mismatched.get());
    println!("  unresolved        {unresolved}");
    if stuck > 0 {
        println!("    callers stopped at the bound: {stuck}");
    }
    println!(
        "  connections       {} created, {} closed, {} connect failures, marked down {} time(s)",
        counters.created,
        counters.closed.values().sum::<u64>(),
        counters.connect_failures,
        counters.marked_down
    );
    for (reason, count) in &counters.closed {
        println!("    closed: {reason:<14} {count}");
    }
    println!(
        "  checkouts         {} direct, {} waited, {} timed out, {} refused, {} failed; {} shared handles",
        checkouts.direct,
        checkouts.waited,
        checkouts.timed_out,
        checkouts.refused,
        checkouts.failed,
        checkouts.shared
    );
    println!(
        "  spread            {}",
        spread(&tally.carried.borrow(), counters.created)
    );
    println!("  latency p50       {} us", percentile(&latencies, 0.50));
    println!("  latency p99       {} us", percentile(&latencies, 0.99));
    println!("  faults");
    for line in &recap {
        println!("    {line}");
    }
    println!(
        "  drain             {} in {:.1} ms; status() after it: {after_drain}",
        match drained {
            Some(outcome) => format!("resolved ({outcome:?})"),
            None => "DID NOT resolve".to_owned(),
        },
        drain_took.as_secs_f64() * 1e3
    );
    let ok = tally.mismatched.get() == 0 && unresolved == 0 && stuck == 0;
    println!(
        "  every call resolved exactly once, with the right reply: {}",
        if ok { "yes" } else { "NO" }
    );
    Ok(ok)
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
        Ok(server) => Rc::new(server),
        Err(error) => {
            eprintln!("could not start the echo server: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The system (and every task still holding the server) is gone once this returns.
    let outcome = actix::System::new().block_on(run(options, server.clone()));
    match Rc::try_unwrap(server) {
        Ok(server) => server.shutdown(),
        Err(server) => drop(server),
    }
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("demo failed: {error}");
            ExitCode::FAILURE
        }
    }
}
