//! [`RespLimits`]: the bounds a [`RespCodec`](super::RespCodec) holds the peer to.

/// Default for [`RespLimits::max_bulk_length`]: 64 MiB.
pub const DEFAULT_MAX_BULK_LENGTH: usize = 64 * 1024 * 1024;
/// Default for [`RespLimits::max_elements`]: 1,048,576.
pub const DEFAULT_MAX_ELEMENTS: usize = 1024 * 1024;
/// Default for [`RespLimits::max_depth`]: 64.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// Default for [`RespLimits::max_line_length`]: 64 KiB.
pub const DEFAULT_MAX_LINE_LENGTH: usize = 64 * 1024;

/// The bounds a [`RespCodec`](super::RespCodec) holds the peer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RespLimits {
    /// The longest bulk string, blob error or verbatim string read, and the longest
    /// command argument written.
    pub max_bulk_length: usize,
    /// The most elements of one array, set or push, or pairs of one map or attribute.
    pub max_elements: usize,
    /// How deep aggregates may nest (an array in an array is depth 2).
    pub max_depth: usize,
    /// The longest line: a simple string, error, integer, double, big number, or the
    /// header of a bulk or aggregate, type byte included, `\r\n` excluded.
    pub max_line_length: usize,
}

impl Default for RespLimits {
    fn default() -> Self {
        Self {
            max_bulk_length: DEFAULT_MAX_BULK_LENGTH,
            max_elements: DEFAULT_MAX_ELEMENTS,
            max_depth: DEFAULT_MAX_DEPTH,
            max_line_length: DEFAULT_MAX_LINE_LENGTH,
        }
    }
}

impl RespLimits {
    /// The longest bulk string read or argument written. Defaults to 64 MiB
    /// ([`DEFAULT_MAX_BULK_LENGTH`]; redis's own `proto-max-bulk-len` is 512 MiB).
    #[must_use]
    pub fn max_bulk_length(mut self, bytes: usize) -> Self {
        self.max_bulk_length = bytes;
        self
    }

    /// The most elements of one aggregate. Defaults to 1,048,576
    /// ([`DEFAULT_MAX_ELEMENTS`]).
    #[must_use]
    pub fn max_elements(mut self, count: usize) -> Self {
        self.max_elements = count;
        self
    }

    /// How deep aggregates may nest. Defaults to 64 ([`DEFAULT_MAX_DEPTH`]).
    #[must_use]
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }

    /// The longest line. At least 32 bytes are always allowed, so that every
    /// length and integer fits. Defaults to 64 KiB ([`DEFAULT_MAX_LINE_LENGTH`]).
    #[must_use]
    pub fn max_line_length(mut self, bytes: usize) -> Self {
        self.max_line_length = bytes.max(32);
        self
    }
}
