//! Crash and bounce of the server host, in a deterministic simulation: the server's
//! process dies with calls in flight (its sockets close, as the kernel would close a
//! killed process's), stays down for a while, and comes back; or it restarts at once.
//!
//! Each call in flight ends in exactly one error, each connection reports exactly one
//! `Closed`, connects fail while the host is down, and once it is back the pool is
//! full again within its longest backoff and new calls succeed.
#![cfg(feature = "sim")]

mod sim_support;

use std::time::Duration;

use sim_support::{
    add_server, authority, connection_config, now, seed, simulation, start_pool, until_full, Calls,
    EventLog, BACKOFF_MAX, CALL_TIMEOUT, CLIENT, CONNECT_TIMEOUT, MAX_LATENCY, REFILL, SERVER,
    SIZE, WAIT,
};
use switchboard::testkit::sim::{self, Faults};
use switchboard::{CloseReason, ConnectError};

/// Calls in flight when the server goes.
const IN_FLIGHT: usize = 30;
/// How long the server host stays down.
const DOWN: Duration = Duration::from_secs(3);

/// A call ended by the server's death: the connection read end of stream, or a
/// reset (the server had unread requests when it died).
fn ended_by_the_crash(kind: &str) -> bool {
    kind == "closed:peer_closed" || kind == "closed:io"
}

#[test]
fn a_crash_fails_each_call_in_flight_once_and_the_pool_reconnects_after_bounce() -> turmoil::Result
{
    let mut sim = simulation(seed());
    add_server(&mut sim);
    let faults = Faults::new();
    let control = faults.clone();
    sim.client(CLIENT, async move {
        let (log, events) = EventLog::start();
        let pool = start_pool(connection_config(CALL_TIMEOUT), events).await;
        let before = log.until_connected(SIZE, WAIT).await;

        // The requests are on the wire when the server's process dies (at the end of
        // this simulation step).
        let calls = Calls::start(&pool, "crash", IN_FLIGHT).await;
        control.crash(SERVER);
        let crashed_at = now();
        for end in calls.all_ended(WAIT).await {
            assert!(ended_by_the_crash(&end.kind("crash")), "{end:?}");
        }
        for (id, reason, at) in log.closed_once(&before, WAIT).await {
            assert!(
                matches!(reason, CloseReason::PeerClosed | CloseReason::Io(_)),
                "{id:?}: {reason:?}"
            );
            assert!(at - crashed_at <= 2 * MAX_LATENCY, "{id:?} closed at {at:?}");
        }

        // Down: connects get no answer (the SYNs wait for a host that does not run)
        // and time out, until the authority is marked down; nothing connects.
        tokio::time::sleep(DOWN).await;
        let status = pool.status().await?;
        let group = status.authority(&authority()).expect("the authority");
        assert_eq!(group.size, 0, "{group:#?}");
        assert!(group.down, "{group:#?}");
        assert!(
            matches!(group.last_connect_error, Some(ConnectError::Timeout { after, .. }) if after == CONNECT_TIMEOUT),
            "{group:#?}"
        );
        assert_eq!(log.connected().len(), SIZE);

        // Back: reconnected within the longest backoff and a connect's round trip, full
        // a round trip later.
        control.bounce(SERVER);
        let bounced_at = now();
        let refill = until_full(&pool, REFILL + WAIT).await;
        assert!(refill <= REFILL, "pool full {refill:?} after the bounce");
        let (_, first) = log.connected_at()[SIZE];
        assert!(
            first - bounced_at <= BACKOFF_MAX + 2 * MAX_LATENCY + Duration::from_millis(10),
            "first reconnect {:?} after the bounce",
            first - bounced_at
        );
        let after = Calls::start(&pool, "after", IN_FLIGHT).await;
        for end in after.all_ended(WAIT).await {
            assert_eq!(end.kind("after"), "ok", "{end:?}");
        }

        // One `Closed` for each connection that died, none for the new ones.
        let connected = log.connected();
        assert_eq!(connected.len(), 2 * SIZE, "{connected:?}");
        log.closed_once(&before, Duration::ZERO).await;
        assert_eq!(log.closed().len(), SIZE, "{:?}", log.closed());
        Ok(())
    });
    sim::run(&mut sim, &faults)
}

#[test]
fn a_bounce_fails_each_call_in_flight_once_and_the_pool_reconnects_at_once() -> turmoil::Result {
    let mut sim = simulation(seed());
    add_server(&mut sim);
    let faults = Faults::new();
    let control = faults.clone();
    sim.client(CLIENT, async move {
        let (log, events) = EventLog::start();
        let pool = start_pool(connection_config(CALL_TIMEOUT), events).await;
        let before = log.until_connected(SIZE, WAIT).await;

        // The server's process restarts: killed, and started again at once.
        let calls = Calls::start(&pool, "bounce", IN_FLIGHT).await;
        control.bounce(SERVER);
        for end in calls.all_ended(WAIT).await {
            assert!(ended_by_the_crash(&end.kind("bounce")), "{end:?}");
        }
        let closes = log.closed_once(&before, WAIT).await;
        let last_close = closes.iter().map(|(.., at)| *at).max().expect("closes");

        until_full(&pool, REFILL + WAIT).await;
        let full_at = now();
        assert!(
            full_at - last_close <= REFILL,
            "pool full {:?} after the last close",
            full_at - last_close
        );
        let after = Calls::start(&pool, "after", IN_FLIGHT).await;
        for end in after.all_ended(WAIT).await {
            assert_eq!(end.kind("after"), "ok", "{end:?}");
        }
        assert_eq!(log.connected().len(), 2 * SIZE);
        assert_eq!(log.closed().len(), SIZE, "{:?}", log.closed());
        Ok(())
    });
    sim::run(&mut sim, &faults)
}
