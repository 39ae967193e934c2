//! Errors of the connection layer: why a call failed ([`CallError`]), why a
//! connection closed ([`CloseReason`]), and why a transport could not be opened
//! ([`ConnectError`]).
//!
//! All three are `Clone` (sources are shared behind `Arc`), because one reason is
//! handed to every call that was pending when a connection stopped, and one connect
//! error to every waiter of a Pool.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::RemoteError;
use crate::Authority;

/// Why a call (or a fire-and-forget send) did not get a reply.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No reply within the call's timeout. A reply that arrives later is dropped.
    #[error("no reply within {after:?}")]
    Timeout {
        /// The timeout that ran out.
        after: Duration,
    },
    /// The connection holds as much as it may; the request was not sent.
    #[error("connection overloaded: {0}")]
    Overloaded(Overload),
    /// The connection is closing gracefully and takes no new calls.
    #[error("connection is closing")]
    Closing,
    /// The connection closed before the reply arrived (or before the call was sent).
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    /// The peer answered with an error.
    #[error("peer answered with an error: {0}")]
    Remote(#[from] RemoteError),
    /// The request could not be encoded (for instance, it is larger than the
    /// protocol's maximum frame length). Nothing was sent; the connection is fine.
    #[error("request could not be encoded: {0}")]
    Encode(#[source] Arc<dyn StdError + Send + Sync>),
}

impl CallError {
    /// A short, stable name for the error's kind, for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Overloaded(_) => "overloaded",
            Self::Closing => "closing",
            Self::Closed(_) => "closed",
            Self::Remote(_) => "remote",
            Self::Encode(_) => "encode",
        }
    }
}

impl From<actix::MailboxError> for CallError {
    /// A message that never reached a Connection's handler because the actor had
    /// stopped, or a mailbox timeout set with `send(..).timeout(..)` (which carries no
    /// duration: prefer [`Call::timeout`](crate::Call::timeout), which does).
    fn from(error: actix::MailboxError) -> Self {
        match error {
            actix::MailboxError::Closed => Self::Closed(CloseReason::Stopped),
            actix::MailboxError::Timeout => Self::Timeout {
                after: Duration::ZERO,
            },
        }
    }
}

/// Which bound an overloaded connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Overload {
    /// `max_in_flight` calls are already waiting for replies.
    #[error("{limit} calls in flight")]
    InFlight {
        /// The configured `max_in_flight`.
        limit: usize,
    },
    /// The write buffer holds `max_write_buffer` bytes the peer has not taken yet.
    #[error("write buffer holds {buffered} of at most {limit} bytes")]
    WriteBuffer {
        /// Bytes buffered when the request arrived.
        buffered: usize,
        /// The configured `max_write_buffer`.
        limit: usize,
    },
    /// `max_in_flight` calls are in flight and `max_waiting_calls` more already wait
    /// for room.
    #[error("{limit} calls already waiting for room")]
    Waiting {
        /// The configured `max_waiting_calls`.
        limit: usize,
    },
}

/// Why a connection stopped. Every call pending at that moment fails with
/// [`CallError::Closed`] carrying this reason, and the supervisor receives it in
/// [`ConnectionEvent::Closed`](crate::ConnectionEvent::Closed).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// Closed on request after every call in flight was answered.
    #[error("closed on request")]
    Closed,
    /// Closed on request; calls still in flight when the close timeout ran out failed.
    #[error("close timed out after {after:?} with calls in flight")]
    CloseTimeout {
        /// The close timeout.
        after: Duration,
    },
    /// Aborted on request: pending calls failed at once.
    #[error("aborted")]
    Aborted,
    /// The peer closed the connection (end of stream).
    #[error("peer closed the connection")]
    PeerClosed,
    /// Nothing arrived from the peer within the heartbeat timeout (a dead or
    /// half-open link).
    #[error("nothing received for {silent_for:?} (heartbeat timeout)")]
    HeartbeatTimeout {
        /// How long the peer had been silent.
        silent_for: Duration,
    },
    /// Reading or writing the transport failed.
    #[error("i/o error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The peer sent bytes that do not decode (malformed, oversized or truncated frame).
    #[error("malformed input: {0}")]
    Decode(#[source] Arc<dyn StdError + Send + Sync>),
    /// The peer broke the protocol's rules (a reply for an unknown or already
    /// answered id, an unexpected request, ...).
    #[error("protocol violation: {0}")]
    Protocol(Arc<str>),
    /// The peer did not read what was sent to it fast enough: its outbound queue or
    /// write buffer was full, and the policy for slow peers is to disconnect them.
    #[error("slow consumer: {queued} bytes or messages queued, limit {limit}")]
    SlowConsumer {
        /// What was queued when the connection gave up on the peer.
        queued: usize,
        /// The limit it reached.
        limit: usize,
    },
    /// The peer took none of the bytes waiting for it for the heartbeat timeout: it
    /// stopped reading (though it may still be sending, which keeps the heartbeat
    /// content).
    #[error("write stalled: {buffered} bytes not taken by the peer for {stalled_for:?}")]
    WriteStalled {
        /// How long the write buffer had made no progress.
        stalled_for: Duration,
        /// Bytes waiting to be written.
        buffered: usize,
    },
    /// The actor stopped for another reason (its system or arbiter shut down, or the
    /// actor's mailbox closed before the call was handled).
    #[error("connection actor stopped")]
    Stopped,
}

impl CloseReason {
    /// A short, stable name for the reason's kind, for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::CloseTimeout { .. } => "close_timeout",
            Self::Aborted => "aborted",
            Self::PeerClosed => "peer_closed",
            Self::HeartbeatTimeout { .. } => "heartbeat_timeout",
            Self::Io(_) => "io",
            Self::Decode(_) => "decode",
            Self::Protocol(_) => "protocol",
            Self::SlowConsumer { .. } => "slow_consumer",
            Self::WriteStalled { .. } => "write_stalled",
            Self::Stopped => "stopped",
        }
    }

    /// Whether the connection was closed on purpose by its owner rather than by a
    /// failure; a supervisor replaces a connection only after a failure.
    pub fn is_requested(&self) -> bool {
        matches!(
            self,
            Self::Closed | Self::CloseTimeout { .. } | Self::Aborted
        )
    }
}

/// Why a transport could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No connection within the connect timeout, or a handshake on it (TLS, a
    /// protocol's greeting) that did not finish within its own timeout.
    #[error("connecting to {authority} timed out after {after:?}")]
    Timeout {
        /// Where the connection was going.
        authority: Authority,
        /// The connect timeout.
        after: Duration,
    },
    /// The host name did not resolve to any address.
    #[error("{authority} resolved to no address")]
    Unresolved {
        /// Where the connection was going.
        authority: Authority,
    },
    /// Nothing listens at an in-memory authority.
    #[error("nothing listens at {authority}")]
    Refused {
        /// Where the connection was going.
        authority: Authority,
    },
    /// The connector cannot open this kind of authority (a TCP connector given a
    /// Unix path, say).
    #[error("this connector cannot open {authority}")]
    Unsupported {
        /// The authority it was given.
        authority: Authority,
    },
    /// The operating system refused or failed the connection.
    #[error("connecting to {authority} failed: {source}")]
    Io {
        /// Where the connection was going.
        authority: Authority,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The transport opened, but the handshake on it failed: TLS (a certificate or
    /// server name that does not check out) or the protocol's own greeting (a
    /// refused password, say). Retrying will not help until something changes.
    #[error("{layer} handshake with {authority} failed: {source}")]
    Handshake {
        /// Where the connection was going.
        authority: Authority,
        /// Which handshake failed: `"tls"`, `"resp"`, ...
        layer: &'static str,
        /// What went wrong.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl ConnectError {
    pub(crate) fn io(authority: &Authority, source: io::Error) -> Self {
        Self::Io {
            authority: authority.clone(),
            source: Arc::new(source),
        }
    }

    /// A failed handshake of `layer` (`"tls"`, `"resp"`, ...) on a transport to
    /// `authority`; for connectors that wrap another and greet the peer.
    pub fn handshake(
        authority: &Authority,
        layer: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Handshake {
            authority: authority.clone(),
            layer,
            source: Arc::from(source.into()),
        }
    }
}

/// A configuration value that makes no sense, reported by a builder's `build()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field}: {problem}")]
pub struct ConfigError {
    field: &'static str,
    problem: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, problem: impl fmt::Display) -> Self {
        Self {
            field,
            problem: problem.to_string(),
        }
    }

    /// The setting at fault.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

/// Why a checkout from a [`Pool`](crate::Pool) failed.
///
/// Connect failures come with the connector's own error, never as a bare timeout.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No connection became free within the checkout timeout. `last_connect_error`
    /// says why none could be opened, if connecting was failing meanwhile.
    #[error("no connection to {authority} within {waited:?}{}", last_error_suffix(.last_connect_error))]
    Timeout {
        /// The authority asked for.
        authority: Authority,
        /// How long the checkout waited.
        waited: Duration,
        /// The last connect error for the authority while the checkout waited.
        last_connect_error: Option<ConnectError>,
    },
    /// `max_waiters` checkouts are already queued for the authority.
    #[error("{limit} checkouts already wait for {authority}")]
    TooManyWaiters {
        /// The authority asked for.
        authority: Authority,
        /// The configured `max_waiters`.
        limit: usize,
    },
    /// A connect attempt for the authority failed while this checkout waited; the
    /// longest waiter hears of each failed attempt.
    #[error(transparent)]
    Connect(ConnectError),
    /// The authority is marked down after `failures` consecutive connect failures;
    /// checkouts fail at once until a probe connects again.
    #[error("{authority} is down after {failures} failed connects: {error}")]
    Down {
        /// The authority asked for.
        authority: Authority,
        /// Consecutive connect failures so far.
        failures: u32,
        /// The last connect error.
        error: ConnectError,
    },
    /// The pool is draining: it takes no new checkouts.
    #[error("the pool is draining")]
    Draining,
    /// The pool is closed.
    #[error("the pool is closed")]
    Closed,
}

fn last_error_suffix(error: &Option<ConnectError>) -> String {
    match error {
        Some(error) => format!(" (last connect error: {error})"),
        None => String::new(),
    }
}

impl PoolError {
    /// A short, stable name for the kind of error, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::TooManyWaiters { .. } => "too_many_waiters",
            Self::Connect(_) => "connect",
            Self::Down { .. } => "down",
            Self::Draining => "draining",
            Self::Closed => "closed",
        }
    }
}
