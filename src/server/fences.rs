//! Producer fences: the last fence number the server published for each ordered
//! producer, so that a message arriving late on an old connection is refused instead
//! of published after its producer's later ones.
//!
//! A client gives up on a connection before the server has read everything sent on
//! it (a heartbeat timeout on a link that is only slow, say): those frames still
//! arrive, after the producer has moved to a new connection and sent more. Each
//! ordered publish carries (instance, producer, fence number), increasing per
//! producer; a message whose number is not above the last one published for its
//! producer lost the race and is refused.
//!
//! The table is bounded by two generations: entries are written to the current one;
//! when it is full it becomes the previous one, and the old previous one is dropped.
//! A producer that publishes at least once a generation keeps its fence; one idle
//! for two generations loses it, long after anything it sent can still be in flight.

use rustc_hash::FxHashMap;

/// Who publishes: a client's instance number and one of its producers.
pub(super) type ProducerKey = (u64, u64);

/// The fence table (see the module docs).
#[derive(Debug)]
pub(super) struct Fences {
    current: FxHashMap<ProducerKey, u64>,
    previous: FxHashMap<ProducerKey, u64>,
    /// Entries per generation.
    generation: usize,
}

impl Fences {
    /// A table holding at most `capacity` producers (two generations of half each).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            current: FxHashMap::default(),
            previous: FxHashMap::default(),
            generation: (capacity / 2).max(1),
        }
    }

    /// Records `fence` for `producer` if it is above the last one; `false` if the
    /// message is stale (a later one, or the same one, was published already).
    pub(super) fn pass(&mut self, producer: ProducerKey, fence: u64) -> bool {
        let last = self
            .current
            .get(&producer)
            .or_else(|| self.previous.get(&producer))
            .copied();
        if last.is_some_and(|last| fence <= last) {
            return false;
        }
        if !self.current.contains_key(&producer) && self.current.len() >= self.generation {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(producer, fence);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Fences;

    #[test]
    fn a_fence_passes_only_above_the_last() {
        let mut fences = Fences::new(16);
        assert!(fences.pass((1, 1), 5));
        assert!(!fences.pass((1, 1), 5), "the same message twice");
        assert!(!fences.pass((1, 1), 3), "an earlier message late");
        assert!(
            fences.pass((1, 1), 9),
            "gaps are fine: unconfirmed messages"
        );
        assert!(fences.pass((1, 2), 1), "producers are fenced apart");
        assert!(fences.pass((2, 1), 1), "instances are fenced apart");
    }

    #[test]
    fn the_table_keeps_two_generations() {
        let mut fences = Fences::new(4);
        assert!(fences.pass((0, 1), 10));
        assert!(fences.pass((0, 2), 10));
        // A third producer starts a new generation; the first two are still known.
        assert!(fences.pass((0, 3), 10));
        assert!(!fences.pass((0, 1), 5));
        // Producer 1 is refreshed into the current generation.
        assert!(fences.pass((0, 1), 11));
        // Another generation: producer 2 was idle for two and is forgotten.
        assert!(fences.pass((0, 4), 10));
        assert!(fences.pass((0, 2), 1));
        assert!(fences.current.len() + fences.previous.len() <= 4);
    }
}
