//! The RESP decoder fed the same stream in the chunks the input's first bytes choose,
//! and all at once, under the limits they choose: both must give the same frames and
//! the same error.
//!
//! Input layout: byte 0 is how many chunk sizes follow (0 to 15); then that many
//! bytes, each a chunk size (cycled; 0 is read as 1); then four bytes of limits, each
//! 255 for no limit (`usize::MAX`): `max_bulk_length` (the byte times 16),
//! `max_elements` and `max_depth` (the byte), `max_line_length` (32 plus the byte); the
//! rest is the stream.
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo fuzz run resp_decode_chunked -- -max_total_time=60 -dict=resp.dict
//! cargo fuzz run --sanitizer none resp_decode_chunked -- -max_total_time=60 -dict=resp.dict   # no ASan, plain stable
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::resp::RespLimits;
use switchboard_fuzz::{chunks, decode_resp_stream};

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 16);
    if rest.len() < count + 4 {
        return;
    }
    let (sizes, rest) = rest.split_at(count);
    let (limits, stream) = rest.split_at(4);
    let limit = |byte: u8, scale: usize, base: usize| match byte {
        255 => usize::MAX,
        byte => base + usize::from(byte) * scale,
    };
    let limits = RespLimits::default()
        .max_bulk_length(limit(limits[0], 16, 0))
        .max_elements(limit(limits[1], 1, 0))
        .max_depth(limit(limits[2], 1, 0))
        .max_line_length(limit(limits[3], 1, 32));

    let chunked = decode_resp_stream(limits, chunks(sizes, stream));
    let whole = decode_resp_stream(limits, [stream]);
    assert_eq!(
        chunked, whole,
        "chunking changed what the stream decoded to"
    );
});
