//! Throughput and latency of request/response calls over one connection.
//!
//! Three clients call the same loopback [`EchoServer`] with 64-byte payloads, at 1,
//! 64 and 512 concurrent callers:
//!
//! - `switchboard`: calls through a switchboard `Connection` actor;
//! - `raw-tokio`: a hand-written tokio client (writer task fed by an mpsc channel
//!   that batches writes, reader task completing oneshots from an id map), the
//!   strong baseline that `switchboard` is measured against;
//! - `mutex`: a framed stream behind `Arc<tokio::sync::Mutex<_>>`, where each caller
//!   holds the lock for its whole round trip: the naive, serialized baseline.
//!
//! For fairness every client runs on the same single-threaded runtime (an actix
//! System), while the echo server runs on its own thread and runtime. The systems
//! are interleaved for each concurrency and the whole sweep is repeated
//! [`ROUNDS`] times; each row reports the round with the median ops/sec, so a noisy
//! moment on the machine hits all systems alike and does not decide the result.
//!
//! Run with `cargo bench --bench throughput -- --quick` (about half a minute) or
//! without `--quick` for longer windows. Prints a table and writes
//! `target/bench-results/throughput.json`.

#[path = "../examples/support/echo_server.rs"]
mod echo_server;

mod support;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::error::Error;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use switchboard::protocol::frame::{Frame, FrameCodec, FrameKind, FrameProtocol, FrameRequest};
use switchboard::{Call, Connection, ConnectionConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder, Framed, FramedRead};

use echo_server::EchoServer;
use support::{median, Measurement, Window};

/// The `case` of every row: echo calls with 64-byte payloads.
const CASE: &str = "echo-64B";
/// Bytes of every request payload.
const PAYLOAD_BYTES: usize = 64;
/// Concurrent callers per measurement.
const CONCURRENCIES: [usize; 3] = [1, 64, 512];
/// Times the whole sweep is repeated; rows report the median round.
const ROUNDS: usize = 3;
/// How long callers may take to finish after a measurement window closes before
/// the bench gives up (a lost reply would otherwise hang it forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Initial capacity of the raw client's read and write buffers.
const IO_BUFFER: usize = 64 * 1024;

type BenchResult<T> = Result<T, Box<dyn Error>>;

/// The clients under test, in the order they run within a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum System {
    Switchboard,
    RawTokio,
    Mutex,
}

impl System {
    const ALL: [System; 3] = [System::Switchboard, System::RawTokio, System::Mutex];

    fn name(self) -> &'static str {
        match self {
            System::Switchboard => "switchboard",
            System::RawTokio => "raw-tokio",
            System::Mutex => "mutex",
        }
    }
}

/// How long to warm up and measure each (system, concurrency, round).
#[derive(Debug, Clone, Copy)]
struct Settings {
    warm_up: Duration,
    measure: Duration,
}

impl Settings {
    /// `--quick` selects short windows; every other argument (cargo passes
    /// `--bench`) is ignored.
    fn from_args() -> Self {
        if std::env::args().skip(1).any(|arg| arg == "--quick") {
            Self {
                warm_up: Duration::from_millis(200),
                measure: Duration::from_secs(1),
            }
        } else {
            Self {
                warm_up: Duration::from_millis(500),
                measure: Duration::from_secs(3),
            }
        }
    }
}

/// One way of making a call. Each caller task owns one and calls it in a loop.
trait Caller: 'static {
    /// Sends `payload` as a request and waits for the reply, checking that the
    /// reply belongs to this request and echoes the payload.
    async fn call(&mut self, payload: Bytes) -> Result<(), String>;
}

/// A payload unique to (`caller`, `seq`), so a reply handed to the wrong call is
/// caught by the payload check.
fn payload(caller: u32, seq: u64) -> Bytes {
    let mut payload = BytesMut::with_capacity(PAYLOAD_BYTES);
    payload.put_u32(caller);
    payload.put_u64(seq);
    payload.put_bytes(b'.', PAYLOAD_BYTES - payload.len());
    payload.freeze()
}

/// One caller's loop: call until the window ends, recording the latency of every
/// call that completes inside it. Bounded in time: it starts no call after
/// `window.end`.
async fn drive(mut caller: impl Caller, index: u32, window: Window) -> Result<Vec<u32>, String> {
    let mut latencies_us = Vec::new();
    for seq in 0.. {
        let payload = payload(index, seq);
        let started = Instant::now();
        caller.call(payload).await?;
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

/// Runs one measurement: spawns one task per caller on the current (single-threaded)
/// runtime, waits for all of them to finish, and summarizes.
async fn measure<C: Caller>(callers: Vec<C>, settings: Settings) -> BenchResult<Measurement> {
    let window = Window::after_warm_up(settings.warm_up, settings.measure);
    let tasks: Vec<_> = callers
        .into_iter()
        .zip(0..)
        .map(|(caller, index)| tokio::task::spawn_local(drive(caller, index, window)))
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

// ---------------------------------------------------------------------------------
// switchboard: calls through a Connection actor.

type SwitchboardAddr = actix::Addr<Connection<TcpStream, FrameProtocol>>;

/// Starts a Connection actor on `stream`, on the current actix System.
fn switchboard_client(stream: TcpStream) -> BenchResult<SwitchboardAddr> {
    // Room for every caller at the highest concurrency, so no call is refused as
    // overloaded.
    let config = ConnectionConfig::builder()
        .max_in_flight(4096)
        .build()
        .map_err(|error| format!("switchboard config: {error}"))?;
    Ok(Connection::builder(stream, FrameProtocol::default())
        .config(config)
        .start())
}

/// A caller holding its own clone of the actor's address.
struct SwitchboardCaller {
    addr: SwitchboardAddr,
}

impl Caller for SwitchboardCaller {
    async fn call(&mut self, payload: Bytes) -> Result<(), String> {
        // Ids are the actor's business; the payload check catches a mix-up.
        let reply = self
            .addr
            .send(Call::new(FrameRequest::new(payload.clone())))
            .await
            .map_err(|error| format!("switchboard mailbox: {error}"))?
            .map_err(|error| format!("switchboard call: {error}"))?;
        check_payload(&reply, &payload)
    }
}

// ---------------------------------------------------------------------------------
// raw-tokio: a reader task, a writer task, an mpsc channel and an id map.

/// Replies awaited by id. `Rc<RefCell<_>>` because the client lives on one thread:
/// the fairest baseline uses the cheapest sharing its runtime allows.
type Pending = Rc<RefCell<HashMap<u64, oneshot::Sender<Frame>>>>;

/// The hand-written client: what a careful tokio programmer would write for
/// multiplexed calls over one connection.
struct RawClient {
    /// To the writer task. Unbounded because the callers bound it: each has at
    /// most one request queued or in flight.
    requests: mpsc::UnboundedSender<(u64, Bytes)>,
    pending: Pending,
    next_id: Cell<u64>,
}

impl RawClient {
    /// Splits `stream` and spawns its reader and writer tasks on the current
    /// `LocalSet` (the actix System's).
    fn start(stream: TcpStream) -> Rc<Self> {
        let (read, write) = stream.into_split();
        let (requests, queued) = mpsc::unbounded_channel();
        let pending = Pending::default();
        tokio::task::spawn_local(raw_writer(write, queued));
        tokio::task::spawn_local(raw_reader(read, Rc::clone(&pending)));
        Rc::new(Self {
            requests,
            pending,
            next_id: Cell::new(0),
        })
    }

    async fn call(&self, payload: Bytes) -> Result<(), String> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let (reply_to, reply) = oneshot::channel();
        self.pending.borrow_mut().insert(id, reply_to);
        if self.requests.send((id, payload.clone())).is_err() {
            self.pending.borrow_mut().remove(&id);
            return Err("raw-tokio writer task stopped".into());
        }
        let frame = reply
            .await
            .map_err(|_| "raw-tokio reader task stopped".to_string())?;
        check_frame(&frame, id, &payload)
    }
}

/// Encodes every request queued at the moment into one buffer and writes it with
/// one `write_all`: under load, one syscall carries many requests.
async fn raw_writer(mut write: OwnedWriteHalf, mut queued: mpsc::UnboundedReceiver<(u64, Bytes)>) {
    let mut codec = FrameCodec::default();
    let mut buffer = BytesMut::with_capacity(IO_BUFFER);
    while let Some((id, payload)) = queued.recv().await {
        let mut next = Some((id, payload));
        while let Some((id, payload)) = next {
            if let Err(error) = codec.encode(Frame::request(id, payload), &mut buffer) {
                eprintln!("raw-tokio writer: {error}");
                return;
            }
            next = queued.try_recv().ok();
        }
        if let Err(error) = write.write_all(&buffer).await {
            eprintln!("raw-tokio writer: {error}");
            return;
        }
        buffer.clear();
    }
}

/// Decodes replies and completes the matching caller's oneshot. When the stream
/// ends, every waiting caller is failed by dropping its sender.
async fn raw_reader(read: OwnedReadHalf, pending: Pending) {
    let mut frames = FramedRead::with_capacity(read, FrameCodec::default(), IO_BUFFER);
    while let Some(frame) = frames.next().await {
        match frame {
            Ok(frame) => {
                // A reply nobody waits for (cannot happen with this server) is
                // dropped; the caller's id check catches a misdelivered one.
                let reply_to = pending.borrow_mut().remove(&frame.id);
                if let Some(reply_to) = reply_to {
                    let _ = reply_to.send(frame);
                }
            }
            Err(error) => {
                eprintln!("raw-tokio reader: {error}");
                break;
            }
        }
    }
    pending.borrow_mut().clear();
}

/// A caller sharing the raw client.
struct RawCaller {
    client: Rc<RawClient>,
}

impl Caller for RawCaller {
    async fn call(&mut self, payload: Bytes) -> Result<(), String> {
        self.client.call(payload).await
    }
}

// ---------------------------------------------------------------------------------
// mutex: a framed stream behind a mutex, one round trip per lock.

type SharedFramed = Arc<tokio::sync::Mutex<Framed<TcpStream, FrameCodec>>>;

/// A caller that locks the shared stream for its whole round trip. Ids are
/// `caller << 32 | seq`, unique without any shared counter.
struct MutexCaller {
    stream: SharedFramed,
    next_id: u64,
}

impl Caller for MutexCaller {
    async fn call(&mut self, payload: Bytes) -> Result<(), String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut stream = self.stream.lock().await;
        // `send` flushes: one write per call, as this pattern implies.
        stream
            .send(Frame::request(id, payload.clone()))
            .await
            .map_err(|error| format!("mutex send: {error}"))?;
        let frame = stream
            .next()
            .await
            .ok_or("mutex client: connection closed")?
            .map_err(|error| format!("mutex receive: {error}"))?;
        drop(stream);
        check_frame(&frame, id, &payload)
    }
}

// ---------------------------------------------------------------------------------
// Checks shared by the clients.

fn check_frame(frame: &Frame, id: u64, payload: &Bytes) -> Result<(), String> {
    if frame.kind != FrameKind::Response {
        return Err(format!("expected a response, got {:?}", frame.kind));
    }
    if frame.id != id {
        return Err(format!("reply id {} for request {id}", frame.id));
    }
    check_payload(&frame.payload, payload)
}

fn check_payload(reply: &Bytes, payload: &Bytes) -> Result<(), String> {
    if reply == payload {
        Ok(())
    } else {
        Err(format!(
            "reply payload {reply:?} differs from request {payload:?}"
        ))
    }
}

// ---------------------------------------------------------------------------------
// The run.

/// The three clients, each with its own connection to the same server, kept for the
/// whole run so every measurement starts from an established connection.
struct Clients {
    switchboard: SwitchboardAddr,
    raw: Rc<RawClient>,
    mutex: SharedFramed,
}

impl Clients {
    async fn connect(server: SocketAddr) -> BenchResult<Self> {
        let connect = || async move {
            let stream = TcpStream::connect(server).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        };
        Ok(Self {
            switchboard: switchboard_client(connect().await?)?,
            raw: RawClient::start(connect().await?),
            mutex: Arc::new(tokio::sync::Mutex::new(Framed::new(
                connect().await?,
                FrameCodec::default(),
            ))),
        })
    }

    async fn measure(
        &self,
        system: System,
        concurrency: usize,
        settings: Settings,
    ) -> BenchResult<Measurement> {
        match system {
            System::Switchboard => {
                let callers = (0..concurrency)
                    .map(|_| SwitchboardCaller {
                        addr: self.switchboard.clone(),
                    })
                    .collect();
                measure(callers, settings).await
            }
            System::RawTokio => {
                let callers = (0..concurrency)
                    .map(|_| RawCaller {
                        client: Rc::clone(&self.raw),
                    })
                    .collect();
                measure(callers, settings).await
            }
            System::Mutex => {
                let callers = (0..concurrency as u64)
                    .map(|caller| MutexCaller {
                        stream: Arc::clone(&self.mutex),
                        next_id: caller << 32,
                    })
                    .collect();
                measure(callers, settings).await
            }
        }
    }
}

/// Every round's measurement of each (system, concurrency).
type Rounds = HashMap<(System, usize), Vec<Measurement>>;

/// Runs all rounds, interleaving the systems within each concurrency.
async fn run(server: SocketAddr, settings: Settings) -> BenchResult<Rounds> {
    let clients = Clients::connect(server).await?;
    let mut rounds = Rounds::new();
    for round in 1..=ROUNDS {
        for concurrency in CONCURRENCIES {
            for system in System::ALL {
                let m = clients.measure(system, concurrency, settings).await?;
                println!(
                    "round {round}/{ROUNDS}  concurrency {concurrency:>3}  {:<11}  {:>9.0} ops/s  p50 {:>5} us  p99 {:>6} us",
                    system.name(),
                    m.ops_per_sec,
                    m.p50_us,
                    m.p99_us,
                );
                rounds.entry((system, concurrency)).or_default().push(m);
            }
        }
    }
    Ok(rounds)
}

/// A reported row: the median round of one (system, concurrency).
struct Row {
    system: System,
    concurrency: usize,
    result: Measurement,
    ratio_vs_raw_tokio: f64,
}

/// The round with the median ops/sec, whole (its latencies belong to the same run).
fn rows(rounds: &Rounds) -> Vec<Row> {
    let mut rows = Vec::new();
    for concurrency in CONCURRENCIES {
        let raw = median(&rounds[&(System::RawTokio, concurrency)]);
        for system in System::ALL {
            let result = median(&rounds[&(system, concurrency)]);
            rows.push(Row {
                system,
                concurrency,
                result,
                ratio_vs_raw_tokio: result.ops_per_sec / raw.ops_per_sec,
            });
        }
    }
    rows
}

fn print_table(rows: &[Row]) {
    println!();
    println!("median of {ROUNDS} rounds by ops/sec; p50/p99 from that round");
    println!(
        "{:<9} {:<11} {:>11} {:>10} {:>7} {:>7} {:>18}",
        "case", "system", "concurrency", "ops/sec", "p50_us", "p99_us", "ratio vs raw-tokio"
    );
    for row in rows {
        println!(
            "{:<9} {:<11} {:>11} {:>10.0} {:>7} {:>7} {:>18.2}",
            CASE,
            row.system.name(),
            row.concurrency,
            row.result.ops_per_sec,
            row.result.p50_us,
            row.result.p99_us,
            row.ratio_vs_raw_tokio,
        );
    }
    println!();
    let ratios: Vec<String> = rows
        .iter()
        .filter(|row| row.system == System::Switchboard)
        .map(|row| format!("{:.2}x at {}", row.ratio_vs_raw_tokio, row.concurrency))
        .collect();
    println!("switchboard / raw-tokio: {}", ratios.join(", "));
}

/// The rows as JSON, in the shape every bench of this crate writes.
fn to_json(rows: &[Row]) -> String {
    let mut json = String::from("{\"bench\": \"throughput\", \"rows\": [");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            json.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(
            json,
            "{{\"case\": \"{CASE}\", \"system\": \"{}\", \"concurrency\": {}, \"ops_per_sec\": {:.1}, \"p50_us\": {}, \"p99_us\": {}, \"ratio_vs_raw_tokio\": {:.4}}}",
            row.system.name(),
            row.concurrency,
            row.result.ops_per_sec,
            row.result.p50_us,
            row.result.p99_us,
            row.ratio_vs_raw_tokio,
        );
    }
    json.push_str("]}\n");
    json
}

fn main() -> BenchResult<()> {
    let settings = Settings::from_args();
    let server = EchoServer::start()?;
    println!(
        "throughput: {CASE}, {} rounds, {:?} warm-up + {:?} per measurement, echo server on {}",
        ROUNDS,
        settings.warm_up,
        settings.measure,
        server.addr()
    );

    let rounds = actix_rt::System::new().block_on(run(server.addr(), settings))?;
    server.shutdown();

    let rows = rows(&rounds);
    print_table(&rows);

    let path = support::results_path("throughput");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, to_json(&rows))?;
    println!("wrote {}", path.display());
    Ok(())
}
