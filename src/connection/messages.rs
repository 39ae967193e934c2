//! The messages a [`Connection`](super::Connection) handles and the events it sends.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Message;

use crate::protocol::Protocol;
use crate::{CallError, CloseReason};

/// Identifies one Connection for as long as the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl ConnectionId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

/// Sends a request and resolves with its reply, or with the reason there is none.
///
/// Resolves exactly once: with the reply, the peer's error
/// ([`CallError::Remote`]), [`CallError::Timeout`] after the call's timeout,
/// [`CallError::Overloaded`] at once if the connection is full, or
/// [`CallError::Closed`] if the connection stops first. A connection configured with
/// [`max_waiting_calls`](crate::ConnectionConfigBuilder::max_waiting_calls) keeps a
/// call past `max_in_flight` waiting for room instead, within the call's timeout.
pub struct Call<P: Protocol> {
    /// What to send.
    pub request: P::Request,
    /// This call's timeout, or `None` for the connection's `call_timeout`.
    pub timeout: Option<Duration>,
    /// Whether the peer may hold the reply for long on purpose; see
    /// [`blocking`](Self::blocking).
    pub blocking: bool,
}

impl<P: Protocol> Call<P> {
    /// A call with the connection's default timeout.
    pub fn new(request: impl Into<P::Request>) -> Self {
        Self {
            request: request.into(),
            timeout: None,
            blocking: false,
        }
    }

    /// This call with its own timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Marks this call blocking: the peer may hold its reply for long on purpose (a
    /// long poll, Redis's `BLPOP`), and on an in-order protocol everything after it,
    /// the heartbeat's ping included, waits as long. While a blocking call is
    /// outstanding, silence does not close the connection as a dead link and no
    /// heartbeat ping is queued behind it on an in-order protocol; the call's own
    /// timeout bounds the wait, so give it one longer than the block. Once no blocking
    /// call is outstanding, silence is judged again from the last bytes read.
    ///
    /// The protocol may mark calls itself ([`Protocol::is_blocking`]): RESP marks
    /// Redis's blocking commands.
    #[must_use]
    pub fn blocking(mut self) -> Self {
        self.blocking = true;
        self
    }
}

impl<P: Protocol> fmt::Debug for Call<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("timeout", &self.timeout)
            .field("blocking", &self.blocking)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Message for Call<P> {
    type Result = Result<P::Reply, CallError>;
}

/// Writes one frame that expects no reply (fire-and-forget), and resolves once the
/// frame has been handed to the transport, or with the reason it was not.
///
/// Resolves exactly once: `Ok` once the transport took the frame's last byte;
/// [`CallError::Timeout`] if it has not by the send's timeout (its own, or the
/// connection's `call_timeout`); [`CallError::Overloaded`] at once if the write buffer
/// is full; [`CallError::Closed`] if the connection stops first. A send that timed out
/// is not taken back: its bytes are in the write buffer and go out if the peer starts
/// reading again (as a timed-out call's request does).
///
/// The frame is written as it is: under a protocol that correlates by id it must not
/// be a request, or its reply would arrive for an id nobody asked for.
pub struct SendFrame<P: Protocol> {
    /// The frame to write.
    pub frame: P::Frame,
    /// How long to wait for the transport to take the frame, or `None` for the
    /// connection's `call_timeout`.
    pub timeout: Option<Duration>,
}

impl<P: Protocol> SendFrame<P> {
    /// A send of `frame`, with the connection's `call_timeout`.
    pub fn new(frame: P::Frame) -> Self {
        Self {
            frame,
            timeout: None,
        }
    }

    /// This send with its own timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl<P: Protocol> fmt::Debug for SendFrame<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFrame")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Message for SendFrame<P> {
    type Result = Result<(), CallError>;
}

/// Writes one frame the peer does not answer (a push to a subscriber, a reply to the
/// peer's request), without telling the sender how it went: for a server that writes
/// to many peers and must never wait for a slow one.
///
/// If the frame does not fit the write buffer (`max_write_buffer`), it waits, encoded
/// and in order with the other deliveries, and goes into the buffer as the peer takes
/// bytes: a batch of answers larger than the buffer reaches a peer that reads. What
/// waits is bounded: deliveries from a [`ServerBroker`](crate::server::ServerBroker)
/// by its `subscriber_queue` (each keeps its place in that queue until it is in the
/// write buffer), others by `max_in_flight`. Past that bound `overflow` says what
/// happens: the frame is dropped (and counted in
/// [`ConnectionStats::deliveries_dropped`]), or the connection closes with
/// [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer). A peer that takes
/// nothing at all is closed with
/// [`CloseReason::WriteStalled`](crate::CloseReason::WriteStalled) after
/// `heartbeat_timeout`. A connection that is closing drops new deliveries (and one
/// that stops drops those still waiting, counted in `deliveries_dropped`); a graceful
/// close writes those already waiting first.
///
/// Deliveries keep their order among themselves; a [`Call`] or [`SendFrame`] handled
/// while deliveries wait for room may go out before them.
pub struct Deliver<P: Protocol> {
    /// The frame to write.
    pub frame: P::Frame,
    /// What to do if the peer is not reading fast enough.
    pub overflow: Overflow,
    /// Counts this message in its sender's queue until the connection handles it.
    pub(crate) _ticket: Option<QueueTicket>,
}

impl<P: Protocol> Deliver<P> {
    /// A delivery of `frame`, with `overflow` for a full write buffer.
    pub fn new(frame: P::Frame, overflow: Overflow) -> Self {
        Self {
            frame,
            overflow,
            _ticket: None,
        }
    }
}

impl<P: Protocol> fmt::Debug for Deliver<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliver")
            .field("overflow", &self.overflow)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Message for Deliver<P> {
    type Result = ();
}

/// What happens to a [`Deliver`] (or a subscriber's message) that does not fit what
/// may wait for the peer.
///
/// In a config file (feature `serde`): `"drop"` or `"close"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum Overflow {
    /// Drop the message and count it; the peer stays connected.
    Drop,
    /// Close the connection with [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer),
    /// failing its pending calls; the peer reconnects and catches up if it can.
    #[default]
    Close,
}

/// A message's place in a bounded queue of messages on their way to a connection:
/// the queue's count goes down when the ticket is dropped, which happens when the
/// connection handles the message or when the message is dropped unhandled.
#[derive(Debug)]
pub(crate) struct QueueTicket(Arc<AtomicUsize>);

impl QueueTicket {
    /// Takes a place in `queue` if fewer than `limit` are taken.
    pub(crate) fn take(queue: &Arc<AtomicUsize>, limit: usize) -> Result<Self, usize> {
        let queued = queue.fetch_add(1, Ordering::AcqRel);
        if queued >= limit {
            queue.fetch_sub(1, Ordering::AcqRel);
            return Err(queued);
        }
        Ok(Self(queue.clone()))
    }
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Closes the connection at once with `reason`: how a server disconnects a peer whose
/// queue is full without going through that queue.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Evict(pub(crate) CloseReason);

/// A request from the peer, handed to the connection's request recipient (a server's
/// broker), which answers it by sending the connection a [`Deliver`].
pub struct Incoming<P: Protocol> {
    /// The connection it came in on.
    pub connection: ConnectionId,
    /// The request frame.
    pub frame: P::Frame,
}

impl<P: Protocol> fmt::Debug for Incoming<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Message for Incoming<P> {
    type Result = ();
}

/// Closes gracefully: new calls fail with [`CallError::Closing`], calls in flight get
/// their replies until the timeout, then the connection closes. Resolves with the
/// reason the connection closed.
///
/// A `Close` sent while a close is under way joins it, and the earliest deadline wins:
/// a shorter timeout brings the end forward, a longer one does not extend it.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "CloseReason")]
pub struct Close {
    /// How long to wait for calls in flight, or `None` for the connection's
    /// `close_timeout`.
    pub timeout: Option<Duration>,
}

/// Closes at once: every pending call fails with [`CloseReason::Aborted`]. Resolves with
/// the reason the connection closed (which may be an earlier one).
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "CloseReason")]
pub struct Abort;

/// Checks the peer is alive: sends a heartbeat ping (or joins the one outstanding)
/// and resolves with the round trip once the pong arrives.
///
/// Fails with [`CallError::Closing`] or [`CallError::Closed`] if the connection is
/// closing or stops first, with [`CallError::Overloaded`] if the ping does not fit the
/// write buffer, and with [`CallError::Timeout`] if the peer left the ping unanswered
/// for `heartbeat_timeout` while other frames kept coming. Bound the wait with a
/// timeout of your own, as the Pool's health checks do.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<Duration, CallError>")]
pub struct Ping;

/// Asks for a snapshot of the connection's state and counters.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "ConnectionStats")]
pub struct GetStats;

/// A snapshot of one connection's state and counters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// The connection.
    pub id: ConnectionId,
    /// Who it talks to.
    pub peer: Arc<str>,
    /// Calls awaiting a reply.
    pub in_flight: usize,
    /// Bytes waiting to be written.
    pub buffered_write_bytes: usize,
    /// The last heartbeat round trip, if one completed.
    pub rtt: Option<Duration>,
    /// Whether a graceful close is under way.
    pub closing: bool,
    /// Calls sent.
    pub calls: u64,
    /// Replies delivered to their callers (error replies included).
    pub replies: u64,
    /// Calls that timed out.
    pub timeouts: u64,
    /// Replies that arrived after their call timed out, dropped.
    pub late_replies: u64,
    /// Calls refused with `Overloaded`.
    pub overloaded: u64,
    /// Pushes handed to the push recipient.
    pub pushes: u64,
    /// Pushes dropped because the push recipient's mailbox was full or closed, or there
    /// was none.
    pub pushes_dropped: u64,
    /// Heartbeat pings sent.
    pub pings_sent: u64,
    /// Requests from the peer handed to the request recipient.
    pub requests: u64,
    /// Requests from the peer refused because the request recipient was full or gone.
    pub requests_refused: u64,
    /// [`Deliver`]ed frames dropped: past the bound on what waits for the peer (under
    /// [`Overflow::Drop`]), not encodable, or the connection was closing or stopped.
    pub deliveries_dropped: u64,
    /// [`Deliver`]ed frames waiting for room in the write buffer.
    pub queued_deliveries: usize,
    /// Calls waiting for room past `max_in_flight` (see
    /// [`max_waiting_calls`](crate::ConnectionConfigBuilder::max_waiting_calls)).
    pub queued_calls: usize,
}

/// What a Connection tells its supervisor (the Pool, or a probe in tests).
///
/// `Connected` comes first and `Closed` last, exactly once each.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The connection started and is ready for calls.
    Connected {
        /// The connection.
        id: ConnectionId,
        /// Who it talks to.
        peer: Arc<str>,
    },
    /// A heartbeat round trip completed.
    Rtt {
        /// The connection.
        id: ConnectionId,
        /// The round trip.
        rtt: Duration,
    },
    /// The connection began a graceful close: it takes no new calls and closes once
    /// those in flight are answered. Whoever routes work over it should move on.
    Closing {
        /// The connection.
        id: ConnectionId,
    },
    /// The connection's load changed since the last report (reported at most once per
    /// heartbeat interval).
    Load {
        /// The connection.
        id: ConnectionId,
        /// Calls awaiting a reply.
        in_flight: usize,
        /// Bytes waiting to be written.
        buffered_write_bytes: usize,
    },
    /// The connection stopped; every call pending then failed with `reason`.
    Closed {
        /// The connection.
        id: ConnectionId,
        /// Why it stopped.
        reason: CloseReason,
    },
}

/// An unsolicited message from the peer, handed to the push recipient.
pub struct Pushed<P: Protocol> {
    /// The connection it came from.
    pub connection: ConnectionId,
    /// What the peer pushed.
    pub push: P::Push,
}

impl<P: Protocol> fmt::Debug for Pushed<P>
where
    P::Push: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pushed")
            .field("connection", &self.connection)
            .field("push", &self.push)
            .finish()
    }
}

impl<P: Protocol> Message for Pushed<P> {
    type Result = ();
}
