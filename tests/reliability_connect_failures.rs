//! Reliability scenario 4: connects fail, refused or left hanging.
//!
//! What it proves, over real loopback TCP: a checkout that waits while connects fail
//! gets the real error, `ConnectionRefused` or `ConnectError::Timeout` after
//! `connect_timeout`, and gets it within `connect_timeout + backoff_max` (plus slack;
//! the first one within `connect_timeout` plus slack), never a bare checkout timeout;
//! after `2 × max_size` failed connects (enough to mark the authority down) the pool
//! is back to full capacity within `backoff_max` (plus slack) of the port accepting
//! again, and its connections work.
//!
//! How the fault is made: a `FaultProxy` stands where the pool connects, in front of
//! a real server. `AcceptMode::Refuse` closes its port (connects are refused),
//! `AcceptMode::Blackhole` leaves it listening with a full accept queue, so that
//! connects hang until the pool's `connect_timeout`; `AcceptMode::Forward` accepts
//! again.
//!
//! ```text
//! cargo test --all-features --test reliability_connect_failures
//! ```
#![cfg(feature = "testkit")]

mod broker_support;
mod reliability_support;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use broker_support::{within, WAIT};
use reliability_support::*;
use switchboard::testkit::{AcceptMode, FaultProxy, ProxyHandle};
use switchboard::{Authority, ConnectError, ConnectionId, PoolError};

/// Connections in the pool (`min_idle` = `max_size`), so that it fills up by itself.
const SIZE: usize = 3;

/// Failed connects to go through before the port accepts again.
const FAILURES: u64 = 2 * SIZE as u64;

/// The longest reconnect delay (and the longest between probes of a down authority).
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// How long a checkout may wait: far longer than any connect error takes to arrive,
/// so that a checkout that times out instead is caught.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(8);

/// Slack on each bound for a loaded machine.
const SLACK: Duration = Duration::from_secs(1);

/// What a failed checkout's connect error must be.
#[derive(Clone, Copy, Debug)]
enum Expected {
    /// The operating system refused the connect.
    Refused,
    /// No connection within this connect timeout.
    TimedOut(Duration),
}

impl Expected {
    fn matches(self, error: &ConnectError) -> bool {
        match (self, error) {
            (Expected::Refused, ConnectError::Io { source, .. }) => {
                source.kind() == ErrorKind::ConnectionRefused
            }
            (Expected::TimedOut(timeout), ConnectError::Timeout { after, .. }) => *after == timeout,
            _ => false,
        }
    }
}

/// A server behind a proxy whose port refuses or hangs connects (`mode`), and a pool
/// to it started lazily: it tries to connect for `min_idle` in the background from
/// the start.
struct Bed {
    server: broker_support::Server,
    proxy: ProxyHandle,
    authority: Authority,
    events: Events,
    pool: TcpPool,
    connect_timeout: Duration,
    expected: Expected,
}

async fn start_failing(mode: AcceptMode, connect_timeout: Duration, expected: Expected) -> Bed {
    let (server, _) = start_echo_server(None).await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port).into()).unwrap();
    proxy.set_accept(mode).await;
    let authority = proxy.authority();
    let events = Events::new();
    let config = pool_config()
        .min_idle(SIZE)
        .max_size(SIZE)
        .backoff_max(BACKOFF_MAX)
        .connect_timeout(connect_timeout)
        .checkout_timeout(CHECKOUT_TIMEOUT);
    let pool = start_pool(&authority, config, connection_config(), &events);
    Bed {
        server,
        proxy,
        authority,
        events,
        pool,
        connect_timeout,
        expected,
    }
}

/// The connect error a failed checkout carries; fails the test if it carries none (a
/// bare timeout) or not the one expected.
fn connect_error<'e>(bed: &Bed, error: &'e PoolError, what: &str) -> &'e ConnectError {
    let connect = match error {
        PoolError::Connect(error) => error,
        PoolError::Down { error, .. } => error,
        other => panic!("{what}: expected the connect error, got {other:?}"),
    };
    assert!(
        bed.expected.matches(connect),
        "{what}: expected {:?}, got {error:?}",
        bed.expected
    );
    connect
}

/// Checkouts one after another, each getting the connect error in time, until
/// `2 × max_size` connects failed; the authority is then down.
async fn fail_checkouts_one_by_one(bed: &Bed) {
    let mut checkouts = 0;
    loop {
        let asked = Instant::now();
        // The first one waits for the first connects; later ones may meet a backoff
        // before the next attempt.
        let bound = if checkouts == 0 {
            bed.connect_timeout + SLACK
        } else {
            bed.connect_timeout + BACKOFF_MAX + SLACK
        };
        let error = within(
            CHECKOUT_TIMEOUT + SLACK,
            "checkout",
            bed.pool.checkout(&bed.authority),
        )
        .await
        .expect_err("a checkout succeeded while connects fail");
        let waited = asked.elapsed();
        connect_error(bed, &error, &format!("checkout {checkouts}"));
        assert!(
            waited <= bound,
            "checkout {checkouts} waited {waited:?} for {error}"
        );
        checkouts += 1;
        let status = bed.pool.status().await.expect("pool running");
        if status.counters.connect_failures >= FAILURES {
            break;
        }
        // Down: checkouts fail at once; do not spin while the probe backs off.
        if matches!(error, PoolError::Down { .. }) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Checks the authority is down with the expected error and nothing open, then lets
/// the port accept and checks the pool is full again in time, with connections that
/// work, and that every connection reports `Closed` once when the pool closes.
async fn assert_capacity_returns(bed: &mut Bed) {
    let status = authority_status(&bed.pool, &bed.authority).await;
    assert!(status.down, "{FAILURES} failures mark it down: {status:#?}");
    assert_eq!(status.size, 0, "{status:#?}");
    assert_eq!(status.checkouts.timed_out, 0, "{status:#?}");
    assert!(
        status
            .last_connect_error
            .as_ref()
            .is_some_and(|error| bed.expected.matches(error)),
        "{status:#?}"
    );
    assert!(bed.events.connected().is_empty(), "nothing connected yet");

    // The port accepts again: the pool is full once the next probe connects, within
    // backoff_max, and the connects it opens at once after it. A probe caught hanging
    // when the port switched runs out its connect timeout first.
    bed.proxy.set_accept(AcceptMode::Forward).await;
    let back = Instant::now();
    let hanging = match bed.expected {
        Expected::Refused => Duration::ZERO,
        Expected::TimedOut(timeout) => timeout,
    };
    let bound = hanging + BACKOFF_MAX + SLACK;
    let full = wait_full(&bed.pool, &bed.authority, SIZE, bound).await;
    assert!(back.elapsed() <= bound, "full {:?} after", back.elapsed());
    let status = authority_status(&bed.pool, &bed.authority).await;
    assert!(!status.down, "{status:#?}");
    assert_eq!(status.consecutive_failures, 0);
    assert!(status.last_connect_error.is_none());

    // Every connection works, and the server has exactly the pool's.
    let mut leases = Vec::new();
    for n in 0..SIZE {
        let lease = within(WAIT, "checkout", bed.pool.checkout(&bed.authority))
            .await
            .unwrap();
        echo(&lease, &format!("after the failures {n}")).await;
        leases.push(lease);
    }
    let used: BTreeSet<ConnectionId> = leases.iter().map(|lease| lease.id()).collect();
    assert_eq!(used, full);
    drop(leases);
    bed.server.wait_open(SIZE).await;
    close_and_check_events(&bed.pool, &mut bed.events).await;
}

#[actix::test]
async fn refused_connects_reach_the_waiter_and_capacity_returns_once_the_port_accepts() {
    let connect_timeout = Duration::from_secs(2);
    let mut bed = start_failing(AcceptMode::Refuse, connect_timeout, Expected::Refused).await;
    fail_checkouts_one_by_one(&bed).await;
    assert_capacity_returns(&mut bed).await;
}

#[actix::test]
async fn hanging_connects_end_at_connect_timeout_for_the_waiter_and_capacity_returns() {
    let connect_timeout = Duration::from_millis(400);
    let expected = Expected::TimedOut(connect_timeout);
    let mut bed = start_failing(AcceptMode::Blackhole, connect_timeout, expected).await;
    fail_checkouts_one_by_one(&bed).await;
    assert_capacity_returns(&mut bed).await;
}

#[actix::test]
async fn every_waiter_in_line_while_connects_hang_hears_the_connect_error() {
    let connect_timeout = Duration::from_millis(400);
    let expected = Expected::TimedOut(connect_timeout);
    let mut bed = start_failing(AcceptMode::Blackhole, connect_timeout, expected).await;
    // Twice as many waiters as connections, all at once.
    let asked = Instant::now();
    let waiters: Vec<_> = (0..2 * SIZE)
        .map(|_| {
            let (pool, authority) = (bed.pool.clone(), bed.authority.clone());
            actix::spawn(async move { pool.checkout(&authority).await })
        })
        .collect();
    for (n, waiter) in waiters.into_iter().enumerate() {
        let error = within(CHECKOUT_TIMEOUT + SLACK, "a waiter", waiter)
            .await
            .unwrap()
            .expect_err("a checkout succeeded while connects hang");
        connect_error(&bed, &error, &format!("waiter {n}"));
    }
    // Each failed connect answers the longest waiter and `failure_threshold` of them
    // answer everyone: a few rounds of connect timeout and backoff, not the checkout
    // timeout.
    let rounds = FAILURES.div_ceil(SIZE as u64) as u32;
    let bound = (connect_timeout + BACKOFF_MAX) * rounds + SLACK;
    assert!(asked.elapsed() <= bound, "{:?}", asked.elapsed());
    assert!(asked.elapsed() < CHECKOUT_TIMEOUT);
    let status = authority_status(&bed.pool, &bed.authority).await;
    assert_eq!(status.waiters, 0, "{status:#?}");
    fail_checkouts_one_by_one(&bed).await;
    assert_capacity_returns(&mut bed).await;
}
