//! Partition, in a deterministic simulation: the link between the client and the
//! server is cut while calls are in flight. Nothing tells either end (turmoil drops
//! the segments, as a dead router would), so the link is half-open: the heartbeat
//! finds it within `heartbeat_interval + heartbeat_timeout`, every pending call ends
//! in exactly one error, each connection closes exactly once, connects fail while
//! the partition lasts, and after `repair` the pool is full again within its longest
//! backoff and new calls succeed.
#![cfg(feature = "sim")]

mod sim_support;

use std::io;
use std::time::Duration;

use sim_support::{
    add_server, authority, connection_config, now, seed, simulation, start_pool, until_full, Calls,
    EventLog, CALL_TIMEOUT, CLIENT, HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, REFILL, SERVER, SIZE,
    WAIT,
};
use switchboard::{CloseReason, ConnectError};

/// Calls in flight when the link is cut.
const IN_FLIGHT: usize = 30;
/// How long the partition lasts after the heartbeat found it.
const PARTITIONED: Duration = Duration::from_secs(2);

#[test]
fn a_partition_fails_each_pending_call_once_and_the_pool_refills_after_repair() -> turmoil::Result {
    let mut sim = simulation(seed());
    add_server(&mut sim);
    sim.client(CLIENT, async {
        let (log, events) = EventLog::start();
        let pool = start_pool(connection_config(CALL_TIMEOUT), events).await;
        let before = log.until_connected(SIZE, WAIT).await;
        let warm = Calls::start(&pool, "warm", IN_FLIGHT).await;
        for end in warm.all_ended(WAIT).await {
            assert_eq!(end.kind("warm"), "ok", "{end:?}");
        }

        // The calls are written (each connection holds its share), then the link is
        // cut before any answer could be back: a round trip takes two latencies.
        let calls = Calls::start(&pool, "cut", IN_FLIGHT).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let status = pool.status().await?;
        let group = status.authority(&authority()).expect("the authority");
        assert!(
            group.connections.iter().all(|member| member.in_flight > 0),
            "calls in flight on every connection: {group:#?}"
        );
        assert!(!calls.any_ended(), "{:?}", calls.ended());
        turmoil::partition(CLIENT, SERVER);
        let cut_at = now();

        // Found by the heartbeat, within its bounds: each connection closes once, and
        // each call ends once, with that reason.
        let bound = HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT;
        let closes = log.closed_once(&before, bound).await;
        for (id, reason, at) in &closes {
            assert!(
                matches!(reason, CloseReason::HeartbeatTimeout { .. }),
                "{id:?} closed by the heartbeat: {reason:?}"
            );
            let after = *at - cut_at;
            assert!(
                after >= HEARTBEAT_TIMEOUT - HEARTBEAT_INTERVAL && after <= bound,
                "{id:?} closed {after:?} after the cut"
            );
        }
        for end in calls.all_ended(Duration::ZERO).await {
            assert_eq!(end.kind("cut"), "closed:heartbeat_timeout", "{end:?}");
            assert!(end.at - cut_at <= bound, "{end:?}");
        }

        // While the partition lasts, connects are refused (the SYN is dropped) and
        // the pool stays empty.
        tokio::time::sleep(PARTITIONED).await;
        let status = pool.status().await?;
        let group = status.authority(&authority()).expect("the authority");
        assert_eq!(group.size, 0, "{group:#?}");
        assert!(
            matches!(
                &group.last_connect_error,
                Some(ConnectError::Io { source, .. }) if source.kind() == io::ErrorKind::ConnectionRefused
            ),
            "{group:#?}"
        );
        assert_eq!(log.connected().len(), SIZE, "no connect got through");

        // Repaired: full again within the longest backoff and a few round trips, and
        // the new connections answer.
        turmoil::repair(CLIENT, SERVER);
        let refill = until_full(&pool, REFILL + WAIT).await;
        assert!(refill <= REFILL, "pool full {refill:?} after the repair");
        let after = Calls::start(&pool, "after", IN_FLIGHT).await;
        for end in after.all_ended(WAIT).await {
            assert_eq!(end.kind("after"), "ok", "{end:?}");
        }
        let connected = log.connected();
        assert_eq!(connected.len(), 2 * SIZE, "{connected:?}");
        assert_eq!(log.closed().len(), SIZE, "only the cut connections closed");
        Ok(())
    });
    sim.run()
}
