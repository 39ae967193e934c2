//! A real `redis-server` for the RESP tests and the `redis` bench, started on a free
//! loopback port in a temp dir of its own and killed when dropped.
//!
//! Everything here is synchronous (`std::process`, `std::net`), so it works from
//! `#[test]`, `#[actix::test]`, `#[tokio::test]` and a bench's plain `main` alike.
//!
//! When `redis-server` is not on `PATH`, [`RedisServer::start`] prints a SKIPPED line
//! and returns `None`, so a test can return early; with `SWITCHBOARD_REQUIRE_REDIS` set
//! (CI sets it) a missing server is a panic instead, so a test cannot pass by skipping.
//!
//! Used by tests as `mod redis_support;` and by `benches/redis.rs` through
//! `#[path = "../tests/redis_support/mod.rs"]`, so it depends on nothing but `std`
//! and the `switchboard` crate itself.

// Each test file (and the bench) compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a fresh server gets to answer PING before the start is a failure.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`RedisServer::restart`] waits for the old port to become free.
const PORT_FREE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`RedisServer::command`] waits for a reply.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a start is tried on a new port when the port was taken between
/// choosing it and redis binding it.
const START_ATTEMPTS: usize = 5;

/// The longest bulk reply [`RedisServer::command`] accepts (redis's own cap is 512 MiB).
const MAX_BULK: i64 = 64 * 1024 * 1024;

/// The environment variable that turns a missing `redis-server` into a panic.
const REQUIRE_VAR: &str = "SWITCHBOARD_REQUIRE_REDIS";

/// Makes temp dir names unique within one process (the pid makes them unique across).
static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A `redis-server` child process on `127.0.0.1:<port>`, with persistence off and the
/// `DEBUG` command enabled. Dropping it kills the process and removes its temp dir.
#[derive(Debug)]
pub struct RedisServer {
    /// The running process; `None` after [`kill`](Self::kill).
    child: Option<Child>,
    port: u16,
    /// The server's `--dir`, holding its `redis.log`.
    dir: PathBuf,
    binary: PathBuf,
}

/// Why one spawn did not become a ready server.
enum StartFailure {
    /// Someone else holds the port: worth trying again.
    PortTaken,
    /// Anything else, with a description and the log's tail.
    Failed(String),
}

impl RedisServer {
    /// Starts a fresh `redis-server` on a free loopback port and waits (up to 10 s)
    /// until it answers PING.
    ///
    /// Returns `None`, after printing a SKIPPED line to stderr, when `redis-server` is
    /// not on `PATH` and `SWITCHBOARD_REQUIRE_REDIS` is unset; panics when it is set,
    /// and when the server does not come up.
    pub fn start() -> Option<RedisServer> {
        let Some(binary) = find_on_path("redis-server") else {
            if std::env::var_os(REQUIRE_VAR).is_some() {
                panic!("redis-server not found on PATH, and {REQUIRE_VAR} is set");
            }
            eprintln!(
                "SKIPPED: redis-server not found (install redis-server; \
                 CI sets {REQUIRE_VAR}=1)"
            );
            return None;
        };
        let dir = fresh_dir();
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            binary,
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(StartFailure::PortTaken) => {
                    last = format!("port {} was taken before redis bound it", server.port);
                }
                Err(StartFailure::Failed(why)) => panic!("redis-server did not start: {why}"),
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts: {last}");
    }

    /// The TCP port the server listens on (the same across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server as a switchboard [`Authority`](switchboard::Authority):
    /// `Authority::tcp("127.0.0.1", port)`.
    pub fn authority(&self) -> switchboard::Authority {
        switchboard::Authority::tcp("127.0.0.1", self.port)
    }

    /// The server's working directory (it holds `redis.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the process with SIGKILL (no shutdown, no goodbye to clients: their sockets
    /// are reset or closed by the kernel) and reaps it. Does nothing when it is not
    /// running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (killing the running one first, if
    /// any), once the port is free, and waits until the new process answers PING.
    /// The new server starts empty: persistence is off. Panics when it cannot.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + PORT_FREE_TIMEOUT;
        loop {
            // The port can still be held for a moment by a client's lingering socket
            // or, rarely, by someone who took it meanwhile: wait, bounded.
            let bindable = TcpListener::bind(self.addr()).is_ok();
            if bindable {
                match self.spawn() {
                    Ok(()) => return,
                    Err(StartFailure::PortTaken) => {}
                    Err(StartFailure::Failed(why)) => {
                        panic!("redis-server did not restart on port {}: {why}", self.port)
                    }
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server did not restart: port {} still taken after {:?}",
                    self.port, PORT_FREE_TIMEOUT
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one command (each argument a bulk string) over a new plain TCP connection
    /// and returns the complete raw reply as text, RESP type markers and `\r\n`s
    /// included: `command(&["PING"])` is `"+PONG\r\n"`, `command(&["GET", "k"])` is
    /// `"$1\r\nv\r\n"` or `"$-1\r\n"`, an error is `"-ERR ...\r\n"`, and an array
    /// reply holds all its elements. Useful for setup and for poking the server from
    /// the side (`CLIENT KILL TYPE normal`, `DEBUG SLEEP 1`, `FLUSHALL`).
    ///
    /// Blocks the calling thread (up to 30 s for the reply); panics on I/O errors and
    /// malformed replies, which in a test is the right failure.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to redis on {}: {e}", self.addr()));
        stream
            .set_read_timeout(Some(COMMAND_TIMEOUT))
            .expect("set read timeout");
        stream
            .write_all(&encode_command(args))
            .expect("write command to redis");
        let mut reader = BufReader::new(stream);
        let mut reply = Vec::new();
        read_reply(&mut reader, &mut reply)
            .unwrap_or_else(|e| panic!("reading redis reply to {args:?}: {e}"));
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Spawns `redis-server` on `self.port` and waits until it answers; on failure the
    /// child is reaped and `self.child` stays `None`.
    fn spawn(&mut self) -> Result<(), StartFailure> {
        // A fresh log per spawn, so an old "address in use" line does not mislead.
        let log = self.dir.join("redis.log");
        let _ = std::fs::remove_file(&log);
        let child = Command::new(&self.binary)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            // Tests need `DEBUG SLEEP` to make a slow server; 7.0 turns DEBUG off by
            // default (7.0.15 accepts this flag).
            .args(["--enable-debug-command", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| StartFailure::Failed(format!("spawn {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        match self.wait_ready() {
            Ok(()) => Ok(()),
            Err(failure) => {
                self.kill();
                Err(failure)
            }
        }
    }

    /// Polls until our own child answers PING, or it exits, or the time runs out.
    fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let pid = self.child.as_ref().map(Child::id).unwrap_or_default();
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                let tail = self.log_tail();
                if tail.contains("Address already in use") {
                    return Err(StartFailure::PortTaken);
                }
                return Err(StartFailure::Failed(format!(
                    "exited with {status} on port {}; log tail:\n{tail}",
                    self.port
                )));
            }
            // PONG alone could come from another server that took the port first;
            // `INFO server` names the process, so only our child counts as ready.
            if answers_ping(self.addr()) && serves_pid(self.addr(), pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::Failed(format!(
                    "no PONG from port {} within {:?}; log tail:\n{}",
                    self.port,
                    READY_TIMEOUT,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first executable file called `name` in a `PATH` directory.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A new, empty temp dir: `<tmp>/switchboard-redis-<pid>-<n>`.
fn fresh_dir() -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("switchboard-redis-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("create redis temp dir {}: {e}", dir.display()));
    dir
}

/// A loopback port that was free a moment ago (the OS picks it; we let it go so redis
/// can bind it, and retry if someone else is faster).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Whether a PING on a new connection gets `+PONG` within a second.
fn answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_err()
        || stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err()
    {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("+PONG")
}

/// Whether the server on `addr` says it is process `pid`.
fn serves_pid(addr: SocketAddr, pid: u32) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_err()
        || stream
            .write_all(&encode_command(&["INFO", "server"]))
            .is_err()
    {
        return false;
    }
    let mut reply = Vec::new();
    if read_reply(&mut BufReader::new(stream), &mut reply).is_err() {
        return false;
    }
    String::from_utf8_lossy(&reply).contains(&format!("process_id:{pid}\r\n"))
}

/// A RESP array of bulk strings.
fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one complete RESP2/RESP3 reply, appending its raw bytes to `out`.
fn read_reply(reader: &mut impl BufRead, out: &mut Vec<u8>) -> std::io::Result<()> {
    let malformed =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let start = out.len();
    if reader.read_until(b'\n', out)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a reply",
        ));
    }
    let line = String::from_utf8_lossy(&out[start..]).trim_end().to_owned();
    let (marker, rest) = line.split_at(line.chars().next().map_or(0, char::len_utf8));
    let count = || {
        rest.parse::<i64>()
            .map_err(|_| malformed("bad length in reply"))
    };
    match marker {
        // Simple string, error, integer, null, boolean, double, big number.
        "+" | "-" | ":" | "_" | "#" | "," | "(" => Ok(()),
        // Bulk string, bulk error, verbatim string: a length, then that many bytes.
        "$" | "!" | "=" => {
            let len = count()?;
            if len < 0 {
                return Ok(());
            }
            // Check the claimed length before allocating it.
            if len > MAX_BULK {
                return Err(malformed("bulk reply longer than this helper accepts"));
            }
            let mut body = vec![0; len as usize + 2];
            reader.read_exact(&mut body)?;
            out.extend_from_slice(&body);
            Ok(())
        }
        // Array, set, push: that many replies; a map or attribute: twice that many.
        "*" | "~" | ">" | "%" | "|" => {
            let len = count()?;
            let items = if matches!(marker, "%" | "|") {
                len * 2
            } else {
                len
            };
            for _ in 0..items.max(0) {
                read_reply(reader, out)?;
            }
            Ok(())
        }
        _ => Err(malformed("unknown RESP type marker")),
    }
}
