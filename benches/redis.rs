//! GET and SET against a real `redis-server`: switchboard's RESP pool next to the
//! `redis` crate's multiplexed connection and `redis-benchmark`.
//!
//! One `redis-server` is started for the whole run (on a free loopback port, in a temp
//! dir, persistence off) by the launcher the RESP tests use. Before measuring, 1,000
//! keys (`key:000000000000` ... `key:000000000999`, 16 bytes each, the names
//! `redis-benchmark -r 1000` uses) are set to 64-byte values, so every GET hits. Each
//! call picks one of those keys; a SET writes a 64-byte value.
//!
//! Systems, at 1, 64 and 512 concurrent callers:
//!
//! - `switchboard`: the typed `Redis` client of `switchboard::protocol::resp` over a
//!   [`Pool`](switchboard::Pool) of RESP connections (RESP2, like the redis crate)
//!   with `max_size(1)`, so every call goes over ONE shared (multiplexed, pipelined)
//!   connection: each command takes it with `pool.shared(&authority)` and sends it a
//!   `Call`, as users of the client do;
//! - `redis-crate`: the `redis` crate's `MultiplexedConnection`, also ONE connection,
//!   cloned by the callers;
//! - `redis-benchmark`: the C tool shipped with redis (`redis-tools`), as an outside
//!   reference. Its rows are skipped with a note when it is not installed.
//!
//! Both in-process clients run in the same single-threaded actix System (a tokio
//! current-thread runtime: one core's worth of executor each, never both at once;
//! the redis crate's connection driver is a task on that same runtime). Callers are
//! local tasks that call in a loop: up to C requests in flight on one connection.
//!
//! **How concurrency maps to `redis-benchmark`.** It has no "C callers over one
//! connection": `-c` opens that many connections, and `-P` makes each connection send
//! `-P` requests at once and wait for all of them before sending the next batch. So:
//!
//! - `redis-benchmark -c1 -P<C>` is the closest to our shape (one connection, C
//!   requests in flight), but in lock-step batches, whereas our callers each send
//!   their next request as soon as their own reply arrives (a sliding window);
//! - `redis-benchmark -c<C> -P1` (C connections, one request each) is printed too, for
//!   reference: same number of requests in flight, but spread over C sockets.
//!
//! At C = 1 both are `-c1 -P1`, one row. Its latency percentiles are its own (per
//! request, from the batch's send to the reply) and read from its `--csv` output.
//!
//! Method: for each case (GET, SET) and concurrency, the systems run one after the
//! other; the whole sweep repeats 3 times (5 without `--quick`) and each row is the round with the
//! median ops/sec, so a noisy moment hits every system alike (the two in-process
//! clients swap places every other round). ops/sec counts the calls completed within
//! a fixed window after a warm-up; p50/p99 are per call, in µs. The ratio column is
//! a row's median ops/sec over the redis crate's; the summary also gives the
//! *paired* ratio, the median over rounds of switchboard / redis-crate within a
//! round (the two ran back to back), which a slow moment of the machine sways less.
//! `redis-benchmark` gets a request count sized from its previous run to last about
//! one window (its first, calibrating run doubles as its warm-up).
//!
//! Run with `cargo bench --bench redis -- --quick` (about 40 s: 0.2 s warm-up + 0.4 s
//! per measurement) or without `--quick` (2 s + 5 s, about 11 minutes). Prints a table
//! and writes `target/bench-results/redis.json` (the target dir follows
//! `CARGO_TARGET_DIR`). Without `redis-server` on `PATH` it prints a SKIPPED line and
//! exits successfully.

#[path = "../tests/redis_support/mod.rs"]
mod redis_support;

mod support;

use std::collections::HashMap;
use std::error::Error;
use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_support::RedisServer;
use support::{median, Measurement, Window};

/// Concurrent callers per measurement.
const CONCURRENCIES: [usize; 3] = [1, 64, 512];
/// Keys the calls are spread over (`redis-benchmark -r`).
const KEYS: usize = 1000;
/// Bytes of every value written (`redis-benchmark -d`).
const VALUE_BYTES: usize = 64;
/// How long callers may take to finish after a window closes before the bench gives
/// up (a lost reply would otherwise hang it).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `redis-benchmark` run may take at most.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// Where `redis-benchmark` is looked for when it is not on `PATH`.
const TOOL_FALLBACK: &str = "/usr/bin/redis-benchmark";
/// What the in-process clients run on, for the output.
const RUNTIME: &str = "single-threaded actix System (tokio current-thread), shared by both";

type BenchResult<T> = Result<T, Box<dyn Error>>;

/// The two operations measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Case {
    Get,
    Set,
}

impl Case {
    const ALL: [Case; 2] = [Case::Get, Case::Set];

    fn name(self) -> &'static str {
        match self {
            Case::Get => "GET",
            Case::Set => "SET",
        }
    }

    /// The `-t` test name of `redis-benchmark`, and the name its CSV reports.
    fn tool_test(self) -> &'static str {
        match self {
            Case::Get => "get",
            Case::Set => "set",
        }
    }
}

/// Who made the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum System {
    Switchboard,
    RedisCrate,
    /// `redis-benchmark -c<clients> -P<pipeline>`.
    Tool {
        clients: usize,
        pipeline: usize,
    },
}

impl System {
    fn name(self) -> String {
        match self {
            System::Switchboard => "switchboard".into(),
            System::RedisCrate => "redis-crate".into(),
            System::Tool { clients, pipeline } => {
                format!("redis-benchmark -c{clients} -P{pipeline}")
            }
        }
    }

    /// The systems measured at `concurrency`, in the order they run.
    fn at(concurrency: usize, with_tool: bool) -> Vec<System> {
        let mut systems = vec![System::Switchboard, System::RedisCrate];
        if with_tool {
            systems.push(System::Tool {
                clients: 1,
                pipeline: concurrency,
            });
            if concurrency > 1 {
                systems.push(System::Tool {
                    clients: concurrency,
                    pipeline: 1,
                });
            }
        }
        systems
    }
}

/// How long to warm up and measure each (case, system, concurrency, round).
#[derive(Debug, Clone, Copy)]
struct Settings {
    warm_up: Duration,
    measure: Duration,
    /// Times the whole sweep is repeated; rows report the median round.
    rounds: usize,
}

impl Settings {
    /// `--quick` selects short windows; every other argument (cargo passes `--bench`)
    /// is ignored.
    fn from_args() -> Self {
        if std::env::args().skip(1).any(|arg| arg == "--quick") {
            Self {
                warm_up: Duration::from_millis(200),
                measure: Duration::from_millis(400),
                rounds: 3,
            }
        } else {
            Self {
                warm_up: Duration::from_secs(2),
                measure: Duration::from_secs(5),
                rounds: 5,
            }
        }
    }
}

/// The key names and the value every call uses, made once so that no client pays
/// for formatting them.
struct Workload {
    keys: Vec<Bytes>,
    value: Bytes,
}

impl Workload {
    fn new() -> Self {
        Self {
            // 16 bytes, as `redis-benchmark -r` names its keys.
            keys: (0..KEYS)
                .map(|i| Bytes::from(format!("key:{i:012}")))
                .collect(),
            value: Bytes::from(vec![b'x'; VALUE_BYTES]),
        }
    }

    /// The key of a caller's `seq`-th call: callers walk the key space from
    /// different places, so concurrent calls touch different keys.
    fn key(&self, caller: usize, seq: u64) -> &Bytes {
        let index = (caller as u64 * 7919 + seq) % KEYS as u64;
        &self.keys[index as usize]
    }
}

/// One way of making a call. Each caller task owns one and calls it in a loop.
trait Caller: 'static {
    /// GETs `key` (checking that a `VALUE_BYTES` value comes back) or SETs it to
    /// `value` (checking for `OK`).
    async fn call(&mut self, case: Case, key: &Bytes, value: &Bytes) -> Result<(), String>;
}

/// One caller's loop: call until the window ends, recording the latency of every call
/// that completes inside it. It starts no call after `window.end`.
async fn drive(
    mut caller: impl Caller,
    case: Case,
    index: usize,
    workload: Rc<Workload>,
    window: Window,
) -> Result<Vec<u32>, String> {
    let mut latencies_us = Vec::new();
    for seq in 0.. {
        let key = workload.key(index, seq);
        let started = Instant::now();
        caller.call(case, key, &workload.value).await?;
        let completed = Instant::now();
        if window.counts(completed) {
            let micros = completed.duration_since(started).as_micros();
            latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
        if completed >= window.end {
            break;
        }
    }
    Ok(latencies_us)
}

/// Runs one measurement: one local task per caller on the current (single-threaded)
/// runtime; waits for all of them, bounded, and summarizes.
async fn measure<C: Caller>(
    callers: Vec<C>,
    case: Case,
    workload: &Rc<Workload>,
    settings: Settings,
) -> BenchResult<Measurement> {
    let window = Window::after_warm_up(settings.warm_up, settings.measure);
    let tasks: Vec<_> = callers
        .into_iter()
        .enumerate()
        .map(|(index, caller)| {
            tokio::task::spawn_local(drive(caller, case, index, workload.clone(), window))
        })
        .collect();
    let deadline = tokio::time::Instant::from_std(window.end + DRAIN_TIMEOUT);
    let finished = tokio::time::timeout_at(deadline, futures::future::join_all(tasks))
        .await
        .map_err(|_| format!("callers still running {DRAIN_TIMEOUT:?} after the window closed"))?;
    let mut latencies_us = Vec::new();
    for caller in finished {
        latencies_us.extend(caller??);
    }
    Ok(Measurement::from_samples(latencies_us, settings.measure))
}

/// The reply check shared by the clients: a GET returns the 64-byte value.
fn check_value(value: Option<&[u8]>) -> Result<(), String> {
    match value {
        Some(value) if value.len() == VALUE_BYTES => Ok(()),
        Some(value) => Err(format!(
            "GET returned {} bytes, not {VALUE_BYTES}",
            value.len()
        )),
        None => Err("GET found no value: the keys were set beforehand".into()),
    }
}

// ---------------------------------------------------------------------------------
// switchboard: one shared connection from a RESP pool.

mod switchboard_client {
    use std::time::Duration;

    use bytes::Bytes;
    use switchboard::protocol::resp::{Redis, RespConnector, RespProtocol, RespVersion};
    use switchboard::transport::TcpConnector;
    use switchboard::{Authority, Pool, PoolConfig};

    use super::{check_value, BenchResult, Caller, Case};

    /// The pool's connector: TCP (nodelay, as the redis crate sets it) with the RESP
    /// handshake.
    type Connector = RespConnector<TcpConnector>;

    /// The typed client over a pool that holds exactly one connection.
    pub(super) struct Client {
        redis: Redis<Connector>,
    }

    impl Client {
        /// Builds the pool (eagerly: its one connection is open when this returns) and
        /// the client.
        pub(super) async fn connect(authority: Authority) -> Result<Client, String> {
            let config = PoolConfig::builder()
                // ONE connection, shared by every caller, like the redis crate's
                // multiplexed connection.
                .min_idle(1)
                .max_size(1)
                // Never retire the connection in the middle of a measurement.
                .idle_timeout(None)
                .max_lifetime(None)
                .checkout_timeout(Duration::from_secs(5))
                .build()
                .map_err(|error| format!("pool config: {error}"))?;
            // RESP2, as the redis crate speaks by default: the same bytes on the wire.
            let connector = RespConnector::new(TcpConnector::new()).version(RespVersion::Resp2);
            let pool = Pool::builder(connector, RespProtocol::new())
                .config(config)
                .authority(authority.clone())
                .build()
                .await
                .map_err(|error| format!("switchboard pool: {error}"))?;
            Ok(Client {
                redis: Redis::new(pool, authority),
            })
        }

        /// `concurrency` callers, each with its own clone of the client (clones share
        /// the pool and so the connection).
        pub(super) async fn callers(
            &self,
            concurrency: usize,
        ) -> BenchResult<Vec<SwitchboardCaller>> {
            Ok((0..concurrency)
                .map(|_| SwitchboardCaller {
                    redis: self.redis.clone(),
                })
                .collect())
        }
    }

    /// A caller using the typed client: each command takes the authority's shared
    /// connection from the pool (`pool.shared`) and sends it a `Call`.
    pub(super) struct SwitchboardCaller {
        redis: Redis<Connector>,
    }

    impl Caller for SwitchboardCaller {
        async fn call(&mut self, case: Case, key: &Bytes, value: &Bytes) -> Result<(), String> {
            match case {
                Case::Get => {
                    let reply = self
                        .redis
                        .get(key)
                        .await
                        .map_err(|error| format!("switchboard GET: {error}"))?;
                    check_value(reply.as_deref())
                }
                Case::Set => self
                    .redis
                    .set(key, value)
                    .await
                    .map_err(|error| format!("switchboard SET: {error}")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// redis-crate: one MultiplexedConnection, cloned by every caller.

/// A caller with its own clone of the multiplexed connection (clones share it).
struct RedisCrateCaller {
    connection: redis::aio::MultiplexedConnection,
}

impl Caller for RedisCrateCaller {
    async fn call(&mut self, case: Case, key: &Bytes, value: &Bytes) -> Result<(), String> {
        match case {
            Case::Get => {
                let reply: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key[..])
                    .query_async(&mut self.connection)
                    .await
                    .map_err(|error| format!("redis crate GET: {error}"))?;
                check_value(reply.as_deref())
            }
            Case::Set => {
                let reply: String = redis::cmd("SET")
                    .arg(&key[..])
                    .arg(&value[..])
                    .query_async(&mut self.connection)
                    .await
                    .map_err(|error| format!("redis crate SET: {error}"))?;
                if reply == "OK" {
                    Ok(())
                } else {
                    Err(format!("redis crate SET replied {reply:?}"))
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// redis-benchmark: the C tool, run as a child process.

/// The `redis-benchmark` binary, if installed.
fn find_tool() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-benchmark"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let fallback = PathBuf::from(TOOL_FALLBACK);
        fallback.is_file().then_some(fallback)
    })
}

/// Runs `redis-benchmark` for `case` and returns its own figures, from its `--csv`
/// output: `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",
/// "p95_latency_ms","p99_latency_ms","max_latency_ms"` (redis 7.0).
fn run_tool(
    tool: &PathBuf,
    port: u16,
    case: Case,
    clients: usize,
    pipeline: usize,
    requests: u64,
) -> BenchResult<Measurement> {
    let mut child = Command::new(tool)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", case.tool_test()])
        .args(["-n", &requests.to_string()])
        .args(["-d", &VALUE_BYTES.to_string()])
        .args(["-r", &KEYS.to_string()])
        .args(["-c", &clients.to_string()])
        .args(["-P", &pipeline.to_string()])
        .arg("--csv")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Bounded: a tool that hangs (a server that stopped answering) fails the bench.
    let deadline = Instant::now() + TOOL_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("redis-benchmark ran longer than {TOOL_TIMEOUT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "redis-benchmark failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    parse_tool_csv(&stdout, case).ok_or_else(|| {
        format!(
            "no {} row in redis-benchmark's output:\n{stdout}",
            case.name()
        )
        .into()
    })
}

/// The row for `case` in `redis-benchmark --csv` output, by the header's column names.
fn parse_tool_csv(csv: &str, case: Case) -> Option<Measurement> {
    let fields = |line: &str| -> Vec<String> {
        line.split(',')
            .map(|field| field.trim().trim_matches('"').to_owned())
            .collect()
    };
    let mut lines = csv.lines().filter(|line| !line.trim().is_empty());
    let header = fields(lines.next()?);
    let column = |name: &str| header.iter().position(|h| h == name);
    let (rps, p50, p99) = (
        column("rps")?,
        column("p50_latency_ms")?,
        column("p99_latency_ms")?,
    );
    let row = lines
        .map(fields)
        .find(|row| row.first().map(String::as_str) == Some(case.name()))?;
    let number = |index: usize| row.get(index)?.parse::<f64>().ok();
    let micros = |ms: f64| (ms * 1000.0).round() as u32;
    Some(Measurement {
        ops_per_sec: number(rps)?,
        p50_us: micros(number(p50)?),
        p99_us: micros(number(p99)?),
    })
}

// ---------------------------------------------------------------------------------
// The run.

/// Every round's measurement of each (case, system, concurrency).
type Rounds = HashMap<(Case, System, usize), Vec<Measurement>>;

/// Why rows of a system are missing, for the output.
#[derive(Default)]
struct Notes(Vec<String>);

/// The two in-process clients, connected once for the whole run, so every
/// measurement starts from an established connection.
struct Clients {
    switchboard: Option<switchboard_client::Client>,
    redis_crate: redis::aio::MultiplexedConnection,
}

impl Clients {
    async fn measure(
        &self,
        system: System,
        case: Case,
        concurrency: usize,
        workload: &Rc<Workload>,
        settings: Settings,
    ) -> BenchResult<Option<Measurement>> {
        match system {
            System::Switchboard => {
                let Some(client) = &self.switchboard else {
                    return Ok(None);
                };
                let callers = client.callers(concurrency).await?;
                measure(callers, case, workload, settings).await.map(Some)
            }
            System::RedisCrate => {
                let callers = (0..concurrency)
                    .map(|_| RedisCrateCaller {
                        connection: self.redis_crate.clone(),
                    })
                    .collect();
                measure(callers, case, workload, settings).await.map(Some)
            }
            System::Tool { .. } => Ok(None),
        }
    }
}

/// Runs every round: for each case and concurrency, the systems one after the other.
async fn run(
    server: &RedisServer,
    tool: Option<&PathBuf>,
    settings: Settings,
    notes: &mut Notes,
) -> BenchResult<Rounds> {
    let workload = Rc::new(Workload::new());
    let url = format!("redis://127.0.0.1:{}/", server.port());
    let redis_crate = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let switchboard = match switchboard_client::Client::connect(server.authority()).await {
        Ok(client) => Some(client),
        Err(why) => {
            notes.0.push(format!("switchboard rows skipped: {why}"));
            None
        }
    };
    let clients = Clients {
        switchboard,
        redis_crate,
    };

    // The tool's request counts, sized from its previous run to last about one window.
    let mut tool_requests: HashMap<(Case, usize, usize), u64> = HashMap::new();
    let mut rounds = Rounds::new();
    let total = settings.rounds;
    for round in 1..=total {
        for case in Case::ALL {
            for concurrency in CONCURRENCIES {
                let mut systems = System::at(concurrency, tool.is_some());
                // Alternate which in-process client goes first, so neither always
                // runs right after the other's load (or a tool run).
                if round % 2 == 0 {
                    systems.swap(0, 1);
                }
                for system in systems {
                    let measured = match (system, tool) {
                        (System::Tool { clients, pipeline }, Some(tool)) => {
                            let key = (case, clients, pipeline);
                            let requests = match tool_requests.get(&key) {
                                Some(&requests) => requests,
                                None => {
                                    // Calibrate (and warm up) with a short run.
                                    let probe = (20 * clients * pipeline).max(5_000) as u64;
                                    let m = run_tool(
                                        tool,
                                        server.port(),
                                        case,
                                        clients,
                                        pipeline,
                                        probe,
                                    )?;
                                    requests_for(m, settings)
                                }
                            };
                            let m =
                                run_tool(tool, server.port(), case, clients, pipeline, requests)?;
                            tool_requests.insert(key, requests_for(m, settings));
                            Some(m)
                        }
                        _ => {
                            clients
                                .measure(system, case, concurrency, &workload, settings)
                                .await?
                        }
                    };
                    let Some(m) = measured else { continue };
                    println!(
                        "round {round}/{total}  {}  concurrency {concurrency:>3}  {:<26} {:>9.0} ops/s  p50 {:>6} us  p99 {:>6} us",
                        case.name(),
                        system.name(),
                        m.ops_per_sec,
                        m.p50_us,
                        m.p99_us,
                    );
                    rounds
                        .entry((case, system, concurrency))
                        .or_default()
                        .push(m);
                }
            }
        }
    }
    Ok(rounds)
}

/// A `redis-benchmark` request count that lasts about one measurement window at the
/// rate `m` measured.
fn requests_for(m: Measurement, settings: Settings) -> u64 {
    let requests = m.ops_per_sec * settings.measure.as_secs_f64();
    (requests as u64).clamp(10_000, 100_000_000)
}

/// A reported row: the median round of one (case, system, concurrency).
struct Row {
    case: Case,
    system: System,
    concurrency: usize,
    result: Measurement,
    /// This row's ops/sec over the redis crate's at the same case and concurrency.
    ratio_vs_redis_crate: Option<f64>,
    /// The median, over rounds, of this system's ops/sec over the redis crate's in
    /// the same round (measured back to back): less swayed by a slow moment of the
    /// machine than the ratio of the medians. In-process systems only.
    paired_ratio: Option<f64>,
}

/// The round with the median ops/sec, whole (its latencies belong to the same run).
/// The median of the per-round ratios of `system` over the redis crate.
fn paired_ratio(rounds: &Rounds, case: Case, system: System, concurrency: usize) -> Option<f64> {
    let ours = rounds.get(&(case, system, concurrency))?;
    let theirs = rounds.get(&(case, System::RedisCrate, concurrency))?;
    let mut ratios: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .map(|(ours, theirs)| ours.ops_per_sec / theirs.ops_per_sec)
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    Some(ratios[ratios.len() / 2])
}

fn rows(rounds: &Rounds, with_tool: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for case in Case::ALL {
        for concurrency in CONCURRENCIES {
            let baseline = rounds
                .get(&(case, System::RedisCrate, concurrency))
                .map(|m| median(m).ops_per_sec);
            for system in System::at(concurrency, with_tool) {
                let Some(measured) = rounds.get(&(case, system, concurrency)) else {
                    continue;
                };
                let result = median(measured);
                rows.push(Row {
                    case,
                    system,
                    concurrency,
                    result,
                    ratio_vs_redis_crate: baseline.map(|base| result.ops_per_sec / base),
                    paired_ratio: match system {
                        System::Switchboard => paired_ratio(rounds, case, system, concurrency),
                        _ => None,
                    },
                });
            }
        }
    }
    rows
}

fn print_table(rows: &[Row], notes: &Notes, rounds: usize) {
    println!();
    println!("median of {rounds} rounds by ops/sec; p50/p99 from that round");
    println!(
        "{:<4} {:<26} {:>11} {:>10} {:>7} {:>7} {:>14}",
        "case", "system", "concurrency", "ops/sec", "p50_us", "p99_us", "vs redis-crate"
    );
    for row in rows {
        println!(
            "{:<4} {:<26} {:>11} {:>10.0} {:>7} {:>7} {:>14}",
            row.case.name(),
            row.system.name(),
            row.concurrency,
            row.result.ops_per_sec,
            row.result.p50_us,
            row.result.p99_us,
            row.ratio_vs_redis_crate
                .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}x")),
        );
    }
    println!();
    for case in Case::ALL {
        let ratios: Vec<String> = rows
            .iter()
            .filter(|row| row.case == case && row.system == System::Switchboard)
            .filter_map(|row| {
                let ratio = row.ratio_vs_redis_crate?;
                let paired = row.paired_ratio?;
                Some(format!(
                    "{ratio:.2}x at {} (paired {paired:.2}x)",
                    row.concurrency
                ))
            })
            .collect();
        if !ratios.is_empty() {
            println!(
                "switchboard / redis-crate, {}: {}",
                case.name(),
                ratios.join(", ")
            );
        }
    }
    println!(
        "(paired: the median over rounds of the ratio within each round, where the two \
         ran back to back)"
    );
    println!(
        "in-process clients: {RUNTIME}; redis-server and redis-benchmark are separate processes"
    );
    println!(
        "redis-benchmark -c1 -P<C>: one connection, C requests sent in lock-step batches; \
         -c<C> -P1: C connections, one request each"
    );
    for note in &notes.0 {
        println!("note: {note}");
    }
}

/// The rows as JSON, in the shape every bench of this crate writes, with the ratio
/// switchboard / redis-crate per case and concurrency as extra fields.
fn to_json(rows: &[Row], notes: &Notes, settings: Settings) -> serde_json::Value {
    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let mut json = serde_json::json!({
                "case": row.case.name(),
                "system": row.system.name(),
                "concurrency": row.concurrency,
                "ops_per_sec": (row.result.ops_per_sec * 10.0).round() / 10.0,
                "p50_us": row.result.p50_us,
                "p99_us": row.result.p99_us,
                "ratio_vs_redis_crate": row.ratio_vs_redis_crate
                    .map(|ratio| (ratio * 10_000.0).round() / 10_000.0),
            });
            if let System::Tool { clients, pipeline } = row.system {
                json["clients"] = clients.into();
                json["pipeline"] = pipeline.into();
            } else {
                json["connections"] = 1.into();
                if let Some(paired) = row.paired_ratio {
                    json["paired_ratio_vs_redis_crate"] =
                        ((paired * 10_000.0).round() / 10_000.0).into();
                }
                json["runtime"] = "current-thread".into();
            }
            json
        })
        .collect();
    let ratios: Vec<serde_json::Value> = rows
        .iter()
        .filter(|row| row.system == System::Switchboard)
        .filter_map(|row| {
            Some(serde_json::json!({
                "case": row.case.name(),
                "concurrency": row.concurrency,
                "switchboard_vs_redis_crate": (row.ratio_vs_redis_crate? * 10_000.0).round() / 10_000.0,
                "paired_median": (row.paired_ratio? * 10_000.0).round() / 10_000.0,
            }))
        })
        .collect();
    serde_json::json!({
        "bench": "redis",
        "rows": json_rows,
        "ratios": ratios,
        "rounds": settings.rounds,
        "warm_up_ms": settings.warm_up.as_millis() as u64,
        "measure_ms": settings.measure.as_millis() as u64,
        "keys": KEYS,
        "value_bytes": VALUE_BYTES,
        "runtime": RUNTIME,
        "notes": notes.0,
    })
}

/// Sets every key to a `VALUE_BYTES` value with one MSET, so GETs always hit.
fn populate(server: &RedisServer, workload: &Workload) -> BenchResult<()> {
    let value = String::from_utf8(workload.value.to_vec())?;
    let keys: Vec<String> = workload
        .keys
        .iter()
        .map(|key| String::from_utf8_lossy(key).into_owned())
        .collect();
    let mut args = vec!["MSET"];
    for key in &keys {
        args.push(key);
        args.push(&value);
    }
    let reply = server.command(&args);
    if reply != "+OK\r\n" {
        return Err(format!("MSET replied {reply:?}").into());
    }
    Ok(())
}

fn main() -> BenchResult<()> {
    let settings = Settings::from_args();
    let Some(server) = RedisServer::start() else {
        println!("SKIPPED: redis bench: redis-server not found on PATH (install redis-server)");
        return Ok(());
    };
    populate(&server, &Workload::new())?;

    let mut notes = Notes::default();
    let tool = find_tool();
    if tool.is_none() {
        notes.0.push(
            "redis-benchmark rows skipped: redis-benchmark not found (install redis-tools)".into(),
        );
    }
    println!(
        "redis: GET/SET, {KEYS} keys of 16 bytes, {VALUE_BYTES}-byte values, {} rounds, \
         {:?} warm-up + {:?} per measurement, redis-server {} on port {}",
        settings.rounds,
        settings.warm_up,
        settings.measure,
        server_version(),
        server.port(),
    );
    println!("in-process clients: {RUNTIME}");

    let rounds =
        actix_rt::System::new().block_on(run(&server, tool.as_ref(), settings, &mut notes))?;
    drop(server);

    let rows = rows(&rounds, tool.is_some());
    print_table(&rows, &notes, settings.rounds);

    let path = support::results_path("redis");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = to_json(&rows, &notes, settings);
    std::fs::write(&path, format!("{}\n", serde_json::to_string_pretty(&json)?))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// `redis-server --version`'s `v=` field, for the output.
fn server_version() -> String {
    let output = Command::new("redis-server").arg("--version").output();
    let text = output
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    text.split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .unwrap_or("?")
        .to_owned()
}
