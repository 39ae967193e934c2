//! Shared set-up for the Pool integration tests: an in-memory `frame` server whose
//! connections can be killed and which can be stopped and restarted, and a connector
//! that fails, hangs or succeeds as a test scripts it (bb8's `NthConnectionFailManager`,
//! deadpool's `Gate`).
//!
//! Everything runs on the test's actix runtime, so tests can pause tokio's clock:
//! backoffs, timeouts and reaping then take no real time.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use std::collections::BTreeSet;

use switchboard::pool::{AuthorityStatus, PoolStatus};
use switchboard::protocol::frame::{Frame, FrameCodec, FrameKind, FrameProtocol, FrameRequest};
use switchboard::transport::{Connector, MemoryConnector, MemoryNetwork};
use switchboard::{
    Authority, ConnectError, ConnectionConfig, ConnectionId, Lease, Pool, PoolBuilder, PoolConfig,
    PoolConfigBuilder, PoolError, PoolHandle,
};
use tokio::io::DuplexStream;
use tokio::sync::{oneshot, watch};
use tokio_util::codec::Framed;

/// The pool type the tests use.
pub type TestPool = PoolHandle<ScriptedConnector, FrameProtocol>;

/// A lease from the test pool.
pub type TestLease = Lease<ScriptedConnector, FrameProtocol>;

/// The bound on every wait that should end at once (virtual time: costs nothing).
pub const WAIT: Duration = Duration::from_secs(5);

/// A pool config builder with test-friendly defaults: no reaping, no health checks
/// unless a test turns them on, short backoff.
pub fn config() -> PoolConfigBuilder {
    PoolConfig::builder()
        .test_on_checkout_after(None)
        .health_check_interval(None)
        .idle_timeout(None)
        .max_lifetime(None)
        .backoff_base(Duration::from_millis(50))
        .backoff_max(Duration::from_millis(500))
        .checkout_timeout(Duration::from_secs(2))
}

/// Connection settings for pooled test connections (the server answers pings).
pub fn connection_config() -> ConnectionConfig {
    ConnectionConfig::builder()
        .heartbeat_interval(Duration::from_secs(5))
        .heartbeat_timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// An in-memory `frame` server: answers pings, echoes requests (a payload
/// `sleep:<ms>` is answered after that many milliseconds), and can kill its
/// connections, stop listening and listen again.
#[derive(Clone)]
pub struct Server {
    network: MemoryNetwork,
    name: Arc<str>,
    inner: Rc<RefCell<ServerInner>>,
}

#[derive(Default)]
struct ServerInner {
    next: u64,
    /// Kill switches of live connections.
    connections: HashMap<u64, oneshot::Sender<()>>,
    accepted: usize,
    /// Stops the accept loop.
    listening: Option<oneshot::Sender<()>>,
    /// Connections that read but answer nothing (see `Server::mute`).
    muted: std::collections::HashSet<u64>,
}

impl Server {
    /// Starts listening at `memory://name` on `network`.
    pub fn start(network: &MemoryNetwork, name: &str) -> Self {
        let server = Self {
            network: network.clone(),
            name: name.into(),
            inner: Rc::default(),
        };
        server.listen();
        server
    }

    pub fn authority(&self) -> Authority {
        Authority::memory(&*self.name)
    }

    fn listen(&self) {
        let mut listener = self.network.bind(&self.name);
        let (stop, mut stopped) = oneshot::channel();
        self.inner.borrow_mut().listening = Some(stop);
        let server = self.clone();
        actix::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => match accepted {
                        Some(stream) => server.serve(stream),
                        None => break,
                    },
                }
            }
            // Dropping the listener refuses new connects.
        });
    }

    fn serve(&self, stream: DuplexStream) {
        let (kill, mut killed) = oneshot::channel();
        let id = {
            let mut inner = self.inner.borrow_mut();
            inner.next += 1;
            inner.accepted += 1;
            let id = inner.next;
            inner.connections.insert(id, kill);
            id
        };
        let inner = self.inner.clone();
        actix::spawn(async move {
            let framed = Framed::new(stream, FrameCodec::default());
            let (mut sink, mut frames) = framed.split();
            let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Frame>();
            let writer = actix::spawn(async move {
                while let Some(frame) = out_rx.recv().await {
                    if sink.send(frame).await.is_err() {
                        break;
                    }
                }
            });
            loop {
                tokio::select! {
                    _ = &mut killed => break,
                    frame = frames.next() => {
                        let Some(Ok(frame)) = frame else { break };
                        match frame.kind {
                            // A muted connection swallows pings and requests.
                            FrameKind::Ping if !inner.borrow().muted.contains(&id) => {
                                let _ = out_tx.send(Frame::pong(frame.id));
                            }
                            FrameKind::Request if !inner.borrow().muted.contains(&id) => {
                                let delay = std::str::from_utf8(&frame.payload)
                                    .ok()
                                    .and_then(|text| text.strip_prefix("sleep:"))
                                    .and_then(|ms| ms.parse::<u64>().ok());
                                let out = out_tx.clone();
                                let reply = Frame::response(frame.id, frame.payload.clone());
                                match delay {
                                    Some(ms) => {
                                        actix::spawn(async move {
                                            tokio::time::sleep(Duration::from_millis(ms)).await;
                                            let _ = out.send(reply);
                                        });
                                    }
                                    None => {
                                        let _ = out.send(reply);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            writer.abort();
            inner.borrow_mut().connections.remove(&id);
        });
    }

    /// Connections accepted since the server started.
    pub fn accepted(&self) -> usize {
        self.inner.borrow().accepted
    }

    /// Connections open on the server side.
    pub fn open(&self) -> usize {
        self.inner.borrow().connections.len()
    }

    /// Closes every connection (the client sees EOF).
    pub fn kill_all(&self) {
        let kills: Vec<_> = self.inner.borrow_mut().connections.drain().collect();
        for (_, kill) in kills {
            let _ = kill.send(());
        }
    }

    /// Closes `count` connections.
    pub fn kill(&self, count: usize) {
        let kills: Vec<_> = {
            let mut inner = self.inner.borrow_mut();
            let ids: Vec<u64> = inner.connections.keys().copied().take(count).collect();
            ids.into_iter()
                .filter_map(|id| inner.connections.remove(&id))
                .collect()
        };
        for kill in kills {
            let _ = kill.send(());
        }
    }

    /// Stops listening (connects are refused) and kills every connection.
    pub fn stop(&self) {
        if let Some(stop) = self.inner.borrow_mut().listening.take() {
            let _ = stop.send(());
        }
        self.kill_all();
    }

    /// Listens again after `stop`.
    pub fn restart(&self) {
        self.listen();
    }
}

/// What the next connect attempts do.
#[derive(Debug, Clone)]
pub enum Gate {
    /// Connect normally.
    Open,
    /// Fail with `Refused`.
    Refuse,
    /// Never finish (the pool's connect timeout must end it).
    Hang,
    /// Panic inside the connect future (a buggy connector).
    Panic,
    /// Wait until the test calls [`ScriptedConnector::release`], then connect as
    /// `Open` does. An attempt dropped while it waits (its pool stopped) never
    /// connects.
    Hold,
}

/// A connector over a [`MemoryNetwork`] that a test can script: fail the Nth attempt,
/// fail or hang every attempt, and count attempts.
#[derive(Clone)]
pub struct ScriptedConnector {
    inner: MemoryConnector,
    script: Arc<Mutex<Script>>,
    attempts: Arc<AtomicUsize>,
    /// Whether held attempts may go on (see [`Gate::Hold`]).
    released: Arc<watch::Sender<bool>>,
    /// Attempts waiting at a [`Gate::Hold`] now.
    held: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Script {
    gate: Gate,
    /// Attempt numbers (1-based) that fail with `Refused` whatever the gate.
    fail_attempts: Vec<usize>,
}

impl ScriptedConnector {
    pub fn new(network: &MemoryNetwork) -> Self {
        Self {
            inner: network.connector(),
            script: Arc::new(Mutex::new(Script {
                gate: Gate::Open,
                fail_attempts: Vec::new(),
            })),
            attempts: Arc::default(),
            released: Arc::new(watch::channel(false).0),
            held: Arc::default(),
        }
    }

    /// What every later attempt does.
    pub fn set_gate(&self, gate: Gate) {
        if matches!(gate, Gate::Hold) {
            self.released.send_replace(false);
        }
        self.script.lock().unwrap().gate = gate;
    }

    /// Lets every attempt held at a [`Gate::Hold`] connect, and opens the gate.
    pub fn release(&self) {
        self.set_gate(Gate::Open);
        self.released.send_replace(true);
    }

    /// Attempts waiting at a [`Gate::Hold`] now (an attempt dropped by its pool
    /// no longer counts).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Makes attempt number `n` (1-based, counted from the start) fail.
    pub fn fail_attempt(&self, n: usize) {
        self.script.lock().unwrap().fail_attempts.push(n);
    }

    /// Connect attempts so far.
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

impl Connector for ScriptedConnector {
    type Io = DuplexStream;

    fn connect(
        &self,
        authority: &Authority,
    ) -> LocalBoxFuture<'static, Result<DuplexStream, ConnectError>> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let gate = {
            let script = self.script.lock().unwrap();
            if script.fail_attempts.contains(&n) {
                Gate::Refuse
            } else {
                script.gate.clone()
            }
        };
        match gate {
            Gate::Open => self.inner.connect(authority),
            Gate::Refuse => {
                // The in-memory connector's own refusal: nothing listens here.
                let nowhere = Authority::memory("switchboard-test-nowhere");
                let connect = self.inner.connect(&nowhere);
                let authority = authority.clone();
                async move {
                    match connect.await {
                        Err(_) => Err(ConnectError::Refused { authority }),
                        Ok(_) => unreachable!("nothing listens at the nowhere authority"),
                    }
                }
                .boxed_local()
            }
            Gate::Hang => futures::future::pending().boxed_local(),
            Gate::Panic => async { panic!("scripted connector panic") }.boxed_local(),
            Gate::Hold => {
                let mut released = self.released.subscribe();
                let holding = Holding::new(&self.held);
                let (inner, authority) = (self.inner.clone(), authority.clone());
                async move {
                    // The sender lives as long as the connector: never closed here.
                    let _ = released.wait_for(|&go| go).await;
                    drop(holding);
                    inner.connect(&authority).await
                }
                .boxed_local()
            }
        }
    }
}

/// Counts one attempt held at a [`Gate::Hold`] for as long as it lives.
struct Holding(Arc<AtomicUsize>);

impl Holding {
    fn new(held: &Arc<AtomicUsize>) -> Self {
        held.fetch_add(1, Ordering::SeqCst);
        Self(held.clone())
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The status of the one authority a test uses.
pub fn only(status: &PoolStatus) -> &switchboard::pool::AuthorityStatus {
    assert_eq!(status.authorities.len(), 1, "one authority: {status:#?}");
    &status.authorities[0]
}

/// Checks that an authority's counts add up: every connection is idle, leased or busy,
/// and the per-connection list agrees.
pub fn assert_consistent(status: &switchboard::pool::AuthorityStatus) {
    assert_eq!(
        status.size,
        status.idle + status.leased + status.busy,
        "size = idle + leased + busy: {status:#?}"
    );
    assert_eq!(status.connections.len(), status.size, "{status:#?}");
    assert!(status.size <= status.max_size, "{status:#?}");
}

/// Polls `status` (letting the actors run) until `done` holds, for at most `within`
/// of (virtual) time. Returns the last status.
pub async fn until(
    pool: &TestPool,
    within: Duration,
    mut done: impl FnMut(&switchboard::pool::AuthorityStatus) -> bool,
) -> PoolStatus {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let status = pool.status().await.expect("pool running");
        if status.authorities.len() == 1 && done(&status.authorities[0]) {
            return status;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("condition not reached within {within:?}: {status:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `future` with a bound, failing the test if it does not finish.
pub async fn within<F: Future>(bound: Duration, what: &str, future: F) -> F::Output {
    tokio::time::timeout(bound, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {bound:?}"))
}

/// Lets spawned tasks and actors run for a moment of virtual time.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Muting: a peer that stays connected but answers nothing (a hung server, a half-open
/// link), for health checks and tests on checkout.
impl Server {
    /// Makes `count` open connections stop answering pings and requests (they still
    /// read, and stay open). Returns how many were muted.
    pub fn mute(&self, count: usize) -> usize {
        let mut inner = self.inner.borrow_mut();
        let ids: Vec<u64> = inner
            .connections
            .keys()
            .copied()
            .filter(|id| !inner.muted.contains(id))
            .take(count)
            .collect();
        inner.muted.extend(&ids);
        ids.len()
    }

    /// Makes every open connection stop answering (connections accepted later answer).
    pub fn mute_all(&self) -> usize {
        self.mute(usize::MAX)
    }

    /// Makes every muted connection answer again (what it swallowed stays lost).
    pub fn unmute_all(&self) {
        self.inner.borrow_mut().muted.clear();
    }

    /// Open connections that are muted.
    pub fn muted(&self) -> usize {
        let inner = self.inner.borrow();
        inner
            .connections
            .keys()
            .filter(|id| inner.muted.contains(id))
            .count()
    }
}

/// Waits (bounded, in virtual time) until the server holds `count` open connections.
pub async fn until_server_open(server: &Server, count: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while server.open() != count {
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "server still holds {} connections, not {count}, after {within:?}",
                server.open()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ends a test: waits (bounded) until nothing is leased, held, waiting or connecting,
/// checks that the counts add up and that the server holds exactly the pool's
/// connections (none forgotten open), then closes the pool and checks that every
/// connection closed on the server side too. Returns the last status before closing.
pub async fn finish_without_leaks(pool: &TestPool, server: &Server) -> PoolStatus {
    let status = assert_settled(pool, server).await;
    within(WAIT, "close the pool", pool.close()).await;
    until_server_open(server, 0, WAIT).await;
    status
}

/// Waits (bounded) until nothing is leased, held, waiting or connecting, and checks
/// that the counts add up and that the server holds exactly the pool's connections
/// (none forgotten open). Returns that status.
pub async fn assert_settled(pool: &TestPool, server: &Server) -> PoolStatus {
    let status = until(pool, WAIT, |s| {
        s.leased == 0
            && s.busy == 0
            && s.waiters == 0
            && s.connecting == 0
            && server.open() == s.size
    })
    .await;
    assert_consistent(only(&status));
    status
}

/// What every pool test stands on: a network with a server listening at `memory://db`
/// and a scripted connector over that network.
pub struct TestBed {
    pub network: MemoryNetwork,
    pub server: Server,
    pub connector: ScriptedConnector,
}

impl Default for TestBed {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBed {
    pub fn new() -> Self {
        let network = MemoryNetwork::new();
        let server = Server::start(&network, "db");
        let connector = ScriptedConnector::new(&network);
        Self {
            network,
            server,
            connector,
        }
    }

    /// A pool builder over this bed's connector, for the server's authority, with
    /// `config` and the test connection settings; a test adds what it varies
    /// (arbiters, other authorities, its own connection settings) and starts it.
    pub fn pool(&self, config: PoolConfigBuilder) -> PoolBuilder<ScriptedConnector, FrameProtocol> {
        Pool::builder(self.connector.clone(), FrameProtocol::default())
            .config(config.build().unwrap())
            .connection(connection_config())
            .authority(self.server.authority())
    }
}

/// Builds a pool eagerly (bounded): it is ready, `min_idle` connections open.
pub async fn build_eagerly(builder: PoolBuilder<ScriptedConnector, FrameProtocol>) -> TestPool {
    within(WAIT, "eager build", builder.build())
        .await
        .expect("eager build connects")
}

/// A server at `memory://db`, a scripted connector and a pool over them with `config`,
/// built eagerly: its `min_idle` connections are open when this returns.
pub async fn start_pool(config: PoolConfigBuilder) -> (Server, ScriptedConnector, TestPool) {
    let bed = TestBed::new();
    let pool = build_eagerly(bed.pool(config)).await;
    (bed.server, bed.connector, pool)
}

/// Like [`start_pool`], but started lazily, so a connector that fails from the outset
/// does not fail the set-up.
pub fn start_pool_lazily(config: PoolConfigBuilder) -> (Server, ScriptedConnector, TestPool) {
    let bed = TestBed::new();
    let pool = bed.pool(config).start();
    (bed.server, bed.connector, pool)
}

/// The pool's status (it must be running).
pub async fn status(pool: &TestPool) -> PoolStatus {
    pool.status().await.expect("pool running")
}

/// The ids of an authority's connections.
pub fn ids(status: &AuthorityStatus) -> BTreeSet<ConnectionId> {
    status.connections.iter().map(|c| c.id).collect()
}

/// Calls through a lease and checks the reply is this call's own: the connection
/// really works.
pub async fn echo(lease: &TestLease, text: &str) {
    let reply = within(WAIT, "call", lease.call(FrameRequest::new(text.to_owned())))
        .await
        .unwrap_or_else(|error| panic!("call {text:?} through {:?}: {error}", lease.id()));
    assert_eq!(&reply[..], text.as_bytes());
}

/// A checkout in a task of its own, so the test can go on while it waits.
pub fn spawn_checkout(
    pool: &TestPool,
    authority: &Authority,
) -> tokio::task::JoinHandle<Result<TestLease, PoolError>> {
    let (pool, authority) = (pool.clone(), authority.clone());
    actix::spawn(async move { pool.checkout(&authority).await })
}

/// Checks that everything went back: nothing leased, nobody waiting, nothing held by
/// the pool or connecting, and the counts add up. Returns the final status.
pub async fn assert_all_returned(pool: &TestPool) -> AuthorityStatus {
    let status = until(pool, WAIT, |s| {
        s.leased == 0 && s.waiters == 0 && s.busy == 0 && s.connecting == 0
    })
    .await;
    let status = only(&status).clone();
    assert_consistent(&status);
    assert_eq!(status.idle, status.size, "{status:#?}");
    status
}

/// A checkout (bounded) whose connection answers a call: the pool serves again.
pub async fn checkout_and_echo(pool: &TestPool, authority: &Authority, text: &str) {
    let lease = within(WAIT, "checkout", pool.checkout(authority))
        .await
        .unwrap();
    echo(&lease, text).await;
}

/// Checks that `error` is a checkout's `Timeout` at `authority` after waiting at least
/// `patience`. Returns how long it waited and the last connect error it names.
pub fn assert_timed_out<'e>(
    error: &'e PoolError,
    authority: &Authority,
    patience: Duration,
) -> (Duration, &'e Option<ConnectError>) {
    match error {
        PoolError::Timeout {
            authority: at,
            waited,
            last_connect_error,
        } => {
            assert_eq!(at, authority);
            assert!(*waited >= patience, "waited {waited:?}");
            (*waited, last_connect_error)
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}
