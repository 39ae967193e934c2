//! The table of calls awaiting replies, and of sends awaiting the transport.
//!
//! Replies are matched by id (a hash map) or in order (a queue), as the protocol says.
//! A call that times out is *abandoned*, not forgotten: its reply may still come, and
//! must be dropped rather than taken for another call's reply or for a protocol error.
//! Under id correlation abandoned ids sit in a bounded set; past the bound the oldest
//! are forgotten and replies for ids at or below the newest forgotten one are dropped
//! as stale. Under in-order correlation an abandoned call keeps its place in the queue
//! until its reply arrives.
//!
//! The table lives behind `Rc<RefCell<..>>` because a call's reply sender is handed
//! over by actix *after* the handler returns (see `CallReply`): the handler writes the
//! request, and the response files the call with its sender a moment later, before
//! anything else runs on the actor.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::dev::OneshotSender;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::time::Instant;

use crate::protocol::Correlation;
use crate::{CallError, CloseReason};

type ReplySender<R> = OneshotSender<Result<R, CallError>>;
type SendSender = OneshotSender<Result<(), CallError>>;

/// A call waiting for its reply.
struct Waiting<R> {
    /// `None` for a call sent with `do_send`.
    sender: Option<ReplySender<R>>,
    deadline: Instant,
    timeout: Duration,
    /// A blocking call: bounded by its own timeout, not by the heartbeat.
    blocking: bool,
}

impl<R> Waiting<R> {
    fn finish(self, result: Result<R, CallError>) {
        if let Some(sender) = self.sender {
            // The caller may have given up (dropped its future); nobody to tell then.
            let _ = sender.send(result);
        }
    }
}

/// A place in the in-order reply queue.
enum Slot<R> {
    Call { waiting: Waiting<R> },
    Abandoned,
    Heartbeat { sent_at: Instant },
}

/// What an inbound reply turned out to be.
pub(crate) enum Matched {
    /// Delivered to its caller.
    Delivered,
    /// The reply to a call that had timed out; dropped.
    Late,
    /// The reply to a heartbeat ping (in-order protocols), sent at this instant.
    Heartbeat(Instant),
    /// No call was made with this id, or nothing is outstanding.
    Unknown(u64),
    /// This id was answered already.
    Duplicate(u64),
}

pub(crate) struct PendingCalls<R> {
    correlation: Correlation,
    by_id: FxHashMap<u64, Waiting<R>>,
    abandoned: FxHashSet<u64>,
    abandoned_order: VecDeque<u64>,
    abandoned_cap: usize,
    /// Replies for ids below this are dropped as stale (their abandonment was forgotten).
    stale_below: u64,
    in_order: VecDeque<Slot<R>>,
    /// Calls waiting for a reply (abandoned ones and heartbeats excluded).
    waiting: usize,
    /// Of those, the blocking ones.
    blocking: usize,
    /// `waiting`, published for readers on other threads (a pool picking the least
    /// loaded connection, or checking a returned one is quiet).
    gauge: InFlightGauge,
    /// Sends waiting until the transport has taken the bytes up to an offset, in
    /// offset order.
    flushes: VecDeque<Flush>,
}

/// A send waiting for the transport to take its bytes.
struct Flush {
    /// Done once the transport has taken this many bytes in all.
    offset: u64,
    deadline: Instant,
    timeout: Duration,
    /// `None` for a send made with `do_send`, or one that timed out.
    sender: Option<SendSender>,
}

impl<R> PendingCalls<R> {
    pub(crate) fn new(
        correlation: Correlation,
        abandoned_cap: usize,
        gauge: InFlightGauge,
    ) -> Self {
        Self {
            gauge,
            correlation,
            by_id: FxHashMap::default(),
            abandoned: FxHashSet::default(),
            abandoned_order: VecDeque::new(),
            abandoned_cap,
            stale_below: 0,
            in_order: VecDeque::new(),
            waiting: 0,
            blocking: 0,
            flushes: VecDeque::new(),
        }
    }

    /// Calls waiting for a reply.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Requests in the pipeline that count against `max_in_flight`: waiting calls, and
    /// for in-order protocols also abandoned ones (they still hold a place in line).
    pub(crate) fn depth(&self) -> usize {
        match self.correlation {
            Correlation::ById => self.by_id.len(),
            Correlation::InOrder => self.in_order.len(),
        }
    }

    /// Blocking calls waiting for a reply (abandoned ones excluded).
    pub(crate) fn blocking(&self) -> usize {
        self.blocking
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.waiting == 0 && self.flushes.is_empty()
    }

    /// Files a call that was just written, with the caller's reply sender (`None` for a
    /// call sent with `do_send`, whose reply is dropped on arrival).
    pub(crate) fn insert(
        &mut self,
        id: u64,
        deadline: Instant,
        timeout: Duration,
        blocking: bool,
        sender: Option<ReplySender<R>>,
    ) {
        let waiting = Waiting {
            sender,
            deadline,
            timeout,
            blocking,
        };
        self.blocking += usize::from(blocking);
        match self.correlation {
            Correlation::ById => {
                self.by_id.insert(id, waiting);
            }
            Correlation::InOrder => self.in_order.push_back(Slot::Call { waiting }),
        }
        self.set_waiting(self.waiting + 1);
    }

    fn set_waiting(&mut self, waiting: usize) {
        self.waiting = waiting;
        self.gauge.set(waiting);
    }

    /// Files a heartbeat ping in the in-order queue.
    pub(crate) fn insert_heartbeat(&mut self, sent_at: Instant) {
        debug_assert_eq!(self.correlation, Correlation::InOrder);
        self.in_order.push_back(Slot::Heartbeat { sent_at });
    }

    /// Matches an inbound reply with its call and delivers it.
    pub(crate) fn complete(
        &mut self,
        id: u64,
        next_id: u64,
        result: Result<R, CallError>,
    ) -> Matched {
        match self.correlation {
            Correlation::ById => {
                if let Some(waiting) = self.by_id.remove(&id) {
                    self.set_waiting(self.waiting - 1);
                    self.blocking -= usize::from(waiting.blocking);
                    waiting.finish(result);
                    Matched::Delivered
                } else if self.abandoned.remove(&id) {
                    Matched::Late
                } else if id >= next_id || id == 0 {
                    // Ids start at 1: 0 was never sent.
                    Matched::Unknown(id)
                } else if id < self.stale_below {
                    Matched::Late
                } else {
                    Matched::Duplicate(id)
                }
            }
            Correlation::InOrder => match self.in_order.pop_front() {
                Some(Slot::Call { waiting, .. }) => {
                    self.set_waiting(self.waiting - 1);
                    self.blocking -= usize::from(waiting.blocking);
                    waiting.finish(result);
                    Matched::Delivered
                }
                Some(Slot::Abandoned) => Matched::Late,
                Some(Slot::Heartbeat { sent_at }) => Matched::Heartbeat(sent_at),
                None => Matched::Unknown(id),
            },
        }
    }

    /// Fails every call whose deadline has passed with `Timeout`, and returns how many
    /// did, with the earliest deadline still ahead.
    pub(crate) fn expire(&mut self, now: Instant) -> (u64, Option<Instant>) {
        let mut expired = 0;
        let mut next: Option<Instant> = None;
        match self.correlation {
            Correlation::ById => {
                let mut ids = Vec::new();
                for (id, waiting) in &self.by_id {
                    if waiting.deadline <= now {
                        ids.push(*id);
                    } else {
                        next = Some(next.map_or(waiting.deadline, |n| n.min(waiting.deadline)));
                    }
                }
                for id in ids {
                    if let Some(waiting) = self.by_id.remove(&id) {
                        self.blocking -= usize::from(waiting.blocking);
                        let after = waiting.timeout;
                        waiting.finish(Err(CallError::Timeout { after }));
                        self.abandon(id);
                        expired += 1;
                    }
                }
            }
            Correlation::InOrder => {
                let mut blocking = 0;
                for slot in &mut self.in_order {
                    let Slot::Call { waiting, .. } = slot else {
                        continue;
                    };
                    if waiting.deadline <= now {
                        let Slot::Call { waiting, .. } = std::mem::replace(slot, Slot::Abandoned)
                        else {
                            unreachable!("matched as a call above")
                        };
                        blocking += usize::from(waiting.blocking);
                        let after = waiting.timeout;
                        waiting.finish(Err(CallError::Timeout { after }));
                        expired += 1;
                    } else {
                        next = Some(next.map_or(waiting.deadline, |n| n.min(waiting.deadline)));
                    }
                }
                self.blocking -= blocking;
            }
        }
        self.set_waiting(self.waiting - expired as usize);
        // Sends: a timed-out one is told so and leaves the queue. Its bytes stay in
        // the write buffer (a frame is never taken back half written).
        self.flushes.retain_mut(|flush| {
            if flush.deadline <= now {
                if let Some(sender) = flush.sender.take() {
                    let _ = sender.send(Err(CallError::Timeout {
                        after: flush.timeout,
                    }));
                }
                false
            } else {
                next = Some(next.map_or(flush.deadline, |n| n.min(flush.deadline)));
                true
            }
        });
        (expired, next)
    }

    fn abandon(&mut self, id: u64) {
        if self.abandoned_order.len() == self.abandoned_cap {
            if let Some(forgotten) = self.abandoned_order.pop_front() {
                // Ids are not reused, so a reply for a forgotten id can only be late.
                if self.abandoned.remove(&forgotten) {
                    self.stale_below = self.stale_below.max(forgotten + 1);
                }
            }
        }
        self.abandoned.insert(id);
        self.abandoned_order.push_back(id);
        if self.abandoned_order.len() > self.abandoned.len() * 2 + 64 {
            // Late replies removed ids from the set; drop them from the order too so it
            // stays proportional to the set.
            let abandoned = &self.abandoned;
            self.abandoned_order.retain(|id| abandoned.contains(id));
        }
    }

    /// Files a send that completes once the transport has taken `offset` bytes in all,
    /// or fails with `Timeout` at `deadline`.
    pub(crate) fn insert_flush(
        &mut self,
        offset: u64,
        deadline: Instant,
        timeout: Duration,
        sender: Option<OneshotSender<Result<(), CallError>>>,
    ) {
        self.flushes.push_back(Flush {
            offset,
            deadline,
            timeout,
            sender,
        });
    }

    /// Completes the sends whose bytes the transport has taken.
    pub(crate) fn flushed(&mut self, written: u64) {
        while let Some(flush) = self.flushes.front() {
            if flush.offset > written {
                break;
            }
            if let Some(Flush {
                sender: Some(sender),
                ..
            }) = self.flushes.pop_front()
            {
                let _ = sender.send(Ok(()));
            }
        }
    }

    /// Fails everything pending with `reason`, exactly once each; returns how many calls
    /// failed.
    pub(crate) fn fail_all(&mut self, reason: &CloseReason) -> usize {
        let mut failed = 0;
        for (_, waiting) in self.by_id.drain() {
            waiting.finish(Err(CallError::Closed(reason.clone())));
            failed += 1;
        }
        for slot in self.in_order.drain(..) {
            if let Slot::Call { waiting, .. } = slot {
                waiting.finish(Err(CallError::Closed(reason.clone())));
                failed += 1;
            }
        }
        for flush in self.flushes.drain(..) {
            if let Some(sender) = flush.sender {
                let _ = sender.send(Err(CallError::Closed(reason.clone())));
            }
        }
        self.abandoned.clear();
        self.abandoned_order.clear();
        self.blocking = 0;
        self.set_waiting(0);
        failed
    }
}

/// A connection's count of calls awaiting replies, whether it is closing and its
/// last heartbeat round trip, readable from any thread.
///
/// Only the connection writes it (a plain store per change, no read-modify-write), so
/// keeping it costs the hot path next to nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlightGauge(Arc<GaugeValues>);

#[derive(Debug, Default)]
struct GaugeValues {
    in_flight: AtomicUsize,
    closing: AtomicBool,
    /// The last heartbeat round trip in nanoseconds; 0 until one completed.
    rtt_nanos: AtomicU64,
}

impl InFlightGauge {
    pub(crate) fn get(&self) -> usize {
        self.0.in_flight.load(Ordering::Relaxed)
    }

    fn set(&self, value: usize) {
        self.0.in_flight.store(value, Ordering::Relaxed);
    }

    /// Whether the connection is closing or closed: it takes no new calls.
    pub(crate) fn is_closing(&self) -> bool {
        self.0.closing.load(Ordering::Relaxed)
    }

    pub(crate) fn set_closing(&self) {
        self.0.closing.store(true, Ordering::Relaxed);
    }

    /// The last heartbeat round trip, if one completed.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        match self.0.rtt_nanos.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    pub(crate) fn set_rtt(&self, rtt: Duration) {
        let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.0.rtt_nanos.store(nanos, Ordering::Relaxed);
    }
}
