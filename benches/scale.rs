//! Scale: what N idle connections with heartbeats cost, and how fast a pool of them
//! notices a dead peer and fills up again after a restart.
//!
//! For each N in [`SIZES`] (1,000, 5,000 and 10,000) two clients open N idle TCP
//! connections to the same kind of server, with a heartbeat every second:
//!
//! - `switchboard`: a [`Pool`] with `min_idle = max_size = N` of Connection actors
//!   speaking `frame`; heartbeat interval 1 s, timeout 3 s; no health checks, idle
//!   expiry or lifetime (the heartbeat is the only traffic); `backoff_max` 1 s.
//! - `raw-tokio`: the baseline, N tokio tasks, each owning a `Framed<TcpStream,
//!   FrameCodec>` and sending a ping after a second of silence, closing after three:
//!   what a hand-written client costs.
//!
//! Every measurement runs in fresh processes: the bench re-runs its own executable
//! as the server (a switchboard `Listener` + `ServerBroker`, default connection
//! settings, so the client's pings keep it from pinging back) and as the client,
//! so each side needs only N descriptors (the soft `RLIMIT_NOFILE` is raised to the
//! hard one) and resident memory is not blurred by an earlier run's heap. The
//! client reports each step on stdout (`MARK <step> key=value ...`) and waits for an
//! `ok`; before answering, this process samples both children's resident memory
//! (`/proc/<pid>/statm`) and CPU time (`/proc/<pid>/stat`). From those samples:
//!
//! - **memory per connection**: resident memory when idle after the N connections
//!   are open and settled, minus resident memory before the first connect, over N;
//! - **heartbeat CPU**: CPU time (user + system) over wall time during an idle
//!   window, in percent of one core: with nothing else to do, all of it is what
//!   heartbeats (and the pool's upkeep) cost;
//! - **time to open all**: from starting the pool (or spawning the tasks) until N
//!   connections are up; `ops_per_sec` of these rows is N over that time;
//! - **heartbeat round trip**: each connection's last round trip at the window's
//!   end (N samples), p50 and p99.
//!
//! Then, for `switchboard` only, recovery:
//!
//! - **blackhole**: the server process is stopped (`SIGSTOP`): its sockets stay
//!   open and the kernel keeps acknowledging, but nothing answers, a half-open peer
//!   for every connection at once. Reported: the time from the stop until each
//!   connection closed with `HeartbeatTimeout`, p50 and max, against
//!   `heartbeat_interval + heartbeat_timeout`;
//! - **restart**: the stopped server is killed, the pool empties, a new server
//!   starts on the same port; reported is the time from the new server being ready
//!   until the pool holds N connections again.
//!
//! Run with `cargo bench --bench scale -- --quick` (a 3 s idle window, recovery at
//! 1,000 and 10,000 connections; about 45 s) or without `--quick` (10 s
//! windows, recovery at every N). Prints a table and writes
//! `target/bench-results/scale.json`.

#[path = "../tests/reliability_support/fd_limit.rs"]
mod fd_limit;
mod support;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use actix::{Actor, Context, Handler};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::protocol::frame::{Frame, FrameCodec, FrameKind, FrameProtocol};
use switchboard::server::{Listener, ServerBroker, ServerConfig};
use switchboard::transport::TcpConnector;
use switchboard::{
    Authority, CloseReason, ConnectionConfig, ConnectionEvent, ConnectionId, Pool, PoolConfig,
    PoolHandle,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type BenchResult<T> = Result<T, Box<dyn Error>>;

/// Idle connections per measurement.
const SIZES: [usize; 3] = [1_000, 5_000, 10_000];
/// Sizes at which `--quick` measures recovery too.
const QUICK_RECOVERY: [usize; 2] = [1_000, 10_000];
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening all connections, or refilling the pool, may take before the
/// bench reports a failure instead of a number.
const FILL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long this process waits for a child's next line.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// Descriptors a process needs beside its connections.
const FD_SPARE: usize = 256;
/// The server's listen backlog (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;
/// The per-connection memory target of the issue, in bytes.
const TARGET_BYTES_PER_CONNECTION: f64 = 16.0 * 1024.0;

#[derive(Debug, Clone, Copy)]
struct Settings {
    quick: bool,
    /// Idle time after the last connect before the window starts, so that start-up
    /// buffers are returned and each connection has completed a heartbeat.
    settle: Duration,
    /// The idle window over which heartbeat CPU is measured.
    window: Duration,
}

impl Settings {
    fn from_args() -> Self {
        // cargo passes `--bench`; every argument but `--quick` is ignored.
        if std::env::args().skip(1).any(|arg| arg == "--quick") {
            Self {
                quick: true,
                settle: Duration::from_millis(2_500),
                window: Duration::from_secs(3),
            }
        } else {
            Self {
                quick: false,
                settle: Duration::from_secs(4),
                window: Duration::from_secs(10),
            }
        }
    }

    fn recovery_at(&self, n: usize) -> bool {
        !self.quick || QUICK_RECOVERY.contains(&n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Switchboard,
    RawTokio,
}

impl System {
    const ALL: [System; 2] = [System::Switchboard, System::RawTokio];

    fn name(self) -> &'static str {
        match self {
            System::Switchboard => "switchboard",
            System::RawTokio => "raw-tokio",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|system| system.name() == name)
    }
}

fn main() -> BenchResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--scale-server") => server::main(&args[1..]),
        Some("--scale-client") => client::main(&args[1..]),
        _ => orchestrate(Settings::from_args()),
    }
}

// ---------------------------------------------------------------------------------
// The orchestrating process: starts servers and clients, samples them, reports.
// ---------------------------------------------------------------------------------

/// One child process: its stdout as lines through a reader thread, its stdin.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: std_mpsc::Receiver<String>,
    role: String,
}

impl Proc {
    fn spawn(args: &[String]) -> BenchResult<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("child without stdin")?;
        let stdout = child.stdout.take().ok_or("child without stdout")?;
        // A bounded channel: the child writes a handful of lines per step.
        let (tx, lines) = std_mpsc::sync_channel(64);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            role: args.first().cloned().unwrap_or_default(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn next_line(&mut self) -> BenchResult<String> {
        match self.lines.recv_timeout(STEP_TIMEOUT) {
            Ok(line) => Ok(line),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("{}: no output for {STEP_TIMEOUT:?}", self.role).into())
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.wait()?;
                Err(format!("{} exited early: {status}", self.role).into())
            }
        }
    }

    fn send(&mut self, line: &str) -> BenchResult<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) -> BenchResult<()> {
        let pid = libc::pid_t::try_from(self.pid())?;
        // SAFETY: `kill` has no memory-safety preconditions; the pid is our child's,
        // which is not reaped before `Drop` (or `kill_and_wait`) waits for it.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    fn kill_and_wait(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_and_wait();
    }
}

/// Starts a server child on `port` (0: any) for `n` connections; returns it with
/// the port it listens on.
fn start_server(port: u16, n: usize) -> BenchResult<(Proc, u16)> {
    let mut server = Proc::spawn(&["--scale-server".to_owned(), port.to_string(), n.to_string()])?;
    loop {
        let line = server.next_line()?;
        if let Some(port) = line.strip_prefix("READY ") {
            return Ok((server, port.trim().parse()?));
        }
    }
}

/// Resident memory and CPU time of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    rss: u64,
    /// CPU time in user space and in the kernel.
    user: Duration,
    system: Duration,
}

impl Usage {
    fn of(pid: u32) -> BenchResult<Self> {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .ok_or("short /proc/pid/statm")?
            .parse()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name, which is in parentheses and may hold spaces:
        // state is field 3, utime and stime are fields 14 and 15.
        let after = stat.rsplit_once(')').ok_or("odd /proc/pid/stat")?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |at: usize| -> BenchResult<Duration> {
            let ticks: u64 = fields.get(at).ok_or("short /proc/pid/stat")?.parse()?;
            Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
        };
        Ok(Self {
            rss: pages * page_size(),
            user: ticks(11)?,
            system: ticks(12)?,
        })
    }
}

fn page_size() -> u64 {
    // SAFETY: `sysconf` has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn clock_ticks() -> f64 {
    // SAFETY: `sysconf` has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Both processes sampled at one client step.
#[derive(Debug, Clone)]
struct Mark {
    at: Instant,
    client: Usage,
    server: Usage,
    values: HashMap<String, f64>,
}

/// Parses `MARK <step> key=value ...`.
fn parse_mark(line: &str) -> Option<(String, HashMap<String, f64>)> {
    let mut words = line.strip_prefix("MARK ")?.split_whitespace();
    let step = words.next()?.to_owned();
    let values = words
        .filter_map(|word| {
            let (key, value) = word.split_once('=')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect();
    Some((step, values))
}

/// Runs one client against one server and returns the marks by step.
fn run_case(
    system: System,
    n: usize,
    settings: Settings,
    recovery: bool,
) -> BenchResult<HashMap<String, Mark>> {
    let (mut server, port) = start_server(0, n)?;
    let mut client = Proc::spawn(&[
        "--scale-client".to_owned(),
        system.name().to_owned(),
        n.to_string(),
        port.to_string(),
        settings.settle.as_millis().to_string(),
        settings.window.as_millis().to_string(),
        u8::from(recovery).to_string(),
    ])?;
    let mut marks = HashMap::new();
    loop {
        let line = client.next_line()?;
        let Some((step, values)) = parse_mark(&line) else {
            println!("  client: {line}");
            continue;
        };
        let mark = Mark {
            at: Instant::now(),
            client: Usage::of(client.pid())?,
            server: Usage::of(server.pid()).unwrap_or_default(),
            values,
        };
        marks.insert(step.clone(), mark);
        match step.as_str() {
            // A half-open peer for every connection at once.
            "blackhole" => server.signal(libc::SIGSTOP)?,
            "detected" => server.kill_and_wait(),
            "down" => (server, _) = start_server(port, n)?,
            "done" => {
                client.send("ok")?;
                let status = client.child.wait()?;
                if !status.success() {
                    return Err(format!("client exited with {status}").into());
                }
                return Ok(marks);
            }
            _ => {}
        }
        client.send("ok")?;
    }
}

/// What one case measured.
#[derive(Debug, Clone)]
struct Idle {
    system: System,
    n: usize,
    open_ms: f64,
    rss_per_conn: f64,
    server_rss_per_conn: f64,
    cpu_percent: f64,
    /// The kernel's part of `cpu_percent`.
    system_percent: f64,
    server_cpu_percent: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    rtt_samples: f64,
}

#[derive(Debug, Clone)]
struct Recovery {
    n: usize,
    detected: f64,
    by_heartbeat: f64,
    detect_p50_ms: f64,
    detect_p99_ms: f64,
    detect_max_ms: f64,
    over_bound: f64,
    down_ms: f64,
    restore_ms: f64,
    connect_failures: f64,
}

fn value(marks: &HashMap<String, Mark>, step: &str, key: &str) -> BenchResult<f64> {
    marks
        .get(step)
        .and_then(|mark| mark.values.get(key).copied())
        .ok_or_else(|| format!("no {key} at step {step}").into())
}

fn mark<'a>(marks: &'a HashMap<String, Mark>, step: &str) -> BenchResult<&'a Mark> {
    marks
        .get(step)
        .ok_or_else(|| format!("the client never reached {step}").into())
}

fn idle_figures(system: System, n: usize, marks: &HashMap<String, Mark>) -> BenchResult<Idle> {
    let base = mark(marks, "base")?;
    let start = mark(marks, "window-start")?;
    let end = mark(marks, "window-end")?;
    let wall = (end.at - start.at).as_secs_f64();
    let percent = |from: Usage, to: Usage| {
        100.0 * ((to.user + to.system) - (from.user + from.system)).as_secs_f64() / wall
    };
    let kernel = |from: Usage, to: Usage| 100.0 * (to.system - from.system).as_secs_f64() / wall;
    let per_conn = |from: u64, to: u64| (to as f64 - from as f64) / n as f64;
    Ok(Idle {
        system,
        n,
        open_ms: value(marks, "open", "ms")?,
        rss_per_conn: per_conn(base.client.rss, end.client.rss),
        server_rss_per_conn: per_conn(base.server.rss, end.server.rss),
        cpu_percent: percent(start.client, end.client),
        system_percent: kernel(start.client, end.client),
        server_cpu_percent: percent(start.server, end.server),
        rtt_p50_us: value(marks, "window-end", "rtt_p50_us")?,
        rtt_p99_us: value(marks, "window-end", "rtt_p99_us")?,
        rtt_samples: value(marks, "window-end", "rtt_samples")?,
    })
}

fn recovery_figures(n: usize, marks: &HashMap<String, Mark>) -> BenchResult<Recovery> {
    Ok(Recovery {
        n,
        detected: value(marks, "detected", "closed")?,
        by_heartbeat: value(marks, "detected", "heartbeat")?,
        detect_p50_ms: value(marks, "detected", "p50_ms")?,
        detect_p99_ms: value(marks, "detected", "p99_ms")?,
        detect_max_ms: value(marks, "detected", "max_ms")?,
        over_bound: value(marks, "detected", "over_bound")?,
        down_ms: value(marks, "down", "ms")?,
        restore_ms: value(marks, "restored", "ms")?,
        connect_failures: value(marks, "restored", "connect_failures")?,
    })
}

fn orchestrate(settings: Settings) -> BenchResult<()> {
    let hard = fd_limit::raise_to(u64::MAX);
    println!(
        "scale: N = {SIZES:?}, heartbeat {HEARTBEAT_INTERVAL:?} / timeout {HEARTBEAT_TIMEOUT:?}, \
         settle {:?}, idle window {:?}, fd limit {hard}",
        settings.settle, settings.window
    );
    let mut idle = Vec::new();
    let mut recovery = Vec::new();
    let mut notes = Vec::new();
    for n in SIZES {
        if (n + FD_SPARE) as u64 > hard {
            let note = format!("N = {n} skipped: the fd limit is {hard}");
            println!("{note}");
            notes.push(note);
            continue;
        }
        for system in System::ALL {
            let recover = system == System::Switchboard && settings.recovery_at(n);
            println!("{} with {n} connections ...", system.name());
            let marks = run_case(system, n, settings, recover)?;
            let figures = idle_figures(system, n, &marks)?;
            println!(
                "  open {:.0} ms, {:.0} B/conn, heartbeat CPU {:.2}%",
                figures.open_ms, figures.rss_per_conn, figures.cpu_percent
            );
            idle.push(figures);
            if recover {
                let figures = recovery_figures(n, &marks)?;
                println!(
                    "  blackhole detected in {:.0} ms (p50) / {:.0} ms (max); restored in {:.0} ms",
                    figures.detect_p50_ms, figures.detect_max_ms, figures.restore_ms
                );
                recovery.push(figures);
            }
        }
    }
    print_tables(&idle, &recovery);
    let path = support::results_path("scale");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = to_json(settings, &idle, &recovery, &notes);
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}

fn print_tables(idle: &[Idle], recovery: &[Recovery]) {
    println!();
    println!(
        "| N | system | open all ms | B/conn client | B/conn server | heartbeat CPU % (kernel) | server CPU % | RTT p50 µs | RTT p99 µs |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in idle {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} ({:.1}) | {:.1} | {:.0} | {:.0} |",
            row.n,
            row.system.name(),
            row.open_ms,
            row.rss_per_conn,
            row.server_rss_per_conn,
            row.cpu_percent,
            row.system_percent,
            row.server_cpu_percent,
            row.rtt_p50_us,
            row.rtt_p99_us
        );
    }
    if recovery.is_empty() {
        return;
    }
    let bound = (HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT).as_millis();
    println!();
    println!(
        "| N | closed by heartbeat | detect p50 ms | p99 ms | max ms | bound ms | over bound | pool empty after kill ms | restart to full ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in recovery {
        println!(
            "| {} | {:.0}/{:.0} | {:.0} | {:.0} | {:.0} | {bound} | {:.0} | {:.0} | {:.0} |",
            row.n,
            row.by_heartbeat,
            row.detected,
            row.detect_p50_ms,
            row.detect_p99_ms,
            row.detect_max_ms,
            row.over_bound,
            row.down_ms,
            row.restore_ms
        );
    }
}

fn to_json(settings: Settings, idle: &[Idle], recovery: &[Recovery], notes: &[String]) -> Value {
    let bound_ms = (HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT).as_secs_f64() * 1e3;
    let mut rows: Vec<Value> = idle
        .iter()
        .map(|row| {
            json!({
                "case": "idle",
                "system": row.system.name(),
                "concurrency": row.n,
                "ops_per_sec": row.n as f64 / (row.open_ms / 1e3),
                "p50_us": row.rtt_p50_us,
                "p99_us": row.rtt_p99_us,
                "rtt_samples": row.rtt_samples,
                "open_all_ms": row.open_ms,
                "rss_per_conn_bytes": row.rss_per_conn,
                "server_rss_per_conn_bytes": row.server_rss_per_conn,
                "heartbeat_cpu_percent": row.cpu_percent,
                "heartbeat_kernel_cpu_percent": row.system_percent,
                "server_cpu_percent": row.server_cpu_percent,
                "target_rss_per_conn_bytes": TARGET_BYTES_PER_CONNECTION,
            })
        })
        .collect();
    rows.extend(recovery.iter().flat_map(|row| {
        [
            json!({
                "case": "blackhole-detect",
                "system": "switchboard",
                "concurrency": row.n,
                "detected": row.detected,
                "closed_by_heartbeat": row.by_heartbeat,
                "detect_p50_ms": row.detect_p50_ms,
                "detect_p99_ms": row.detect_p99_ms,
                "detect_max_ms": row.detect_max_ms,
                "over_bound": row.over_bound,
                "bound_ms": bound_ms,
            }),
            json!({
                "case": "restart-to-capacity",
                "system": "switchboard",
                "concurrency": row.n,
                "empty_after_kill_ms": row.down_ms,
                "restore_ms": row.restore_ms,
                "connect_failures": row.connect_failures,
                "backoff_max_ms": BACKOFF_MAX.as_secs_f64() * 1e3,
            }),
        ]
    }));
    json!({
        "bench": "scale",
        "quick": settings.quick,
        "heartbeat_interval_ms": HEARTBEAT_INTERVAL.as_millis() as u64,
        "heartbeat_timeout_ms": HEARTBEAT_TIMEOUT.as_millis() as u64,
        "settle_ms": settings.settle.as_millis() as u64,
        "window_ms": settings.window.as_millis() as u64,
        "notes": notes,
        "rows": rows,
    })
}

// ---------------------------------------------------------------------------------
// The server child.
// ---------------------------------------------------------------------------------

mod server {
    use super::*;

    /// `--scale-server <port> <connections>`: a switchboard Listener on 127.0.0.1
    /// that prints `READY <port>` and serves until killed.
    pub(super) fn main(args: &[String]) -> BenchResult<()> {
        let port: u16 = args.first().ok_or("no port")?.parse()?;
        let n: usize = args.get(1).ok_or("no size")?.parse()?;
        fd_limit::raise_to((n + FD_SPARE) as u64);
        actix::System::new().block_on(async move {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
            socket.listen(BACKLOG)?;
            socket.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(socket.into())?;
            let port = listener.local_addr()?.port();
            let broker = ServerBroker::start(ServerConfig::default())?;
            let _listener = Listener::builder(listener, broker)
                .max_connections(n + FD_SPARE / 2)
                .start();
            println!("READY {port}");
            futures::future::pending::<BenchResult<()>>().await
        })
    }
}

// ---------------------------------------------------------------------------------
// The client child.
// ---------------------------------------------------------------------------------

mod client {
    use super::*;

    struct Options {
        system: System,
        n: usize,
        port: u16,
        settle: Duration,
        window: Duration,
        recovery: bool,
    }

    /// `--scale-client <system> <n> <port> <settle ms> <window ms> <recovery 0|1>`.
    pub(super) fn main(args: &[String]) -> BenchResult<()> {
        let arg = |i: usize| args.get(i).map(String::as_str).ok_or("too few arguments");
        let options = Options {
            system: System::parse(arg(0)?).ok_or("unknown system")?,
            n: arg(1)?.parse()?,
            port: arg(2)?.parse()?,
            settle: Duration::from_millis(arg(3)?.parse()?),
            window: Duration::from_millis(arg(4)?.parse()?),
            recovery: arg(5)? == "1",
        };
        fd_limit::raise_to((options.n + FD_SPARE) as u64);
        let acks = acks();
        actix::System::new().block_on(async move {
            let mut steps = Steps { acks };
            let result = match options.system {
                System::Switchboard => switchboard(&options, &mut steps).await,
                System::RawTokio => raw_tokio(&options, &mut steps).await,
            };
            if let Err(error) = &result {
                eprintln!("scale client ({}): {error}", options.system.name());
            }
            result.map_err(|error| error.to_string())
        })?;
        Ok(())
    }

    /// The orchestrator's `ok`s, read from stdin on a thread of their own.
    fn acks() -> tokio::sync::mpsc::Receiver<String> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    struct Steps {
        acks: tokio::sync::mpsc::Receiver<String>,
    }

    impl Steps {
        /// Reports a step and waits until the orchestrator sampled it (and did what
        /// the step asks for).
        async fn mark(&mut self, step: &str, values: &[(&str, f64)]) -> BenchResult<()> {
            let mut line = format!("MARK {step}");
            for (key, value) in values {
                line.push_str(&format!(" {key}={value}"));
            }
            println!("{line}");
            match tokio::time::timeout(STEP_TIMEOUT, self.acks.recv()).await {
                Ok(Some(ack)) if ack == "ok" => Ok(()),
                Ok(other) => Err(format!("unexpected answer to {step}: {other:?}").into()),
                Err(_) => Err(format!("no answer to {step}").into()),
            }
        }
    }

    /// Polls `done` every few milliseconds until it holds or `limit` passes.
    async fn wait_for(
        what: &str,
        limit: Duration,
        mut done: impl FnMut() -> bool,
    ) -> BenchResult<()> {
        let deadline = Instant::now() + limit;
        while !done() {
            if Instant::now() >= deadline {
                return Err(format!("{what}: not within {limit:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// The nearest-rank percentile, as a step's value.
    fn percentile(sorted: &[u64], quantile: f64) -> f64 {
        support::percentile(sorted, quantile) as f64
    }

    fn rtt_values(mut rtts_us: Vec<u64>) -> [(&'static str, f64); 3] {
        rtts_us.sort_unstable();
        [
            ("rtt_p50_us", percentile(&rtts_us, 0.50)),
            ("rtt_p99_us", percentile(&rtts_us, 0.99)),
            ("rtt_samples", rtts_us.len() as f64),
        ]
    }

    // ----- switchboard ---------------------------------------------------------

    /// What the pool's connections told: how many connected, and each close.
    #[derive(Default)]
    struct EventLog {
        connected: usize,
        /// Each close: which connection, when, and whether by heartbeat timeout;
        /// bounded by `cap`.
        closed: Vec<(ConnectionId, Instant, bool)>,
        cap: usize,
    }

    struct Events(Rc<RefCell<EventLog>>);

    impl Actor for Events {
        type Context = Context<Self>;
    }

    impl Handler<ConnectionEvent> for Events {
        type Result = ();

        fn handle(&mut self, event: ConnectionEvent, _: &mut Context<Self>) {
            let mut log = self.0.borrow_mut();
            match event {
                ConnectionEvent::Connected { .. } => log.connected += 1,
                ConnectionEvent::Closed { id, reason } if log.closed.len() < log.cap => {
                    let heartbeat = matches!(reason, CloseReason::HeartbeatTimeout { .. });
                    log.closed.push((id, Instant::now(), heartbeat));
                }
                _ => {}
            }
        }
    }

    async fn members(
        pool: &PoolHandle<TcpConnector, FrameProtocol>,
        authority: &Authority,
    ) -> BenchResult<switchboard::pool::AuthorityStatus> {
        let status = pool.status().await?;
        status
            .authority(authority)
            .cloned()
            .ok_or_else(|| "the pool does not know the authority".into())
    }

    async fn switchboard(options: &Options, steps: &mut Steps) -> BenchResult<()> {
        let n = options.n;
        let authority = Authority::tcp("127.0.0.1", options.port);
        let log = Rc::new(RefCell::new(EventLog {
            cap: 4 * n,
            ..EventLog::default()
        }));
        let events = Events(log.clone()).start();
        steps.mark("base", &[]).await?;

        let started = Instant::now();
        let pool = Pool::builder(
            TcpConnector::new().connect_timeout(CONNECT_TIMEOUT),
            FrameProtocol::default(),
        )
        .config(
            PoolConfig::builder()
                .min_idle(n)
                .max_size(n)
                .max_connections(n)
                .connect_timeout(CONNECT_TIMEOUT)
                .test_on_checkout_after(None)
                .health_check_interval(None)
                .idle_timeout(None)
                .max_lifetime(None)
                .backoff_max(BACKOFF_MAX)
                .build()?,
        )
        .connection(
            ConnectionConfig::builder()
                .heartbeat_interval(HEARTBEAT_INTERVAL)
                .heartbeat_timeout(HEARTBEAT_TIMEOUT)
                .build()?,
        )
        .events(events.recipient())
        .authority(authority.clone())
        .start();
        wait_for("open all", FILL_TIMEOUT, || log.borrow().connected >= n).await?;
        let open_ms = started.elapsed().as_secs_f64() * 1e3;
        let failures = pool.status().await?.counters.connect_failures as f64;
        steps
            .mark("open", &[("ms", open_ms), ("connect_failures", failures)])
            .await?;

        tokio::time::sleep(options.settle).await;
        steps.mark("window-start", &[]).await?;
        tokio::time::sleep(options.window).await;
        let status = members(&pool, &authority).await?;
        let rtts = status
            .connections
            .iter()
            .filter_map(|member| member.rtt)
            .map(|rtt| rtt.as_micros() as u64)
            .collect();
        let mut values = rtt_values(rtts).to_vec();
        values.push(("open", status.size as f64));
        steps.mark("window-end", &values).await?;

        if options.recovery {
            recover(options, steps, &pool, &authority, &log, &status).await?;
        }
        steps.mark("done", &[]).await
    }

    /// Polls the pool's size at `authority` every few milliseconds until `done` holds,
    /// for at most [`FILL_TIMEOUT`].
    async fn until_size(
        pool: &PoolHandle<TcpConnector, FrameProtocol>,
        authority: &Authority,
        what: &str,
        done: impl Fn(usize) -> bool,
    ) -> BenchResult<()> {
        let deadline = Instant::now() + FILL_TIMEOUT;
        while !done(members(pool, authority).await?.size) {
            if Instant::now() >= deadline {
                return Err(format!("{what}: not within {FILL_TIMEOUT:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn recover(
        options: &Options,
        steps: &mut Steps,
        pool: &PoolHandle<TcpConnector, FrameProtocol>,
        authority: &Authority,
        log: &Rc<RefCell<EventLog>>,
        before: &switchboard::pool::AuthorityStatus,
    ) -> BenchResult<()> {
        let n = options.n;
        let originals: HashSet<ConnectionId> =
            before.connections.iter().map(|member| member.id).collect();
        let closed_before = log.borrow().closed.len();

        // The orchestrator stops the server before it answers.
        steps.mark("blackhole", &[]).await?;
        let stopped = Instant::now();
        // Long enough to measure a tail well past the bound rather than fail on it.
        let bound = 8 * (HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT);
        let gone = |log: &EventLog| {
            log.closed[closed_before..]
                .iter()
                .filter(|(id, _, _)| originals.contains(id))
                .count()
        };
        wait_for("blackhole detected", bound, || {
            gone(&log.borrow()) >= originals.len()
        })
        .await?;
        let (mut detect_ms, by_heartbeat) = {
            let log = log.borrow();
            let mut by_heartbeat = 0;
            let mut detect_ms = Vec::new();
            for (id, at, heartbeat) in &log.closed[closed_before..] {
                if originals.contains(id) {
                    by_heartbeat += u64::from(*heartbeat);
                    detect_ms.push((*at - stopped).as_millis() as u64);
                }
            }
            (detect_ms, by_heartbeat)
        };
        detect_ms.sort_unstable();
        let bound_ms = (HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT).as_millis() as u64;
        let over_bound = detect_ms.iter().filter(|&&ms| ms > bound_ms).count();
        steps
            .mark(
                "detected",
                &[
                    ("closed", detect_ms.len() as f64),
                    ("heartbeat", by_heartbeat as f64),
                    ("p50_ms", percentile(&detect_ms, 0.5)),
                    ("p99_ms", percentile(&detect_ms, 0.99)),
                    ("max_ms", percentile(&detect_ms, 1.0)),
                    ("over_bound", over_bound as f64),
                ],
            )
            .await?;

        // The orchestrator killed the server: every connection, including those the
        // pool opened into the stopped server's backlog meanwhile, is reset.
        let killed = Instant::now();
        until_size(pool, authority, "empty after the kill", |size| size == 0).await?;
        let down_ms = killed.elapsed().as_secs_f64() * 1e3;
        let failures_before = pool.status().await?.counters.connect_failures;
        // The orchestrator answers once a new server listens on the same port.
        steps.mark("down", &[("ms", down_ms)]).await?;
        let restarted = Instant::now();
        until_size(pool, authority, "refilled after the restart", |size| {
            size >= n
        })
        .await?;
        let restore_ms = restarted.elapsed().as_secs_f64() * 1e3;
        let failures = pool.status().await?.counters.connect_failures - failures_before;
        steps
            .mark(
                "restored",
                &[("ms", restore_ms), ("connect_failures", failures as f64)],
            )
            .await
    }

    // ----- raw tokio -----------------------------------------------------------

    /// What the baseline's tasks share (one thread, so plain cells).
    struct Shared {
        connected: Cell<usize>,
        failed: Cell<usize>,
        /// Each connection's last heartbeat round trip, in µs.
        rtt_us: RefCell<Vec<Option<u64>>>,
    }

    async fn raw_tokio(options: &Options, steps: &mut Steps) -> BenchResult<()> {
        let n = options.n;
        let addr = SocketAddr::from(([127, 0, 0, 1], options.port));
        let shared = Rc::new(Shared {
            connected: Cell::new(0),
            failed: Cell::new(0),
            rtt_us: RefCell::new(vec![None; n]),
        });
        steps.mark("base", &[]).await?;

        let started = Instant::now();
        for index in 0..n {
            actix_rt::spawn(raw_connection(index, addr, shared.clone()));
        }
        wait_for("open all", FILL_TIMEOUT, || {
            shared.connected.get() + shared.failed.get() >= n
        })
        .await?;
        if shared.failed.get() > 0 {
            return Err(format!("{} of {n} connects failed", shared.failed.get()).into());
        }
        let open_ms = started.elapsed().as_secs_f64() * 1e3;
        steps
            .mark("open", &[("ms", open_ms), ("connect_failures", 0.0)])
            .await?;

        tokio::time::sleep(options.settle).await;
        steps.mark("window-start", &[]).await?;
        tokio::time::sleep(options.window).await;
        let rtts = shared.rtt_us.borrow().iter().flatten().copied().collect();
        let mut values = rtt_values(rtts).to_vec();
        values.push(("open", shared.connected.get() as f64));
        steps.mark("window-end", &values).await?;
        steps.mark("done", &[]).await
    }

    /// One baseline connection: ping after an interval of silence, close after a
    /// timeout of it, record each round trip.
    async fn raw_connection(index: usize, addr: SocketAddr, shared: Rc<Shared>) {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            _ => {
                shared.failed.set(shared.failed.get() + 1);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        shared.connected.set(shared.connected.get() + 1);
        let mut framed = Framed::new(stream, FrameCodec::default());
        let mut last_read = Instant::now();
        let mut ping: Option<(u64, Instant)> = None;
        let mut next_id = 0;
        loop {
            let deadline = match ping {
                Some(_) => last_read + HEARTBEAT_TIMEOUT,
                None => last_read + HEARTBEAT_INTERVAL,
            };
            tokio::select! {
                frame = framed.next() => match frame {
                    Some(Ok(frame)) => {
                        let now = Instant::now();
                        last_read = now;
                        if let (FrameKind::Pong, Some((id, sent))) = (frame.kind, ping) {
                            if frame.id == id {
                                let rtt = (now - sent).as_micros() as u64;
                                shared.rtt_us.borrow_mut()[index] = Some(rtt);
                                ping = None;
                            }
                        }
                    }
                    _ => break,
                },
                () = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    if now - last_read >= HEARTBEAT_TIMEOUT {
                        break;
                    }
                    if ping.is_none() {
                        if framed.send(Frame::ping(next_id)).await.is_err() {
                            break;
                        }
                        ping = Some((next_id, now));
                        next_id += 1;
                    }
                }
            }
        }
        shared.connected.set(shared.connected.get() - 1);
    }
}
