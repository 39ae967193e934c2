//! Connect attempts under way, polled inside the Pool's own task, only when they woke.
//!
//! Why not plain futures in the actor's context: an actix context polls every future
//! it holds whenever any one of them wakes, so with thousands of connects under way
//! (a pool filling to `min_idle`, or refilling after its peer restarted) each wake-up
//! cost thousands of polls. Why not a task per attempt: measured with the scale bench
//! (10,000 connections whose peer is blackholed, then 10,000 reconnects), spawning
//! the reconnects as tasks of their own made the heartbeat timeouts of about one
//! connection in five fire seconds late (up to 17 s instead of 3); polled here, in a
//! `FuturesUnordered` that polls only the attempts that woke, every one was detected
//! within the bound. The pool pushes attempts through [`Attempts`] and hears their
//! outcomes through the [`AttemptStream`] it added to its context.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures::future::LocalBoxFuture;
use futures::stream::{FuturesUnordered, Stream, StreamExt};

struct Shared<T> {
    running: RefCell<FuturesUnordered<LocalBoxFuture<'static, T>>>,
    /// The context's waker, to poll again once an attempt was added.
    waker: RefCell<Option<Waker>>,
}

/// Where the pool adds attempts. Dropping it and its stream drops (cancels) every
/// attempt under way.
pub(crate) struct Attempts<T>(Rc<Shared<T>>);

/// The outcomes, in the order they finish; never ends.
pub(crate) struct AttemptStream<T>(Rc<Shared<T>>);

impl<T> Attempts<T> {
    pub(crate) fn new() -> (Self, AttemptStream<T>) {
        let shared = Rc::new(Shared {
            running: RefCell::new(FuturesUnordered::new()),
            waker: RefCell::new(None),
        });
        (Self(shared.clone()), AttemptStream(shared))
    }

    pub(crate) fn push(&self, attempt: LocalBoxFuture<'static, T>) {
        self.0.running.borrow_mut().push(attempt);
        if let Some(waker) = self.0.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl<T> Stream for AttemptStream<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        {
            let mut waker = self.0.waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        // The attempts never touch this set, so polling them under the borrow is safe.
        match self.0.running.borrow_mut().poll_next_unpin(cx) {
            Poll::Ready(Some(outcome)) => Poll::Ready(Some(outcome)),
            // Empty: wait for the next push.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}
