//! Connectors: each opens what it should, and fails with an error that says why.

use std::time::Duration;

use switchboard::protocol::frame::{FrameProtocol, FrameRequest};
use switchboard::transport::{Connector, MemoryNetwork, TcpConnector, UnixConnector};
use switchboard::{Authority, Call, ConnectError, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[actix::test]
async fn tcp_connects_with_nodelay_and_keepalive() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = Authority::from(listener.local_addr().unwrap());
    let connector = TcpConnector::new().keepalive(Some(Duration::from_secs(30)));
    let (stream, accepted) = tokio::join!(connector.connect(&authority), listener.accept());
    let stream = stream.expect("connect to a listening port");
    accepted.expect("the listener sees the connection");
    assert!(stream.nodelay().unwrap(), "TCP_NODELAY is set");
    let keepalive = socket2::SockRef::from(&stream).keepalive().unwrap();
    assert!(keepalive, "SO_KEEPALIVE is set");
}

#[actix::test]
async fn tcp_refused_is_an_io_error_not_a_timeout() {
    // Bind, learn the port, close: nothing listens there any more.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let authority = Authority::tcp("127.0.0.1", port);
    let error = TcpConnector::new().connect(&authority).await.unwrap_err();
    match &error {
        ConnectError::Io {
            authority: a,
            source,
        } => {
            assert_eq!(a, &authority);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected a refused connect, got {other:?}"),
    }
    assert!(
        error.to_string().contains(&port.to_string()),
        "the error names the authority: {error}"
    );
}

#[actix::test]
async fn tcp_connects_over_ipv6_loopback_when_available() {
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    };
    let authority = Authority::from(listener.local_addr().unwrap());
    assert!(
        authority.to_string().starts_with("tcp://[::1]:"),
        "{authority}"
    );
    let (stream, _) = tokio::join!(TcpConnector::new().connect(&authority), listener.accept());
    stream.expect("connect over ::1");
}

#[actix::test]
async fn a_connector_refuses_authorities_of_another_kind() {
    let unix = Authority::unix("/nonexistent/switchboard.sock");
    let error = TcpConnector::new().connect(&unix).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Unsupported { .. }),
        "{error:?}"
    );

    let tcp = Authority::tcp("127.0.0.1", 1);
    let error = UnixConnector::new().connect(&tcp).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Unsupported { .. }),
        "{error:?}"
    );

    let error = MemoryNetwork::new()
        .connector()
        .connect(&tcp)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Unsupported { .. }),
        "{error:?}"
    );
}

#[actix::test]
async fn unix_socket_connects_and_missing_path_fails() {
    let dir = std::env::temp_dir().join(format!("switchboard-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("peer.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();

    let (stream, accepted) = tokio::join!(
        UnixConnector::new().connect(&Authority::unix(&path)),
        listener.accept()
    );
    let mut stream = stream.expect("connect to a listening unix socket");
    let (mut server, _) = accepted.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    let missing = Authority::unix(dir.join("missing.sock"));
    let error = UnixConnector::new().connect(&missing).await.unwrap_err();
    assert!(matches!(error, ConnectError::Io { .. }), "{error:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[actix::test]
async fn memory_network_connects_to_named_listeners_only() {
    let network = MemoryNetwork::new();
    let mut listener = network.bind("backend");
    assert_eq!(listener.authority(), &Authority::memory("backend"));

    let connector = network.connector();
    let mut client = connector
        .connect(&Authority::memory("backend"))
        .await
        .unwrap();
    let mut server = listener.accept().await.expect("a pending connection");
    client.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");

    let error = connector
        .connect(&Authority::memory("nobody"))
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Refused { .. }), "{error:?}");

    drop(listener);
    let error = connector
        .connect(&Authority::memory("backend"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Refused { .. }),
        "a dropped listener refuses: {error:?}"
    );
}

#[actix::test]
async fn a_connection_runs_over_an_in_memory_transport() {
    use futures::{SinkExt, StreamExt};
    use switchboard::protocol::frame::{Frame, FrameCodec, FrameKind};

    let network = MemoryNetwork::new();
    let mut listener = network.bind("echo");
    actix_rt::spawn(async move {
        let server = listener.accept().await.unwrap();
        let mut framed = tokio_util::codec::Framed::new(server, FrameCodec::default());
        while let Some(Ok(frame)) = framed.next().await {
            if frame.kind == FrameKind::Request {
                framed
                    .send(Frame::response(frame.id, frame.payload))
                    .await
                    .unwrap();
            }
        }
    });
    let io = network
        .connector()
        .connect(&Authority::memory("echo"))
        .await
        .unwrap();
    let conn = Connection::builder(io, FrameProtocol::default()).start();
    for i in 0..10u8 {
        let reply = conn
            .send(Call::new(FrameRequest::new(vec![i; 3])))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&reply[..], &[i; 3]);
    }
}
