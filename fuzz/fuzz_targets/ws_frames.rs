//! Fuzzes the WebSocket frame decoder: arbitrary bytes as a client's (masked) or a server's
//! frame stream, decoded at once and in reads of varying size; both must agree, and
//! nothing may panic. Run with `cargo +nightly fuzz run ws_frames` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use servercore::ws::fuzzing::check_stream;

fuzz_target!(|data: &[u8]| {
    // First 2 bytes: the side and the read-size seed; the rest is the stream.
    let Some((&[side, seed], raw)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_message = 1 << (side >> 1 & 15);
    let _ = check_stream(raw, side & 1 == 0, max_message, seed);
});
