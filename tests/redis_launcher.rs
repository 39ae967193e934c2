//! The `redis-server` launcher the RESP tests and the `redis` bench rely on: it starts a
//! server that answers, `command` talks to it, `kill` takes it away, and `restart`
//! brings it back on the same port. Skips (passes with a SKIPPED line) when
//! `redis-server` is not installed, unless `SWITCHBOARD_REQUIRE_REDIS` is set.

mod redis_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use redis_support::RedisServer;

#[test]
fn start_kill_restart_answers_on_the_same_port() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let port = server.port();
    assert_eq!(server.addr().port(), port);
    assert_eq!(
        server.authority(),
        switchboard::Authority::tcp("127.0.0.1", port)
    );
    assert_eq!(server.command(&["PING"]), "+PONG\r\n");
    assert_eq!(server.command(&["SET", "greeting", "hello"]), "+OK\r\n");
    assert_eq!(server.command(&["GET", "greeting"]), "$5\r\nhello\r\n");
    assert_eq!(server.command(&["GET", "missing"]), "$-1\r\n");
    // DEBUG is enabled: the tests that need a slow server use DEBUG SLEEP.
    assert_eq!(server.command(&["DEBUG", "SLEEP", "0"]), "+OK\r\n");

    // A client still connected when the server dies must not keep the port from
    // being reused: the pool's connections are in exactly this state.
    let mut client = TcpStream::connect(server.addr()).expect("connect");
    client.write_all(b"*1\r\n$4\r\nPING\r\n").expect("write");
    let mut pong = [0; 7];
    client.read_exact(&mut pong).expect("read");
    assert_eq!(&pong, b"+PONG\r\n");

    server.kill();
    assert!(
        TcpStream::connect_timeout(&server.addr(), Duration::from_secs(1)).is_err(),
        "nothing listens on the port after kill"
    );

    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.command(&["PING"]), "+PONG\r\n");
    // Persistence is off: the restarted server starts empty.
    assert_eq!(server.command(&["GET", "greeting"]), "$-1\r\n");
    drop(client);

    // And once more, restarting a running server.
    server.restart();
    assert_eq!(server.command(&["PING"]), "+PONG\r\n");
}

#[test]
fn command_returns_whole_array_replies_and_errors() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    server.command(&["RPUSH", "list", "a", "bc"]);
    assert_eq!(
        server.command(&["LRANGE", "list", "0", "-1"]),
        "*2\r\n$1\r\na\r\n$2\r\nbc\r\n"
    );
    assert!(server.command(&["NOSUCHCOMMAND"]).starts_with("-ERR"));
}

#[test]
fn dropping_the_server_stops_it_and_removes_its_dir() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let addr = server.addr();
    let dir = server.dir().to_path_buf();
    assert!(dir.join("redis.log").exists());
    drop(server);
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    assert!(!dir.exists());
}
