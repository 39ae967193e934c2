//! The Connection actor; its contract is documented on [`Connection`].

mod config;
mod counted;
mod driver;
mod messages;
mod outbox;
mod pending;
mod queued;

use std::cell::RefCell;
use std::fmt;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::dev::{MessageResponse, OneshotSender};
use actix::{
    Actor, ActorContext, AsyncContext, Context, Handler, MessageResult, Recipient, ResponseFuture,
};
use bytes::BytesMut;
use futures::Sink;
use tokio::time::Instant;
use tokio_util::codec::Framed;

pub use config::{ConnectionConfig, ConnectionConfigBuilder};
pub use messages::{
    Abort, Call, Close, ConnectionEvent, ConnectionId, ConnectionStats, Deliver, GetStats,
    Incoming, Overflow, Ping, Pushed, SendFrame,
};
pub(crate) use messages::{Evict, QueueTicket};
pub(crate) use pending::InFlightGauge;

use crate::metrics::ConnectionMetrics;
use crate::protocol::{Correlation, Inbound, Protocol};
use crate::transport::Transport;
use crate::{CallError, CloseReason, Overload};
use counted::Counted;
use driver::Driver;
use outbox::Outbox;
use pending::{Matched, PendingCalls};
use queued::{QueuedCall, QueuedCalls};

/// Bytes a connection's read buffer starts with; its write buffer starts empty and
/// allocates on the first write. An idle connection needs little more (a heartbeat
/// is a few dozen bytes); a busy one grows its buffers on demand, doubling, and the
/// read side keeps extra spare room while it stays busy (see the driver).
const INITIAL_READ_BUFFER: usize = 512;

/// One connection to a peer: an actor that owns a framed transport, correlates replies
/// with calls, keeps the link alive with heartbeats and bounds what it holds. Start one
/// with [`Connection::builder`].
///
/// # What it owns
/// A `Framed<T, P::Codec>` over one transport. A single driver future in the actor's
/// context reads frames from it (the reader is the framed stream) and flushes what
/// the handlers encoded (the single writer), so bytes go out in the order messages
/// were handled and nothing is shared or locked.
///
/// # Messages
/// - [`Call`] → `Result<Reply, CallError>`: request and reply, correlated by id or in
///   order as the [`Protocol`] says; per-call timeout; `Overloaded` past
///   `max_in_flight` or `max_write_buffer`.
/// - [`SendFrame`] → `Result<(), CallError>`: fire-and-forget, resolved once the
///   transport has taken the bytes, with `Timeout` if it has not by the send's timeout,
///   or failed if the connection stops first.
/// - [`Close`] (graceful) and [`Abort`] → the [`CloseReason`]; [`GetStats`].
///
/// # States
/// ```text
/// Open ──Close──▶ Closing ──in-flight answered──▶ Stopped(Closed)
///   │                 └──close timeout────────▶ Stopped(CloseTimeout)
///   └──Abort / EOF / I/O error / bad frame / heartbeat timeout──▶ Stopped(reason)
/// ```
/// On the way to `Stopped`, for any reason, every pending call and send fails exactly
/// once with [`CallError::Closed`] carrying the reason, and the supervisor gets
/// [`ConnectionEvent::Closed`].
///
/// # Heartbeat
/// Any bytes from the peer prove it alive, a whole frame or only a piece of one (a
/// large frame arriving slowly is not silence). After `heartbeat_interval` of silence the
/// connection sends a ping and measures the round trip ([`ConnectionEvent::Rtt`]); after
/// `heartbeat_timeout` of silence it closes with [`CloseReason::HeartbeatTimeout`],
/// which is how a half-open link is found. The peer's pings are answered at once.
/// A peer that keeps sending but reads nothing is found by the write side instead:
/// bytes waiting that the transport has taken none of for `heartbeat_timeout` close
/// the connection with [`CloseReason::WriteStalled`].
///
/// # Who talks to it
/// Callers send it messages (through an `Addr`, or a Pool later); it tells its
/// supervisor about its life through a `Recipient<ConnectionEvent>` and hands
/// unsolicited frames to a `Recipient<Pushed<P>>`.
pub struct Connection<T: Transport, P: Protocol> {
    id: ConnectionId,
    peer: Arc<str>,
    protocol: P,
    config: ConnectionConfig,
    framed: Framed<Counted<T>, P::Codec>,
    pending: Rc<RefCell<PendingCalls<P::Reply>>>,
    /// Calls waiting for room past `max_in_flight` (see `max_waiting_calls`).
    queued: Rc<RefCell<QueuedCalls<P>>>,
    /// Published load and state, for a Pool on another thread.
    gauge: InFlightGauge,
    events: Option<Recipient<ConnectionEvent>>,
    pushes: Option<Recipient<Pushed<P>>>,
    requests: Option<Recipient<Incoming<P>>>,
    /// The id of the next request; ids are never reused.
    next_id: u64,
    /// Bytes ever encoded into the write buffer; with the buffer's length this says how
    /// far the transport has taken them, which completes `SendFrame`s.
    encoded_total: u64,
    /// When bytes last arrived from the peer (any bytes, a whole frame or not).
    last_read: Instant,
    /// Delivered frames waiting for room in the write buffer (see `outbox.rs`).
    outbox: Outbox,
    /// Since when bytes have been waiting for the transport without it taking any;
    /// `None` while nothing waits. Set and cleared by the driver after each flush.
    write_stalled_since: Option<Instant>,
    /// The outstanding heartbeat ping: its id and when it was sent.
    ping: Option<(u64, Instant)>,
    /// Who asked for the outstanding ping's round trip ([`Ping`]).
    ping_waiters: Vec<tokio::sync::oneshot::Sender<Result<Duration, CallError>>>,
    next_ping_id: u64,
    rtt: Option<Duration>,
    /// When the driver's timer should fire next.
    timer_deadline: Instant,
    /// The clock read once per mailbox batch; see `batch_now`.
    batch_now: Option<Instant>,
    /// Set by `Close`: the instant the close gives up on calls in flight.
    closing: Option<(Instant, Duration)>,
    close_waiters: Vec<tokio::sync::oneshot::Sender<CloseReason>>,
    close_reason: Option<CloseReason>,
    last_load: (usize, usize),
    /// When `housekeeping` last ran.
    last_housekeeping: Instant,
    stats: Counters,
    /// Figures for the metrics facade (feature `metrics`).
    metrics: ConnectionMetrics,
    /// Whether each heartbeat round trip is sent as [`ConnectionEvent::Rtt`].
    rtt_events: bool,
    span: tracing::Span,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    calls: u64,
    replies: u64,
    timeouts: u64,
    late_replies: u64,
    overloaded: u64,
    pushes: u64,
    pushes_dropped: u64,
    pings_sent: u64,
    requests: u64,
    requests_refused: u64,
    deliveries_dropped: u64,
}

impl<T: Transport, P: Protocol> fmt::Debug for Connection<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("in_flight", &self.pending.borrow().waiting())
            .field("queued_deliveries", &self.outbox.len())
            .field("queued_delivery_bytes", &self.outbox.bytes())
            .field("close_reason", &self.close_reason)
            .finish_non_exhaustive()
    }
}

/// Sets up a [`Connection`]; see [`Connection::builder`].
#[must_use]
pub struct ConnectionBuilder<T: Transport, P: Protocol> {
    io: T,
    protocol: P,
    config: ConnectionConfig,
    peer: Option<Arc<str>>,
    events: Option<Recipient<ConnectionEvent>>,
    pushes: Option<Recipient<Pushed<P>>>,
    requests: Option<Recipient<Incoming<P>>>,
    gauge: InFlightGauge,
    id: Option<ConnectionId>,
    metrics: Option<ConnectionMetrics>,
    rtt_events: bool,
}

impl<T: Transport, P: Protocol> fmt::Debug for ConnectionBuilder<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionBuilder")
            .field("config", &self.config)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl<T: Transport, P: Protocol> ConnectionBuilder<T, P> {
    /// The connection's limits and timers. Defaults to [`ConnectionConfig::default`].
    pub fn config(mut self, config: ConnectionConfig) -> Self {
        self.config = config;
        self
    }

    /// How the peer is named in stats, events and traces. Defaults to `"unknown"`.
    pub fn peer(mut self, peer: impl Into<Arc<str>>) -> Self {
        self.peer = Some(peer.into());
        self
    }

    /// Who hears about the connection's life ([`ConnectionEvent`]). Defaults to nobody.
    pub fn events(mut self, recipient: Recipient<ConnectionEvent>) -> Self {
        self.events = Some(recipient);
        self
    }

    /// Who receives the peer's pushes. Pushes are handed over with `try_send`: when the
    /// recipient's mailbox is full (or there is no recipient) the push is dropped and
    /// counted in [`ConnectionStats::pushes_dropped`], so a slow consumer never makes
    /// the connection buffer without bound. Defaults to nobody.
    pub fn pushes(mut self, recipient: Recipient<Pushed<P>>) -> Self {
        self.pushes = Some(recipient);
        self
    }

    /// Who handles the peer's requests, making this a server's connection. Requests
    /// are handed over with `try_send`: when the recipient's mailbox is full or it is
    /// gone, the request is refused at once with the protocol's
    /// [`reject`](Protocol::reject) frame (or, if the protocol has none, the connection
    /// closes), so a flood of requests queues nowhere without bound. Without a
    /// recipient, a request from the peer is a protocol violation. Defaults to nobody.
    pub fn requests(mut self, recipient: Recipient<Incoming<P>>) -> Self {
        self.requests = Some(recipient);
        self
    }

    /// The gauge the connection publishes its in-flight count to (for the Pool).
    pub(crate) fn gauge(mut self, gauge: InFlightGauge) -> Self {
        self.gauge = gauge;
        self
    }

    /// The id the connection takes (for a Pool that tracks it before it starts).
    pub(crate) fn id(mut self, id: ConnectionId) -> Self {
        self.id = Some(id);
        self
    }

    /// The metric handles the connection records with (a Pool's, labelled with the
    /// authority). Defaults to unlabelled ones of its own.
    pub(crate) fn metrics(mut self, metrics: ConnectionMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Leaves out [`ConnectionEvent::Rtt`]: for a Pool, which reads round trips from
    /// the gauge instead of taking a message per heartbeat from each connection.
    pub(crate) fn without_rtt_events(mut self) -> Self {
        self.rtt_events = false;
        self
    }

    /// The actor, not yet started (to start it in another context or arbiter).
    pub fn build(self) -> Connection<T, P> {
        let id = self.id.unwrap_or_else(ConnectionId::next);
        let peer = self.peer.unwrap_or_else(|| Arc::from("unknown"));
        let span = tracing::debug_span!("connection", id = %id, peer = %peer);
        let correlation = self.protocol.correlation();
        let now = Instant::now();
        Connection {
            id,
            peer,
            framed: {
                let mut framed = Framed::with_capacity(
                    Counted::new(self.io),
                    self.protocol.codec(),
                    INITIAL_READ_BUFFER,
                );
                // Written only when there is something to write.
                *framed.write_buffer_mut() = BytesMut::new();
                framed
            },
            protocol: self.protocol,
            pending: Rc::new(RefCell::new(PendingCalls::new(
                correlation,
                self.config.max_in_flight,
                self.gauge.clone(),
            ))),
            queued: Rc::new(RefCell::new(QueuedCalls::new())),
            gauge: self.gauge,
            config: self.config,
            events: self.events,
            pushes: self.pushes,
            requests: self.requests,
            next_id: 1,
            encoded_total: 0,
            last_read: now,
            write_stalled_since: None,
            outbox: Outbox::default(),
            ping: None,
            ping_waiters: Vec::new(),
            next_ping_id: 1,
            rtt: None,
            timer_deadline: now,
            batch_now: None,
            closing: None,
            close_waiters: Vec::new(),
            close_reason: None,
            last_load: (0, 0),
            last_housekeeping: now,
            stats: Counters::default(),
            metrics: self.metrics.unwrap_or_else(ConnectionMetrics::unpooled),
            rtt_events: self.rtt_events,
            span,
        }
    }

    /// Starts the actor in the current arbiter and returns its address.
    pub fn start(self) -> actix::Addr<Connection<T, P>> {
        self.build().start()
    }
}

impl<T: Transport, P: Protocol> Connection<T, P> {
    /// Sets up a connection over `io`, an open transport, speaking `protocol`.
    pub fn builder(io: T, protocol: P) -> ConnectionBuilder<T, P> {
        ConnectionBuilder {
            io,
            protocol,
            config: ConnectionConfig::default(),
            peer: None,
            events: None,
            pushes: None,
            requests: None,
            gauge: InFlightGauge::default(),
            id: None,
            metrics: None,
            rtt_events: true,
        }
    }

    /// This connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    fn is_finished(&self) -> bool {
        self.close_reason.is_some()
    }

    /// Whether a graceful close has nothing left to wait for.
    fn is_drained(&self) -> bool {
        self.closing.is_some()
            && self.pending.borrow().is_idle()
            && self.framed.write_buffer().is_empty()
            && self.outbox.is_empty()
    }

    /// Refuses new work once the connection is closing or closed.
    fn admit(&self) -> Result<(), CallError> {
        if let Some(reason) = &self.close_reason {
            return Err(CallError::Closed(reason.clone()));
        }
        if self.closing.is_some() {
            return Err(CallError::Closing);
        }
        Ok(())
    }

    /// Encodes `frame` into the write buffer, within `max_write_buffer`. On any error
    /// the buffer is left exactly as it was, so no partial frame is ever written.
    fn write(&mut self, frame: P::Frame) -> Result<(), CallError> {
        let limit = self.config.max_write_buffer;
        let before = self.framed.write_buffer().len();
        if before >= limit {
            return Err(CallError::Overloaded(Overload::WriteBuffer {
                buffered: before,
                limit,
            }));
        }
        if let Err(error) = Pin::new(&mut self.framed).start_send(frame) {
            self.framed.write_buffer_mut().truncate(before);
            return Err(CallError::Encode(Arc::new(error)));
        }
        let after = self.framed.write_buffer().len();
        // One frame larger than the whole cap may go alone into an empty buffer;
        // otherwise the cap is exact.
        if after > limit && before > 0 {
            self.framed.write_buffer_mut().truncate(before);
            return Err(CallError::Overloaded(Overload::WriteBuffer {
                buffered: before,
                limit,
            }));
        }
        self.encoded_total += (after - before) as u64;
        Ok(())
    }

    fn start_call(&mut self, call: Call<P>) -> Started<P> {
        if let Err(error) = self.admit() {
            return Started::Refused(error);
        }
        let timeout = call.timeout.unwrap_or(self.config.call_timeout);
        let deadline = later(self.batch_now(), timeout);
        let blocking = call.blocking || self.protocol.is_blocking(&call.request);
        let limit = self.config.max_in_flight;
        let queued = self.queued.borrow().len();
        // Behind calls already waiting, first come first served, even if room freed.
        if queued > 0 || self.pending.borrow().depth() >= limit {
            let max_waiting = self.config.max_waiting_calls;
            if queued >= max_waiting {
                self.stats.overloaded += 1;
                let overload = if max_waiting == 0 {
                    Overload::InFlight { limit }
                } else {
                    Overload::Waiting { limit: max_waiting }
                };
                return Started::Refused(CallError::Overloaded(overload));
            }
            self.timer_deadline = self.timer_deadline.min(deadline);
            return Started::Queued(
                QueuedCall {
                    request: call.request,
                    deadline,
                    timeout,
                    blocking,
                    sender: None,
                },
                self.queued.clone(),
            );
        }
        match self.write_call(call.request) {
            Ok(id) => {
                self.timer_deadline = self.timer_deadline.min(deadline);
                Started::Written(WrittenCall {
                    id,
                    deadline,
                    timeout,
                    blocking,
                    pending: self.pending.clone(),
                })
            }
            Err(error) => Started::Refused(error),
        }
    }

    /// Encodes a call's request with the next id; returns the id.
    fn write_call(&mut self, request: P::Request) -> Result<u64, CallError> {
        let id = self.next_id;
        let written = self.write(self.protocol.request(id, request));
        self.count_refusal(&written);
        written?;
        self.next_id += 1;
        self.stats.calls += 1;
        Ok(id)
    }

    /// Sends waiting calls, longest waiting first, while there is room in flight and
    /// in the write buffer.
    fn admit_queued(&mut self) {
        loop {
            if self.pending.borrow().depth() >= self.config.max_in_flight
                || self.framed.write_buffer().len() >= self.config.max_write_buffer
            {
                return;
            }
            let Some(call) = self.queued.borrow_mut().pop() else {
                return;
            };
            if call.is_abandoned() {
                // Its caller is gone: nobody wants it sent.
                continue;
            }
            let QueuedCall {
                request,
                deadline,
                timeout,
                blocking,
                sender,
            } = call;
            match self.write_call(request) {
                Ok(id) => self
                    .pending
                    .borrow_mut()
                    .insert(id, deadline, timeout, blocking, sender),
                Err(error) => {
                    // A request that would cross the write buffer's cap.
                    self.metrics.call_error(&error);
                    if let Some(sender) = sender {
                        let _ = sender.send(Err(error));
                    }
                }
            }
        }
    }

    /// The time at the start of the current mailbox batch. Actix handles a batch of
    /// messages in one go and then polls the driver, which clears this; so a burst
    /// of calls reads the clock once, and a deadline is early by at most the time the
    /// batch takes to handle.
    fn batch_now(&mut self) -> Instant {
        *self.batch_now.get_or_insert_with(Instant::now)
    }

    /// Counts a call or send refused for lack of buffer space (pings and pongs that
    /// did not fit are not refusals of anyone's work).
    fn count_refusal(&mut self, result: &Result<(), CallError>) {
        if let Err(CallError::Overloaded(_)) = result {
            self.stats.overloaded += 1;
        }
    }

    /// Enters `Closing`: new calls are refused, and the driver closes the connection
    /// once nothing is in flight, or when `after` runs out. Already closing, the
    /// earliest deadline wins: a second close may shorten the wait, never extend it.
    fn begin_close(&mut self, after: Duration) {
        let deadline = later(Instant::now(), after);
        match self.closing {
            None => {
                self.gauge.set_closing();
                self.emit(ConnectionEvent::Closing { id: self.id });
                tracing::debug!(parent: &self.span, ?after, "closing");
            }
            Some((earlier, _)) if earlier <= deadline => return,
            Some(_) => tracing::debug!(parent: &self.span, ?after, "closing sooner"),
        }
        // Calls waiting for room never reached the wire: refused as new calls are.
        let refused = self.queued.borrow_mut().fail_all(&CallError::Closing);
        self.metrics.failed_by_close(refused);
        self.closing = Some((deadline, after));
        self.timer_deadline = self.timer_deadline.min(deadline);
    }

    /// Notes how far the transport has taken the write buffer, completing sends, and
    /// whether the write side is making progress: `progressed` says the transport took
    /// bytes in this flush, `waiting` that bytes are still waiting for it.
    fn note_written(&mut self, progressed: bool, waiting: bool) {
        let written = self.encoded_total - self.framed.write_buffer().len() as u64;
        self.pending.borrow_mut().flushed(written);
        if !waiting {
            self.write_stalled_since = None;
        } else if progressed || self.write_stalled_since.is_none() {
            let now = Instant::now();
            self.write_stalled_since = Some(now);
            // The stall is judged by the timer: make sure it fires by then.
            self.timer_deadline = self
                .timer_deadline
                .min(later(now, self.config.heartbeat_timeout));
        }
    }

    fn on_frame(&mut self, frame: P::Frame, ctx: &mut Context<Self>) {
        match self.protocol.classify(frame) {
            Inbound::Reply { id, reply } => {
                let remote = reply.is_err();
                let result = reply.map_err(CallError::Remote);
                let matched = self.pending.borrow_mut().complete(id, self.next_id, result);
                match matched {
                    Matched::Delivered => {
                        self.stats.replies += 1;
                        if remote {
                            self.metrics.remote_error();
                        }
                    }
                    Matched::Late => {
                        self.stats.late_replies += 1;
                        tracing::trace!(parent: &self.span, id, "late reply dropped");
                    }
                    Matched::Heartbeat(sent_at) => self.on_pong(sent_at),
                    Matched::Unknown(id) => {
                        let problem = match self.protocol.correlation() {
                            Correlation::ById => format!("reply for id {id}, which was never sent"),
                            Correlation::InOrder => "reply with no request outstanding".to_owned(),
                        };
                        self.shutdown(CloseReason::Protocol(problem.into()), ctx);
                    }
                    Matched::Duplicate(id) => {
                        let problem = format!("second reply for id {id}");
                        self.shutdown(CloseReason::Protocol(problem.into()), ctx);
                    }
                }
            }
            Inbound::Ping { pong } => {
                // A peer that pings but does not read gets no pong once the buffer is
                // full: it is not reading them anyway, and the cap must hold.
                if self.write(pong).is_err() {
                    tracing::debug!(parent: &self.span, "pong not written: write buffer full");
                }
            }
            Inbound::Pong { .. } if self.protocol.correlation() == Correlation::InOrder => {
                // Under in-order correlation a pong is a reply in line; a protocol that
                // classifies it apart would shift every later reply onto the wrong call.
                let problem = "a pong outside the reply order of an in-order protocol";
                self.shutdown(CloseReason::Protocol(problem.into()), ctx);
            }
            Inbound::Pong { id } => match self.ping {
                Some((ping_id, sent_at)) if ping_id == id => self.on_pong(sent_at),
                _ => {
                    tracing::debug!(parent: &self.span, id, "pong for no outstanding ping ignored")
                }
            },
            Inbound::Push(push) => self.deliver_push(push),
            Inbound::Request(frame) => self.on_request(frame, ctx),
        }
    }

    /// Hands a peer's request to the request recipient, or refuses it.
    fn on_request(&mut self, frame: P::Frame, ctx: &mut Context<Self>) {
        let Some(recipient) = &self.requests else {
            let problem = "the peer sent a request to a client connection";
            self.shutdown(CloseReason::Protocol(problem.into()), ctx);
            return;
        };
        let refused = match recipient.try_send(Incoming {
            connection: self.id,
            frame,
        }) {
            Ok(()) => {
                self.stats.requests += 1;
                return;
            }
            Err(actix::prelude::SendError::Full(incoming)) => (incoming.frame, "server busy"),
            Err(actix::prelude::SendError::Closed(incoming)) => {
                (incoming.frame, "server not accepting requests")
            }
        };
        self.stats.requests_refused += 1;
        let (frame, reason) = refused;
        match self.protocol.reject(&frame, reason) {
            Some(rejection) => {
                if self.write(rejection).is_err() {
                    // A peer that floods requests and reads no answers is not served.
                    let limit = self.config.max_write_buffer;
                    let queued = self.framed.write_buffer().len();
                    self.shutdown(CloseReason::SlowConsumer { queued, limit }, ctx);
                }
            }
            None => {
                let problem = format!("request refused ({reason}) and the protocol cannot say so");
                self.shutdown(CloseReason::Protocol(problem.into()), ctx);
            }
        }
    }

    fn deliver_push(&mut self, push: P::Push) {
        let Some(recipient) = &self.pushes else {
            self.stats.pushes_dropped += 1;
            return;
        };
        match recipient.try_send(Pushed {
            connection: self.id,
            push,
        }) {
            Ok(()) => self.stats.pushes += 1,
            Err(_) => {
                self.stats.pushes_dropped += 1;
                tracing::debug!(parent: &self.span, "push dropped: recipient full or gone");
            }
        }
    }

    fn on_pong(&mut self, sent_at: Instant) {
        let now = Instant::now();
        let rtt = now - sent_at;
        self.ping = None;
        self.rtt = Some(rtt);
        self.gauge.set_rtt(rtt);
        self.timer_deadline = self
            .timer_deadline
            .min(later(now, self.config.heartbeat_interval));
        tracing::trace!(parent: &self.span, ?rtt, "heartbeat round trip");
        self.metrics.rtt(rtt);
        for waiter in self.ping_waiters.drain(..) {
            let _ = waiter.send(Ok(rtt));
        }
        if self.rtt_events {
            self.emit(ConnectionEvent::Rtt { id: self.id, rtt });
        }
    }

    fn send_ping(&mut self, now: Instant) -> Result<(), CallError> {
        let id = self.next_ping_id;
        self.write(self.protocol.ping(id))?;
        self.next_ping_id += 1;
        if self.protocol.correlation() == Correlation::InOrder {
            self.pending.borrow_mut().insert_heartbeat(now);
        }
        self.ping = Some((id, now));
        self.stats.pings_sent += 1;
        Ok(())
    }

    /// Runs when the timer fires: call timeouts, heartbeat, close timeout. Returns when
    /// to fire next, or `None` if the connection stopped.
    fn on_timer(&mut self, now: Instant, ctx: &mut Context<Self>) -> Option<Instant> {
        let (mut expired, mut next_call) = self.pending.borrow_mut().expire(now);
        let (expired_queued, next_queued) = self.queued.borrow_mut().expire(now);
        expired += expired_queued;
        if let Some(deadline) = next_queued {
            next_call = Some(next_call.map_or(deadline, |n: Instant| n.min(deadline)));
        }
        if expired > 0 {
            self.stats.timeouts += expired;
            self.metrics.timed_out(expired);
            tracing::debug!(parent: &self.span, expired, "calls timed out");
        }
        if let Some((deadline, after)) = self.closing {
            if now >= deadline {
                self.shutdown(CloseReason::CloseTimeout { after }, ctx);
                return None;
            }
        }

        // Before a ping may go into the write buffer, so that an idle connection's
        // empty buffers can be given back.
        self.housekeeping(now);

        let interval = self.config.heartbeat_interval;
        let timeout = self.config.heartbeat_timeout;
        let silent_for = now - self.last_read;
        // A blocking call outstanding: the peer may be silent on purpose, and on an
        // in-order protocol even a ping would wait behind it. The call's own timeout
        // bounds the wait; the verdict on silence resumes once none is outstanding.
        let blocked = self.pending.borrow().blocking() > 0;
        if silent_for >= timeout && !blocked {
            self.shutdown(CloseReason::HeartbeatTimeout { silent_for }, ctx);
            return None;
        }
        // A peer that keeps sending but reads nothing is not silent; it is found by
        // its write side: bytes it has not taken for as long as the heartbeat timeout.
        if let Some(since) = self.write_stalled_since {
            let stalled_for = now - since;
            if stalled_for >= timeout {
                let buffered = self.framed.write_buffer().len();
                self.shutdown(
                    CloseReason::WriteStalled {
                        stalled_for,
                        buffered,
                    },
                    ctx,
                );
                return None;
            }
        }
        // Under id correlation a ping unanswered for a whole timeout while other frames
        // kept arriving is presumed lost; the next quiet spell sends a fresh one.
        if let Some((_, sent_at)) = self.ping {
            if self.protocol.correlation() == Correlation::ById && now - sent_at >= timeout {
                self.ping = None;
                for waiter in self.ping_waiters.drain(..) {
                    let _ = waiter.send(Err(CallError::Timeout { after: timeout }));
                }
            }
        }
        let ping_waits_behind = blocked && self.protocol.correlation() == Correlation::InOrder;
        if self.ping.is_none() && silent_for >= interval && !ping_waits_behind {
            // A ping that does not fit means the peer is not reading; silence will tell.
            let _ = self.send_ping(now);
        }
        let next_heartbeat = if blocked {
            // Nothing to judge until the blocking calls end (their deadlines are in
            // `next_call`); look again in an interval, never at a deadline passed.
            later(now, interval)
        } else if self.ping.is_some() {
            later(self.last_read, timeout)
        } else if silent_for >= interval {
            // The ping did not fit: the peer is not reading. Try again in an interval,
            // and judge the silence at the timeout; never spin on a deadline passed.
            later(now, interval).min(later(self.last_read, timeout))
        } else {
            later(self.last_read, interval)
        };

        let mut next = next_heartbeat;
        if let Some(since) = self.write_stalled_since {
            next = next.min(later(since, timeout));
        }
        if let Some(deadline) = next_call {
            next = next.min(deadline);
        }
        if let Some((deadline, _)) = self.closing {
            next = next.min(deadline);
        }
        Some(next)
    }

    /// Housekeeping at heartbeat cadence: reports the load if it changed and gives
    /// back buffers grown by a burst that is over.
    fn housekeeping(&mut self, now: Instant) {
        // Timer firings follow call deadlines too; this runs at heartbeat cadence only.
        if now < later(self.last_housekeeping, self.config.heartbeat_interval) {
            return;
        }
        self.last_housekeeping = now;
        self.shrink_buffers();
        let load = (
            self.pending.borrow().waiting(),
            self.framed.write_buffer().len(),
        );
        if load != self.last_load {
            self.last_load = load;
            self.emit(ConnectionEvent::Load {
                id: self.id,
                in_flight: load.0,
                buffered_write_bytes: load.1,
            });
        }
    }

    /// Replaces an empty read or write buffer with a fresh small one, so that a
    /// connection that once carried a burst costs an idle one's memory again.
    ///
    /// Unconditionally, because a buffer's `capacity()` does not tell its allocation:
    /// bytes consumed from the front (written out, or split off as frames) leave the
    /// allocation behind them, so a buffer that carried a 1 MiB frame can report no
    /// capacity at all and still hold the megabyte. A buffer holding bytes (part of a
    /// frame) is left alone. The price is an allocation or two per connection per
    /// heartbeat interval; a busy connection grows its buffers again at once.
    fn shrink_buffers(&mut self) {
        let read = self.framed.read_buffer_mut();
        if read.is_empty() {
            *read = BytesMut::with_capacity(INITIAL_READ_BUFFER);
        }
        let write = self.framed.write_buffer_mut();
        if write.is_empty() {
            *write = BytesMut::new();
        }
    }

    fn emit(&self, event: ConnectionEvent) {
        if let Some(events) = &self.events {
            // `do_send` ignores the mailbox's capacity: events are few (one per
            // heartbeat at most, plus Connected and Closed), and `Closed` must reach a
            // live supervisor even when its mailbox is momentarily full. A supervisor
            // that is gone does not need them.
            events.do_send(event);
        }
    }

    /// Stops the connection with `reason`, once.
    fn shutdown(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        if self.finish(reason) {
            ctx.stop();
        }
    }

    /// Fails everything pending with `reason` and tells everyone who asked; returns
    /// whether this was the first reason.
    fn finish(&mut self, reason: CloseReason) -> bool {
        if self.close_reason.is_some() {
            return false;
        }
        self.gauge.set_closing();
        // Deliveries still waiting for room are lost with the connection: counted.
        self.stats.deliveries_dropped += self.outbox.clear() as u64;
        let failed = self.pending.borrow_mut().fail_all(&reason)
            + self
                .queued
                .borrow_mut()
                .fail_all(&CallError::Closed(reason.clone()));
        self.metrics.failed_by_close(failed);
        self.metrics.closed(&reason);
        match &reason {
            CloseReason::Closed | CloseReason::Aborted => {
                tracing::debug!(parent: &self.span, %reason, failed, "connection closed")
            }
            _ => tracing::info!(parent: &self.span, %reason, failed, "connection closed"),
        }
        self.close_reason = Some(reason.clone());
        for waiter in self.close_waiters.drain(..) {
            let _ = waiter.send(reason.clone());
        }
        for waiter in self.ping_waiters.drain(..) {
            let _ = waiter.send(Err(CallError::Closed(reason.clone())));
        }
        self.emit(ConnectionEvent::Closed {
            id: self.id,
            reason,
        });
        true
    }

    fn stats(&self) -> ConnectionStats {
        let c = self.stats;
        ConnectionStats {
            id: self.id,
            peer: self.peer.clone(),
            in_flight: self.pending.borrow().waiting(),
            buffered_write_bytes: self.framed.write_buffer().len(),
            rtt: self.rtt,
            closing: self.closing.is_some(),
            calls: c.calls,
            replies: c.replies,
            timeouts: c.timeouts,
            late_replies: c.late_replies,
            overloaded: c.overloaded,
            pushes: c.pushes,
            pushes_dropped: c.pushes_dropped,
            pings_sent: c.pings_sent,
            requests: c.requests,
            requests_refused: c.requests_refused,
            deliveries_dropped: c.deliveries_dropped,
            queued_deliveries: self.outbox.len(),
            queued_calls: self.queued.borrow().len(),
        }
    }
}

/// `now + after`, saturating far in the future instead of overflowing, so that a
/// caller's `Duration::MAX` means "no timeout" rather than a panic in the actor.
pub(crate) fn later(now: Instant, after: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);
    now.checked_add(after.min(FAR))
        .unwrap_or_else(|| now + Duration::from_secs(24 * 60 * 60))
}

impl<T: Transport, P: Protocol> Actor for Connection<T, P> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            // Started only as its runtime is torn down (an actor that was never polled,
            // dropped with the runtime's tasks): there is no timer or reactor to run
            // on, so it stops at once instead of panicking.
            self.finish(CloseReason::Stopped);
            ctx.stop();
            return;
        }
        // Callers hold their own `Addr` clones, each with a guaranteed slot; a
        // capacity as large as the in-flight bound keeps senders from parking (and
        // being unparked one by one) when hundreds of calls arrive at once.
        // Within what actix can count (see `MAX_MAILBOX`); `max_in_flight` itself is
        // enforced by the handler, whatever the mailbox holds.
        ctx.set_mailbox_capacity(self.config.max_in_flight.min(crate::MAX_MAILBOX));
        let now = Instant::now();
        self.last_read = now;
        self.timer_deadline = later(now, self.config.heartbeat_interval);
        ctx.spawn(Driver::new(self.timer_deadline));
        tracing::debug!(parent: &self.span, "connection started");
        self.emit(ConnectionEvent::Connected {
            id: self.id,
            peer: self.peer.clone(),
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // Stopped without a reason of its own (the arbiter or system shut down).
        self.finish(CloseReason::Stopped);
    }
}

/// The reply of a [`Call`] handler: either an error now, or a call filed in the
/// pending table, to which actix then hands the caller's reply sender.
///
/// Returning this instead of a future means a call allocates no extra channel and
/// spawns nothing: the reply goes straight from the reader to the caller.
pub struct CallReply<P: Protocol>(Started<P>);

/// What became of a call when its handler ran.
enum Started<P: Protocol> {
    /// Its request is in the write buffer.
    Written(WrittenCall<P::Reply>),
    /// It waits for room (`max_waiting_calls`), to be filed in this queue.
    Queued(QueuedCall<P>, Rc<RefCell<QueuedCalls<P>>>),
    /// It failed at once.
    Refused(CallError),
}

/// The reply of a [`SendFrame`] handler, like [`CallReply`].
pub struct SendReply<P: Protocol>(Result<WrittenSend<P::Reply>, CallError>);

/// A call whose request is in the write buffer, to be filed with its reply sender.
struct WrittenCall<R> {
    id: u64,
    deadline: Instant,
    timeout: Duration,
    blocking: bool,
    pending: Rc<RefCell<PendingCalls<R>>>,
}

/// A send whose frame is in the write buffer, done once `offset` bytes are written.
struct WrittenSend<R> {
    offset: u64,
    deadline: Instant,
    timeout: Duration,
    pending: Rc<RefCell<PendingCalls<R>>>,
}

impl<P: Protocol> fmt::Debug for CallReply<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallReply")
    }
}

impl<P: Protocol> fmt::Debug for SendReply<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendReply")
    }
}

/// Answers a refused call or send at once, if anyone is waiting.
fn refuse<T>(tx: Option<OneshotSender<Result<T, CallError>>>, error: CallError) {
    if let Some(tx) = tx {
        let _ = tx.send(Err(error));
    }
}

impl<T: Transport, P: Protocol> MessageResponse<Connection<T, P>, Call<P>> for CallReply<P> {
    fn handle(
        self,
        _: &mut Context<Connection<T, P>>,
        tx: Option<OneshotSender<Result<P::Reply, CallError>>>,
    ) {
        match self.0 {
            // Filed even without a sender (`do_send`), so that its reply is expected.
            Started::Written(call) => call.pending.borrow_mut().insert(
                call.id,
                call.deadline,
                call.timeout,
                call.blocking,
                tx,
            ),
            Started::Queued(mut call, queue) => {
                call.sender = tx;
                queue.borrow_mut().push(call);
            }
            Started::Refused(error) => refuse(tx, error),
        }
    }
}

impl<T: Transport, P: Protocol> MessageResponse<Connection<T, P>, SendFrame<P>> for SendReply<P> {
    fn handle(
        self,
        _: &mut Context<Connection<T, P>>,
        tx: Option<OneshotSender<Result<(), CallError>>>,
    ) {
        match self.0 {
            Ok(send) => {
                send.pending
                    .borrow_mut()
                    .insert_flush(send.offset, send.deadline, send.timeout, tx)
            }
            Err(error) => refuse(tx, error),
        }
    }
}

impl<T: Transport, P: Protocol> Handler<Call<P>> for Connection<T, P> {
    type Result = CallReply<P>;

    /// Encodes the request and files the call; the reply reaches the caller when the
    /// driver reads it, or an error when the call times out or the connection stops.
    fn handle(&mut self, call: Call<P>, _: &mut Context<Self>) -> CallReply<P> {
        let started = self.start_call(call);
        if let Started::Refused(error) = &started {
            self.metrics.call_error(error);
        }
        CallReply(started)
    }
}

impl<T: Transport, P: Protocol> Handler<SendFrame<P>> for Connection<T, P> {
    type Result = SendReply<P>;

    /// Encodes the frame; the sender hears back once the transport took it, or when
    /// the send's timeout runs out.
    fn handle(&mut self, send: SendFrame<P>, _: &mut Context<Self>) -> SendReply<P> {
        let result = self.admit().and_then(|()| self.write(send.frame));
        self.count_refusal(&result);
        if let Err(error) = &result {
            self.metrics.call_error(error);
        }
        let timeout = send.timeout.unwrap_or(self.config.call_timeout);
        SendReply(result.map(|()| {
            let deadline = later(self.batch_now(), timeout);
            self.timer_deadline = self.timer_deadline.min(deadline);
            WrittenSend {
                offset: self.encoded_total,
                deadline,
                timeout,
                pending: self.pending.clone(),
            }
        }))
    }
}

impl<T: Transport, P: Protocol> Handler<Deliver<P>> for Connection<T, P> {
    type Result = ();

    /// Writes the frame, or keeps it in order until the write buffer has room;
    /// drops it or closes, as it says, only past the bound on what waits.
    fn handle(&mut self, deliver: Deliver<P>, ctx: &mut Context<Self>) {
        if self.admit().is_err() {
            self.stats.deliveries_dropped += 1;
            return;
        }
        if let Some(reason) = self.deliver(deliver) {
            self.shutdown(reason, ctx);
        }
    }
}

impl<T: Transport, P: Protocol> Handler<Evict> for Connection<T, P> {
    type Result = ();

    /// Stops at once with the given reason.
    fn handle(&mut self, Evict(reason): Evict, ctx: &mut Context<Self>) {
        self.shutdown(reason, ctx);
    }
}

impl<T: Transport, P: Protocol> Handler<Close> for Connection<T, P> {
    type Result = ResponseFuture<CloseReason>;

    /// Stops taking calls and closes once the calls in flight are answered, or when
    /// the timeout runs out.
    fn handle(&mut self, close: Close, _: &mut Context<Self>) -> ResponseFuture<CloseReason> {
        if let Some(reason) = &self.close_reason {
            let reason = reason.clone();
            return Box::pin(async move { reason });
        }
        self.begin_close(close.timeout.unwrap_or(self.config.close_timeout));
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.close_waiters.push(sender);
        Box::pin(async move { receiver.await.unwrap_or(CloseReason::Stopped) })
    }
}

impl<T: Transport, P: Protocol> Handler<Abort> for Connection<T, P> {
    type Result = MessageResult<Abort>;

    /// Fails everything pending and stops at once.
    fn handle(&mut self, _: Abort, ctx: &mut Context<Self>) -> MessageResult<Abort> {
        self.shutdown(CloseReason::Aborted, ctx);
        MessageResult(self.close_reason.clone().unwrap_or(CloseReason::Aborted))
    }
}

impl<T: Transport, P: Protocol> Handler<Ping> for Connection<T, P> {
    type Result = ResponseFuture<Result<Duration, CallError>>;

    /// Sends a ping unless one is already outstanding, and resolves with the round
    /// trip of the next pong.
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        let asked = self.admit().and_then(|()| {
            // Pingers share one outstanding ping, so this bound is only reached by
            // callers that keep asking while the peer stays silent.
            let limit = self.config.max_in_flight;
            if self.ping_waiters.len() >= limit {
                return Err(CallError::Overloaded(Overload::InFlight { limit }));
            }
            if self.ping.is_none() {
                let now = self.batch_now();
                self.send_ping(now)?;
            }
            let (sender, receiver) = tokio::sync::oneshot::channel();
            self.ping_waiters.push(sender);
            Ok(receiver)
        });
        Box::pin(async move {
            match asked {
                Ok(receiver) => receiver
                    .await
                    .unwrap_or(Err(CallError::Closed(CloseReason::Stopped))),
                Err(error) => Err(error),
            }
        })
    }
}

impl<T: Transport, P: Protocol> Handler<GetStats> for Connection<T, P> {
    type Result = MessageResult<GetStats>;

    /// A snapshot of state and counters.
    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> MessageResult<GetStats> {
        MessageResult(self.stats())
    }
}
