//! The Connection's I/O driver: one future in the actor's context that reads frames,
//! runs the connection's single timer and flushes the write buffer.
//!
//! Why one hand-written future instead of `add_stream` plus `run_interval` timers:
//! - actix polls every context item after draining the mailbox, so flushing here
//!   writes everything the handlers just encoded in one system call: writes batch
//!   themselves under load and go out at once when idle;
//! - `StreamHandler` yields after 16 frames; under load that costs a trip through
//!   the scheduler per 16 replies, while this reads up to [`READ_BUDGET`];
//! - one `Sleep`, re-armed only when it fires or when an earlier deadline appears,
//!   serves the heartbeat, every call timeout and the close timeout, so a connection
//!   costs one timer however many calls it carries.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix::fut::ActorFuture;
use futures::{Sink, Stream};
use tokio::time::{Instant, Sleep};

use super::Connection;
use crate::protocol::Protocol;
use crate::transport::Transport;
use crate::CloseReason;

/// Frames decoded per poll before the driver lets other work run. Large enough that
/// replies to a full burst of callers go out in one pass, small enough that one busy
/// connection cannot starve its arbiter.
const READ_BUDGET: usize = 1024;

/// Flush-and-refill rounds per poll while deliveries wait for room (see `refill`).
const REFILL_ROUNDS: usize = 8;

/// Frames per poll above which the connection counts as busy.
const BUSY_FRAMES: usize = 32;
/// Spare read capacity a busy connection keeps, so a burst of replies comes in with
/// one read instead of one per 8 KiB; an idle connection keeps its small buffer.
const BUSY_READ_SPARE: usize = 64 * 1024;

pub(super) struct Driver {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
    /// Whether the last poll read more than [`BUSY_FRAMES`] frames.
    busy: bool,
    /// Whether the transport's own flush is unfinished (TLS or buffered writers hold
    /// bytes after taking them from the write buffer).
    flush_pending: bool,
}

impl Driver {
    pub(super) fn new(deadline: Instant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed: deadline,
            busy: false,
            flush_pending: false,
        }
    }
}

impl<T: Transport, P: Protocol> ActorFuture<Connection<T, P>> for Driver {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Connection<T, P>,
        ctx: &mut actix::Context<Connection<T, P>>,
        task: &mut Context<'_>,
    ) -> Poll<()> {
        let this = self.get_mut();
        if act.is_finished() {
            return Poll::Ready(());
        }

        // Read first, so that the timer below judges liveness by what just arrived.
        if this.busy {
            let buffer = act.framed.read_buffer_mut();
            if buffer.capacity() - buffer.len() < BUSY_READ_SPARE / 2 {
                buffer.reserve(BUSY_READ_SPARE);
            }
        }
        let mut frames = 0;
        let read_before = act.framed.get_ref().read();
        loop {
            match Pin::new(&mut act.framed).poll_next(task) {
                Poll::Ready(Some(Ok(frame))) => {
                    act.on_frame(frame, ctx);
                    if act.is_finished() {
                        return Poll::Ready(());
                    }
                    frames += 1;
                    if frames == READ_BUDGET {
                        task.waker().wake_by_ref();
                        break;
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    act.shutdown(P::close_reason(error), ctx);
                    return Poll::Ready(());
                }
                Poll::Ready(None) => {
                    act.shutdown(CloseReason::PeerClosed, ctx);
                    return Poll::Ready(());
                }
                Poll::Pending => break,
            }
        }
        // Any bytes prove the peer alive, a whole frame or not: a large frame that
        // arrives slowly must not be taken for silence.
        if frames > 0 || act.framed.get_ref().read() != read_before {
            act.last_read = Instant::now();
        }
        this.busy = frames > BUSY_FRAMES;

        // Nobody holds an address any more, so no call can come: close gracefully
        // rather than keep a socket and its heartbeat alive for no one.
        // A close already under way keeps its own deadline.
        if !ctx.connected() && act.closing.is_none() {
            act.begin_close(act.config.close_timeout);
        }

        // The timer: fire, re-arm, and poll again so the new deadline registers a wake-up.
        loop {
            if act.timer_deadline != this.armed {
                this.armed = act.timer_deadline;
                this.sleep.as_mut().reset(this.armed);
            }
            if this.sleep.as_mut().poll(task).is_pending() {
                break;
            }
            match act.on_timer(Instant::now(), ctx) {
                Some(next) => act.timer_deadline = next,
                None => return Poll::Ready(()),
            }
        }

        // Calls waiting for room: replies read and calls timed out above made some.
        if !act.queued.borrow().is_empty() {
            act.admit_queued();
        }

        // Flush, and refill from the deliveries waiting for room while the transport
        // takes what is written; a few rounds per poll, then let other work run.
        let mut rounds = 0;
        loop {
            if this.flush_pending || !act.framed.write_buffer().is_empty() {
                let written_before = act.framed.get_ref().written();
                let flushed = Pin::new(&mut act.framed).poll_flush(task);
                this.flush_pending = flushed.is_pending();
                let progressed = act.framed.get_ref().written() != written_before;
                act.note_written(progressed, this.flush_pending);
                if let Poll::Ready(Err(error)) = flushed {
                    act.shutdown(P::close_reason(error), ctx);
                    return Poll::Ready(());
                }
                // A stall that just began may need the timer sooner than it is armed.
                if act.timer_deadline < this.armed {
                    this.armed = act.timer_deadline;
                    this.sleep.as_mut().reset(this.armed);
                    if this.sleep.as_mut().poll(task).is_ready() {
                        task.waker().wake_by_ref();
                    }
                }
            }
            if act.outbox.is_empty() || !act.refill() {
                break;
            }
            rounds += 1;
            if rounds == REFILL_ROUNDS {
                task.waker().wake_by_ref();
                break;
            }
        }

        // Calls that waited for write-buffer room, which the flush just made.
        if !act.queued.borrow().is_empty()
            && act.framed.write_buffer().len() < act.config.max_write_buffer
            && act.pending.borrow().depth() < act.config.max_in_flight
        {
            task.waker().wake_by_ref();
        }

        if act.is_drained() && !this.flush_pending {
            act.shutdown(CloseReason::Closed, ctx);
            return Poll::Ready(());
        }
        // The mailbox batch that ran before this poll is over.
        act.batch_now = None;
        let in_flight = act.pending.borrow().waiting();
        act.metrics.in_flight(in_flight);
        Poll::Pending
    }
}
