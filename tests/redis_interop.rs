//! switchboard and the `redis` crate read what the other wrote: binary-safe values
//! both ways, counters from both sides, hashes (a RESP3 map or a RESP2 array to
//! switchboard), lists, pub/sub both ways, and the same bytes on the wire for a
//! command.

mod forward;
mod redis_support;

use forward::forward;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use redis::AsyncCommands;
use redis_support::RedisServer;
use switchboard::protocol::resp::{
    Command, Redis, RespCodec, RespConnector, RespFrame, RespLimits, RespProtocol, RespVersion,
    Value,
};
use switchboard::transport::TcpConnector;
use switchboard::{Broker, Pool};
use tokio_util::codec::Encoder;

/// Bounds every wait.
const WAIT: Duration = Duration::from_secs(15);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

/// A switchboard client speaking `version` to `server`.
fn switchboard_client(
    server: &RedisServer,
    version: RespVersion,
) -> Redis<RespConnector<TcpConnector>> {
    let connector = RespConnector::new(TcpConnector::new()).version(version);
    let pool = Pool::builder(connector, RespProtocol::new())
        .authority(server.authority())
        .start();
    Redis::new(pool, server.authority())
}

/// A redis-crate client for `server`.
fn redis_crate_client(server: &RedisServer) -> redis::Client {
    redis::Client::open(format!("redis://127.0.0.1:{}/", server.port())).unwrap()
}

fn every_byte() -> Vec<u8> {
    // All 256 byte values, CRLFs among them, twice.
    (0..=255u8)
        .chain(b"\r\n\r\n".iter().copied())
        .chain(0..=255u8)
        .collect()
}

#[actix::test]
async fn each_reads_what_the_other_wrote() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let pool = Pool::builder(RespConnector::new(TcpConnector::new()), RespProtocol::new())
        .authority(server.authority())
        .start();
    let ours = Redis::new(pool, server.authority());
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port())).unwrap();
    let mut theirs = client.get_multiplexed_async_connection().await.unwrap();

    let values = [every_byte(), Vec::new(), vec![b'x'; 1 << 20]];
    for (n, value) in values.iter().enumerate() {
        // Theirs writes, ours reads.
        let key = format!("theirs:{n}");
        let () = theirs.set(&key, value.as_slice()).await.unwrap();
        let read = ours.get(key.as_str()).await.unwrap();
        assert_eq!(read.as_deref(), Some(value.as_slice()), "value {n}");
        // Ours writes, theirs reads.
        let key = format!("ours:{n}");
        ours.set(key.as_str(), value.as_slice()).await.unwrap();
        let read: Vec<u8> = theirs.get(&key).await.unwrap();
        assert_eq!(&read, value, "value {n}");
    }

    // One counter, counted up from both sides.
    for round in 1..=50i64 {
        assert_eq!(ours.incr("counter").await.unwrap(), 2 * round - 1);
        let count: i64 = theirs.incr("counter", 1).await.unwrap();
        assert_eq!(count, 2 * round);
    }
}

#[test]
fn a_command_is_the_same_bytes_as_the_redis_crates() {
    let value = Bytes::from(every_byte());
    let cases = [
        (
            Command::set("key", value.clone()),
            redis::cmd("SET")
                .arg("key")
                .arg(&value[..])
                .get_packed_command(),
        ),
        (
            Command::get("key"),
            redis::cmd("GET").arg("key").get_packed_command(),
        ),
        (
            Command::new("HSET").arg("h").arg("f").arg(42),
            redis::cmd("HSET")
                .arg("h")
                .arg("f")
                .arg(42)
                .get_packed_command(),
        ),
        (
            Command::set("empty", ""),
            redis::cmd("SET").arg("empty").arg("").get_packed_command(),
        ),
    ];
    for (ours, theirs) in cases {
        let mut wire = BytesMut::new();
        RespCodec::new(RespLimits::default())
            .encode(RespFrame::Command(ours), &mut wire)
            .unwrap();
        assert_eq!(&wire[..], &theirs[..]);
    }
}

/// The field and value pairs of an `HGETALL` reply: a RESP3 map, or a RESP2 array of
/// fields and values in turn.
fn pairs(reply: Value, version: RespVersion) -> HashMap<Vec<u8>, Vec<u8>> {
    let bytes = |value: &Value| value.as_bytes().expect("a bulk string").to_vec();
    match (version, reply) {
        (RespVersion::Resp3, Value::Map(entries)) => entries
            .iter()
            .map(|(field, value)| (bytes(field), bytes(value)))
            .collect(),
        (RespVersion::Resp2, Value::Array(items)) => {
            assert_eq!(items.len() % 2, 0, "fields and values in turn");
            items
                .chunks(2)
                .map(|pair| (bytes(&pair[0]), bytes(&pair[1])))
                .collect()
        }
        (version, reply) => panic!("HGETALL over {version:?} answered {reply:?}"),
    }
}

#[actix::test]
async fn hashes_written_by_either_read_the_same_by_both() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = redis_crate_client(&server);
    let mut theirs = within("connect", client.get_multiplexed_async_connection())
        .await
        .unwrap();
    let fields: HashMap<Vec<u8>, Vec<u8>> = [
        (b"plain".to_vec(), b"value".to_vec()),
        (b"crlf\r\nfield".to_vec(), b"a\r\nb\r\n".to_vec()),
        (vec![0, 255, 13, 10], every_byte()),
        (b"empty".to_vec(), Vec::new()),
    ]
    .into_iter()
    .collect();

    for version in [RespVersion::Resp3, RespVersion::Resp2] {
        let ours = switchboard_client(&server, version);
        // Ours writes with a raw HSET, theirs reads.
        let key = format!("ours:{version:?}");
        let mut hset = Command::new("HSET").arg(key.as_str());
        for (field, value) in &fields {
            hset = hset.arg(field.as_slice()).arg(value.as_slice());
        }
        let added = within("HSET", ours.command(hset)).await.unwrap();
        assert_eq!(added.as_integer(), Some(fields.len() as i64));
        let read: HashMap<Vec<u8>, Vec<u8>> =
            within("hgetall", theirs.hgetall(&key)).await.unwrap();
        assert_eq!(read, fields, "{version:?}");

        // Theirs writes, ours reads: a map over RESP3, an array over RESP2.
        let key = format!("theirs:{version:?}");
        let items: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(field, value)| (field.as_slice(), value.as_slice()))
            .collect();
        let () = within("hset_multiple", theirs.hset_multiple(&key, &items))
            .await
            .unwrap();
        let reply = within(
            "HGETALL",
            ours.command(Command::new("HGETALL").arg(key.as_str())),
        )
        .await
        .unwrap();
        assert_eq!(pairs(reply, version), fields, "{version:?}");
        ours.pool().close().await;
    }
}

#[actix::test]
async fn lists_pushed_from_both_sides_keep_one_order() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let ours = switchboard_client(&server, RespVersion::Auto);
    let client = redis_crate_client(&server);
    let mut theirs = within("connect", client.get_multiplexed_async_connection())
        .await
        .unwrap();

    let mut expected = Vec::new();
    for n in 0..20u8 {
        let item = vec![n, b'\r', b'\n', 255 - n];
        if n % 2 == 0 {
            let length = within(
                "RPUSH",
                ours.command(Command::new("RPUSH").arg("list").arg(item.as_slice())),
            )
            .await
            .unwrap();
            assert_eq!(length.as_integer(), Some(i64::from(n) + 1));
        } else {
            let length: i64 = within("rpush", theirs.rpush("list", item.as_slice()))
                .await
                .unwrap();
            assert_eq!(length, i64::from(n) + 1);
        }
        expected.push(item);
    }

    let read: Vec<Vec<u8>> = within("lrange", theirs.lrange("list", 0, -1))
        .await
        .unwrap();
    assert_eq!(read, expected);
    let reply = within(
        "LRANGE",
        ours.command(Command::new("LRANGE").arg("list").arg(0).arg(-1)),
    )
    .await
    .unwrap();
    let read: Vec<Vec<u8>> = reply
        .as_slice()
        .expect("an array")
        .iter()
        .map(|item| item.as_bytes().expect("a bulk string").to_vec())
        .collect();
    assert_eq!(read, expected);
}

#[actix::test]
async fn the_redis_crates_publish_reaches_a_switchboard_subscriber() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let broker = Broker::builder(
        Pool::builder(RespConnector::new(TcpConnector::new()), RespProtocol::new()),
        server.authority(),
    )
    .start();
    let (subscriber, mut deliveries) = forward();
    within("subscribe", broker.subscribe("interop", subscriber))
        .await
        .expect("subscribed");

    let client = redis_crate_client(&server);
    let mut theirs = within("connect", client.get_multiplexed_async_connection())
        .await
        .unwrap();
    let payloads: Vec<Vec<u8>> = vec![
        b"first".to_vec(),
        every_byte(),
        Vec::new(),
        b"last".to_vec(),
    ];
    for payload in &payloads {
        // Subscribed before the first publish: each reaches exactly one subscriber.
        let receivers: i64 = within("publish", theirs.publish("interop", payload.as_slice()))
            .await
            .unwrap();
        assert_eq!(receivers, 1);
    }
    for payload in &payloads {
        let delivery = within("a delivery", deliveries.recv())
            .await
            .expect("subscribed");
        assert_eq!(&delivery.topic[..], b"interop");
        assert_eq!(&delivery.payload[..], &payload[..]);
    }
}

#[actix::test]
async fn a_switchboard_publish_reaches_a_redis_crate_subscriber() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = redis_crate_client(&server);
    let mut pubsub = within("pubsub", client.get_async_pubsub()).await.unwrap();
    within("subscribe", pubsub.subscribe("interop"))
        .await
        .unwrap();
    let mut messages = pubsub.into_on_message();

    let payloads: Vec<Vec<u8>> = vec![
        b"first".to_vec(),
        every_byte(),
        Vec::new(),
        b"last".to_vec(),
    ];
    for version in [RespVersion::Resp3, RespVersion::Resp2] {
        let ours = switchboard_client(&server, version);
        for payload in &payloads {
            let receivers = within("PUBLISH", ours.publish("interop", payload.as_slice()))
                .await
                .unwrap();
            assert_eq!(receivers, 1, "{version:?}");
        }
        for payload in &payloads {
            let message = within("a message", messages.next())
                .await
                .expect("subscribed");
            assert_eq!(message.get_channel_name(), "interop");
            assert_eq!(message.get_payload_bytes(), &payload[..], "{version:?}");
        }
        ours.pool().close().await;
    }
}
