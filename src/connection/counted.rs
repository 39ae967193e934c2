//! [`Counted`]: the connection's transport, counting the bytes that pass through it.
//!
//! The heartbeat judges liveness by these counts rather than by decoded frames: a peer
//! in the middle of a large frame that arrives slowly is alive, though no frame has
//! completed for longer than the heartbeat timeout. The write side's count tells
//! whether a write buffer the peer is not taking has made any progress.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A transport with running totals of the bytes read from it and written to it.
#[derive(Debug)]
pub(super) struct Counted<T> {
    io: T,
    read: u64,
    written: u64,
}

impl<T> Counted<T> {
    pub(super) fn new(io: T) -> Self {
        Self {
            io,
            read: 0,
            written: 0,
        }
    }

    /// Bytes read from the transport so far.
    pub(super) fn read(&self) -> u64 {
        self.read
    }

    /// Bytes the transport has taken so far.
    pub(super) fn written(&self) -> u64 {
        self.written
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let got = buf.filled().len().saturating_sub(before);
        this.read = this.read.saturating_add(got as u64);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.written = this.written.saturating_add(n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            this.written = this.written.saturating_add(n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
