//! Reliability scenario 5: connections break while checkouts wait for them.
//!
//! What it proves, over real loopback TCP, with 10 waiters on a pool of 5: broken
//! connections do not starve anyone. When every leased connection is reset and then
//! returned, the pool replaces them and serves the waiters first come, first served,
//! none of them with a broken connection; when the broken connections are returned
//! before the pool could notice, each is handed to one waiter, whose call fails with
//! a typed `Closed` (exactly one call per broken connection), and that waiter's next
//! checkout gets a good one; and under churn, with every connection dying after a few calls, ten borrowers
//! each complete their calls, every failure is a typed error and none hangs. After
//! each, the pool is back to five idle connections that work, and the server holds
//! exactly those.
//!
//! How the fault is made: a `FaultProxy` between pool and server. `reset()` aborts
//! every open link with a TCP RST; the server disconnecting everyone while the proxy
//! blackholes what it sends (its FIN held until `heal()`) breaks connections the
//! pool cannot know about; `Fault::CloseAfter(n)` on the client-to-server
//! direction closes each link, old and new, after `n` more bytes (a few requests),
//! until `heal()`.
//!
//! ```text
//! cargo test --all-features --test reliability_waiters
//! ```
#![cfg(feature = "testkit")]

mod broker_support;
mod reliability_support;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use broker_support::{within, Server, WAIT};
use reliability_support::*;
use switchboard::protocol::frame::FrameRequest;
use switchboard::testkit::{Direction, Fault, FaultProxy, ProxyHandle};
use switchboard::{Authority, CallError, ConnectionId};

/// Connections in the pool (`min_idle` = `max_size`).
const SIZE: usize = 5;

/// Checkouts waiting for them.
const WAITERS: usize = 10;

/// How long a checkout may wait.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a borrower holds its lease after its call, so that waiters really wait.
const HOLD: Duration = Duration::from_millis(20);

/// Slack on bounds for a loaded machine.
const SLACK: Duration = Duration::from_secs(1);

struct Bed {
    server: Server,
    proxy: ProxyHandle,
    authority: Authority,
    events: Events,
    pool: TcpPool,
    old: BTreeSet<ConnectionId>,
}

/// A server behind a proxy and a full pool of `SIZE` through it.
async fn start() -> Bed {
    let (server, _) = start_echo_server(None).await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port).into()).unwrap();
    let authority = proxy.authority();
    let events = Events::new();
    let config = pool_config()
        .min_idle(SIZE)
        .max_size(SIZE)
        .max_waiters(WAITERS)
        .checkout_timeout(CHECKOUT_TIMEOUT);
    let pool = start_pool(&authority, config, connection_config(), &events);
    let old = wait_full(&pool, &authority, SIZE, WAIT).await;
    server.wait_open(SIZE).await;
    Bed {
        server,
        proxy,
        authority,
        events,
        pool,
        old,
    }
}

/// Leases every connection of the pool.
async fn lease_all(bed: &Bed) -> Vec<TcpLease> {
    let mut leases = Vec::new();
    for _ in 0..SIZE {
        leases.push(
            within(WAIT, "checkout", bed.pool.checkout(&bed.authority))
                .await
                .unwrap(),
        );
    }
    leases
}

/// What a waiter went through.
#[derive(Debug)]
struct Served {
    /// The connection whose call succeeded.
    id: ConnectionId,
    /// Connections it got whose call failed because they were broken.
    broken: Vec<ConnectionId>,
}

/// Spawns `WAITERS` borrowers, one at a time, each in line before the next arrives.
/// Each checks out (at most `tries` times, while it gets broken connections), calls,
/// holds its lease for [`HOLD`], and returns. `served` records the order in which
/// their first checkouts were answered.
async fn line_up(
    bed: &Bed,
    tries: usize,
    served: &Rc<RefCell<Vec<usize>>>,
) -> Vec<tokio::task::JoinHandle<Served>> {
    let mut waiters = Vec::new();
    for n in 0..WAITERS {
        let (pool, authority, served) = (bed.pool.clone(), bed.authority.clone(), served.clone());
        waiters.push(actix::spawn(async move {
            let mut broken = Vec::new();
            for attempt in 0..tries {
                let asked = Instant::now();
                let lease = pool
                    .checkout(&authority)
                    .await
                    .unwrap_or_else(|error| panic!("waiter {n}, checkout {attempt}: {error}"));
                assert!(asked.elapsed() <= CHECKOUT_TIMEOUT + SLACK);
                if attempt == 0 {
                    served.borrow_mut().push(n);
                }
                let text = format!("waiter {n}.{attempt}");
                match lease.call(FrameRequest::new(payload(&text))).await {
                    Ok(reply) => {
                        assert_eq!(&reply[..], text.as_bytes());
                        tokio::time::sleep(HOLD).await;
                        return Served {
                            id: lease.id(),
                            broken,
                        };
                    }
                    Err(CallError::Closed(reason)) if !reason.is_requested() => {
                        broken.push(lease.id());
                    }
                    Err(error) => panic!("waiter {n}: unexpected {error:?}"),
                }
            }
            panic!("waiter {n}: {} broken connections in a row", broken.len());
        }));
        // In line before the next one comes.
        wait_status(&bed.pool, &bed.authority, WAIT, "the waiter in line", |s| {
            s.waiters == n + 1
        })
        .await;
    }
    waiters
}

/// Waits (bounded) for every waiter; returns what each went through.
async fn all_served(waiters: Vec<tokio::task::JoinHandle<Served>>) -> Vec<Served> {
    let mut served = Vec::new();
    for waiter in waiters {
        served.push(
            within(CHECKOUT_TIMEOUT * 2 + SLACK, "a waiter", waiter)
                .await
                .expect("the waiter did not panic"),
        );
    }
    served
}

/// The end of every test: the pool is back to `SIZE` idle connections, each works,
/// nobody waits, nothing timed out, the server holds exactly the pool's connections,
/// and every connection reported `Closed` exactly once when the pool closes.
async fn assert_back_to_full(bed: &mut Bed) {
    let full = wait_full(&bed.pool, &bed.authority, SIZE, WAIT).await;
    let leases = lease_all(bed).await;
    for (n, lease) in leases.iter().enumerate() {
        echo(lease, &format!("after {n}")).await;
    }
    let used: BTreeSet<ConnectionId> = leases.iter().map(|lease| lease.id()).collect();
    assert_eq!(used, full);
    drop(leases);
    let status = authority_status(&bed.pool, &bed.authority).await;
    assert_eq!(status.checkouts.timed_out, 0, "{status:#?}");
    assert_eq!(status.checkouts.failed, 0, "{status:#?}");
    bed.server.wait_open(SIZE).await;
    close_and_check_events(&bed.pool, &mut bed.events).await;
}

#[actix::test]
async fn waiters_are_served_in_order_by_replacements_when_every_leased_connection_breaks() {
    let mut bed = start().await;
    let held = lease_all(&bed).await;
    let served = Rc::new(RefCell::new(Vec::new()));
    let waiters = line_up(&bed, 1, &served).await;

    // Every link reset while all ten wait; each borrower sees its call fail, then
    // returns the broken connection.
    assert_eq!(bed.proxy.reset().await, SIZE);
    for lease in &held {
        let error = within(WAIT, "call on a reset link", lease.call("x"))
            .await
            .unwrap_err();
        assert!(matches!(error, CallError::Closed(_)), "{error:?}");
    }
    drop(held);

    let results = all_served(waiters).await;
    for (n, result) in results.iter().enumerate() {
        assert!(
            result.broken.is_empty(),
            "waiter {n} got broken connections {:?}",
            result.broken
        );
        assert!(
            !bed.old.contains(&result.id),
            "waiter {n} got reset {}",
            result.id
        );
    }
    assert_eq!(
        *served.borrow(),
        (0..WAITERS).collect::<Vec<_>>(),
        "served first come, first served"
    );
    let closed = bed.events.wait_closed(&bed.old, WAIT).await;
    assert_eq!(closed.len(), SIZE);
    assert_back_to_full(&mut bed).await;
}

#[actix::test]
async fn broken_connections_returned_before_the_pool_notices_cost_each_at_most_one_call() {
    let mut bed = start().await;
    let held = lease_all(&bed).await;
    let served = Rc::new(RefCell::new(Vec::new()));
    let waiters = line_up(&bed, 3, &served).await;

    // The server closes every connection, and the proxy keeps the close from the
    // client (a downstream blackhole holds the FIN): when the leases come back, the
    // pool cannot know they are broken, and hands each to a waiter.
    bed.proxy
        .inject(Direction::Downstream, Fault::Blackhole)
        .await;
    server_disconnects_everyone(&bed.server).await;
    drop(held);
    let old = bed.old.clone();
    wait_status(
        &bed.pool,
        &bed.authority,
        WAIT,
        "a call on every broken one",
        |s| {
            let calling = s
                .connections
                .iter()
                .filter(|c| old.contains(&c.id) && c.in_flight == 1);
            calling.count() == SIZE
        },
    )
    .await;
    // The close arrives; each call on a broken connection fails.
    bed.proxy.heal().await;

    let results = all_served(waiters).await;
    let mut broken = Vec::new();
    for (n, result) in results.iter().enumerate() {
        assert!(
            !bed.old.contains(&result.id),
            "waiter {n} called through closed {}",
            result.id
        );
        for id in &result.broken {
            assert!(bed.old.contains(id), "waiter {n}: {id} broke, not closed");
        }
        broken.extend(result.broken.iter().copied());
    }
    // A broken connection fails one call and is then known to be broken: it is never
    // handed to a second waiter.
    let unique: BTreeSet<ConnectionId> = broken.iter().copied().collect();
    assert_eq!(unique.len(), broken.len(), "handed on twice: {broken:?}");
    assert_eq!(
        unique, bed.old,
        "each broken connection cost exactly one call"
    );
    assert_eq!(
        *served.borrow(),
        (0..WAITERS).collect::<Vec<_>>(),
        "first checkouts answered first come, first served"
    );
    bed.events.wait_closed(&bed.old, WAIT).await;
    assert_back_to_full(&mut bed).await;
}

#[actix::test]
async fn under_churn_every_borrower_finishes_and_every_failure_is_typed() {
    const CALLS: usize = 3;
    let mut bed = start().await;
    // Measure one request's bytes on the wire, so that each link carries a few.
    let before = bed.proxy.stats().await.forwarded_upstream;
    let lease = within(WAIT, "checkout", bed.pool.checkout(&bed.authority))
        .await
        .unwrap();
    echo(&lease, "measure 00").await;
    drop(lease);
    let request_bytes = bed.proxy.stats().await.forwarded_upstream - before;
    // Every link, open or opened later, closes after about three more requests.
    bed.proxy
        .inject(
            Direction::Upstream,
            Fault::CloseAfter(request_bytes * 3 + request_bytes / 2),
        )
        .await;

    let started = Instant::now();
    let mut borrowers = Vec::new();
    for n in 0..WAITERS {
        let (pool, authority) = (bed.pool.clone(), bed.authority.clone());
        borrowers.push(actix::spawn(async move {
            let (mut done, mut failures) = (0, 0);
            while done < CALLS {
                // Churn must not cost anyone a checkout: broken connections are
                // replaced while the borrowers wait.
                let lease = pool
                    .checkout(&authority)
                    .await
                    .unwrap_or_else(|error| panic!("borrower {n}: checkout failed: {error:?}"));
                // Same length as the measured request.
                let text = format!("measure {:02}", (n * CALLS + done) % 100);
                match lease.call(FrameRequest::new(payload(&text))).await {
                    Ok(reply) => {
                        assert_eq!(&reply[..], text.as_bytes());
                        done += 1;
                    }
                    Err(CallError::Closed(reason)) if !reason.is_requested() => {
                        failures += 1;
                        assert!(failures < 50, "borrower {n}: {failures} failures");
                    }
                    Err(error) => panic!("borrower {n}: unexpected {error:?}"),
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for borrower in borrowers {
        failures += within(WAIT * 2, "a borrower under churn", borrower)
            .await
            .expect("the borrower did not panic");
    }
    let churned = bed.proxy.stats().await.closes;
    // Thirty calls at about three a link need at least ten links, so the fault
    // closed at least five and cost at least one call: the churn was real.
    assert!(
        churned >= SIZE as u64,
        "the fault closed only {churned} links"
    );
    assert!(failures >= 1, "no call met a closing link");
    // Not a speed assertion: a bound on how long churn may hold anyone up.
    assert!(started.elapsed() < WAIT * 2);

    bed.proxy.heal().await;
    assert_back_to_full(&mut bed).await;
}
