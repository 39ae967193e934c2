//! Reliability scenario 8 (issue 5): malformed input from the network on a pooled
//! connection: an oversized length prefix, garbage, a frame cut by end of stream.
//!
//! What a user of the Pool can rely on, proved over real loopback TCP:
//! - each malformed input closes the one connection it arrived on with a typed
//!   reason, `CloseReason::Decode` carrying the codec's `FrameError` (`TooLarge`,
//!   `UnknownKind`, `ReservedFlags`, `TooShort`, `TopicOverrun`, `Truncated`); the
//!   calls pending on it fail with `CallError::Closed` carrying that same reason; no
//!   panic; the other pooled connection carries on; the pool replaces the closed one
//!   and the next checkout works on a new `ConnectionId`;
//! - a length prefix claiming 4 GiB closes the connection as soon as the 4-byte
//!   header is in, while the peer keeps its socket open and sends no body: the client
//!   neither waits for the body nor allocates it (the largest single allocation this
//!   test's thread makes meanwhile is measured by a counting global allocator);
//! - even a huge length the protocol's limit allows is never allocated up front: the
//!   read buffer grows with the bytes that actually arrive;
//! - the same holds when the hostile bytes arrive one byte per TCP segment.
//!
//! How the fault is made: the pool connects to a loopback TCP listener whose accepted
//! sockets are scripted `MockPeer`s that write raw bytes (and, for the sliced case,
//! through a `FaultProxy` with `Fault::Slice(1)` downstream).
//!
//! ```text
//! cargo test --all-features --test reliability_malformed
//! ```
#![cfg(feature = "testkit")]

mod reliability_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use reliability_common::*;
use switchboard::protocol::frame::{
    FrameError, FrameKind, FrameProtocol, FrameRequest, DEFAULT_MAX_FRAME_LENGTH,
};
use switchboard::testkit::{Direction, Fault, FaultProxy, MockPeer, Probe, ProxyHandle};
use switchboard::transport::TcpConnector;
use switchboard::{Authority, Call, CallError, CloseReason, ConnectionEvent, Lease, Pool};
use tokio::net::TcpStream;

/// Counts, per thread, the largest single allocation (or reallocation) asked for, so
/// a test can show that a claimed length was never allocated. Everything a test here
/// runs (pool, connections, scripted peers) runs on the test's own thread: actix
/// tests run a single-threaded runtime.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown are not counted.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping
// is a thread-local `Cell` with a const initializer, which never allocates.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Starts counting the largest allocation on this thread afresh.
fn reset_largest_allocation() {
    LARGEST.with(|largest| largest.set(0));
}

/// The largest allocation on this thread since the last reset.
fn largest_allocation() -> usize {
    LARGEST.with(Cell::get)
}

/// The codec error behind a `Decode` close reason.
fn frame_error(reason: &CloseReason) -> &FrameError {
    match reason {
        CloseReason::Decode(source) => source
            .downcast_ref::<FrameError>()
            .expect("a frame codec error"),
        other => panic!("expected a Decode close, got {other:?}"),
    }
}

/// Waits for the spawned call `pending` to end, and checks that it failed with a
/// close whose frame error `expected` accepts.
async fn pending_fails_with(
    pending: tokio::task::JoinHandle<Result<Result<Bytes, CallError>, actix::MailboxError>>,
    expected: impl Fn(&FrameError) -> bool,
) {
    let error = within(REAL_WAIT, "pending call ends", pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(expected(frame_error(closed_reason(&error))), "{error:?}");
}

type TcpPeer = MockPeer<TcpStream>;

/// A pool over TCP to `authority` speaking `protocol`, built eagerly with
/// `min_idle == max_size == size`, its events on `events`.
async fn tcp_pool(
    authority: Authority,
    protocol: FrameProtocol,
    size: usize,
    events: &Probe<ConnectionEvent>,
) -> TcpPool {
    let pool = Pool::builder(TcpConnector::new(), protocol)
        .config(pool_config().min_idle(size).max_size(size).build().unwrap())
        .connection(quiet_connection().build().unwrap())
        .authority(authority)
        .events(events.recipient())
        .build();
    within(REAL_WAIT, "eager build", pool).await.unwrap()
}

/// After a connection closed: the pool has replaced it, the replacement's peer
/// (accepted from `bed`) is scripted, and a checkout gets it and it works. `gone` are
/// the ids that must not come back.
async fn assert_replaced(pool: &TcpPool, bed: &TcpBed, gone: &[switchboard::ConnectionId]) {
    let mut peer = bed.accept().await;
    let a = bed.authority();
    eventually(REAL_WAIT, "the pool replaces the connection", || async {
        let status = pool.status().await.unwrap();
        let group = status.authority(&a).unwrap();
        (group.idle >= 1 && group.connecting == 0).then_some(())
    })
    .await;
    let lease = within(REAL_WAIT, "checkout", pool.checkout(&a))
        .await
        .unwrap();
    assert!(!gone.contains(&lease.id()), "a closed connection came back");
    let call = actix::spawn(lease.send(Call::new(FrameRequest::new("fresh"))));
    let request = peer.expect_request(REAL_WAIT).await;
    peer.reply(&request, "fresh").await;
    let reply = within(REAL_WAIT, "call on the replacement", call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.unwrap(), Bytes::from_static(b"fresh"));
}

#[actix::test]
async fn a_length_prefix_claiming_4_gib_closes_the_connection_at_the_header_without_allocating_it()
{
    let bed = TcpBed::new().await;
    let mut events = Probe::<ConnectionEvent>::start();
    let pool = tcp_pool(bed.authority(), FrameProtocol::default(), 1, &events).await;
    let mut peer = bed.accept().await;
    let a = bed.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    let pending: Vec<_> = (0..3)
        .map(|n| actix::spawn(lease.send(Call::new(FrameRequest::new(payload(n, 8))))))
        .collect();
    peer.expect_frames(3, REAL_WAIT).await;

    // Four bytes claiming 4 GiB, and then nothing: the peer keeps its socket open.
    reset_largest_allocation();
    peer.send_raw(&u32::MAX.to_be_bytes()).await;
    let (closed, reason) = next_closed(&mut events, REAL_WAIT).await;
    let largest = largest_allocation();
    assert_eq!(closed, id);
    match frame_error(&reason) {
        FrameError::TooLarge { length, max } => {
            assert_eq!(*length, u32::MAX as usize);
            assert_eq!(*max, DEFAULT_MAX_FRAME_LENGTH);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(
        largest < 1024 * 1024,
        "a {largest}-byte allocation while refusing the header"
    );
    for call in pending {
        let result = within(REAL_WAIT, "pending call ends", call)
            .await
            .unwrap()
            .unwrap();
        let error = result.unwrap_err();
        assert!(
            matches!(
                frame_error(closed_reason(&error)),
                FrameError::TooLarge { .. }
            ),
            "{error:?}"
        );
    }
    // The client hung up on the peer, which never sent a body nor closed.
    peer.expect_closed(REAL_WAIT).await;
    drop(lease);

    assert_replaced(&pool, &bed, &[id]).await;
    let status = pool.status().await.unwrap();
    assert_eq!(status.counters.closed.get("decode"), Some(&1));
    within(REAL_WAIT, "close", pool.close()).await;
}

#[actix::test]
async fn a_huge_length_the_limit_allows_is_buffered_as_it_arrives_never_allocated_up_front() {
    let bed = TcpBed::new().await;
    let mut events = Probe::<ConnectionEvent>::start();
    // The largest limit the protocol takes: a claim just under 4 GiB is allowed.
    let protocol = FrameProtocol::new(usize::MAX);
    let pool = tcp_pool(bed.authority(), protocol, 1, &events).await;
    let mut peer = bed.accept().await;
    let a = bed.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let pending = actix::spawn(lease.send(Call::new(FrameRequest::new("question"))));
    let request = peer.expect_request(REAL_WAIT).await;

    // A response header claiming ~4 GiB, then 1 MiB of its body, then end of stream.
    const SENT: usize = 1024 * 1024;
    let claimed: u32 = u32::MAX - 64;
    let mut header = claimed.to_be_bytes().to_vec();
    header.extend_from_slice(&[FrameKind::Response as u8, 0]);
    header.extend_from_slice(&request.id.to_be_bytes());
    reset_largest_allocation();
    peer.send_raw(&header).await;
    for _ in 0..SENT / 4096 {
        peer.send_raw(&[0x5a; 4096]).await;
    }
    peer.close().await;

    let (_, reason) = next_closed(&mut events, REAL_WAIT).await;
    let largest = largest_allocation();
    match frame_error(&reason) {
        FrameError::Truncated { buffered } => {
            assert_eq!(
                *buffered,
                header.len() + SENT,
                "every byte that came, no more"
            )
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(
        largest <= 4 * SENT,
        "a {largest}-byte allocation for {SENT} bytes received (the claim was {claimed})"
    );
    pending_fails_with(pending, |error| {
        matches!(error, FrameError::Truncated { .. })
    })
    .await;
    drop(lease);
    within(REAL_WAIT, "close", pool.close()).await;
}

/// Garbage of one kind on one of two pooled connections, with calls pending on both.
async fn garbage_closes_only_its_connection(garbage: &[u8], expected: fn(&FrameError) -> bool) {
    let bed = TcpBed::new().await;
    let mut events = Probe::<ConnectionEvent>::start();
    let pool = tcp_pool(bed.authority(), FrameProtocol::default(), 2, &events).await;
    let a = bed.authority();
    let mut peers = [bed.accept().await, bed.accept().await];
    let broken = pool.checkout(&a).await.unwrap();
    let healthy = pool.checkout(&a).await.unwrap();

    // Which peer is whose: the first call on the broken lease tells.
    let pending = actix::spawn(broken.send(Call::new(FrameRequest::new("on the broken one"))));
    let (at, _) = next_frame_on_either(&mut peers, REAL_WAIT).await;
    let [first, second] = peers;
    let (mut bad_peer, mut good_peer): (TcpPeer, TcpPeer) = if at == 0 {
        (first, second)
    } else {
        (second, first)
    };
    let healthy_call = actix::spawn(healthy.send(Call::new(FrameRequest::new("healthy"))));
    let healthy_request = good_peer.expect_request(REAL_WAIT).await;

    bad_peer.send_raw(garbage).await;
    let (closed, reason) = next_closed(&mut events, REAL_WAIT).await;
    assert_eq!(closed, broken.id());
    assert!(expected(frame_error(&reason)), "{reason:?}");
    pending_fails_with(pending, expected).await;
    bad_peer.expect_closed(REAL_WAIT).await;

    // The other connection is untouched: its pending call is answered.
    good_peer.reply(&healthy_request, "healthy").await;
    let reply = within(REAL_WAIT, "healthy call", healthy_call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.unwrap(), Bytes::from_static(b"healthy"));
    assert_no_close(&mut events);

    let gone = [broken.id(), healthy.id()];
    drop(broken);
    assert_replaced(&pool, &bed, &gone).await;
    drop(healthy);
    let status = pool.status().await.unwrap();
    assert_eq!(status.counters.closed.get("decode"), Some(&1));
    assert_eq!(status.counters.closed.values().sum::<u64>(), 1);
    within(REAL_WAIT, "close", pool.close()).await;
}

/// A frame header: length prefix, kind byte, flags byte, id.
fn header(length: u32, kind: u8, flags: u8) -> Vec<u8> {
    let mut bytes = length.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[kind, flags]);
    bytes.extend_from_slice(&7u64.to_be_bytes());
    bytes
}

#[actix::test]
async fn an_unknown_frame_kind_closes_only_its_connection() {
    garbage_closes_only_its_connection(&header(10, 0x63, 0), |e| {
        matches!(e, FrameError::UnknownKind(0x63))
    })
    .await;
}

#[actix::test]
async fn reserved_flags_close_only_their_connection() {
    garbage_closes_only_its_connection(&header(10, FrameKind::Response as u8, 0x80), |e| {
        matches!(e, FrameError::ReservedFlags(0x80))
    })
    .await;
}

#[actix::test]
async fn a_length_shorter_than_the_header_closes_only_its_connection() {
    garbage_closes_only_its_connection(&[0, 0, 0, 3, 1, 2, 3], |e| {
        matches!(e, FrameError::TooShort { length: 3 })
    })
    .await;
}

#[actix::test]
async fn a_topic_longer_than_its_frame_closes_only_its_connection() {
    // A push whose topic claims 500 bytes in a 14-byte frame.
    let mut frame = header(14, FrameKind::Push as u8, 1);
    frame.extend_from_slice(&500u16.to_be_bytes());
    frame.extend_from_slice(b"ab");
    garbage_closes_only_its_connection(&frame, |e| {
        matches!(e, FrameError::TopicOverrun { topic_len: 500, .. })
    })
    .await;
}

#[actix::test]
async fn random_bytes_close_only_their_connection_with_a_decode_error() {
    // Printable text where a binary header belongs: a length of ~1.2 GiB.
    garbage_closes_only_its_connection(b"HTTP/1.1 400 Bad Request\r\n\r\n", |e| {
        matches!(e, FrameError::TooLarge { .. })
    })
    .await;
}

#[actix::test]
async fn a_frame_cut_by_end_of_stream_fails_the_pending_call_as_truncated() {
    let bed = TcpBed::new().await;
    let mut events = Probe::<ConnectionEvent>::start();
    let pool = tcp_pool(bed.authority(), FrameProtocol::default(), 1, &events).await;
    let mut peer = bed.accept().await;
    let a = bed.authority();
    let lease = pool.checkout(&a).await.unwrap();
    let id = lease.id();
    let pending = actix::spawn(lease.send(Call::new(FrameRequest::new("question"))));
    let request = peer.expect_request(REAL_WAIT).await;

    // The first 14 bytes of a 24-byte response, then the peer closes its socket.
    let mut partial = header(20, FrameKind::Response as u8, 0);
    partial[6..14].copy_from_slice(&request.id.to_be_bytes());
    partial.extend_from_slice(b"half");
    peer.send_raw(&partial).await;
    peer.close().await;

    let (closed, reason) = next_closed(&mut events, REAL_WAIT).await;
    assert_eq!(closed, id);
    assert!(
        matches!(frame_error(&reason), FrameError::Truncated { buffered: 18 }),
        "{reason:?}"
    );
    pending_fails_with(pending, |error| {
        matches!(error, FrameError::Truncated { .. })
    })
    .await;
    drop(lease);
    assert_replaced(&pool, &bed, &[id]).await;
    within(REAL_WAIT, "close", pool.close()).await;
}

/// One pooled connection whose peer's bytes reach it one per segment, through a
/// proxy that slices them; leased.
struct Sliced {
    /// Kept for its listener.
    _bed: TcpBed,
    proxy: ProxyHandle,
    events: Probe<ConnectionEvent>,
    pool: TcpPool,
    peer: TcpPeer,
    lease: Lease<TcpConnector, FrameProtocol>,
}

async fn sliced() -> Sliced {
    let bed = TcpBed::new().await;
    let proxy = FaultProxy::start(bed.addr).unwrap();
    proxy.inject(Direction::Downstream, Fault::Slice(1)).await;
    let events = Probe::<ConnectionEvent>::start();
    let pool = tcp_pool(proxy.authority(), FrameProtocol::default(), 1, &events).await;
    let peer = bed.accept().await;
    let lease = pool.checkout(&proxy.authority()).await.unwrap();
    Sliced {
        _bed: bed,
        proxy,
        events,
        pool,
        peer,
        lease,
    }
}

#[actix::test]
async fn hostile_bytes_arriving_one_per_segment_give_the_same_typed_error() {
    let Sliced {
        _bed,
        proxy,
        mut events,
        pool,
        mut peer,
        lease,
    } = sliced().await;
    let id = lease.id();

    // A good reply arriving a byte at a time is read whole.
    let call = actix::spawn(lease.send(Call::new(FrameRequest::new("sliced"))));
    let request = peer.expect_request(REAL_WAIT).await;
    peer.reply(&request, "sliced reply").await;
    let reply = within(REAL_WAIT, "sliced reply", call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.unwrap(), Bytes::from_static(b"sliced reply"));

    // A 4 GiB claim, a byte at a time: refused once its fourth byte is in.
    let pending = actix::spawn(lease.send(Call::new(FrameRequest::new("pending"))));
    peer.expect_request(REAL_WAIT).await;
    reset_largest_allocation();
    peer.send_raw(&[0xFF, 0xFF, 0xFF, 0xFF]).await;
    let (closed, reason) = next_closed(&mut events, REAL_WAIT).await;
    assert!(largest_allocation() < 1024 * 1024);
    assert_eq!(closed, id);
    assert!(
        matches!(frame_error(&reason), FrameError::TooLarge { length, .. } if *length == u32::MAX as usize),
        "{reason:?}"
    );
    pending_fails_with(pending, |error| {
        matches!(error, FrameError::TooLarge { .. })
    })
    .await;
    drop(lease);
    within(REAL_WAIT, "close", pool.close()).await;
    proxy.stop().await;
}

/// Which frame errors a case accepts.
type Expected = fn(&FrameError) -> bool;

/// `bytes` (then an end of stream, with `close`) sent a byte per segment through a
/// proxy, with a call pending: the connection closes with the error `expected`
/// accepts, and the call fails with it.
async fn one_per_segment_gives(bytes: &[u8], close: bool, expected: Expected) {
    let Sliced {
        _bed,
        proxy,
        mut events,
        pool,
        mut peer,
        lease,
    } = sliced().await;
    let pending = actix::spawn(lease.send(Call::new(FrameRequest::new("pending"))));
    peer.expect_request(REAL_WAIT).await;
    peer.send_raw(bytes).await;
    if close {
        peer.close().await;
    }
    let (closed, reason) = next_closed(&mut events, REAL_WAIT).await;
    assert_eq!(closed, lease.id());
    assert!(expected(frame_error(&reason)), "{reason:?}");
    pending_fails_with(pending, expected).await;
    drop(lease);
    within(REAL_WAIT, "close", pool.close()).await;
    proxy.stop().await;
}

#[actix::test]
async fn every_malformed_input_gives_its_error_when_it_arrives_one_byte_per_segment() {
    let mut overrun = header(14, FrameKind::Push as u8, 1);
    overrun.extend_from_slice(&500u16.to_be_bytes());
    overrun.extend_from_slice(b"ab");
    let mut cut = header(20, FrameKind::Response as u8, 0);
    cut.extend_from_slice(b"half");
    let cases: [(&[u8], bool, Expected); 6] = [
        (&header(10, 0x63, 0), false, |e| {
            matches!(e, FrameError::UnknownKind(0x63))
        }),
        (&header(10, FrameKind::Response as u8, 0x80), false, |e| {
            matches!(e, FrameError::ReservedFlags(0x80))
        }),
        (&[0, 0, 0, 3, 1, 2, 3], false, |e| {
            matches!(e, FrameError::TooShort { length: 3 })
        }),
        (&overrun, false, |e| {
            matches!(e, FrameError::TopicOverrun { topic_len: 500, .. })
        }),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", false, |e| {
            matches!(e, FrameError::TooLarge { .. })
        }),
        (&cut, true, |e| {
            matches!(e, FrameError::Truncated { buffered: 18 })
        }),
    ];
    for (bytes, close, expected) in cases {
        one_per_segment_gives(bytes, close, expected).await;
    }
}
