//! Transports: how a byte stream to an [`Authority`] is opened.
//!
//! A [`Connector`] opens one transport per call to [`Connector::connect`], within its
//! own timeout. Three are built in:
//! - [`TcpConnector`]: TCP with a connect timeout, `TCP_NODELAY` and keepalive;
//! - [`UnixConnector`]: Unix domain sockets;
//! - [`MemoryConnector`]: in-memory duplex pipes to listeners on a [`MemoryNetwork`],
//!   for tests that need no sockets.
//! - `TlsConnector` (feature `tls`): TLS (rustls, `ring` provider) over any other
//!   connector, with a handshake timeout and the server's name checked; see
//!   `docs/tls.md`. [`rustls`](https://docs.rs/rustls/0.23) itself is re-exported as
//!   `transport::rustls`, so configs need no version-matched dependency.
//!
//! A [`Connection`](crate::Connection) takes any `AsyncRead + AsyncWrite + Unpin +
//! 'static` stream ([`Transport`]), so simulated streams (turmoil) and TLS streams plug
//! in the same way.

mod memory;
mod tcp;
#[cfg(feature = "tls")]
mod tls;

use futures::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{Authority, ConnectError};

pub use memory::{MemoryConnector, MemoryListener, MemoryNetwork};
/// The rustls version this crate's TLS is built on, for building configs.
#[cfg(feature = "tls")]
pub use rustls;
pub use tcp::{TcpConnector, UnixConnector};
#[cfg(feature = "tls")]
pub use tls::{tls_client_config, TlsConnector};

/// A byte stream a [`Connection`](crate::Connection) can own.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + 'static> Transport for T {}

/// Opens transports to authorities.
///
/// Implementations bound every wait they make (resolution, connect, handshake) by a
/// timeout of their own, and report failures as a [`ConnectError`] that says what
/// went wrong, never as a bare timeout when the cause is known.
pub trait Connector: 'static {
    /// The stream this connector opens.
    type Io: Transport;

    /// Opens a transport to `authority`.
    fn connect(
        &self,
        authority: &Authority,
    ) -> LocalBoxFuture<'static, Result<Self::Io, ConnectError>>;
}
