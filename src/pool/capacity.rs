//! How the Pool opens, counts and replaces connections: demand, backoff, failure
//! accrual, and what a connection's `Closed` event changes.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use super::*;

impl<C: Connector, P: Protocol> Pool<C, P> {
    /// The group of `authority`, created (and filled to `min_idle`) if new.
    pub(super) fn group_for(&mut self, authority: &Authority) -> Arc<Group<C, P>> {
        if let Some(group) = self.registry.get(authority) {
            return group;
        }
        let group = Arc::new(Group::new(
            authority.clone(),
            self.config.clone(),
            self.addr.clone(),
            self.config.min_idle,
            self.config.max_size,
            self.connection.max_in_flight(),
        ));
        group.lock().phase = self.phase;
        self.registry.insert(group.clone());
        tracing::debug!(parent: &self.span, %authority, "authority registered");
        self.replenish(&group, Duration::ZERO);
        group
    }

    /// Connections open or opening across all authorities.
    pub(super) fn total_open(&self) -> usize {
        self.registry
            .all()
            .iter()
            .map(|group| {
                let state = group.lock();
                state.members + state.connecting
            })
            .sum()
    }

    /// Opens what `group` wants, within its `max_size` and the pool's
    /// `max_connections`, after `delay` (or the backoff, after failures).
    pub(super) fn replenish(&mut self, group: &Arc<Group<C, P>>, delay: Duration) {
        let global_room = self
            .config
            .max_connections
            .saturating_sub(self.total_open());
        let mut state = group.lock();
        state.demand_signalled = false;
        if state.down && state.connecting == 0 && state.phase == Phase::Open {
            // A down authority has one probe at a time; this one was lost (a
            // restart of the pool dropped the old probe with its context).
            state.connecting += 1;
            let delay = self.backoff(state.failures);
            drop(state);
            self.open(group.clone(), delay);
            return;
        }
        // At most `max_connecting` attempts at once: each that finishes replenishes
        // again, so the rest follow as they do.
        let attempt_room = self.config.max_connecting.saturating_sub(state.connecting);
        let count = state
            .wanted()
            .min(state.room())
            .min(global_room)
            .min(attempt_room);
        // A request to grow is answered now or dropped (no room): shared use asks
        // again if the load is still there, and a stale request must not open a
        // connection long after the load is gone.
        state.grow_wanted = 0;
        if count == 0 {
            // Nothing is on its way for the shared waiters: what is open serves them.
            state.serve_shared_waiters(&group.authority);
            let starved = global_room == 0 && state.wanted().min(state.room()) > 0;
            drop(state);
            if starved {
                self.make_room(group);
            }
            return;
        }
        let delay = if state.failures > 0 {
            self.backoff(state.failures)
        } else {
            delay
        };
        state.connecting += count;
        drop(state);
        for _ in 0..count {
            self.open(group.clone(), delay);
        }
    }

    /// Closes one idle connection of another authority (above its `min_idle`) so that
    /// `group`, which wants connections, gets room under `max_connections`; its
    /// `Closed` event then lets `group` open one. Without this an authority could
    /// wait for others' idle connections to time out.
    fn make_room(&mut self, group: &Arc<Group<C, P>>) {
        // One at a time: its close makes the room, then the next starved look may
        // find none wanting.
        if self
            .making_room
            .is_some_and(|id| self.tracked.contains_key(&id))
        {
            return;
        }
        for other in self.registry.all() {
            if Arc::ptr_eq(&other, group) {
                continue;
            }
            let evicted = {
                let mut state = other.lock();
                if state.idle.is_empty() || state.members - state.retiring <= state.min_idle {
                    continue;
                }
                // The bottom of the stack has been idle longest.
                state.retire_idle(0)
            };
            self.counters.evicted += 1;
            self.making_room = Some(evicted.id);
            tracing::debug!(parent: &self.span, from = %other.authority, to = %group.authority, "closing an idle connection to make room");
            close(&evicted, true);
            return;
        }
    }

    pub(super) fn replenish_all(&mut self) {
        for group in self.registry.all() {
            self.replenish(&group, Duration::ZERO);
        }
    }

    /// The delay before the next connect after `failures` failures in a row:
    /// exponential from `backoff_base`, capped at `backoff_max`, jittered.
    pub(super) fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let delay = self
            .config
            .backoff_base
            .saturating_mul(1 << doublings)
            .min(self.config.backoff_max);
        jitter(delay)
    }

    /// Starts one connect attempt (already counted in `connecting`).
    pub(super) fn open(&mut self, group: Arc<Group<C, P>>, delay: Duration) {
        let Some(attempts) = &self.attempts else {
            // Not started: `started` opens what is wanted.
            group.lock().connecting -= 1;
            return;
        };
        let connector = self.connector.clone();
        let timeout = self.config.connect_timeout;
        let attempt = Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let authority = group.authority.clone();
            let connect = AssertUnwindSafe(connector.connect(&authority)).catch_unwind();
            let result = match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(result)) => result,
                // A connector that panics is a bug, but the attempt must still be
                // counted out, or the pool would wait for it forever.
                Ok(Err(panic)) => {
                    let message = panic_message(&*panic);
                    tracing::error!(%authority, message, "connector panicked");
                    Err(ConnectError::Io {
                        authority,
                        source: Arc::new(std::io::Error::other(format!(
                            "the connector panicked: {message}"
                        ))),
                    })
                }
                Err(_) => Err(ConnectError::Timeout {
                    authority,
                    after: timeout,
                }),
            };
            Attempt { group, result }
        });
        // The receiver lives in the context as long as this sender is kept (until a
        // restart, which drops both), so the send cannot fail.
        let _ = attempts.send(attempt);
    }

    pub(super) fn on_connect(
        &mut self,
        group: Arc<Group<C, P>>,
        result: Result<C::Io, ConnectError>,
        ctx: &mut Context<Self>,
    ) {
        match result {
            Ok(io) => self.on_connected(group, io, ctx),
            Err(error) => self.on_connect_failed(group, error),
        }
    }

    pub(super) fn on_connected(
        &mut self,
        group: Arc<Group<C, P>>,
        io: C::Io,
        ctx: &mut Context<Self>,
    ) {
        if group.lock().phase != Phase::Open {
            group.lock().connecting -= 1;
            // Shutting down: the transport closes as it drops.
            return;
        }
        let now = Instant::now();
        let id = ConnectionId::next();
        let gauge = InFlightGauge::default();
        let metrics = group.lock().metrics.connection();
        let mut builder = Connection::builder(io, self.protocol.clone())
            .config(self.connection.clone())
            .peer(group.peer.clone())
            .events(ctx.address().recipient())
            .gauge(gauge.clone())
            .metrics(metrics)
            .id(id)
            .without_rtt_events();
        if let Some(pushes) = &self.pushes {
            builder = builder.pushes(pushes.clone());
        }
        let addr = match &mut self.placement {
            Some(place) => place(builder),
            None => builder.start(),
        };
        let expires = self.config.max_lifetime.map(|lifetime| {
            // Up to a tenth shorter, so a pool opened at once does not expire at once.
            later(
                now,
                lifetime.saturating_sub(lifetime.mul_f64(fastrand::f64() / 10.0)),
            )
        });
        let member = Arc::new(Member::new(id, addr, gauge, now, expires));
        self.tracked.insert(
            id,
            Tracked {
                member: member.clone(),
                group: group.clone(),
            },
        );
        self.counters.created += 1;
        tracing::debug!(parent: &self.span, authority = %group.authority, %id, "connected");

        let mut state = group.lock();
        state.connecting -= 1;
        state.members += 1;
        state.metrics.connected();
        if state.down {
            tracing::info!(parent: &self.span, authority = %group.authority, "authority up again");
        }
        state.failures = 0;
        state.down = false;
        state.last_connect_error = None;
        // This connection may be the replacement an expired member waits for.
        let replacement = state.replacing > 0;
        state.replacing = state.replacing.saturating_sub(1);
        let unwanted = group.offer(&mut state, member, now, now);
        drop(state);
        if let Some(member) = unwanted {
            self.retire(&group, &member, true);
        }
        if replacement {
            // The expired member may go now. (Only then: a sweep of the group per
            // connect made filling a pool of N connections cost N² steps.)
            self.maintain_group(&group, now, ctx);
        }
        self.answer_ready(&group.authority);
        self.replenish(&group, Duration::ZERO);
    }

    pub(super) fn on_connect_failed(&mut self, group: Arc<Group<C, P>>, error: ConnectError) {
        self.counters.connect_failures += 1;
        let mut state = group.lock();
        state.connecting -= 1;
        state.failures = state.failures.saturating_add(1);
        state.last_connect_error = Some(error.clone());
        state.metrics.connect_failed(&error);
        let failures = state.failures;
        tracing::debug!(parent: &self.span, authority = %group.authority, failures, %error, "connect failed");
        if !state.down && failures >= self.config.failure_threshold {
            state.down = true;
            self.counters.marked_down += 1;
            tracing::warn!(parent: &self.span, authority = %group.authority, failures, %error, "authority marked down");
            state.fail_waiters(&PoolError::Down {
                authority: group.authority.clone(),
                failures,
                error: error.clone(),
            });
        } else if !state.down {
            // Shared waiters that wait for growth while connections are open are
            // served by those now: the connect they waited for failed.
            state.serve_shared_waiters_now(&group.authority);
            // Whoever waits longest hears why: the cause, not a bare timeout later
            // (even when this attempt was opened for `min_idle` rather than for it).
            state.fail_front_waiter(PoolError::Connect(error.clone()));
        }
        let probe = state.down && state.connecting == 0 && state.phase == Phase::Open;
        if probe {
            state.connecting += 1;
        }
        drop(state);
        self.fail_ready(&group.authority, &error);
        if probe {
            let delay = self.backoff(failures);
            self.open(group, delay);
        } else {
            self.replenish(&group, Duration::ZERO);
        }
    }

    pub(super) fn on_closed(
        &mut self,
        id: ConnectionId,
        reason: crate::CloseReason,
        ctx: &mut Context<Self>,
    ) {
        let Some(tracked) = self.tracked.remove(&id) else {
            return;
        };
        *self.counters.closed.entry(reason.kind()).or_default() += 1;
        let flaps = {
            let mut state = tracked.group.lock();
            state.forget(&tracked.member);
            state.metrics.closed(&reason);
            // A connection that fails soon after it opened (a peer at its client
            // limit, say) is no better than a failed connect: its replacements back
            // off exponentially too, or the pool would reconnect in a tight loop.
            let age = Instant::now().saturating_duration_since(tracked.member.created);
            if reason.is_requested() {
                0
            } else if age < self.config.backoff_max {
                state.flaps = state.flaps.saturating_add(1);
                state.flaps
            } else {
                state.flaps = 0;
                0
            }
        };
        self.checks.remove(&id);
        self.draining.retain(|held| held.member.id != id);
        tracing::debug!(parent: &self.span, authority = %tracked.group.authority, %id, %reason, "connection closed");
        // A connection that failed is replaced after a jittered pause, so a pool
        // whose server restarted does not reconnect all at once.
        let delay = if reason.is_requested() {
            Duration::ZERO
        } else if flaps > 0 {
            self.backoff(flaps + 1)
        } else {
            jitter(self.config.backoff_base)
        };
        self.replenish(&tracked.group, delay);
        // Other authorities may have waited for room under `max_connections`; only
        // then is it worth looking at all of them.
        if self.total_open() + 1 >= self.config.max_connections {
            self.replenish_all();
        }
        self.check_shutdown(ctx);
    }

    pub(super) fn answer_ready(&mut self, authority: &Authority) {
        let Some(group) = self.registry.get(authority) else {
            return;
        };
        let ready = {
            let state = group.lock();
            state.members - state.retiring >= state.min_idle
        };
        if ready {
            for (_, tx) in extract(&mut self.ready, |(a, _)| a == authority) {
                let _ = tx.send(Ok(()));
            }
        }
    }

    pub(super) fn fail_ready(&mut self, authority: &Authority, error: &ConnectError) {
        for (_, tx) in extract(&mut self.ready, |(a, _)| a == authority) {
            let _ = tx.send(Err(PoolError::Connect(error.clone())));
        }
    }
}

/// The text of a panic's payload, if it has one.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}
