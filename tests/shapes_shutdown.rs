//! Traffic shapes, shutdown: a `Drain` or `Close` that meets a lease being detached.
//! The promise: a shutdown ends as soon as every pooled connection has closed, and
//! says `Clean` when none had to be aborted; a connection taken out of the pool by
//! `Lease::detach` is its borrower's and is not waited for.
//!
//! 0.1 waited its whole `shutdown_timeout` when the last lease out was detached after
//! the drain began, and then reported `TimedOut { aborted: 0 }`.
//!
//! `cargo test --all-features --test shapes_shutdown`

mod pool_support;

use std::time::Duration;

use pool_support::*;
use switchboard::pool::{Close, Drain, ShutdownOutcome};
use switchboard::protocol::frame::FrameRequest;

/// How long after the detach the shutdown is given to end (virtual time); the
/// shutdown timeout is far longer.
const PROMPTLY: Duration = Duration::from_secs(1);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

#[actix::test]
async fn a_drain_or_close_meeting_a_detached_lease_ends_clean_at_once() {
    tokio::time::pause();
    for graceful in [true, false] {
        for (leases, idle) in [(1, 0), (1, 2), (3, 1)] {
            let shape = format!("graceful {graceful}, {leases} leased, {idle} idle");
            let (server, _, pool) = start_pool(
                config()
                    .min_idle(leases + idle)
                    .max_size(leases + idle)
                    .shutdown_timeout(SHUTDOWN_TIMEOUT),
            )
            .await;
            let a = server.authority();
            let mut out = Vec::new();
            for _ in 0..leases {
                out.push(pool.checkout(&a).await.unwrap());
            }
            let shutdown = {
                let addr = pool.addr().clone();
                actix::spawn(async move {
                    if graceful {
                        addr.send(Drain::default()).await
                    } else {
                        addr.send(Close::default()).await
                    }
                })
            };
            tokio::time::sleep(Duration::from_millis(10)).await;
            // Every lease is detached after the shutdown began; the borrower keeps
            // using its connection as its own (a drain leaves it open).
            let mut detached = Vec::new();
            for lease in out {
                detached.push(lease.detach());
            }
            let outcome = within(PROMPTLY, &shape, shutdown).await.unwrap().unwrap();
            assert_eq!(outcome, ShutdownOutcome::Clean, "{shape}");
            if graceful {
                for addr in &detached {
                    let call = addr.send(switchboard::Call::new(FrameRequest::new("mine")));
                    let reply = within(WAIT, "a call on a detached connection", call)
                        .await
                        .unwrap()
                        .unwrap();
                    assert_eq!(&reply[..], b"mine", "{shape}");
                }
            }
            drop(detached);
            until_server_open(&server, 0, WAIT).await;
        }
    }
}
