//! The `frame` decoder, as a `Connection` builds it by default (8 MiB limit), fed the
//! whole input as one read and then the end of the stream.
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo fuzz run frame_decode -- -max_total_time=60
//! cargo fuzz run --sanitizer none frame_decode -- -max_total_time=60   # no ASan, plain stable
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::frame::DEFAULT_MAX_FRAME_LENGTH;
use switchboard_fuzz::decode_stream;

fuzz_target!(|data: &[u8]| {
    decode_stream(DEFAULT_MAX_FRAME_LENGTH, [data]);
});
