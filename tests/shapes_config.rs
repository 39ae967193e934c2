//! Traffic shapes, configs at their extremes: every knob of every config (the
//! connection's, the pool's, the client broker's, the server's and the listener's)
//! set to the extremes of its type, one at a time and then in seeded random mixes.
//! The promise: every value that `build()` or `validate()` accepts works. A small
//! workload (a request, ordered and unordered publishes, a subscription and a
//! delivery, a shared pool call, a lease, a close) runs on each accepted config, and
//! every step ends with a result, `Ok` or a typed error, within a bound, with no
//! panic anywhere.
//!
//! 0.1 accepted `max_in_flight` and `ServerConfig::mailbox` values that became actix
//! mailbox capacities and panicked inside actix: `usize::MAX` on every `Addr::clone`
//! (debug builds), and values just under `usize::MAX >> 1` with "too many
//! outstanding senders" in release builds too, killing the Broker on its first
//! ordered publish and the Listener on its first accept.
//!
//! Real time over loopback. The seed of the random mixes is fixed for CI; set
//! `SWITCHBOARD_SHAPES_SEED` to try others (it is printed).
//!
//! `cargo test --all-features --test shapes_config`

mod broker_support;

use std::time::Duration;

use broker_support::{start_server_with, Collector, Echo, ServerOptions};
use switchboard::broker::{BrokerConfig, ProducerId, Publish, Request};
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::server::ServerConfig;
use switchboard::transport::TcpConnector;
use switchboard::{
    Authority, Broker, ConfigError, ConnectionConfig, ConnectionConfigBuilder, Overflow, Pool,
    PoolConfig, PoolConfigBuilder,
};

/// The bound on each step of the workload: far above what any step needs on
/// loopback, far below "for ever".
const STEP: Duration = Duration::from_secs(20);

const COUNTS: [usize; 10] = [
    0,
    1,
    2,
    3,
    64,
    usize::MAX >> 2,
    (usize::MAX >> 1) - 1,
    usize::MAX >> 1,
    usize::MAX - 1,
    usize::MAX,
];

const DURATIONS: [Duration; 7] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_millis(1),
    Duration::from_millis(250),
    Duration::from_secs(24 * 60 * 60),
    Duration::from_secs(u64::MAX),
    Duration::MAX,
];

/// Every config of a client and a server, as builders and plain values.
#[derive(Clone)]
struct Setup {
    connection: ConnectionConfigBuilder,
    pool: PoolConfigBuilder,
    broker: BrokerConfig,
    server: ServerConfig,
    listener_max_connections: Option<usize>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            connection: ConnectionConfig::builder(),
            pool: PoolConfig::builder(),
            broker: BrokerConfig::default(),
            server: ServerConfig::default(),
            listener_max_connections: None,
        }
    }
}

/// A config that every builder accepted.
struct Built {
    connection: ConnectionConfig,
    pool: PoolConfig,
    broker: BrokerConfig,
    server: ServerConfig,
    listener_max_connections: Option<usize>,
}

impl Setup {
    fn build(self) -> Result<Built, ConfigError> {
        Ok(Built {
            connection: self.connection.build()?,
            pool: self.pool.build()?,
            broker: self.broker,
            server: self.server.validate()?,
            listener_max_connections: self.listener_max_connections,
        })
    }
}

/// A knob: its name and how to set it to the `n`th extreme of its type.
type Knob = (&'static str, fn(&mut Setup, usize));

fn count(n: usize) -> usize {
    COUNTS[n % COUNTS.len()]
}

fn duration(n: usize) -> Duration {
    DURATIONS[n % DURATIONS.len()]
}

fn optional(n: usize) -> Option<Duration> {
    // One more than the durations: `None`.
    DURATIONS.get(n % (DURATIONS.len() + 1)).copied()
}

/// How many extremes a knob of each kind has.
fn extremes(name: &str) -> usize {
    match kind(name) {
        Kind::Count => COUNTS.len(),
        Kind::Duration => DURATIONS.len(),
        Kind::Optional => DURATIONS.len() + 1,
        Kind::Flag => 2,
    }
}

enum Kind {
    Count,
    Duration,
    Optional,
    Flag,
}

fn kind(name: &str) -> Kind {
    match name {
        "pool.test_on_checkout_after"
        | "pool.health_check_interval"
        | "pool.idle_timeout"
        | "pool.max_lifetime" => Kind::Optional,
        "pool.reuse" | "server.slow_subscriber" => Kind::Flag,
        name if name.ends_with("timeout")
            || name.ends_with("interval")
            || name.contains("backoff") =>
        {
            Kind::Duration
        }
        _ => Kind::Count,
    }
}

fn knobs() -> Vec<Knob> {
    vec![
        ("connection.call_timeout", |s, n| {
            s.connection = s.connection.clone().call_timeout(duration(n))
        }),
        ("connection.heartbeat_interval", |s, n| {
            s.connection = s.connection.clone().heartbeat_interval(duration(n))
        }),
        ("connection.heartbeat_timeout", |s, n| {
            s.connection = s.connection.clone().heartbeat_timeout(duration(n))
        }),
        ("connection.max_in_flight", |s, n| {
            s.connection = s.connection.clone().max_in_flight(count(n))
        }),
        ("connection.max_write_buffer", |s, n| {
            s.connection = s.connection.clone().max_write_buffer(count(n))
        }),
        ("connection.close_timeout", |s, n| {
            s.connection = s.connection.clone().close_timeout(duration(n))
        }),
        ("pool.min_idle", |s, n| {
            s.pool = s.pool.clone().min_idle(count(n).min(8))
        }),
        ("pool.max_size", |s, n| {
            s.pool = s.pool.clone().max_size(count(n))
        }),
        ("pool.max_connections", |s, n| {
            s.pool = s.pool.clone().max_connections(count(n))
        }),
        ("pool.max_waiters", |s, n| {
            s.pool = s.pool.clone().max_waiters(count(n))
        }),
        ("pool.checkout_timeout", |s, n| {
            s.pool = s.pool.clone().checkout_timeout(duration(n))
        }),
        ("pool.connect_timeout", |s, n| {
            s.pool = s.pool.clone().connect_timeout(duration(n))
        }),
        ("pool.test_on_checkout_after", |s, n| {
            s.pool = s.pool.clone().test_on_checkout_after(optional(n))
        }),
        ("pool.health_check_interval", |s, n| {
            s.pool = s.pool.clone().health_check_interval(optional(n))
        }),
        ("pool.health_check_timeout", |s, n| {
            s.pool = s.pool.clone().health_check_timeout(duration(n))
        }),
        ("pool.idle_timeout", |s, n| {
            s.pool = s.pool.clone().idle_timeout(optional(n))
        }),
        ("pool.max_lifetime", |s, n| {
            s.pool = s.pool.clone().max_lifetime(optional(n))
        }),
        ("pool.backoff_base", |s, n| {
            s.pool = s.pool.clone().backoff_base(duration(n))
        }),
        ("pool.backoff_max", |s, n| {
            s.pool = s.pool.clone().backoff_max(duration(n))
        }),
        ("pool.failure_threshold", |s, n| {
            s.pool = s
                .pool
                .clone()
                .failure_threshold(u32::try_from(count(n)).unwrap_or(u32::MAX))
        }),
        ("pool.grow_threshold", |s, n| {
            s.pool = s.pool.clone().grow_threshold(count(n))
        }),
        ("pool.max_connecting", |s, n| {
            s.pool = s.pool.clone().max_connecting(count(n))
        }),
        ("pool.return_drain_timeout", |s, n| {
            s.pool = s.pool.clone().return_drain_timeout(duration(n))
        }),
        ("pool.reuse", |s, n| {
            s.pool = s.pool.clone().reuse(n % 2 == 0)
        }),
        ("pool.maintenance_interval", |s, n| {
            s.pool = s.pool.clone().maintenance_interval(duration(n))
        }),
        ("pool.shutdown_timeout", |s, n| {
            s.pool = s.pool.clone().shutdown_timeout(duration(n))
        }),
        ("broker.max_unconfirmed", |s, n| {
            s.broker = s.broker.clone().max_unconfirmed(count(n))
        }),
        ("broker.max_producers", |s, n| {
            s.broker = s.broker.clone().max_producers(count(n))
        }),
        ("broker.resubscribe_backoff", |s, n| {
            s.broker = s
                .broker
                .clone()
                .resubscribe_backoff(duration(n), duration(n + 3))
        }),
        ("server.subscriber_queue", |s, n| {
            s.server = s.server.clone().subscriber_queue(count(n))
        }),
        ("server.slow_subscriber", |s, n| {
            let policy = if n % 2 == 0 {
                Overflow::Close
            } else {
                Overflow::Drop
            };
            s.server = s.server.clone().slow_subscriber(policy)
        }),
        ("server.replay_window", |s, n| {
            s.server = s.server.clone().replay_window(count(n))
        }),
        ("server.max_topics", |s, n| {
            s.server = s.server.clone().max_topics(count(n))
        }),
        ("server.max_requests_per_connection", |s, n| {
            s.server = s.server.clone().max_requests_per_connection(count(n))
        }),
        ("server.handler_timeout", |s, n| {
            s.server = s.server.clone().handler_timeout(duration(n))
        }),
        ("server.producer_fences", |s, n| {
            s.server = s.server.clone().producer_fences(count(n))
        }),
        ("server.mailbox", |s, n| {
            s.server = s.server.clone().mailbox(count(n))
        }),
        // Below the client's connections, the rest wait in the accept backlog and
        // their calls end by the call timeout (30 s), longer than a step here; that
        // backpressure is `tests/server_listener.rs`'s. At least 8 is enough for this
        // workload's connections.
        ("listener.max_connections", |s, n| {
            s.listener_max_connections = Some(count(n).max(8))
        }),
    ]
}

/// Runs `what` within [`STEP`], failing the test (with the case) if it does not end.
async fn step<F: std::future::Future>(case: &str, what: &str, future: F) -> F::Output {
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{case}: {what} did not end within {STEP:?}"));
    if started.elapsed() > Duration::from_secs(2) {
        eprintln!("  {case}: {what} took {:?}", started.elapsed());
    }
    out
}

/// The workload on one accepted config: every step ends, `Ok` or a typed error.
async fn run(case: &str, built: Built) {
    let options = ServerOptions {
        connection: Some(built.connection.clone()),
        max_connections: built.listener_max_connections,
        socket: None,
    };
    let server = start_server_with(built.server, options).await;
    let (echo, _) = Echo::start_new(None);
    server.route("echo", echo.recipient()).await;
    let authority = Authority::tcp("127.0.0.1", server.port);
    let pool = Pool::builder(TcpConnector::new(), FrameProtocol::default())
        .config(built.pool)
        .connection(built.connection);
    let client = Broker::builder(pool, authority.clone())
        .config(built.broker)
        .start();

    let _ = step(
        case,
        "a request",
        client.request(Request::new("echo", "hi")),
    )
    .await;
    let ordered = (0..3)
        .map(|n| client.publish(Publish::ordered(ProducerId(n), "ordered", "x")))
        .collect::<Vec<_>>();
    for publish in ordered {
        let _ = step(case, "an ordered publish", publish).await;
    }
    let _ = step(
        case,
        "an unordered publish",
        client.publish(Publish::unordered("unordered", "y")),
    )
    .await;
    let (collector, _) = Collector::start_new();
    let _ = step(
        case,
        "a subscribe",
        client.subscribe("topic", collector.recipient()),
    )
    .await;
    let _ = step(
        case,
        "a publish to the subscription",
        client.publish(Publish::unordered("topic", "z")),
    )
    .await;
    let pool = client.pool().clone();
    if let Ok(Ok(shared)) = step(case, "a shared checkout", async {
        tokio::time::timeout(Duration::from_millis(300), pool.shared(&authority)).await
    })
    .await
    {
        let _ = step(case, "a shared call", shared.call(FrameRequest::new("q"))).await;
    }
    if let Ok(Ok(lease)) = step(case, "a checkout", async {
        tokio::time::timeout(Duration::from_millis(300), pool.checkout(&authority)).await
    })
    .await
    {
        let _ = step(case, "a leased call", lease.call(FrameRequest::new("q"))).await;
    }
    let _ = step(case, "the stats", client.stats()).await;
    let close = switchboard::pool::Close {
        timeout: Some(Duration::from_secs(2)),
    };
    let _ = step(case, "closing the pool", pool.addr().send(close)).await;
    let stop = switchboard::server::Stop { abort: true };
    let _ = step(case, "stopping the listener", server.listener.send(stop)).await;
}

#[actix::test]
async fn every_knob_at_every_extreme_alone() {
    let mut accepted = 0;
    let mut refused = 0;
    for (name, set) in knobs() {
        for n in 0..extremes(name) {
            let mut setup = Setup::default();
            set(&mut setup, n);
            let case = format!("{name} = extreme #{n}");
            match setup.build() {
                Ok(built) => {
                    accepted += 1;
                    let started = std::time::Instant::now();
                    run(&case, built).await;
                    if started.elapsed() > Duration::from_secs(2) {
                        eprintln!("{case}: {:?}", started.elapsed());
                    }
                }
                Err(error) => {
                    refused += 1;
                    // A refusal names its knob.
                    assert!(!error.to_string().is_empty(), "{case}");
                }
            }
        }
    }
    eprintln!("configs: {accepted} accepted and run, {refused} refused by build()");
    assert!(accepted > 100, "{accepted}");
}

#[actix::test]
async fn random_mixes_of_extremes() {
    let seed = std::env::var("SWITCHBOARD_SHAPES_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5eed_0015_u64);
    eprintln!("SWITCHBOARD_SHAPES_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let knobs = knobs();
    let mut ran = 0;
    let mut tried = 0;
    while ran < 25 && tried < 2_000 {
        tried += 1;
        let mut setup = Setup::default();
        let mut case = String::new();
        for _ in 0..rng.usize(2..6) {
            let (name, set) = knobs[rng.usize(..knobs.len())];
            let n = rng.usize(..extremes(name));
            set(&mut setup, n);
            case.push_str(&format!("{name} = #{n}; "));
        }
        if let Ok(built) = setup.build() {
            ran += 1;
            run(&case, built).await;
        }
    }
    assert_eq!(ran, 25, "only {ran} of {tried} mixes were accepted");
}
