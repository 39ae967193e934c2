//! The `metrics` feature: what a dashboard built on switchboard's metrics shows as
//! pools open, lend and lose connections, and as calls fail.
//!
//! Each test installs its own `DebuggingRecorder` as its thread's local recorder. An
//! actix test runs itself and every actor it starts on that one thread, so each test
//! sees exactly the figures of its own pools and connections, whatever other tests
//! run beside it (no global recorder to share).
//!
//! A `DebuggingRecorder` snapshot reads *and resets* every value (counters and gauges
//! to zero, histograms emptied). switchboard only ever adds to its counters and
//! gauges, never overwrites them, so the running sum of all snapshots is the value an
//! exporter would show; [`Figures`] keeps that sum.

#![cfg(feature = "metrics")]

mod pool_support;

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use pool_support::*;
use switchboard::metrics::{
    CALL_ERRORS, CONNECTIONS_CLOSED, CONNECTION_IN_FLIGHT, CONNECTION_RTT, POOL_CHECKOUTS,
    POOL_CHECKOUT_WAIT, POOL_CONNECTING, POOL_CONNECTIONS, POOL_CONNECTS, POOL_CONNECT_ERRORS,
    POOL_DOWN, POOL_RECONNECTS, POOL_WAITERS,
};
use switchboard::protocol::frame::{Frame, FrameCodec, FrameKind, FrameProtocol, FrameRequest};
use switchboard::transport::TcpConnector;
use switchboard::{Authority, Call, CallError, Connection, ConnectionConfig, Pool};
use tokio_util::codec::Framed;

/// A metric's identity: kind, name and labels (sorted).
type Id = (MetricKind, String, Vec<(String, String)>);

/// What the recorder has seen so far, summed over snapshots.
struct Figures {
    snapshotter: Snapshotter,
    counters: HashMap<Id, u64>,
    gauges: HashMap<Id, f64>,
    histograms: HashMap<Id, Vec<f64>>,
}

impl Figures {
    fn new(recorder: &DebuggingRecorder) -> Self {
        Self {
            snapshotter: recorder.snapshotter(),
            counters: HashMap::new(),
            gauges: HashMap::new(),
            histograms: HashMap::new(),
        }
    }

    /// Adds what was recorded since the last look.
    fn take(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            labels.sort();
            let id = (kind, key.name().to_owned(), labels);
            match value {
                DebugValue::Counter(n) => *self.counters.entry(id).or_default() += n,
                DebugValue::Gauge(x) => *self.gauges.entry(id).or_default() += x.into_inner(),
                DebugValue::Histogram(xs) => self
                    .histograms
                    .entry(id)
                    .or_default()
                    .extend(xs.into_iter().map(|x| x.into_inner())),
            }
        }
    }

    fn id(kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Id {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        (kind, name.to_owned(), labels)
    }

    /// The counter with exactly these labels (0 if never registered).
    fn counter(&mut self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.take();
        let id = Self::id(MetricKind::Counter, name, labels);
        self.counters.get(&id).copied().unwrap_or(0)
    }

    /// The gauge with exactly these labels (0 if never registered).
    fn gauge(&mut self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.take();
        let id = Self::id(MetricKind::Gauge, name, labels);
        self.gauges.get(&id).copied().unwrap_or(0.0)
    }

    /// The samples of the histogram with exactly these labels.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.take();
        let id = Self::id(MetricKind::Histogram, name, labels);
        self.histograms.get(&id).cloned().unwrap_or_default()
    }

    /// Whether a metric of this name was registered with exactly these labels.
    fn registered(&mut self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> bool {
        self.take();
        let id = Self::id(kind, name, labels);
        match kind {
            MetricKind::Counter => self.counters.contains_key(&id),
            MetricKind::Gauge => self.gauges.contains_key(&id),
            MetricKind::Histogram => self.histograms.contains_key(&id),
        }
    }

    /// Waits (bounded, letting actors run) until `done` holds.
    async fn until(&mut self, what: &str, mut done: impl FnMut(&mut Self) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(self) {
            if tokio::time::Instant::now() >= deadline {
                panic!("{what}: not reached within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The pool gauges of `authority`: (idle, shared, leased, busy).
fn sizes(figures: &mut Figures, authority: &str) -> (f64, f64, f64, f64) {
    let mut state = |state| {
        figures.gauge(
            POOL_CONNECTIONS,
            &[("authority", authority), ("state", state)],
        )
    };
    (
        state("idle"),
        state("shared"),
        state("leased"),
        state("busy"),
    )
}

#[actix::test]
async fn pool_sizes_follow_connections_leases_and_shared_use() {
    tokio::time::pause();
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut figures = Figures::new(&recorder);

    let (server, _connector, pool) = start_pool(config().min_idle(2).max_size(4)).await;
    let authority = server.authority();
    let label = authority.to_string();
    let at = [("authority", label.as_str())];

    figures
        .until("two idle connections", |f| {
            sizes(f, &label) == (2.0, 0.0, 0.0, 0.0)
        })
        .await;
    assert_eq!(figures.counter(POOL_CONNECTS, &at), 2);
    assert_eq!(figures.gauge(POOL_CONNECTING, &at), 0.0);
    assert_eq!(figures.gauge(POOL_DOWN, &at), 0.0);

    let lease = within(WAIT, "checkout", pool.checkout(&authority))
        .await
        .unwrap();
    assert_eq!(sizes(&mut figures, &label), (1.0, 0.0, 1.0, 0.0));
    let shared = within(WAIT, "shared", pool.shared(&authority))
        .await
        .unwrap();
    assert_eq!(sizes(&mut figures, &label), (0.0, 1.0, 1.0, 0.0));
    let outcome = |outcome| [("authority", label.as_str()), ("outcome", outcome)];
    assert_eq!(figures.counter(POOL_CHECKOUTS, &outcome("direct")), 1);
    assert_eq!(figures.counter(POOL_CHECKOUTS, &outcome("shared")), 1);

    drop(lease);
    assert_eq!(sizes(&mut figures, &label), (1.0, 1.0, 0.0, 0.0));
    drop(shared);

    // A drain closes both gracefully: the gauges go to zero, the closes are counted.
    within(WAIT, "drain", pool.drain()).await;
    figures
        .until("no connections left", |f| {
            sizes(f, &label) == (0.0, 0.0, 0.0, 0.0)
        })
        .await;
    let closed = [("authority", label.as_str()), ("reason", "closed")];
    assert_eq!(figures.counter(CONNECTIONS_CLOSED, &closed), 2);
    // Closed on request: nothing was lost, so nothing to reconnect.
    assert_eq!(figures.counter(POOL_RECONNECTS, &at), 0);
}

#[actix::test]
async fn waiters_gauge_rises_while_a_checkout_waits_and_falls_back_to_zero() {
    tokio::time::pause();
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut figures = Figures::new(&recorder);

    let (server, _connector, pool) = start_pool(config().min_idle(1).max_size(1)).await;
    let authority = server.authority();
    let label = authority.to_string();
    let at = [("authority", label.as_str())];

    let lease = within(WAIT, "checkout", pool.checkout(&authority))
        .await
        .unwrap();
    let waiting = spawn_checkout(&pool, &authority);
    figures
        .until("one waiter", |f| f.gauge(POOL_WAITERS, &at) == 1.0)
        .await;

    let held = Duration::from_millis(300);
    tokio::time::sleep(held).await;
    drop(lease);
    let second = within(WAIT, "waiting checkout", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(figures.gauge(POOL_WAITERS, &at), 0.0);

    let waited = [("authority", label.as_str()), ("outcome", "waited")];
    assert_eq!(figures.counter(POOL_CHECKOUTS, &waited), 1);
    let waits = figures.histogram(POOL_CHECKOUT_WAIT, &at);
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert!(waits[0] >= held.as_secs_f64(), "{waits:?}");

    drop(second);
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn lost_connections_refused_connects_and_reconnects_are_counted() {
    tokio::time::pause();
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut figures = Figures::new(&recorder);

    let config = config().min_idle(1).max_size(2).failure_threshold(3);
    let (server, _connector, pool) = start_pool(config).await;
    let label = server.authority().to_string();
    let at = [("authority", label.as_str())];
    let refused = [("authority", label.as_str()), ("kind", "refused")];

    // The server goes away: its connection closes under the pool, and the pool's
    // attempts to replace it are refused until it marks the authority down.
    server.stop();
    figures
        .until("marked down", |f| f.gauge(POOL_DOWN, &at) == 1.0)
        .await;
    let peer_closed = [("authority", label.as_str()), ("reason", "peer_closed")];
    assert_eq!(figures.counter(CONNECTIONS_CLOSED, &peer_closed), 1);
    assert!(figures.counter(POOL_CONNECT_ERRORS, &refused) >= 3);
    assert_eq!(sizes(&mut figures, &label), (0.0, 0.0, 0.0, 0.0));
    assert_eq!(figures.counter(POOL_RECONNECTS, &at), 0);

    // Back again: the probe connects, and that connect made up for the lost one.
    server.restart();
    figures
        .until("reconnected", |f| f.counter(POOL_RECONNECTS, &at) == 1)
        .await;
    figures
        .until("up and idle", |f| {
            f.gauge(POOL_DOWN, &at) == 0.0 && sizes(f, &label) == (1.0, 0.0, 0.0, 0.0)
        })
        .await;
    assert_eq!(figures.counter(POOL_CONNECTS, &at), 2);
    // No other kind of connect error was invented along the way.
    let timeouts = [("authority", label.as_str()), ("kind", "timeout")];
    assert!(!figures.registered(MetricKind::Counter, POOL_CONNECT_ERRORS, &timeouts));
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn a_refused_tcp_connect_counts_as_refused() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut figures = Figures::new(&recorder);

    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let authority = Authority::tcp("127.0.0.1", port);
    let label = authority.to_string();
    let pool = Pool::builder(TcpConnector::new(), FrameProtocol::default())
        .config(config().build().unwrap())
        .start();
    let checkout = pool.checkout_within(&authority, Duration::from_secs(2));
    let error = within(WAIT, "checkout", checkout).await.unwrap_err();
    assert_eq!(error.kind(), "connect", "{error}");

    let refused = [("authority", label.as_str()), ("kind", "refused")];
    assert!(figures.counter(POOL_CONNECT_ERRORS, &refused) >= 1);
    let failed = [("authority", label.as_str()), ("outcome", "failed")];
    assert_eq!(figures.counter(POOL_CHECKOUTS, &failed), 1);
    within(WAIT, "close", pool.close()).await;
}

#[actix::test]
async fn heartbeats_feed_the_round_trip_histogram() {
    tokio::time::pause();
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut figures = Figures::new(&recorder);

    // The test connections ping after 5 s of silence.
    let (server, _connector, pool) = start_pool(config().min_idle(1)).await;
    let label = server.authority().to_string();
    let at = [("authority", label.as_str())];
    assert!(figures.histogram(CONNECTION_RTT, &at).is_empty());

    tokio::time::sleep(Duration::from_secs(12)).await;
    let samples = figures.histogram(CONNECTION_RTT, &at);
    assert!(samples.len() >= 2, "two heartbeats in 12 s: {samples:?}");
    assert!(
        samples.iter().all(|rtt| *rtt >= 0.0 && *rtt < 1.0),
        "{samples:?}"
    );
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn call_errors_are_counted_by_kind_and_in_flight_calls_by_authority() {
    tokio::time::pause();
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut figures = Figures::new(&recorder);

    let (server, _connector, pool) = start_pool(config().min_idle(1).max_size(1)).await;
    let authority = server.authority();
    let label = authority.to_string();
    let at = [("authority", label.as_str())];
    let kind = |kind| [("authority", label.as_str()), ("kind", kind)];

    // A call the server answers after 5 s, with a timeout of 100 ms.
    let lease = within(WAIT, "checkout", pool.checkout(&authority))
        .await
        .unwrap();
    let slow = Call::new(FrameRequest::new("sleep:5000")).timeout(Duration::from_millis(100));
    let error = within(WAIT, "call", lease.send(slow))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, CallError::Timeout { .. }), "{error}");
    assert_eq!(figures.counter(CALL_ERRORS, &kind("timeout")), 1);

    // A call in flight when the server drops the connection.
    let pending = lease.send(Call::new(FrameRequest::new("sleep:60000")));
    let pending = actix::spawn(pending);
    figures
        .until("one call in flight", |f| {
            f.gauge(CONNECTION_IN_FLIGHT, &at) == 1.0
        })
        .await;
    server.kill_all();
    let error = within(WAIT, "call", pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, CallError::Closed(_)), "{error}");
    assert_eq!(figures.counter(CALL_ERRORS, &kind("closed")), 1);
    assert_eq!(figures.gauge(CONNECTION_IN_FLIGHT, &at), 0.0);
    // Every kind is registered up front, at zero, so rates can be taken from the start.
    assert!(figures.registered(MetricKind::Counter, CALL_ERRORS, &kind("overloaded")));
    assert_eq!(figures.counter(CALL_ERRORS, &kind("overloaded")), 0);
    drop(lease);
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn pools_to_the_same_authority_add_up() {
    tokio::time::pause();
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut figures = Figures::new(&recorder);

    let bed = TestBed::new();
    let label = bed.server.authority().to_string();
    let first = build_eagerly(bed.pool(config().min_idle(1))).await;
    let second = build_eagerly(bed.pool(config().min_idle(2))).await;
    figures
        .until("three idle", |f| sizes(f, &label) == (3.0, 0.0, 0.0, 0.0))
        .await;

    within(WAIT, "drain", first.drain()).await;
    figures
        .until("the second pool's two", |f| {
            sizes(f, &label) == (2.0, 0.0, 0.0, 0.0)
        })
        .await;
    within(WAIT, "drain", second.drain()).await;
    figures
        .until("none", |f| sizes(f, &label) == (0.0, 0.0, 0.0, 0.0))
        .await;
}

#[actix::test]
async fn a_connection_outside_a_pool_records_without_an_authority() {
    tokio::time::pause();
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut figures = Figures::new(&recorder);

    // A peer that answers pings and nothing else.
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer = actix::spawn(async move {
        let mut peer = Framed::new(server, FrameCodec::default());
        while let Some(Ok(frame)) = peer.next().await {
            if frame.kind == FrameKind::Ping {
                let _ = peer.send(Frame::pong(frame.id)).await;
            }
        }
    });
    let config = ConnectionConfig::builder()
        .call_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let conn = Connection::builder(client, FrameProtocol::default())
        .config(config)
        .peer("10.0.0.1:4567")
        .start();
    let reply = within(WAIT, "call", conn.send(Call::new(FrameRequest::new("x")))).await;
    assert!(
        matches!(reply, Ok(Err(CallError::Timeout { .. }))),
        "{reply:?}"
    );
    assert_eq!(figures.counter(CALL_ERRORS, &[("kind", "timeout")]), 1);

    peer.abort();
    figures
        .until("closed", |f| {
            f.counter(CONNECTIONS_CLOSED, &[("reason", "peer_closed")]) == 1
        })
        .await;
    // Nothing names the peer: a server's clients would each make a series.
    let named = [("authority", "10.0.0.1:4567"), ("kind", "timeout")];
    assert!(!figures.registered(MetricKind::Counter, CALL_ERRORS, &named));
}

#[test]
fn describe_gives_units_and_help_texts() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        switchboard::metrics::describe();
        metrics::histogram!(CONNECTION_RTT).record(0.25);
    });
    let (_, unit, help, _) = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| key.key().name() == CONNECTION_RTT)
        .expect("the histogram was recorded");
    assert_eq!(unit, Some(metrics::Unit::Seconds));
    assert!(help.is_some_and(|help| !help.is_empty()));
}
