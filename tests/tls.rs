//! TLS (feature `tls`): a Pool over a `TlsConnector` to a `TlsListener` serves calls
//! and requests; certificates and server names are checked; a handshake that does not
//! finish times out; peers that do not speak TLS fail with typed errors and hold
//! nobody else back; a restarted TLS server fails the calls in flight once and the
//! pool reconnects.
//!
//! Certificates are made here with rcgen: a CA, and a leaf for `localhost` signed by
//! it. Everything runs in real time over 127.0.0.1, every wait bounded.
//!
//! ```text
//! cargo test --features tls --test tls
//! ```
#![cfg(feature = "tls")]

mod broker_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use broker_support::{eventually, within, Echo, WAIT};
use bytes::Bytes;
use futures::future::join_all;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use switchboard::broker::Request;
use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::server::{
    GetServerStats, Listener, Route, ServerBroker, ServerConfig, Stop, TlsHandshakeCounters,
    TlsListener,
};
use switchboard::transport::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use switchboard::transport::rustls::{self, CertificateError};
use switchboard::transport::{tls_client_config, Connector, TcpConnector, TlsConnector};
use switchboard::{
    Authority, Broker, Call, CallError, ConnectError, ConnectionConfig, Pool, PoolConfig,
    PoolError, PoolHandle,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A pool whose connections run TLS over TCP.
type TlsPool = PoolHandle<TlsConnector, FrameProtocol>;

/// The route whose requests the server answers only after a minute: calls on it stay
/// in flight for as long as a test needs.
const SLOW: &str = "slow";

/// A CA and a server certificate it signed, with the server's key.
struct Pki {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Pki {
    /// A new CA and a leaf for `names`.
    fn new(names: &[&str]) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!("switchboard test CA {}", next_ca()),
        );
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let leaf_key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        Self {
            ca: ca.der().clone(),
            chain: vec![leaf.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        switchboard::server::tls_server_config(self.chain.clone(), self.key.clone_key())
            .expect("a valid server config")
    }

    /// A connector to 127.0.0.1 that trusts this CA and expects `localhost`.
    fn connector(&self) -> TlsConnector {
        let config = tls_client_config([self.ca.clone()]).expect("a valid client config");
        TlsConnector::new(config).server_name(localhost())
    }
}

/// A number for each CA made, so that no two share a name: a client that trusts one
/// finds no issuer at all for another's certificates.
fn next_ca() -> usize {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    MADE.fetch_add(1, Ordering::Relaxed)
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// A `frame` server behind a TLS listener on 127.0.0.1: requests are echoed, at once
/// or (on [`SLOW`]) after a minute.
struct TlsServer {
    broker: Addr<ServerBroker>,
    listener: Addr<Listener<TlsListener>>,
    handshakes: TlsHandshakeCounters,
    port: u16,
}

impl TlsServer {
    /// Starts one on `socket`, or on a free port.
    async fn start(pki: &Pki, socket: Option<TcpListener>, handshake_timeout: Duration) -> Self {
        Self::start_with(pki, socket, |acceptor| {
            acceptor.handshake_timeout(handshake_timeout)
        })
        .await
    }

    /// Starts one on `socket`, or on a free port, its acceptor set up by `configure`.
    async fn start_with(
        pki: &Pki,
        socket: Option<TcpListener>,
        configure: impl FnOnce(TlsListener) -> TlsListener,
    ) -> Self {
        let socket = match socket {
            Some(socket) => socket,
            None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let port = socket.local_addr().unwrap().port();
        let broker = ServerBroker::start(ServerConfig::default()).unwrap();
        let (echo, _) = Echo::start_new(None);
        let (slow, _) = Echo::start_new(Some(Duration::from_secs(60)));
        for (route, handler) in [
            (None, echo),
            (Some(Bytes::from_static(SLOW.as_bytes())), slow),
        ] {
            let route = Route {
                route,
                handler: handler.recipient(),
            };
            within(WAIT, "route", broker.send(route)).await.unwrap();
        }
        let acceptor = configure(TlsListener::new(socket, pki.server_config()));
        let handshakes = acceptor.counters();
        let listener = Listener::builder(acceptor, broker.clone()).start();
        Self {
            broker,
            listener,
            handshakes,
            port,
        }
    }

    fn authority(&self) -> Authority {
        Authority::tcp("127.0.0.1", self.port)
    }

    /// Waits until the handshake counters satisfy `done`.
    async fn wait_handshakes(
        &self,
        what: &str,
        done: impl Fn(switchboard::server::TlsHandshakeStats) -> bool,
    ) {
        let done = &done;
        eventually(WAIT, what, || async move {
            done(self.handshakes.snapshot()).then_some(())
        })
        .await;
    }

    /// Requests the server broker has seen.
    async fn requests(&self) -> u64 {
        within(WAIT, "server stats", self.broker.send(GetServerStats))
            .await
            .unwrap()
            .requests
    }
}

fn pool_config(min_idle: usize, max_size: usize) -> PoolConfig {
    PoolConfig::builder()
        .min_idle(min_idle)
        .max_size(max_size)
        .test_on_checkout_after(None)
        .health_check_interval(None)
        .backoff_base(Duration::from_millis(50))
        .backoff_max(Duration::from_millis(500))
        .checkout_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn connection_config() -> ConnectionConfig {
    ConnectionConfig::builder()
        .call_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn tls_pool(connector: TlsConnector, config: PoolConfig) -> TlsPool {
    Pool::builder(connector, FrameProtocol::default())
        .config(config)
        .connection(connection_config())
        .start()
}

/// A call over a fresh lease, its reply checked.
async fn echo_call(pool: &TlsPool, authority: &Authority, text: &str) {
    let lease = within(WAIT, "checkout", pool.checkout(authority))
        .await
        .unwrap_or_else(|error| panic!("checkout for {text:?}: {error}"));
    let reply = within(WAIT, "call", lease.call(FrameRequest::new(text.to_owned())))
        .await
        .unwrap_or_else(|error| panic!("call {text:?}: {error}"));
    assert_eq!(&reply[..], text.as_bytes());
}

/// The connect error a checkout failed with: the failed attempt itself or the
/// authority marked down by it, never a bare checkout timeout.
fn connect_error(error: &PoolError) -> Option<&ConnectError> {
    match error {
        PoolError::Connect(error) | PoolError::Down { error, .. } => Some(error),
        _ => None,
    }
}

/// The certificate error of a failed TLS handshake, checking it is one.
fn certificate_error(error: &ConnectError) -> CertificateError {
    let ConnectError::Handshake { layer, source, .. } = error else {
        panic!("expected a TLS handshake error, got {error:?}");
    };
    assert_eq!(*layer, "tls", "{error:?}");
    match source.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::InvalidCertificate(certificate)) => certificate.clone(),
        other => panic!("expected a certificate error, got {other:?} in {error:?}"),
    }
}

#[actix::test]
async fn calls_and_requests_run_over_tls() {
    let pki = Pki::new(&["localhost"]);
    let server = TlsServer::start(&pki, None, Duration::from_secs(10)).await;
    let authority = server.authority();

    let pool = tls_pool(pki.connector(), pool_config(0, 4));
    echo_call(&pool, &authority, "hello over tls").await;
    // Many calls at once over shared connections.
    let shared = within(WAIT, "shared", pool.shared(&authority))
        .await
        .unwrap();
    let replies = within(
        WAIT,
        "concurrent calls",
        join_all((0..100u32).map(|n| shared.call(FrameRequest::new(n.to_string())))),
    )
    .await;
    for (n, reply) in replies.into_iter().enumerate() {
        assert_eq!(&reply.unwrap()[..], n.to_string().as_bytes());
    }

    // A Broker over a TLS pool: requests by route.
    let client = Broker::builder(
        Pool::builder(pki.connector(), FrameProtocol::default()).config(pool_config(1, 1)),
        authority.clone(),
    )
    .start();
    let answer = within(
        WAIT,
        "request",
        client.request(Request::new("echo", "via broker")),
    )
    .await
    .unwrap();
    assert_eq!(&answer[..], b"via broker");

    let handshakes = server.handshakes.snapshot();
    assert!(handshakes.ok >= 2, "{handshakes:?}");
    assert_eq!(
        handshakes.failed + handshakes.timed_out,
        0,
        "{handshakes:?}"
    );
    within(WAIT, "close", pool.close()).await;
    within(WAIT, "close", client.pool().close()).await;
}

#[actix::test]
async fn a_certificate_for_another_name_is_refused() {
    let pki = Pki::new(&["localhost"]);
    let server = TlsServer::start(&pki, None, Duration::from_secs(10)).await;
    let authority = server.authority();
    // No server name set: the host, 127.0.0.1, is checked, and the certificate is
    // for localhost only.
    let config = tls_client_config([pki.ca.clone()]).unwrap();
    let connector = TlsConnector::new(config);

    let error = within(WAIT, "connect", connector.connect(&authority))
        .await
        .unwrap_err();
    let certificate = certificate_error(&error);
    assert!(
        matches!(
            certificate,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ),
        "{certificate:?}"
    );
    assert!(error.to_string().contains("tls handshake"), "{error}");

    // Through a pool, the checkout carries the same error, well within its timeout.
    let pool = tls_pool(connector, pool_config(0, 1));
    let error = within(WAIT, "checkout", pool.checkout(&authority))
        .await
        .unwrap_err();
    let connect = connect_error(&error).unwrap_or_else(|| panic!("{error:?}"));
    certificate_error(connect);
    server
        .wait_handshakes("the server saw the refusals", |stats| stats.failed >= 2)
        .await;
    within(WAIT, "close", pool.close()).await;
}

#[actix::test]
async fn a_certificate_from_an_untrusted_ca_is_refused() {
    let pki = Pki::new(&["localhost"]);
    let server = TlsServer::start(&pki, None, Duration::from_secs(10)).await;
    let stranger = Pki::new(&["localhost"]);

    let pool = tls_pool(stranger.connector(), pool_config(0, 1));
    let error = within(WAIT, "checkout", pool.checkout(&server.authority()))
        .await
        .unwrap_err();
    let connect = connect_error(&error).unwrap_or_else(|| panic!("{error:?}"));
    let certificate = certificate_error(connect);
    assert!(
        matches!(certificate, CertificateError::UnknownIssuer),
        "{certificate:?}"
    );
    within(WAIT, "close", pool.close()).await;
}

#[actix::test]
async fn a_server_that_never_answers_the_handshake_times_out() {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = Authority::from(socket.local_addr().unwrap());
    // Accepts and holds the sockets, saying nothing.
    let silent = actix::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = socket.accept().await {
            held.push(stream);
        }
    });

    let handshake_timeout = Duration::from_millis(300);
    let connector = Pki::new(&["localhost"])
        .connector()
        .handshake_timeout(handshake_timeout);
    let error = within(WAIT, "connect", connector.connect(&authority))
        .await
        .unwrap_err();
    match &error {
        ConnectError::Timeout {
            authority: a,
            after,
        } => {
            assert_eq!(a, &authority);
            assert_eq!(*after, handshake_timeout);
        }
        other => panic!("expected a handshake timeout, got {other:?}"),
    }
    silent.abort();
}

#[actix::test]
async fn a_plain_client_is_refused_by_a_tls_listener_which_keeps_serving() {
    let pki = Pki::new(&["localhost"]);
    let server = TlsServer::start(&pki, None, Duration::from_secs(10)).await;
    let authority = server.authority();

    // A plain `frame` client: its TCP connect works, its first call finds the
    // connection closed by the server, which refused the handshake.
    let plain = Pool::builder(TcpConnector::new(), FrameProtocol::default())
        .config(pool_config(0, 1))
        .connection(connection_config())
        .start();
    let lease = within(WAIT, "checkout", plain.checkout(&authority))
        .await
        .unwrap();
    let error = within(WAIT, "plain call", lease.call(FrameRequest::new("hi")))
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Closed(_)), "{error:?}");
    drop(lease);
    server
        .wait_handshakes("the failed handshake counted", |stats| stats.failed >= 1)
        .await;

    // TLS clients are served as before.
    let pool = tls_pool(pki.connector(), pool_config(0, 1));
    echo_call(&pool, &authority, "still serving").await;
    assert!(server.handshakes.snapshot().ok >= 1);
    within(WAIT, "close", plain.close()).await;
    within(WAIT, "close", pool.close()).await;
}

#[actix::test]
async fn a_tls_client_to_a_plain_server_fails_the_handshake() {
    let server = broker_support::start_server(ServerConfig::default()).await;
    let (echo, _) = Echo::start_new(None);
    server.route("echo", echo.recipient()).await;

    let connector = Pki::new(&["localhost"]).connector();
    let error = within(WAIT, "connect", connector.connect(&server.authority()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Handshake { layer: "tls", .. }),
        "{error:?}"
    );

    // The plain server serves plain clients as before.
    let client = broker_support::start_client(server.port, broker_support::pool_config(1, 1));
    let answer = within(
        WAIT,
        "request",
        client.request(Request::new("echo", "plain")),
    )
    .await
    .unwrap();
    assert_eq!(&answer[..], b"plain");
    within(WAIT, "close", client.pool().close()).await;
}

#[actix::test]
async fn silent_clients_do_not_hold_back_other_handshakes() {
    let pki = Pki::new(&["localhost"]);
    // Longer than the test: the silent clients' handshakes stay under way.
    let server = TlsServer::start(&pki, None, Duration::from_secs(60)).await;
    let authority = server.authority();

    let mut silent = Vec::new();
    for _ in 0..3 {
        let stream = within(
            WAIT,
            "connect",
            TcpStream::connect(("127.0.0.1", server.port)),
        )
        .await
        .unwrap();
        silent.push(stream);
    }
    server
        .wait_handshakes("three handshakes under way", |stats| stats.in_progress == 3)
        .await;

    let pool = tls_pool(pki.connector(), pool_config(0, 1));
    echo_call(&pool, &authority, "not held back").await;
    let stats = server.handshakes.snapshot();
    assert_eq!(stats.ok, 1, "{stats:?}");
    assert_eq!(stats.in_progress, 3, "{stats:?}");

    // Stopping the listener ends the handshakes under way: the silent clients' sockets
    // close.
    within(WAIT, "stop", server.listener.send(Stop { abort: true }))
        .await
        .unwrap();
    for mut stream in silent {
        let mut buffer = [0u8; 16];
        let read = within(WAIT, "silent client closed", stream.read(&mut buffer)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    within(WAIT, "close", pool.close()).await;
}

#[actix::test]
async fn past_max_handshakes_new_peers_wait_until_one_finishes() {
    let pki = Pki::new(&["localhost"]);
    let server = TlsServer::start_with(&pki, None, |acceptor| {
        acceptor
            .handshake_timeout(Duration::from_secs(60))
            .max_handshakes(1)
    })
    .await;
    let silent = within(
        WAIT,
        "connect",
        TcpStream::connect(("127.0.0.1", server.port)),
    )
    .await
    .unwrap();
    server
        .wait_handshakes("the silent handshake under way", |stats| {
            stats.in_progress == 1
        })
        .await;

    // The one slot is taken: a TLS client waits in the backlog, not served.
    let connector = pki.connector();
    let mut connect = Box::pin(connector.connect(&server.authority()));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut connect)
            .await
            .is_err(),
        "a handshake ran past max_handshakes"
    );
    // The silent client goes (its handshake fails): the waiting one is served.
    drop(silent);
    within(WAIT, "the held handshake", connect)
        .await
        .expect("served once the slot is free");
    server
        .wait_handshakes("one failed, one completed", |stats| {
            stats.failed == 1 && stats.ok == 1 && stats.in_progress == 0
        })
        .await;
}

#[actix::test]
async fn a_silent_client_is_dropped_after_the_server_handshake_timeout() {
    let pki = Pki::new(&["localhost"]);
    let server = TlsServer::start(&pki, None, Duration::from_millis(200)).await;
    let mut silent = within(
        WAIT,
        "connect",
        TcpStream::connect(("127.0.0.1", server.port)),
    )
    .await
    .unwrap();
    let mut buffer = [0u8; 16];
    let read = within(WAIT, "silent client closed", silent.read(&mut buffer)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    server
        .wait_handshakes("the timeout counted", |stats| {
            stats.timed_out == 1 && stats.in_progress == 0
        })
        .await;
}

#[actix::test]
async fn a_restarted_tls_server_fails_calls_in_flight_once_and_the_pool_reconnects() {
    const SIZE: usize = 2;
    let pki = Pki::new(&["localhost"]);
    let server = TlsServer::start(&pki, None, Duration::from_secs(10)).await;
    let port = server.port;
    let authority = server.authority();
    // Registered up front, so the pool keeps `SIZE` connections open on its own.
    let pool = Pool::builder(pki.connector(), FrameProtocol::default())
        .config(pool_config(SIZE, SIZE))
        .connection(connection_config())
        .authority(authority.clone())
        .start();
    wait_pool_full(&pool, &authority, SIZE).await;

    // Calls held in flight on every connection.
    let mut calls = Vec::new();
    for n in 0..SIZE * 3 {
        let shared = within(WAIT, "shared", pool.shared(&authority))
            .await
            .unwrap();
        let request = FrameRequest::new(format!("in flight {n}")).with_topic(SLOW);
        let addr = shared.addr().clone();
        calls.push(actix::spawn(
            async move { addr.send(Call::new(request)).await? },
        ));
    }
    let in_flight = calls.len() as u64;
    eventually(WAIT, "the calls reached the server", || async {
        (server.requests().await >= in_flight).then_some(())
    })
    .await;

    within(WAIT, "stop", server.listener.send(Stop { abort: true }))
        .await
        .unwrap();
    // Each call in flight ends once, with its connection's failure.
    for (n, call) in calls.into_iter().enumerate() {
        let result = within(WAIT, "a call in flight", call).await.unwrap();
        match result {
            Err(CallError::Closed(reason)) if !reason.is_requested() => {}
            other => panic!("call {n}: expected Closed by a failure, got {other:?}"),
        }
    }

    // The same port, a new TLS server: the pool comes back and calls succeed.
    let socket = eventually(WAIT, "bind the port again", || async move {
        TcpListener::bind(("127.0.0.1", port)).await.ok()
    })
    .await;
    let restarted = TlsServer::start(&pki, Some(socket), Duration::from_secs(10)).await;
    wait_pool_full(&pool, &authority, SIZE).await;
    for n in 0..SIZE * 2 {
        echo_call(&pool, &authority, &format!("after the restart {n}")).await;
    }
    assert!(restarted.handshakes.snapshot().ok >= SIZE as u64);
    within(WAIT, "close", pool.close()).await;
}

/// Waits until the pool has `size` open, idle connections to `authority`.
async fn wait_pool_full(pool: &TlsPool, authority: &Authority, size: usize) {
    eventually(WAIT, &format!("{size} pooled connections"), || async move {
        let status = pool.status().await.ok()?;
        let group = status.authority(authority)?;
        (group.size == size && group.idle == size).then_some(())
    })
    .await;
}
