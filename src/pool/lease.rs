//! [`Lease`] (exclusive use of a pooled connection) and [`SharedConnection`] (shared,
//! multiplexed use).

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use actix::Addr;

use super::group::{Group, Member};
use super::messages::ReturnedBecause;
use crate::protocol::Protocol;
use crate::transport::Connector;
use crate::{Authority, Call, CallError, Connection, ConnectionId};

/// Exclusive use of one pooled connection, checked back in when dropped.
///
/// While a lease lives no other checkout gets its connection. Dropping it returns
/// the connection to the pool, also when the borrower's future is cancelled or its
/// actor stops, with these exceptions:
/// - a connection that stopped (broken) is discarded, and the pool opens another;
/// - a connection with calls still in flight (a reply its borrower never read) is
///   held back until they are answered, or closed if that takes longer than
///   `return_drain_timeout`; replies are routed by the connection to their own
///   callers, so the next borrower never sees the previous borrower's reply;
/// - a connection past its `max_lifetime`, or any connection when the pool does
///   not reuse connections or is shutting down, is closed.
///
/// It dereferences to the connection's address, so `lease.send(Call::new(..))`
/// works; [`Lease::call`] does the same and flattens the error.
#[must_use = "dropping a lease returns its connection at once"]
pub struct Lease<C: Connector, P: Protocol> {
    group: Arc<Group<C, P>>,
    /// `None` once the member was handed back or detached (drop does nothing then).
    member: Option<Arc<Member<C, P>>>,
}

impl<C: Connector, P: Protocol> Lease<C, P> {
    pub(crate) fn new(group: Arc<Group<C, P>>, member: Arc<Member<C, P>>) -> Self {
        Self {
            group,
            member: Some(member),
        }
    }

    fn member(&self) -> &Member<C, P> {
        self.member
            .as_ref()
            .expect("a lease has its member until it is consumed")
    }

    /// Takes the member back without checking it in (the group does that itself).
    pub(crate) fn into_member(mut self) -> Arc<Member<C, P>> {
        self.member
            .take()
            .expect("a lease has its member until it is consumed")
    }

    /// The connection's address.
    pub fn addr(&self) -> &Addr<Connection<C::Io, P>> {
        &self.member().addr
    }

    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.member().id
    }

    /// The authority the connection talks to.
    pub fn authority(&self) -> &Authority {
        &self.group.authority
    }

    /// Calls in flight on the connection.
    pub fn in_flight(&self) -> usize {
        self.member().gauge.get()
    }

    /// Sends a request over the leased connection and waits for its reply.
    pub async fn call(&self, request: impl Into<P::Request>) -> Result<P::Reply, CallError> {
        self.addr().send(Call::new(request)).await?
    }

    /// Takes the connection out of the pool: the pool forgets it (and opens another if
    /// it needs one). It is the caller's now: it closes when its last address is
    /// dropped (gracefully, within its `close_timeout`), or on `Close`/`Abort`.
    pub fn detach(self) -> Addr<Connection<C::Io, P>> {
        let group = self.group.clone();
        let member = self.into_member();
        group.detach(&member);
        member.addr.clone()
    }

    /// Closes the connection instead of returning it, for a borrower that left it in
    /// a state the next one must not see.
    pub fn discard(self) {
        let group = self.group.clone();
        group.discard(self.into_member(), ReturnedBecause::Discard);
    }
}

impl<C: Connector, P: Protocol> Drop for Lease<C, P> {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            self.group.check_in(member);
        }
    }
}

impl<C: Connector, P: Protocol> Deref for Lease<C, P> {
    type Target = Addr<Connection<C::Io, P>>;

    fn deref(&self) -> &Self::Target {
        self.addr()
    }
}

impl<C: Connector, P: Protocol> fmt::Debug for Lease<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("authority", &self.group.authority)
            .field("connection", &self.member.as_ref().map(|m| m.id))
            .finish()
    }
}

/// A pooled connection in shared (multiplexed) use: the least loaded of an
/// authority's idle connections when it was handed out.
///
/// For protocols that correlate replies by id, many callers can use one connection
/// at once. A shared handle does not hold the connection: the pool keeps managing it
/// (it may close it when idle or expired, after which calls fail with
/// [`CallError::Closed`]). Ask the pool again for each burst of work rather than
/// keeping one for ever.
///
/// While a handle lives it counts as work on its connection (one call, or what it was
/// picked for), so that the picks of a burst spread over the connections and grow the
/// pool before any call is written; drop it when its work is done.
pub struct SharedConnection<C: Connector, P: Protocol> {
    member: Arc<Member<C, P>>,
    authority: Authority,
    /// What this handle counts as on its connection's load.
    claim: usize,
}

impl<C: Connector, P: Protocol> SharedConnection<C, P> {
    pub(crate) fn new(member: Arc<Member<C, P>>, authority: Authority, claim: usize) -> Self {
        member.claim(claim);
        Self {
            member,
            authority,
            claim,
        }
    }

    /// The connection's address.
    pub fn addr(&self) -> &Addr<Connection<C::Io, P>> {
        &self.member.addr
    }

    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.member.id
    }

    /// The authority the connection talks to.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Calls in flight on the connection.
    pub fn in_flight(&self) -> usize {
        self.member.gauge.get()
    }

    /// Whether anyone else has calls on its connection: calls written, or handles
    /// other than this one.
    pub(crate) fn in_use_by_others(&self) -> bool {
        self.member.gauge.get() > 0 || self.member.handed() > self.claim
    }

    /// Sends a request over the connection and waits for its reply.
    pub async fn call(&self, request: impl Into<P::Request>) -> Result<P::Reply, CallError> {
        self.addr().send(Call::new(request)).await?
    }
}

impl<C: Connector, P: Protocol> Clone for SharedConnection<C, P> {
    fn clone(&self) -> Self {
        Self::new(self.member.clone(), self.authority.clone(), self.claim)
    }
}

impl<C: Connector, P: Protocol> Drop for SharedConnection<C, P> {
    fn drop(&mut self) {
        self.member.release(self.claim);
    }
}

impl<C: Connector, P: Protocol> fmt::Debug for SharedConnection<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedConnection")
            .field("authority", &self.authority)
            .field("connection", &self.member.id)
            .finish()
    }
}
