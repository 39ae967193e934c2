//! Reliability scenario 9 (issue 5): the server reads slowly or not at all.
//!
//! What a user of the Pool can rely on, proved end to end through pooled connections:
//! - the client's memory for the connection stays under its configured caps: sampled
//!   after every call, `ConnectionStats::buffered_write_bytes` never exceeds
//!   `max_write_buffer` and `in_flight` never exceeds `max_in_flight` (nor does the
//!   pool's per-connection `in_flight`);
//! - past a cap, callers get `CallError::Overloaded` at once, typed by the cap they
//!   hit (`Overload::WriteBuffer` or `Overload::InFlight`), and nothing is sent for
//!   them; the connection stays open (no `Closed` event, nothing replaced);
//! - when the server reads again, every accepted call gets its own reply and new
//!   calls flow on the same connection.
//!
//! How the fault is made: in memory (virtual time), an echo server that stops
//! reading its socket, so the 64 KiB pipe and then the client's write buffer fill;
//! over real loopback TCP, a `FaultProxy` between the pool and an echo server with a
//! tiny `Fault::Bandwidth` upstream (the proxy's queue and the kernel's socket buffers
//! fill, then the client's write buffer), or a `Fault::Blackhole` upstream (requests
//! vanish, so calls stay in flight until `max_in_flight`).
//!
//! ```text
//! cargo test --all-features --test reliability_slow_reader
//! ```
#![cfg(feature = "testkit")]

mod reliability_common;

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use actix::Addr;
use bytes::Bytes;
use futures::Future;
use reliability_common::*;
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::testkit::{Direction, Fault, FaultProxy, Probe};
use switchboard::transport::{Connector, MemoryNetwork, TcpConnector, Transport};
use switchboard::{
    Authority, Call, CallError, Connection, ConnectionConfig, ConnectionEvent, Overload, Pool,
    PoolHandle,
};

/// A call's reply, as `Addr::send` resolves it.
type Reply = Result<Result<Bytes, CallError>, actix::MailboxError>;

/// A call the connection accepted, still waiting for its reply, and its number.
type Accepted = (usize, Pin<Box<dyn Future<Output = Reply>>>);

/// Builds a pool of one connection to `authority` with `connection` settings, its
/// events on `events`.
async fn one_connection_pool<C: Connector>(
    connector: C,
    authority: &Authority,
    connection: ConnectionConfig,
    events: &Probe<ConnectionEvent>,
    bound: Duration,
) -> PoolHandle<C, FrameProtocol> {
    let pool = Pool::builder(connector, FrameProtocol::default())
        .config(pool_config().min_idle(1).max_size(1).build().unwrap())
        .connection(connection)
        .authority(authority.clone())
        .events(events.recipient())
        .build();
    within(bound, "eager build", pool).await.unwrap()
}

/// Asserts the connection's and the pool's figures are within the caps.
async fn assert_within_caps<C: Connector>(
    pool: &PoolHandle<C, FrameProtocol>,
    addr: &Addr<Connection<C::Io, FrameProtocol>>,
    max_write_buffer: usize,
    max_in_flight: usize,
) -> switchboard::ConnectionStats
where
    C::Io: Transport,
{
    let stats = stats_of(addr).await;
    assert!(
        stats.buffered_write_bytes <= max_write_buffer,
        "{} bytes buffered, cap {max_write_buffer}",
        stats.buffered_write_bytes
    );
    assert!(
        stats.in_flight <= max_in_flight,
        "{} calls in flight, cap {max_in_flight}",
        stats.in_flight
    );
    let status = pool.status().await.unwrap();
    for member in status.authorities.iter().flat_map(|a| &a.connections) {
        assert!(member.in_flight <= max_in_flight, "{member:?}");
    }
    stats
}

/// Calls one at a time, each with a distinct payload of `size` bytes, checking the
/// caps after each, until one is refused (at most `limit` calls). Returns the accepted
/// calls, still pending, and the refusal.
async fn call_until_refused<C: Connector>(
    pool: &PoolHandle<C, FrameProtocol>,
    addr: &Addr<Connection<C::Io, FrameProtocol>>,
    (size, limit): (usize, usize),
    (max_write_buffer, max_in_flight): (usize, usize),
) -> (Vec<Accepted>, CallError)
where
    C::Io: Transport,
{
    let mut accepted: Vec<Accepted> = Vec::new();
    for n in 0..limit {
        let mut call: Pin<Box<dyn Future<Output = Reply>>> =
            Box::pin(addr.send(Call::new(FrameRequest::new(payload(n, size)))));
        // The connection handles messages in order: once it answers this, the call
        // was either filed or refused.
        assert_within_caps(pool, addr, max_write_buffer, max_in_flight).await;
        match futures::poll!(call.as_mut()) {
            Poll::Ready(Ok(Err(refusal))) => return (accepted, refusal),
            Poll::Ready(other) => panic!("call {n} ended early: {other:?}"),
            Poll::Pending => accepted.push((n, call)),
        }
    }
    panic!("no call refused among {limit}")
}

/// Waits for every accepted call and checks each got its own payload back.
async fn assert_all_answered(accepted: Vec<Accepted>, size: usize, bound: Duration) {
    let answered = accepted.into_iter().map(|(n, call)| async move {
        let reply = call
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("call {n}: {e}"));
        assert!(reply == payload(n, size), "call {n} got another's reply");
    });
    within(
        bound,
        "every accepted call is answered",
        futures::future::join_all(answered),
    )
    .await;
}

#[actix::test]
async fn a_server_that_stops_reading_fills_the_write_buffer_to_its_cap_and_no_further() {
    tokio::time::pause();
    const CAP: usize = 16 * 1024;
    const MAX_IN_FLIGHT: usize = 512;
    const SIZE: usize = 1024;
    let network = MemoryNetwork::new();
    let server = EchoServer::new();
    let a = server.listen_memory(&network, "slow-reader");
    let mut events = Probe::<ConnectionEvent>::start();
    let connection = quiet_connection()
        .max_write_buffer(CAP)
        .max_in_flight(MAX_IN_FLIGHT)
        .call_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let pool = one_connection_pool(network.connector(), &a, connection, &events, WAIT).await;
    let lease = pool.checkout(&a).await.unwrap();
    let reply = within(WAIT, "call", lease.call(FrameRequest::new("warm"))).await;
    assert_eq!(reply.unwrap(), Bytes::from_static(b"warm"));

    server.stop_reading();
    let (accepted, refusal) =
        call_until_refused(&pool, lease.addr(), (SIZE, 1000), (CAP, MAX_IN_FLIGHT)).await;
    match refusal {
        CallError::Overloaded(Overload::WriteBuffer { buffered, limit }) => {
            assert_eq!(limit, CAP);
            assert!(buffered <= CAP);
        }
        other => panic!("expected a WriteBuffer overload, got {other:?}"),
    }
    // More than the pipe holds was accepted, and the rest waits in the capped buffer.
    assert!(
        accepted.len() * SIZE > 64 * 1024,
        "{} accepted",
        accepted.len()
    );

    // Further calls are refused at once, and time changes nothing: no growth, no close.
    for n in 0..20 {
        let refused = within(
            WAIT,
            "refused at once",
            lease.call(FrameRequest::new(payload(n, SIZE))),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                refused,
                CallError::Overloaded(Overload::WriteBuffer { limit: CAP, .. })
            ),
            "{refused:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let stats = assert_within_caps(&pool, lease.addr(), CAP, MAX_IN_FLIGHT).await;
    assert_eq!(stats.overloaded, 21);
    assert_eq!(stats.in_flight, accepted.len());
    assert_no_close(&mut events);

    // The server reads again: every accepted call gets its own reply, calls flow.
    server.resume_reading();
    assert_all_answered(accepted, SIZE, WAIT).await;
    let reply = within(WAIT, "call", lease.call(FrameRequest::new("after"))).await;
    assert_eq!(reply.unwrap(), Bytes::from_static(b"after"));
    let stats = assert_within_caps(&pool, lease.addr(), CAP, MAX_IN_FLIGHT).await;
    assert_eq!((stats.buffered_write_bytes, stats.in_flight), (0, 0));
    drop(lease);
    assert_no_close(&mut events);
    let status = pool.status().await.unwrap();
    assert_eq!(status.counters.created, 1, "nothing replaced");
    within(WAIT, "close", pool.close()).await;
}

#[actix::test]
async fn of_many_concurrent_callers_on_a_stalled_server_only_max_in_flight_are_accepted() {
    tokio::time::pause();
    const MAX_IN_FLIGHT: usize = 8;
    const CALLERS: usize = 50;
    let network = MemoryNetwork::new();
    let server = EchoServer::new();
    let a = server.listen_memory(&network, "stalled");
    let mut events = Probe::<ConnectionEvent>::start();
    let connection = quiet_connection()
        .max_in_flight(MAX_IN_FLIGHT)
        .call_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let pool = one_connection_pool(network.connector(), &a, connection, &events, WAIT).await;
    let shared = pool.shared(&a).await.unwrap();
    server.stop_reading();

    // Independent callers multiplexed on the shared connection, all at once.
    let callers: Vec<_> = (0..CALLERS)
        .map(|n| {
            let shared = shared.clone();
            actix::spawn(async move { (n, shared.call(FrameRequest::new(payload(n, 64))).await) })
        })
        .collect();
    let stats = eventually(WAIT, "every call handled", || async {
        let stats = stats_of(shared.addr()).await;
        (stats.calls as usize + stats.overloaded as usize == CALLERS).then_some(stats)
    })
    .await;
    assert_eq!(stats.in_flight, MAX_IN_FLIGHT);
    assert_eq!(stats.overloaded as usize, CALLERS - MAX_IN_FLIGHT);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_within_caps(&pool, shared.addr(), usize::MAX, MAX_IN_FLIGHT).await;
    assert_no_close(&mut events);

    server.resume_reading();
    let (mut answered, mut refused) = (0, 0);
    for caller in callers {
        let (n, result) = within(WAIT, "every caller hears", caller).await.unwrap();
        match result {
            Ok(reply) => {
                assert_eq!(reply, payload(n, 64), "caller {n} got another's reply");
                answered += 1;
            }
            Err(CallError::Overloaded(Overload::InFlight { limit })) => {
                assert_eq!(limit, MAX_IN_FLIGHT);
                refused += 1;
            }
            Err(other) => panic!("caller {n}: {other:?}"),
        }
    }
    assert_eq!(
        (answered, refused),
        (MAX_IN_FLIGHT, CALLERS - MAX_IN_FLIGHT)
    );
    let reply = within(WAIT, "call", shared.call(FrameRequest::new("after"))).await;
    assert_eq!(reply.unwrap(), Bytes::from_static(b"after"));
    assert_no_close(&mut events);
    within(WAIT, "close", pool.close()).await;
}

/// Real TCP: a bandwidth-starved link to the server. The proxy's queue and the
/// kernel's buffers soak up megabytes first; then the client's write buffer fills to
/// its cap and no further.
#[actix::test]
async fn a_bandwidth_starved_link_fills_the_write_buffer_to_its_cap_then_recovers() {
    const CAP: usize = 256 * 1024;
    const MAX_IN_FLIGHT: usize = 4096;
    const SIZE: usize = 64 * 1024;
    let server = EchoServer::new();
    let proxy = FaultProxy::start(server.listen_tcp().await).unwrap();
    let a = proxy.authority();
    let mut events = Probe::<ConnectionEvent>::start();
    let connection = quiet_connection()
        .max_write_buffer(CAP)
        .max_in_flight(MAX_IN_FLIGHT)
        .call_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let pool = one_connection_pool(TcpConnector::new(), &a, connection, &events, REAL_WAIT).await;
    let lease = pool.checkout(&a).await.unwrap();
    let reply = within(REAL_WAIT, "call", lease.call(FrameRequest::new("warm"))).await;
    assert_eq!(reply.unwrap(), Bytes::from_static(b"warm"));

    proxy
        .inject(Direction::Upstream, Fault::Bandwidth(16 * 1024))
        .await;
    let (accepted, refusal) =
        call_until_refused(&pool, lease.addr(), (SIZE, 2000), (CAP, MAX_IN_FLIGHT)).await;
    match refusal {
        CallError::Overloaded(Overload::WriteBuffer { buffered, limit }) => {
            assert_eq!(limit, CAP);
            assert!(buffered <= CAP);
        }
        other => panic!("expected a WriteBuffer overload, got {other:?}"),
    }
    // Twice the size of the calls that filled it: the link frees about 16 KiB a
    // second, so these stay refused for seconds, however the drain steps fall.
    for n in 0..5 {
        let refused = within(
            REAL_WAIT,
            "refused at once",
            lease.call(FrameRequest::new(payload(n, 2 * SIZE))),
        )
        .await
        .unwrap_err();
        assert!(matches!(refused, CallError::Overloaded(_)), "{refused:?}");
    }
    let stats = assert_within_caps(&pool, lease.addr(), CAP, MAX_IN_FLIGHT).await;
    assert!(stats.overloaded >= 6);
    assert_no_close(&mut events);

    // The link recovers: everything accepted is delivered and answered, in full.
    proxy.heal().await;
    assert_all_answered(accepted, SIZE, Duration::from_secs(30)).await;
    let reply = within(REAL_WAIT, "call", lease.call(FrameRequest::new("after"))).await;
    assert_eq!(reply.unwrap(), Bytes::from_static(b"after"));
    let stats = assert_within_caps(&pool, lease.addr(), CAP, MAX_IN_FLIGHT).await;
    assert_eq!((stats.buffered_write_bytes, stats.in_flight), (0, 0));
    drop(lease);
    assert_no_close(&mut events);
    within(REAL_WAIT, "close", pool.close()).await;
    proxy.stop().await;
}

/// Real TCP: requests vanish on the way (a blackholed upstream), so calls stay in
/// flight until `max_in_flight`; later callers are refused, not queued.
#[actix::test]
async fn a_blackholed_upstream_holds_calls_in_flight_up_to_the_cap_then_recovers() {
    const MAX_IN_FLIGHT: usize = 16;
    // Long enough that every call is handled before the first ones time out and free
    // their slots, even on a busy machine.
    let call_timeout = Duration::from_secs(3);
    let server = EchoServer::new();
    let proxy = FaultProxy::start(server.listen_tcp().await).unwrap();
    let a = proxy.authority();
    let mut events = Probe::<ConnectionEvent>::start();
    let connection = quiet_connection()
        .max_in_flight(MAX_IN_FLIGHT)
        .call_timeout(call_timeout)
        .build()
        .unwrap();
    let pool = one_connection_pool(TcpConnector::new(), &a, connection, &events, REAL_WAIT).await;
    let shared = pool.shared(&a).await.unwrap();
    let reply = within(REAL_WAIT, "call", shared.call(FrameRequest::new("warm"))).await;
    assert_eq!(reply.unwrap(), Bytes::from_static(b"warm"));

    proxy.inject(Direction::Upstream, Fault::Blackhole).await;
    let callers: Vec<_> = (0..MAX_IN_FLIGHT * 3)
        .map(|n| {
            let shared = shared.clone();
            actix::spawn(async move { shared.call(FrameRequest::new(payload(n, 64))).await })
        })
        .collect();
    // Once every call was handled: the cap's worth in flight, the rest refused.
    let stats = eventually(REAL_WAIT, "every call handled", || async {
        let stats = stats_of(shared.addr()).await;
        (stats.calls + stats.overloaded == 1 + 3 * MAX_IN_FLIGHT as u64).then_some(stats)
    })
    .await;
    assert_eq!(stats.calls, 1 + MAX_IN_FLIGHT as u64);
    assert_within_caps(&pool, shared.addr(), usize::MAX, MAX_IN_FLIGHT).await;
    let mut results = Vec::new();
    for caller in callers {
        results.push(
            within(REAL_WAIT, "every caller hears", caller)
                .await
                .unwrap(),
        );
    }
    let refused = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(CallError::Overloaded(Overload::InFlight {
                    limit: MAX_IN_FLIGHT
                }))
            )
        })
        .count();
    let timed_out = results
        .iter()
        .filter(|r| matches!(r, Err(CallError::Timeout { after }) if *after == call_timeout))
        .count();
    assert_eq!(
        (timed_out, refused),
        (MAX_IN_FLIGHT, 2 * MAX_IN_FLIGHT),
        "{results:?}"
    );
    let stats = assert_within_caps(&pool, shared.addr(), usize::MAX, MAX_IN_FLIGHT).await;
    assert_eq!(
        stats.in_flight, 0,
        "timed-out calls leave nothing in flight"
    );
    assert!(proxy.stats().await.dropped > 0);
    assert_no_close(&mut events);

    proxy.heal().await;
    let reply = within(REAL_WAIT, "call", shared.call(FrameRequest::new("after"))).await;
    assert_eq!(reply.unwrap(), Bytes::from_static(b"after"));
    let status = pool.status().await.unwrap();
    assert!(status.counters.closed.is_empty(), "{status:#?}");
    within(REAL_WAIT, "close", pool.close()).await;
    proxy.stop().await;
}
