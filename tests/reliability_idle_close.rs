//! Reliability scenario 2: the server closes connections while they sit idle in the
//! pool.
//!
//! What it proves, over real loopback TCP: the next checkout gets a healthy
//! connection, and the call on it succeeds: no error reaches the user, whether the
//! pool already heard of the close (the server's FIN was read) or not (a test on
//! checkout then catches the dead connection and the checkout moves on to a fresh
//! one). The dead connections are replaced and the pool is back to its size.
//!
//! How the fault is made: the server disconnects its idle peers itself (the
//! `Listener`'s `Disconnect`, a clean close from the server side), or a
//! `FaultProxy` between pool and server resets every open link (a TCP RST on both
//! sides, as a middlebox dropping idle flows would). For the tests that must reach
//! the test on checkout, the close must not reach the client before the checkout
//! does: the proxy blackholes what the server sends (its FIN included) while the
//! server disconnects, and heals once every stale connection has failed its test.
//! Without that, whether the pool read the close first would be a race, and the
//! test would pass the same way whichever path ran.
//!
//! ```text
//! cargo test --all-features --test reliability_idle_close
//! ```
#![cfg(feature = "testkit")]

mod broker_support;
mod reliability_support;

use std::collections::BTreeSet;
use std::time::Duration;

use broker_support::{eventually, within, Server, WAIT};
use futures::future::join_all;
use reliability_support::*;
use switchboard::protocol::frame::FrameRequest;
use switchboard::testkit::{Direction, Fault, FaultProxy, ProxyHandle};
use switchboard::{Authority, CloseReason, ConnectionId, PoolConfigBuilder};

/// Connections in the pool (`min_idle` = `max_size`).
const SIZE: usize = 2;

/// With a test on checkout, a connection idle longer than this is pinged before it is
/// handed out.
const TEST_AFTER: Duration = Duration::from_millis(20);

/// How long a test on checkout waits for its pong.
const PING_TIMEOUT: Duration = Duration::from_millis(200);

/// Checks out every connection of the pool at once, calls through each, and checks
/// that none of them is one of `dead`. Returns the ids it got.
async fn every_checkout_is_healthy(
    pool: &TcpPool,
    authority: &Authority,
    dead: &BTreeSet<ConnectionId>,
) -> BTreeSet<ConnectionId> {
    let checkouts = (0..SIZE).map(|_| pool.checkout(authority));
    let leases = within(WAIT, "checkouts", join_all(checkouts)).await;
    let mut got = BTreeSet::new();
    for (n, lease) in leases.into_iter().enumerate() {
        let lease = lease.unwrap_or_else(|error| panic!("checkout {n} after the close: {error}"));
        echo(&lease, &format!("after the close {n}")).await;
        assert!(
            !dead.contains(&lease.id()),
            "checkout {n} got closed {}",
            lease.id()
        );
        got.insert(lease.id());
    }
    got
}

#[actix::test]
async fn connections_the_server_closed_while_idle_are_replaced_and_the_next_checkout_works() {
    let (server, _) = start_echo_server(None).await;
    let authority = server.authority();
    let mut events = Events::new();
    let config = pool_config().min_idle(SIZE).max_size(SIZE);
    let pool = start_pool(&authority, config, connection_config(), &events);
    let old = wait_full(&pool, &authority, SIZE, WAIT).await;
    server.wait_open(SIZE).await;

    server_disconnects_everyone(&server).await;
    // The pool reads the server's close and counts the connections out.
    let closed = events.wait_closed(&old, WAIT).await;
    for (id, (reason, _)) in &closed {
        assert!(
            matches!(reason, CloseReason::PeerClosed | CloseReason::Io(_)),
            "{id} closed with {reason:?}"
        );
    }

    // No test on checkout here: the pool knows, so no checkout meets a dead one.
    let new = every_checkout_is_healthy(&pool, &authority, &old).await;
    let full = wait_full(&pool, &authority, SIZE, WAIT).await;
    assert_eq!(full, new);
    let status = authority_status(&pool, &authority).await;
    assert_eq!(status.checkouts.failed + status.checkouts.timed_out, 0);
    server.wait_open(SIZE).await;
    close_and_check_events(&pool, &mut events).await;
}

/// A pool of `size` behind a [`FaultProxy`], full, then left unused for `idle_for`:
/// its connections are stale for a test on checkout that `config` sets up.
struct StalePool {
    server: Server,
    proxy: ProxyHandle,
    authority: Authority,
    events: Events,
    pool: TcpPool,
    old: BTreeSet<ConnectionId>,
}

async fn stale_pool_behind_proxy(
    config: PoolConfigBuilder,
    size: usize,
    idle_for: Duration,
) -> StalePool {
    let (server, _) = start_echo_server(None).await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port).into()).unwrap();
    let authority = proxy.authority();
    let events = Events::new();
    let config = config.min_idle(size).max_size(size);
    let pool = start_pool(&authority, config, connection_config(), &events);
    let old = wait_full(&pool, &authority, size, WAIT).await;
    server.wait_open(size).await;
    tokio::time::sleep(idle_for).await;
    StalePool {
        server,
        proxy,
        authority,
        events,
        pool,
        old,
    }
}

/// The server closes every connection of a stale pool while the proxy keeps the
/// close from the client (a downstream blackhole holds the FIN), so the pool cannot
/// know: only a test on checkout can find out. The blackhole stays on; see
/// [`heal_after_failed_tests`].
async fn server_closes_unheard(stale: &StalePool) {
    stale
        .proxy
        .inject(Direction::Downstream, Fault::Blackhole)
        .await;
    server_disconnects_everyone(&stale.server).await;
}

/// Waits until `count` stale connections have failed their test on checkout, then
/// heals the proxy so that the fresh connections the checkouts moved on to answer.
/// Fresh connections carry nothing from the server before their first call, so the
/// blackhole left no hole in their streams.
async fn heal_after_failed_tests(stale: &StalePool, count: u64) {
    let (pool, authority) = (stale.pool.clone(), stale.authority.clone());
    eventually(WAIT, "the stale connections failed their tests", || {
        let (pool, authority) = (pool.clone(), authority.clone());
        async move {
            let status = authority_status(&pool, &authority).await;
            (status.checkouts.tests_failed >= count).then_some(())
        }
    })
    .await;
    stale.proxy.heal().await;
}

#[actix::test]
async fn a_checkout_after_the_server_closed_idle_connections_unheard_gets_a_healthy_one() {
    let config = pool_config()
        .health_check_timeout(PING_TIMEOUT)
        .test_on_checkout_after(Some(TEST_AFTER));
    let mut stale = stale_pool_behind_proxy(config, SIZE, TEST_AFTER * 2).await;
    server_closes_unheard(&stale).await;

    // Every checkout meets a dead connection, pings it, gives up after the ping
    // timeout and moves on to a new connection.
    let checkouts = join_all((0..SIZE).map(|_| stale.pool.checkout(&stale.authority)));
    let (leases, ()) = futures::join!(
        within(WAIT, "checkouts", checkouts),
        heal_after_failed_tests(&stale, SIZE as u64)
    );
    let mut new = BTreeSet::new();
    for (n, lease) in leases.into_iter().enumerate() {
        let lease = lease.unwrap_or_else(|error| panic!("checkout {n} after the close: {error}"));
        echo(&lease, &format!("after the close {n}")).await;
        new.insert(lease.id());
    }
    assert!(
        new.is_disjoint(&stale.old),
        "handed out a closed one: {new:?}"
    );

    let full = wait_full(&stale.pool, &stale.authority, SIZE, WAIT).await;
    assert!(full.is_disjoint(&stale.old), "{full:?}");
    stale.events.wait_closed(&stale.old, WAIT).await;
    let status = authority_status(&stale.pool, &stale.authority).await;
    assert_eq!(status.checkouts.tests_failed, SIZE as u64);
    assert_eq!(status.checkouts.failed + status.checkouts.timed_out, 0);
    stale.server.wait_open(SIZE).await;
    close_and_check_events(&stale.pool, &mut stale.events).await;
}

/// An RST reaches the client at once, so the pool may read it before the checkouts
/// come or not: either way, no checkout gets a reset connection and no error reaches
/// the user.
#[actix::test]
async fn a_checkout_just_after_idle_links_were_reset_gets_a_healthy_one() {
    let config = pool_config().test_on_checkout_after(Some(TEST_AFTER));
    let StalePool {
        server,
        proxy,
        authority,
        mut events,
        pool,
        old,
    } = stale_pool_behind_proxy(config, SIZE, TEST_AFTER * 2).await;

    // Every link reset while idle; the checkouts come at once.
    assert_eq!(proxy.reset().await, SIZE, "links reset");
    let new = every_checkout_is_healthy(&pool, &authority, &old).await;
    assert!(new.is_disjoint(&old));

    let full = wait_full(&pool, &authority, SIZE, WAIT).await;
    assert!(full.is_disjoint(&old), "{full:?}");
    let closed = events.wait_closed(&old, WAIT).await;
    for (id, (reason, _)) in &closed {
        assert!(
            matches!(reason, CloseReason::PeerClosed | CloseReason::Io(_)),
            "{id} closed with {reason:?}"
        );
    }
    let status = authority_status(&pool, &authority).await;
    assert_eq!(status.checkouts.failed + status.checkouts.timed_out, 0);
    server.wait_open(SIZE).await;
    close_and_check_events(&pool, &mut events).await;
}

/// The same for a shared (multiplexed) checkout: the pool promises that connections
/// idle past `test_on_checkout_after` are pinged before they are handed out. (Shared
/// checkouts used to skip the test and hand out the dead connection; the user's
/// first call failed with `Closed`.)
#[actix::test]
async fn a_shared_checkout_after_the_server_closed_idle_connections_unheard_gets_a_healthy_one() {
    let config = pool_config()
        .health_check_timeout(PING_TIMEOUT)
        .test_on_checkout_after(Some(TEST_AFTER));
    let mut stale = stale_pool_behind_proxy(config, SIZE, TEST_AFTER * 2).await;
    server_closes_unheard(&stale).await;

    let (shared, ()) = futures::join!(
        within(WAIT, "shared checkout", stale.pool.shared(&stale.authority)),
        heal_after_failed_tests(&stale, 1)
    );
    let shared = shared.expect("a shared connection");
    assert!(
        !stale.old.contains(&shared.id()),
        "handed out {}, which the server closed",
        shared.id()
    );
    let reply = within(
        WAIT,
        "call",
        shared.call(FrameRequest::new(payload("shared"))),
    )
    .await
    .unwrap_or_else(|error| panic!("the call on {} failed: {error:?}", shared.id()));
    assert_eq!(&reply[..], b"shared");

    wait_full(&stale.pool, &stale.authority, SIZE, WAIT).await;
    stale.events.wait_closed(&stale.old, WAIT).await;
    close_and_check_events(&stale.pool, &mut stale.events).await;
}

/// A shared checkout whose stale connection fails its ping does not get that
/// connection on its retry: it is out of the running before it is aborted.
#[actix::test]
async fn a_shared_checkout_never_gets_the_connection_that_failed_its_ping() {
    let config = pool_config()
        .health_check_timeout(Duration::from_millis(100))
        .test_on_checkout_after(Some(Duration::from_millis(300)));
    // Everything held to the end: the server and the event probe must outlive the
    // checkout.
    let StalePool {
        server: _server,
        proxy,
        authority,
        events: _events,
        pool,
        old,
    } = stale_pool_behind_proxy(config, 1, Duration::from_millis(400)).await;
    proxy.inject(Direction::Downstream, Fault::Blackhole).await;
    // The stale connection fails its ping; the checkout moves on to a new connection
    // (through the blackholed proxy, which still accepts).
    let shared = within(WAIT, "a shared checkout", pool.shared(&authority))
        .await
        .expect("a shared connection");
    assert!(
        !old.contains(&shared.id()),
        "handed out {} after it failed its ping",
        shared.id()
    );
    let status = authority_status(&pool, &authority).await;
    assert_eq!(status.checkouts.tests_failed, 1);
}
