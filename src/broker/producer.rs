//! Ordered publishing: one connection per producer at a time, moved without
//! reordering.
//!
//! ```text
//!  Unpinned ──publish──▶ Repinning ──got a connection──▶ Pinned ──its connection closes,
//!     ▲                      │ no connection:                │   is draining, or refuses
//!     │                      └─ queued ones fail             ▼   a message as closing
//!     └────────── nothing queued ◀──────────────────── Moving (waits until every
//!                 Repinning ◀── something queued ◀──── message written is answered)
//! ```
//! A producer's messages are written to its connection's mailbox in the order they
//! were published, so they go out on the wire in that order. When it must move, new
//! messages queue (up to `max_unconfirmed`) until every message written on the old
//! connection has been confirmed or failed; only then does anything go out on the
//! new one. So the server never sees a later message before an earlier one that
//! is still on its way, and each message's publisher learns exactly which ones were
//! not confirmed. Messages the old connection refused because it was closing were
//! never written, and are sent again in their place on the new connection.

use std::collections::VecDeque;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::messages::{BrokerError, Confirmed, ProducerId, Unconfirmed};
use super::{answered, confirmation, Broker, BrokerProtocol, Fence};
use crate::transport::Connector;
use crate::{Call, CallError, SharedConnection, Spread};

pub(super) type Outcome = Result<Confirmed, Unconfirmed>;

/// One ordered producer's state.
pub(super) struct Producer<C: Connector, P: BrokerProtocol> {
    state: State<C, P>,
    /// Messages written and not yet answered.
    outstanding: usize,
    /// Messages waiting for a connection, in publish order.
    queue: VecDeque<Queued>,
    /// The order number of the next message published.
    next: u64,
}

enum State<C: Connector, P: BrokerProtocol> {
    Unpinned,
    Repinning,
    Pinned(SharedConnection<C, P>),
    Moving,
}

pub(super) struct Queued {
    /// Publish order within the producer.
    order: u64,
    /// The server's fence number for it (see [`FrameKind::PublishOrdered`]).
    ///
    /// [`FrameKind::PublishOrdered`]: crate::protocol::frame::FrameKind::PublishOrdered
    fence: u64,
    topic: Bytes,
    payload: Bytes,
    reply: oneshot::Sender<Outcome>,
}

impl<C: Connector, P: BrokerProtocol> Default for Producer<C, P> {
    fn default() -> Self {
        Self {
            state: State::Unpinned,
            outstanding: 0,
            queue: VecDeque::new(),
            next: 0,
        }
    }
}

impl<C: Connector, P: BrokerProtocol> Producer<C, P> {
    /// Nothing written, nothing queued: the producer can be forgotten without
    /// breaking its order.
    pub(super) fn is_idle(&self) -> bool {
        self.outstanding == 0 && self.queue.is_empty()
    }

    /// The messages written and unanswered plus those queued.
    pub(super) fn unconfirmed(&self) -> usize {
        self.outstanding + self.queue.len()
    }

    /// The messages written and unanswered.
    pub(super) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The messages waiting for a connection.
    pub(super) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether it is pinned to connection `id`.
    pub(super) fn is_on(&self, id: crate::ConnectionId) -> bool {
        matches!(&self.state, State::Pinned(connection) if connection.id() == id)
    }
}

impl<C: Connector, P: BrokerProtocol> Broker<C, P> {
    /// Publishes in order for `id`; the receiver resolves exactly once.
    pub(super) fn publish_ordered(
        &mut self,
        id: ProducerId,
        topic: Bytes,
        payload: Bytes,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Outcome> {
        let (reply, receiver) = oneshot::channel();
        if !self.producers.contains_key(&id) && self.producers.len() >= self.config.max_producers {
            self.producers.retain(|_, producer| !producer.is_idle());
            if self.producers.len() >= self.config.max_producers {
                let limit = self.config.max_producers;
                self.refuse(
                    reply,
                    BrokerError::Overloaded {
                        what: "max_producers",
                        limit,
                    },
                );
                return receiver;
            }
        }
        let limit = self.config.max_unconfirmed;
        let producer = self.producers.entry(id).or_default();
        if producer.unconfirmed() >= limit {
            let error = BrokerError::Overloaded {
                what: "max_unconfirmed",
                limit,
            };
            self.refuse(reply, error);
            return receiver;
        }
        let order = producer.next;
        producer.next += 1;
        let fence = self.next_fence;
        self.next_fence += 1;
        let message = Queued {
            order,
            fence,
            topic,
            payload,
            reply,
        };
        match &producer.state {
            State::Pinned(connection) => {
                let connection = connection.clone();
                // Normally empty: a message waits only while there is no connection.
                producer.queue.push_back(message);
                let queued: Vec<Queued> = producer.queue.drain(..).collect();
                for message in queued {
                    self.write(id, &connection, message, ctx);
                }
            }
            State::Unpinned => {
                producer.queue.push_back(message);
                self.repin(id, ctx);
            }
            _ => producer.queue.push_back(message),
        }
        receiver
    }

    fn refuse(&mut self, reply: oneshot::Sender<Outcome>, error: BrokerError) {
        self.stats.unconfirmed += 1;
        let _ = reply.send(Err(Unconfirmed { error }));
    }

    /// Writes one message on the producer's connection and files its answer.
    fn write(
        &mut self,
        id: ProducerId,
        connection: &SharedConnection<C, P>,
        message: Queued,
        ctx: &mut Context<Self>,
    ) {
        let Queued {
            order,
            fence,
            topic,
            payload,
            reply,
        } = message;
        // Fenced: should this message reach the server late, after one the producer
        // sent later on another connection, the server refuses it.
        let request = self.protocol.publish_ordered(
            topic.clone(),
            Fence {
                instance: self.instance,
                producer: id.0,
                number: fence,
            },
            payload.clone(),
        );
        // A fresh sender per message is never parked by the mailbox's capacity, so the
        // message is queued now, behind the producer's earlier ones: this is what
        // keeps the order. The bound is `max_unconfirmed`, checked above.
        let answer = connection.addr().clone().send(Call::new(request));
        let on = connection.id();
        if let Some(producer) = self.producers.get_mut(&id) {
            producer.outstanding += 1;
        }
        ctx.spawn(answer.into_actor(self).map(move |answer, this, ctx| {
            // A call still in the mailbox of a connection that stopped (a drained one
            // closes as soon as it is quiet) was never handled, so never written:
            // like a refusal as closing, it goes again.
            let outcome = match answer {
                Err(actix::MailboxError::Closed) => Err(Unconfirmed {
                    error: BrokerError::Call(CallError::Closing),
                }),
                answer => confirmation(&this.protocol, answered(answer).map_err(BrokerError::Call)),
            };
            let Some(producer) = this.producers.get_mut(&id) else {
                return;
            };
            producer.outstanding -= 1;
            match outcome {
                // Refused before it was written: it goes again, in its place.
                Err(Unconfirmed {
                    error: BrokerError::Call(CallError::Closing),
                }) => {
                    let at = producer
                        .queue
                        .partition_point(|queued| queued.order < order);
                    producer.queue.insert(
                        at,
                        Queued {
                            order,
                            fence,
                            topic,
                            payload,
                            reply,
                        },
                    );
                    this.stats.resent += 1;
                    if producer.is_on(on) {
                        producer.state = State::Moving;
                    }
                }
                outcome => {
                    let broken = matches!(
                        &outcome,
                        Err(Unconfirmed {
                            error: BrokerError::Call(CallError::Closed(_))
                        })
                    );
                    if broken && producer.is_on(on) {
                        producer.state = State::Moving;
                    }
                    match &outcome {
                        Ok(_) => this.stats.confirmed += 1,
                        Err(_) => this.stats.unconfirmed += 1,
                    }
                    let _ = reply.send(outcome);
                }
            }
            this.settle(id, ctx);
        }));
    }

    /// Moves the producers pinned to a connection that closes or drains.
    pub(super) fn unpin_all(&mut self, connection: crate::ConnectionId, ctx: &mut Context<Self>) {
        let moving: Vec<ProducerId> = self
            .producers
            .iter_mut()
            .filter(|(_, producer)| producer.is_on(connection))
            .map(|(id, producer)| {
                producer.state = State::Moving;
                *id
            })
            .collect();
        for id in moving {
            self.settle(id, ctx);
        }
    }

    /// Once a moving producer has nothing written on its old connection, pins it
    /// anew if it has messages waiting.
    fn settle(&mut self, id: ProducerId, ctx: &mut Context<Self>) {
        let Some(producer) = self.producers.get_mut(&id) else {
            return;
        };
        if !matches!(producer.state, State::Moving) || producer.outstanding > 0 {
            return;
        }
        if producer.queue.is_empty() {
            producer.state = State::Unpinned;
        } else {
            self.repin(id, ctx);
        }
    }

    /// Gets the producer a connection and writes what it has queued.
    fn repin(&mut self, id: ProducerId, ctx: &mut Context<Self>) {
        let Some(producer) = self.producers.get_mut(&id) else {
            return;
        };
        producer.state = State::Repinning;
        self.stats.repins += 1;
        let pool = self.pool.clone();
        let authority = self.authority.clone();
        // The producer's whole window counts on the connection it pins, so that
        // producers spread over the connections (and grow the pool) as their
        // publishes would, instead of all pinning the first one while it looks idle.
        let window = self.config.max_unconfirmed;
        let pick = async move {
            pool.shared_claiming(&authority, Spread::TwoChoices, None, window)
                .await
        };
        ctx.spawn(pick.into_actor(self).map(move |picked, this, ctx| {
            let Some(producer) = this.producers.get_mut(&id) else {
                return;
            };
            match picked {
                Ok(connection) => {
                    producer.state = State::Pinned(connection.clone());
                    let queued: Vec<Queued> = producer.queue.drain(..).collect();
                    for message in queued {
                        this.write(id, &connection, message, ctx);
                    }
                }
                Err(error) => {
                    producer.state = State::Unpinned;
                    let queued: Vec<Queued> = producer.queue.drain(..).collect();
                    for message in queued {
                        this.refuse(message.reply, BrokerError::Pool(error.clone()));
                    }
                }
            }
        }));
    }
}
