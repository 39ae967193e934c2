//! Subscriptions: one server subscription per topic, fanned out here to every local
//! subscriber, and kept alive across connection closes and drains.
//!
//! ```text
//!  new topic ──subscribe on a connection──▶ joining ──confirmed──▶ active(source)
//!                                              │ failed: waiters get the error;
//!                                              └ with subscribers left, again after backoff
//!  active: source closes ──▶ joining elsewhere, catching up from the last seq seen
//!          source drains ──▶ joining elsewhere while the source still delivers;
//!                            once confirmed the old one is unsubscribed
//! ```
//! Every message carries its sequence number in the topic, and a copy at or below
//! the last number seen is a duplicate and dropped: while a subscription moves, the
//! old connection delivers until the new one is confirmed. When it comes back after
//! a close, the server replays what it still has after that number, so a short
//! outage loses nothing.
//!
//! Numbers belong to one life of the server. The subscribe names the server
//! incarnation the last number came from, and the answer names the server's own: a
//! restarted server replays everything it has retained (its numbering started
//! again at 1), and the numbering here restarts with it. What the joining connection
//! delivers before the answer (the replay comes first) is held until the answer says
//! which life it belongs to.

use actix::{ActorFutureExt, AsyncContext, Context, Recipient, WrapFuture};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::fanout::Subscriber;
use super::messages::{BrokerError, Delivery, SubscriptionId, SubscriptionStatus};
use super::{answered, Broker, BrokerProtocol, Joined, Message, Resume};
use crate::transport::Connector;
use crate::{
    Abort, Call, CallError, ConnectError, ConnectionId, PoolError, SharedConnection, Spread,
};

/// Pushes held per topic while its subscribe is answered (the replay, and what is
/// published meanwhile); past it, the rest are lost, and counted as missed when the
/// answer's head or a later number shows the gap.
const HELD_PUSHES: usize = 16_384;

type Waiter = (
    Subscriber,
    oneshot::Sender<Result<SubscriptionId, BrokerError>>,
);

/// One topic subscribed through this broker.
pub(super) struct Topic<C: Connector, P: BrokerProtocol> {
    subscribers: Vec<Subscriber>,
    /// Subscribers waiting for the server's confirmation.
    waiting: Vec<Waiter>,
    /// The connection the server confirmed the subscription on.
    source: Option<SharedConnection<C, P>>,
    /// The connection a subscribe is under way on (its messages are taken already).
    joining: Option<ConnectionId>,
    /// Whether a subscribe is under way (a connection being picked, or the call).
    subscribing: bool,
    last_seq: u64,
    /// The server incarnation `last_seq` belongs to (0 before the first answer).
    incarnation: u64,
    /// What the joining connection delivered before its answer.
    held: Vec<Message>,
    /// Failed attempts in a row, for the backoff.
    failures: u32,
    /// Why the last attempt failed, while the topic is not live.
    last_error: Option<BrokerError>,
}

impl<C: Connector, P: BrokerProtocol> Default for Topic<C, P> {
    fn default() -> Self {
        Self {
            subscribers: Vec::new(),
            waiting: Vec::new(),
            source: None,
            joining: None,
            subscribing: false,
            last_seq: 0,
            incarnation: 0,
            held: Vec::new(),
            failures: 0,
            last_error: None,
        }
    }
}

impl<C: Connector, P: BrokerProtocol> Topic<C, P> {
    fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && self.waiting.is_empty()
    }

    fn source_id(&self) -> Option<ConnectionId> {
        self.source.as_ref().map(SharedConnection::id)
    }

    /// Every local subscriber: those waiting for the subscribe's answer get what
    /// arrives before it too, since they are subscribed on the server already.
    pub(super) fn subscribers_mut(&mut self) -> impl Iterator<Item = &mut Subscriber> {
        self.subscribers
            .iter_mut()
            .chain(self.waiting.iter_mut().map(|(subscriber, _)| subscriber))
    }
}

/// Whether `error` says the subscription itself is refused, so that trying again
/// would fail the same way: the server answered with an error, the topic cannot be
/// encoded, the answer broke the protocol, or the protocol has no subscriptions.
fn refuses_subscription(error: &BrokerError) -> bool {
    matches!(
        error,
        BrokerError::Call(CallError::Remote(_) | CallError::Encode(_))
            | BrokerError::BadAnswer(_)
            | BrokerError::Unsupported(_)
            | BrokerError::Pool(PoolError::Connect(ConnectError::Unsupported { .. }))
    )
}

/// Whether the pool is closed or closing, so that there is nothing to subscribe on.
fn pool_gone(error: &BrokerError) -> bool {
    matches!(
        error,
        BrokerError::Pool(PoolError::Closed | PoolError::Draining)
    )
}

/// Checks a sequenced server's subscribe answer against what was asked: numbers
/// that no server could mean are refused, with what is wrong. No more messages can
/// be missed than lie between the number resumed from and the head, when the
/// numbering goes on from it (the same server life, or one that does not name its
/// lives, and a head not behind it); otherwise between 0 and the head.
fn check_joined<P: BrokerProtocol>(resume: Resume, joined: Joined) -> Result<(), &'static str> {
    if !P::SEQUENCED {
        return Ok(());
    }
    let from = if numbering_goes_on(resume, joined) {
        resume.after
    } else {
        0
    };
    if joined.missed > joined.head.saturating_sub(from) {
        return Err("subscribe answer: more messages missed than the topic has had");
    }
    Ok(())
}

/// Whether the topic's numbering in `joined` goes on from where `resume` left it:
/// the same server life (or a server that does not name its lives), and a head not
/// behind the number resumed from. A head behind it in the same life means the
/// server forgot the topic (it reclaims idle ones) and numbers it from 1 again.
fn numbering_goes_on(resume: Resume, joined: Joined) -> bool {
    let same_life = joined.incarnation == 0 || joined.incarnation == resume.incarnation;
    same_life && joined.head >= resume.after
}

impl<C: Connector, P: BrokerProtocol> Broker<C, P> {
    pub(super) fn subscribe(
        &mut self,
        topic: Bytes,
        subscriber: Recipient<Delivery>,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<SubscriptionId, BrokerError>> {
        let (reply, receiver) = oneshot::channel();
        self.next_subscription += 1;
        let id = SubscriptionId(self.next_subscription);
        let entry = self.topics.entry(topic.clone()).or_default();
        let subscriber = Subscriber::new(id, subscriber);
        let pending = entry.source.is_none() && !entry.subscribing && !entry.subscribers.is_empty();
        if entry.source.is_some() || pending {
            // Live, or pending and waiting out its backoff: the topic was subscribed
            // before, so nothing new to check; this subscriber joins it as it is.
            entry.subscribers.push(subscriber);
            self.subscriptions.insert(id, topic);
            let _ = reply.send(Ok(id));
        } else {
            entry.waiting.push((subscriber, reply));
            self.subscriptions.insert(id, topic.clone());
            self.join(topic, ctx);
        }
        receiver
    }

    /// Subscribes `topic` on a connection other than its current source, catching up
    /// from the last message seen.
    fn join(&mut self, name: Bytes, ctx: &mut Context<Self>) {
        let Some(topic) = self.topics.get_mut(&name) else {
            return;
        };
        if topic.subscribing {
            return;
        }
        topic.subscribing = true;
        let pool = self.pool.clone();
        let authority = self.authority.clone();
        let pick = async move { pool.shared_by(&authority, Spread::TwoChoices, None).await };
        ctx.spawn(pick.into_actor(self).map(move |picked, this, ctx| {
            let Some(topic) = this.topics.get_mut(&name) else {
                return;
            };
            match picked {
                Ok(connection) => {
                    topic.joining = Some(connection.id());
                    this.unsubscribes.subscribing_on(&connection);
                    topic.held.clear();
                    let resume = Resume {
                        after: topic.last_seq,
                        incarnation: topic.incarnation,
                    };
                    let request = this.protocol.subscribe(name.clone(), resume);
                    let answer = connection.addr().send(Call::new(request));
                    let joined = answer.into_actor(this).map(move |answer, this, ctx| {
                        let answer = answered(answer)
                            .map_err(BrokerError::Call)
                            .and_then(|reply| this.protocol.subscribed(reply));
                        this.joined(name, connection, resume, answer, ctx);
                    });
                    ctx.spawn(joined);
                }
                Err(error) => this.join_failed(name, BrokerError::Pool(error), ctx),
            }
        }));
    }

    fn joined(
        &mut self,
        name: Bytes,
        connection: SharedConnection<C, P>,
        resume: Resume,
        answer: Result<Joined, BrokerError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(topic) = self.topics.get_mut(&name) else {
            // Everyone unsubscribed meanwhile: the server need not keep it.
            if answer.is_ok() {
                self.unsubscribe_on(name, connection, ctx);
            }
            return;
        };
        topic.subscribing = false;
        topic.joining = None;
        let mut held = std::mem::take(&mut topic.held);
        if answer.is_ok() && !connection.addr().connected() {
            // The connection closed right behind its answer, and its `Closed` was
            // handled before this: it can be no source. Subscribe again elsewhere
            // (from the same number: what it delivered is dropped with it).
            tracing::debug!(topic = ?name, connection = %connection.id(), "joined a closed connection; again");
            return self.join(name, ctx);
        }
        let answer = answer.and_then(|joined| {
            if let Err(absurd) = check_joined::<P>(resume, joined) {
                // Numbers that cannot be are a protocol violation by the server: its
                // other numbers on this connection cannot be trusted either, so the
                // connection goes (its topics move) and the subscribe fails with a
                // typed error. The broker itself goes on.
                tracing::warn!(topic = ?name, connection = %connection.id(), ?resume, ?joined, absurd, "absurd subscribe answer; dropping the connection");
                connection.addr().do_send(Abort);
                return Err(BrokerError::BadAnswer(absurd));
            }
            Ok(joined)
        });
        let Joined {
            missed,
            head,
            incarnation,
        } = match answer {
            Ok(joined) => joined,
            Err(error) => return self.join_failed(name, error, ctx),
        };
        let restarted = if !P::SEQUENCED {
            // Numbers are this broker's own count, and go on.
            false
        } else if incarnation == 0 {
            // A server that does not name its life: a head behind us tells.
            head < topic.last_seq
        } else {
            // Another life of the server, or the same one with a head behind the
            // number resumed from: the server forgot the topic (an idle topic is
            // reclaimed) and numbers it from 1 again.
            (topic.incarnation != 0 && incarnation != topic.incarnation)
                || !numbering_goes_on(resume, Joined::new(missed, head, incarnation))
        };
        if restarted {
            // The server numbers this topic from scratch: what it sends now (its
            // replay included) is new, not a repeat.
            tracing::info!(topic = ?name, head, last_seq = topic.last_seq, "topic numbering restarted");
            topic.last_seq = 0;
        }
        topic.incarnation = incarnation;
        topic.failures = 0;
        topic.last_error = None;
        if P::SEQUENCED {
            // Where this connection's numbers go on from: a first subscribe gets
            // what is published after `head`; a resume gets the replay after what it
            // saw, less what the server no longer has (in a new life, from 0).
            let from = if resume == Resume::default() {
                head
            } else if restarted {
                missed
            } else {
                resume.after.saturating_add(missed)
            };
            topic.last_seq = topic.last_seq.max(from);
        }
        if missed > 0 {
            // Told to those who were subscribed before, not to the waiting ones:
            // these messages were published before they subscribed.
            for subscriber in &mut topic.subscribers {
                subscriber.lose(missed);
            }
            self.stats.missed = self.stats.missed.saturating_add(missed);
        }
        let old = topic.source.replace(connection);
        for (subscriber, reply) in topic.waiting.drain(..) {
            let _ = reply.send(Ok(subscriber.id));
            topic.subscribers.push(subscriber);
        }
        let now_on = topic.source_id();
        if missed > 0 {
            tracing::warn!(topic = ?name, missed, "messages lost while resubscribing");
        }
        if let Some(old) = old.filter(|old| Some(old.id()) != now_on) {
            self.stats.resubscribes += 1;
            // Moved off a draining connection: stop its copies (it closes soon, and
            // the server drops its subscriptions then at the latest).
            self.unsubscribe_on(name.clone(), old, ctx);
        }
        if let Some(source) = now_on {
            // In sequence: the connection may have carried new pushes of an earlier
            // subscription before the replay, and the first new one must not make
            // the replay look like duplicates.
            // A plain server's messages have no number and arrive in order.
            if P::SEQUENCED {
                held.sort_by_key(|message| message.seq);
                held.dedup_by_key(|message| message.seq);
            }
            for push in held {
                self.deliver(source, push, ctx);
            }
        }
        // Everything up to `head` was published before the subscription or replayed
        // ahead of the answer: what of it did not arrive (lost on the way, or past
        // what could be held) never will, and a later subscribe catches up from
        // `head`, not from before it.
        if let Some(topic) = self.topics.get_mut(&name) {
            if P::SEQUENCED && topic.last_seq < head {
                let gap = head - topic.last_seq;
                topic.last_seq = head;
                self.topic_gap(&name, gap);
            }
        }
    }

    fn join_failed(&mut self, name: Bytes, error: BrokerError, ctx: &mut Context<Self>) {
        let Some(topic) = self.topics.get_mut(&name) else {
            return;
        };
        topic.subscribing = false;
        topic.joining = None;
        topic.held.clear();
        let retry = !refuses_subscription(&error) && !pool_gone(&error);
        if retry {
            // A subscription is desired state: the server could not be reached (or
            // the connection failed), so it is kept, pending, and tried again with
            // backoff; its callers learn that it is not live yet from
            // `GetSubscriptionStatus`.
            for (subscriber, reply) in topic.waiting.drain(..) {
                let _ = reply.send(Ok(subscriber.id));
                topic.subscribers.push(subscriber);
            }
        } else {
            // Invalid (the server refused it, the topic cannot be encoded, the
            // answer broke the protocol) or nothing to subscribe on: a typed error
            // at once, and not kept.
            for (subscriber, reply) in topic.waiting.drain(..) {
                self.subscriptions.remove(&subscriber.id);
                let _ = reply.send(Err(error.clone()));
            }
        }
        topic.last_error = Some(error.clone());
        if topic.is_unused() {
            self.topics.remove(&name);
            return;
        }
        if topic.source.is_some() {
            // A move failed; the old source still delivers until it closes, and its
            // close starts another attempt.
            return;
        }
        if pool_gone(&error) {
            // The pool is gone for good: nothing to subscribe on, ever. Retrying
            // would keep this broker alive after every handle to it is dropped.
            tracing::debug!(topic = ?name, "pool closed; not subscribing again");
            return;
        }
        let (first, max) = self.config.resubscribe_backoff;
        let wait = first.saturating_mul(1 << topic.failures.min(16)).min(max);
        // Less up to half of it, at random (as the pool's reconnects): topics that
        // failed together (their connection closed under them) do not come back in
        // one wave. `fastrand`'s thread-local generator, which the simulation seeds.
        let wait = wait.mul_f64(0.5 + fastrand::f64() / 2.0);
        topic.failures = topic.failures.saturating_add(1);
        tracing::debug!(topic = ?name, %error, ?wait, "subscribe failed; trying again");
        ctx.run_later(wait, move |this, ctx| {
            // Unless a new subscriber's join got there first.
            if this
                .topics
                .get(&name)
                .is_some_and(|topic| topic.source.is_none())
            {
                this.join(name, ctx);
            }
        });
    }

    /// A connection closed (`closed`) or began to drain: its subscriptions move.
    pub(super) fn move_subscriptions(
        &mut self,
        connection: ConnectionId,
        closed: bool,
        ctx: &mut Context<Self>,
    ) {
        if !closed && !P::SEQUENCED {
            // A plain server cannot replay, and two connections subscribed at once
            // would deliver some messages twice with no number to tell: the
            // subscription stays on the draining connection until it closes.
            return;
        }
        let mut moving = Vec::new();
        for (name, topic) in &mut self.topics {
            if topic.source_id() == Some(connection) {
                if closed {
                    topic.source = None;
                }
                moving.push(name.clone());
            }
        }
        for name in moving {
            self.stats.resubscribes += u64::from(closed);
            self.join(name, ctx);
        }
    }

    /// Hands a message from a connection to the topic's subscribers.
    pub(super) fn deliver(
        &mut self,
        connection: ConnectionId,
        message: Message,
        ctx: &mut Context<Self>,
    ) {
        let Some(topic) = self.topics.get_mut(&message.topic) else {
            // Nobody here wants it: the server missed an unsubscribe.
            return self.stray_push(connection, message.topic, ctx);
        };
        if topic.joining == Some(connection) && topic.source_id() != Some(connection) {
            // Which life of the server numbered it is known with the answer; and
            // the subscribers waiting for that answer must not see it before.
            if topic.held.len() < HELD_PUSHES {
                topic.held.push(message);
            }
            return;
        }
        if topic.source_id() != Some(connection) {
            // Subscribed here, but on another connection (this one was left after a
            // move): the server missed an unsubscribe.
            return self.stray_push(connection, message.topic, ctx);
        }
        let (seq, gap) = match message.seq {
            // After a move, a message may come twice (a replayed one after the
            // answer that ends the move, say): the sequence number tells.
            Some(seq) if seq <= topic.last_seq => {
                self.stats.duplicates += 1;
                return;
            }
            // Numbers skipped: lost on the way (the server dropped them for a slow
            // peer, or this broker's mailbox was full), and never coming.
            Some(seq) => (seq, seq - topic.last_seq - 1),
            // A plain server does not number: count deliveries here.
            None => (topic.last_seq.saturating_add(1), 0),
        };
        topic.last_seq = seq;
        self.topic_gap(&message.topic, gap);
        let delivery = Delivery {
            topic: message.topic,
            seq,
            payload: message.payload,
            missed_before: 0,
        };
        let name = delivery.topic.clone();
        self.fan_out(&name, delivery, ctx);
    }

    /// Whether topic `name` is subscribed, or being subscribed, on `connection`.
    pub(super) fn subscribed_on(&self, name: &Bytes, connection: ConnectionId) -> bool {
        self.topics.get(name).is_some_and(|topic| {
            topic.source_id() == Some(connection) || topic.joining == Some(connection)
        })
    }

    /// Whether subscription `id` is live on the server now.
    pub(super) fn subscription_status(
        &self,
        id: SubscriptionId,
    ) -> Result<SubscriptionStatus, BrokerError> {
        let name = self
            .subscriptions
            .get(&id)
            .ok_or(BrokerError::NotSubscribed)?;
        let topic = self.topics.get(name).ok_or(BrokerError::NotSubscribed)?;
        Ok(if topic.source.is_some() {
            SubscriptionStatus::Live
        } else {
            SubscriptionStatus::Pending {
                last_error: topic.last_error.clone(),
            }
        })
    }

    /// Ends subscription `id`; the server is told when it was the topic's last.
    /// Returns the connection to tell, if any.
    pub(super) fn forget_subscriber(
        &mut self,
        id: SubscriptionId,
    ) -> Option<(Bytes, SharedConnection<C, P>)> {
        let name = self.subscriptions.remove(&id)?;
        let topic = self.topics.get_mut(&name)?;
        topic.subscribers.retain(|subscriber| subscriber.id != id);
        if !topic.is_unused() {
            return None;
        }
        let topic = self.topics.remove(&name)?;
        let source = topic.source?;
        Some((name, source))
    }
}
