//! Handing a topic's messages to its local subscribers, and telling each one what it
//! did not get.
//!
//! Deliveries go out with `try_send`: the broker never waits for a subscriber, so one
//! slow actor cannot stall the others or the connection. What a full mailbox costs is
//! told, never silent, the way `tokio::sync::broadcast` reports `Lagged`:
//!
//! ```text
//!  message ──try_send──▶ mailbox has room: delivered, with missed_before = what was lost before it
//!                  └───▶ mailbox full: held (one per subscriber); a newer message
//!                        replaces it and the held one counts as lost
//!  every FLUSH_EVERY while any is held: try the held one again
//! ```
//! So a subscriber always gets the newest message of a burst, and every delivery's
//! `missed_before` is exactly the step in sequence numbers since the one before it:
//! what it received plus what it was told it missed is every message of the topic
//! since it subscribed. Gaps in the topic itself (numbers the server skipped, or
//! said it could no longer replay) are told the same way.

use std::time::Duration;

use actix::prelude::SendError;
use actix::{AsyncContext, Context, Recipient};
use bytes::Bytes;
use tokio::time::Instant;

use super::messages::{BrokerStats, Delivery, SubscriptionId};
use super::{Broker, BrokerProtocol};
use crate::transport::Connector;

/// How often held messages are offered again to mailboxes that were full.
const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// At most one warning about lost messages per this long; the counts in between are
/// summed into the next one.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// One local subscriber of a topic, and what it has not been told yet.
pub(super) struct Subscriber {
    pub(super) id: SubscriptionId,
    recipient: Recipient<Delivery>,
    /// Messages lost for this subscriber since the last delivery it got (before
    /// `held`, if one is held): the next delivery's `missed_before`.
    unreported: u64,
    /// The newest message that found the mailbox full, handed over as soon as there
    /// is room.
    held: Option<Delivery>,
    /// Messages lost after `held` (gaps in the topic), told after it.
    lost_after_held: u64,
}

/// The subscriber's mailbox is closed: it is gone.
pub(super) struct Gone;

impl Subscriber {
    pub(super) fn new(id: SubscriptionId, recipient: Recipient<Delivery>) -> Self {
        Self {
            id,
            recipient,
            unreported: 0,
            held: None,
            lost_after_held: 0,
        }
    }

    /// Counts `count` messages of the topic, after everything handed so far, that
    /// this subscriber will never get.
    pub(super) fn lose(&mut self, count: u64) {
        if self.held.is_some() {
            self.lost_after_held = self.lost_after_held.saturating_add(count);
        } else {
            self.unreported = self.unreported.saturating_add(count);
        }
    }

    fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Offers the held message again.
    fn flush(&mut self, stats: &mut BrokerStats) -> Result<(), Gone> {
        let Some(mut held) = self.held.take() else {
            return Ok(());
        };
        held.missed_before = self.unreported;
        match self.recipient.try_send(held) {
            Ok(()) => {
                stats.deliveries = stats.deliveries.saturating_add(1);
                self.unreported = std::mem::take(&mut self.lost_after_held);
                Ok(())
            }
            Err(SendError::Full(held)) => {
                self.held = Some(held);
                Ok(())
            }
            Err(SendError::Closed(_)) => Err(Gone),
        }
    }

    /// Hands `delivery` over, or holds it; returns how many messages were lost for
    /// this subscriber by it (a held one that it replaced).
    fn hand(&mut self, mut delivery: Delivery, stats: &mut BrokerStats) -> Result<u64, Gone> {
        self.flush(stats)?;
        if self.held.take().is_some() {
            // Still full: the held message is lost, and this newer one waits instead.
            let lost = 1u64.saturating_add(std::mem::take(&mut self.lost_after_held));
            self.unreported = self.unreported.saturating_add(lost);
            stats.deliveries_dropped = stats.deliveries_dropped.saturating_add(1);
            self.held = Some(delivery);
            return Ok(1);
        }
        delivery.missed_before = self.unreported;
        match self.recipient.try_send(delivery) {
            Ok(()) => {
                stats.deliveries = stats.deliveries.saturating_add(1);
                self.unreported = 0;
                Ok(0)
            }
            Err(SendError::Full(delivery)) => {
                self.held = Some(delivery);
                Ok(0)
            }
            Err(SendError::Closed(_)) => Err(Gone),
        }
    }
}

/// What the broker keeps to offer held messages again and to rate-limit warnings.
#[derive(Debug, Default)]
pub(super) struct Lag {
    /// Topics with a subscriber holding a message.
    lagging: rustc_hash::FxHashSet<Bytes>,
    flush_scheduled: bool,
    warned_at: Option<Instant>,
    unwarned_dropped: u64,
    unwarned_missed: u64,
}

impl<C: Connector, P: BrokerProtocol> Broker<C, P> {
    /// Hands `delivery` to every subscriber of `name` (those waiting for the
    /// subscribe's answer too), holding it for full mailboxes and forgetting closed
    /// ones.
    pub(super) fn fan_out(&mut self, name: &Bytes, delivery: Delivery, ctx: &mut Context<Self>) {
        let Some(topic) = self.topics.get_mut(name) else {
            return;
        };
        let mut gone = Vec::new();
        let mut dropped = 0u64;
        let mut holding = false;
        for subscriber in topic.subscribers_mut() {
            match subscriber.hand(delivery.clone(), &mut self.stats) {
                Ok(lost) => dropped += lost,
                Err(Gone) => gone.push(subscriber.id),
            }
            holding |= subscriber.is_holding();
        }
        if holding {
            self.lag.lagging.insert(name.clone());
            self.schedule_flush(ctx);
        }
        if dropped > 0 {
            self.note_loss(name, dropped, 0);
        }
        self.forget_gone(gone, ctx);
    }

    /// Tells every subscriber of `name` that `count` messages of the topic are gone
    /// for good, and counts them in `missed`.
    pub(super) fn topic_gap(&mut self, name: &Bytes, count: u64) {
        let Some(topic) = self.topics.get_mut(name) else {
            return;
        };
        if count == 0 {
            return;
        }
        for subscriber in topic.subscribers_mut() {
            subscriber.lose(count);
        }
        self.stats.missed = self.stats.missed.saturating_add(count);
        self.note_loss(name, 0, count);
    }

    /// A rate-limited warning about lost messages.
    fn note_loss(&mut self, name: &Bytes, dropped: u64, missed: u64) {
        let lag = &mut self.lag;
        lag.unwarned_dropped = lag.unwarned_dropped.saturating_add(dropped);
        lag.unwarned_missed = lag.unwarned_missed.saturating_add(missed);
        let now = Instant::now();
        if lag
            .warned_at
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return;
        }
        tracing::warn!(
            topic = ?name,
            dropped_at_full_mailboxes = lag.unwarned_dropped,
            missed_in_topics = lag.unwarned_missed,
            "messages lost for subscribers since the last warning; each subscriber is told in its next delivery's missed_before"
        );
        lag.warned_at = Some(now);
        lag.unwarned_dropped = 0;
        lag.unwarned_missed = 0;
    }

    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.lag.flush_scheduled {
            return;
        }
        self.lag.flush_scheduled = true;
        ctx.run_later(FLUSH_EVERY, |this, ctx| {
            this.lag.flush_scheduled = false;
            this.flush_lagging(ctx);
        });
    }

    /// Offers every held message again; keeps offering while any is held.
    fn flush_lagging(&mut self, ctx: &mut Context<Self>) {
        let mut gone = Vec::new();
        let lagging = std::mem::take(&mut self.lag.lagging);
        for name in lagging {
            let Some(topic) = self.topics.get_mut(&name) else {
                continue;
            };
            let mut holding = false;
            for subscriber in topic.subscribers_mut() {
                if subscriber.flush(&mut self.stats).is_err() {
                    gone.push(subscriber.id);
                }
                holding |= subscriber.is_holding();
            }
            if holding {
                self.lag.lagging.insert(name);
            }
        }
        self.forget_gone(gone, ctx);
        if !self.lag.lagging.is_empty() {
            self.schedule_flush(ctx);
        }
    }

    /// Forgets subscribers whose mailboxes closed; the server is told when a topic
    /// has none left.
    fn forget_gone(&mut self, gone: Vec<SubscriptionId>, ctx: &mut Context<Self>) {
        for id in gone {
            if let Some((name, source)) = self.forget_subscriber(id) {
                self.unsubscribe_on(name, source, ctx);
            }
        }
    }
}
