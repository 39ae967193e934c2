//! [`RespConnector`]: opens a stream with another connector, then greets redis on it
//! (`HELLO`, `AUTH`, `CLIENT SETNAME`, `SELECT`) before a Connection gets it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use futures::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

use super::{Command, RespCodec, RespError, RespFrame, RespLimits, Value};
use crate::protocol::RemoteError;
use crate::transport::{Connector, Transport};
use crate::{Authority, ConnectError};

/// Default for [`RespConnector::handshake_timeout`]: 5 seconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which RESP version a [`RespConnector`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RespVersion {
    /// RESP2: no `HELLO`; `AUTH` and `CLIENT SETNAME` as commands of their own.
    Resp2,
    /// RESP3 through `HELLO 3`; a server that cannot is a connect error.
    Resp3,
    /// RESP3 through `HELLO 3`, or RESP2 if the server does not know `HELLO` or
    /// refuses version 3 (`NOPROTO`), as redis before 6.0 does.
    #[default]
    Auto,
}

/// Why the RESP handshake on a fresh stream failed; the source of a
/// [`ConnectError::Handshake`] with layer `"resp"`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The server refused the credentials (`WRONGPASS`, an `AUTH` error), or wants
    /// some and none were given (`NOAUTH`).
    #[error("authentication failed: {0}")]
    Auth(RemoteError),
    /// [`RespVersion::Resp3`] was asked for and the server cannot speak it.
    #[error("the server does not speak RESP3: {0}")]
    NoResp3(RemoteError),
    /// A step of the handshake answered with an error.
    #[error("{step} refused: {error}")]
    Refused {
        /// The command: `"HELLO"`, `"CLIENT SETNAME"`, `"SELECT"`.
        step: &'static str,
        /// The server's error.
        error: RemoteError,
    },
    /// A step was answered with something other than a reply (a push).
    #[error("unexpected answer to {step}: {answer:?}")]
    Unexpected {
        /// The command.
        step: &'static str,
        /// What arrived.
        answer: RespFrame,
    },
    /// The server closed the connection before answering a step.
    #[error("the server closed the connection during {step}")]
    Closed {
        /// The command.
        step: &'static str,
    },
    /// The server sent bytes nobody asked for before the stream was handed over.
    #[error("the server sent {0} unexpected bytes after the handshake")]
    Leftover(usize),
    /// Reading or writing the stream failed, or the server's answer did not decode.
    #[error(transparent)]
    Codec(#[from] RespError),
}

/// What a [`RespConnector`] says to each new connection.
#[derive(Clone)]
struct Greeting {
    version: RespVersion,
    username: Option<Bytes>,
    password: Option<Bytes>,
    client_name: Option<Bytes>,
    database: Option<u32>,
    timeout: Duration,
    limits: RespLimits,
}

/// A [`Connector`] for redis: opens a stream with `inner` (TCP, Unix, TLS, ...) and
/// runs the handshake on it before handing it over, all within
/// [`handshake_timeout`](Self::handshake_timeout):
///
/// 1. with [`RespVersion::Resp3`] or [`RespVersion::Auto`], `HELLO 3`, carrying
///    `AUTH <user> <password>` and `SETNAME <name>` if configured; with `Auto`, if
///    the server does not know `HELLO` or refuses version 3, RESP2 and step 2;
/// 2. with RESP2, `AUTH [<user>] <password>` and `CLIENT SETNAME <name>` as
///    separate commands, if configured;
/// 3. `SELECT <db>` if configured.
///
/// Refused credentials fail the connect with [`ConnectError::Handshake`] (layer
/// `"resp"`) whose source is [`HandshakeError::Auth`]; so does every other refusal,
/// with its own [`HandshakeError`]. The Pool reports it to its waiters and counts it
/// towards marking the authority down.
///
/// ```no_run
/// use switchboard::protocol::resp::{RespConnector, RespProtocol, RespVersion};
/// use switchboard::transport::TcpConnector;
/// use switchboard::{Authority, Pool};
///
/// # async fn run() -> Result<(), switchboard::PoolError> {
/// let connector = RespConnector::new(TcpConnector::default())
///     .version(RespVersion::Resp3)
///     .password("s3cret")
///     .client_name("billing")
///     .database(2);
/// let pool = Pool::builder(connector, RespProtocol::new())
///     .authority(Authority::tcp("127.0.0.1", 6379))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use]
pub struct RespConnector<C> {
    inner: C,
    greeting: Arc<Greeting>,
}

impl<C> RespConnector<C> {
    /// Greets redis on every stream `inner` opens, with the defaults: RESP3 if the
    /// server can ([`RespVersion::Auto`]), no credentials, no name, database 0.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            greeting: Arc::new(Greeting {
                version: RespVersion::Auto,
                username: None,
                password: None,
                client_name: None,
                database: None,
                timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                limits: RespLimits::default(),
            }),
        }
    }

    fn greeting(&mut self) -> &mut Greeting {
        // A clone configured further gets a greeting of its own.
        Arc::make_mut(&mut self.greeting)
    }

    /// The RESP version to ask for. Defaults to [`RespVersion::Auto`].
    pub fn version(mut self, version: RespVersion) -> Self {
        self.greeting().version = version;
        self
    }

    /// The password to authenticate with. Defaults to none (no `AUTH`).
    pub fn password(mut self, password: impl Into<Bytes>) -> Self {
        self.greeting().password = Some(password.into());
        self
    }

    /// The ACL user to authenticate as, with the [`password`](Self::password); used
    /// only when a password is set. Defaults to none (`default` in `HELLO`, and the
    /// one-argument `AUTH <password>` in RESP2).
    pub fn username(mut self, username: impl Into<Bytes>) -> Self {
        self.greeting().username = Some(username.into());
        self
    }

    /// The connection name redis shows in `CLIENT LIST`. Defaults to none.
    pub fn client_name(mut self, name: impl Into<Bytes>) -> Self {
        self.greeting().client_name = Some(name.into());
        self
    }

    /// The database to `SELECT`. Defaults to none (the server's default, 0).
    pub fn database(mut self, database: u32) -> Self {
        self.greeting().database = Some(database);
        self
    }

    /// The bound on opening the stream and the whole handshake; past it the connect
    /// fails with [`ConnectError::Timeout`]. Defaults to 5 seconds
    /// ([`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.greeting().timeout = timeout;
        self
    }

    /// The limits of the codec the handshake reads replies with. Defaults to
    /// [`RespLimits::default`].
    pub fn limits(mut self, limits: RespLimits) -> Self {
        self.greeting().limits = limits;
        self
    }

    /// The connector that opens the streams.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C: Clone> Clone for RespConnector<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            greeting: self.greeting.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for RespConnector<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let greeting = &self.greeting;
        f.debug_struct("RespConnector")
            .field("inner", &self.inner)
            .field("version", &greeting.version)
            .field("username", &greeting.username)
            // Never the password itself.
            .field("password", &greeting.password.as_ref().map(|_| "<set>"))
            .field("client_name", &greeting.client_name)
            .field("database", &greeting.database)
            .field("handshake_timeout", &greeting.timeout)
            .finish()
    }
}

impl<C: Connector> Connector for RespConnector<C> {
    type Io = C::Io;

    fn connect(
        &self,
        authority: &Authority,
    ) -> LocalBoxFuture<'static, Result<C::Io, ConnectError>> {
        let opening = self.inner.connect(authority);
        let greeting = self.greeting.clone();
        let authority = authority.clone();
        Box::pin(async move {
            let after = greeting.timeout;
            let connect = async {
                let io = opening.await?;
                handshake(io, &greeting)
                    .await
                    .map_err(|error| ConnectError::handshake(&authority, "resp", error))
            };
            match tokio::time::timeout(after, connect).await {
                Ok(result) => result,
                Err(_) => Err(ConnectError::Timeout { authority, after }),
            }
        })
    }
}

/// Runs the greeting on `io` and hands it back, with nothing left unread.
async fn handshake<Io: Transport>(io: Io, greeting: &Greeting) -> Result<Io, HandshakeError> {
    let mut framed = Framed::new(io, RespCodec::new(greeting.limits));
    let mut resp3 = false;
    if greeting.version != RespVersion::Resp2 {
        let mut hello = Command::new("HELLO").arg(3);
        if let Some(password) = &greeting.password {
            let user = greeting.username.as_ref().map_or(&b"default"[..], |u| u);
            hello = hello.arg("AUTH").arg(user).arg(password);
        }
        if let Some(name) = &greeting.client_name {
            hello = hello.arg("SETNAME").arg(name);
        }
        match round_trip(&mut framed, hello, "HELLO").await? {
            Ok(_) => resp3 = true,
            Err(error) if refuses_resp3(&error) => {
                if greeting.version == RespVersion::Resp3 {
                    return Err(HandshakeError::NoResp3(error));
                }
            }
            Err(error) if is_auth_error(&error) => return Err(HandshakeError::Auth(error)),
            Err(error) => {
                return Err(HandshakeError::Refused {
                    step: "HELLO",
                    error,
                })
            }
        }
    }
    if !resp3 {
        if let Some(password) = &greeting.password {
            let mut auth = Command::new("AUTH");
            if let Some(user) = &greeting.username {
                auth = auth.arg(user);
            }
            let auth = auth.arg(password);
            if let Err(error) = round_trip(&mut framed, auth, "AUTH").await? {
                return Err(HandshakeError::Auth(error));
            }
        }
        if let Some(name) = &greeting.client_name {
            let setname = Command::new("CLIENT").arg("SETNAME").arg(name);
            if let Err(error) = round_trip(&mut framed, setname, "CLIENT SETNAME").await? {
                return Err(HandshakeError::Refused {
                    step: "CLIENT SETNAME",
                    error,
                });
            }
        }
    }
    if let Some(database) = greeting.database {
        let select = Command::new("SELECT").arg(database);
        if let Err(error) = round_trip(&mut framed, select, "SELECT").await? {
            return Err(HandshakeError::Refused {
                step: "SELECT",
                error,
            });
        }
    }
    // Redis says nothing unasked before the first command; bytes here would belong
    // to nobody, and the Connection's fresh codec would misread them.
    let parts = framed.into_parts();
    if !parts.read_buf.is_empty() {
        return Err(HandshakeError::Leftover(parts.read_buf.len()));
    }
    Ok(parts.io)
}

/// Sends `command` and reads its answer: a reply, or the server's error.
async fn round_trip<Io: Transport>(
    framed: &mut Framed<Io, RespCodec>,
    command: Command,
    step: &'static str,
) -> Result<Result<Value, RemoteError>, HandshakeError> {
    framed.send(RespFrame::Command(command)).await?;
    match framed.next().await {
        None => Err(HandshakeError::Closed { step }),
        Some(Err(error)) => Err(error.into()),
        Some(Ok(RespFrame::Reply(Value::Error(message)))) => Ok(Err(RemoteError::new(message))),
        Some(Ok(RespFrame::Reply(value))) => Ok(Ok(value)),
        Some(Ok(answer)) => Err(HandshakeError::Unexpected { step, answer }),
    }
}

/// Whether `HELLO 3` failed because the server has no RESP3: `NOPROTO`, or no
/// `HELLO` at all (`ERR unknown command 'HELLO'` before redis 6).
fn refuses_resp3(error: &RemoteError) -> bool {
    let message = error.message();
    message.starts_with(b"NOPROTO")
        || message
            .to_ascii_lowercase()
            .windows(b"unknown command".len())
            .any(|w| w == b"unknown command")
}

/// Whether `HELLO` failed over credentials.
fn is_auth_error(error: &RemoteError) -> bool {
    let message = error.message();
    [
        "WRONGPASS",
        "NOAUTH",
        "NOPERM",
        "ERR AUTH",
        "ERR invalid password",
    ]
    .iter()
    .any(|prefix| message.starts_with(prefix.as_bytes()))
}
