//! Traffic shapes, bursts: thousands of shared calls started at once on a warm or a
//! cold pool, with every spread. The promises checked on every shape:
//! - every call ends exactly once, and a burst that fits the pool's total capacity
//!   (`max_size × max_in_flight`) succeeds whole;
//! - the pool grows under it, up to `max_size`, and spreads it: with four
//!   connections open none carries more than 40% of the calls;
//! - nothing is left behind: no handle's claim, no waiter, the counts add up.
//!
//! 0.1 read only the calls a connection had written, so every pick of a burst read
//! zero: on a warm pool of one connection 4,096 of 10,000 calls succeeded, the rest
//! failed `Overloaded`, and the pool never grew.
//!
//! The server is in memory and answers each call after 50 ms of virtual time, so the
//! whole burst is in flight at once and costs no real time.
//!
//! `cargo test --all-features --test shapes_burst`

mod pool_support;

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use pool_support::*;
use switchboard::protocol::frame::FrameRequest;
use switchboard::{CallError, ConnectionConfig, ConnectionId, PoolError, Spread};

/// What a burst came to.
#[derive(Debug, Default)]
struct Outcome {
    ok: usize,
    overloaded: usize,
    other_errors: Vec<String>,
    /// Successful calls per connection.
    spread: HashMap<ConnectionId, usize>,
}

impl Outcome {
    fn busiest_share(&self) -> f64 {
        let busiest = self.spread.values().copied().max().unwrap_or(0);
        busiest as f64 / self.ok.max(1) as f64
    }
}

/// Starts `calls` shared calls at once (each its own task: a pick, then a call) and
/// waits for all of them, within a bound.
async fn burst(pool: &TestPool, server: &Server, calls: usize, spread: Spread) -> Outcome {
    let authority = server.authority();
    let tasks: Vec<_> = (0..calls)
        .map(|n| {
            let (pool, authority) = (pool.clone(), authority.clone());
            actix::spawn(async move {
                let shared = pool.shared_by(&authority, spread, None).await?;
                let text = format!("sleep:50 {n}");
                let reply = shared.call(FrameRequest::new(text.clone())).await;
                Ok::<_, PoolError>((shared.id(), reply.map(|reply| reply == text.as_bytes())))
            })
        })
        .collect();
    let results = within(Duration::from_secs(120), "burst", join_all(tasks)).await;
    let mut outcome = Outcome::default();
    for result in results {
        match result.expect("the call task ran to its end") {
            Ok((id, Ok(true))) => {
                outcome.ok += 1;
                *outcome.spread.entry(id).or_default() += 1;
            }
            Ok((_, Ok(false))) => outcome.other_errors.push("a reply for another call".into()),
            Ok((_, Err(CallError::Overloaded(_)))) => outcome.overloaded += 1,
            Ok((_, Err(error))) => outcome.other_errors.push(error.to_string()),
            Err(error) => outcome.other_errors.push(error.to_string()),
        }
    }
    outcome
}

/// A pool of at most four connections, `min_idle` of them open before the burst.
async fn pool_with(min_idle: usize, max_waiters: usize) -> (Server, TestPool) {
    let bed = TestBed::new();
    let pool = build_eagerly(
        bed.pool(
            config()
                .min_idle(min_idle)
                .max_size(4)
                .max_waiters(max_waiters)
                .checkout_timeout(Duration::from_secs(30)),
        )
        .connection(
            ConnectionConfig::builder()
                .heartbeat_interval(Duration::from_secs(5))
                .heartbeat_timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
        ),
    )
    .await;
    (bed.server, pool)
}

/// Checks the promises of a burst of `calls` that fits the pool's capacity.
async fn assert_served(pool: &TestPool, outcome: &Outcome, calls: usize, shape: &str) {
    assert!(
        outcome.other_errors.is_empty(),
        "{shape}: errors {:?}",
        &outcome.other_errors[..outcome.other_errors.len().min(5)]
    );
    assert_eq!(outcome.overloaded, 0, "{shape}: {outcome:?}");
    assert_eq!(outcome.ok, calls, "{shape}");
    // Growth: one connection per `grow_threshold` (64) calls, up to `max_size`.
    let wanted = calls.div_ceil(64).min(4);
    assert!(
        outcome.spread.len() >= wanted,
        "{shape}: {} connections carried the burst, {wanted} wanted: {:?}",
        outcome.spread.len(),
        outcome.spread
    );
    if outcome.spread.len() == 4 {
        assert!(
            outcome.busiest_share() <= 0.40,
            "{shape}: the busiest connection carried {:.0}% of the calls: {:?}",
            outcome.busiest_share() * 100.0,
            outcome.spread
        );
    }
    let status = assert_all_returned(pool).await;
    assert!(status.size <= 4, "{shape}: {status:#?}");
    for connection in &status.connections {
        assert_eq!(connection.in_flight, 0, "{shape}: {status:#?}");
    }
}

#[actix::test]
async fn a_burst_on_a_warm_pool_grows_it_and_spreads_evenly() {
    tokio::time::pause();
    for calls in [1, 64, 65, 1_000, 4_097, 10_000, 16_384] {
        for spread in [Spread::LeastLoaded, Spread::TwoChoices] {
            let (server, pool) = pool_with(1, 4096).await;
            let outcome = burst(&pool, &server, calls, spread).await;
            let shape = format!("warm pool, {calls} calls, {spread:?}");
            if calls == 10_000 {
                // The figures the issue asks for, printed with `--nocapture`.
                let mut spread: Vec<usize> = outcome.spread.values().copied().collect();
                spread.sort_unstable();
                eprintln!(
                    "{shape}: {} ok, {} overloaded, {} other errors, per connection {spread:?}",
                    outcome.ok,
                    outcome.overloaded,
                    outcome.other_errors.len()
                );
            }
            assert_served(&pool, &outcome, calls, &shape).await;
            pool.close().await;
        }
    }
}

#[actix::test]
async fn a_burst_on_a_cold_pool_opens_what_it_needs_and_spreads_evenly() {
    tokio::time::pause();
    for calls in [1, 100, 10_000, 16_384] {
        let (server, pool) = pool_with(0, 4096).await;
        let outcome = burst(&pool, &server, calls, Spread::LeastLoaded).await;
        let shape = format!("cold pool, {calls} calls");
        assert_served(&pool, &outcome, calls, &shape).await;
        pool.close().await;
    }
}

#[actix::test]
async fn a_burst_beyond_capacity_fills_every_connection_and_refuses_only_the_excess() {
    tokio::time::pause();
    let (server, pool) = pool_with(1, 4096).await;
    let calls = 20_000;
    let outcome = burst(&pool, &server, calls, Spread::LeastLoaded).await;
    assert!(
        outcome.other_errors.is_empty(),
        "{:?}",
        outcome.other_errors
    );
    // Four connections of 4,096 calls each take 16,384; the rest are refused with a
    // typed error, each exactly once.
    assert_eq!(outcome.ok + outcome.overloaded, calls);
    assert_eq!(outcome.spread.len(), 4, "{:?}", outcome.spread);
    assert_eq!(outcome.ok, 4 * 4096, "{outcome:?}");
    assert_all_returned(&pool).await;
}

#[actix::test]
async fn bursts_on_a_warm_pool_back_to_back_leave_no_claim_behind() {
    tokio::time::pause();
    let (server, pool) = pool_with(1, 4096).await;
    for round in 0..5 {
        let calls = 500 * (round + 1);
        let outcome = burst(&pool, &server, calls, Spread::LeastLoaded).await;
        assert_served(&pool, &outcome, calls, &format!("round {round}")).await;
    }
}

#[actix::test]
async fn connections_smaller_than_the_grow_threshold_still_grow_the_pool() {
    tokio::time::pause();
    // A connection takes 2 calls, far below the grow threshold (64): the pool must
    // grow by what a connection can carry.
    let bed = TestBed::new();
    let pool = build_eagerly(
        bed.pool(
            config()
                .min_idle(1)
                .max_size(4)
                .checkout_timeout(Duration::from_secs(30)),
        )
        .connection(
            ConnectionConfig::builder()
                .max_in_flight(2)
                .heartbeat_interval(Duration::from_secs(5))
                .heartbeat_timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
        ),
    )
    .await;
    let outcome = burst(&pool, &bed.server, 8, Spread::LeastLoaded).await;
    assert!(
        outcome.other_errors.is_empty(),
        "{:?}",
        outcome.other_errors
    );
    assert_eq!((outcome.ok, outcome.overloaded), (8, 0), "{outcome:?}");
    assert_eq!(outcome.spread.len(), 4, "{:?}", outcome.spread);
    assert_all_returned(&pool).await;
}
