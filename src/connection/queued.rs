//! Calls waiting for room: past `max_in_flight`, a connection configured with
//! `max_waiting_calls` keeps calls here, first come first served, instead of refusing
//! them with `Overloaded`. Each keeps its own deadline; none has reached the wire.
//!
//! Like the pending table, the queue lives behind `Rc<RefCell<..>>`: a call's reply
//! sender is handed over by actix after the handler returns (see `CallReply`).

use std::collections::VecDeque;
use std::time::Duration;

use actix::dev::OneshotSender;
use tokio::time::Instant;

use crate::protocol::Protocol;
use crate::CallError;

type ReplySender<R> = OneshotSender<Result<R, CallError>>;

/// A call waiting for room, with everything needed to send it later.
pub(super) struct QueuedCall<P: Protocol> {
    pub(super) request: P::Request,
    pub(super) deadline: Instant,
    pub(super) timeout: Duration,
    pub(super) blocking: bool,
    /// `None` for a call sent with `do_send`.
    pub(super) sender: Option<ReplySender<P::Reply>>,
}

impl<P: Protocol> QueuedCall<P> {
    /// Whether its caller is gone (dropped its future): nobody wants it sent.
    pub(super) fn is_abandoned(&self) -> bool {
        self.sender
            .as_ref()
            .is_some_and(|sender| sender.is_closed())
    }

    pub(super) fn fail(self, error: CallError) {
        if let Some(sender) = self.sender {
            let _ = sender.send(Err(error));
        }
    }
}

pub(super) struct QueuedCalls<P: Protocol> {
    calls: VecDeque<QueuedCall<P>>,
}

impl<P: Protocol> QueuedCalls<P> {
    pub(super) fn new() -> Self {
        Self {
            calls: VecDeque::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.calls.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    pub(super) fn push(&mut self, call: QueuedCall<P>) {
        self.calls.push_back(call);
    }

    /// The call that has waited longest.
    pub(super) fn pop(&mut self) -> Option<QueuedCall<P>> {
        self.calls.pop_front()
    }

    /// Fails every call whose deadline has passed with `Timeout`; returns how many did,
    /// with the earliest deadline still ahead.
    pub(super) fn expire(&mut self, now: Instant) -> (u64, Option<Instant>) {
        let mut expired = 0;
        let mut next: Option<Instant> = None;
        let mut kept = VecDeque::with_capacity(self.calls.len());
        for call in self.calls.drain(..) {
            if call.deadline <= now {
                let after = call.timeout;
                call.fail(CallError::Timeout { after });
                expired += 1;
            } else {
                next = Some(next.map_or(call.deadline, |n| n.min(call.deadline)));
                kept.push_back(call);
            }
        }
        self.calls = kept;
        (expired, next)
    }

    /// Fails every waiting call with `error`, exactly once each; returns how many.
    pub(super) fn fail_all(&mut self, error: &CallError) -> usize {
        let failed = self.calls.len();
        for call in self.calls.drain(..) {
            call.fail(error.clone());
        }
        failed
    }
}
