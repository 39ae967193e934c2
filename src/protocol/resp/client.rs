//! [`Redis`]: typed commands over a pool's shared, pipelined connections.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use super::{Command, CommandArg, RespProtocol, Value};
use crate::protocol::RemoteError;
use crate::transport::Connector;
use crate::{Authority, CallError, PoolError, PoolHandle};

/// Why a [`Redis`] command failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// No connection: the pool could not open one or none was free in time.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The call failed: timed out, overloaded, the connection closed, the command
    /// could not be encoded, or redis answered with an error
    /// ([`CallError::Remote`]; see [`RedisError::remote`]).
    #[error(transparent)]
    Call(#[from] CallError),
    /// Redis answered with a type the command does not return.
    #[error("unexpected reply to {command}: {reply:?}")]
    UnexpectedReply {
        /// The command.
        command: &'static str,
        /// What redis answered.
        reply: Value,
    },
}

impl RedisError {
    /// The error redis answered with, if that is what this is.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            RedisError::Call(CallError::Remote(error)) => Some(error),
            _ => None,
        }
    }
}

/// A typed redis client over a [`Pool`](crate::Pool) of [`RespProtocol`]
/// connections to one server.
///
/// Each command goes over the least loaded of the authority's connections in shared
/// use ([`PoolHandle::shared`]): many callers pipeline their commands on one
/// connection, and each gets its own replies in order. Cheap to clone.
///
/// Pub/sub is not here: subscribing changes what a connection receives, which a
/// shared connection must not do under other callers. Subscribe through a
/// [`Broker`](crate::Broker) over the pool; [`publish`](Self::publish) is here.
pub struct Redis<C: Connector> {
    pool: PoolHandle<C, RespProtocol>,
    authority: Authority,
    timeout: Option<Duration>,
}

impl<C: Connector> Redis<C> {
    /// A client for the server at `authority`, through `pool`.
    pub fn new(pool: PoolHandle<C, RespProtocol>, authority: Authority) -> Self {
        Self {
            pool,
            authority,
            timeout: None,
        }
    }

    /// This client with a timeout for each command. Defaults to the connection's
    /// `call_timeout`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The pool this client uses.
    pub fn pool(&self) -> &PoolHandle<C, RespProtocol> {
        &self.pool
    }

    /// The server this client talks to.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Sends any command and returns its reply as it came; an error reply is
    /// [`CallError::Remote`].
    pub async fn command(&self, command: Command) -> Result<Value, RedisError> {
        let connection = self.pool.shared(&self.authority).await?;
        let mut call = crate::Call::new(command);
        call.timeout = self.timeout;
        let reply = connection
            .addr()
            .send(call)
            .await
            .map_err(CallError::from)?;
        Ok(reply?.without_attributes())
    }

    /// `GET key`: the value, or `None` if the key does not exist.
    pub async fn get(&self, key: impl CommandArg) -> Result<Option<Bytes>, RedisError> {
        match self.command(Command::get(key)).await? {
            Value::Nil => Ok(None),
            Value::Bulk(value) => Ok(Some(value)),
            reply => unexpected("GET", reply),
        }
    }

    /// `SET key value`.
    pub async fn set(
        &self,
        key: impl CommandArg,
        value: impl CommandArg,
    ) -> Result<(), RedisError> {
        expect_ok("SET", self.command(Command::set(key, value)).await?)
    }

    /// `SET key value EX seconds`: the key expires after `ttl`, rounded down to whole
    /// seconds (at least one).
    pub async fn set_ex(
        &self,
        key: impl CommandArg,
        value: impl CommandArg,
        ttl: Duration,
    ) -> Result<(), RedisError> {
        let command = Command::set_ex(key, value, ttl.as_secs());
        expect_ok("SET", self.command(command).await?)
    }

    /// `DEL key`: whether the key existed.
    pub async fn del(&self, key: impl CommandArg) -> Result<bool, RedisError> {
        Ok(integer("DEL", self.command(Command::del(key)).await?)? > 0)
    }

    /// `INCR key`: the value after the increment (an error reply if the value is not
    /// an integer).
    pub async fn incr(&self, key: impl CommandArg) -> Result<i64, RedisError> {
        integer("INCR", self.command(Command::incr(key)).await?)
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), RedisError> {
        match self.command(Command::ping()).await? {
            Value::Simple(pong) if &pong[..] == b"PONG" => Ok(()),
            reply => unexpected("PING", reply),
        }
    }

    /// `PUBLISH channel message`: how many subscribers received it.
    pub async fn publish(
        &self,
        channel: impl CommandArg,
        message: impl CommandArg,
    ) -> Result<i64, RedisError> {
        integer(
            "PUBLISH",
            self.command(Command::publish(channel, message)).await?,
        )
    }
}

fn unexpected<T>(command: &'static str, reply: Value) -> Result<T, RedisError> {
    Err(RedisError::UnexpectedReply { command, reply })
}

fn expect_ok(command: &'static str, reply: Value) -> Result<(), RedisError> {
    if reply.is_ok() {
        Ok(())
    } else {
        unexpected(command, reply)
    }
}

fn integer(command: &'static str, reply: Value) -> Result<i64, RedisError> {
    match reply {
        Value::Integer(n) => Ok(n),
        reply => unexpected(command, reply),
    }
}

impl<C: Connector> Clone for Redis<C> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            authority: self.authority.clone(),
            timeout: self.timeout,
        }
    }
}

impl<C: Connector> fmt::Debug for Redis<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("authority", &self.authority)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
