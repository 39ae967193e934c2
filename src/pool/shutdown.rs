//! `Drain` and `Close`: how a Pool stops taking checkouts and closes its connections.

use super::*;

impl<C: Connector, P: Protocol> Pool<C, P> {
    /// Stops taking checkouts and closes every connection, gracefully or at once.
    pub(super) fn begin_shutdown(
        &mut self,
        graceful: bool,
        timeout: Option<Duration>,
        ctx: &mut Context<Self>,
    ) {
        let (phase, error) = if graceful {
            (Phase::Draining, PoolError::Draining)
        } else {
            (Phase::Closed, PoolError::Closed)
        };
        let timeout = timeout.unwrap_or(self.config.shutdown_timeout);
        // Every shutdown ends by its own timeout at the latest, also one that joins
        // a shutdown already under way with a longer one.
        self.arm_shutdown_timeout(timeout, ctx);
        if self.phase == Phase::Closed || (self.phase == Phase::Draining && graceful) {
            return;
        }
        self.phase = phase;
        tracing::debug!(parent: &self.span, graceful, "pool shutting down");
        for (_, tx) in self.ready.drain(..) {
            let _ = tx.send(Err(error.clone()));
        }
        let mut to_close = Vec::new();
        for group in self.registry.all() {
            let mut state = group.lock();
            state.phase = phase;
            state.fail_waiters(&error);
            while !state.idle.is_empty() {
                to_close.push(state.retire_idle(0));
            }
        }
        for member in &to_close {
            close(member, graceful);
        }
        if !graceful {
            // Leased and busy connections too: calls in flight fail with `Aborted`.
            for member in self.pooled() {
                member.addr.do_send(Abort);
            }
        }
    }

    /// When `timeout` has passed, aborts what is still open and ends the shutdown
    /// under way, if there still is one.
    fn arm_shutdown_timeout(&mut self, timeout: Duration, ctx: &mut Context<Self>) {
        ctx.run_later(timeout, |pool, ctx| {
            if pool.shutdown.is_some() {
                tracing::debug!(parent: &pool.span, "shutdown timed out; aborting the rest");
                let mut aborted = 0;
                for member in pool.pooled() {
                    member.addr.do_send(Abort);
                    aborted += 1;
                }
                pool.finish_shutdown(ShutdownOutcome::TimedOut { aborted }, ctx);
            }
        });
    }

    /// The connections the pool still owns: every one it tracks but those detached,
    /// which belong to their borrowers now.
    pub(super) fn pooled(&self) -> impl Iterator<Item = &Member<C, P>> {
        self.tracked
            .values()
            .map(|tracked| &*tracked.member)
            .filter(|member| member.place() != Place::Detached)
    }

    /// Whether every pooled connection has closed.
    pub(super) fn is_empty(&self) -> bool {
        self.pooled().next().is_none()
    }

    pub(super) fn check_shutdown(&mut self, ctx: &mut Context<Self>) {
        if self.shutdown.is_some() && self.is_empty() {
            self.finish_shutdown(ShutdownOutcome::Clean, ctx);
        }
    }

    pub(super) fn finish_shutdown(&mut self, outcome: ShutdownOutcome, ctx: &mut Context<Self>) {
        self.phase = Phase::Closed;
        for group in self.registry.all() {
            let mut state = group.lock();
            state.phase = Phase::Closed;
            state.fail_waiters(&PoolError::Closed);
        }
        if let Some(shutdown) = self.shutdown.take() {
            for waiter in shutdown.waiters {
                let _ = waiter.send(outcome);
            }
        }
        tracing::debug!(parent: &self.span, "pool closed");
        ctx.stop();
    }

    pub(super) fn shutdown_message(
        &mut self,
        graceful: bool,
        timeout: Option<Duration>,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<ShutdownOutcome> {
        let (tx, rx) = oneshot::channel();
        if self.phase == Phase::Closed && self.shutdown.is_none() {
            return Box::pin(async { ShutdownOutcome::AlreadyClosed });
        }
        self.shutdown
            .get_or_insert_with(|| Shutdown {
                waiters: Vec::new(),
            })
            .waiters
            .push(tx);
        self.begin_shutdown(graceful, timeout, ctx);
        self.check_shutdown(ctx);
        Box::pin(async move { rx.await.unwrap_or(ShutdownOutcome::AlreadyClosed) })
    }
}
