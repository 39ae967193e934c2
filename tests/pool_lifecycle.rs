//! Lifecycle: shutting a pool down (close, drain, both at once, under a supervisor),
//! what happens to a lease's connection when it ends (detach, discard, returned busy,
//! not reused, its holder stopped), shared use, resizing and placement on other
//! arbiters.

mod pool_support;

use std::collections::BTreeSet;
use std::time::Duration;

use actix::{Actor, Arbiter, Context, Handler, Message, ResponseFuture};
use pool_support::*;
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::{Call, CallError, CloseReason, PoolError};
use tokio::time::Instant;

/// A checkout running on its own, with the moment it finished.
fn spawn_checkout_within(
    pool: &TestPool,
    authority: &switchboard::Authority,
    timeout: Duration,
) -> tokio::task::JoinHandle<(Result<TestLease, PoolError>, Instant)> {
    let pool = pool.clone();
    let authority = authority.clone();
    actix::spawn(async move {
        let result = pool.checkout_within(&authority, timeout).await;
        (result, Instant::now())
    })
}

#[actix::test]
async fn close_fails_every_waiter_at_once_and_every_later_checkout() {
    tokio::time::pause();
    let config = config()
        .min_idle(1)
        .max_size(1)
        .checkout_timeout(Duration::from_secs(60));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| spawn_checkout_within(&pool, &a, Duration::from_secs(60)))
        .collect();
    let waiting = until(&pool, WAIT, |s| s.waiters == 3).await;
    assert_consistent(only(&waiting));

    let closed_at = Instant::now();
    within(WAIT, "close", pool.close()).await;
    for waiter in waiters {
        let (result, at) = within(WAIT, "waiter woken", waiter).await.unwrap();
        assert!(matches!(result, Err(PoolError::Closed)), "{result:?}");
        assert!(at - closed_at < Duration::from_millis(100), "woken at once");
    }

    // The lease's connection was aborted with the pool.
    let error = lease.call(FrameRequest::new("late")).await.unwrap_err();
    assert!(matches!(error, CallError::Closed(_)), "{error}");
    drop(lease);
    assert!(matches!(pool.checkout(&a).await, Err(PoolError::Closed)));
    assert!(matches!(
        pool.checkout_within(&a, Duration::from_secs(1)).await,
        Err(PoolError::Closed)
    ));
    assert!(matches!(pool.shared(&a).await, Err(PoolError::Closed)));
    let elsewhere = switchboard::Authority::memory("elsewhere");
    assert!(matches!(
        pool.checkout(&elsewhere).await,
        Err(PoolError::Closed)
    ));
    assert!(matches!(pool.status().await, Err(PoolError::Closed)));
    until_server_open(&server, 0, WAIT).await;
}

#[actix::test]
async fn drain_refuses_checkouts_lets_the_lease_finish_then_closes() {
    tokio::time::pause();
    let config = config()
        .min_idle(2)
        .max_size(2)
        .checkout_timeout(Duration::from_secs(60))
        .shutdown_timeout(Duration::from_secs(30));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let held = pool.checkout(&a).await.unwrap();
    // Both taken: this one waits in line.
    let waiter = spawn_checkout_within(&pool, &a, Duration::from_secs(60));
    until(&pool, WAIT, |s| s.waiters == 1).await;
    let in_flight = {
        let addr = lease.addr().clone();
        actix::spawn(async move { addr.send(Call::new(FrameRequest::new("sleep:300"))).await })
    };
    settle().await;
    assert_eq!(lease.in_flight(), 1);

    let drain = {
        let pool = pool.clone();
        actix::spawn(async move { pool.drain().await })
    };
    let (queued, _) = within(WAIT, "waiter refused", waiter).await.unwrap();
    assert!(matches!(queued, Err(PoolError::Draining)), "{queued:?}");
    assert!(matches!(pool.checkout(&a).await, Err(PoolError::Draining)));
    assert!(matches!(pool.shared(&a).await, Err(PoolError::Draining)));
    drop(held);

    // The lease keeps working: the call in flight is answered, new calls too.
    let reply = within(WAIT, "in-flight call", in_flight).await.unwrap();
    assert_eq!(&reply.unwrap().unwrap()[..], b"sleep:300");
    echo(&lease, "still mine").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!drain.is_finished(), "drain waits for the lease");
    let draining = status(&pool).await;
    assert_eq!(only(&draining).size, 1, "{draining:#?}");
    assert_eq!(only(&draining).leased, 1);
    assert_consistent(only(&draining));
    assert_eq!(server.open(), 1);

    drop(lease);
    within(WAIT, "drain resolves once the lease is back", drain)
        .await
        .unwrap();
    until_server_open(&server, 0, WAIT).await;
    assert!(matches!(pool.checkout(&a).await, Err(PoolError::Closed)));
}

#[actix::test]
async fn drain_waits_for_a_returned_connection_to_go_quiet() {
    tokio::time::pause();
    let config = config()
        .min_idle(2)
        .max_size(2)
        .return_drain_timeout(Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(30));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let unread = lease.send(Call::new(FrameRequest::new("sleep:500")));
    settle().await;
    drop(unread);
    drop(lease);
    let held = status(&pool).await;
    assert_eq!(only(&held).busy, 1);
    assert_consistent(only(&held));

    let started = Instant::now();
    within(WAIT, "drain", pool.drain()).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "closed before the reply: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    until_server_open(&server, 0, WAIT).await;
}

#[derive(Debug, Clone, Copy)]
enum Shutdown {
    Drain,
    Close,
}

/// Starts `first` and `second` together while a lease with a call in flight is out,
/// and checks both resolve (bounded) and every connection closes.
async fn shut_down_twice(first: Shutdown, second: Shutdown) {
    tokio::time::pause();
    let config = config()
        .min_idle(2)
        .max_size(2)
        .shutdown_timeout(Duration::from_secs(2));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let in_flight = {
        let addr = lease.addr().clone();
        actix::spawn(async move { addr.send(Call::new(FrameRequest::new("sleep:60000"))).await })
    };
    settle().await;
    let before = status(&pool).await;
    assert_consistent(only(&before));

    let run = |how: Shutdown| {
        let pool = pool.clone();
        actix::spawn(async move {
            match how {
                Shutdown::Drain => pool.drain().await,
                Shutdown::Close => pool.close().await,
            }
        })
    };
    let one = run(first);
    let two = run(second);
    within(WAIT, "first shutdown", one).await.unwrap();
    within(WAIT, "second shutdown", two).await.unwrap();

    // The call in flight ended (answered never: aborted by the close or the timeout).
    let reply = within(WAIT, "in-flight call ends", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(reply.is_err(), "{reply:?}");
    drop(lease);
    until_server_open(&server, 0, WAIT).await;
    assert!(matches!(pool.checkout(&a).await, Err(PoolError::Closed)));
}

#[actix::test]
async fn drain_and_close_together_both_resolve() {
    shut_down_twice(Shutdown::Drain, Shutdown::Close).await;
}

#[actix::test]
async fn close_and_drain_together_both_resolve() {
    shut_down_twice(Shutdown::Close, Shutdown::Drain).await;
}

#[actix::test]
async fn two_closes_together_both_resolve() {
    shut_down_twice(Shutdown::Close, Shutdown::Close).await;
}

#[actix::test]
async fn two_drains_together_both_resolve() {
    shut_down_twice(Shutdown::Drain, Shutdown::Drain).await;
}

#[actix::test]
async fn a_drain_with_a_timeout_aborts_what_is_still_out_when_it_runs_out() {
    tokio::time::pause();
    let config = config().min_idle(1).max_size(1);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    echo(&lease, "before").await;
    let out = status(&pool).await;
    assert_eq!(only(&out).leased, 1);
    assert_consistent(only(&out));

    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    within(
        WAIT,
        "drain with a timeout",
        pool.addr().send(switchboard::pool::Drain {
            timeout: Some(timeout),
        }),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(took >= timeout, "{took:?}");
    assert!(took < timeout * 2, "{took:?}");

    // The borrower that never gave its lease back finds it aborted.
    let error = within(WAIT, "call", lease.call(FrameRequest::new("after")))
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Closed(_)), "{error}");
    drop(lease);
    until_server_open(&server, 0, WAIT).await;
    assert!(matches!(pool.status().await, Err(PoolError::Closed)));
}

#[actix::test]
async fn a_detached_connection_outlives_the_pool_shutting_down() {
    tokio::time::pause();
    let config = config().min_idle(2).max_size(2);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let detached = pool.checkout(&a).await.unwrap().detach();
    until(&pool, WAIT, |s| s.idle == 2 && s.connecting == 0).await;
    // A borrower keeps its lease past the drain's timeout.
    let lease = pool.checkout(&a).await.unwrap();
    within(
        WAIT,
        "drain",
        pool.addr().send(switchboard::pool::Drain {
            timeout: Some(Duration::from_secs(1)),
        }),
    )
    .await
    .unwrap();
    drop(lease);

    // The pool is gone; the detached connection is its owner's and still works.
    let reply = within(
        WAIT,
        "call on the detached connection",
        detached.send(Call::new(FrameRequest::new("mine"))),
    )
    .await
    .unwrap();
    assert_eq!(&reply.expect("not aborted by the pool")[..], b"mine");
    until_server_open(&server, 1, WAIT).await;
    within(
        WAIT,
        "close detached",
        detached.send(switchboard::Close::default()),
    )
    .await
    .unwrap();
    until_server_open(&server, 0, WAIT).await;
}

#[actix::test]
async fn a_supervised_pool_comes_back_after_close() {
    tokio::time::pause();
    let bed = TestBed::new();
    let server = bed.server.clone();
    let a = server.authority();
    let pool = bed
        .pool(config().min_idle(2).max_size(2))
        .start_supervised();
    let ready = until(&pool, WAIT, |s| s.idle == 2).await;
    let before = ids(only(&ready));
    let lease = pool.checkout(&a).await.unwrap();
    echo(&lease, "before").await;

    within(WAIT, "close", pool.close()).await;
    let error = lease.call(FrameRequest::new("during")).await.unwrap_err();
    assert!(matches!(error, CallError::Closed(_)), "{error}");
    drop(lease);

    // Restarted: open again, min_idle connections again (new ones), counters kept.
    let back = until(&pool, WAIT, |s| s.idle == 2 && s.connecting == 0).await;
    assert!(ids(only(&back)).is_disjoint(&before));
    assert_eq!(back.counters.created, 4);
    let lease = within(WAIT, "checkout after restart", pool.checkout(&a))
        .await
        .unwrap();
    echo(&lease, "after").await;
    drop(lease);
    let shared = pool.shared(&a).await.unwrap();
    assert_eq!(
        &shared.call(FrameRequest::new("shared")).await.unwrap()[..],
        b"shared"
    );

    // A supervised pool restarts after every close, so end without closing it.
    let settled = assert_settled(&pool, &server).await;
    assert_eq!(only(&settled).size, 2);
}

#[actix::test]
async fn detach_takes_a_connection_out_of_the_pool() {
    tokio::time::pause();
    let config = config().min_idle(2).max_size(3);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    let addr = lease.detach();

    let right_after = status(&pool).await;
    assert!(!ids(only(&right_after)).contains(&id));
    assert!(only(&right_after).size <= 2, "{right_after:#?}");
    assert_eq!(only(&right_after).leased, 0);
    assert_consistent(only(&right_after));
    // The pool tops up to min_idle without it.
    let topped = until(&pool, WAIT, |s| s.idle == 2 && s.connecting == 0).await;
    assert!(!ids(only(&topped)).contains(&id));
    assert_eq!(topped.counters.created, 3);

    // The detached connection is the caller's now, and works.
    let reply = addr
        .send(Call::new(FrameRequest::new("detached")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[..], b"detached");
    assert_eq!(server.open(), 3);
    let first = pool.checkout(&a).await.unwrap();
    let second = pool.checkout(&a).await.unwrap();
    assert_ne!(first.id(), id);
    assert_ne!(second.id(), id);
    drop((first, second));

    // Closing it is the caller's business and does not change the pool's count.
    let reason = within(
        WAIT,
        "close detached",
        addr.send(switchboard::Close::default()),
    )
    .await
    .unwrap();
    assert!(matches!(reason, CloseReason::Closed), "{reason}");
    until_server_open(&server, 2, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = status(&pool).await;
    assert_eq!(only(&after).size, 2, "{after:#?}");
    assert_eq!(after.counters.created, 3, "nothing reopened for it");

    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn discard_closes_the_connection_and_the_pool_replaces_it() {
    tokio::time::pause();
    let config = config().min_idle(1).max_size(2);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    let addr = lease.addr().clone();
    lease.discard();

    let replaced = until(&pool, WAIT, |s| {
        s.idle == 1 && s.busy == 0 && !ids(s).contains(&id)
    })
    .await;
    assert_eq!(replaced.counters.closed.get("aborted"), Some(&1));
    assert_eq!(replaced.counters.created, 2);
    let error = addr
        .send(Call::new(FrameRequest::new("gone")))
        .await
        .map_err(CallError::from)
        .and_then(|reply| reply)
        .unwrap_err();
    assert!(matches!(error, CallError::Closed(_)), "{error}");
    until_server_open(&server, 1, WAIT).await;

    let lease = pool.checkout(&a).await.unwrap();
    assert_ne!(lease.id(), id);
    echo(&lease, "replacement").await;
    drop(lease);

    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn a_discard_is_not_counted_as_a_failed_health_check() {
    tokio::time::pause();
    let config = config().min_idle(1).max_size(2);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    lease.discard();
    let replaced = until(&pool, WAIT, |s| s.idle == 1 && !ids(s).contains(&id)).await;
    assert_eq!(replaced.counters.closed.get("aborted"), Some(&1));
    assert_eq!(
        replaced.counters.health_check_failures, 0,
        "the borrower discarded it; no health check or test on checkout ran"
    );
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn a_lease_returned_with_a_call_in_flight_is_held_back_until_quiet() {
    tokio::time::pause();
    let config = config()
        .min_idle(1)
        .max_size(1)
        .return_drain_timeout(Duration::from_secs(1));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();

    // Round one: nobody waiting. The connection is held (busy) while the reply is
    // due, then goes back to idle.
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    let unread = lease.send(Call::new(FrameRequest::new("sleep:200")));
    settle().await;
    assert_eq!(lease.in_flight(), 1);
    drop(unread);
    let returned_at = Instant::now();
    drop(lease);
    let held = status(&pool).await;
    assert_eq!(only(&held).busy, 1, "{held:#?}");
    assert_eq!(only(&held).idle, 0);
    assert_eq!(held.counters.returned_in_flight, 1);
    assert_consistent(only(&held));
    let quiet = until(&pool, WAIT, |s| {
        if returned_at.elapsed() < Duration::from_millis(190) {
            assert_eq!(s.busy, 1, "handed back before its reply came: {s:#?}");
        }
        s.idle == 1
    })
    .await;
    assert!(returned_at.elapsed() >= Duration::from_millis(190));
    assert_eq!(quiet.counters.drain_timeouts, 0);

    // Round two: a borrower waiting in line gets the connection only once it is
    // quiet, and then only its own reply.
    let lease = pool.checkout(&a).await.unwrap();
    assert_eq!(lease.id(), id);
    let unread = lease.send(Call::new(FrameRequest::new("sleep:200")));
    settle().await;
    drop(unread);
    let returned_at = Instant::now();
    drop(lease);
    let next = spawn_checkout_within(&pool, &a, Duration::from_secs(5));
    let (next, served_at) = within(WAIT, "next borrower", next).await.unwrap();
    let next = next.unwrap();
    assert_eq!(next.id(), id, "the same connection, reused");
    assert!(served_at - returned_at >= Duration::from_millis(190));
    echo(&next, "mine").await;
    // Nothing else is waiting to arrive for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    echo(&next, "mine again").await;
    drop(next);

    let done = until(&pool, WAIT, |s| s.idle == 1).await;
    assert_eq!(done.counters.returned_in_flight, 2);
    assert_eq!(done.counters.drain_timeouts, 0);
    assert_eq!(done.counters.created, 1);
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn a_returned_connection_still_busy_after_return_drain_timeout_is_closed() {
    tokio::time::pause();
    let drain_timeout = Duration::from_millis(100);
    let config = config()
        .min_idle(1)
        .max_size(1)
        .return_drain_timeout(drain_timeout);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    let unread = lease.send(Call::new(FrameRequest::new("sleep:1000")));
    settle().await;
    drop(unread);
    let returned_at = Instant::now();
    drop(lease);

    let replaced = until(&pool, WAIT, |s| {
        s.idle == 1 && s.busy == 0 && !ids(s).contains(&id)
    })
    .await;
    let took = returned_at.elapsed();
    assert!(took >= drain_timeout, "{took:?}");
    assert!(
        took < Duration::from_millis(1000),
        "not waiting for the reply: {took:?}"
    );
    assert_eq!(replaced.counters.returned_in_flight, 1);
    assert_eq!(replaced.counters.drain_timeouts, 1);
    assert_eq!(replaced.counters.closed.get("aborted"), Some(&1));

    let lease = pool.checkout(&a).await.unwrap();
    assert_ne!(lease.id(), id);
    echo(&lease, "fresh").await;
    drop(lease);
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn without_reuse_every_checkout_gets_a_new_connection() {
    tokio::time::pause();
    let config = config().min_idle(1).max_size(2).reuse(false);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let mut seen = BTreeSet::new();
    for n in 0..5 {
        let lease = within(WAIT, "checkout", pool.checkout(&a)).await.unwrap();
        assert!(
            seen.insert(lease.id()),
            "connection {} used twice",
            lease.id()
        );
        echo(&lease, &format!("call {n}")).await;
    }
    // Both out and one waiting: the waiter gets a new connection, not a returned one.
    let first = within(WAIT, "checkout", pool.checkout(&a)).await.unwrap();
    let second = within(WAIT, "checkout", pool.checkout(&a)).await.unwrap();
    assert!(seen.insert(first.id()));
    assert!(seen.insert(second.id()));
    let waiter = spawn_checkout_within(&pool, &a, Duration::from_secs(5));
    until(&pool, WAIT, |s| s.waiters == 1).await;
    drop(first);
    let (third, _) = within(WAIT, "waiter", waiter).await.unwrap();
    let third = third.unwrap();
    assert!(seen.insert(third.id()), "the waiter got a used connection");
    echo(&third, "fresh for the waiter").await;
    drop((second, third));

    let settled = assert_settled(&pool, &server).await;
    assert!(ids(only(&settled)).is_disjoint(&seen), "{settled:#?}");
    assert_eq!(settled.counters.closed.get("closed"), Some(&8));
    finish_without_leaks(&pool, &server).await;
}

/// An actor that keeps a lease in its state.
struct Holder {
    lease: TestLease,
}

impl Actor for Holder {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<bytes::Bytes, CallError>")]
struct Echo(&'static str);

impl Handler<Echo> for Holder {
    type Result = ResponseFuture<Result<bytes::Bytes, CallError>>;

    fn handle(&mut self, echo: Echo, _: &mut Context<Self>) -> Self::Result {
        let call = self.lease.send(Call::new(FrameRequest::new(echo.0)));
        Box::pin(async move { call.await? })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Stop;

impl Handler<Stop> for Holder {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        actix::ActorContext::stop(ctx);
    }
}

#[actix::test]
async fn a_lease_held_by_an_actor_that_stops_is_returned() {
    tokio::time::pause();
    let config = config().min_idle(1).max_size(1);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    let holder = Holder { lease }.start();
    let reply = within(WAIT, "holder calls", holder.send(Echo("held")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[..], b"held");
    assert_eq!(only(&status(&pool).await).leased, 1);

    within(WAIT, "stop holder", holder.send(Stop))
        .await
        .unwrap();
    let back = until(&pool, WAIT, |s| s.leased == 0 && s.idle == 1).await;
    assert_eq!(
        ids(only(&back)),
        BTreeSet::from([id]),
        "returned, not replaced"
    );
    let lease = pool.checkout(&a).await.unwrap();
    assert_eq!(lease.id(), id);
    echo(&lease, "next borrower").await;
    drop(lease);
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn shared_use_picks_the_least_loaded_and_grows_under_load_up_to_max_size() {
    tokio::time::pause();
    let config = config().min_idle(2).max_size(3).grow_threshold(2);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let mut calls = Vec::new();
    let mut next_ms = 2000;
    // Puts two slow calls (each with its own payload) on a shared connection.
    let mut load = |shared: &switchboard::SharedConnection<ScriptedConnector, FrameProtocol>| {
        for _ in 0..2 {
            let payload = format!("sleep:{next_ms}");
            next_ms += 1;
            let shared = shared.clone();
            calls.push(actix::spawn(async move {
                let reply = shared.call(FrameRequest::new(payload.clone())).await;
                (payload, reply)
            }));
        }
    };

    let one = pool.shared(&a).await.unwrap();
    load(&one);
    settle().await;
    assert_eq!(one.in_flight(), 2);
    let two = pool.shared(&a).await.unwrap();
    assert_ne!(two.id(), one.id(), "the least loaded");
    assert_eq!(two.in_flight(), 0);
    load(&two);
    settle().await;
    assert_eq!(
        only(&status(&pool).await).size,
        2,
        "no growth below the threshold"
    );

    // Every connection at the threshold: one more opens, and the pick waits for it
    // rather than pile onto a busy one.
    let busy = within(WAIT, "a pick that waits for growth", pool.shared(&a))
        .await
        .unwrap();
    assert!(![one.id(), two.id()].contains(&busy.id()), "the new one");
    let grown = until(&pool, WAIT, |s| s.size == 3 && s.connecting == 0).await;
    assert_eq!(only(&grown).leased, 0, "shared use holds no lease");
    let three = pool.shared(&a).await.unwrap();
    assert!(![one.id(), two.id()].contains(&three.id()), "the new one");
    load(&three);
    settle().await;

    // At max_size it grows no further.
    let _ = pool.shared(&a).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let capped = status(&pool).await;
    assert_eq!(only(&capped).size, 3, "{capped:#?}");
    assert_eq!(only(&capped).connecting, 0);
    assert_eq!(capped.counters.checkouts.shared, 5);

    // Every call got its own reply.
    assert_eq!(calls.len(), 6);
    for call in calls {
        let (payload, reply) = within(WAIT, "shared call", call).await.unwrap();
        assert_eq!(&reply.unwrap()[..], payload.as_bytes());
    }
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn shared_growth_ends_when_the_load_does() {
    tokio::time::pause();
    let idle_timeout = Duration::from_secs(5);
    let config = config()
        .min_idle(2)
        .max_size(3)
        .grow_threshold(1)
        .idle_timeout(Some(idle_timeout));
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    let mut calls = Vec::new();
    // Two connections loaded, the third call grows the pool, the fourth loads the
    // new connection and the fifth finds every connection loaded at max_size.
    for _ in 0..5 {
        let shared = pool.shared(&a).await.unwrap();
        calls.push(actix::spawn(async move {
            shared.call(FrameRequest::new("sleep:1000")).await
        }));
        settle().await;
        until(&pool, WAIT, |s| s.connecting == 0).await;
    }
    for call in calls {
        within(WAIT, "shared call", call).await.unwrap().unwrap();
    }
    let loaded = status(&pool).await;
    assert_eq!(only(&loaded).size, 3);
    assert_eq!(loaded.counters.created, 3);

    // Load gone: the extra connection idles out, and nothing reopens it.
    until(&pool, idle_timeout * 2, |s| s.size == 2 && s.busy == 0).await;
    tokio::time::sleep(idle_timeout * 4).await;
    let after = status(&pool).await;
    assert_eq!(only(&after).size, 2, "{after:#?}");
    assert_eq!(
        after.counters.created, 3,
        "no connection opened without load"
    );
    finish_without_leaks(&pool, &server).await;
}

#[actix::test]
async fn resize_grows_to_a_new_min_idle_and_shrinks_above_a_new_max_size() {
    tokio::time::pause();
    let config = config().min_idle(1).max_size(4);
    let (server, _, pool) = start_pool(config).await;
    let a = server.authority();
    assert_eq!(only(&status(&pool).await).size, 1);

    pool.resize(&a, 3, 4).await.unwrap();
    let grown = until(&pool, WAIT, |s| s.idle == 3 && s.connecting == 0).await;
    assert_eq!(only(&grown).min_idle, 3);
    assert_eq!(grown.counters.created, 3);

    // Two out on leases, one idle; shrink to one: the idle one closes at once, the
    // leased ones as they come back until the size fits.
    let first = pool.checkout(&a).await.unwrap();
    let second = pool.checkout(&a).await.unwrap();
    pool.resize(&a, 0, 1).await.unwrap();
    let shrunk = until(&pool, WAIT, |s| s.idle == 0 && s.busy == 0).await;
    assert_eq!(only(&shrunk).size, 2);
    assert_eq!(only(&shrunk).leased, 2);
    assert_eq!(only(&shrunk).max_size, 1);
    echo(&first, "still leased").await;
    drop(first);
    until(&pool, WAIT, |s| s.size == 1 && s.busy == 0).await;
    let kept = second.id();
    drop(second);
    let fits = until(&pool, WAIT, |s| s.idle == 1).await;
    assert_eq!(ids(only(&fits)), BTreeSet::from([kept]));
    assert_eq!(fits.counters.closed.get("closed"), Some(&2));

    // The new max_size holds: a second borrower waits.
    let lease = pool.checkout(&a).await.unwrap();
    let error = pool
        .checkout_within(&a, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(error, PoolError::Timeout { .. }), "{error}");
    drop(lease);

    // Nonsense sizes are refused and change nothing.
    let error = pool.resize(&a, 3, 2).await.unwrap_err();
    assert_eq!(error.field(), "min_idle");
    let error = pool.resize(&a, 0, 0).await.unwrap_err();
    assert_eq!(error.field(), "max_size");
    let unchanged = status(&pool).await;
    assert_eq!(only(&unchanged).max_size, 1);
    assert_eq!(only(&unchanged).min_idle, 0);
    finish_without_leaks(&pool, &server).await;
}

/// Real time: the connections run on another arbiter's runtime, which a paused clock
/// here would not govern (and would race past while waiting for it).
#[actix::test]
async fn connections_placed_on_other_arbiters_serve_calls() {
    let bed = TestBed::new();
    let server = bed.server.clone();
    let a = server.authority();
    let arbiter = Arbiter::new();
    let config = config().min_idle(2).max_size(3);
    let pool = build_eagerly(bed.pool(config).arbiters(vec![arbiter.handle()])).await;

    let first = within(WAIT, "checkout", pool.checkout(&a)).await.unwrap();
    let second = within(WAIT, "checkout", pool.checkout(&a)).await.unwrap();
    let third = within(WAIT, "checkout", pool.checkout(&a)).await.unwrap();
    for (n, lease) in [&first, &second, &third].into_iter().enumerate() {
        echo(lease, &format!("placed {n}")).await;
    }
    let out = status(&pool).await;
    assert_eq!(only(&out).leased, 3);
    assert_consistent(only(&out));
    drop((first, second, third));
    let shared = within(WAIT, "shared", pool.shared(&a)).await.unwrap();
    let reply = within(
        WAIT,
        "shared call",
        shared.call(FrameRequest::new("shared")),
    )
    .await
    .unwrap();
    assert_eq!(&reply[..], b"shared");

    finish_without_leaks(&pool, &server).await;
    arbiter.stop();
}
