//! Shared set-up for the simulation tests (`tests/sim_*.rs`): a turmoil simulation with
//! a `server` host running the crate's frame server ([`EchoServer`]) and a `client`
//! host whose [`Pool`] of [`SIZE`] connections goes through a [`SimConnector`];
//! helpers to start calls, record when and how each ended, and wait for the pool.
//!
//! Everything inside the hosts runs in simulated time: every bound below is simulated
//! time and costs no real time; the real run time of a test is what its simulated
//! steps take to compute (each scenario here runs in well under a second in debug).

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use actix::{Actor, Context, Handler, Recipient};
use bytes::Bytes;
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::testkit::sim::{self, EchoServer, SimConnector};
use switchboard::{
    Authority, CallError, CloseReason, ConnectionConfig, ConnectionEvent, ConnectionId, Pool,
    PoolBuilder, PoolConfig, PoolHandle, Spread,
};

/// The seed of the tests that need no particular one, unless [`seed`] is given
/// another.
pub const SEED: u64 = 0x5eed_0005;

/// The environment variable that overrides [`SEED`], to run the scenarios under
/// other seeds: `SWITCHBOARD_SIM_SEED=42 cargo test --features sim --test sim_crash`.
pub const SEED_VAR: &str = "SWITCHBOARD_SIM_SEED";

/// The seed to run with: [`SEED_VAR`] if set, else [`SEED`].
///
/// # Panics
/// If the variable is set but is not a number.
pub fn seed() -> u64 {
    match std::env::var(SEED_VAR) {
        Ok(seed) => seed
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={seed:?} is not a u64")),
        Err(_) => SEED,
    }
}
/// The server host's name.
pub const SERVER: &str = "server";
/// The client host's name.
pub const CLIENT: &str = "client";
/// Where the server listens.
pub const PORT: u16 = 7000;
/// Connections the client's pool keeps open (`min_idle` = `max_size`).
pub const SIZE: usize = 3;

/// Link latency: every message takes between these two, drawn from the seed.
pub const MIN_LATENCY: Duration = Duration::from_millis(5);
/// See [`MIN_LATENCY`].
pub const MAX_LATENCY: Duration = Duration::from_millis(25);

/// A ping goes out after this long without a frame from the peer.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A connection whose peer is silent this long is closed.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// The calls' timeout unless a test sets another: far beyond the heartbeat's bounds,
/// so a call on a dead link ends by the heartbeat, not by its own timeout.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// The pool's longest reconnect backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The pool's connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How soon after the server is reachable again the pool is full: the longest
/// backoff (the pool probes a down authority that often at most), then the first
/// connect's round trip, then that of the connections opened once it succeeded, and
/// a few milliseconds for a bounced server to bind its port.
pub const REFILL: Duration = BACKOFF_MAX
    .saturating_add(MAX_LATENCY.saturating_mul(4))
    .saturating_add(Duration::from_millis(10));
/// The bound on waits that should end within a few round trips.
pub const WAIT: Duration = Duration::from_secs(2);

/// The client's pool.
pub type SimPool = PoolHandle<SimConnector, FrameProtocol>;

/// A simulation seeded with `seed`, with [`MIN_LATENCY`]..[`MAX_LATENCY`] links, that
/// fails if it runs for more than a minute of simulated time.
pub fn simulation(seed: u64) -> turmoil::Sim<'static> {
    sim::builder(seed)
        .simulation_duration(Duration::from_secs(60))
        .min_message_latency(MIN_LATENCY)
        .max_message_latency(MAX_LATENCY)
        .build()
}

/// Connection settings with the test heartbeat and `call_timeout`.
pub fn connection_config(call_timeout: Duration) -> ConnectionConfig {
    ConnectionConfig::builder()
        .call_timeout(call_timeout)
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .heartbeat_timeout(HEARTBEAT_TIMEOUT)
        .build()
        .expect("valid connection config")
}

/// Adds the [`SERVER`] host: an echo frame server on [`PORT`], its connections with
/// the test heartbeat.
pub fn add_server(sim: &mut turmoil::Sim<'static>) {
    let server = EchoServer::new(PORT).connection(connection_config(CALL_TIMEOUT));
    sim.host(SERVER, move || server.clone().run());
}

/// Where the client connects.
pub fn authority() -> Authority {
    Authority::tcp(SERVER, PORT)
}

/// The client's pool, not started: [`SIZE`] connections with `connection` settings,
/// through a [`SimConnector`]. No health checks, reaping or lifetime: only the
/// heartbeat finds dead links.
pub fn pool_builder(connection: ConnectionConfig) -> PoolBuilder<SimConnector, FrameProtocol> {
    let config = PoolConfig::builder()
        .min_idle(SIZE)
        .max_size(SIZE)
        .connect_timeout(CONNECT_TIMEOUT)
        .backoff_base(Duration::from_millis(100))
        .backoff_max(BACKOFF_MAX)
        .checkout_timeout(Duration::from_secs(5))
        .test_on_checkout_after(None)
        .health_check_interval(None)
        .idle_timeout(None)
        .max_lifetime(None)
        .build()
        .expect("valid pool config");
    let connector = SimConnector::new().connect_timeout(CONNECT_TIMEOUT);
    Pool::builder(connector, FrameProtocol::default())
        .config(config)
        .connection(connection)
        .authority(authority())
}

/// Starts the client's pool ([`pool_builder`]) eagerly: returns once its [`SIZE`]
/// connections are open. Its connection events go to `events`.
pub async fn start_pool(
    connection: ConnectionConfig,
    events: Recipient<ConnectionEvent>,
) -> SimPool {
    pool_builder(connection)
        .events(events)
        .build()
        .await
        .expect("pool fills up")
}

/// Simulated time since the simulation started.
pub fn now() -> Duration {
    turmoil::sim_elapsed().expect("inside a simulated host")
}

/// How one call ended.
#[derive(Clone)]
pub struct Ended {
    /// The call's number, in the order the calls were started.
    pub call: usize,
    /// When it ended (simulated time since the simulation started).
    pub at: Duration,
    /// What it got.
    pub outcome: Result<Bytes, CallError>,
}

impl Ended {
    /// The outcome in short: `ok` when the reply is the call's own payload,
    /// `ok(<other payload>)` when it is not, else the error's kind (with the close
    /// reason's kind for `closed`).
    pub fn kind(&self, prefix: &str) -> String {
        match &self.outcome {
            Ok(reply) if reply[..] == *payload(prefix, self.call) => "ok".to_owned(),
            Ok(reply) => format!("ok({})", String::from_utf8_lossy(reply)),
            Err(CallError::Closed(reason)) => format!("closed:{}", reason.kind()),
            Err(error) => error.kind().to_owned(),
        }
    }
}

impl fmt::Debug for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} at {:?}: {:?}", self.call, self.at, self.outcome)
    }
}

/// The payload of call `n` of a batch.
pub fn payload(prefix: &str, n: usize) -> Bytes {
    Bytes::from(format!("{prefix}-{n}"))
}

/// A batch of calls running on the client host, each recording how it ended.
pub struct Calls {
    prefix: &'static str,
    count: usize,
    ended: Rc<RefCell<Vec<Ended>>>,
}

impl Calls {
    /// Starts `count` calls with payloads `{prefix}-{n}`, each on the less loaded of two
    /// of the pool's connections picked at random (so a burst spreads over all of
    /// them: the least loaded one would take all the calls of a burst, up to the
    /// pool's grow threshold), and returns at once.
    pub async fn start(pool: &SimPool, prefix: &'static str, count: usize) -> Self {
        let ended = Rc::new(RefCell::new(Vec::new()));
        for call in 0..count {
            let connection = pool
                .shared_by(&authority(), Spread::TwoChoices, Some(WAIT))
                .await
                .expect("a connection to call on");
            let request = FrameRequest::new(payload(prefix, call));
            let ended = ended.clone();
            actix::spawn(async move {
                let outcome = connection.call(request).await;
                ended.borrow_mut().push(Ended {
                    call,
                    at: now(),
                    outcome,
                });
            });
        }
        Self {
            prefix,
            count,
            ended,
        }
    }

    /// The payload prefix of this batch.
    pub fn prefix(&self) -> &'static str {
        self.prefix
    }

    /// The calls that ended so far, in the order they ended.
    pub fn ended(&self) -> Vec<Ended> {
        self.ended.borrow().clone()
    }

    /// Waits until every call ended, at most `within`; returns them in the order they
    /// ended, and checks that each ended exactly once.
    ///
    /// # Panics
    /// If some call has not ended in time, or one ended twice.
    pub async fn all_ended(&self, within: Duration) -> Vec<Ended> {
        let deadline = tokio::time::Instant::now() + within;
        while self.ended.borrow().len() < self.count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {} calls ended within {within:?}: {:?}",
                self.ended.borrow().len(),
                self.count,
                self.ended()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let ended = self.ended();
        let mut seen: Vec<usize> = ended.iter().map(|end| end.call).collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..self.count).collect::<Vec<_>>(),
            "each call ends exactly once: {ended:?}"
        );
        ended
    }

    /// Whether any call ended so far.
    pub fn any_ended(&self) -> bool {
        !self.ended.borrow().is_empty()
    }
}

/// Waits until the pool holds [`SIZE`] open, idle connections, polling every
/// millisecond for at most `within`; returns the simulated time it took.
///
/// # Panics
/// If the pool is not full in time.
pub async fn until_full(pool: &SimPool, within: Duration) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        let status = pool.status().await.expect("pool running");
        let group = status.authority(&authority()).expect("the authority");
        if group.size == SIZE && group.idle == SIZE {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "pool not full within {within:?}: {group:#?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Records the pool's connection events with the simulated time each arrived.
#[derive(Clone, Default)]
pub struct EventLog {
    events: Rc<RefCell<Vec<(Duration, ConnectionEvent)>>>,
}

/// The actor behind an [`EventLog`].
struct EventRecorder(EventLog);

impl Actor for EventRecorder {
    type Context = Context<Self>;
}

impl Handler<ConnectionEvent> for EventRecorder {
    type Result = ();

    fn handle(&mut self, event: ConnectionEvent, _: &mut Context<Self>) {
        self.0.events.borrow_mut().push((now(), event));
    }
}

impl EventLog {
    /// Starts recording; give the recipient to the pool.
    pub fn start() -> (Self, Recipient<ConnectionEvent>) {
        let log = Self::default();
        let recipient = EventRecorder(log.clone()).start().recipient();
        (log, recipient)
    }

    /// Every event so far, with when it arrived.
    pub fn events(&self) -> Vec<(Duration, ConnectionEvent)> {
        self.events.borrow().clone()
    }

    /// The connections that connected, in order, with when.
    pub fn connected_at(&self) -> Vec<(ConnectionId, Duration)> {
        self.events
            .borrow()
            .iter()
            .filter_map(|(at, event)| match event {
                ConnectionEvent::Connected { id, .. } => Some((*id, *at)),
                _ => None,
            })
            .collect()
    }

    /// The ids of the connections that connected, in order.
    pub fn connected(&self) -> Vec<ConnectionId> {
        self.events
            .borrow()
            .iter()
            .filter_map(|(_, event)| match event {
                ConnectionEvent::Connected { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Waits until `count` connections have connected in all, at most `within`;
    /// returns their ids.
    ///
    /// # Panics
    /// If fewer connected in time.
    pub async fn until_connected(&self, count: usize, within: Duration) -> Vec<ConnectionId> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let connected = self.connected();
            if connected.len() >= count {
                return connected;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {count} connections connected within {within:?}",
                connected.len()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Every close: which connection, why, when.
    pub fn closed(&self) -> Vec<(ConnectionId, CloseReason, Duration)> {
        self.events
            .borrow()
            .iter()
            .filter_map(|(at, event)| match event {
                ConnectionEvent::Closed { id, reason } => Some((*id, reason.clone(), *at)),
                _ => None,
            })
            .collect()
    }

    /// Waits until each of `ids` has closed, at most `within`; checks that each
    /// closed exactly once and returns their closes in the order of `ids`.
    ///
    /// # Panics
    /// If one has not closed in time, or closed twice.
    pub async fn closed_once(
        &self,
        ids: &[ConnectionId],
        within: Duration,
    ) -> Vec<(ConnectionId, CloseReason, Duration)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let closed = self.closed();
            let closes: Vec<Vec<_>> = ids
                .iter()
                .map(|id| closed.iter().filter(|(of, ..)| of == id).cloned().collect())
                .collect();
            if closes.iter().all(|of_one| !of_one.is_empty()) {
                for (id, of_one) in ids.iter().zip(&closes) {
                    assert_eq!(of_one.len(), 1, "{id:?} closed exactly once: {closed:?}");
                }
                return closes
                    .into_iter()
                    .map(|mut of_one| of_one.remove(0))
                    .collect();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not every one of {ids:?} closed within {within:?}: {closed:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
