//! The outbox: delivered frames ([`Deliver`]) that did not fit the write buffer,
//! waiting for the peer to take bytes.
//!
//! A server connection handles its whole mailbox before its driver flushes, so answers
//! that become ready together arrive as one batch. Refusing what does not fit would
//! take a peer that reads promptly for a slow consumer; instead the frames wait here,
//! encoded and in order, and the driver moves them into the write buffer as the
//! transport takes bytes (`refill`). What waits is bounded: a frame sent with a
//! sender's queue ticket keeps its place in that queue until its bytes are in the write
//! buffer (so a [`ServerBroker`](crate::server::ServerBroker)'s `subscriber_queue`
//! bounds it); one without is bounded here by `max_in_flight`.
//!
//! Frames are encoded on arrival: byte counts stay exact, and frames need not be
//! `Clone`. This assumes, as the write buffer's truncation on a refused frame already
//! does, an encoder that keeps no state between frames.

use std::collections::VecDeque;
use std::pin::Pin;

use bytes::BytesMut;
use futures::Sink;
use tokio_util::codec::Encoder;

use super::{Connection, Deliver, Overflow, QueueTicket};
use crate::protocol::Protocol;
use crate::transport::Transport;
use crate::CloseReason;

/// A delivered frame waiting for room: its bytes, and its place in its sender's queue.
struct Waiting {
    bytes: BytesMut,
    ticket: Option<QueueTicket>,
}

/// Frames waiting for room in the write buffer, in order, with their counts.
#[derive(Default)]
pub(super) struct Outbox {
    frames: VecDeque<Waiting>,
    /// Bytes in `frames`.
    bytes: usize,
    /// Frames that no sender's queue counts (no ticket).
    untracked: usize,
}

impl Outbox {
    pub(super) fn len(&self) -> usize {
        self.frames.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    fn push(&mut self, bytes: BytesMut, ticket: Option<QueueTicket>) {
        self.untracked += usize::from(ticket.is_none());
        self.bytes += bytes.len();
        self.frames.push_back(Waiting { bytes, ticket });
    }

    /// The next frame's length, if any waits.
    fn next_len(&self) -> Option<usize> {
        self.frames.front().map(|waiting| waiting.bytes.len())
    }

    /// The next frame's bytes; its ticket is dropped, giving its sender's queue room.
    fn pop(&mut self) -> Option<BytesMut> {
        let Waiting { bytes, ticket } = self.frames.pop_front()?;
        self.untracked -= usize::from(ticket.is_none());
        self.bytes -= bytes.len();
        Some(bytes)
    }

    /// Drops everything waiting (the connection stopped); returns how many frames.
    pub(super) fn clear(&mut self) -> usize {
        let dropped = self.frames.len();
        *self = Self::default();
        dropped
    }
}

impl<T: Transport, P: Protocol> Connection<T, P> {
    /// Writes a delivered frame, or keeps it in the outbox while the write buffer has
    /// no room. Returns the reason to close if the frame overflows the outbox under
    /// [`Overflow::Close`].
    pub(super) fn deliver(&mut self, deliver: Deliver<P>) -> Option<CloseReason> {
        let Deliver {
            frame,
            overflow,
            _ticket: ticket,
        } = deliver;
        if ticket.is_none() {
            // A frame no sender's queue counts is bounded here. (Past the bound the
            // outbox is not empty, so this frame would have to wait too.)
            let limit = self.config.max_in_flight;
            if self.outbox.untracked >= limit {
                self.stats.deliveries_dropped += 1;
                return match overflow {
                    Overflow::Close => Some(CloseReason::SlowConsumer {
                        queued: self.outbox.len(),
                        limit,
                    }),
                    Overflow::Drop => None,
                };
            }
        }
        let limit = self.config.max_write_buffer;
        let before = self.framed.write_buffer().len();
        if self.outbox.is_empty() && before < limit {
            // The usual case: straight into the write buffer, as `write` does, except
            // that a frame crossing the cap is split off and kept rather than refused.
            if let Err(error) = Pin::new(&mut self.framed).start_send(frame) {
                self.framed.write_buffer_mut().truncate(before);
                self.stats.deliveries_dropped += 1;
                tracing::debug!(parent: &self.span, %error, "delivery not encoded, dropped");
                return None;
            }
            let after = self.framed.write_buffer().len();
            if after <= limit || before == 0 {
                self.encoded_total += (after - before) as u64;
                return None;
            }
            let bytes = self.framed.write_buffer_mut().split_off(before);
            self.outbox.push(bytes, ticket);
            return None;
        }
        // Behind frames already waiting (order), or the buffer is full.
        let mut bytes = BytesMut::new();
        if let Err(error) = self.framed.codec_mut().encode(frame, &mut bytes) {
            self.stats.deliveries_dropped += 1;
            tracing::debug!(parent: &self.span, %error, "delivery not encoded, dropped");
            return None;
        }
        self.outbox.push(bytes, ticket);
        None
    }

    /// Moves waiting deliveries into the write buffer while they fit (one into an
    /// empty buffer, however large, as for any frame); returns whether any moved.
    pub(super) fn refill(&mut self) -> bool {
        let limit = self.config.max_write_buffer;
        let mut moved = false;
        while let Some(next) = self.outbox.next_len() {
            let buffered = self.framed.write_buffer().len();
            if buffered > 0 && buffered + next > limit {
                break;
            }
            let Some(bytes) = self.outbox.pop() else {
                break;
            };
            self.encoded_total += bytes.len() as u64;
            let buffer = self.framed.write_buffer_mut();
            if buffer.is_empty() {
                *buffer = bytes;
            } else {
                buffer.extend_from_slice(&bytes);
            }
            moved = true;
        }
        moved
    }
}
