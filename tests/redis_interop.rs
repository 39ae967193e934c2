//! switchboard and the `redis` crate read what the other wrote: binary-safe values
//! both ways, counters from both sides, and the same bytes on the wire for a command.

mod redis_support;

use bytes::{Bytes, BytesMut};
use redis::AsyncCommands;
use redis_support::RedisServer;
use switchboard::protocol::resp::{
    Command, Redis, RespCodec, RespConnector, RespFrame, RespLimits, RespProtocol,
};
use switchboard::transport::TcpConnector;
use switchboard::Pool;
use tokio_util::codec::Encoder;

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
