//! The server broker's topics: each one's sequence numbers, replay window and
//! subscribers, and what is remembered of a topic after it was reclaimed.
//!
//! # Lives and reclaiming
//! A topic's numbers are meaningful only within one *life* of it, named by a random
//! incarnation that every subscribe answer carries. A topic nobody subscribes to and
//! nobody publishes on for `topic_idle_timeout` is reclaimed: forgotten with its
//! retained messages. Its last number and life are remembered in a bounded table (as
//! many topics as `max_topics`, two generations, like the producer fences): a topic
//! created again while remembered goes on in the same life from that number, so a
//! subscriber that comes back is told exactly how many messages it missed (all those
//! after its number went with the topic). One forgotten longer ago starts a new life,
//! as a restarted server does: a returning subscriber sees another incarnation,
//! restarts its numbering and gets the new life's retained messages; what it missed
//! of the old life cannot be counted then.

use std::time::Duration;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use tokio::time::Instant;

use crate::ConnectionId;

/// One topic.
pub(super) struct Topic {
    pub(super) subscribers: Vec<ConnectionId>,
    /// Subscribers catching up, with the number of the next message each gets from
    /// `retained`. A live publish skips them: their replay reaches it in turn, so it
    /// never overtakes what they missed.
    pub(super) cursors: FxHashMap<ConnectionId, u64>,
    /// The sequence number of the last message published.
    pub(super) head: u64,
    pub(super) retained: std::collections::VecDeque<(u64, Bytes)>,
    /// This life of the topic (never 0).
    pub(super) incarnation: u64,
    /// The last publish, subscribe or unsubscribe.
    last_active: Instant,
}

impl Topic {
    /// A topic going on from a remembered `(head, incarnation)`, or a new life.
    pub(super) fn new(remembered: Option<(u64, u64)>) -> Self {
        let (head, incarnation) = remembered.unwrap_or_else(|| (0, fastrand::u64(1..)));
        Self {
            subscribers: Vec::new(),
            cursors: FxHashMap::default(),
            head,
            retained: std::collections::VecDeque::new(),
            incarnation,
            last_active: Instant::now(),
        }
    }

    /// The number of the oldest message retained (one past `head` if none is).
    pub(super) fn oldest(&self) -> u64 {
        self.retained.front().map_or(self.head + 1, |(seq, _)| *seq)
    }

    /// Something happened to it: its idle time starts again.
    pub(super) fn touch(&mut self) {
        self.last_active = Instant::now();
    }

    /// `connection` is no longer subscribed.
    pub(super) fn leave(&mut self, connection: ConnectionId) {
        self.subscribers.retain(|id| *id != connection);
        self.cursors.remove(&connection);
        self.touch();
    }

    /// Whether it had no subscriber and nothing happened to it for `timeout`.
    pub(super) fn is_idle(&self, now: Instant, timeout: Duration) -> bool {
        self.subscribers.is_empty() && now.saturating_duration_since(self.last_active) >= timeout
    }
}

/// The last number and life of topics reclaimed lately, bounded by two generations.
#[derive(Debug)]
pub(super) struct Reclaimed {
    current: FxHashMap<Bytes, (u64, u64)>,
    previous: FxHashMap<Bytes, (u64, u64)>,
    /// Entries per generation.
    generation: usize,
}

impl Reclaimed {
    /// A table remembering at most `capacity` topics.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            current: FxHashMap::default(),
            previous: FxHashMap::default(),
            generation: (capacity / 2).max(1),
        }
    }

    /// Remembers a reclaimed topic. One that never had a message leaves nothing to
    /// remember: a subscriber coming back to it missed nothing either way.
    pub(super) fn remember(&mut self, name: Bytes, topic: &Topic) {
        if topic.head == 0 {
            return;
        }
        if self.current.len() >= self.generation {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(name, (topic.head, topic.incarnation));
    }

    /// The remembered `(head, incarnation)` of `name`, forgotten here: the topic
    /// lives again.
    pub(super) fn take(&mut self, name: &Bytes) -> Option<(u64, u64)> {
        let current = self.current.remove(name);
        let previous = self.previous.remove(name);
        current.or(previous)
    }
}
