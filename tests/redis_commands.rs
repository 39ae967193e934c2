//! RESP against a real `redis-server` (skipped, with a SKIPPED line, when it is not
//! installed and `SWITCHBOARD_REQUIRE_REDIS` is unset): typed and raw commands
//! through a Pool over RESP3 and RESP2, error replies that leave the connection
//! working, many callers pipelining on one connection, big values, the bulk limit,
//! the handshake (name, database, refused credentials) and pub/sub pushes.

mod forward;
mod redis_support;

use forward::forward;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use redis_support::RedisServer;
use switchboard::pool::PoolConfig;
use switchboard::protocol::resp::{
    Command, HandshakeError, PushKind, Redis, RedisError, RespConnector, RespError, RespLimits,
    RespProtocol, RespPush, RespVersion, Value,
};
use switchboard::transport::{Connector, TcpConnector};
use switchboard::{CallError, CloseReason, ConnectError, Pool, PoolError, PoolHandle, Pushed};
use tokio::sync::mpsc;

type Client = Redis<RespConnector<TcpConnector>>;

/// Bounds every test's whole run.
const TEST_BOUND: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {TEST_BOUND:?}"))
}

fn connector(version: RespVersion) -> RespConnector<TcpConnector> {
    RespConnector::new(TcpConnector::default()).version(version)
}

fn pool_config(max_size: usize) -> PoolConfig {
    PoolConfig::builder()
        .min_idle(1)
        .max_size(max_size)
        .checkout_timeout(Duration::from_secs(10))
        .backoff_base(Duration::from_millis(10))
        .build()
        .unwrap()
}

async fn start_pool(
    server: &RedisServer,
    connector: RespConnector<TcpConnector>,
    limits: RespLimits,
    max_size: usize,
) -> PoolHandle<RespConnector<TcpConnector>, RespProtocol> {
    Pool::builder(connector, RespProtocol::with_limits(limits))
        .config(pool_config(max_size))
        .authority(server.authority())
        .build()
        .await
        .expect("the pool connects to redis")
}

async fn client(server: &RedisServer, version: RespVersion) -> Client {
    let pool = start_pool(server, connector(version), RespLimits::default(), 1).await;
    Redis::new(pool, server.authority())
}

/// The typed commands and a few raw ones, on a client of `version`.
async fn typed_and_raw_commands(version: RespVersion) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    within("commands", async {
        let redis = client(&server, version).await;
        redis.ping().await.unwrap();
        assert_eq!(redis.get("greeting").await.unwrap(), None);
        redis.set("greeting", "hello").await.unwrap();
        assert_eq!(
            redis.get("greeting").await.unwrap(),
            Some(Bytes::from_static(b"hello"))
        );
        redis
            .set_ex("short-lived", b"x", Duration::from_secs(100))
            .await
            .unwrap();
        let ttl = redis
            .command(Command::new("TTL").arg("short-lived"))
            .await
            .unwrap();
        assert!(matches!(ttl, Value::Integer(1..=100)), "{ttl:?}");
        assert!(redis.del("greeting").await.unwrap());
        assert!(!redis.del("greeting").await.unwrap());
        assert_eq!(redis.incr("counter").await.unwrap(), 1);
        assert_eq!(redis.incr("counter").await.unwrap(), 2);
        assert_eq!(redis.publish("news", "nobody listens").await.unwrap(), 0);

        // Binary-safe keys and values.
        let binary = Bytes::from_static(b"\0\r\n\xff$*");
        redis.set(&binary[..], &binary).await.unwrap();
        assert_eq!(redis.get(&binary).await.unwrap(), Some(binary.clone()));

        // Raw commands: the reply as it came, in the version's own types.
        let added = redis
            .command(Command::new("HSET").arg("hash").arg("field").arg(42))
            .await
            .unwrap();
        assert_eq!(added, Value::Integer(1));
        let all = redis
            .command(Command::new("HGETALL").arg("hash"))
            .await
            .unwrap();
        let field = Value::Bulk(Bytes::from_static(b"field"));
        let value = Value::Bulk(Bytes::from_static(b"42"));
        match version {
            RespVersion::Resp2 => assert_eq!(all, Value::Array(vec![field, value])),
            _ => assert_eq!(all, Value::Map(vec![(field, value)])),
        }
        let info = redis
            .command(Command::new("CLIENT").arg("INFO"))
            .await
            .unwrap();
        let info = String::from_utf8_lossy(info.as_bytes().expect("text")).into_owned();
        let expected = match version {
            RespVersion::Resp2 => "resp=2",
            _ => "resp=3",
        };
        assert!(info.contains(expected), "{info}");
        let missing = redis
            .command(Command::new("LRANGE").arg("no-list").arg(0).arg(-1))
            .await
            .unwrap();
        assert_eq!(missing, Value::Array(vec![]));
    })
    .await;
}

#[actix::test]
async fn typed_and_raw_commands_over_resp3() {
    typed_and_raw_commands(RespVersion::Resp3).await;
}

#[actix::test]
async fn typed_and_raw_commands_over_resp2() {
    typed_and_raw_commands(RespVersion::Resp2).await;
}

#[actix::test]
async fn auto_negotiates_resp3_with_redis_7() {
    typed_and_raw_commands(RespVersion::Auto).await;
}

#[actix::test]
async fn an_error_reply_is_remote_and_the_connection_keeps_working() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    within("error reply", async {
        for version in [RespVersion::Resp3, RespVersion::Resp2] {
            let redis = client(&server, version).await;
            redis.set("text", "not a number").await.unwrap();
            let error = redis.incr("text").await.unwrap_err();
            let remote = error.remote().expect("a remote error");
            assert!(
                remote.message().starts_with(b"ERR value is not an integer"),
                "{error}"
            );
            assert!(matches!(error, RedisError::Call(CallError::Remote(_))));
            // The connection answers the next commands, in order.
            redis.ping().await.unwrap();
            assert_eq!(redis.incr(format!("number:{version:?}")).await.unwrap(), 1);
            let unknown = redis.command(Command::new("NO-SUCH-COMMAND")).await;
            assert!(unknown.unwrap_err().remote().is_some());
            assert_eq!(
                redis.get("text").await.unwrap(),
                Some(Bytes::from_static(b"not a number"))
            );
            let status = redis.pool().status().await.unwrap();
            assert_eq!(status.counters.created, 1, "still the first connection");
            redis.pool().close().await;
        }
    })
    .await;
}

#[actix::test]
async fn many_callers_pipelined_on_one_connection_each_get_their_own_replies() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    const CALLERS: usize = 64;
    const INCRS: i64 = 200;
    within("pipelined callers", async {
        for version in [RespVersion::Resp3, RespVersion::Resp2] {
            let redis = client(&server, version).await;
            let callers = (0..CALLERS).map(|caller| {
                let redis = redis.clone();
                let key = format!("counter:{version:?}:{caller}");
                actix::spawn(async move {
                    for expected in 1..=INCRS {
                        let value = redis.incr(&key).await.unwrap();
                        assert_eq!(value, expected, "{key}: a reply out of sequence");
                    }
                    // Each caller's key holds exactly its own increments.
                    redis.get(&key).await.unwrap()
                })
            });
            for value in futures::future::join_all(callers).await {
                assert_eq!(value.unwrap(), Some(Bytes::from(INCRS.to_string())));
            }
            let status = redis.pool().status().await.unwrap();
            assert_eq!(status.counters.created, 1, "all over one connection");
            redis.pool().close().await;
        }
    })
    .await;
}

#[actix::test]
async fn a_four_mebibyte_value_round_trips() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    within("big value", async {
        for version in [RespVersion::Resp3, RespVersion::Resp2] {
            let redis = client(&server, version).await;
            let big: Bytes = (0..4 * 1024 * 1024)
                .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            redis.set("big", &big).await.unwrap();
            // Something small behind it in the same pipeline still comes back right.
            let (value, pong) = futures::join!(redis.get("big"), redis.ping());
            pong.unwrap();
            assert!(
                value.unwrap() == Some(big.clone()),
                "the value came back changed"
            );
            redis.pool().close().await;
        }
    })
    .await;
}

#[actix::test]
async fn a_reply_over_the_bulk_limit_closes_only_that_connection() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    within("bulk limit", async {
        let limits = RespLimits::default().max_bulk_length(1024 * 1024);
        let pool = start_pool(&server, connector(RespVersion::Resp3), limits, 1).await;
        let redis = Redis::new(pool, server.authority());
        let two_mib = "x".repeat(2 * 1024 * 1024);
        assert_eq!(server.command(&["SET", "big", &two_mib]), "+OK\r\n");

        // A command with an argument over the limit is refused before it is written;
        // the connection is fine.
        let refused = redis.set("big2", two_mib.as_str()).await.unwrap_err();
        assert!(matches!(refused, RedisError::Call(CallError::Encode(_))), "{refused}");
        redis.ping().await.unwrap();

        // A reply over the limit closes the connection with a typed decode error.
        let error = redis.get("big").await.unwrap_err();
        let RedisError::Call(CallError::Closed(CloseReason::Decode(source))) = &error else {
            panic!("{error:?}");
        };
        let source = source.downcast_ref::<RespError>().expect("a RespError");
        assert!(
            matches!(source, RespError::BulkTooLong { length, max: 1_048_576 } if *length == 2 * 1024 * 1024),
            "{source:?}"
        );
        // The pool replaces it; the next commands work.
        redis.ping().await.unwrap();
        assert_eq!(redis.get("missing").await.unwrap(), None);
        let status = redis.pool().status().await.unwrap();
        assert_eq!(status.counters.created, 2, "one replacement");
    })
    .await;
}

#[actix::test]
async fn the_handshake_names_the_client_and_selects_the_database() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    within("handshake", async {
        for version in [RespVersion::Resp3, RespVersion::Resp2] {
            let connector = connector(version)
                .client_name(format!("switchboard-{version:?}"))
                .database(3);
            let pool = start_pool(&server, connector, RespLimits::default(), 1).await;
            let redis = Redis::new(pool, server.authority());
            let info = redis
                .command(Command::new("CLIENT").arg("INFO"))
                .await
                .unwrap();
            let info = String::from_utf8_lossy(info.as_bytes().unwrap()).into_owned();
            assert!(
                info.contains(&format!("name=switchboard-{version:?} ")),
                "{info}"
            );
            assert!(info.contains(" db=3 "), "{info}");
            redis.pool().close().await;
        }
    })
    .await;
}

fn assert_auth_failure(error: &ConnectError) {
    let ConnectError::Handshake { layer, source, .. } = error else {
        panic!("not a handshake error: {error:?}");
    };
    assert_eq!(*layer, "resp");
    let source = source
        .downcast_ref::<HandshakeError>()
        .expect("a HandshakeError");
    assert!(matches!(source, HandshakeError::Auth(_)), "{source:?}");
    assert!(
        error.to_string().contains("authentication failed"),
        "{error}"
    );
}

#[actix::test]
async fn refused_credentials_fail_the_connect_with_a_clear_error() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    within("refused credentials", async {
        // RESP2: `AUTH <password>` to a server without one is an error in redis 7.
        let resp2 = connector(RespVersion::Resp2).password("wrong");
        let error = resp2.connect(&server.authority()).await.unwrap_err();
        assert_auth_failure(&error);
        assert!(
            error.to_string().contains("without any password"),
            "{error}"
        );

        // RESP3: `HELLO 3 AUTH <user> <password>` for a user that does not exist.
        let resp3 = connector(RespVersion::Auto)
            .username("nobody")
            .password("wrong");
        let error = resp3.connect(&server.authority()).await.unwrap_err();
        assert_auth_failure(&error);
        assert!(error.to_string().contains("WRONGPASS"), "{error}");

        // Through a pool: building it fails with that error, not a bare timeout.
        let built = Pool::builder(resp3, RespProtocol::new())
            .config(pool_config(1))
            .authority(server.authority())
            .build()
            .await;
        match built {
            Err(PoolError::Connect(error)) | Err(PoolError::Down { error, .. }) => {
                assert_auth_failure(&error)
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("the pool connected with a wrong password"),
        }
    })
    .await;
}

async fn next_push(pushes: &mut mpsc::UnboundedReceiver<Pushed<RespProtocol>>) -> RespPush {
    tokio::time::timeout(Duration::from_secs(10), pushes.recv())
        .await
        .expect("a push within 10 s")
        .expect("the collector is alive")
        .push
}

#[actix::test]
async fn a_subscribed_connection_receives_messages_as_pushes_between_its_replies() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    within("pub/sub", async {
        for version in [RespVersion::Resp3, RespVersion::Resp2] {
            let (collector, mut pushes) = forward();
            let pool = Pool::builder(connector(version), RespProtocol::new())
                .config(pool_config(2))
                .pushes(collector)
                .authority(server.authority())
                .build()
                .await
                .unwrap();
            let publisher = Redis::new(pool.clone(), server.authority());
            // A subscribed connection is nobody else's: check one out.
            let lease = pool.checkout(&server.authority()).await.unwrap();

            let confirmed = lease.call(Command::subscribe("news")).await.unwrap();
            let expected = [
                Value::Bulk(Bytes::from_static(b"subscribe")),
                Value::Bulk(Bytes::from_static(b"news")),
                Value::Integer(1),
            ];
            assert_eq!(confirmed.as_slice(), Some(&expected[..]));
            let confirmed = lease.call(Command::psubscribe("n*")).await.unwrap();
            assert_eq!(confirmed.as_slice().map(<[Value]>::len), Some(3));

            assert_eq!(publisher.publish("news", "first").await.unwrap(), 2);
            let mut received = [next_push(&mut pushes).await, next_push(&mut pushes).await];
            received.sort_by_key(|push| push.pattern.is_some());
            assert_eq!(received[0], RespPush::message("news", "first"));
            assert_eq!(received[1], RespPush::pmessage("n*", "news", "first"));

            // Replies still reach their calls while messages arrive between them.
            let pong = lease.call(Command::ping()).await.unwrap();
            match version {
                RespVersion::Resp2 => assert_eq!(pong.as_slice().map(<[Value]>::len), Some(2)),
                _ => assert_eq!(pong, Value::Simple(Bytes::from_static(b"PONG"))),
            }
            let refused = lease
                .call(Command::new("SUBSCRIBE").arg("a").arg("b"))
                .await
                .unwrap_err();
            assert!(matches!(refused, CallError::Encode(_)), "{refused}");

            lease.call(Command::unsubscribe("news")).await.unwrap();
            let last = lease.call(Command::punsubscribe("n*")).await.unwrap();
            assert_eq!(last.as_slice().unwrap()[2], Value::Integer(0));
            assert_eq!(publisher.publish("news", "second").await.unwrap(), 0);
            // Out of subscribed mode the connection is an ordinary one again.
            assert_eq!(
                lease.call(Command::ping()).await.unwrap(),
                Value::Simple(Bytes::from_static(b"PONG"))
            );
            assert!(pushes.try_recv().is_err(), "no push after unsubscribing");
            let push_kinds_seen = received.iter().map(|p| p.kind.clone()).collect::<Vec<_>>();
            assert_eq!(push_kinds_seen, [PushKind::Message, PushKind::PMessage]);
            drop(lease);
            pool.close().await;
        }
    })
    .await;
}
