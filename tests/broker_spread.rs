//! Unordered publishes and requests are spread over the pool's connections: with
//! four connections open, each carries a fair share.

mod broker_support;

use std::collections::HashMap;
use std::time::Duration;

use broker_support::*;
use futures::future::join_all;
use switchboard::broker::{Publish, Request};
use switchboard::server::ServerConfig;
use switchboard::{ConnectionId, GetStats};

const CONNECTIONS: usize = 4;

fn assert_fair(counts: &HashMap<ConnectionId, u64>, total: u64, what: &str) {
    assert_eq!(
        counts.len(),
        CONNECTIONS,
        "{what}: used {} connections: {counts:?}",
        counts.len()
    );
    assert_eq!(counts.values().sum::<u64>(), total, "{what}: {counts:?}");
    for (id, count) in counts {
        assert!(
            *count * 10 >= total,
            "{what}: connection {id:?} carried {count} of {total}: {counts:?}"
        );
    }
}

#[actix::test]
async fn a_burst_of_requests_is_spread_over_every_connection() {
    const REQUESTS: u64 = 4000;
    let server = start_server(ServerConfig::default().max_requests_per_connection(10_000)).await;
    // A little delay keeps requests in flight, so the load the picks see is real.
    let (echo, seen) = Echo::start_new(Some(Duration::from_millis(20)));
    server.route("echo", echo.recipient()).await;
    let client = start_client(server.port, spreading_pool());
    wait_pool_size(&client, server.port, CONNECTIONS).await;

    let answers = within(
        WAIT,
        "requests",
        join_all((0..REQUESTS).map(|n| {
            let client = client.clone();
            async move {
                let payload = n.to_be_bytes().to_vec();
                let answer = client.request(Request::new("echo", payload.clone())).await;
                (payload, answer)
            }
        })),
    )
    .await;
    for (payload, answer) in answers {
        assert_eq!(&answer.expect("request answered")[..], &payload[..]);
    }

    let counts: HashMap<ConnectionId, u64> = seen
        .counts()
        .into_iter()
        .map(|(id, n)| (id, n as u64))
        .collect();
    assert_fair(&counts, REQUESTS, "requests");
}

#[actix::test]
async fn a_burst_of_unordered_publishes_is_spread_over_every_connection() {
    const PUBLISHES: u64 = 8000;
    let server = start_server(ServerConfig::default()).await;
    let client = start_client(server.port, spreading_pool());
    wait_pool_size(&client, server.port, CONNECTIONS).await;

    let outcomes = within(
        WAIT,
        "publishes",
        join_all((0..PUBLISHES).map(|n| {
            client
                .addr()
                .send(Publish::unordered("spread", n.to_be_bytes().to_vec()))
        })),
    )
    .await;
    let mut seqs: Vec<u64> = outcomes
        .into_iter()
        .map(|outcome| outcome.expect("broker alive").expect("confirmed").seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=PUBLISHES).collect::<Vec<_>>(),
        "each publish got its own seq"
    );

    assert_fair(
        &calls_per_connection(&client, server.port).await,
        PUBLISHES,
        "unordered publishes",
    );
}

/// Each pooled connection's own count of calls written. Shared picks cycle through the
/// connections in use, so a few of them reach every one that carried traffic.
async fn calls_per_connection(client: &Client, port: u16) -> HashMap<ConnectionId, u64> {
    let authority = switchboard::Authority::tcp("127.0.0.1", port);
    let mut calls = HashMap::new();
    for _ in 0..64 {
        let connection = within(WAIT, "shared connection", client.pool().shared(&authority))
            .await
            .unwrap();
        if calls.contains_key(&connection.id()) {
            continue;
        }
        let stats = within(WAIT, "connection stats", connection.addr().send(GetStats))
            .await
            .unwrap();
        calls.insert(connection.id(), stats.calls);
    }
    calls
}

/// A pool of `CONNECTIONS` connections that shares every one of them under modest load
/// (the pool recruits another idle connection for shared use only once every shared
/// one has `grow_threshold` calls in flight; the default, 64, keeps light load on one
/// or two connections by design).
fn spreading_pool() -> switchboard::PoolConfig {
    switchboard::PoolConfig::builder()
        .min_idle(CONNECTIONS)
        .max_size(CONNECTIONS)
        .grow_threshold(4)
        .build()
        .unwrap()
}

/// `workers` tasks each send `rounds` requests (or unordered publishes), one at a time.
async fn steady_load(client: &Client, workers: u64, rounds: u64, publish: bool) {
    let tasks = (0..workers).map(|worker| {
        let client = client.clone();
        async move {
            for round in 0..rounds {
                let payload = (worker * rounds + round).to_be_bytes().to_vec();
                if publish {
                    let outcome = client.publish(Publish::unordered("spread", payload)).await;
                    outcome.expect("confirmed");
                } else {
                    let answer = client.request(Request::new("echo", payload.clone())).await;
                    assert_eq!(&answer.expect("answered")[..], &payload[..]);
                }
            }
        }
    });
    within(WAIT * 2, "steady load", join_all(tasks)).await;
}

#[actix::test]
async fn steady_requests_are_spread_over_every_connection() {
    const WORKERS: u64 = 200;
    const ROUNDS: u64 = 20;
    let server = start_server(ServerConfig::default()).await;
    let (echo, seen) = Echo::start_new(Some(Duration::from_millis(5)));
    server.route("echo", echo.recipient()).await;
    let client = start_client(server.port, spreading_pool());
    wait_pool_size(&client, server.port, CONNECTIONS).await;

    steady_load(&client, WORKERS, ROUNDS, false).await;
    let counts: HashMap<ConnectionId, u64> = seen
        .counts()
        .into_iter()
        .map(|(id, n)| (id, n as u64))
        .collect();
    assert_fair(&counts, WORKERS * ROUNDS, "steady requests");
}

#[actix::test]
async fn steady_unordered_publishes_are_spread_over_every_connection() {
    const WORKERS: u64 = 200;
    const ROUNDS: u64 = 20;
    let server = start_server(ServerConfig::default()).await;
    let client = start_client(server.port, spreading_pool());
    wait_pool_size(&client, server.port, CONNECTIONS).await;

    steady_load(&client, WORKERS, ROUNDS, true).await;
    let calls = calls_per_connection(&client, server.port).await;
    assert_fair(&calls, WORKERS * ROUNDS, "steady unordered publishes");
}
