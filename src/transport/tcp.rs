//! TCP and Unix socket connectors.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use super::Connector;
use crate::{Authority, ConnectError};

/// Opens TCP connections with a connect timeout, `TCP_NODELAY` and keepalive.
///
/// A host name may resolve to several addresses; they are tried in order within one
/// overall connect timeout, and the last error is reported.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TcpConnector {
    /// Bound on resolution plus connect, across every address tried. Defaults to 5 seconds.
    pub connect_timeout: Duration,
    /// Set `TCP_NODELAY`, so small frames leave at once. Defaults to `true`.
    pub nodelay: bool,
    /// Idle time before TCP keepalive probes start, or `None` to leave keepalive off.
    /// Defaults to 60 seconds.
    pub keepalive: Option<Duration>,
}

impl Default for TcpConnector {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            nodelay: true,
            keepalive: Some(Duration::from_secs(60)),
        }
    }
}

impl TcpConnector {
    /// A connector with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the connect timeout. Defaults to 5 seconds.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets `TCP_NODELAY`. Defaults to `true`.
    #[must_use]
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// Sets the keepalive idle time, or turns keepalive off with `None`. Defaults to 60
    /// seconds.
    #[must_use]
    pub fn keepalive(mut self, idle: Option<Duration>) -> Self {
        self.keepalive = idle;
        self
    }

    fn configure(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(self.nodelay)?;
        if let Some(idle) = self.keepalive {
            SockRef::from(stream).set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))?;
        }
        Ok(())
    }
}

async fn connect_any(
    addrs: Vec<SocketAddr>,
    authority: &Authority,
) -> Result<TcpStream, ConnectError> {
    let mut last_error = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    Err(match last_error {
        Some(error) => ConnectError::io(authority, error),
        None => ConnectError::Unresolved {
            authority: authority.clone(),
        },
    })
}

impl Connector for TcpConnector {
    type Io = TcpStream;

    fn connect(
        &self,
        authority: &Authority,
    ) -> LocalBoxFuture<'static, Result<TcpStream, ConnectError>> {
        let connector = self.clone();
        let authority = authority.clone();
        async move {
            let Authority::Tcp { host, port } = &authority else {
                return Err(ConnectError::Unsupported { authority });
            };
            let attempt = async {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((&**host, *port))
                    .await
                    .map_err(|error| ConnectError::io(&authority, error))?
                    .collect();
                connect_any(addrs, &authority).await
            };
            let stream = tokio::time::timeout(connector.connect_timeout, attempt)
                .await
                .map_err(|_| ConnectError::Timeout {
                    authority: authority.clone(),
                    after: connector.connect_timeout,
                })??;
            connector
                .configure(&stream)
                .map_err(|error| ConnectError::io(&authority, error))?;
            Ok(stream)
        }
        .boxed_local()
    }
}

/// Opens Unix domain socket connections, with a connect timeout.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UnixConnector {
    /// Bound on the connect. Defaults to 5 seconds.
    pub connect_timeout: Duration,
}

impl Default for UnixConnector {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl UnixConnector {
    /// A connector with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the connect timeout. Defaults to 5 seconds.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

#[cfg(unix)]
impl Connector for UnixConnector {
    type Io = tokio::net::UnixStream;

    fn connect(
        &self,
        authority: &Authority,
    ) -> LocalBoxFuture<'static, Result<tokio::net::UnixStream, ConnectError>> {
        let timeout = self.connect_timeout;
        let authority = authority.clone();
        async move {
            let Authority::Unix(path) = &authority else {
                return Err(ConnectError::Unsupported { authority });
            };
            tokio::time::timeout(timeout, tokio::net::UnixStream::connect(&**path))
                .await
                .map_err(|_| ConnectError::Timeout {
                    authority: authority.clone(),
                    after: timeout,
                })?
                .map_err(|error| ConnectError::io(&authority, error))
        }
        .boxed_local()
    }
}
