//! Telling the server that a topic is no longer wanted on a connection, reliably and
//! within a bound.
//!
//! ```text
//!  last subscriber gone / moved off a draining source / joined after all left
//!      ──unsubscribe──▶ answered (or the connection closed: the server dropped it) ── done
//!                  └──▶ no answer in UNSUBSCRIBE_TIMEOUT, or refused for load:
//!                       again after a backoff, UNSUBSCRIBE_ATTEMPTS in all
//!  a push for a topic not subscribed on that connection ──▶ unsubscribe again,
//!      at most once per STRAY_EVERY per connection and topic
//! ```
//! A retry is not sent if the topic was subscribed on that connection again
//! meanwhile: it would undo the new subscription.

use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::time::Instant;

use super::{answered, Broker, BrokerProtocol};
use crate::transport::Connector;
use crate::{Call, CallError, ConnectionId, SharedConnection};

/// How long one unsubscribe waits for the server's answer.
const UNSUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Unsubscribes sent for one topic on one connection before giving up (the server
/// drops the subscription with the connection at the latest; a push after that
/// starts again).
const UNSUBSCRIBE_ATTEMPTS: u32 = 4;

/// The wait before the second attempt; it doubles for each one after.
const UNSUBSCRIBE_BACKOFF: Duration = Duration::from_millis(100);

/// At most one unsubscribe per connection and topic per this long, for pushes of a
/// topic nobody subscribes to here.
const STRAY_EVERY: Duration = Duration::from_secs(1);

/// Connection and topic pairs whose last stray unsubscribe is remembered; past it,
/// the old ones are forgotten first.
const STRAY_TRACKED: usize = 4096;

/// Where unsubscribes stand.
pub(super) struct Unsubscribes<C: Connector, P: BrokerProtocol> {
    /// Connections this broker has subscribed a topic on, open as far as it knows:
    /// where a stray push came from, to tell it.
    connections: FxHashMap<ConnectionId, SharedConnection<C, P>>,
    /// Unsubscribes under way: sent and neither acknowledged nor given up.
    in_flight: FxHashSet<(ConnectionId, Bytes)>,
    /// When a stray push last made this broker unsubscribe.
    stray_told: FxHashMap<(ConnectionId, Bytes), Instant>,
}

impl<C: Connector, P: BrokerProtocol> Default for Unsubscribes<C, P> {
    fn default() -> Self {
        Self {
            connections: FxHashMap::default(),
            in_flight: FxHashSet::default(),
            stray_told: FxHashMap::default(),
        }
    }
}

impl<C: Connector, P: BrokerProtocol> Unsubscribes<C, P> {
    /// A topic is being subscribed on `connection`.
    pub(super) fn subscribing_on(&mut self, connection: &SharedConnection<C, P>) {
        self.connections
            .entry(connection.id())
            .or_insert_with(|| connection.clone());
    }

    /// `connection` closed: the server dropped its subscriptions with it.
    pub(super) fn closed(&mut self, connection: ConnectionId) {
        self.connections.remove(&connection);
        self.in_flight.retain(|(on, _)| *on != connection);
        self.stray_told.retain(|(on, _), _| *on != connection);
    }
}

impl<C: Connector, P: BrokerProtocol> Broker<C, P> {
    /// Tells the server over `connection` that topic `name` is no longer wanted
    /// there, again if need be; see the module documentation.
    pub(super) fn unsubscribe_on(
        &mut self,
        name: Bytes,
        connection: SharedConnection<C, P>,
        ctx: &mut Context<Self>,
    ) {
        if !self
            .unsubscribes
            .in_flight
            .insert((connection.id(), name.clone()))
        {
            return;
        }
        self.send_unsubscribe(name, connection, 1, ctx);
    }

    fn send_unsubscribe(
        &mut self,
        name: Bytes,
        connection: SharedConnection<C, P>,
        attempt: u32,
        ctx: &mut Context<Self>,
    ) {
        let mut call = Call::new(self.protocol.unsubscribe(name.clone()));
        call.timeout = Some(UNSUBSCRIBE_TIMEOUT);
        let answer = connection.addr().send(call);
        ctx.spawn(answer.into_actor(self).map(move |answer, this, ctx| {
            let key = (connection.id(), name);
            let error = match answered(answer) {
                // Answered, an error answer included: the server has it.
                Ok(_) | Err(CallError::Remote(_)) => None,
                // The connection is going: the server drops its subscriptions with
                // it. And a request that cannot be encoded never will be.
                Err(CallError::Closed(_) | CallError::Closing | CallError::Encode(_)) => None,
                Err(error) => Some(error),
            };
            let Some(error) = error else {
                this.unsubscribes.in_flight.remove(&key);
                return;
            };
            if attempt >= UNSUBSCRIBE_ATTEMPTS {
                this.unsubscribes.in_flight.remove(&key);
                tracing::warn!(topic = ?key.1, connection = %key.0, %error, attempts = attempt, "unsubscribe not acknowledged; giving up until the next push of the topic");
                return;
            }
            let wait = UNSUBSCRIBE_BACKOFF.saturating_mul(1 << (attempt - 1).min(16));
            tracing::debug!(topic = ?key.1, connection = %key.0, %error, ?wait, "unsubscribe not acknowledged; again");
            ctx.run_later(wait, move |this, ctx| {
                let (id, name) = key;
                if this.subscribed_on(&name, id) {
                    // Subscribed there again meanwhile: the retry would undo it.
                    this.unsubscribes.in_flight.remove(&(id, name));
                    return;
                }
                this.send_unsubscribe(name, connection, attempt + 1, ctx);
            });
        }));
    }

    /// A push of topic `name` came over `connection`, where this broker does not
    /// subscribe to it: the server is told again, at most once per `STRAY_EVERY`.
    pub(super) fn stray_push(
        &mut self,
        connection: ConnectionId,
        name: Bytes,
        ctx: &mut Context<Self>,
    ) {
        let key = (connection, name);
        let unsubscribes = &mut self.unsubscribes;
        if unsubscribes.in_flight.contains(&key) {
            return;
        }
        let now = Instant::now();
        if unsubscribes
            .stray_told
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < STRAY_EVERY)
        {
            return;
        }
        let Some(shared) = unsubscribes.connections.get(&connection).cloned() else {
            return;
        };
        if unsubscribes.stray_told.len() >= STRAY_TRACKED {
            unsubscribes
                .stray_told
                .retain(|_, at| now.duration_since(*at) < STRAY_EVERY);
            if unsubscribes.stray_told.len() >= STRAY_TRACKED {
                return;
            }
        }
        unsubscribes.stray_told.insert(key.clone(), now);
        tracing::debug!(topic = ?key.1, connection = %connection, "push for a topic not subscribed here; unsubscribing again");
        self.unsubscribe_on(key.1, shared, ctx);
    }
}
