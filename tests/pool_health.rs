//! Health: idle connections above `min_idle` are reaped, old ones are replaced, silent
//! ones are found (at checkout and by periodic checks) and replaced; through all of
//! it the pool keeps `min_idle` connections a checkout can use.

mod pool_support;

use std::time::Duration;

use pool_support::*;
use tokio::time::Instant;

#[actix::test]
async fn idle_timeout_reaps_surplus_but_never_below_min_idle() {
    tokio::time::pause();
    let idle_timeout = Duration::from_secs(10);
    let config = config()
        .min_idle(2)
        .max_size(5)
        .idle_timeout(Some(idle_timeout))
        .maintenance_interval(Duration::from_secs(1));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();

    // Five borrowers at once grow the pool to five.
    let mut leases = Vec::new();
    for _ in 0..5 {
        leases.push(within(WAIT, "checkout", pool.checkout(&a)).await.unwrap());
    }
    for (n, lease) in leases.iter().enumerate() {
        echo(lease, &format!("call {n}")).await;
    }
    let grown = status(&pool).await;
    assert_eq!(only(&grown).size, 5);
    assert_eq!(only(&grown).leased, 5);
    let original = ids(only(&grown));
    drop(leases);
    let returned_at = Instant::now();

    // Short of the idle timeout nothing goes.
    tokio::time::sleep(idle_timeout - Duration::from_secs(1)).await;
    let before = status(&pool).await;
    assert_eq!(only(&before).idle, 5, "{before:#?}");
    assert_eq!(before.counters.idle_expired, 0);

    // Past it (plus one maintenance round) the surplus goes, and at no sampled moment
    // are fewer than min_idle connections idle.
    let reaped = until(&pool, Duration::from_secs(3), |s| {
        assert!(s.idle >= 2, "fell below min_idle while reaping: {s:#?}");
        assert_consistent(s);
        s.size == 2 && s.busy == 0
    })
    .await;
    assert!(returned_at.elapsed() >= idle_timeout);
    assert_eq!(reaped.counters.idle_expired, 3);
    assert_eq!(reaped.counters.closed.get("closed"), Some(&3));
    let kept = ids(only(&reaped));
    assert!(kept.is_subset(&original), "the kept ones are old ones");
    until_server_open(&server, 2, WAIT).await;

    // The two at min_idle stay however long they idle: no churn.
    tokio::time::sleep(idle_timeout * 5).await;
    let later = status(&pool).await;
    assert_eq!(ids(only(&later)), kept);
    assert_eq!(later.counters.idle_expired, 3);
    assert_eq!(later.counters.created, 5);
    checkout_and_echo(&pool, &a, "still fine").await;

    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn max_lifetime_replaces_connections_without_dipping_below_min_idle() {
    tokio::time::pause();
    let lifetime = Duration::from_secs(10);
    let config = config()
        .min_idle(2)
        .max_size(4)
        .max_lifetime(Some(lifetime))
        .maintenance_interval(Duration::from_secs(1));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let mut previous = ids(only(&status(&pool).await));
    assert_eq!(previous.len(), 2);
    let mut seen = previous.clone();

    // Two generations: each replaced by fresh connections before it goes, with
    // min_idle connections idle at every status sampled along the way.
    for generation in 1..=2u64 {
        let replaced = until(&pool, lifetime + Duration::from_secs(3), |s| {
            assert!(
                s.idle >= 2,
                "fell below min_idle during replacement: {s:#?}"
            );
            assert_consistent(s);
            s.size == 2 && s.busy == 0 && s.connecting == 0 && ids(s).is_disjoint(&previous)
        })
        .await;
        let now = ids(only(&replaced));
        assert_eq!(now.len(), 2);
        assert!(now.is_disjoint(&seen), "replacements are new connections");
        assert_eq!(replaced.counters.lifetime_expired, 2 * generation);
        assert_eq!(replaced.counters.created, 2 + 2 * generation);
        assert!(
            only(&replaced).connections.iter().all(|c| c.age < lifetime),
            "{replaced:#?}"
        );
        seen.extend(now.iter().copied());
        previous = now;

        let lease = pool.checkout(&a).await.unwrap();
        assert!(previous.contains(&lease.id()));
        echo(&lease, "fresh").await;
        drop(lease);
    }
    until_server_open(&server, 2, WAIT).await;

    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn a_lease_returned_after_its_lifetime_is_replaced() {
    tokio::time::pause();
    let lifetime = Duration::from_secs(10);
    let config = config()
        .min_idle(1)
        .max_size(2)
        .max_lifetime(Some(lifetime));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();

    let lease = pool.checkout(&a).await.unwrap();
    let old = lease.id();
    tokio::time::sleep(lifetime + Duration::from_secs(1)).await;
    // Still the borrower's to use while the lease lives.
    echo(&lease, "past its lifetime").await;
    drop(lease);

    let replaced = until(&pool, WAIT, |s| {
        s.size == 1 && s.idle == 1 && !ids(s).contains(&old)
    })
    .await;
    assert_eq!(replaced.counters.lifetime_expired, 1);
    let lease = pool.checkout(&a).await.unwrap();
    assert_ne!(lease.id(), old);
    echo(&lease, "replacement").await;
    drop(lease);

    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn test_on_checkout_discards_a_silent_connection_and_hands_out_a_good_one() {
    tokio::time::pause();
    let health_check_timeout = Duration::from_millis(500);
    let config = config()
        .min_idle(1)
        .max_size(2)
        .test_on_checkout_after(Some(Duration::from_secs(1)))
        .health_check_timeout(health_check_timeout);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let silent = ids(only(&status(&pool).await));
    assert_eq!(silent.len(), 1);

    // The peer stops answering but keeps the connection open; the connection's own
    // heartbeat would notice only after its 15 s timeout.
    assert_eq!(server.mute_all(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let asked = Instant::now();
    let lease = within(WAIT, "checkout", pool.checkout(&a))
        .await
        .expect("a good connection");
    let waited = asked.elapsed();
    assert!(
        !silent.contains(&lease.id()),
        "the silent one was not handed out"
    );
    assert!(
        waited >= health_check_timeout,
        "it waited for the ping: {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    echo(&lease, "answered").await;

    let after = until(&pool, WAIT, |s| s.busy == 0 && s.size == 1).await;
    assert_eq!(after.counters.checkouts.tests_failed, 1);
    assert_eq!(after.counters.health_check_failures, 1);
    assert_eq!(after.counters.closed.get("aborted"), Some(&1), "{after:#?}");
    assert!(ids(only(&after)).is_disjoint(&silent));
    until_server_open(&server, 1, WAIT).await;
    assert_eq!(server.muted(), 0, "the silent connection was closed");

    // Returned and taken again at once: no test (and so no wait) for a fresh return.
    let id = lease.id();
    drop(lease);
    let asked = Instant::now();
    let again = pool.checkout(&a).await.unwrap();
    assert_eq!(again.id(), id);
    assert!(asked.elapsed() < health_check_timeout);
    drop(again);
    assert_eq!(status(&pool).await.counters.checkouts.tests_failed, 1);

    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn health_checks_retire_a_silent_connection_and_top_up_to_min_idle() {
    tokio::time::pause();
    let config = config()
        .min_idle(2)
        .max_size(3)
        .health_check_interval(Some(Duration::from_secs(2)))
        .health_check_timeout(Duration::from_millis(500))
        .maintenance_interval(Duration::from_secs(1));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let original = ids(only(&status(&pool).await));
    assert_eq!(original.len(), 2);

    assert_eq!(server.mute(1), 1);
    let muted_at = Instant::now();
    let healed = until(&pool, Duration::from_secs(10), |s| {
        assert_consistent(s);
        s.size == 2 && s.idle == 2 && s.busy == 0 && s.connecting == 0 && server.muted() == 0
    })
    .await;
    // Found by the pool's checks, well before the connection's own heartbeat timeout.
    assert!(
        muted_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        muted_at.elapsed()
    );
    assert_eq!(healed.counters.health_check_failures, 1);
    assert_eq!(
        healed.counters.closed.get("aborted"),
        Some(&1),
        "{healed:#?}"
    );
    assert_eq!(healed.counters.closed.get("heartbeat_timeout"), None);
    assert_eq!(healed.counters.created, 3);
    let now = ids(only(&healed));
    assert_eq!(
        now.intersection(&original).count(),
        1,
        "the healthy one is kept, the silent one replaced"
    );

    // The checks keep passing for healthy connections: nothing else goes.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let later = status(&pool).await;
    assert_eq!(ids(only(&later)), now);
    assert_eq!(later.counters.health_check_failures, 1);

    let first = pool.checkout(&a).await.unwrap();
    let second = pool.checkout(&a).await.unwrap();
    echo(&first, "one").await;
    echo(&second, "two").await;
    drop((first, second));

    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn health_checks_do_not_keep_surplus_connections_from_idling_out() {
    tokio::time::pause();
    let idle_timeout = Duration::from_secs(10);
    let config = config()
        .min_idle(1)
        .max_size(3)
        .idle_timeout(Some(idle_timeout))
        .health_check_interval(Some(Duration::from_secs(3)))
        .health_check_timeout(Duration::from_millis(500));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let leases = vec![
        pool.checkout(&a).await.unwrap(),
        pool.checkout(&a).await.unwrap(),
        pool.checkout(&a).await.unwrap(),
    ];
    drop(leases);
    let returned_at = Instant::now();

    // Checked every 3 s, idle all along: a passed check is not a use.
    let reaped = until(&pool, idle_timeout + Duration::from_secs(5), |s| {
        assert_consistent(s);
        s.size == 1 && s.busy == 0
    })
    .await;
    assert!(returned_at.elapsed() >= idle_timeout);
    assert_eq!(reaped.counters.idle_expired, 2);
    assert_eq!(reaped.counters.health_check_failures, 0);

    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn test_on_checkout_replaces_the_only_connection_when_it_is_silent() {
    tokio::time::pause();
    let config = config()
        .min_idle(1)
        .max_size(1)
        .test_on_checkout_after(Some(Duration::from_secs(1)))
        .health_check_timeout(Duration::from_millis(500));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let silent = ids(only(&status(&pool).await));
    assert_eq!(server.mute_all(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // At max_size the replacement can open only once the silent one has closed; the
    // checkout waits for that and still succeeds.
    let lease = within(WAIT, "checkout", pool.checkout(&a))
        .await
        .expect("a good connection");
    assert!(!silent.contains(&lease.id()));
    echo(&lease, "answered").await;
    drop(lease);
    let after = status(&pool).await;
    assert_eq!(after.counters.checkouts.tests_failed, 1);
    assert_eq!(only(&after).checkouts.failed, 0);

    finish_without_leaks(&pool, &server).await;
}
