//! Exclusive checkout and return: take a connection from a pool and drop it at once.
//!
//! The classic async pool benchmark. For each case `pool/workers` in [`CASES`],
//! [`TOTAL_OPS`] (1,048,576) get-and-drop operations are split evenly over `workers`
//! tasks spawned on a tokio multi-thread runtime with [`RUNTIME_THREADS`] worker
//! threads. Three pools run the same workload in the same process:
//!
//! - `switchboard`: the switchboard [`Pool`] over in-memory connections to a
//!   [`MemoryNetwork`] listener whose peers only answer pings. The Pool's actors run
//!   in an actix System on a thread of their own; the workers hold a [`PoolHandle`]
//!   clone each. Settings: `max_size = min_idle = pool`, `test_on_checkout_after =
//!   None` and `health_check_interval = None` (no pings on or between checkouts, as
//!   for the baselines), and a one-hour heartbeat (two-hour heartbeat timeout) so
//!   that no connection times out during a run; the rest are the defaults.
//! - `deadpool`: `deadpool::managed::Pool` with a manager whose connections cost
//!   nothing (`create` and `recycle` return `Ok` at once). Settings: `max_size =
//!   pool`; the rest are the defaults (FIFO queue, no timeouts). deadpool always
//!   calls `recycle` on checkout; here it is a no-op, so there is no health check.
//! - `bb8`: `bb8::Pool` with a free manager too. Settings: `max_size = pool`,
//!   `min_idle = pool`, `test_on_check_out = false` (no `is_valid` on checkout, to
//!   match deadpool's no-op recycle); the rest are the defaults (FIFO queue, 30 s
//!   connection timeout, 10 min idle timeout, 30 min max lifetime, all of which
//!   never fire within a run).
//!
//! Every measurement builds a fresh runtime and a fresh pool, pre-filled to `pool`
//! connections before timing starts (each is checked to hold exactly `pool` open,
//! idle connections: deadpool's `status()`, bb8's `state()`, the switchboard Pool's
//! `status()`). Each operation is timed with [`Instant`] around checkout plus drop,
//! in every system alike; `ops_per_sec` is `TOTAL_OPS` over the wall time from
//! spawning the first worker to the last one finishing. The systems are interleaved
//! within each case and the whole sweep is repeated ([`ROUNDS`] times,
//! [`QUICK_ROUNDS`] with `--quick`); each row reports the round with the median ops/sec, so a noisy moment
//! on the machine hits all systems alike. Every measurement is bounded by
//! [`MEASURE_TIMEOUT`], so a hang ends the bench with an error.
//!
//! The actix System thread is the switchboard's own cost: whatever work its Pool
//! does in its actor (opening connections, serving waiting checkouts) runs there,
//! competing with the two runtime threads for the machine's cores, while deadpool
//! and bb8 do all their work on the runtime threads.
//!
//! Run with `cargo bench --bench checkout -- --quick` (three rounds, about 25 s on
//! two cores) or without `--quick` for five. Prints
//! a table and writes `target/bench-results/checkout.json`.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error;
use std::fmt::Write as _;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use switchboard::protocol::frame::{Frame, FrameCodec, FrameKind, FrameProtocol};
use switchboard::transport::{MemoryConnector, MemoryListener, MemoryNetwork};
use switchboard::{Authority, ConnectionConfig, Pool, PoolConfig, PoolHandle};
use tokio::io::DuplexStream;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

/// A `pool/workers` pair: connections in the pool, tasks checking out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Case {
    pool: usize,
    workers: usize,
}

impl Case {
    const fn new(pool: usize, workers: usize) -> Self {
        Self { pool, workers }
    }

    fn name(self) -> String {
        format!("{}/{}", self.pool, self.workers)
    }
}

/// The cases, in the order they run within a round.
const CASES: [Case; 9] = [
    Case::new(2, 8),
    Case::new(4, 8),
    Case::new(8, 8),
    Case::new(4, 16),
    Case::new(8, 16),
    Case::new(16, 16),
    Case::new(8, 32),
    Case::new(16, 32),
    Case::new(32, 32),
];
/// Get-and-drop operations per measurement, split evenly over the workers.
const TOTAL_OPS: usize = 1 << 20;
/// Worker threads of the tokio runtime the workers run on.
const RUNTIME_THREADS: usize = 2;
/// Times the whole sweep is repeated without `--quick`; rows report the median round.
const ROUNDS: usize = 5;
/// Rounds with `--quick`: a single round is too noisy on a shared two-core machine
/// to compare against (one round once had bb8 at a third of its usual rate).
const QUICK_ROUNDS: usize = 3;
/// How long one measurement's operations may take before the bench gives up.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long building, pre-filling or closing one pool may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the switchboard Pool may take to report `pool` idle connections after
/// `build()` returns.
const PREFILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a finished runtime gets to stop its threads.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(5);
/// The in-memory listener the switchboard Pool connects to.
const LISTENER_NAME: &str = "checkout-bench";
/// Long enough that idle connections send no heartbeat during a run.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3600);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(7200);

type BenchResult<T> = Result<T, Box<dyn Error>>;

/// The pools under test, in the order they run within a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum System {
    Switchboard,
    Deadpool,
    Bb8,
}

impl System {
    const ALL: [System; 3] = [System::Switchboard, System::Deadpool, System::Bb8];

    fn name(self) -> &'static str {
        match self {
            System::Switchboard => "switchboard",
            System::Deadpool => "deadpool",
            System::Bb8 => "bb8",
        }
    }
}

/// How many rounds to run.
#[derive(Debug, Clone, Copy)]
struct Settings {
    rounds: usize,
}

impl Settings {
    /// `--quick` runs fewer rounds; every other argument (cargo passes `--bench`) is
    /// ignored.
    fn from_args() -> Self {
        let quick = std::env::args().skip(1).any(|arg| arg == "--quick");
        Self {
            rounds: if quick { QUICK_ROUNDS } else { ROUNDS },
        }
    }
}

/// The result of one measurement.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    elapsed: Duration,
}

impl Measurement {
    /// Summarizes per-operation latencies (nanoseconds) of a run that took `elapsed`.
    fn from_samples(mut latencies_ns: Vec<u64>, elapsed: Duration) -> Self {
        latencies_ns.sort_unstable();
        Self {
            ops_per_sec: latencies_ns.len() as f64 / elapsed.as_secs_f64(),
            p50_us: support::percentile(&latencies_ns, 0.50) as f64 / 1000.0,
            p99_us: support::percentile(&latencies_ns, 0.99) as f64 / 1000.0,
            elapsed,
        }
    }
}

// ---------------------------------------------------------------------------------
// The workload, shared by all systems.

/// A pool the workers check out from. Each worker holds its own clone.
trait CheckoutPool: Clone + Send + Sync + 'static {
    /// Checks out one connection and drops it at once, returning it to the pool.
    fn checkout_and_drop(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// One worker: as many get-and-drop operations as `latencies_ns` has slots, each
/// timed into its slot.
async fn worker<P: CheckoutPool>(pool: P, mut latencies_ns: Vec<u64>) -> Result<Vec<u64>, String> {
    for slot in &mut latencies_ns {
        let started = Instant::now();
        pool.checkout_and_drop().await?;
        *slot = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    }
    Ok(latencies_ns)
}

/// The operations of each of `workers` workers: `total` split as evenly as it goes.
fn shares(total: usize, workers: usize) -> impl Iterator<Item = usize> {
    (0..workers).map(move |i| total / workers + usize::from(i < total % workers))
}

/// The timed part: spawns the workers on `runtime`, waits for all of them and
/// summarizes. `pool` must be pre-filled.
fn run_workers<P: CheckoutPool>(
    runtime: &Runtime,
    pool: &P,
    workers: usize,
) -> BenchResult<Measurement> {
    // Written in full before timing, so no page is first touched inside it.
    let slots: Vec<Vec<u64>> = shares(TOTAL_OPS, workers)
        .map(|ops| vec![u64::MAX; ops])
        .collect();
    let run = async {
        let started = Instant::now();
        let tasks: Vec<_> = slots
            .into_iter()
            .map(|slots| tokio::spawn(worker(pool.clone(), slots)))
            .collect();
        let finished = futures::future::join_all(tasks).await;
        (started.elapsed(), finished)
    };
    let (elapsed, finished) = block_on_bounded(runtime, MEASURE_TIMEOUT, "the operations", run)?;
    let mut latencies_ns = Vec::with_capacity(TOTAL_OPS);
    for worker in finished {
        latencies_ns.extend(worker.map_err(|error| format!("worker task failed: {error}"))??);
    }
    Ok(Measurement::from_samples(latencies_ns, elapsed))
}

/// Runs `work` on a fresh multi-thread runtime with [`RUNTIME_THREADS`] workers,
/// then stops the runtime (within [`RUNTIME_SHUTDOWN`], even if tasks still run).
fn on_fresh_runtime<T>(work: impl FnOnce(&Runtime) -> BenchResult<T>) -> BenchResult<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .enable_all()
        .build()?;
    let result = work(&runtime);
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

/// Blocks on `future` for at most `limit`; `what` names it in the error.
fn block_on_bounded<F: Future>(
    runtime: &Runtime,
    limit: Duration,
    what: &str,
    future: F,
) -> BenchResult<F::Output> {
    runtime
        .block_on(async { tokio::time::timeout(limit, future).await })
        .map_err(|_| format!("{what} did not finish within {limit:?}").into())
}

// ---------------------------------------------------------------------------------
// deadpool: a managed pool of free connections.

/// A connection that costs nothing to open, check or close.
#[derive(Debug)]
struct FreeConnection;

/// deadpool's manager of [`FreeConnection`]s.
#[derive(Debug)]
struct FreeDeadpoolManager;

impl deadpool::managed::Manager for FreeDeadpoolManager {
    type Type = FreeConnection;
    type Error = Infallible;

    async fn create(&self) -> Result<FreeConnection, Infallible> {
        Ok(FreeConnection)
    }

    async fn recycle(
        &self,
        _connection: &mut FreeConnection,
        _metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

type Deadpool = deadpool::managed::Pool<FreeDeadpoolManager>;

impl CheckoutPool for Deadpool {
    async fn checkout_and_drop(&self) -> Result<(), String> {
        let connection = self
            .get()
            .await
            .map_err(|error| format!("deadpool checkout: {error}"))?;
        drop(connection);
        Ok(())
    }
}

/// A deadpool of `size` connections, all open and idle.
async fn deadpool_pool(size: usize) -> Result<Deadpool, String> {
    let pool = Deadpool::builder(FreeDeadpoolManager)
        .max_size(size)
        .build()
        .map_err(|error| format!("deadpool build: {error}"))?;
    // deadpool opens connections on demand: hold `size` at once, then return them.
    let held = futures::future::try_join_all((0..size).map(|_| pool.get()))
        .await
        .map_err(|error| format!("deadpool pre-fill: {error}"))?;
    drop(held);
    let status = pool.status();
    if status.size != size || status.available != size {
        return Err(format!(
            "deadpool pre-fill: {} connections, {} available, expected {size}",
            status.size, status.available
        ));
    }
    Ok(pool)
}

fn run_deadpool(case: Case) -> BenchResult<Measurement> {
    on_fresh_runtime(|runtime| {
        let pool = block_on_bounded(
            runtime,
            SETUP_TIMEOUT,
            "deadpool pre-fill",
            deadpool_pool(case.pool),
        )??;
        run_workers(runtime, &pool, case.workers)
    })
}

// ---------------------------------------------------------------------------------
// bb8: a pool of free connections.

/// bb8's manager of [`FreeConnection`]s.
#[derive(Debug)]
struct FreeBb8Manager;

impl bb8::ManageConnection for FreeBb8Manager {
    type Connection = FreeConnection;
    type Error = Infallible;

    async fn connect(&self) -> Result<FreeConnection, Infallible> {
        Ok(FreeConnection)
    }

    async fn is_valid(&self, _connection: &mut FreeConnection) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _connection: &mut FreeConnection) -> bool {
        false
    }
}

type Bb8 = bb8::Pool<FreeBb8Manager>;

impl CheckoutPool for Bb8 {
    async fn checkout_and_drop(&self) -> Result<(), String> {
        let connection = self
            .get()
            .await
            .map_err(|error| format!("bb8 checkout: {error}"))?;
        drop(connection);
        Ok(())
    }
}

/// A bb8 pool of `size` connections, all open and idle.
async fn bb8_pool(size: usize) -> Result<Bb8, String> {
    let size_u32 = u32::try_from(size).map_err(|_| format!("bb8: pool size {size}"))?;
    // `build` waits until `min_idle` connections are open.
    let pool = Bb8::builder()
        .max_size(size_u32)
        .min_idle(size_u32)
        .test_on_check_out(false)
        .build(FreeBb8Manager)
        .await
        .map_err(|error| format!("bb8 build: {error:?}"))?;
    let state = pool.state();
    if state.connections != size_u32 || state.idle_connections != size_u32 {
        return Err(format!(
            "bb8 pre-fill: {} connections, {} idle, expected {size}",
            state.connections, state.idle_connections
        ));
    }
    Ok(pool)
}

fn run_bb8(case: Case) -> BenchResult<Measurement> {
    on_fresh_runtime(|runtime| {
        let pool = block_on_bounded(runtime, SETUP_TIMEOUT, "bb8 pre-fill", bb8_pool(case.pool))??;
        run_workers(runtime, &pool, case.workers)
    })
}

// ---------------------------------------------------------------------------------
// switchboard: the Pool, its actors on an actix System of their own.

/// A switchboard Pool and the authority its connections go to.
#[derive(Clone)]
struct SwitchboardPool {
    handle: PoolHandle<MemoryConnector, FrameProtocol>,
    authority: Authority,
}

impl CheckoutPool for SwitchboardPool {
    async fn checkout_and_drop(&self) -> Result<(), String> {
        let lease = self
            .handle
            .checkout(&self.authority)
            .await
            .map_err(|error| format!("switchboard checkout: {error}"))?;
        drop(lease);
        Ok(())
    }
}

/// What the bench thread asks of the actix System.
enum HostCommand {
    /// Build a pre-filled Pool of `size` connections.
    Build {
        size: usize,
        reply: oneshot::Sender<Result<SwitchboardPool, String>>,
    },
    /// Close a Pool; the reply comes once its connections are closed.
    Close {
        pool: SwitchboardPool,
        reply: oneshot::Sender<()>,
    },
}

/// The thread running the actix System that hosts the switchboard Pools and the
/// in-memory peers they connect to. Lives for the whole bench.
struct SwitchboardHost {
    commands: mpsc::UnboundedSender<HostCommand>,
    stopped: std::sync::mpsc::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl SwitchboardHost {
    fn start() -> BenchResult<Self> {
        let (commands, received) = mpsc::unbounded_channel();
        let (stop_signal, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("switchboard-system".into())
            .spawn(move || {
                actix::System::new().block_on(serve(received));
                let _ = stop_signal.send(());
            })?;
        Ok(Self {
            commands,
            stopped,
            thread,
        })
    }

    async fn build(&self, size: usize) -> Result<SwitchboardPool, String> {
        let (reply, built) = oneshot::channel();
        self.commands
            .send(HostCommand::Build { size, reply })
            .map_err(|_| "the switchboard System stopped".to_string())?;
        built
            .await
            .map_err(|_| "the switchboard System stopped while building".to_string())?
    }

    async fn close(&self, pool: SwitchboardPool) -> Result<(), String> {
        let (reply, closed) = oneshot::channel();
        self.commands
            .send(HostCommand::Close { pool, reply })
            .map_err(|_| "the switchboard System stopped".to_string())?;
        closed
            .await
            .map_err(|_| "the switchboard System stopped while closing".to_string())
    }

    /// Stops the System and waits (within [`SETUP_TIMEOUT`]) for its thread.
    fn stop(self) -> BenchResult<()> {
        drop(self.commands);
        self.stopped
            .recv_timeout(SETUP_TIMEOUT)
            .map_err(|_| format!("the switchboard System did not stop within {SETUP_TIMEOUT:?}"))?;
        self.thread
            .join()
            .map_err(|_| "the switchboard System thread panicked".into())
    }
}

/// The System's main task: serves the bench thread's commands until it hangs up.
async fn serve(mut commands: mpsc::UnboundedReceiver<HostCommand>) {
    let network = MemoryNetwork::new();
    actix::spawn(accept_peers(network.bind(LISTENER_NAME)));
    let authority = Authority::memory(LISTENER_NAME);
    while let Some(command) = commands.recv().await {
        match command {
            HostCommand::Build { size, reply } => {
                let _ = reply.send(build_switchboard(&network, &authority, size).await);
            }
            HostCommand::Close { pool, reply } => {
                pool.handle.close().await;
                let _ = reply.send(());
            }
        }
    }
    actix::System::current().stop();
}

/// Keeps the server side of every connection open, as a peer that answers pings.
async fn accept_peers(mut listener: MemoryListener) {
    while let Some(stream) = listener.accept().await {
        actix::spawn(answer_pings(stream));
    }
}

/// Answers pings until the connection closes. Nothing else comes: checkouts send no
/// traffic.
async fn answer_pings(stream: DuplexStream) {
    let mut peer = Framed::new(stream, FrameCodec::default());
    while let Some(Ok(frame)) = peer.next().await {
        if frame.kind == FrameKind::Ping && peer.send(Frame::pong(frame.id)).await.is_err() {
            break;
        }
    }
}

/// A Pool of `size` connections to `authority`, open before it returns.
async fn build_switchboard(
    network: &MemoryNetwork,
    authority: &Authority,
    size: usize,
) -> Result<SwitchboardPool, String> {
    let config = PoolConfig::builder()
        .max_size(size)
        .min_idle(size)
        .test_on_checkout_after(None)
        .health_check_interval(None)
        .build()
        .map_err(|error| format!("switchboard pool config: {error}"))?;
    let connection = ConnectionConfig::builder()
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .heartbeat_timeout(HEARTBEAT_TIMEOUT)
        .build()
        .map_err(|error| format!("switchboard connection config: {error}"))?;
    let handle = Pool::builder(network.connector(), FrameProtocol::default())
        .config(config)
        .connection(connection)
        .authority(authority.clone())
        .build()
        .await
        .map_err(|error| format!("switchboard pool build: {error}"))?;
    await_prefill(&handle, authority, size).await?;
    Ok(SwitchboardPool {
        handle,
        authority: authority.clone(),
    })
}

/// Waits (within [`PREFILL_TIMEOUT`]) until the Pool holds exactly `size` open, idle
/// connections to `authority`, as the baselines are checked to. `build()` already
/// waits for `min_idle`, so this normally returns at the first look.
async fn await_prefill(
    handle: &PoolHandle<MemoryConnector, FrameProtocol>,
    authority: &Authority,
    size: usize,
) -> Result<(), String> {
    let deadline = Instant::now() + PREFILL_TIMEOUT;
    loop {
        let status = handle
            .status()
            .await
            .map_err(|error| format!("switchboard pool status: {error}"))?;
        let (open, idle) = status
            .authority(authority)
            .map_or((0, 0), |status| (status.size, status.idle));
        if open == size && idle == size {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "switchboard pre-fill: {open} connections, {idle} idle after {PREFILL_TIMEOUT:?}, expected {size}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn run_switchboard(host: &SwitchboardHost, case: Case) -> BenchResult<Measurement> {
    on_fresh_runtime(|runtime| {
        let pool = block_on_bounded(
            runtime,
            SETUP_TIMEOUT,
            "switchboard pool build",
            host.build(case.pool),
        )??;
        let measured = run_workers(runtime, &pool, case.workers);
        let closed = block_on_bounded(
            runtime,
            SETUP_TIMEOUT,
            "switchboard pool close",
            host.close(pool),
        );
        let measurement = measured?;
        closed??;
        Ok(measurement)
    })
}

// ---------------------------------------------------------------------------------
// The run.

/// Every round's measurement of each (system, case).
type Rounds = HashMap<(System, Case), Vec<Measurement>>;

/// Runs all rounds, interleaving the systems within each case.
fn run(host: &SwitchboardHost, settings: Settings) -> BenchResult<Rounds> {
    let mut rounds = Rounds::new();
    for round in 1..=settings.rounds {
        for case in CASES {
            for system in System::ALL {
                let m = match system {
                    System::Switchboard => run_switchboard(host, case),
                    System::Deadpool => run_deadpool(case),
                    System::Bb8 => run_bb8(case),
                }
                .map_err(|error| format!("{} at {}: {error}", system.name(), case.name()))?;
                println!(
                    "round {round}/{}  case {:>5}  {:<11}  {:>10.0} ops/s  p50 {:>8.3} us  p99 {:>8.3} us  ({:.2} s)",
                    settings.rounds,
                    case.name(),
                    system.name(),
                    m.ops_per_sec,
                    m.p50_us,
                    m.p99_us,
                    m.elapsed.as_secs_f64(),
                );
                rounds.entry((system, case)).or_default().push(m);
            }
        }
    }
    Ok(rounds)
}

/// A reported row: the median round of one (system, case).
struct Row {
    system: System,
    case: Case,
    result: Measurement,
    ratio_vs_deadpool: f64,
    ratio_vs_bb8: f64,
}

/// The round with the median ops/sec, whole (its latencies belong to the same run).
fn median(measurements: Option<&Vec<Measurement>>) -> BenchResult<Measurement> {
    let mut sorted = measurements.cloned().unwrap_or_default();
    sorted.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    sorted
        .get(sorted.len() / 2)
        .copied()
        .ok_or_else(|| "a measurement is missing".into())
}

fn rows(rounds: &Rounds) -> BenchResult<Vec<Row>> {
    let mut rows = Vec::new();
    for case in CASES {
        let deadpool = median(rounds.get(&(System::Deadpool, case)))?;
        let bb8 = median(rounds.get(&(System::Bb8, case)))?;
        for system in System::ALL {
            let result = median(rounds.get(&(system, case)))?;
            rows.push(Row {
                system,
                case,
                result,
                ratio_vs_deadpool: result.ops_per_sec / deadpool.ops_per_sec,
                ratio_vs_bb8: result.ops_per_sec / bb8.ops_per_sec,
            });
        }
    }
    Ok(rows)
}

fn print_table(rows: &[Row], settings: Settings) {
    println!();
    println!(
        "median of {} round(s) by ops/sec; p50/p99 from that round",
        settings.rounds
    );
    println!(
        "{:<6} {:<11} {:>11} {:>9} {:>9} {:>22} {:>17}",
        "case",
        "system",
        "ops/s",
        "p50_us",
        "p99_us",
        "switchboard / deadpool",
        "switchboard / bb8"
    );
    for row in rows {
        let (vs_deadpool, vs_bb8) = if row.system == System::Switchboard {
            (
                format!("{:.2}", row.ratio_vs_deadpool),
                format!("{:.2}", row.ratio_vs_bb8),
            )
        } else {
            (String::new(), String::new())
        };
        println!(
            "{:<6} {:<11} {:>11.0} {:>9.3} {:>9.3} {:>22} {:>17}",
            row.case.name(),
            row.system.name(),
            row.result.ops_per_sec,
            row.result.p50_us,
            row.result.p99_us,
            vs_deadpool,
            vs_bb8,
        );
    }
    println!();
    let switchboard: Vec<&Row> = rows
        .iter()
        .filter(|row| row.system == System::Switchboard)
        .collect();
    let vs = |ratio: fn(&Row) -> f64| {
        switchboard
            .iter()
            .map(|row| format!("{:.2}x at {}", ratio(row), row.case.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "switchboard / deadpool: {}",
        vs(|row| row.ratio_vs_deadpool)
    );
    println!("switchboard / bb8: {}", vs(|row| row.ratio_vs_bb8));
}

/// The rows as JSON, in the shape every bench of this crate writes.
fn to_json(rows: &[Row]) -> String {
    let mut json = String::from("{\"bench\": \"checkout\", \"rows\": [");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            json.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(
            json,
            "{{\"case\": \"{}\", \"system\": \"{}\", \"concurrency\": {}, \"ops_per_sec\": {:.1}, \"p50_us\": {:.3}, \"p99_us\": {:.3}, \"pool_size\": {}, \"ops\": {TOTAL_OPS}, \"elapsed_ms\": {:.1}, \"ratio_vs_deadpool\": {:.4}, \"ratio_vs_bb8\": {:.4}}}",
            row.case.name(),
            row.system.name(),
            row.case.workers,
            row.result.ops_per_sec,
            row.result.p50_us,
            row.result.p99_us,
            row.case.pool,
            row.result.elapsed.as_secs_f64() * 1000.0,
            row.ratio_vs_deadpool,
            row.ratio_vs_bb8,
        );
    }
    json.push_str("]}\n");
    json
}

fn main() -> BenchResult<()> {
    let settings = Settings::from_args();
    let started = Instant::now();
    println!(
        "checkout: {TOTAL_OPS} get-and-drop operations per measurement, {} round(s), tokio multi-thread runtime with {RUNTIME_THREADS} worker threads",
        settings.rounds,
    );

    let host = SwitchboardHost::start()?;
    let rounds = run(&host, settings);
    let stopped = host.stop();
    let rounds = rounds?;
    stopped?;

    let rows = rows(&rounds)?;
    print_table(&rows, settings);

    let path = support::results_path("checkout");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, to_json(&rows))?;
    println!("wrote {}", path.display());
    println!("took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
