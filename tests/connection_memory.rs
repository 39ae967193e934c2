//! Memory a burst leaves behind: after a connection wrote a 1 MiB frame, its write
//! buffer holds the megabyte (the buffer is empty, but keeps its allocation); once
//! the connection is quiet for a few heartbeat intervals the megabyte is given back.
//! Live heap bytes are counted by this test binary's own global allocator, so this
//! file holds one test only (tests in one binary run on parallel threads).
#![cfg(feature = "testkit")]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use common::{connect, Setup, WAIT};
use switchboard::protocol::frame::{Frame, FrameKind};
use switchboard::{ConnectionConfig, SendFrame};

/// Counts the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const INTERVAL: Duration = Duration::from_secs(1);
const MIB: isize = 1024 * 1024;

#[actix::test]
async fn a_burst_of_writes_is_given_back_once_the_connection_is_quiet() {
    tokio::time::pause();
    let config = ConnectionConfig::builder()
        .heartbeat_interval(INTERVAL)
        .heartbeat_timeout(INTERVAL * 10)
        .build()
        .unwrap();
    let Setup { addr, mut peer, .. } = connect(config).await;
    let before = LIVE.load(Ordering::Relaxed);

    // One 1 MiB fire-and-forget frame: no reply comes, so nothing but the heartbeat
    // ever runs on this connection again.
    let payload = vec![0x5a_u8; MIB as usize];
    let sent = actix_rt::spawn(addr.send(SendFrame::new(Frame::push("big", payload))));
    let frame = peer.expect_kind(FrameKind::Push, WAIT).await;
    assert_eq!(frame.payload.len(), MIB as usize);
    drop(frame);
    sent.await.unwrap().unwrap().unwrap();
    // The peer's own read buffer grew for the frame too; it is not what is measured.
    *peer.framed().read_buffer_mut() = BytesMut::new();

    let after_burst = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        after_burst >= MIB,
        "the measurement sees the connection's write buffer: {after_burst} bytes"
    );

    // Quiet: the connection pings at each interval and the peer answers.
    for _ in 0..3 {
        let ping = peer.expect_kind(FrameKind::Ping, INTERVAL * 2).await;
        peer.send(Frame::pong(ping.id)).await;
    }
    let quiet = LIVE.load(Ordering::Relaxed) - before;
    // What may stay: the in-memory pipe's own buffer (up to 256 KiB) and small change.
    assert!(
        quiet < MIB / 2,
        "{quiet} bytes still held after three quiet intervals (right after the burst: \
         {after_burst})"
    );
}
