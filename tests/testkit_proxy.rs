//! The testkit's `FaultProxy` does what each fault says, against a plain tokio echo
//! server on loopback: the reliability scenarios rely on it.
//!
//! Time bounds here are lower bounds (a delay was at least this long) or generous
//! waits for something that must happen; nothing asserts that the machine is fast.
//!
//! ```text
//! cargo test --all-features --test testkit_proxy
//! ```
#![cfg(feature = "testkit")]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard::testkit::{AcceptMode, Direction, Fault, FaultProxy, ProxyHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Bound on waits for something that must happen.
const WAIT: Duration = Duration::from_secs(5);

/// A loopback echo server; every read's size is reported on the channel.
async fn echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reads, read_sizes) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let reads = reads.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                loop {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let _ = reads.send(n);
                            if socket.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, read_sizes)
}

async fn connect(proxy: &ProxyHandle) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(proxy.local_addr()))
        .await
        .expect("connect through the proxy hung")
        .expect("connect through the proxy failed")
}

/// Writes `data` and reads back as many bytes.
async fn round_trip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).await.unwrap();
    let mut back = vec![0; data.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .expect("no echo")
        .expect("echo failed");
    back
}

#[actix::test]
async fn forwards_both_ways_and_counts() {
    let (server, _) = echo_server().await;
    let proxy = FaultProxy::start(server).unwrap();
    let mut stream = connect(&proxy).await;
    assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");
    let stats = proxy.stats().await;
    assert_eq!((stats.accepted, stats.open), (1, 1));
    assert_eq!(
        (stats.forwarded_upstream, stats.forwarded_downstream),
        (5, 5)
    );
    drop(stream);
    let closed = async {
        while proxy.stats().await.open != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("link still open after the client closed");
}

#[actix::test]
async fn latency_delays_every_chunk() {
    let (server, _) = echo_server().await;
    let proxy = FaultProxy::start(server).unwrap();
    proxy
        .inject(Direction::Both, Fault::Latency(Duration::from_millis(100)))
        .await;
    let mut stream = connect(&proxy).await;
    let started = Instant::now();
    assert_eq!(round_trip(&mut stream, b"ping").await, b"ping");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[actix::test]
async fn blackhole_is_silent_and_heal_resumes() {
    let (server, _) = echo_server().await;
    let proxy = FaultProxy::start(server).unwrap();
    let mut stream = connect(&proxy).await;
    proxy.inject(Direction::Downstream, Fault::Blackhole).await;
    stream.write_all(b"lost").await.unwrap();
    let mut buffer = [0; 16];
    let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buffer)).await;
    assert!(
        read.is_err(),
        "a blackholed link delivered or closed: {read:?}"
    );
    proxy.heal().await;
    assert_eq!(round_trip(&mut stream, b"back").await, b"back");
    assert_eq!(proxy.stats().await.dropped, 4);
}

/// A server for one connection that reads until end of stream and reports, on the
/// channel, how many bytes it read and whether the stream ended cleanly.
async fn eof_server() -> (SocketAddr, tokio::sync::oneshot::Receiver<(usize, bool)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, reported) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buffer = vec![0; 1024];
        let mut read = 0;
        let clean = loop {
            match socket.read(&mut buffer).await {
                Ok(0) => break true,
                Ok(n) => read += n,
                Err(_) => break false,
            }
        };
        let _ = report.send((read, clean));
    });
    (addr, reported)
}

#[actix::test]
async fn an_upstream_blackhole_holds_end_of_stream_until_heal() {
    let (server, mut ended) = eof_server().await;
    let proxy = FaultProxy::start(server).unwrap();
    let mut stream = connect(&proxy).await;
    proxy.inject(Direction::Upstream, Fault::Blackhole).await;
    stream.write_all(b"lost").await.unwrap();
    stream.shutdown().await.unwrap();
    // Neither the bytes nor the end of stream reach the server while it lasts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ended.try_recv().is_err(),
        "the end of stream went through a blackhole"
    );
    assert_eq!(proxy.stats().await.dropped, 4);
    proxy.heal().await;
    let (read, clean) = tokio::time::timeout(WAIT, ended)
        .await
        .expect("the end of stream was not forwarded after the heal")
        .unwrap();
    assert_eq!((read, clean), (0, true));
}

#[actix::test]
async fn a_blackhole_both_ways_drops_requests_and_replies() {
    let (server, mut reads) = echo_server().await;
    let proxy = FaultProxy::start(server).unwrap();
    let mut stream = connect(&proxy).await;
    proxy.inject(Direction::Both, Fault::Blackhole).await;
    stream.write_all(b"nowhere").await.unwrap();
    let mut buffer = [0; 16];
    let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buffer)).await;
    assert!(
        read.is_err(),
        "a blackholed link delivered or closed: {read:?}"
    );
    assert!(reads.try_recv().is_err(), "the server got bytes");
    let stats = proxy.stats().await;
    assert_eq!((stats.dropped, stats.open), (7, 1));
}

#[actix::test]
async fn latency_keeps_the_order_of_chunks() {
    let (server, _) = echo_server().await;
    let proxy = FaultProxy::start(server).unwrap();
    proxy
        .inject(
            Direction::Upstream,
            Fault::Latency(Duration::from_millis(20)),
        )
        .await;
    let mut stream = connect(&proxy).await;
    let sent: Vec<u8> = (0..200u8).collect();
    for chunk in sent.chunks(10) {
        stream.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut back = vec![0; sent.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(back, sent);
}

#[actix::test]
async fn reset_aborts_open_links() {
    let (server, _) = echo_server().await;
    let proxy = FaultProxy::start(server).unwrap();
    let mut stream = connect(&proxy).await;
    round_trip(&mut stream, b"up").await;
    assert_eq!(proxy.reset().await, 1);
    let mut buffer = [0; 16];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buffer))
        .await
        .expect("reset link did not end");
    assert_eq!(read.unwrap_err().kind(), ErrorKind::ConnectionReset);
    assert_eq!(proxy.stats().await.resets, 1);
}

#[actix::test]
async fn bandwidth_limits_throughput() {
    let (server, _) = echo_server().await;
    let proxy = FaultProxy::start(server).unwrap();
    proxy
        .inject(Direction::Upstream, Fault::Bandwidth(256 * 1024))
        .await;
    let mut stream = connect(&proxy).await;
    let started = Instant::now();
    let data = vec![7; 64 * 1024];
    assert_eq!(round_trip(&mut stream, &data).await, data);
    // 64 KiB at 256 KiB/s: a quarter of a second at least (less the first piece).
    assert!(started.elapsed() >= Duration::from_millis(180));
}

#[actix::test]
async fn slice_delivers_small_writes() {
    let (server, mut read_sizes) = echo_server().await;
    let proxy = FaultProxy::start(server).unwrap();
    proxy.inject(Direction::Upstream, Fault::Slice(3)).await;
    let mut stream = connect(&proxy).await;
    let data: Vec<u8> = (0..200).collect();
    assert_eq!(round_trip(&mut stream, &data).await, data);
    let (mut total, mut reads) = (0, 0);
    while total < data.len() {
        total += read_sizes.recv().await.unwrap();
        reads += 1;
    }
    // 67 pieces a millisecond apart; a busy reader may take two at once, not most.
    assert!(
        reads >= 30,
        "the server read 200 bytes in only {reads} reads"
    );
}

#[actix::test]
async fn close_after_cuts_the_link() {
    let (server, mut read_sizes) = echo_server().await;
    let proxy = FaultProxy::start(server).unwrap();
    proxy
        .inject(Direction::Upstream, Fault::CloseAfter(10))
        .await;
    let mut stream = connect(&proxy).await;
    stream.write_all(&[1; 100]).await.unwrap();
    let mut received = Vec::new();
    // The link closes as soon as the 10th byte is through, before any echo.
    tokio::time::timeout(WAIT, stream.read_to_end(&mut received))
        .await
        .expect("the link did not close")
        .expect("the link closed with an error instead of a FIN");
    let mut through = 0;
    while through < 10 {
        through += read_sizes.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        read_sizes.try_recv().is_err(),
        "more than 10 bytes got through"
    );
    assert_eq!(through, 10);
    assert_eq!(proxy.stats().await.closes, 1);
}

#[actix::test]
async fn accept_modes_refuse_hang_and_forward_again() {
    let (server, _) = echo_server().await;
    let proxy = FaultProxy::start(server).unwrap();

    proxy.set_accept(AcceptMode::Refuse).await;
    let refused = TcpStream::connect(proxy.local_addr()).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);

    proxy.set_accept(AcceptMode::Blackhole).await;
    let hung = tokio::time::timeout(
        Duration::from_millis(300),
        TcpStream::connect(proxy.local_addr()),
    )
    .await;
    assert!(hung.is_err(), "a blackholed connect finished: {hung:?}");

    proxy.set_accept(AcceptMode::Forward).await;
    let mut stream = connect(&proxy).await;
    assert_eq!(round_trip(&mut stream, b"again").await, b"again");
}

#[actix::test]
async fn set_upstream_moves_new_links() {
    let (first, _) = echo_server().await;
    let (second, mut second_reads) = echo_server().await;
    let proxy = FaultProxy::start(first).unwrap();
    let mut old = connect(&proxy).await;
    // The link picks its upstream when the proxy accepts it: make sure it has.
    round_trip(&mut old, b"first").await;
    proxy.set_upstream(second).await;
    let mut new = connect(&proxy).await;
    round_trip(&mut new, b"new").await;
    assert_eq!(second_reads.recv().await, Some(3));
    round_trip(&mut old, b"old").await;
    assert!(second_reads.try_recv().is_err(), "the old link moved");
}

#[actix::test]
async fn stop_closes_links_and_port() {
    let (server, _) = echo_server().await;
    let proxy = FaultProxy::start(server).unwrap();
    let mut stream = connect(&proxy).await;
    proxy.stop().await;
    let mut buffer = [0; 4];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buffer))
        .await
        .expect("link still open after stop");
    assert!(matches!(read, Ok(0) | Err(_)));
    let refused = TcpStream::connect(proxy.local_addr()).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
}

#[actix::test]
async fn connects_hang_when_blackholed_straight_from_forwarding() {
    let (server, _) = echo_server().await;
    let proxy = FaultProxy::start(server).unwrap();
    proxy.set_accept(AcceptMode::Blackhole).await;
    let hung = tokio::time::timeout(
        Duration::from_millis(300),
        TcpStream::connect(proxy.local_addr()),
    )
    .await;
    assert!(hung.is_err(), "a blackholed connect finished: {hung:?}");
}
