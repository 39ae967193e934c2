//! [`TlsListener`]: TLS (rustls, `ring` provider) over any other [`Accept`], with
//! handshakes run side by side (feature `tls`).
//!
//! The [`Listener`](super::Listener) awaits one `accept` at a time. If the handshake
//! ran inside that one `accept`, a client that connects and then says nothing would
//! hold every other client back until its handshake timed out. So each `accept`
//! call drives every handshake under way together with the inner socket's accept,
//! and returns the first session that is ready. All of it lives in the future and in
//! the `TlsListener` itself, with nothing spawned: when the Listener stops and drops
//! them, the listening socket and every handshake under way close with them.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig as TlsServerConfig;
use tokio::time::error::Elapsed;

use super::Accept;

/// Default for [`TlsListener::handshake_timeout`]: 10 seconds.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`TlsListener::max_handshakes`].
const DEFAULT_MAX_HANDSHAKES: usize = 256;

/// A server config with the `ring` provider, its safe default protocol versions (TLS
/// 1.2 and 1.3) and no client authentication, that presents `cert_chain` (the
/// server's certificate first, DER) signed by `key`.
///
/// Fails if the key is not one rustls can use or does not match the certificate.
/// Users who need client certificates or ALPN build their own
/// [`rustls::ServerConfig`] with `builder_with_provider` and
/// `rustls::crypto::ring::default_provider()`.
pub fn tls_server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<TlsServerConfig>, rustls::Error> {
    let config =
        TlsServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(cert_chain, key)?;
    Ok(Arc::new(config))
}

/// A snapshot of a [`TlsListener`]'s handshake counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsHandshakeStats {
    /// Handshakes that completed; each became an accepted connection.
    pub ok: u64,
    /// Handshakes that failed (a client that does not speak TLS, rejects the
    /// certificate or closes).
    pub failed: u64,
    /// Handshakes that did not finish within the handshake timeout.
    pub timed_out: u64,
    /// Handshakes under way now.
    pub in_progress: usize,
}

#[derive(Debug, Default)]
struct Counts {
    ok: Cell<u64>,
    failed: Cell<u64>,
    timed_out: Cell<u64>,
    in_progress: Cell<usize>,
}

/// A [`TlsListener`]'s handshake counters, readable after the listener was handed
/// to a [`Listener`](super::Listener); see [`TlsListener::counters`]. Clones share
/// the counts. Not `Send`: read them on the listener's arbiter.
#[derive(Debug, Clone, Default)]
pub struct TlsHandshakeCounters(Rc<Counts>);

impl TlsHandshakeCounters {
    /// The counts now.
    pub fn snapshot(&self) -> TlsHandshakeStats {
        TlsHandshakeStats {
            ok: self.0.ok.get(),
            failed: self.0.failed.get(),
            timed_out: self.0.timed_out.get(),
            in_progress: self.0.in_progress.get(),
        }
    }

    fn bump(counter: &Cell<u64>) {
        counter.set(counter.get() + 1);
    }
}

/// What one handshake came to: the session, or why there is none.
type Handshaken<Io> = Result<io::Result<tokio_rustls::server::TlsStream<Io>>, Elapsed>;

/// An accept on the inner socket: a peer's stream and its name.
type Accepting<Io> = LocalBoxFuture<'static, io::Result<(Io, String)>>;

/// A handshake under way, with the peer's name.
type Handshake<Io> = LocalBoxFuture<'static, (String, Handshaken<Io>)>;

/// The accept under way on the inner socket, and the handshakes under way.
struct Pending<A: Accept> {
    accepting: Option<Accepting<A::Io>>,
    handshakes: FuturesUnordered<Handshake<A::Io>>,
}

/// Accepts TLS sessions over the peers of another [`Accept`] (a bound
/// `tokio::net::TcpListener` by default), for a [`Listener`](super::Listener):
///
/// ```no_run
/// # use std::sync::Arc;
/// # use switchboard::server::{Listener, ServerBroker, ServerConfig, TlsListener};
/// # async fn serve(tls: Arc<switchboard::transport::rustls::ServerConfig>) {
/// let broker = ServerBroker::start(ServerConfig::default()).unwrap();
/// let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let acceptor = TlsListener::new(socket, tls);
/// let handshakes = acceptor.counters();
/// let listener = Listener::builder(acceptor, broker).start();
/// # }
/// ```
///
/// Handshakes run side by side, up to [`max_handshakes`](Self::max_handshakes) at
/// once (past it, new peers wait in the kernel's backlog), each within
/// [`handshake_timeout`](Self::handshake_timeout); one slow or silent client holds
/// nobody else back. A failed or timed-out handshake is logged at debug level,
/// counted (see [`counters`](Self::counters)) and its socket closed; it never
/// surfaces as an `accept` error, which would make the Listener pause. Errors of
/// the inner socket's accept do surface.
///
/// Handshakes make progress while the Listener awaits `accept`: while it is paused
/// at `max_connections`, handshakes under way wait too (their timeouts still run).
pub struct TlsListener<A: Accept = tokio::net::TcpListener> {
    inner: Rc<A>,
    tls: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
    max_handshakes: usize,
    pending: RefCell<Pending<A>>,
    counters: TlsHandshakeCounters,
}

impl<A: Accept> TlsListener<A> {
    /// Accepts peers from `inner` and runs the server side of TLS with `config` (see
    /// [`tls_server_config`]) on each.
    pub fn new(inner: A, config: Arc<TlsServerConfig>) -> Self {
        Self {
            inner: Rc::new(inner),
            tls: tokio_rustls::TlsAcceptor::from(config),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            pending: RefCell::new(Pending {
                accepting: None,
                handshakes: FuturesUnordered::new(),
            }),
            counters: TlsHandshakeCounters::default(),
        }
    }

    /// How long a client may take to complete its handshake; past it the socket is
    /// closed and counted as timed out. Defaults to 10 seconds.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Handshakes under way at once at most (at least 1); past it no more peers are
    /// accepted until one finishes. Defaults to 256.
    #[must_use]
    pub fn max_handshakes(mut self, max: usize) -> Self {
        self.max_handshakes = max.max(1);
        self
    }

    /// The handshake counters, shared: keep a clone before handing the listener to
    /// a [`Listener`](super::Listener).
    pub fn counters(&self) -> TlsHandshakeCounters {
        self.counters.clone()
    }

    /// The socket TLS runs over.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// Drives the inner accept and the handshakes under way; ready with the first
    /// completed session, or with an error of the inner accept.
    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(tokio_rustls::server::TlsStream<A::Io>, String)>> {
        let mut pending = self.pending.borrow_mut();
        let counts = &self.counters.0;
        loop {
            // Finished handshakes first: a session ready is a client waiting.
            while let Poll::Ready(Some((peer, handshaken))) = pending.handshakes.poll_next_unpin(cx)
            {
                counts.in_progress.set(pending.handshakes.len());
                match handshaken {
                    Ok(Ok(stream)) => {
                        TlsHandshakeCounters::bump(&counts.ok);
                        return Poll::Ready(Ok((stream, peer)));
                    }
                    Ok(Err(error)) => {
                        TlsHandshakeCounters::bump(&counts.failed);
                        tracing::debug!(%peer, %error, "tls handshake failed");
                    }
                    Err(_) => {
                        TlsHandshakeCounters::bump(&counts.timed_out);
                        tracing::debug!(
                            %peer,
                            timeout = ?self.handshake_timeout,
                            "tls handshake timed out"
                        );
                    }
                }
            }
            // At the cap, peers wait in the backlog; a finished handshake wakes us.
            if pending.handshakes.len() >= self.max_handshakes {
                return Poll::Pending;
            }
            // The inner accept is kept across calls, so that a peer it had taken is
            // never lost (not every `Accept` is cancel-safe).
            let inner = &self.inner;
            let accepting = pending
                .accepting
                .get_or_insert_with(|| Rc::clone(inner).accept());
            let accepted = match accepting.as_mut().poll(cx) {
                Poll::Ready(accepted) => accepted,
                Poll::Pending => return Poll::Pending,
            };
            pending.accepting = None;
            let (io, peer) = accepted?;
            let handshake = tokio::time::timeout(self.handshake_timeout, self.tls.accept(io));
            pending
                .handshakes
                .push(Box::pin(async move { (peer, handshake.await) }));
            counts.in_progress.set(pending.handshakes.len());
            // Round again: the new handshake is polled (and registers its wake-up)
            // before more peers are taken.
        }
    }
}

impl<A: Accept> Accept for TlsListener<A> {
    type Io = tokio_rustls::server::TlsStream<A::Io>;

    /// The next client whose handshake completed, with the inner socket's name for
    /// it. Meant for one caller at a time, as the [`Listener`](super::Listener)
    /// calls it.
    fn accept(self: Rc<Self>) -> LocalBoxFuture<'static, io::Result<(Self::Io, String)>> {
        Box::pin(futures::future::poll_fn(move |cx| self.poll_accept(cx)))
    }
}

impl<A: Accept> Drop for TlsListener<A> {
    fn drop(&mut self) {
        // The handshakes under way close with the listener.
        self.counters.0.in_progress.set(0);
    }
}

impl<A: Accept> fmt::Debug for TlsListener<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .field("handshakes", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}
