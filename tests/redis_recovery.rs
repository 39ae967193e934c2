//! Faults against a real redis-server: a command that outlives its timeout does not
//! hand its late reply to the next call; a killed server fails each call in flight
//! once, and the pool serves again after the server is back on the same port.

mod redis_support;

use std::time::Duration;

use bytes::Bytes;
use redis_support::RedisServer;
use switchboard::protocol::resp::{Command, Redis, RespConnector, RespProtocol};
use switchboard::transport::TcpConnector;
use switchboard::{CallError, Pool, PoolConfig};

/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(10);

fn client(server: &RedisServer, size: usize) -> Redis<RespConnector<TcpConnector>> {
    let config = PoolConfig::builder()
        .min_idle(size)
        .max_size(size)
        .backoff_base(Duration::from_millis(20))
        .backoff_max(Duration::from_millis(200))
        .build()
        .unwrap();
    let pool = Pool::builder(RespConnector::new(TcpConnector::new()), RespProtocol::new())
        .config(config)
        .authority(server.authority())
        .start();
    Redis::new(pool, server.authority())
}

#[actix::test]
async fn a_late_reply_is_never_handed_to_the_next_call() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // One connection, so the next call goes where the late reply will arrive.
    let redis = client(&server, 1);
    redis.set("k", "v").await.unwrap();

    let slow = redis.clone().timeout(Duration::from_millis(300));
    let error = slow
        .command(Command::new("DEBUG").arg("SLEEP").arg("1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            switchboard::protocol::resp::RedisError::Call(CallError::Timeout { .. })
        ),
        "{error:?}"
    );

    // The sleep's `+OK` arrives while these wait behind it: each gets its own reply.
    for _ in 0..3 {
        let value = tokio::time::timeout(WAIT, redis.get("k"))
            .await
            .expect("answered in time")
            .expect("the connection still serves");
        assert_eq!(value, Some(Bytes::from_static(b"v")));
    }
    assert_eq!(redis.incr("n").await.unwrap(), 1);
}

#[actix::test]
async fn a_killed_server_fails_calls_in_flight_once_and_the_pool_comes_back() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let redis = client(&server, 2);
    redis.ping().await.unwrap();

    // Calls held in flight by a sleeping server, then the server dies under them.
    let blocker = redis.clone().timeout(WAIT);
    let sleeping = actix::spawn(async move {
        blocker
            .command(Command::new("DEBUG").arg("SLEEP").arg("5"))
            .await
    });
    let in_flight: Vec<_> = (0..32)
        .map(|n| {
            let redis = redis.clone().timeout(WAIT);
            actix::spawn(async move { redis.incr(format!("c{n}")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.kill();

    // Each call resolves exactly once, in time; those on the dead server fail.
    for call in in_flight {
        let outcome = tokio::time::timeout(WAIT, call).await.expect("resolved");
        // Queued behind the sleep on its connection, or answered on the other one.
        if let Err(error) = outcome.unwrap() {
            assert!(
                error.remote().is_none(),
                "a transport error, not redis's: {error}"
            );
        }
    }
    let slept = tokio::time::timeout(WAIT, sleeping)
        .await
        .expect("resolved");
    assert!(slept.unwrap().is_err(), "the sleeping command fails");

    server.restart();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match redis.incr("after").await {
            Ok(count) => {
                assert_eq!(count, 1, "the restarted server starts empty");
                break;
            }
            Err(error) => {
                assert!(tokio::time::Instant::now() < deadline, "not back: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Back at full size.
    let deadline = tokio::time::Instant::now() + WAIT;
    while redis.pool().status().await.unwrap().connections < 2 {
        assert!(tokio::time::Instant::now() < deadline, "pool not refilled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
