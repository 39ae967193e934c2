//! Pool and connection figures through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`), for whatever exporter the application installs (Prometheus,
//! StatsD, ...). Without the feature nothing is recorded and none of this costs
//! anything.
//!
//! Every metric is named by a constant in this module; `docs/metrics.md` says what each
//! one means and when it changes, and lists the tracing spans and events as well.
//! Call [`describe`] once after installing a recorder to give exporters the units and
//! help texts.
//!
//! # Labels
//! - Pool metrics carry `authority`, the authority's display form
//!   (`tcp://host:port`, `unix:///path`, `memory://name`).
//! - Connection metrics of pooled connections carry the pool's `authority` too.
//!   Connections started on their own or by a server's listener carry no `authority`
//!   label: their peers are as many as their clients, and one series per client
//!   would grow without bound.
//!
//! Several pools that talk to the same authority add up into the same series: every
//! figure is recorded as a change (counters are incremented, gauges incremented and
//! decremented), never overwritten, and a pool that goes away takes its share of
//! each gauge with it.
//!
//! # Cost
//! Handles are registered once per authority of a pool and once per connection (a
//! pooled connection shares its authority's handles), so nothing is looked up or
//! allocated per call. Pool gauges are brought up to date when an authority's lock is
//! released, and only those whose value changed are touched; a connection publishes
//! its calls in flight once per batch of work, not once per call.

use std::time::Duration;

use crate::{Authority, CallError, CloseReason, ConnectError};

/// Whether figures are recorded at all (the `metrics` feature).
pub(crate) const ENABLED: bool = cfg!(feature = "metrics");

/// Gauge: pooled connections of an authority by `state`, one of `idle` (in the idle
/// stack, not in shared use), `shared` (handed out for shared use), `leased` (out on
/// an exclusive lease) and `busy` (held by the pool: being checked, drained or
/// closed). Labels: `authority`, `state`.
#[cfg(feature = "metrics")]
pub const POOL_CONNECTIONS: &str = "switchboard_pool_connections";

/// Gauge: connect attempts of an authority scheduled or under way (backoff
/// included). Label: `authority`.
#[cfg(feature = "metrics")]
pub const POOL_CONNECTING: &str = "switchboard_pool_connecting";

/// Gauge: checkouts of an authority waiting in line for a connection. Label:
/// `authority`.
#[cfg(feature = "metrics")]
pub const POOL_WAITERS: &str = "switchboard_pool_waiters";

/// Gauge: 1 while the authority is marked down after `failure_threshold` failed
/// connects in a row, else 0. Label: `authority`.
#[cfg(feature = "metrics")]
pub const POOL_DOWN: &str = "switchboard_pool_down";

/// Counter: checkouts of an authority by `outcome`: `direct` (an idle connection at
/// once), `waited` (a lease after waiting in line), `shared` (a shared handle),
/// `timed_out`, `refused` (at once: too many waiters, authority down, draining,
/// closed) and `failed` (while waiting: a failed connect, shutdown). Labels:
/// `authority`, `outcome`.
#[cfg(feature = "metrics")]
pub const POOL_CHECKOUTS: &str = "switchboard_pool_checkouts_total";

/// Histogram, seconds: how long a checkout that had to wait in line waited before
/// it got its connection. Label: `authority`.
#[cfg(feature = "metrics")]
pub const POOL_CHECKOUT_WAIT: &str = "switchboard_pool_checkout_wait_seconds";

/// Counter: connections the pool opened. Label: `authority`.
#[cfg(feature = "metrics")]
pub const POOL_CONNECTS: &str = "switchboard_pool_connects_total";

/// Counter: connections opened to make up for ones lost to a failure (closed by the
/// peer, an error or a heartbeat timeout rather than by the pool or its user): the
/// first connect after each loss counts. Label: `authority`.
#[cfg(feature = "metrics")]
pub const POOL_RECONNECTS: &str = "switchboard_pool_reconnects_total";

/// Counter: failed connect attempts by `kind`: `refused`, `timeout`, `unresolved`,
/// `unsupported`, `handshake` or `io` (any other I/O error). Labels: `authority`,
/// `kind`.
#[cfg(feature = "metrics")]
pub const POOL_CONNECT_ERRORS: &str = "switchboard_pool_connect_errors_total";

/// Gauge: calls awaiting their replies, summed over connections. Label: `authority`
/// (pooled connections only).
#[cfg(feature = "metrics")]
pub const CONNECTION_IN_FLIGHT: &str = "switchboard_connection_in_flight";

/// Histogram, seconds: round trips of heartbeat pings (and of [`Ping`](crate::Ping)
/// messages). Label: `authority` (pooled connections only).
#[cfg(feature = "metrics")]
pub const CONNECTION_RTT: &str = "switchboard_connection_rtt_seconds";

/// Counter: calls and sends that ended in an error, by `kind`
/// ([`CallError::kind`]): `timeout`, `overloaded`, `closing`, `closed`, `remote`,
/// `encode`. Labels: `kind`, and `authority` (pooled connections only).
#[cfg(feature = "metrics")]
pub const CALL_ERRORS: &str = "switchboard_call_errors_total";

/// Counter: connections closed, by `reason` ([`CloseReason::kind`]). Labels:
/// `reason`, and `authority` (pooled connections only).
#[cfg(feature = "metrics")]
pub const CONNECTIONS_CLOSED: &str = "switchboard_connections_closed_total";

/// Gives the installed recorder the unit and help text of every switchboard metric,
/// for exporters that show them (Prometheus's `# HELP`). Call it once, after the
/// recorder is installed; metrics are recorded whether or not it is called.
#[cfg(feature = "metrics")]
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

    describe_gauge!(
        POOL_CONNECTIONS,
        Unit::Count,
        "Pooled connections by state: idle, shared, leased, busy."
    );
    describe_gauge!(
        POOL_CONNECTING,
        Unit::Count,
        "Connect attempts scheduled or under way."
    );
    describe_gauge!(
        POOL_WAITERS,
        Unit::Count,
        "Checkouts waiting in line for a connection."
    );
    describe_gauge!(
        POOL_DOWN,
        "1 while the authority is marked down after repeated connect failures."
    );
    describe_counter!(
        POOL_CHECKOUTS,
        Unit::Count,
        "Checkouts by outcome: direct, waited, shared, timed_out, refused, failed."
    );
    describe_histogram!(
        POOL_CHECKOUT_WAIT,
        Unit::Seconds,
        "Time a checkout waited in line before it got a connection."
    );
    describe_counter!(
        POOL_CONNECTS,
        Unit::Count,
        "Connections opened by the pool."
    );
    describe_counter!(
        POOL_RECONNECTS,
        Unit::Count,
        "Connections opened to make up for ones lost to a failure."
    );
    describe_counter!(
        POOL_CONNECT_ERRORS,
        Unit::Count,
        "Failed connect attempts by kind."
    );
    describe_gauge!(
        CONNECTION_IN_FLIGHT,
        Unit::Count,
        "Calls awaiting their replies."
    );
    describe_histogram!(
        CONNECTION_RTT,
        Unit::Seconds,
        "Round trip of heartbeat pings."
    );
    describe_counter!(
        CALL_ERRORS,
        Unit::Count,
        "Calls and sends that ended in an error, by kind."
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "Connections closed, by reason."
    );
}

/// What an authority's gauges and checkout counters should show, read from its
/// state with its lock held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) struct PoolFigures {
    pub(crate) idle: usize,
    pub(crate) shared: usize,
    pub(crate) leased: usize,
    pub(crate) busy: usize,
    pub(crate) connecting: usize,
    pub(crate) waiters: usize,
    pub(crate) down: bool,
    pub(crate) direct: u64,
    pub(crate) waited: u64,
    pub(crate) shared_checkouts: u64,
    pub(crate) timed_out: u64,
    pub(crate) refused: u64,
    pub(crate) failed: u64,
}

/// The short name of a connect error's kind, for the `kind` label.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn connect_error_kind(error: &ConnectError) -> &'static str {
    match error {
        ConnectError::Timeout { .. } => "timeout",
        ConnectError::Unresolved { .. } => "unresolved",
        ConnectError::Refused { .. } => "refused",
        ConnectError::Unsupported { .. } => "unsupported",
        ConnectError::Handshake { .. } => "handshake",
        // The operating system's refusal is the same event as an in-memory one, and
        // the one an operator looks for first.
        ConnectError::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::ConnectionRefused => "refused",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        },
    }
}

#[cfg(feature = "metrics")]
pub(crate) use recorded::{ConnectionMetrics, PoolMetrics};
#[cfg(not(feature = "metrics"))]
pub(crate) use unrecorded::{ConnectionMetrics, PoolMetrics};

#[cfg(feature = "metrics")]
mod recorded {
    use std::sync::Arc;

    use ::metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, Label, SharedString};

    use super::*;

    /// The handles of one pool authority's metrics, and what its gauges and
    /// counters were last told. Lives in the authority's state, behind its lock.
    #[derive(Debug)]
    pub(crate) struct PoolMetrics {
        authority: SharedString,
        idle: Gauge,
        shared: Gauge,
        leased: Gauge,
        busy: Gauge,
        connecting: Gauge,
        waiters: Gauge,
        down: Gauge,
        direct: Counter,
        waited: Counter,
        shared_checkouts: Counter,
        timed_out: Counter,
        refused: Counter,
        failed: Counter,
        checkout_wait: Histogram,
        connects: Counter,
        reconnects: Counter,
        /// Connections lost to failures and not yet made up for.
        lost: usize,
        published: PoolFigures,
        connection: Handles,
    }

    impl PoolMetrics {
        pub(crate) fn new(authority: &Authority) -> Self {
            // Shared, so that cloning the label for each handle allocates nothing.
            let authority = SharedString::from(Arc::<str>::from(authority.to_string()));
            let label = || Label::new("authority", authority.clone());
            let state = |state: &'static str| {
                gauge!(POOL_CONNECTIONS, vec![label(), Label::new("state", state)])
            };
            let outcome = |outcome: &'static str| {
                counter!(
                    POOL_CHECKOUTS,
                    vec![label(), Label::new("outcome", outcome)]
                )
            };
            Self {
                idle: state("idle"),
                shared: state("shared"),
                leased: state("leased"),
                busy: state("busy"),
                connecting: gauge!(POOL_CONNECTING, vec![label()]),
                waiters: gauge!(POOL_WAITERS, vec![label()]),
                down: gauge!(POOL_DOWN, vec![label()]),
                direct: outcome("direct"),
                waited: outcome("waited"),
                shared_checkouts: outcome("shared"),
                timed_out: outcome("timed_out"),
                refused: outcome("refused"),
                failed: outcome("failed"),
                checkout_wait: histogram!(POOL_CHECKOUT_WAIT, vec![label()]),
                connects: counter!(POOL_CONNECTS, vec![label()]),
                reconnects: counter!(POOL_RECONNECTS, vec![label()]),
                lost: 0,
                published: PoolFigures::default(),
                connection: Handles::new(Some(authority.clone())),
                authority,
            }
        }

        /// Brings gauges and counters from what they were last told to `now`.
        pub(crate) fn publish(&mut self, now: PoolFigures) {
            let last = std::mem::replace(&mut self.published, now);
            if last == now {
                return;
            }
            move_gauge(&self.idle, last.idle, now.idle);
            move_gauge(&self.shared, last.shared, now.shared);
            move_gauge(&self.leased, last.leased, now.leased);
            move_gauge(&self.busy, last.busy, now.busy);
            move_gauge(&self.connecting, last.connecting, now.connecting);
            move_gauge(&self.waiters, last.waiters, now.waiters);
            move_gauge(&self.down, usize::from(last.down), usize::from(now.down));
            advance(&self.direct, last.direct, now.direct);
            advance(&self.waited, last.waited, now.waited);
            let shared = (last.shared_checkouts, now.shared_checkouts);
            advance(&self.shared_checkouts, shared.0, shared.1);
            advance(&self.timed_out, last.timed_out, now.timed_out);
            advance(&self.refused, last.refused, now.refused);
            advance(&self.failed, last.failed, now.failed);
        }

        /// The metrics of a new connection to this authority.
        pub(crate) fn connection(&self) -> ConnectionMetrics {
            ConnectionMetrics {
                handles: self.connection.clone(),
                in_flight: 0,
            }
        }

        /// A checkout that waited in line got its connection after `waited`.
        pub(crate) fn checkout_waited(&self, waited: Duration) {
            self.checkout_wait.record(waited);
        }

        /// A connection opened.
        pub(crate) fn connected(&mut self) {
            self.connects.increment(1);
            if self.lost > 0 {
                self.lost -= 1;
                self.reconnects.increment(1);
            }
        }

        /// A connect attempt failed.
        pub(crate) fn connect_failed(&self, error: &ConnectError) {
            // Registered here rather than up front: failures are rare, and kinds that
            // never happen then make no series.
            let labels = vec![
                Label::new("authority", self.authority.clone()),
                Label::new("kind", connect_error_kind(error)),
            ];
            counter!(POOL_CONNECT_ERRORS, labels).increment(1);
        }

        /// A connection closed; `reason` says whether it was lost to a failure.
        pub(crate) fn closed(&mut self, reason: &CloseReason) {
            if !reason.is_requested() {
                self.lost += 1;
            }
        }
    }

    impl Drop for PoolMetrics {
        /// Takes this pool's share out of the gauges (several pools may add to
        /// them); counters keep what they counted.
        fn drop(&mut self) {
            self.publish(PoolFigures {
                idle: 0,
                shared: 0,
                leased: 0,
                busy: 0,
                connecting: 0,
                waiters: 0,
                down: false,
                ..self.published
            });
        }
    }

    /// Moves a gauge that was told `from` to `to`.
    fn move_gauge(gauge: &Gauge, from: usize, to: usize) {
        if to > from {
            gauge.increment((to - from) as f64);
        } else if to < from {
            gauge.decrement((from - to) as f64);
        }
    }

    /// Moves a counter that was told `from` up to `to`.
    fn advance(counter: &Counter, from: u64, to: u64) {
        if to > from {
            counter.increment(to - from);
        }
    }

    /// The handles a connection records with: its pool authority's, or its own.
    #[derive(Debug, Clone)]
    struct Handles {
        authority: Option<SharedString>,
        in_flight: Gauge,
        rtt: Histogram,
        /// One per kind of [`CallError`], in the order of `error_index`.
        errors: [Counter; 6],
    }

    impl Handles {
        fn new(authority: Option<SharedString>) -> Self {
            let labels = || match &authority {
                Some(authority) => vec![Label::new("authority", authority.clone())],
                None => Vec::new(),
            };
            let error = |kind: &'static str| {
                let mut labels = labels();
                labels.push(Label::new("kind", kind));
                counter!(CALL_ERRORS, labels)
            };
            Self {
                in_flight: gauge!(CONNECTION_IN_FLIGHT, labels()),
                rtt: histogram!(CONNECTION_RTT, labels()),
                errors: [
                    error("timeout"),
                    error("overloaded"),
                    error("closing"),
                    error("closed"),
                    error("remote"),
                    error("encode"),
                ],
                authority,
            }
        }
    }

    const TIMEOUT: usize = 0;
    const CLOSED: usize = 3;
    const REMOTE: usize = 4;

    /// Where a kind of call error is counted in `Handles::errors`.
    fn error_index(error: &CallError) -> usize {
        match error {
            CallError::Timeout { .. } => TIMEOUT,
            CallError::Overloaded(_) => 1,
            CallError::Closing => 2,
            CallError::Closed(_) => CLOSED,
            CallError::Remote(_) => REMOTE,
            CallError::Encode(_) => 5,
        }
    }

    /// One connection's metrics: its handles, and the calls in flight it added to
    /// the shared gauge.
    #[derive(Debug)]
    pub(crate) struct ConnectionMetrics {
        handles: Handles,
        in_flight: usize,
    }

    impl ConnectionMetrics {
        /// The metrics of a connection outside any pool (no `authority` label).
        pub(crate) fn unpooled() -> Self {
            Self {
                handles: Handles::new(None),
                in_flight: 0,
            }
        }

        /// The connection now has `calls` awaiting replies.
        pub(crate) fn in_flight(&mut self, calls: usize) {
            move_gauge(&self.handles.in_flight, self.in_flight, calls);
            self.in_flight = calls;
        }

        /// A heartbeat ping came back after `rtt`.
        pub(crate) fn rtt(&self, rtt: Duration) {
            self.handles.rtt.record(rtt);
        }

        /// A call or send ended with `error`.
        pub(crate) fn call_error(&self, error: &CallError) {
            self.handles.errors[error_index(error)].increment(1);
        }

        /// A call was answered with the peer's error.
        pub(crate) fn remote_error(&self) {
            self.handles.errors[REMOTE].increment(1);
        }

        /// `count` calls ran out of time.
        pub(crate) fn timed_out(&self, count: u64) {
            if count > 0 {
                self.handles.errors[TIMEOUT].increment(count);
            }
        }

        /// `count` calls failed because the connection stopped.
        pub(crate) fn failed_by_close(&self, count: usize) {
            if count > 0 {
                self.handles.errors[CLOSED].increment(count as u64);
            }
        }

        /// The connection stopped with `reason`.
        pub(crate) fn closed(&mut self, reason: &CloseReason) {
            self.in_flight(0);
            let mut labels = Vec::with_capacity(2);
            if let Some(authority) = &self.handles.authority {
                labels.push(Label::new("authority", authority.clone()));
            }
            labels.push(Label::new("reason", reason.kind()));
            counter!(CONNECTIONS_CLOSED, labels).increment(1);
        }
    }

    impl Drop for ConnectionMetrics {
        /// Takes the connection's calls out of the shared gauge, also when the actor
        /// is dropped without stopping (its arbiter went away).
        fn drop(&mut self) {
            self.in_flight(0);
        }
    }
}

/// The same interface, recording nothing: no fields, no work.
#[cfg(not(feature = "metrics"))]
mod unrecorded {
    use super::*;

    #[derive(Debug)]
    pub(crate) struct PoolMetrics;

    impl PoolMetrics {
        pub(crate) fn new(_: &Authority) -> Self {
            Self
        }

        #[inline]
        pub(crate) fn publish(&mut self, _: PoolFigures) {}

        pub(crate) fn connection(&self) -> ConnectionMetrics {
            ConnectionMetrics
        }

        #[inline]
        pub(crate) fn checkout_waited(&self, _: Duration) {}

        #[inline]
        pub(crate) fn connected(&mut self) {}

        #[inline]
        pub(crate) fn connect_failed(&self, _: &ConnectError) {}

        #[inline]
        pub(crate) fn closed(&mut self, _: &CloseReason) {}
    }

    #[derive(Debug)]
    pub(crate) struct ConnectionMetrics;

    impl ConnectionMetrics {
        pub(crate) fn unpooled() -> Self {
            Self
        }

        #[inline]
        pub(crate) fn in_flight(&mut self, _: usize) {}

        #[inline]
        pub(crate) fn rtt(&self, _: Duration) {}

        #[inline]
        pub(crate) fn call_error(&self, _: &CallError) {}

        #[inline]
        pub(crate) fn remote_error(&self) {}

        #[inline]
        pub(crate) fn timed_out(&self, _: u64) {}

        #[inline]
        pub(crate) fn failed_by_close(&self, _: usize) {}

        #[inline]
        pub(crate) fn closed(&mut self, _: &CloseReason) {}
    }
}
