//! The RESP decoder, as a `Connection` builds it by default (`RespProtocol::new()`:
//! 64 MiB bulks, 1,048,576 elements, 64 deep, 64 KiB lines), fed the whole input as
//! one read and then the end of the stream.
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo fuzz run resp_decode -- -max_total_time=60 -dict=resp.dict
//! cargo fuzz run --sanitizer none resp_decode -- -max_total_time=60 -dict=resp.dict   # no ASan, plain stable
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::resp::RespLimits;
use switchboard_fuzz::decode_resp_stream;

fuzz_target!(|data: &[u8]| {
    decode_resp_stream(RespLimits::default(), [data]);
});
