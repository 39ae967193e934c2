//! Checkout and return: leases come from the idle stack, go back on drop, and the
//! counts add up after each step.

mod pool_support;

use std::time::Duration;

use pool_support::*;
use switchboard::protocol::frame::FrameRequest;

#[actix::test]
async fn acquire_call_release() {
    tokio::time::pause();
    let (server, _, pool) = start_pool(config().min_idle(2).max_size(4)).await;
    let status = pool.status().await.unwrap();
    assert_eq!(only(&status).size, 2);
    assert_eq!(only(&status).idle, 2);
    assert_consistent(only(&status));

    let lease = pool.checkout(&server.authority()).await.unwrap();
    let reply = lease.call(FrameRequest::new("hello")).await.unwrap();
    assert_eq!(&reply[..], b"hello");
    let status = pool.status().await.unwrap();
    assert_eq!(only(&status).leased, 1);
    assert_eq!(only(&status).idle, 1);
    assert_consistent(only(&status));

    let id = lease.id();
    drop(lease);
    let status = pool.status().await.unwrap();
    assert_eq!(only(&status).leased, 0);
    assert_eq!(only(&status).idle, 2);
    assert_consistent(only(&status));
    // The most recently returned connection is the next one out.
    let again = pool.checkout(&server.authority()).await.unwrap();
    assert_eq!(again.id(), id);
    drop(again);

    let status = pool.status().await.unwrap();
    assert_eq!(status.counters.checkouts.direct, 2);
    assert_eq!(status.counters.created, 2);
    assert_eq!(server.accepted(), 2);
}

#[actix::test]
async fn waiters_grow_the_pool_up_to_max_size_then_queue() {
    tokio::time::pause();
    let (server, _, pool) = start_pool(config().min_idle(0).max_size(3)).await;
    let a = server.authority();
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(within(WAIT, "checkout", pool.checkout(&a)).await.unwrap());
    }
    let status = pool.status().await.unwrap();
    assert_eq!(only(&status).size, 3);
    assert_eq!(only(&status).leased, 3);

    // A fourth waits, and gets the first connection returned.
    let pool2 = pool.clone();
    let a2 = a.clone();
    let waiter = actix::spawn(async move { pool2.checkout(&a2).await });
    settle().await;
    let status = pool.status().await.unwrap();
    assert_eq!(only(&status).waiters, 1);
    let returned = leases.remove(0);
    let id = returned.id();
    drop(returned);
    let lease = within(WAIT, "waiter served", waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.id(), id);
    drop(lease);
    drop(leases);
    let status = pool.status().await.unwrap();
    assert_eq!(only(&status).idle, 3);
    assert_eq!(only(&status).waiters, 0);
    // The pool started empty: all four checkouts waited (three for new connections).
    assert_eq!(status.counters.checkouts.waited, 4);
    assert_eq!(status.counters.checkouts.direct, 0);
    assert_consistent(only(&status));
}

#[actix::test]
async fn checkout_times_out() {
    tokio::time::pause();
    let (server, _, pool) = start_pool(config().min_idle(1).max_size(1)).await;
    let a = server.authority();
    let held = pool.checkout(&a).await.unwrap();
    let error = pool
        .checkout_within(&a, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(error, switchboard::PoolError::Timeout { .. }),
        "{error}"
    );
    drop(held);
    let status = pool.status().await.unwrap();
    assert_eq!(only(&status).checkouts.timed_out, 1);
    assert_eq!(only(&status).waiters, 0);
    assert_consistent(only(&status));
}
