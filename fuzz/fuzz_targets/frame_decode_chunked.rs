//! The `frame` decoder fed the same stream in the chunks the input's first bytes
//! choose, and all at once: both must give the same frames and the same error.
//!
//! Input layout: byte 0 is how many chunk sizes follow (0 to 15); then that many
//! bytes, each a chunk size (cycled; 0 is read as 1); then two bytes, big-endian, of
//! `max_frame_length`; the rest is the stream.
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo fuzz run frame_decode_chunked -- -max_total_time=60
//! cargo fuzz run --sanitizer none frame_decode_chunked -- -max_total_time=60   # no ASan, plain stable
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_fuzz::{chunks, decode_stream};

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 16);
    if rest.len() < count + 2 {
        return;
    }
    let (sizes, rest) = rest.split_at(count);
    let (limit, stream) = rest.split_at(2);
    let max_frame_length = usize::from(u16::from_be_bytes([limit[0], limit[1]]));

    let chunked = decode_stream(max_frame_length, chunks(sizes, stream));
    let whole = decode_stream(max_frame_length, [stream]);
    assert_eq!(
        chunked, whole,
        "chunking changed what the stream decoded to"
    );
});
