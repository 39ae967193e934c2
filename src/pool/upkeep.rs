//! The Pool's upkeep: reaping idle and expired connections, health checks, and
//! connections returned with calls still in flight.

use super::*;

impl<C: Connector, P: Protocol> Pool<C, P> {
    /// Closes a member held by the actor (`Busy`): gracefully (calls in flight get
    /// their replies) or at once.
    pub(super) fn retire(&mut self, group: &Group<C, P>, member: &Member<C, P>, graceful: bool) {
        group.lock().mark_retiring(member);
        close(member, graceful);
    }

    /// Reaps idle and expired members of one group, starts health checks, and asks
    /// for replacements.
    pub(super) fn maintain_group(
        &mut self,
        group: &Arc<Group<C, P>>,
        now: Instant,
        ctx: &mut Context<Self>,
    ) {
        let config = self.config.clone();
        let mut idle_expired = Vec::new();
        let mut lifetime_expired = Vec::new();
        let mut to_check = Vec::new();
        {
            let mut state = group.lock();
            if state.phase != Phase::Open {
                return;
            }
            let mut expired_at_min = 0;
            let mut at = 0;
            // Oldest first: the bottom of the stack has been idle longest.
            while at < state.idle.len() {
                let above_min = state.members - state.retiring > state.min_idle;
                let idle = &state.idle[at];
                // A member in shared use with calls in flight is busy, not idle.
                // The clock first: the gauge is in another allocation per member.
                let idle_for_too_long = config
                    .idle_timeout
                    .is_some_and(|t| later(idle.since, t) <= now)
                    && idle.member.load() == 0;
                let expired = idle.member.is_expired(now);
                // A member in use is not checked: its heartbeat judges it, a ping
                // would queue behind its calls (on an in-order protocol), and a
                // failed check would abort the calls of everyone on it.
                let check_due = config
                    .health_check_interval
                    .is_some_and(|i| later(idle.checked, i) <= now)
                    && idle.member.load() == 0;
                if above_min && idle_for_too_long {
                    idle_expired.push(state.retire_idle(at));
                } else if above_min && expired {
                    lifetime_expired.push(state.retire_idle(at));
                } else if check_due {
                    if expired {
                        expired_at_min += 1;
                    }
                    to_check.push(state.take_idle(at));
                } else {
                    if expired {
                        expired_at_min += 1;
                    }
                    at += 1;
                }
            }
            // Expired members at `min_idle` stay in service until their replacements
            // connect; then they are above the minimum and go.
            state.replacing = expired_at_min;
            if expired_at_min > 0 && state.room() == 0 && state.retiring == 0 {
                // No room for a replacement (`min_idle == max_size`): retire one
                // expired member at a time, a dip of one below `min_idle`, or none
                // would ever be replaced.
                let oldest = state
                    .idle
                    .iter()
                    .position(|idle| idle.member.is_expired(now));
                if let Some(at) = oldest {
                    state.replacing -= 1;
                    lifetime_expired.push(state.retire_idle(at));
                }
            }
        }
        self.counters.idle_expired += idle_expired.len() as u64;
        self.counters.lifetime_expired += lifetime_expired.len() as u64;
        for member in idle_expired.iter().chain(&lifetime_expired) {
            close(member, true);
        }
        for idle in to_check {
            self.check(group.clone(), idle.member, idle.since, ctx);
        }
        self.replenish(group, Duration::ZERO);
    }

    pub(super) fn maintain(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        self.forget_silent_deaths(ctx);
        for group in self.registry.all() {
            self.maintain_group(&group, now, ctx);
        }
    }

    /// Counts out connections whose actor stopped without a `Closed` event (one
    /// started on an arbiter that had stopped, say): seen dead at two maintenance
    /// ticks in a row, so an event still in the mailbox is not pre-empted.
    fn forget_silent_deaths(&mut self, ctx: &mut Context<Self>) {
        let dead: Vec<ConnectionId> = self
            .tracked
            .iter()
            .filter(|(_, tracked)| !tracked.member.addr.connected())
            .map(|(id, _)| *id)
            .collect();
        let suspects = std::mem::take(&mut self.suspects);
        for id in dead {
            if suspects.contains(&id) {
                tracing::warn!(parent: &self.span, %id, "connection stopped without a Closed event");
                self.on_closed(id, crate::CloseReason::Stopped, ctx);
            } else {
                self.suspects.insert(id);
            }
        }
    }

    /// Pings a member taken out of the idle stack; back it goes if it answers.
    pub(super) fn check(
        &mut self,
        group: Arc<Group<C, P>>,
        member: Arc<Member<C, P>>,
        idle_since: Instant,
        ctx: &mut Context<Self>,
    ) {
        let id = member.id;
        let ping = member.addr.send(Ping);
        let timeout = self.config.health_check_timeout;
        self.checks.insert(
            id,
            Held {
                member,
                group,
                at: idle_since,
            },
        );
        let answered =
            async move { matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(Ok(_)))) };
        ctx.spawn(
            answered
                .into_actor(self)
                .map(move |alive, pool, _| pool.on_checked(id, alive)),
        );
    }

    pub(super) fn on_checked(&mut self, id: ConnectionId, alive: bool) {
        // Gone if the connection closed meanwhile, or the pool restarted.
        let Some(held) = self.checks.remove(&id) else {
            return;
        };
        if !alive {
            self.counters.health_check_failures += 1;
            tracing::debug!(parent: &self.span, %id, "health check failed");
            self.retire(&held.group, &held.member, false);
            return;
        }
        self.put_back(held.group, held.member, held.at);
    }

    /// Returns a `Busy` member to circulation, or closes it if nobody may have it.
    pub(super) fn put_back(
        &mut self,
        group: Arc<Group<C, P>>,
        member: Arc<Member<C, P>>,
        since: Instant,
    ) {
        let mut state = group.lock();
        if member.place() != Place::Busy {
            return;
        }
        state.busy -= 1;
        let unwanted = group.offer(&mut state, member, since, Instant::now());
        drop(state);
        if let Some(member) = unwanted {
            self.retire(&group, &member, true);
        }
    }

    /// Looks at leases returned with calls in flight.
    pub(super) fn poll_draining(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        for held in std::mem::take(&mut self.draining) {
            if held.member.place() == Place::Gone {
                continue;
            } else if held.member.gauge.get() == 0 {
                self.put_back(held.group, held.member, now);
            } else if now >= held.at {
                self.counters.drain_timeouts += 1;
                tracing::debug!(parent: &self.span, id = %held.member.id, "returned connection did not go quiet; closing it");
                self.retire(&held.group, &held.member, false);
            } else {
                self.draining.push(held);
            }
        }
        if self.draining.is_empty() {
            if let Some(tick) = self.drain_tick.take() {
                ctx.cancel_future(tick);
            }
        }
    }

    pub(super) fn arm_drain_tick(&mut self, ctx: &mut Context<Self>) {
        if self.drain_tick.is_none() && !self.draining.is_empty() {
            self.drain_tick =
                Some(ctx.run_interval(DRAIN_POLL, |pool, ctx| pool.poll_draining(ctx)));
        }
    }
}
