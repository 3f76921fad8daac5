//! Fuzzes the frame decoder: arbitrary bytes, fed in arbitrary reads, with an arbitrary
//! maximum. It must never panic, never read past a packet, and agree with a direct walk of
//! the headers. Run with `cargo +nightly fuzz run frame_decoder` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use servercore::packet::{decode, FrameDecoder, FrameError, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    // First 3 bytes: the maximum (2) and the read-size seed (1); the rest is the stream.
    let Some((&[m0, m1, seed], raw)) = data.split_first_chunk::<3>() else {
        return;
    };
    let decoder = FrameDecoder::new(usize::from(u16::from_le_bytes([m0, m1])));
    let max = decoder.max_packet_size();
    assert!((HEADER_LEN..=65535).contains(&max));

    // Feed the stream in reads of varying size, as a session would.
    let mut rx: Vec<u8> = Vec::new();
    let mut packets: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut error = None;
    let mut rest = raw;
    let mut step = usize::from(seed) + 1;
    while !rest.is_empty() && error.is_none() {
        let n = step.min(rest.len());
        rx.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        step = step * 7 % 251 + 1;
        match decoder.decode_all(&rx, |p| {
            assert_eq!(p.wire_len(), HEADER_LEN + p.payload.len());
            assert!(p.wire_len() <= max);
            packets.push((p.id, p.payload.to_vec()));
            true
        }) {
            Ok(used) => {
                assert!(used <= rx.len());
                rx.drain(..used);
            }
            Err(e) => error = Some(e),
        }
    }

    // Reference: walk the headers of the whole stream directly.
    let mut off = 0;
    for (id, payload) in &packets {
        let size = usize::from(u16::from_le_bytes([raw[off], raw[off + 1]]));
        assert_eq!(size, HEADER_LEN + payload.len());
        assert_eq!(u16::from_le_bytes([raw[off + 2], raw[off + 3]]), *id);
        assert_eq!(&raw[off + HEADER_LEN..off + size], &payload[..]);
        off += size;
    }
    match error {
        Some(FrameError::TooSmall { size }) => {
            assert_eq!(u16::from_le_bytes([raw[off], raw[off + 1]]), size);
            assert!(usize::from(size) < HEADER_LEN);
        }
        Some(FrameError::TooLarge { size, max: m }) => {
            assert_eq!(u16::from_le_bytes([raw[off], raw[off + 1]]), size);
            assert_eq!(m, max);
            assert!(usize::from(size) > max);
        }
        None => {
            assert_eq!(&rx[..], &raw[off..]);
            assert_eq!(decode(&rx, max), Ok(None));
        }
    }
});
