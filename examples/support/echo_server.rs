//! A loopback echo server speaking the `frame` protocol, for examples and benches.
//!
//! Not an example of its own (cargo only builds `examples/*.rs` and
//! `examples/*/main.rs`): `examples/demo.rs` and `benches/throughput.rs` include it
//! with `#[path = ...] mod echo_server;`.
//!
//! The server runs on its own OS thread with its own single-threaded tokio runtime,
//! so it never shares a runtime (or, on a multi-core machine, a core) with the
//! client being measured or demonstrated. It answers every `Request` with a
//! `Response` carrying the same id, topic and payload, every `Ping` with a `Pong` of
//! the same id, and ignores everything else. A malformed frame closes only the
//! connection it arrived on.
//!
//! For fault injection it can reset one connection ([`EchoServer::kill_one`]), or
//! restart: stop listening and reset every connection ([`EchoServer::go_down`]), then
//! listen again on the same port ([`EchoServer::come_back`]).

// Each includer uses a different subset of this API.
#![allow(dead_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use switchboard::protocol::frame::{Frame, FrameCodec, FrameError, FrameKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Decoder, Encoder};

/// Bytes the read buffer grows by when it runs low; one read takes up to this much.
const READ_CHUNK: usize = 64 * 1024;
/// Pause after a failed `accept` (for instance, out of file descriptors), so a
/// persistent error cannot turn the accept loop into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Connections the accept queue may hold while nobody accepts them.
const BACKLOG: u32 = 1024;

/// Kill switches of the accepted connections, oldest first. A connection's task
/// holds the receiving end, so a closed switch means the connection has ended.
type Connections = Arc<Mutex<Vec<oneshot::Sender<()>>>>;

/// What the server thread is asked to do, each answered on its own channel.
enum Control {
    /// Stop listening and reset every connection; answers how many were open.
    GoDown(oneshot::Sender<usize>),
    /// Listen again on the same address; answers whether binding worked.
    ComeBack(oneshot::Sender<io::Result<()>>),
}

/// A running echo server on `127.0.0.1`; stopped by [`EchoServer::shutdown`] or on
/// drop.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    connections: Connections,
    /// Commands for the accept loop; dropping it stops the loop. `None` once stopped.
    control: Option<mpsc::UnboundedSender<Control>>,
    /// The server thread; `None` once joined.
    thread: Option<thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Binds `127.0.0.1` on a free port and starts serving on a new thread.
    ///
    /// Binding and building the runtime happen on the calling thread, so their
    /// errors are returned here rather than lost on the server thread.
    pub fn start() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        // Registering with the reactor needs the runtime's context, not its thread:
        // the reactor is driven wherever the runtime later runs.
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(listener)?
        };

        let connections = Connections::default();
        let (control, commands) = mpsc::unbounded_channel();
        let thread = thread::Builder::new().name("echo-server".into()).spawn({
            let connections = Arc::clone(&connections);
            move || {
                runtime.block_on(accept_loop(listener, addr, connections, commands));
                // Dropping the runtime drops every connection task and so closes
                // every socket still open.
                drop(runtime);
            }
        })?;

        Ok(Self {
            addr,
            connections,
            control: Some(control),
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many accepted connections are still open on the server's side.
    ///
    /// A client's `connect` can return before the server has accepted, so a
    /// connection may show up here a moment after the client sees it.
    pub fn connection_count(&self) -> usize {
        let mut connections = self.lock_connections();
        connections.retain(|kill| !kill.is_closed());
        connections.len()
    }

    /// Abruptly closes the server's side of the oldest open connection, as a crashed
    /// peer would: the socket is reset (RST), and replies not yet sent are lost.
    /// Returns whether there was a connection to close.
    ///
    /// The connection stops counting in [`EchoServer::connection_count`] at once;
    /// the reset itself happens on the server thread a moment later.
    pub fn kill_one(&self) -> bool {
        let mut connections = self.lock_connections();
        while !connections.is_empty() {
            // `send` fails only if the connection ended on its own meanwhile; then
            // the next oldest is the one to kill.
            if connections.remove(0).send(()).is_ok() {
                return true;
            }
        }
        false
    }

    /// The first half of a restart: stops listening (connects are refused from now
    /// on) and resets every open connection, as a crashed server would. Returns how
    /// many connections were open.
    ///
    /// Resolves once the listening socket is closed; the resets happen on the server
    /// thread a moment later. [`EchoServer::come_back`] listens again.
    pub async fn go_down(&self) -> io::Result<usize> {
        let (done, answer) = oneshot::channel();
        self.command(Control::GoDown(done))?;
        answer.await.map_err(|_| server_stopped())
    }

    /// The second half of a restart: listens again on the same address and serves
    /// as before. Does nothing if the server is listening already.
    pub async fn come_back(&self) -> io::Result<()> {
        let (done, answer) = oneshot::channel();
        self.command(Control::ComeBack(done))?;
        answer.await.map_err(|_| server_stopped())?
    }

    fn command(&self, command: Control) -> io::Result<()> {
        self.control
            .as_ref()
            .and_then(|control| control.send(command).ok())
            .ok_or_else(server_stopped)
    }

    /// Stops accepting, closes every connection and joins the server thread.
    /// Dropping the server does the same.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        // Dropping the sender is enough to end the accept loop.
        drop(self.control.take());
        if let Some(thread) = self.thread.take() {
            // The server thread only panics on a bug in this file; re-raising that
            // from `drop` could abort the process, so it is left out.
            let _ = thread.join();
        }
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, Vec<oneshot::Sender<()>>> {
        // Nothing here can panic while holding the lock, but a poisoned list is
        // still a valid list.
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn server_stopped() -> io::Error {
    io::Error::other("the echo server has stopped")
}

/// What woke the accept loop.
enum Event {
    Command(Option<Control>),
    Accepted(io::Result<(TcpStream, SocketAddr)>),
}

/// Accepts connections (while listening) and carries out commands, until the
/// command sender is dropped.
async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    connections: Connections,
    mut commands: mpsc::UnboundedReceiver<Control>,
) {
    let mut listener = Some(listener);
    loop {
        let event = tokio::select! {
            command = commands.recv() => Event::Command(command),
            accepted = accept(listener.as_ref()) => Event::Accepted(accepted),
        };
        match event {
            Event::Command(None) => return,
            Event::Command(Some(Control::GoDown(done))) => {
                // Closing the listening socket makes the kernel refuse connects (and
                // reset the ones queued but not yet accepted).
                listener = None;
                let _ = done.send(kill_all(&connections));
            }
            Event::Command(Some(Control::ComeBack(done))) => {
                let result = match listener {
                    Some(_) => Ok(()),
                    None => listen(addr).map(|bound| listener = Some(bound)),
                };
                let _ = done.send(result);
            }
            Event::Accepted(Ok((stream, _peer))) => {
                let (kill, killed) = oneshot::channel();
                connections
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(kill);
                tokio::spawn(connection(stream, killed));
            }
            // Usually transient (the peer gave up, or descriptors ran out); back off
            // briefly and keep serving the connections already open.
            Event::Accepted(Err(_)) => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}

/// The next connection, or never while not listening.
async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Listens on `addr` again after a restart.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Like `TcpListener::bind`: lets the port be bound again while connections of
    // the previous listener linger in TIME_WAIT (not on Windows, where the option
    // means something else).
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Resets every open connection; returns how many there were.
fn kill_all(connections: &Connections) -> usize {
    let switches = std::mem::take(&mut *connections.lock().unwrap_or_else(PoisonError::into_inner));
    // A failed send is a connection that had ended on its own.
    switches
        .into_iter()
        .map(|kill| kill.send(()).is_ok())
        .filter(|&killed| killed)
        .count()
}

/// Serves one connection until the peer closes it, it fails, or it is killed.
async fn connection(mut stream: TcpStream, mut killed: oneshot::Receiver<()>) {
    let was_killed = tokio::select! {
        // An `Err` here only means the server is going away, which drops this task
        // anyway; the pattern disables the branch instead of treating it as a kill.
        Ok(()) = &mut killed => true,
        // An error (malformed frame, I/O) ends just this connection; there is nobody
        // to report it to, and the peer sees the close.
        _ = serve(&mut stream) => false,
    };
    if was_killed {
        // A zero linger makes the close below a reset instead of an orderly FIN.
        let _ = stream.set_zero_linger();
    }
}

/// The echo loop: read what is available, answer every complete frame into one
/// buffer, write that buffer in one go, repeat.
///
/// Batching the answers of one read into one write is what keeps the server from
/// being the bottleneck: a write (and a flush) per frame would cost a syscall per
/// reply.
async fn serve(stream: &mut TcpStream) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    let mut codec = FrameCodec::default();
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::with_capacity(READ_CHUNK);
    loop {
        // `read_buf` only grows a full buffer by a few bytes; keep room for a large
        // read so a busy connection takes many frames per syscall.
        if input.capacity() - input.len() < READ_CHUNK / 4 {
            input.reserve(READ_CHUNK);
        }
        if stream.read_buf(&mut input).await? == 0 {
            // The peer closed. Every complete frame was answered after the previous
            // read, so anything left is an unfinished frame: `decode_eof` reports it.
            codec.decode_eof(&mut input)?;
            return Ok(());
        }
        while let Some(frame) = codec.decode(&mut input)? {
            let answer = match frame.kind {
                FrameKind::Request => Frame {
                    kind: FrameKind::Response,
                    ..frame
                },
                FrameKind::Ping => Frame::pong(frame.id),
                // Pushes are never answered; replies and pongs are not expected by
                // a server that sends no requests or pings, so they are dropped.
                FrameKind::Push
                | FrameKind::Response
                | FrameKind::Error
                | FrameKind::Pong
                | FrameKind::Publish
                | FrameKind::PublishOrdered
                | FrameKind::Subscribe
                | FrameKind::Unsubscribe => continue,
            };
            codec.encode(answer, &mut output)?;
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
    }
}
