//! [`FaultProxy`]: a TCP proxy on 127.0.0.1 that injects faults into the links it
//! carries, steered by actor messages while a test runs.
//!
//! ```text
//!             ┌──────────── FaultProxy (127.0.0.1:port) ────────────┐
//!  client ───▶│ reader ─▶ [queue] ─▶ writer   Upstream faults       │───▶ upstream
//!         ◀───│ writer ◀─ [queue] ◀─ reader   Downstream faults     │◀───
//!             └─────────────────────────────────────────────────────┘
//! ```
//!
//! Every accepted socket becomes a *link*: a second socket to the upstream address,
//! and one pump per direction. A pump's reader takes bytes off one socket and queues
//! them (a bounded queue of chunks); its writer hands them to the other socket. Faults
//! act on the pumps, per direction, on open links and new ones alike:
//!
//! | [`Fault`]        | what the peers see                                         |
//! |------------------|------------------------------------------------------------|
//! | `Latency(d)`     | every chunk arrives `d` after it was sent; order kept      |
//! | `Blackhole`      | nothing arrives and nothing closes: a half-open link       |
//! | `Bandwidth(b)`   | at most `b` bytes per second                               |
//! | `Slice(n)`       | data arrives in writes of at most `n` bytes, 1 ms apart    |
//! | `CloseAfter(n)`  | after `n` more bytes the link closes (FIN on both sockets) |
//!
//! Messages: [`Inject`] adds a fault, [`Heal`] clears them all, [`Reset`] aborts
//! every open link with a TCP RST on both sockets, [`SetAccept`] decides what new
//! connects meet (forwarded, refused, or blackholed so that they hang),
//! [`SetUpstream`] moves new links to another server, [`GetProxyStats`] counts, and
//! [`StopProxy`] ends it all. [`ProxyHandle`] wraps them in async methods.
//!
//! End of stream is forwarded as a half-close; a read or write error on one socket
//! resets the other, as a reset would travel through a real network path.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message, SpawnHandle, WrapFuture};
use bytes::Bytes;
use futures::future::{self, Either};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::Authority;

/// Bytes a pump reads at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Chunks a pump holds between its reader and its writer (with latency or a bandwidth
/// limit, this is what is "on the wire"): at most `QUEUED_CHUNKS * READ_CHUNK` bytes
/// per direction before the reader stops reading and the sender's socket fills.
const QUEUED_CHUNKS: usize = 256;

/// The pause between the pieces of a sliced write.
const SLICE_PAUSE: Duration = Duration::from_millis(1);

/// How long a link waits for the upstream to accept before it gives up and closes the
/// client's socket.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the proxy waits for its own connect that fills the accept queue when it
/// starts blackholing connects. On loopback it is queued at once, unless another
/// connect got there first and the kernel dropped this SYN.
const FILL_TIMEOUT: Duration = Duration::from_millis(100);

/// Which way a fault acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Bytes from the client to the upstream server.
    Upstream,
    /// Bytes from the upstream server to the client.
    Downstream,
    /// Both ways.
    Both,
}

impl Direction {
    fn includes_upstream(self) -> bool {
        matches!(self, Direction::Upstream | Direction::Both)
    }

    fn includes_downstream(self) -> bool {
        matches!(self, Direction::Downstream | Direction::Both)
    }
}

/// One fault; several can act at once (latency and slicing, say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Every chunk is delivered this long after it was read; order is kept and
    /// throughput is not limited by it.
    Latency(Duration),
    /// Bytes are read and dropped: nothing is delivered (chunks still queued
    /// included) and nothing is closed (an end of stream or a reset is held until
    /// the blackhole ends). [`Heal`] ends it; the bytes dropped meanwhile leave a
    /// hole in the stream that real TCP never would, so reset links that lived
    /// through a blackhole if the peers must not see it.
    Blackhole,
    /// At most this many bytes per second (at least 1).
    Bandwidth(u64),
    /// Writes of at most this many bytes (at least 1), a millisecond apart, so the
    /// receiver reads frames in pieces (a busy receiver may still read two pieces at
    /// once).
    Slice(usize),
    /// After this many more bytes in the direction (counted from the injection, on
    /// each link), the link is closed: both sockets are shut down.
    CloseAfter(u64),
}

/// The faults acting on one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Faults {
    latency: Duration,
    blackhole: bool,
    bandwidth: Option<u64>,
    slice: Option<usize>,
    close_after: Option<u64>,
    /// Bumped by every change, so a link restarts its `close_after` count.
    epoch: u64,
}

impl Faults {
    fn apply(&mut self, fault: Fault) {
        match fault {
            Fault::Latency(delay) => self.latency = delay,
            Fault::Blackhole => self.blackhole = true,
            Fault::Bandwidth(rate) => self.bandwidth = Some(rate.max(1)),
            Fault::Slice(size) => self.slice = Some(size.max(1)),
            Fault::CloseAfter(bytes) => self.close_after = Some(bytes),
        }
        self.epoch += 1;
    }

    fn heal(&mut self) {
        *self = Faults {
            epoch: self.epoch + 1,
            ..Faults::default()
        };
    }
}

/// What new connects to the proxy's port meet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcceptMode {
    /// Accepted and forwarded to the upstream.
    #[default]
    Forward,
    /// Refused: nothing listens on the port (`ECONNREFUSED`).
    Refuse,
    /// The connect hangs until the client's own timeout: the port listens with a full
    /// accept queue, so Linux drops the connect's SYNs.
    Blackhole,
}

/// Counters of a [`FaultProxy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Connects accepted from clients.
    pub accepted: u64,
    /// Links open now.
    pub open: u64,
    /// Bytes delivered to the upstream.
    pub forwarded_upstream: u64,
    /// Bytes delivered to clients.
    pub forwarded_downstream: u64,
    /// Bytes dropped by a blackhole, both ways.
    pub dropped: u64,
    /// Links ended by [`Reset`] or by an error on one of their sockets.
    pub resets: u64,
    /// Links closed by [`Fault::CloseAfter`] or [`StopProxy`].
    pub closes: u64,
    /// Accepted clients whose upstream could not be reached (their socket was
    /// closed).
    pub upstream_failures: u64,
}

/// Adds a fault to a direction, on open links and new ones.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Inject {
    /// Which way it acts.
    pub direction: Direction,
    /// The fault.
    pub fault: Fault,
}

/// Clears every fault in both directions; blackholed links carry bytes again.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Heal;

/// Aborts every open link: both of its sockets close with a TCP RST. Answers how many
/// links it reset.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "usize")]
pub struct Reset;

/// Sets what new connects meet; open links are not touched.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "io::Result<()>")]
pub struct SetAccept(pub AcceptMode);

/// Sends new links to another upstream address; open links stay where they are.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct SetUpstream(pub SocketAddr);

/// Asks for the proxy's [`ProxyStats`].
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "ProxyStats")]
pub struct GetProxyStats;

/// Stops the proxy: the port closes and every open link is closed.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct StopProxy;

/// How a link ends early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Shut both sockets down (FIN).
    Close,
    /// Abort both sockets (RST).
    Reset,
}

/// State the proxy actor shares with its links (all on one thread).
struct Shared {
    upstream: Cell<SocketAddr>,
    upstream_faults: watch::Sender<Faults>,
    downstream_faults: watch::Sender<Faults>,
    /// How to end each open link early.
    links: RefCell<HashMap<u64, watch::Sender<Option<End>>>>,
    next_link: Cell<u64>,
    stats: Cell<ProxyStats>,
}

impl Shared {
    fn count(&self, update: impl FnOnce(&mut ProxyStats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }

    fn end_all(&self, end: End) -> usize {
        let links = self.links.borrow();
        for signal in links.values() {
            signal.send_replace(Some(end));
        }
        links.len()
    }
}

/// A fault-injecting TCP proxy on 127.0.0.1: put it between a client and a server and
/// break the link between them on demand. [`Fault`] says what each fault does.
///
/// Run it in real time, not under `tokio::time::pause()`: a paused clock jumps ahead
/// whenever the runtime is idle, and it is idle while it waits on real sockets, so
/// latency and bandwidth faults (and any timeout around proxied traffic) would pass
/// in no time at all.
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard::testkit::{Direction, Fault, FaultProxy};
///
/// # async fn example(server: std::net::SocketAddr) -> std::io::Result<()> {
/// let proxy = FaultProxy::start(server)?;
/// // Point the client at `proxy.authority()` instead of the server, then:
/// proxy.inject(Direction::Both, Fault::Latency(Duration::from_millis(20))).await;
/// proxy.inject(Direction::Downstream, Fault::Blackhole).await; // half-open
/// proxy.heal().await;
/// proxy.reset().await; // every open link gets a RST
/// # Ok(())
/// # }
/// ```
pub struct FaultProxy {
    shared: Rc<Shared>,
    local: SocketAddr,
    mode: AcceptMode,
    /// The listening socket while forwarding: the actor drops it the moment it stops
    /// forwarding, so that the port is free for what comes next.
    listening: Rc<RefCell<Option<TcpListener>>>,
    /// The accept loop, while forwarding.
    accepting: Option<SpawnHandle>,
    /// While blackholing connects: a listener that never accepts, and the connection
    /// that fills its accept queue (none if another connect filled it first).
    held: Option<(std::net::TcpListener, Option<std::net::TcpStream>)>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("local", &self.local)
            .field("upstream", &self.shared.upstream.get())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 that forwards to `upstream`.
    ///
    /// Call it inside an actix system (`#[actix::test]`, say).
    ///
    /// # Errors
    /// If the port cannot be bound.
    pub fn start(upstream: SocketAddr) -> io::Result<ProxyHandle> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 1024)?;
        let local = listener.local_addr()?;
        let listener = TcpListener::from_std(listener)?;
        let shared = Rc::new(Shared {
            upstream: Cell::new(upstream),
            upstream_faults: watch::Sender::new(Faults::default()),
            downstream_faults: watch::Sender::new(Faults::default()),
            links: RefCell::default(),
            next_link: Cell::new(0),
            stats: Cell::default(),
        });
        let addr = FaultProxy::create(move |ctx| {
            let mut proxy = FaultProxy {
                shared,
                local,
                mode: AcceptMode::Forward,
                listening: Rc::default(),
                accepting: None,
                held: None,
            };
            proxy.accept_on(listener, ctx);
            proxy
        });
        Ok(ProxyHandle { addr, local })
    }

    fn accept_on(&mut self, listener: TcpListener, ctx: &mut Context<Self>) {
        *self.listening.borrow_mut() = Some(listener);
        let listening = Rc::clone(&self.listening);
        let shared = Rc::clone(&self.shared);
        let accept = async move {
            loop {
                // The socket is borrowed only while polled: the actor can take it
                // away between polls, and the loop ends.
                let accepted = future::poll_fn(|cx| match listening.borrow().as_ref() {
                    Some(listener) => listener.poll_accept(cx).map(Some),
                    None => Poll::Ready(None),
                })
                .await;
                match accepted {
                    None => return,
                    Some(Ok((client, _))) => {
                        shared.count(|stats| stats.accepted += 1);
                        actix::spawn(run_link(client, Rc::clone(&shared)));
                    }
                    Some(Err(error)) => {
                        // Out of descriptors, say: back off rather than spin.
                        tracing::warn!(%error, "fault proxy: accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        };
        self.accepting = Some(ctx.spawn(accept.into_actor(self)));
    }

    fn set_mode(&mut self, mode: AcceptMode, ctx: &mut Context<Self>) -> io::Result<()> {
        if mode == self.mode {
            return Ok(());
        }
        // Whatever listened before lets go of the port first, now.
        self.listening.borrow_mut().take();
        if let Some(handle) = self.accepting.take() {
            ctx.cancel_future(handle);
        }
        self.held = None;
        match mode {
            AcceptMode::Forward => {
                let listener = TcpListener::from_std(bind(self.local, 1024)?)?;
                self.accept_on(listener, ctx);
            }
            AcceptMode::Refuse => {}
            AcceptMode::Blackhole => {
                // Backlog 0 holds one connection; once it is queued (and never
                // accepted), the kernel drops every further SYN.
                let listener = bind(self.local, 0)?;
                // Bounded: a SYN of someone else's may have filled the queue first,
                // and then ours is dropped too; the queue is full all the same.
                let filler = match std::net::TcpStream::connect_timeout(&self.local, FILL_TIMEOUT) {
                    Ok(filler) => Some(filler),
                    Err(error) if error.kind() == io::ErrorKind::TimedOut => None,
                    Err(error) => return Err(error),
                };
                self.held = Some((listener, filler));
            }
        }
        self.mode = mode;
        Ok(())
    }
}

/// A listening socket with `SO_REUSEADDR`, so the proxy can take its port back after
/// refusing or blackholing for a while.
fn bind(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// One accepted client: connect upstream, pump both ways, end as the faults or the
/// peers decide.
async fn run_link(mut client: TcpStream, shared: Rc<Shared>) {
    let upstream = shared.upstream.get();
    let mut server =
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
            Ok(Ok(server)) => server,
            _ => {
                shared.count(|stats| stats.upstream_failures += 1);
                return;
            }
        };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);

    let id = shared.next_link.get();
    shared.next_link.set(id + 1);
    let (signal, mut ended) = watch::channel(None);
    shared.links.borrow_mut().insert(id, signal);
    shared.count(|stats| stats.open += 1);

    let end = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pump(
            client_read,
            server_write,
            shared.upstream_faults.subscribe(),
            &shared,
            |stats, bytes| stats.forwarded_upstream += bytes,
        );
        let down = pump(
            server_read,
            client_write,
            shared.downstream_faults.subscribe(),
            &shared,
            |stats, bytes| stats.forwarded_downstream += bytes,
        );
        let external = async {
            loop {
                if let Some(end) = *ended.borrow_and_update() {
                    return end;
                }
                if ended.changed().await.is_err() {
                    return End::Close;
                }
            }
        };
        futures::pin_mut!(up, down, external);
        // Both directions finishing cleanly (each forwarded its end of stream) ends
        // the link; so does the first early end from either direction or a message.
        let pumps = async {
            match future::select(&mut up, &mut down).await {
                Either::Left((None, rest)) | Either::Right((None, rest)) => rest.await,
                Either::Left((end, _)) | Either::Right((end, _)) => end,
            }
        };
        futures::pin_mut!(pumps);
        match future::select(pumps, external).await {
            Either::Left((end, _)) => end,
            Either::Right((end, _)) => Some(end),
        }
    };

    match end {
        None => {}
        Some(End::Close) => {
            shared.count(|stats| stats.closes += 1);
            let _ = client.shutdown().await;
            let _ = server.shutdown().await;
        }
        Some(End::Reset) => {
            shared.count(|stats| stats.resets += 1);
            // Linger zero: closing sends a RST instead of a FIN.
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
            let _ = socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO));
        }
    }
    shared.links.borrow_mut().remove(&id);
    shared.count(|stats| stats.open -= 1);
}

/// What a pump's reader hands its writer.
enum Item {
    Data {
        due: Instant,
        bytes: Bytes,
    },
    /// The reader saw end of stream: forward a half-close.
    Eof,
    /// End the link.
    End(End),
}

/// Carries one direction of a link. Returns `None` when it forwarded the end of the
/// stream, or how the link must end.
async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    mut faults: watch::Receiver<Faults>,
    shared: &Shared,
    forwarded: fn(&mut ProxyStats, u64),
) -> Option<End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (queue, mut queued) = mpsc::channel(QUEUED_CHUNKS);
    let mut read_faults = faults.clone();
    let read = async move {
        let mut buffer = vec![0; READ_CHUNK];
        // Bytes passed since the faults last changed, for `CloseAfter`.
        let (mut epoch, mut passed) = (0, 0u64);
        loop {
            let item = match reader.read(&mut buffer).await {
                Ok(0) => {
                    // A blackhole lets no end of stream through either.
                    while_blackholed(&mut read_faults).await;
                    Item::Eof
                }
                Ok(read) => {
                    let now = *read_faults.borrow_and_update();
                    if now.blackhole {
                        shared.count(|stats| stats.dropped += read as u64);
                        continue;
                    }
                    if now.epoch != epoch {
                        (epoch, passed) = (now.epoch, 0);
                    }
                    let mut take = read;
                    let room = now.close_after.map(|limit| limit.saturating_sub(passed));
                    if let Some(room) = room {
                        take = take.min(usize::try_from(room).unwrap_or(usize::MAX));
                    }
                    passed += take as u64;
                    if take > 0 {
                        let bytes = Bytes::copy_from_slice(&buffer[..take]);
                        let due = Instant::now() + now.latency;
                        if queue.send(Item::Data { due, bytes }).await.is_err() {
                            return;
                        }
                    }
                    if room.is_some_and(|room| room <= read as u64) {
                        Item::End(End::Close)
                    } else {
                        continue;
                    }
                }
                Err(_) => {
                    while_blackholed(&mut read_faults).await;
                    Item::End(End::Reset)
                }
            };
            let _ = queue.send(item).await;
            return;
        }
    };
    let write = async move {
        // When the bandwidth limit lets the next byte go.
        let mut next_slot = Instant::now();
        while let Some(item) = queued.recv().await {
            let bytes = match item {
                Item::Data { due, bytes } => {
                    tokio::time::sleep_until(due).await;
                    bytes
                }
                Item::Eof => {
                    let _ = writer.shutdown().await;
                    return None;
                }
                Item::End(end) => return Some(end),
            };
            let now = *faults.borrow_and_update();
            if now.blackhole {
                shared.count(|stats| stats.dropped += bytes.len() as u64);
                continue;
            }
            for piece in bytes.chunks(now.slice.unwrap_or(bytes.len()).max(1)) {
                if writer.write_all(piece).await.is_err() {
                    return Some(End::Reset);
                }
                shared.count(|stats| forwarded(stats, piece.len() as u64));
                if let Some(rate) = now.bandwidth {
                    let cost = Duration::from_secs_f64(piece.len() as f64 / rate as f64);
                    next_slot = next_slot.max(Instant::now()) + cost;
                    tokio::time::sleep_until(next_slot).await;
                } else if now.slice.is_some() {
                    // Give the receiver time to read this piece before the next one
                    // lands, or its kernel hands it them all at once.
                    tokio::time::sleep(SLICE_PAUSE).await;
                }
            }
        }
        // The reader stopped without a word: its writer is gone, nothing to end.
        None
    };
    futures::pin_mut!(read, write);
    match future::select(read, write).await {
        // The reader queued its last item; the writer delivers everything before it.
        Either::Left(((), write)) => write.await,
        // The writer failed or was told to end the link; the reader stops with it.
        Either::Right((end, _)) => end,
    }
}

/// Waits while the direction is blackholed.
async fn while_blackholed(faults: &mut watch::Receiver<Faults>) {
    while faults.borrow_and_update().blackhole {
        if faults.changed().await.is_err() {
            return;
        }
    }
}

impl Actor for FaultProxy {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.shared.end_all(End::Close);
    }
}

impl Handler<Inject> for FaultProxy {
    type Result = ();

    /// Adds the fault to the direction's faults.
    fn handle(&mut self, inject: Inject, _: &mut Context<Self>) {
        if inject.direction.includes_upstream() {
            self.shared
                .upstream_faults
                .send_modify(|faults| faults.apply(inject.fault));
        }
        if inject.direction.includes_downstream() {
            self.shared
                .downstream_faults
                .send_modify(|faults| faults.apply(inject.fault));
        }
    }
}

impl Handler<Heal> for FaultProxy {
    type Result = ();

    /// Clears every fault.
    fn handle(&mut self, _: Heal, _: &mut Context<Self>) {
        self.shared.upstream_faults.send_modify(Faults::heal);
        self.shared.downstream_faults.send_modify(Faults::heal);
    }
}

impl Handler<Reset> for FaultProxy {
    type Result = usize;

    /// Resets every open link.
    fn handle(&mut self, _: Reset, _: &mut Context<Self>) -> usize {
        self.shared.end_all(End::Reset)
    }
}

impl Handler<SetAccept> for FaultProxy {
    type Result = io::Result<()>;

    /// Rebinds the port as the mode needs.
    fn handle(&mut self, SetAccept(mode): SetAccept, ctx: &mut Context<Self>) -> io::Result<()> {
        self.set_mode(mode, ctx)
    }
}

impl Handler<SetUpstream> for FaultProxy {
    type Result = ();

    /// Points new links at the address.
    fn handle(&mut self, SetUpstream(upstream): SetUpstream, _: &mut Context<Self>) {
        self.shared.upstream.set(upstream);
    }
}

impl Handler<GetProxyStats> for FaultProxy {
    type Result = actix::MessageResult<GetProxyStats>;

    /// The counters now.
    fn handle(&mut self, _: GetProxyStats, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.shared.stats.get())
    }
}

impl Handler<StopProxy> for FaultProxy {
    type Result = ();

    /// Stops the actor; `stopped` closes the links.
    fn handle(&mut self, _: StopProxy, ctx: &mut Context<Self>) {
        use actix::ActorContext;
        ctx.stop();
    }
}

/// A running [`FaultProxy`]: its address for clients and async methods that send it
/// its messages.
///
/// The methods panic if the proxy has stopped, as the rest of the test harness does
/// when what a test relies on is gone.
#[derive(Clone, Debug)]
pub struct ProxyHandle {
    addr: Addr<FaultProxy>,
    local: SocketAddr,
}

impl ProxyHandle {
    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Where clients connect, as an [`Authority`].
    pub fn authority(&self) -> Authority {
        Authority::tcp(self.local.ip().to_string(), self.local.port())
    }

    /// The proxy actor, for sending it messages directly.
    pub fn addr(&self) -> &Addr<FaultProxy> {
        &self.addr
    }

    /// Adds `fault` to `direction` (see [`Inject`]).
    ///
    /// # Panics
    /// If the proxy has stopped.
    pub async fn inject(&self, direction: Direction, fault: Fault) {
        self.ask(Inject { direction, fault }).await;
    }

    /// Clears every fault (see [`Heal`]).
    ///
    /// # Panics
    /// If the proxy has stopped.
    pub async fn heal(&self) {
        self.ask(Heal).await;
    }

    /// Resets every open link; returns how many (see [`Reset`]).
    ///
    /// # Panics
    /// If the proxy has stopped.
    pub async fn reset(&self) -> usize {
        self.ask(Reset).await
    }

    /// Sets what new connects meet (see [`SetAccept`]).
    ///
    /// # Panics
    /// If the proxy has stopped, or the port cannot be bound again.
    pub async fn set_accept(&self, mode: AcceptMode) {
        if let Err(error) = self.ask(SetAccept(mode)).await {
            panic!("fault proxy could not switch to {mode:?}: {error}");
        }
    }

    /// Sends new links to `upstream` (see [`SetUpstream`]).
    ///
    /// # Panics
    /// If the proxy has stopped.
    pub async fn set_upstream(&self, upstream: SocketAddr) {
        self.ask(SetUpstream(upstream)).await;
    }

    /// The proxy's counters.
    ///
    /// # Panics
    /// If the proxy has stopped.
    pub async fn stats(&self) -> ProxyStats {
        self.ask(GetProxyStats).await
    }

    /// Stops the proxy: its port closes and open links are closed. Does nothing if it
    /// has already stopped.
    pub async fn stop(&self) {
        let _ = self.addr.send(StopProxy).await;
    }

    async fn ask<M>(&self, message: M) -> M::Result
    where
        M: Message + Send + 'static,
        M::Result: Send,
        FaultProxy: Handler<M>,
    {
        match self.addr.send(message).await {
            Ok(result) => result,
            Err(_) => panic!("fault proxy has stopped"),
        }
    }
}
