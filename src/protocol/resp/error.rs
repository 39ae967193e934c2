//! [`RespError`]: what the RESP codec refuses, in either direction.

/// Malformed, oversized or truncated RESP input, a command that cannot be sent, or an
/// I/O error under the codec.
///
/// An inbound error closes the one connection it happened on (the stream cannot be
/// resynchronised); an outbound one fails only the call whose command it is
/// ([`CallError::Encode`](crate::CallError::Encode)), and nothing is written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RespError {
    /// A bulk string, blob error or verbatim string claims more bytes than
    /// `max_bulk_length` (or a command argument is longer than it).
    #[error("bulk of {length} bytes exceeds max_bulk_length {max}")]
    BulkTooLong {
        /// The length claimed.
        length: u64,
        /// The configured limit.
        max: usize,
    },
    /// An array, set, push, map or attribute claims more elements than
    /// `max_elements` (a map's pairs count once each).
    #[error("aggregate of {count} elements exceeds max_elements {max}")]
    TooManyElements {
        /// The count claimed.
        count: u64,
        /// The configured limit.
        max: usize,
    },
    /// Aggregates nest deeper than `max_depth`.
    #[error("aggregates nest deeper than max_depth {max}")]
    TooDeep {
        /// The configured limit.
        max: usize,
    },
    /// A line (a type byte and what follows up to `\r\n`) is longer than
    /// `max_line_length`, or has not ended within it.
    #[error("line longer than max_line_length {max} without a CRLF")]
    LineTooLong {
        /// The configured limit.
        max: usize,
    },
    /// The type byte is not one RESP2 or RESP3 defines (or is a RESP3 streamed type,
    /// which redis does not send and this codec does not read).
    #[error("unknown RESP type byte {0:#04x}")]
    UnknownType(u8),
    /// A length or count is not a number, or is negative other than `-1`.
    #[error("invalid length or count {0:?}")]
    InvalidLength(String),
    /// A line or a bulk's body does not follow the rules of its type: an integer
    /// that is not one, a boolean other than `t` or `f`, a bulk not followed by
    /// `\r\n`, a line ended by a bare `\n`, ...
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The stream ended in the middle of a value.
    #[error("stream ended inside a value: {buffered} bytes of an unfinished value")]
    Truncated {
        /// Bytes received of the unfinished value that were still buffered.
        buffered: usize,
    },
    /// A command with an empty name.
    #[error("a command needs a name")]
    EmptyCommand,
    /// A subscribe or unsubscribe command (`SUBSCRIBE`, `PSUBSCRIBE`,
    /// `SSUBSCRIBE` and their `UN` forms) with other than one channel: redis answers
    /// such a command with one confirmation per channel (and an argument-less
    /// unsubscribe with one per subscription, or one if there is none), which
    /// in-order correlation cannot match with one call. Send one command per channel.
    #[error("{command} must name exactly one channel or pattern, not {channels}")]
    SubscribeArity {
        /// The command's name.
        command: String,
        /// How many channels or patterns it named.
        channels: usize,
    },
    /// The transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}
