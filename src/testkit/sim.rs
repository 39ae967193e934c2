//! Deterministic network simulation on [`turmoil`] (feature `sim`): pools, brokers
//! and servers running inside simulated hosts, over simulated TCP, in simulated time,
//! with the network faults a test scripts (partition and repair, hold and release,
//! crash and bounce of a host) and the same run for the same seed.
//!
//! - [`SimConnector`]: a [`Connector`] over [`turmoil::net::TcpStream`]. It opens
//!   [`Authority::Tcp`] authorities whose host is a simulated host's name (or IP):
//!   give it to [`Pool::builder`](crate::Pool::builder) or
//!   [`Broker::builder`](crate::Broker::builder).
//! - [`turmoil::net::TcpListener`] implements [`Accept`], so a [`Listener`] and a
//!   [`ServerBroker`] serve inside a simulated host; [`EchoServer`] is such a server,
//!   ready to be a host's software.
//! - [`builder`]: a [`turmoil::Builder`] seeded for a repeatable run.
//! - [`Faults`] and [`run`]: a client host asks for a host to be crashed or bounced
//!   at a point of its script, and the loop that drives the simulation does it (only
//!   the [`turmoil::Sim`] can).
//!
//! ```
//! use std::time::Duration;
//! use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
//! use switchboard::testkit::sim::{self, EchoServer, Faults, SimConnector};
//! use switchboard::{Authority, Pool, PoolConfig};
//!
//! // A plain function (a `#[test]`): no actix or tokio runtime around the simulation.
//! fn main() -> turmoil::Result {
//!     let mut sim = sim::builder(7)
//!         .simulation_duration(Duration::from_secs(60))
//!         .build();
//!     let server = EchoServer::new(7000);
//!     sim.host("server", move || server.clone().run());
//!
//!     let faults = Faults::new();
//!     let control = faults.clone();
//!     sim.client("client", async move {
//!         let authority = Authority::tcp("server", 7000);
//!         let config = PoolConfig::builder()
//!             .min_idle(2)
//!             .max_size(2)
//!             .backoff_max(Duration::from_secs(1))
//!             .build()?;
//!         let pool = Pool::builder(SimConnector::new(), FrameProtocol::default())
//!             .config(config)
//!             .authority(authority.clone())
//!             .build()
//!             .await?;
//!         let reply = pool.shared(&authority).await?.call(FrameRequest::new("hi")).await?;
//!         assert_eq!(&reply[..], b"hi");
//!
//!         // The server's process dies and comes back; the pool reconnects.
//!         control.crash("server");
//!         tokio::time::sleep(Duration::from_secs(2)).await;
//!         control.bounce("server");
//!         // Back within `backoff_max` and a round trip. (A checkout that waits
//!         // meanwhile gets the error of each connect that fails.)
//!         tokio::time::sleep(Duration::from_millis(1500)).await;
//!         let shared = pool.shared(&authority).await?;
//!         assert_eq!(&shared.call(FrameRequest::new("again")).await?[..], b"again");
//!         Ok(())
//!     });
//!     sim::run(&mut sim, &faults)
//! }
//! ```
//!
//! # Actix inside turmoil
//! Each simulated host runs its software on a current-thread Tokio runtime of its
//! own, inside a `LocalSet`, with the clock paused and moved on by the simulation.
//! Actix starts actors with `spawn_local`, so actors, `actix::spawn`, `run_interval`
//! and `run_later`, `Addr::send` and everything this crate builds on them work in a
//! host as they do under `#[actix::main]`, in simulated time. What does not:
//! - No actix `System` or `Arbiter` exists in a host: `System::current()` and
//!   `Arbiter::current()` panic ("Arbiter is not running"), and so does what is built
//!   on them: the registry of `SystemService`s and `ArbiterService`s
//!   (`from_registry`), `SyncArbiter`, `Actor::start_in_arbiter`.
//!   [`PoolBuilder::arbiters`](crate::PoolBuilder::arbiters) would run connections on
//!   real threads outside the simulation: leave it unset.
//! - The simulation runs its own runtimes: drive it from a plain `#[test]`, not from
//!   `#[actix::test]` or `#[tokio::test]` (Tokio refuses to start a runtime inside
//!   another).
//! - A host whose software returned is no longer run, and its actors freeze with it:
//!   a server host's software must not return ([`EchoServer::run`] never does). The
//!   simulation ends when every client host's future has returned; actors still alive
//!   then are dropped with it.
//! - Crashing a host drops its runtime, then every task on it: its actors stop where
//!   they are (actix gives each a last poll as it drops, in which it stops, with no
//!   runtime left: a `stopping` or `stopped` that starts a timer or spawns a task
//!   would panic) and its sockets close, so peers read end of stream (or a reset,
//!   where data was unread), as for a killed process. What was sent to a crashed host waits on the link and
//!   reaches the host's new software after a bounce, which refuses segments of the old
//!   connections with a reset.
//! - Time is per host: `tokio::time` in a host is simulated, and a bounced host gets a
//!   new clock (its `Instant`s from before do not compare with those after).
//!   `turmoil::sim_elapsed()` is the time since the simulation started, the same on
//!   every host.
//!
//! # How turmoil's network behaves
//! - `partition` drops what is on the link and what is sent while it lasts, and turmoil
//!   does not retransmit: a connection that lost a segment stays broken after
//!   `repair` (nothing it sends is delivered in order again). Nothing tells the two
//!   ends; only a heartbeat finds such a half-open connection. A connect across a
//!   partition is refused at once (its SYN is dropped).
//! - `hold` keeps what is sent in both directions until `release`, then delivers it
//!   in order: a connection survives a hold shorter than its heartbeat timeout. A
//!   connect during a hold waits for the release or its connect timeout.
//! - Message latency is drawn from the simulation's RNG between the builder's minimum
//!   and maximum (0 and 100 ms by default).
//!
//! # Repeatable runs
//! A simulation runs on one thread, and what it does depends only on its seed and on
//! the order in which things happen. [`builder`] seeds turmoil's RNG (latencies, random
//! faults) and this thread's `fastrand` generator, which the pool's backoff and
//! lifetime jitter and the broker's random picks draw from; then the same test code
//! produces the same run, event for event, at the same simulated times.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use actix::{Actor, Context, Handler};
use bytes::Bytes;
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use turmoil::net::{TcpListener, TcpStream};

use crate::protocol::RemoteError;
use crate::server::{Accept, Listener, Route, ServerBroker, ServerConfig, ServerRequest};
use crate::transport::Connector;
use crate::{Authority, ConnectError, ConnectionConfig};

/// A [`turmoil::Builder`] seeded with `seed`, for a repeatable run.
///
/// Besides turmoil's own RNG (message latencies, random message loss) it seeds this
/// thread's `fastrand` generator, from which the pool's backoff and lifetime jitter
/// and the broker's random picks are drawn. Build the simulation and run it on this
/// same thread (the test's), after this call and before another one.
pub fn builder(seed: u64) -> turmoil::Builder {
    fastrand::seed(seed);
    let mut builder = turmoil::Builder::new();
    builder.rng_seed(seed);
    builder
}

/// Opens simulated TCP connections ([`turmoil::net::TcpStream`]) to
/// [`Authority::Tcp`] authorities, within a connect timeout.
///
/// The authority's host is a simulated host's name (as given to `Sim::host`) or
/// its IP address. A name no host has is [`ConnectError::Unresolved`]; a connect
/// that is refused (nothing listens, or a partition dropped the SYN) is
/// [`ConnectError::Io`] with `ConnectionRefused`; one that gets no answer (a held
/// link, a crashed host) is [`ConnectError::Timeout`].
///
/// # Panics
/// Its connects panic outside a simulated host (turmoil's sockets need the
/// simulation).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SimConnector {
    /// Bound on the connect. Defaults to 5 seconds.
    pub connect_timeout: Duration,
}

impl Default for SimConnector {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl SimConnector {
    /// A connector with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the connect timeout. Defaults to 5 seconds.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

impl Connector for SimConnector {
    type Io = TcpStream;

    fn connect(
        &self,
        authority: &Authority,
    ) -> LocalBoxFuture<'static, Result<TcpStream, ConnectError>> {
        let timeout = self.connect_timeout;
        let authority = authority.clone();
        async move {
            let Authority::Tcp { host, port } = &authority else {
                return Err(ConnectError::Unsupported { authority });
            };
            let connect = TcpStream::connect((&**host, *port));
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(stream)) => Ok(stream),
                // turmoil's resolver says `NotFound` for a name no host has.
                Ok(Err(error)) if error.kind() == io::ErrorKind::NotFound => {
                    Err(ConnectError::Unresolved { authority })
                }
                Ok(Err(error)) => Err(ConnectError::io(&authority, error)),
                Err(_) => Err(ConnectError::Timeout {
                    authority,
                    after: timeout,
                }),
            }
        }
        .boxed_local()
    }
}

/// A simulated listening socket: a [`Listener`] accepts from it inside a simulated
/// host. Bind it to the unspecified address (`("0.0.0.0", port)`); turmoil supports no
/// other.
impl Accept for TcpListener {
    type Io = TcpStream;

    fn accept(self: Rc<Self>) -> LocalBoxFuture<'static, io::Result<(TcpStream, String)>> {
        Box::pin(async move {
            let (stream, peer) = TcpListener::accept(&self).await?;
            Ok((stream, peer.to_string()))
        })
    }
}

/// A request handler that answers every [`ServerRequest`] with its own payload.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Actor for Echo {
    type Context = Context<Self>;
}

impl Handler<ServerRequest> for Echo {
    type Result = Result<Bytes, RemoteError>;

    /// Answers with the request's payload.
    fn handle(&mut self, request: ServerRequest, _: &mut Context<Self>) -> Self::Result {
        Ok(request.payload)
    }
}

/// A simulated host's software: a [`ServerBroker`] whose every request is answered
/// by [`Echo`], behind a [`Listener`] on a port. Clients reach it with a
/// [`SimConnector`] at `Authority::tcp(host_name, port)`.
///
/// ```
/// # use switchboard::testkit::sim::{self, EchoServer};
/// let mut sim = sim::builder(1).build();
/// let server = EchoServer::new(7000);
/// // The closure is called again when the host is bounced.
/// sim.host("server", move || server.clone().run());
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct EchoServer {
    port: u16,
    connection: ConnectionConfig,
    config: ServerConfig,
}

impl EchoServer {
    /// A server on `port`, with the default settings.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            connection: ConnectionConfig::default(),
            config: ServerConfig::default(),
        }
    }

    /// The settings of every accepted connection (heartbeat, timeouts, buffers).
    /// Defaults to [`ConnectionConfig::default`].
    pub fn connection(mut self, config: ConnectionConfig) -> Self {
        self.connection = config;
        self
    }

    /// The server broker's limits and policies. Defaults to
    /// [`ServerConfig::default`].
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Binds the port and serves until the host crashes or the simulation ends: it
    /// returns only if the server cannot start (the port is taken, the config is
    /// invalid), since a host whose software returned is no longer run.
    pub async fn run(self) -> turmoil::Result {
        let broker = ServerBroker::start(self.config)?;
        let echo = Echo.start();
        broker
            .send(Route {
                route: None,
                handler: echo.recipient(),
            })
            .await?;
        let socket = TcpListener::bind(("0.0.0.0", self.port)).await?;
        let _listener = Listener::builder(socket, broker)
            .connection(self.connection)
            .start();
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// A crash or a bounce of a simulated host, as asked for through [`Faults`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostFault {
    /// Stop the host's software (`Sim::crash`).
    Crash(String),
    /// Restart the host's software (`Sim::bounce`).
    Bounce(String),
}

/// Host crashes and bounces asked for by a simulated client, carried out by the
/// loop that drives the simulation ([`run`], or [`Faults::apply`] in a loop of your
/// own) at the end of the step in which they were asked for.
///
/// Only the [`turmoil::Sim`] can crash or bounce a host, and it is not reachable from
/// inside one; network faults need no such help (`turmoil::partition`,
/// `turmoil::hold`, ... work from inside a host). Clones share the queue; it is
/// single-threaded, as the simulation is.
#[derive(Clone, Default)]
pub struct Faults {
    queue: Rc<RefCell<VecDeque<HostFault>>>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("queued", &self.queue.borrow().len())
            .finish()
    }
}

impl Faults {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for `host`'s software to be stopped.
    pub fn crash(&self, host: impl Into<String>) {
        self.queue
            .borrow_mut()
            .push_back(HostFault::Crash(host.into()));
    }

    /// Asks for `host`'s software to be restarted (after a crash, or at once from a
    /// running host, as a process restart).
    pub fn bounce(&self, host: impl Into<String>) {
        self.queue
            .borrow_mut()
            .push_back(HostFault::Bounce(host.into()));
    }

    /// Carries out every fault asked for so far, in order; returns them.
    pub fn apply(&self, sim: &mut turmoil::Sim<'_>) -> Vec<HostFault> {
        let faults: Vec<HostFault> = self.queue.borrow_mut().drain(..).collect();
        for fault in &faults {
            match fault {
                HostFault::Crash(host) => sim.crash(host.as_str()),
                HostFault::Bounce(host) => sim.bounce(host.as_str()),
            }
        }
        faults
    }
}

/// Runs `sim` until every client host is done (as `Sim::run`), carrying out the
/// `faults` its hosts ask for after each step. Fails with the first host error, or
/// when the simulation runs past its `simulation_duration`.
pub fn run(sim: &mut turmoil::Sim<'_>, faults: &Faults) -> turmoil::Result {
    loop {
        let done = sim.step()?;
        faults.apply(sim);
        if done {
            return Ok(());
        }
    }
}
