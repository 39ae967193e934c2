//! The snapshot a Pool reports for `GetStatus`.

use super::*;

impl<C: Connector, P: Protocol> Pool<C, P> {
    pub(super) fn status(&self) -> PoolStatus {
        let now = Instant::now();
        let mut authorities = Vec::new();
        let mut connections = 0;
        let mut counters = self.counters.clone();
        // One pass over the connections, bucketed by group; places are read below
        // with each group's lock held, so a snapshot's counts agree with its list.
        let mut by_group: FxHashMap<*const Group<C, P>, Vec<&Tracked<C, P>>> = FxHashMap::default();
        for tracked in self.tracked.values() {
            by_group
                .entry(Arc::as_ptr(&tracked.group))
                .or_default()
                .push(tracked);
        }
        for group in self.registry.all() {
            let state = group.lock();
            counters.checkouts.add(&state.counters);
            connections += state.members;
            let members = by_group
                .get(&Arc::as_ptr(&group))
                .into_iter()
                .flatten()
                .filter_map(|tracked| {
                    let state = match tracked.member.place() {
                        Place::Idle => MemberState::Idle,
                        Place::Leased => MemberState::Leased,
                        Place::Busy => MemberState::Busy,
                        Place::Gone | Place::Detached => return None,
                    };
                    Some(MemberStatus {
                        id: tracked.member.id,
                        state,
                        in_flight: tracked.member.gauge.get(),
                        rtt: tracked.member.gauge.rtt(),
                        age: now - tracked.member.created,
                    })
                })
                .collect();
            authorities.push(AuthorityStatus {
                authority: group.authority.clone(),
                size: state.members,
                idle: state.idle.len(),
                leased: state.leased,
                busy: state.busy,
                connecting: state.connecting,
                waiters: state.waiters(),
                min_idle: state.min_idle,
                max_size: state.max_size,
                down: state.down,
                consecutive_failures: state.failures,
                last_connect_error: state.last_connect_error.clone(),
                checkouts: state.counters,
                connections: members,
            });
        }
        PoolStatus {
            authorities,
            connections,
            counters,
        }
    }
}
