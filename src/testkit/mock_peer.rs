//! [`MockPeer`]: the far end of a connection, scripted step by step by a test.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio_util::codec::Framed;

use crate::protocol::frame::{Frame, FrameCodec, FrameKind};
use crate::transport::Transport;

/// Bytes each direction of a [`MockPeer::pair`] pipe buffers before the writer waits.
const PAIR_CAPACITY: usize = 256 * 1024;

/// The far end of a connection speaking the `frame` protocol, driven by the test:
/// every step is an explicit call, and every wait has a timeout that panics with what
/// was expected.
///
/// Going silent is doing nothing (the peer answers nothing, pings included); a
/// half-open link is a peer that neither answers nor closes.
///
/// It speaks only the built-in `frame` protocol. For a protocol of your own, drive a
/// `tokio_util::codec::Framed` with your codec over the other end of a
/// [`tokio::io::duplex`] pipe the same way.
pub struct MockPeer<T: Transport = DuplexStream> {
    framed: Framed<T, FrameCodec>,
}

impl<T: Transport> fmt::Debug for MockPeer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockPeer").finish_non_exhaustive()
    }
}

impl MockPeer<DuplexStream> {
    /// An in-memory pipe: the transport to give a Connection, and the peer at its
    /// other end.
    pub fn pair() -> (DuplexStream, Self) {
        let (client, server) = tokio::io::duplex(PAIR_CAPACITY);
        (client, Self::new(server))
    }
}

impl<T: Transport> MockPeer<T> {
    /// A peer on an already open transport (the server side of an accepted socket, say).
    pub fn new(io: T) -> Self {
        Self {
            framed: Framed::new(io, FrameCodec::default()),
        }
    }

    /// The next frame, waiting at most `timeout`.
    ///
    /// # Panics
    /// If no frame arrives in time, the stream ends, or the bytes do not decode.
    pub async fn expect_frame(&mut self, timeout: Duration) -> Frame {
        match tokio::time::timeout(timeout, self.framed.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(error))) => panic!("mock peer read a bad frame: {error}"),
            Ok(None) => panic!("connection closed while the mock peer expected a frame"),
            Err(_) => panic!("mock peer got no frame within {timeout:?}"),
        }
    }

    /// The next frame, which must be a request.
    ///
    /// # Panics
    /// As [`expect_frame`](Self::expect_frame), or if the frame is not a request.
    pub async fn expect_request(&mut self, timeout: Duration) -> Frame {
        self.expect_kind(FrameKind::Request, timeout).await
    }

    /// The next frame, which must be of `kind`.
    ///
    /// # Panics
    /// As [`expect_frame`](Self::expect_frame), or if the frame is of another kind.
    pub async fn expect_kind(&mut self, kind: FrameKind, timeout: Duration) -> Frame {
        let frame = self.expect_frame(timeout).await;
        assert_eq!(
            frame.kind, kind,
            "mock peer expected a {kind:?} frame, got {frame:?}"
        );
        frame
    }

    /// `n` frames in a row, each waited for at most `timeout`.
    ///
    /// # Panics
    /// As [`expect_frame`](Self::expect_frame), for any of them.
    pub async fn expect_frames(&mut self, n: usize, timeout: Duration) -> Vec<Frame> {
        let mut frames = Vec::with_capacity(n);
        for _ in 0..n {
            frames.push(self.expect_frame(timeout).await);
        }
        frames
    }

    /// Waits `during` and asserts that nothing arrives and the stream stays open.
    ///
    /// # Panics
    /// If a frame arrives or the stream ends.
    pub async fn expect_nothing(&mut self, during: Duration) {
        if let Ok(next) = tokio::time::timeout(during, self.framed.next()).await {
            panic!("mock peer expected nothing for {during:?}, got {next:?}");
        }
    }

    /// Waits for the connection to close its end, skipping any frames still on the way.
    ///
    /// # Panics
    /// If the stream is still open after `timeout`.
    pub async fn expect_closed(&mut self, timeout: Duration) {
        let closed = async { while let Some(Ok(_)) = self.framed.next().await {} };
        if tokio::time::timeout(timeout, closed).await.is_err() {
            panic!("connection still open after {timeout:?}");
        }
    }

    /// Writes `frame`.
    ///
    /// # Panics
    /// If the write fails.
    pub async fn send(&mut self, frame: Frame) {
        self.framed
            .send(frame)
            .await
            .expect("mock peer failed to write a frame");
    }

    /// Answers `request` with a response carrying `payload`.
    ///
    /// # Panics
    /// If the write fails.
    pub async fn reply(&mut self, request: &Frame, payload: impl Into<Bytes>) {
        self.send(Frame::response(request.id, payload)).await;
    }

    /// Answers `request` with an error carrying `message`.
    ///
    /// # Panics
    /// If the write fails.
    pub async fn reply_error(&mut self, request: &Frame, message: impl Into<Bytes>) {
        self.send(Frame::error(request.id, message)).await;
    }

    /// Writes raw bytes, malformed or not.
    ///
    /// # Panics
    /// If the write fails.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let io = self.framed.get_mut();
        io.write_all(bytes)
            .await
            .expect("mock peer failed to write raw bytes");
        io.flush().await.expect("mock peer failed to flush");
    }

    /// Closes the peer's side of the transport (the connection reads end of stream).
    pub async fn close(mut self) {
        let _ = self.framed.get_mut().shutdown().await;
    }

    /// The framed transport, for steps this type does not offer.
    pub fn framed(&mut self) -> &mut Framed<T, FrameCodec> {
        &mut self.framed
    }
}
