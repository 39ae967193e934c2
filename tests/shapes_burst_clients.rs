//! Traffic shapes, bursts through the clients built on the Pool: the Broker's
//! requests and ordered producers, and the typed `Redis` client, each with thousands
//! of calls started at once on a warm pool of one connection (`max_size(4)`). The
//! promises: every call ends exactly once and a burst that fits the pool's capacity
//! succeeds whole; the pool grows to `max_size`; ordered producers spread over the
//! connections instead of all pinning the first.
//!
//! 0.1 sent such a burst down the one open connection: 10,000 Broker requests or
//! Redis commands split 4,096 `Ok` / 5,904 `Overloaded`, and 12,000 ordered publishes
//! from 8 producers lost 7,904 to `Overloaded`, even with `max_unconfirmed` raised.
//!
//! Real time over loopback; the Redis part starts a `redis-server` on a free port
//! (SKIPPED without one unless `SWITCHBOARD_REQUIRE_REDIS` is set, as in CI).
//!
//! `cargo test --all-features --test shapes_burst_clients`

mod broker_support;
mod redis_support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use broker_support::{start_client_with, start_server, wait_pool_size, Echo, WAIT};
use futures::future::join_all;
use switchboard::broker::{BrokerConfig, BrokerError, ProducerId, Publish, Request};
use switchboard::pool::PoolConfig;
use switchboard::protocol::resp::{Redis, RedisError, RespConnector, RespProtocol};
use switchboard::server::ServerConfig;
use switchboard::transport::TcpConnector;
use switchboard::{Authority, CallError, Pool};

/// The bound on a whole burst: generous on a loaded 2-core machine.
const BURST_BOUND: Duration = Duration::from_secs(120);

fn warm_pool_of_four() -> PoolConfig {
    PoolConfig::builder()
        .min_idle(1)
        .max_size(4)
        .checkout_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[actix::test]
async fn ten_thousand_broker_requests_at_once_on_a_warm_pool_all_succeed() {
    let server = start_server(ServerConfig::default().max_requests_per_connection(8192)).await;
    let (echo, seen) = Echo::start_new(None);
    server.route("echo", echo.recipient()).await;
    let client = start_client_with(
        server.port,
        warm_pool_of_four(),
        None,
        BrokerConfig::default(),
    );
    wait_pool_size(&client, server.port, 1).await;

    let calls = 10_000;
    let requests = (0..calls).map(|n| {
        let client = client.clone();
        actix::spawn(async move {
            let payload = format!("request {n}");
            let reply = client.request(Request::new("echo", payload.clone())).await;
            reply.map(|reply| reply == payload.as_bytes())
        })
    });
    let results = tokio::time::timeout(BURST_BOUND, join_all(requests))
        .await
        .expect("the burst ends");
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut ok = 0;
    for result in results {
        match result.expect("the request task ran") {
            Ok(true) => ok += 1,
            Ok(false) => {
                *errors
                    .entry("a reply for another request".into())
                    .or_default() += 1
            }
            Err(error) => *errors.entry(error.to_string()).or_default() += 1,
        }
    }
    let spread = seen.counts();
    eprintln!("broker requests: {ok} ok, errors {errors:?}, per server connection {spread:?}");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(ok, calls);
    assert_eq!(spread.len(), 4, "the pool grew to max_size: {spread:?}");
    let busiest = spread.values().copied().max().unwrap_or(0);
    assert!(busiest * 100 <= calls * 40, "{spread:?}");
}

#[actix::test]
async fn ordered_producers_spread_over_the_connections_and_lose_nothing() {
    let server = start_server(ServerConfig::default()).await;
    let client = start_client_with(
        server.port,
        warm_pool_of_four(),
        None,
        BrokerConfig::default().max_unconfirmed(2_000),
    );
    wait_pool_size(&client, server.port, 1).await;

    let (producers, each) = (8_u64, 1_500_usize);
    let mut publishes = Vec::new();
    for producer in 0..producers {
        for n in 0..each {
            publishes.push(client.publish(Publish::ordered(
                ProducerId(producer),
                format!("topic-{producer}"),
                format!("{n}"),
            )));
        }
    }
    let results = tokio::time::timeout(BURST_BOUND, join_all(publishes))
        .await
        .expect("the publishes end");
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut confirmed = 0;
    for result in results {
        match result {
            Ok(_) => confirmed += 1,
            Err(unconfirmed) => *errors.entry(unconfirmed.error.to_string()).or_default() += 1,
        }
    }
    let connections = server.connections().await;
    eprintln!(
        "ordered publishes: {confirmed} confirmed, errors {errors:?}, {} server connections",
        connections.len()
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(confirmed, producers as usize * each);
    // Eight producers over a pool of up to four: more than one connection carried
    // them (0.1 pinned all eight to the first).
    let stats = server.stats().await;
    assert!(connections.len() >= 2, "{stats:?}");
    let pool = client.pool().status().await.unwrap();
    let used: HashSet<_> = pool
        .authority(&Authority::tcp("127.0.0.1", server.port))
        .unwrap()
        .connections
        .iter()
        .map(|c| c.id)
        .collect();
    assert!(used.len() >= 2, "{pool:#?}");
    let _ = WAIT;
}

#[actix::test]
async fn ten_thousand_redis_commands_at_once_on_a_warm_pool_all_succeed() {
    let Some(server) = redis_support::RedisServer::start() else {
        return;
    };
    let pool = Pool::builder(
        RespConnector::new(TcpConnector::default()),
        RespProtocol::new(),
    )
    .config(warm_pool_of_four())
    .authority(server.authority())
    .build()
    .await
    .expect("the pool connects to redis");
    let redis = Redis::new(pool.clone(), server.authority());

    let calls = 10_000;
    let commands = (0..calls).map(|_| {
        let redis = redis.clone();
        actix::spawn(async move { redis.incr("burst").await })
    });
    let results = tokio::time::timeout(BURST_BOUND, join_all(commands))
        .await
        .expect("the burst ends");
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut ok = 0;
    for result in results {
        match result.expect("the command task ran") {
            Ok(_) => ok += 1,
            Err(RedisError::Call(CallError::Overloaded(_))) => {
                *errors.entry("Overloaded".into()).or_default() += 1
            }
            Err(error) => *errors.entry(error.to_string()).or_default() += 1,
        }
    }
    let status = pool.status().await.unwrap();
    let size = status.authority(&server.authority()).unwrap().size;
    eprintln!("redis: {ok} ok, errors {errors:?}, {size} connections");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(ok, calls);
    // Every INCR ran exactly once.
    assert_eq!(redis.incr("burst").await.unwrap(), calls as i64 + 1);
    assert_eq!(size, 4, "{status:#?}");
    let _: Option<BrokerError> = None;
}
