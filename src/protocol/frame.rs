//! The built-in `frame` protocol: compact length-prefixed binary frames.
//!
//! # Wire format
//!
//! ```text
//! +----------------+--------+---------+----------------+--------------------+-----------+
//! | length: u32 BE | kind:u8| flags:u8| id: u64 BE     | [topic_len: u16 BE | payload   |
//! |                |        |         |                |  topic bytes]      |           |
//! +----------------+--------+---------+----------------+--------------------+-----------+
//! ```
//!
//! `length` counts every byte after itself (header, topic and payload), so the
//! smallest frame has `length == 10`. Bit 0 of `flags` says a topic follows the id;
//! every other flag bit is reserved and must be zero. `kind` is one of
//! [`FrameKind`]'s values.
//!
//! The decoder checks `length` against [`FrameCodec::max_frame_length`] before it
//! reserves a single byte for the frame, and then reserves room for the rest at most
//! 64 KiB at a time as it arrives, so a peer cannot make it allocate what a corrupt
//! or hostile length prefix claims. Every malformed frame is a
//! [`FrameError`]; none panics.

use std::fmt;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{Correlation, Inbound, Protocol, RemoteError};
use crate::CloseReason;

/// Bytes in the length prefix.
pub(crate) const LENGTH_PREFIX: usize = 4;
/// Bytes in the fixed header after the length prefix: kind, flags, id.
const FIXED_HEADER: usize = 1 + 1 + 8;
/// Bytes in the topic length field, present when [`FLAG_TOPIC`] is set.
const TOPIC_LENGTH: usize = 2;
/// `flags` bit: a topic follows the id.
const FLAG_TOPIC: u8 = 0b0000_0001;
/// The most the decoder reserves at once for the rest of a frame.
const RESERVE_STEP: usize = 64 * 1024;

/// Default for [`FrameCodec::max_frame_length`]: 8 MiB.
pub const DEFAULT_MAX_FRAME_LENGTH: usize = 8 * 1024 * 1024;

/// What a frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A call that expects a [`FrameKind::Response`] or [`FrameKind::Error`] with the same id.
    Request = 1,
    /// The successful answer to the request with the same id.
    Response = 2,
    /// The failed answer to the request with the same id; the payload is the message.
    Error = 3,
    /// An unsolicited message, usually with a topic; never answered.
    Push = 4,
    /// A liveness probe; the peer answers with a [`FrameKind::Pong`] with the same id.
    Ping = 5,
    /// The answer to a [`FrameKind::Ping`].
    Pong = 6,
    /// A message for every subscriber of its topic; answered like a request, and the
    /// answer confirms that the server took it.
    Publish = 7,
    /// Subscribes the connection to its topic; the payload may carry the last sequence
    /// number the client saw (8 bytes, big-endian), to catch up from, and the server
    /// incarnation that numbered it (8 more). Answered like a request.
    Subscribe = 8,
    /// Ends the connection's subscription to its topic. Answered like a request.
    Unsubscribe = 9,
    /// A [`FrameKind::Publish`] fenced per producer, for ordered publishing. The
    /// payload opens with three big-endian `u64`s: the publishing client's instance
    /// number, its producer number, and the message's fence number (increasing per
    /// producer); the message follows. The server publishes a message only if its
    /// fence number is above the last one it published for that producer, so a
    /// message that arrives late on an old connection cannot overtake one the
    /// producer sent after it on a new connection. Answered like a request.
    PublishOrdered = 10,
}

/// The bytes a [`FrameKind::PublishOrdered`] payload opens with.
pub const PUBLISH_FENCE_LENGTH: usize = 24;

impl FrameKind {
    /// Every kind, in the order of their bytes (`ALL[n]` is byte `n + 1`).
    pub const ALL: [FrameKind; 10] = [
        Self::Request,
        Self::Response,
        Self::Error,
        Self::Push,
        Self::Ping,
        Self::Pong,
        Self::Publish,
        Self::Subscribe,
        Self::Unsubscribe,
        Self::PublishOrdered,
    ];

    fn from_byte(byte: u8) -> Option<Self> {
        let index = usize::from(byte.checked_sub(1)?);
        Self::ALL.get(index).copied()
    }
}

/// One decoded frame of the `frame` protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is for.
    pub kind: FrameKind,
    /// Correlates a response, error or pong with its request or ping.
    pub id: u64,
    /// An optional topic (at most 65,535 bytes), mostly for pushes.
    pub topic: Option<Bytes>,
    /// The application bytes.
    pub payload: Bytes,
}

impl Frame {
    /// A frame of `kind` with `id` and `payload` and no topic.
    pub fn new(kind: FrameKind, id: u64, payload: impl Into<Bytes>) -> Self {
        Self {
            kind,
            id,
            topic: None,
            payload: payload.into(),
        }
    }

    /// A request frame.
    pub fn request(id: u64, payload: impl Into<Bytes>) -> Self {
        Self::new(FrameKind::Request, id, payload)
    }

    /// A response frame answering request `id`.
    pub fn response(id: u64, payload: impl Into<Bytes>) -> Self {
        Self::new(FrameKind::Response, id, payload)
    }

    /// An error frame answering request `id` with a message.
    pub fn error(id: u64, message: impl Into<Bytes>) -> Self {
        Self::new(FrameKind::Error, id, message)
    }

    /// Whether the peer answers this frame with a response or an error of the same id.
    pub fn expects_reply(&self) -> bool {
        matches!(
            self.kind,
            FrameKind::Request
                | FrameKind::Publish
                | FrameKind::PublishOrdered
                | FrameKind::Subscribe
                | FrameKind::Unsubscribe
        )
    }

    /// A push frame on `topic`.
    pub fn push(topic: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            kind: FrameKind::Push,
            id: 0,
            topic: Some(topic.into()),
            payload: payload.into(),
        }
    }

    /// A ping frame.
    pub fn ping(id: u64) -> Self {
        Self::new(FrameKind::Ping, id, Bytes::new())
    }

    /// A pong frame answering ping `id`.
    pub fn pong(id: u64) -> Self {
        Self::new(FrameKind::Pong, id, Bytes::new())
    }

    /// This frame with `topic` set.
    #[must_use]
    pub fn with_topic(mut self, topic: impl Into<Bytes>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Bytes this frame takes on the wire, length prefix included.
    pub fn encoded_len(&self) -> usize {
        LENGTH_PREFIX + self.body_len()
    }

    /// Bytes after the length prefix.
    fn body_len(&self) -> usize {
        FIXED_HEADER
            + self.topic.as_ref().map_or(0, |t| TOPIC_LENGTH + t.len())
            + self.payload.len()
    }
}

/// A malformed, oversized or truncated frame, or an I/O error under the codec.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix claims more than `max_frame_length` bytes.
    #[error("frame of {length} bytes exceeds max_frame_length {max}")]
    TooLarge {
        /// What the length prefix (or an outgoing frame) claims.
        length: usize,
        /// The configured limit.
        max: usize,
    },
    /// The length prefix is smaller than the fixed header.
    #[error("frame length {length} is shorter than the {FIXED_HEADER}-byte header")]
    TooShort {
        /// What the length prefix claims.
        length: usize,
    },
    /// The kind byte is not one of [`FrameKind`]'s values.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A reserved flag bit is set.
    #[error("reserved frame flags set: {0:#010b}")]
    ReservedFlags(u8),
    /// The topic flag is set but the frame ends before the topic's length field.
    #[error("topic flag set but the {length}-byte frame has no room for the topic length")]
    TopicLengthMissing {
        /// The frame's length.
        length: usize,
    },
    /// The topic length runs past the end of the frame.
    #[error("topic of {topic_len} bytes does not fit in a {length}-byte frame")]
    TopicOverrun {
        /// What the topic length field claims.
        topic_len: usize,
        /// The frame's length.
        length: usize,
    },
    /// An outgoing topic is longer than 65,535 bytes.
    #[error("topic of {0} bytes is longer than 65535")]
    TopicTooLong(usize),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame: {buffered} bytes of an unfinished frame")]
    Truncated {
        /// Bytes received of the unfinished frame.
        buffered: usize,
    },
    /// The transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// The `frame` protocol's codec: [`Frame`]s in and out, with a bound on frame size.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_length: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LENGTH)
    }
}

impl FrameCodec {
    /// A codec that refuses frames longer than `max_frame_length` bytes (length prefix
    /// excluded), in both directions.
    ///
    /// The length prefix has 32 bits, so a larger limit means `u32::MAX` less the
    /// prefix.
    pub fn new(max_frame_length: usize) -> Self {
        let largest = u32::MAX as usize - LENGTH_PREFIX;
        Self {
            max_frame_length: max_frame_length.min(largest),
        }
    }

    /// The largest frame, in bytes after the length prefix, this codec accepts.
    pub fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let length = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        // Every check on the claimed length happens before any reservation.
        if length > self.max_frame_length {
            return Err(FrameError::TooLarge {
                length,
                max: self.max_frame_length,
            });
        }
        if length < FIXED_HEADER {
            return Err(FrameError::TooShort { length });
        }
        // The header can be judged before the payload arrives: reject garbage early
        // instead of waiting for up to `max_frame_length` bytes of it.
        if src.len() > LENGTH_PREFIX {
            FrameKind::from_byte(src[LENGTH_PREFIX])
                .ok_or(FrameError::UnknownKind(src[LENGTH_PREFIX]))?;
        }
        if src.len() > LENGTH_PREFIX + 1 && src[LENGTH_PREFIX + 1] & !FLAG_TOPIC != 0 {
            return Err(FrameError::ReservedFlags(src[LENGTH_PREFIX + 1]));
        }
        let total = LENGTH_PREFIX + length;
        if src.len() < total {
            // Room for what is missing, a step at a time: a peer that sends a header
            // and stalls costs at most one step, not the length it claims.
            src.reserve((total - src.len()).min(RESERVE_STEP));
            return Ok(None);
        }

        let mut body = src.split_to(total).freeze();
        body.advance(LENGTH_PREFIX);
        let kind = FrameKind::from_byte(body.get_u8()).expect("kind checked above");
        let flags = body.get_u8();
        let id = body.get_u64();
        let topic = if flags & FLAG_TOPIC != 0 {
            if body.len() < TOPIC_LENGTH {
                return Err(FrameError::TopicLengthMissing { length });
            }
            let topic_len = body.get_u16() as usize;
            if body.len() < topic_len {
                return Err(FrameError::TopicOverrun { topic_len, length });
            }
            Some(body.split_to(topic_len))
        } else {
            None
        };
        Ok(Some(Frame {
            kind,
            id,
            topic,
            payload: body,
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&frame, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let length = frame.body_len();
        if length > self.max_frame_length {
            return Err(FrameError::TooLarge {
                length,
                max: self.max_frame_length,
            });
        }
        // Checked against max_frame_length above, which a u32 prefix must also obey.
        let prefix = u32::try_from(length).map_err(|_| FrameError::TooLarge {
            length,
            max: u32::MAX as usize,
        })?;
        let topic_len = match &frame.topic {
            Some(topic) => Some(
                u16::try_from(topic.len()).map_err(|_| FrameError::TopicTooLong(topic.len()))?,
            ),
            None => None,
        };
        dst.reserve(LENGTH_PREFIX + length);
        dst.put_u32(prefix);
        dst.put_u8(frame.kind as u8);
        dst.put_u8(if topic_len.is_some() { FLAG_TOPIC } else { 0 });
        dst.put_u64(frame.id);
        if let (Some(len), Some(topic)) = (topic_len, &frame.topic) {
            dst.put_u16(len);
            dst.extend_from_slice(topic);
        }
        dst.extend_from_slice(&frame.payload);
        Ok(())
    }
}

/// A request in the `frame` protocol: a payload and an optional topic, sent as a
/// [`FrameKind::Request`] or as one of the broker's requests (publish, subscribe,
/// unsubscribe).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FrameRequest {
    /// An optional topic, for servers that route requests by it.
    pub topic: Option<Bytes>,
    /// The request's bytes.
    pub payload: Bytes,
    kind: RequestKind,
}

/// Which of the frame kinds that expect an answer a [`FrameRequest`] is sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum RequestKind {
    #[default]
    Request,
    Publish,
    PublishOrdered,
    Subscribe,
    Unsubscribe,
}

impl FrameRequest {
    /// A request with `payload` and no topic.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            topic: None,
            payload: payload.into(),
            kind: RequestKind::Request,
        }
    }

    /// A [`FrameKind::Publish`] of `payload` on `topic`.
    pub fn publish(topic: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: Some(topic.into()),
            payload: payload.into(),
            kind: RequestKind::Publish,
        }
    }

    /// A [`FrameKind::PublishOrdered`] of `payload` on `topic`, by `producer` of the
    /// client `instance`, with `fence` above every fence number that producer used
    /// before.
    pub fn publish_ordered(
        topic: impl Into<Bytes>,
        instance: u64,
        producer: u64,
        fence: u64,
        payload: &[u8],
    ) -> Self {
        let mut fenced = BytesMut::with_capacity(PUBLISH_FENCE_LENGTH + payload.len());
        fenced.put_u64(instance);
        fenced.put_u64(producer);
        fenced.put_u64(fence);
        fenced.extend_from_slice(payload);
        Self {
            topic: Some(topic.into()),
            payload: fenced.freeze(),
            kind: RequestKind::PublishOrdered,
        }
    }

    /// A [`FrameKind::Subscribe`] to `topic`, catching up on what was published
    /// after sequence number `after` if the server still has it (0 for only what
    /// comes next). `incarnation` is the server's incarnation that `after` was
    /// numbered by, as its last subscribe answer said (0 if unknown): a server that
    /// has restarted since numbers the topic afresh, and then replays all it has.
    pub fn subscribe(topic: impl Into<Bytes>, after: u64, incarnation: u64) -> Self {
        let payload = if after == 0 && incarnation == 0 {
            Bytes::new()
        } else {
            let mut numbers = BytesMut::with_capacity(16);
            numbers.put_u64(after);
            numbers.put_u64(incarnation);
            numbers.freeze()
        };
        Self {
            topic: Some(topic.into()),
            payload,
            kind: RequestKind::Subscribe,
        }
    }

    /// A [`FrameKind::Unsubscribe`] from `topic`.
    pub fn unsubscribe(topic: impl Into<Bytes>) -> Self {
        Self {
            topic: Some(topic.into()),
            payload: Bytes::new(),
            kind: RequestKind::Unsubscribe,
        }
    }

    /// This request with `topic` set.
    #[must_use]
    pub fn with_topic(mut self, topic: impl Into<Bytes>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The kind of frame this request is sent as.
    pub fn kind(&self) -> FrameKind {
        match self.kind {
            RequestKind::Request => FrameKind::Request,
            RequestKind::Publish => FrameKind::Publish,
            RequestKind::PublishOrdered => FrameKind::PublishOrdered,
            RequestKind::Subscribe => FrameKind::Subscribe,
            RequestKind::Unsubscribe => FrameKind::Unsubscribe,
        }
    }
}

impl From<Bytes> for FrameRequest {
    fn from(payload: Bytes) -> Self {
        Self::new(payload)
    }
}

impl From<&'static [u8]> for FrameRequest {
    fn from(payload: &'static [u8]) -> Self {
        Self::new(payload)
    }
}

impl From<&'static str> for FrameRequest {
    fn from(payload: &'static str) -> Self {
        Self::new(payload)
    }
}

impl From<Vec<u8>> for FrameRequest {
    fn from(payload: Vec<u8>) -> Self {
        Self::new(payload)
    }
}

/// An unsolicited [`FrameKind::Push`] frame: a topic and a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramePush {
    /// The frame's id: for a message from a subscription, its sequence number in the
    /// topic (numbered from 1 by the server's broker).
    pub seq: u64,
    /// The push's topic, if it had one.
    pub topic: Option<Bytes>,
    /// The push's bytes.
    pub payload: Bytes,
}

/// The `frame` protocol: requests and responses correlated by id, pings and pongs,
/// pushes with topics.
#[derive(Clone, Copy, Default)]
pub struct FrameProtocol {
    codec: FrameCodec,
}

impl fmt::Debug for FrameProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameProtocol")
            .field("max_frame_length", &self.codec.max_frame_length)
            .finish()
    }
}

impl FrameProtocol {
    /// The protocol with frames of at most `max_frame_length` bytes in either direction.
    /// Defaults to 8 MiB ([`DEFAULT_MAX_FRAME_LENGTH`]).
    pub fn new(max_frame_length: usize) -> Self {
        Self {
            codec: FrameCodec::new(max_frame_length),
        }
    }
}

impl Protocol for FrameProtocol {
    type Frame = Frame;
    type Codec = FrameCodec;
    type CodecError = FrameError;
    type Request = FrameRequest;
    type Reply = Bytes;
    type Push = FramePush;

    fn codec(&self) -> FrameCodec {
        self.codec
    }

    fn correlation(&self) -> Correlation {
        Correlation::ById
    }

    fn request(&self, id: u64, request: FrameRequest) -> Frame {
        Frame {
            kind: request.kind(),
            id,
            topic: request.topic,
            payload: request.payload,
        }
    }

    fn ping(&self, id: u64) -> Frame {
        Frame::ping(id)
    }

    fn classify(&self, frame: Frame) -> Inbound<Self> {
        match frame.kind {
            FrameKind::Response => Inbound::Reply {
                id: frame.id,
                reply: Ok(frame.payload),
            },
            FrameKind::Error => Inbound::Reply {
                id: frame.id,
                reply: Err(RemoteError::new(frame.payload)),
            },
            FrameKind::Ping => Inbound::Ping {
                pong: Frame::pong(frame.id),
            },
            FrameKind::Pong => Inbound::Pong { id: frame.id },
            FrameKind::Push => Inbound::Push(FramePush {
                seq: frame.id,
                topic: frame.topic,
                payload: frame.payload,
            }),
            FrameKind::Request
            | FrameKind::Publish
            | FrameKind::PublishOrdered
            | FrameKind::Subscribe
            | FrameKind::Unsubscribe => Inbound::Request(frame),
        }
    }

    fn reject(&self, request: &Frame, reason: &str) -> Option<Frame> {
        Some(Frame::error(request.id, reason.to_owned()))
    }

    fn close_reason(error: FrameError) -> CloseReason {
        match error {
            FrameError::Io(error) => CloseReason::Io(Arc::new(error)),
            other => CloseReason::Decode(Arc::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FrameKind;

    #[test]
    fn every_kind_is_read_from_its_own_byte_and_no_other_byte_is_a_kind() {
        for (n, kind) in FrameKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, n + 1, "{kind:?} out of place in ALL");
        }
        for byte in 0..=u8::MAX {
            let kind = FrameKind::from_byte(byte);
            assert_eq!(kind.map(|kind| kind as u8), kind.map(|_| byte));
            assert_eq!(kind.is_some(), (1..=10).contains(&byte), "byte {byte}");
        }
    }
}
