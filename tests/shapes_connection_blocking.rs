//! Traffic shape: blocking commands on an in-order protocol (issue 15, item 10;
//! docs/reliability.md T10).
//!
//! On a pipelined protocol the heartbeat ping queues behind a blocked command, so the
//! link looks silent for as long as the command blocks. A call marked blocking (RESP
//! marks Redis's blocking commands itself; `Call::blocking` marks any other) is bounded
//! by its own timeout instead, and while one is outstanding silence does not close the
//! connection. Once none is outstanding, silence is judged again. Shapes: blocks of 2 s
//! to 100 s against a heartbeat timeout of 1 s, several blocking commands, a blocked
//! command the peer never answers; a scripted RESP peer over an in-memory pipe, in
//! virtual time (no redis needed).

use std::time::Duration;

use actix::Addr;
use futures::StreamExt;
use switchboard::protocol::resp::{Command, RespCodec, RespFrame, RespProtocol, Value};
use switchboard::{Call, CallError, CloseReason, Connection, ConnectionConfig, GetStats};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::time::Instant;
use tokio_util::codec::Framed;

const WAIT: Duration = Duration::from_secs(10);
const INTERVAL: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(1);

type Peer = Framed<DuplexStream, RespCodec>;

fn start(call_timeout: Duration) -> (Addr<Connection<DuplexStream, RespProtocol>>, Peer) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let config = ConnectionConfig::builder()
        .heartbeat_interval(INTERVAL)
        .heartbeat_timeout(TIMEOUT)
        .call_timeout(call_timeout)
        .build()
        .unwrap();
    let conn = Connection::builder(client, RespProtocol::new())
        .config(config)
        .start();
    (conn, Framed::new(server, RespCodec::default()))
}

/// The next command the peer receives, as its arguments.
async fn expect_command(peer: &mut Peer) -> Vec<String> {
    let frame = tokio::time::timeout(WAIT, peer.next())
        .await
        .expect("a command within the wait")
        .expect("the stream is open")
        .expect("a valid command");
    let RespFrame::Reply(Value::Array(args)) = frame else {
        panic!("not a command: {frame:?}");
    };
    args.into_iter()
        .map(|arg| String::from_utf8(arg.into_bytes().unwrap().to_vec()).unwrap())
        .collect()
}

/// Writes raw bytes; a connection that closed meanwhile shows in its calls' results.
async fn write(peer: &mut Peer, bytes: &[u8]) {
    let _ = peer.get_mut().write_all(bytes).await;
}

fn blocking_commands(block: Duration) -> Vec<Command> {
    let secs = block.as_secs();
    vec![
        Command::new("BLPOP").arg("list").arg(secs),
        Command::new("brpop").arg("a").arg("b").arg(secs),
        Command::new("BLMOVE")
            .arg("src")
            .arg("dst")
            .arg("LEFT")
            .arg("RIGHT")
            .arg(secs),
        Command::new("BZPOPMIN").arg("z").arg(secs),
        Command::new("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg("s")
            .arg("$"),
        Command::new("WAIT").arg(1).arg(block.as_millis() as u64),
    ]
}

#[actix::test]
async fn a_blocking_command_longer_than_the_heartbeat_timeout_succeeds() {
    tokio::time::pause();
    for block in [
        Duration::from_secs(2),
        Duration::from_secs(10),
        Duration::from_secs(100),
    ] {
        for command in blocking_commands(block) {
            let name = String::from_utf8_lossy(command.name()).into_owned();
            let shape = format!("{name} blocking {block:?}, heartbeat timeout {TIMEOUT:?}");
            let (conn, mut peer) = start(block * 2);
            let start = Instant::now();
            let blocked = actix_rt::spawn(conn.send(Call::new(command)));
            let received = expect_command(&mut peer).await;
            assert_eq!(received[0], name, "{shape}");
            // The peer is blocked: whatever else arrives (a heartbeat PING) waits.
            tokio::time::sleep(block).await;
            write(&mut peer, b"*2\r\n$4\r\nlist\r\n$1\r\nx\r\n").await;
            let result = tokio::time::timeout(WAIT, blocked)
                .await
                .unwrap_or_else(|_| panic!("{shape}: no answer"))
                .unwrap()
                .unwrap();
            assert!(
                result.is_ok(),
                "{shape}: {result:?} after {:?}",
                start.elapsed()
            );
            // Still open and usable, the pings queued meanwhile answered in order.
            let get = actix_rt::spawn(conn.send(Call::new(Command::get("k"))));
            loop {
                let next = expect_command(&mut peer).await;
                if next[0] == "PING" {
                    write(&mut peer, b"+PONG\r\n").await;
                    continue;
                }
                assert_eq!(next, ["GET", "k"], "{shape}");
                write(&mut peer, b"$1\r\nv\r\n").await;
                break;
            }
            let got = tokio::time::timeout(WAIT, get)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert!(got.is_ok(), "{shape}: {got:?}");
            let stats = conn.send(GetStats).await.unwrap();
            assert!(!stats.closing, "{shape}: {stats:?}");
        }
    }
}

#[actix::test]
async fn a_blocked_command_the_peer_never_answers_ends_by_its_own_timeout() {
    tokio::time::pause();
    let (conn, mut peer) = start(Duration::from_secs(30));
    let start = Instant::now();
    let blocked =
        actix_rt::spawn(conn.send(
            Call::new(Command::new("BLPOP").arg("list").arg(0)).timeout(Duration::from_secs(5)),
        ));
    expect_command(&mut peer).await;
    let result = tokio::time::timeout(WAIT, blocked).await.unwrap().unwrap();
    let took = start.elapsed();
    assert!(
        matches!(result, Ok(Err(CallError::Timeout { after })) if after == Duration::from_secs(5)),
        "{result:?}"
    );
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "{took:?}"
    );
    // Nothing blocking is outstanding now, and the peer has been silent for 5 s: the
    // heartbeat judges the link again, and a call on it fails typed, at once.
    tokio::time::sleep(TIMEOUT + INTERVAL).await;
    let after = conn.send(Call::new(Command::get("k"))).await;
    assert!(
        matches!(
            after,
            Ok(Err(CallError::Closed(CloseReason::HeartbeatTimeout { .. }))) | Err(_)
        ),
        "{after:?}"
    );
}

#[actix::test]
async fn a_call_its_caller_marks_blocking_is_not_cut_by_the_heartbeat() {
    tokio::time::pause();
    // A non-blocking command that the peer holds as long: the heartbeat closes the link
    // (the verdict the mark suspends).
    let (conn, mut peer) = start(Duration::from_secs(30));
    let held = actix_rt::spawn(conn.send(Call::new(Command::new("DEBUG").arg("SLEEP").arg(3))));
    expect_command(&mut peer).await;
    let result = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert!(
        matches!(
            result,
            Ok(Err(CallError::Closed(CloseReason::HeartbeatTimeout { .. })))
        ),
        "{result:?}"
    );

    // The same command marked blocking by the caller succeeds.
    let (conn, mut peer) = start(Duration::from_secs(30));
    let held =
        actix_rt::spawn(conn.send(Call::new(Command::new("DEBUG").arg("SLEEP").arg(3)).blocking()));
    expect_command(&mut peer).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    write(&mut peer, b"+OK\r\n").await;
    let result = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert!(matches!(result, Ok(Ok(Value::Simple(_)))), "{result:?}");
}

#[test]
fn resp_knows_which_commands_block() {
    for command in blocking_commands(Duration::from_secs(1)) {
        assert!(command.is_blocking(), "{command:?}");
    }
    for command in [
        Command::new("BRPOPLPUSH").arg("a").arg("b").arg(0),
        Command::new("BLMPOP").arg(0).arg(1).arg("l").arg("LEFT"),
        Command::new("bzpopmax").arg("z").arg(0),
        Command::new("BZMPOP").arg(0).arg(1).arg("z").arg("MIN"),
        Command::new("WAITAOF").arg(1).arg(0).arg(0),
        Command::new("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("block")
            .arg(0)
            .arg("STREAMS")
            .arg("s")
            .arg(">"),
    ] {
        assert!(command.is_blocking(), "{command:?}");
    }
    for command in [
        Command::get("k"),
        Command::new("LPOP").arg("list"),
        Command::new("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg("s")
            .arg("0"),
        // A stream named BLOCK is not the BLOCK option.
        Command::new("XREAD").arg("STREAMS").arg("BLOCK").arg("0"),
        Command::new("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("STREAMS")
            .arg("BLOCK")
            .arg(">"),
    ] {
        assert!(!command.is_blocking(), "{command:?}");
    }
}
