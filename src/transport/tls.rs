//! TLS over any other transport: [`TlsConnector`] (feature `tls`, rustls with the
//! `ring` provider).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::{Connector, TcpConnector};
use crate::{Authority, ConnectError};

/// Default for [`TlsConnector::handshake_timeout`]: 10 seconds.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client config with the `ring` provider, its safe default protocol versions (TLS
/// 1.2 and 1.3), no client certificate, that trusts exactly `roots` (DER).
///
/// Users who trust the Web PKI (`webpki-roots`) or the platform's roots
/// (`rustls-native-certs`) build their own [`ClientConfig`] the same way, with
/// [`ClientConfig::builder_with_provider`] and
/// `rustls::crypto::ring::default_provider()`, and hand it to [`TlsConnector::new`].
/// Fails if a root is not a certificate rustls can use as a trust anchor.
pub fn tls_client_config(
    roots: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root)?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens TLS sessions over the transports of another [`Connector`] (TCP by default).
///
/// A connect is the inner connector's connect (bounded by its own timeout), then the
/// TLS handshake, bounded by [`handshake_timeout`](Self::handshake_timeout). The
/// server's certificate is checked against the config's roots and against the
/// server name: the host of an [`Authority::Tcp`] (a DNS name or an IP address),
/// or the name set with [`server_name`](Self::server_name). There is no way to turn
/// these checks off here.
///
/// Errors: a handshake that fails (an untrusted certificate, a name that does not
/// match, a peer that does not speak TLS or closes) is [`ConnectError::Handshake`]
/// with layer `"tls"`, its source the [`rustls::Error`] when rustls had one (else
/// the I/O error); a handshake that does not finish in time is
/// [`ConnectError::Timeout`] with `after` the handshake timeout. Errors of the inner
/// connect pass through unchanged.
pub struct TlsConnector<C: Connector = TcpConnector> {
    inner: C,
    tls: tokio_rustls::TlsConnector,
    handshake_timeout: Duration,
    server_name: Option<ServerName<'static>>,
}

impl TlsConnector {
    /// A connector over a [`TcpConnector`] with its defaults, with `config` (see
    /// [`tls_client_config`]).
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self::with_inner(TcpConnector::new(), config)
    }
}

impl<C: Connector> TlsConnector<C> {
    /// A connector that runs TLS with `config` over the transports `inner` opens.
    pub fn with_inner(inner: C, config: Arc<ClientConfig>) -> Self {
        Self {
            inner,
            tls: tokio_rustls::TlsConnector::from(config),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            server_name: None,
        }
    }

    /// How long the TLS handshake may take once the inner transport is open; past it
    /// the connect fails with [`ConnectError::Timeout`]. A Pool's `connect_timeout`
    /// bounds the whole connect from above. Defaults to 10 seconds.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The name the server's certificate must carry, instead of the authority's host
    /// (connect to `127.0.0.1` but check for `localhost`, say, or name the server
    /// behind a Unix socket). It is also sent as SNI when it is a DNS name. Defaults
    /// to the host of each [`Authority::Tcp`]; other authorities need one set.
    #[must_use]
    pub fn server_name(mut self, name: ServerName<'static>) -> Self {
        self.server_name = Some(name);
        self
    }

    /// The connector the TLS sessions run over.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The name to check the server's certificate against when connecting to
    /// `authority`.
    fn server_name_for(&self, authority: &Authority) -> Result<ServerName<'static>, ConnectError> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        match authority {
            Authority::Tcp { host, .. } => ServerName::try_from(host.to_string())
                .map_err(|error| ConnectError::handshake(authority, "tls", error)),
            _ => Err(ConnectError::handshake(
                authority,
                "tls",
                "no server name to check the certificate against: set TlsConnector::server_name",
            )),
        }
    }
}

/// The error a failed handshake reports: rustls's own error when there is one (so
/// that users can match on it), else the I/O error (the peer closed, say).
fn handshake_error(authority: &Authority, error: io::Error) -> ConnectError {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match tls {
        Some(tls) => ConnectError::handshake(authority, "tls", tls),
        None => ConnectError::handshake(authority, "tls", error),
    }
}

impl<C: Connector> Connector for TlsConnector<C> {
    type Io = tokio_rustls::client::TlsStream<C::Io>;

    fn connect(
        &self,
        authority: &Authority,
    ) -> LocalBoxFuture<'static, Result<Self::Io, ConnectError>> {
        // Checked before anything is opened: without a name there is nothing to
        // verify the certificate against.
        let server_name = match self.server_name_for(authority) {
            Ok(name) => name,
            Err(error) => return futures::future::ready(Err(error)).boxed_local(),
        };
        let transport = self.inner.connect(authority);
        let tls = self.tls.clone();
        let timeout = self.handshake_timeout;
        let authority = authority.clone();
        async move {
            let io = transport.await?;
            match tokio::time::timeout(timeout, tls.connect(server_name, io)).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(error)) => Err(handshake_error(&authority, error)),
                Err(_) => Err(ConnectError::Timeout {
                    authority,
                    after: timeout,
                }),
            }
        }
        .boxed_local()
    }
}

impl<C: Connector + Clone> Clone for TlsConnector<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            tls: self.tls.clone(),
            handshake_timeout: self.handshake_timeout,
            server_name: self.server_name.clone(),
        }
    }
}

impl<C: Connector + fmt::Debug> fmt::Debug for TlsConnector<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("inner", &self.inner)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}
