//! Scenario 12, load: many connections through the server's `Listener` and the client's
//! `Pool` at once, and many calls over them, each checked by its caller. Nothing is
//! lost and no answer reaches anyone but its own caller, in its own place.
//!
//! The server is a `ServerBroker` with an echo route behind a TCP `Listener` on
//! 127.0.0.1; the client is a `Pool` with a `TcpConnector`, `min_idle = max_size =`
//! the connection count (and its global `max_connections` raised to it: the cap
//! defaults to 1,024). Every connection is open before the first call. Then one
//! caller per connection sends its numbered calls (the payload is the caller's id and
//! the call's number): it checks out a `Lease`, pipelines a burst of calls on it,
//! reads the answers in order, and gives the lease back, until it has sent its share.
//!
//! - Short (always on): 200 connections, 20,000 calls.
//! - Full: `SWITCHBOARD_LOAD_FULL=1 cargo test --all-features --test reliability_load
//!   -- --nocapture`: 2,000 connections, 200,000 calls.
//!
//! Client and server share this process, so it needs two descriptors per connection.
//! If the soft `RLIMIT_NOFILE` is too low, the test raises it toward the hard limit.
//! If that is not enough, the short run runs fewer connections and says so; the full
//! run fails, since a smaller run would pass for it.

mod broker_support;
#[path = "reliability_support/fd_limit.rs"]
mod fd_limit;

use std::time::{Duration, Instant};

use broker_support::{start_server_with, tagged, untag, within, Echo, Server, ServerOptions};
use futures::stream::{FuturesOrdered, StreamExt};
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::server::{GetListenerStats, ServerConfig, Stop};
use switchboard::transport::TcpConnector;
use switchboard::{Authority, Call, ConnectionConfig, Pool, PoolConfig, PoolHandle};
use tokio::net::{TcpListener, TcpSocket};

/// Calls a caller sends on one lease before it gives the lease back.
const BURST: usize = 5;

/// Descriptors the process holds besides the connections' sockets (the runtime's
/// epoll and eventfd, the listening socket, the test harness, headroom).
const FD_HEADROOM: u64 = 64;

/// How big the run is.
struct Size {
    connections: usize,
    calls: usize,
    /// What the environment asked for, when the descriptor limit cut it down.
    scaled_from: Option<usize>,
    fd_limit: u64,
}

fn size() -> Size {
    let full = std::env::var("SWITCHBOARD_LOAD_FULL").is_ok_and(|v| v == "1");
    let (connections, calls) = if full { (2000, 200_000) } else { (200, 20_000) };
    let open_now = std::fs::read_dir("/proc/self/fd").map_or(16, |dir| dir.count() as u64);
    // Both ends of every connection live in this process.
    let needed = open_now + 2 * connections as u64 + FD_HEADROOM;
    let fd_limit = fd_limit::raise_to(needed);
    if fd_limit >= needed {
        return Size {
            connections,
            calls,
            scaled_from: None,
            fd_limit,
        };
    }
    // The full run was asked for by name: a smaller one would pass for it.
    assert!(
        !full,
        "SWITCHBOARD_LOAD_FULL=1 needs {needed} descriptors, and the hard RLIMIT_NOFILE \
         allows {fd_limit} (raise `ulimit -Hn`)"
    );
    let fit = (fd_limit.saturating_sub(open_now + FD_HEADROOM) / 2) as usize;
    assert!(
        fit >= 10,
        "RLIMIT_NOFILE is {fd_limit}: not even 10 connections fit (raise `ulimit -n`)"
    );
    Size {
        connections: fit,
        calls,
        scaled_from: Some(connections),
        fd_limit,
    }
}

/// A listening socket on 127.0.0.1 with a backlog that holds every connect of the
/// burst, so none waits for a SYN retransmit.
fn listening_socket(backlog: u32) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("bind loopback");
    socket.listen(backlog).expect("listen")
}

/// What one caller saw.
#[derive(Default)]
struct CallerReport {
    /// How many times each of its calls resolved (`Ok` or `Err`): must be 1 each.
    resolved: Vec<u8>,
    /// Calls that ended in an error (lost): kind, count.
    lost: Vec<(String, usize)>,
    /// Answers that were not this caller's, or not the call's own number.
    misrouted: usize,
}

impl CallerReport {
    fn lose(&mut self, kind: &str) {
        match self.lost.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => self.lost.push((kind.to_owned(), 1)),
        }
    }
}

type Client = PoolHandle<TcpConnector, FrameProtocol>;

/// Sends `calls` numbered calls for `caller`, `BURST` at a time on a leased
/// connection, and checks each answer against the call it answers.
async fn caller(pool: Client, authority: Authority, caller: u32, calls: u32) -> CallerReport {
    let mut report = CallerReport {
        resolved: vec![0; calls as usize],
        ..CallerReport::default()
    };
    let mut next = 0u32;
    while next < calls {
        let lease = match pool.checkout(&authority).await {
            Ok(lease) => lease,
            Err(error) => {
                // A checkout that fails loses the burst it was for.
                let burst = (calls - next).min(BURST as u32);
                for n in next..next + burst {
                    report.resolved[n as usize] += 1;
                    report.lose(&format!("checkout {}", error.kind()));
                }
                next += burst;
                continue;
            }
        };
        let mut in_flight = FuturesOrdered::new();
        while next < calls && in_flight.len() < BURST {
            let request = FrameRequest::new(tagged(caller, next)).with_topic("echo");
            let n = next;
            // `send` queues the call in the connection's mailbox now, in this order.
            let answer = lease.addr().send(Call::new(request));
            in_flight.push_back(async move { (n, answer.await) });
            next += 1;
        }
        while let Some((n, answer)) = in_flight.next().await {
            report.resolved[n as usize] += 1;
            match answer {
                Ok(Ok(payload)) => {
                    if payload.len() != 8 || untag(&payload) != (caller, n) {
                        report.misrouted += 1;
                    }
                }
                Ok(Err(error)) => report.lose(error.kind()),
                Err(_) => report.lose("mailbox"),
            }
        }
        drop(lease);
    }
    report
}

/// Waits until the listener has `open` connections, within `limit`.
async fn wait_listener_open(server: &Server, open: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let stats = server
            .listener
            .send(GetListenerStats)
            .await
            .expect("listener alive");
        if stats.open == open {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the listener has {} connections open after {limit:?}, not {open}",
            stats.open
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix::test]
async fn load_many_connections_and_calls_lose_and_misroute_nothing() {
    let Size {
        connections,
        calls,
        scaled_from,
        fd_limit,
    } = size();
    if let Some(asked) = scaled_from {
        println!(
            "load: RLIMIT_NOFILE is {fd_limit} and cannot be raised enough for {asked} \
             connections (two descriptors each, client and server in one process): \
             running {connections} connections instead"
        );
    }
    let bound = Duration::from_secs(120);
    let started = Instant::now();

    // The server: room for every connection, and for every call of the burst in the
    // broker's mailbox at once (the point here is routing, not the server's bounds).
    let config = ServerConfig::default().mailbox(4 * connections * BURST + 1024);
    let server = start_server_with(
        config,
        ServerOptions {
            max_connections: Some(connections),
            socket: Some(listening_socket(
                u32::try_from(connections).unwrap_or(u32::MAX).max(128),
            )),
            ..ServerOptions::default()
        },
    )
    .await;
    let (echo, seen) = Echo::start_new(None);
    server.route("echo", echo.recipient()).await;
    let authority = server.authority();

    // The client: every connection opened eagerly, none allowed beyond the count.
    let pool_config = PoolConfig::builder()
        .min_idle(connections)
        .max_size(connections)
        .max_connections(connections)
        .max_waiters(connections * 2)
        .checkout_timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(30))
        .build()
        .expect("valid pool config");
    let connection = ConnectionConfig::builder()
        .call_timeout(Duration::from_secs(30))
        .max_in_flight(BURST * 4)
        .build()
        .expect("valid connection config");
    let pool = within(
        bound,
        "the pool to open every connection",
        Pool::builder(TcpConnector::new(), FrameProtocol::default())
            .config(pool_config)
            .connection(connection)
            .authority(authority.clone())
            .build(),
    )
    .await
    .expect("the pool opens its connections");
    wait_listener_open(&server, connections, bound).await;
    let status = pool.status().await.expect("pool alive");
    let group = status.authority(&authority).expect("authority known");
    assert_eq!(group.size, connections, "pool size before the calls");
    assert_eq!(group.idle, connections, "idle connections before the calls");
    let connected = started.elapsed();

    // The calls: one caller per connection, each with its share.
    let per_caller = calls.div_ceil(connections);
    let calls = per_caller * connections;
    let calls_started = Instant::now();
    let tasks: Vec<_> = (0..connections as u32)
        .map(|id| {
            actix_rt::spawn(caller(
                pool.clone(),
                authority.clone(),
                id,
                per_caller as u32,
            ))
        })
        .collect();
    let mut reports = Vec::with_capacity(connections);
    for task in tasks {
        let report = within(bound, "a caller's calls to resolve", task)
            .await
            .expect("caller task");
        reports.push(report);
    }
    let calls_took = calls_started.elapsed();

    let mut resolved_once = 0usize;
    let mut resolved_other = Vec::new();
    let mut lost_by_kind: Vec<(String, usize)> = Vec::new();
    let mut misrouted = 0;
    for (id, report) in reports.iter().enumerate() {
        for (n, &times) in report.resolved.iter().enumerate() {
            if times == 1 {
                resolved_once += 1;
            } else if resolved_other.len() < 10 {
                resolved_other.push((id, n, times));
            }
        }
        misrouted += report.misrouted;
        for (kind, n) in &report.lost {
            match lost_by_kind.iter_mut().find(|(k, _)| k == kind) {
                Some((_, total)) => *total += n,
                None => lost_by_kind.push((kind.clone(), *n)),
            }
        }
    }
    let lost: usize = lost_by_kind.iter().map(|(_, n)| n).sum();

    // Every connection was still the one opened at the start, and every request
    // reached the echo handler once, spread over every server-side connection.
    let status = pool.status().await.expect("pool alive");
    let group = status.authority(&authority).expect("authority known");
    let listener = server.listener_stats().await;
    let handled: usize = seen.counts().values().sum();
    let elapsed = started.elapsed();
    println!(
        "load: connections {connections}, calls {calls}, lost {lost}, misrouted {misrouted}, \
         elapsed {:.2} s (connect {:.2} s, calls {:.2} s, {:.0} calls/s){}",
        elapsed.as_secs_f64(),
        connected.as_secs_f64(),
        calls_took.as_secs_f64(),
        calls as f64 / calls_took.as_secs_f64(),
        match scaled_from {
            Some(asked) => format!(" [scaled down from {asked}: RLIMIT_NOFILE {fd_limit}]"),
            None => String::new(),
        }
    );

    assert_eq!(lost, 0, "calls lost, by kind: {lost_by_kind:?}");
    assert_eq!(misrouted, 0, "answers misrouted or out of sequence");
    assert!(
        resolved_other.is_empty(),
        "calls not resolved exactly once (caller, call, times): {resolved_other:?}"
    );
    assert_eq!(resolved_once, calls, "calls resolved exactly once");
    assert_eq!(handled, calls, "requests the echo handler saw");
    assert_eq!(
        seen.counts().len(),
        connections,
        "server-side connections that carried calls"
    );
    assert_eq!(group.size, connections, "pool size after the calls");
    assert_eq!(group.leased, 0, "leases still out");
    assert_eq!(group.waiters, 0, "checkouts still waiting");
    assert_eq!(
        status.counters.created, connections as u64,
        "connections opened (none replaced)"
    );
    assert!(
        status.counters.closed.is_empty(),
        "connections closed during the run: {:?}",
        status.counters.closed
    );
    assert_eq!(listener.open, connections, "server connections open");
    assert_eq!(listener.accepted, connections as u64, "sockets accepted");

    pool.close().await;
    let _ = server.listener.send(Stop { abort: true }).await;
}
