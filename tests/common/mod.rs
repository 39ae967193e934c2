//! Shared set-up for the Connection integration tests: a Connection over an in-memory
//! pipe to a scripted [`MockPeer`], with probes for its events and pushes, and small
//! helpers to fire many calls and to read how a connection closed.
//!
//! Every wait is bounded: the tests run on tokio's paused clock, so a bound that runs
//! out costs no real time and fails the test with a message instead of hanging it.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use actix::{Addr, MailboxError};
use bytes::Bytes;
use futures::future::join_all;
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::testkit::{MockPeer, Probe};
use switchboard::transport::Transport;
use switchboard::{
    Call, CallError, CloseReason, Connection, ConnectionConfig, ConnectionEvent, GetStats, Pushed,
};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;

/// The connection type most tests use: the `frame` protocol over an in-memory pipe.
pub type Conn = Connection<DuplexStream, FrameProtocol>;

/// What `addr.send(Call)` resolves with.
pub type CallResult = Result<Result<Bytes, CallError>, MailboxError>;

/// The bound on every wait that should succeed at once (virtual time).
pub const WAIT: Duration = Duration::from_secs(5);

/// How the connection is named in its events and stats.
pub const PEER_NAME: &str = "mock-peer";

/// A started connection, the peer at the other end of its pipe, and probes on its
/// events and pushes.
pub struct Setup {
    pub addr: Addr<Conn>,
    pub peer: MockPeer,
    pub events: Probe<ConnectionEvent>,
    pub pushes: Probe<Pushed<FrameProtocol>>,
}

/// A connection with `config` and the default `frame` protocol; see [`connect_with`].
pub async fn connect(config: ConnectionConfig) -> Setup {
    connect_with(FrameProtocol::default(), config).await
}

/// A connection speaking `protocol` with `config` over a [`MockPeer::pair`], with event
/// and push probes. Returns once the actor has started (it answered a `GetStats`), so
/// its mailbox has its configured capacity; no event is consumed.
pub async fn connect_with(protocol: FrameProtocol, config: ConnectionConfig) -> Setup {
    let (io, peer) = MockPeer::pair();
    let events = Probe::<ConnectionEvent>::start();
    let pushes = Probe::<Pushed<FrameProtocol>>::start();
    let addr = Connection::builder(io, protocol)
        .config(config)
        .peer(PEER_NAME)
        .events(events.recipient())
        .pushes(pushes.recipient())
        .start();
    addr.send(GetStats).await.expect("connection started");
    Setup {
        addr,
        peer,
        events,
        pushes,
    }
}

/// A connection over any transport `io` with an events probe and no push recipient.
pub async fn start_on<T: Transport>(
    io: T,
    config: ConnectionConfig,
    events: &Probe<ConnectionEvent>,
) -> Addr<Connection<T, FrameProtocol>> {
    let addr = Connection::builder(io, FrameProtocol::default())
        .config(config)
        .peer(PEER_NAME)
        .events(events.recipient())
        .start();
    addr.send(GetStats).await.expect("connection started");
    addr
}

/// A call carrying `payload`, with the connection's default timeout.
pub fn call(payload: impl Into<Bytes>) -> Call<FrameProtocol> {
    Call::new(FrameRequest::new(payload))
}

/// The payload of call number `i` in tests that send many.
pub fn numbered(i: usize) -> Bytes {
    Bytes::from(format!("call-{i}"))
}

/// Sends one call per payload, in order, from the current task (each is in the
/// connection's mailbox when this returns), and collects every result, in the same
/// order, in a spawned task.
pub fn spawn_calls<T: Transport>(
    addr: &Addr<Connection<T, FrameProtocol>>,
    payloads: impl IntoIterator<Item = Bytes>,
) -> JoinHandle<Vec<CallResult>> {
    let requests: Vec<_> = payloads.into_iter().map(|p| addr.send(call(p))).collect();
    actix_rt::spawn(join_all(requests))
}

/// Awaits a spawned task within [`WAIT`].
///
/// # Panics
/// If the task does not finish in time (a call that never resolved) or panicked.
pub async fn finish<T>(task: JoinHandle<T>) -> T {
    tokio::time::timeout(WAIT, task)
        .await
        .expect("every call resolves")
        .expect("the task does not panic")
}

/// The next `Closed` event (other events before it are skipped).
pub async fn next_closed(events: &mut Probe<ConnectionEvent>) -> CloseReason {
    let event = events
        .within(WAIT, |event| {
            matches!(event, ConnectionEvent::Closed { .. })
        })
        .await;
    match event {
        ConnectionEvent::Closed { reason, .. } => reason,
        _ => unreachable!("matched as Closed above"),
    }
}

/// The `Closed` event, asserting that nothing follows it: a connection closes once.
pub async fn closed_exactly_once(events: &mut Probe<ConnectionEvent>) -> CloseReason {
    let reason = next_closed(events).await;
    assert_no_more_events(events).await;
    reason
}

/// Asserts that the connection sends no further event (a second `Closed` above all).
pub async fn assert_no_more_events(events: &mut Probe<ConnectionEvent>) {
    events.expect_none(Duration::from_secs(1)).await;
}

/// Asserts that no `Closed` event has been received so far.
pub fn assert_not_closed(events: &mut Probe<ConnectionEvent>) {
    for event in events.drain() {
        assert!(
            !matches!(event, ConnectionEvent::Closed { .. }),
            "the connection closed: {event:?}"
        );
    }
}

/// The reason a call failed with `CallError::Closed`, if it did.
pub fn closed_reason(result: &CallResult) -> Option<&CloseReason> {
    match result {
        Ok(Err(CallError::Closed(reason))) => Some(reason),
        _ => None,
    }
}

/// The successful reply of a call.
///
/// # Panics
/// If the call failed.
pub fn reply_of(result: CallResult) -> Bytes {
    match result {
        Ok(Ok(reply)) => reply,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// Fails the test if `future` has not finished after `limit` of *wall-clock* time.
///
/// A connection that busy-loops keeps the runtime from ever idling, so tokio's paused
/// clock never advances and no virtual timeout can fire: the test would hang instead of
/// failing. This bound turns that hang into a failure that says so. A passing test pays
/// nothing: this returns as soon as `future` does.
pub async fn within_real_time<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    let (tripped, guard) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        let _ = tripped.send(());
    });
    tokio::select! {
        biased;
        output = future => output,
        _ = guard => panic!(
            "{what}: not done after {limit:?} of real time; virtual time stopped \
             advancing, so something keeps the runtime busy (a busy loop?)"
        ),
    }
}
