//! Hold and release, in a deterministic simulation: the link between the client and
//! the server holds every message, both ways, then delivers them in order when
//! released, as a stalled route would.
//!
//! Held for longer than the call timeout but shorter than the heartbeat timeout, the
//! calls made meanwhile time out, their replies arrive after release and are dropped
//! (never handed to a later call), and the connections survive. Held for less than
//! the call timeout, the calls simply succeed once the link is released.
#![cfg(feature = "sim")]

mod sim_support;

use std::collections::BTreeMap;
use std::time::Duration;

use sim_support::{
    add_server, authority, connection_config, now, seed, simulation, start_pool, Calls, EventLog,
    SimPool, CLIENT, HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, SERVER, SIZE, WAIT,
};
use switchboard::{CallError, ConnectionStats, GetStats, Spread};

/// Calls made while the link holds.
const HELD_CALLS: usize = 30;

/// The stats of every pooled connection.
async fn connection_stats(pool: &SimPool) -> Vec<ConnectionStats> {
    // Picks at random until each connection was picked once; the pool's connections
    // are all in shared use, so none can be checked out exclusively.
    let mut connections = BTreeMap::new();
    for _ in 0..1000 {
        let connection = pool
            .shared_by(&authority(), Spread::TwoChoices, Some(WAIT))
            .await
            .expect("a connection");
        connections.insert(connection.id(), connection);
        if connections.len() == SIZE {
            break;
        }
    }
    assert_eq!(connections.len(), SIZE, "every connection picked");
    let mut stats = Vec::new();
    for connection in connections.values() {
        stats.push(
            connection
                .addr()
                .send(GetStats)
                .await
                .expect("connection alive"),
        );
    }
    stats
}

#[test]
fn calls_held_past_their_timeout_time_out_and_their_late_replies_reach_no_other_call(
) -> turmoil::Result {
    const CALL_TIMEOUT: Duration = Duration::from_millis(500);
    const HOLD: Duration = Duration::from_millis(1500);
    assert!(CALL_TIMEOUT < HOLD && HOLD + HEARTBEAT_INTERVAL < HEARTBEAT_TIMEOUT);

    let mut sim = simulation(seed());
    add_server(&mut sim);
    sim.client(CLIENT, async {
        let (log, events) = EventLog::start();
        let pool = start_pool(connection_config(CALL_TIMEOUT), events).await;
        let connected = log.until_connected(SIZE, WAIT).await;
        let warm = Calls::start(&pool, "warm", HELD_CALLS).await;
        for end in warm.all_ended(WAIT).await {
            assert_eq!(end.kind("warm"), "ok", "{end:?}");
        }

        turmoil::hold(CLIENT, SERVER);
        let held_at = now();
        let held = Calls::start(&pool, "held", HELD_CALLS).await;
        for end in held.all_ended(CALL_TIMEOUT + WAIT).await {
            assert!(
                matches!(end.outcome, Err(CallError::Timeout { after }) if after == CALL_TIMEOUT),
                "{end:?}"
            );
            let waited = end.at - held_at;
            assert!(
                waited >= CALL_TIMEOUT && waited < HOLD,
                "timed out {waited:?} into the hold: {end:?}"
            );
        }

        // Released: the held requests reach the server and their replies come back,
        // interleaved with those of new calls made at once. Each new call gets its
        // own reply; the late ones are counted and dropped.
        tokio::time::sleep(HOLD.saturating_sub(now() - held_at)).await;
        turmoil::release(CLIENT, SERVER);
        let after = Calls::start(&pool, "after", HELD_CALLS).await;
        for end in after.all_ended(WAIT).await {
            assert_eq!(end.kind("after"), "ok", "{end:?}");
        }
        let mut late = 0;
        let mut timeouts = 0;
        let mut stats = connection_stats(&pool).await;
        // The last late reply may still be on its way when the new calls are done.
        let deadline = tokio::time::Instant::now() + WAIT;
        while stats.iter().map(|one| one.late_replies).sum::<u64>() < HELD_CALLS as u64
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
            stats = connection_stats(&pool).await;
        }
        for one in &stats {
            late += one.late_replies;
            timeouts += one.timeouts;
        }
        assert_eq!(timeouts, HELD_CALLS as u64, "{stats:#?}");
        assert_eq!(
            late, HELD_CALLS as u64,
            "every late reply dropped: {stats:#?}"
        );

        // The hold was shorter than the heartbeat timeout: no connection closed.
        assert!(log.closed().is_empty(), "{:?}", log.closed());
        assert_eq!(log.connected(), connected);
        Ok(())
    });
    sim.run()
}

#[test]
fn calls_held_for_less_than_their_timeout_succeed_after_release() -> turmoil::Result {
    const CALL_TIMEOUT: Duration = Duration::from_secs(2);
    const HOLD: Duration = Duration::from_millis(800);
    assert!(HOLD < CALL_TIMEOUT && HOLD < HEARTBEAT_TIMEOUT);

    let mut sim = simulation(seed());
    add_server(&mut sim);
    sim.client(CLIENT, async {
        let (log, events) = EventLog::start();
        let pool = start_pool(connection_config(CALL_TIMEOUT), events).await;
        let connected = log.until_connected(SIZE, WAIT).await;

        turmoil::hold(CLIENT, SERVER);
        let held = Calls::start(&pool, "held", HELD_CALLS).await;
        tokio::time::sleep(HOLD).await;
        assert!(!held.any_ended(), "{:?}", held.ended());
        turmoil::release(CLIENT, SERVER);
        let released_at = now();
        for end in held.all_ended(WAIT).await {
            assert_eq!(end.kind("held"), "ok", "{end:?}");
            assert!(end.at > released_at, "{end:?}");
        }

        assert!(log.closed().is_empty(), "{:?}", log.closed());
        assert_eq!(log.connected(), connected);
        let stats = connection_stats(&pool).await;
        assert!(
            stats
                .iter()
                .all(|one| one.timeouts == 0 && one.late_replies == 0),
            "{stats:#?}"
        );
        Ok(())
    });
    sim.run()
}
