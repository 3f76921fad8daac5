//! Packet framing: split and merged reads, header validation, and property tests over
//! arbitrary packet streams and arbitrary (hostile) byte streams.

use proptest::prelude::*;
use servercore::packet::{
    decode, encode, encode_into, FrameDecoder, FrameError, Packet, PacketWriter,
    DEFAULT_MAX_PACKET_SIZE, HEADER_LEN, MAX_PACKET_SIZE_LIMIT,
};

type Owned = (u16, Vec<u8>);

/// A session's receive side: an accumulating buffer that keeps unconsumed bytes.
struct Rx {
    decoder: FrameDecoder,
    buf: Vec<u8>,
    packets: Vec<Owned>,
    error: Option<FrameError>,
}

impl Rx {
    fn new(max: usize) -> Self {
        Rx { decoder: FrameDecoder::new(max), buf: Vec::new(), packets: Vec::new(), error: None }
    }

    /// Feeds one read; after an error the session is closed and further bytes are ignored.
    fn feed(&mut self, read: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.buf.extend_from_slice(read);
        let packets = &mut self.packets;
        match self.decoder.decode_all(&self.buf, |p| {
            packets.push((p.id, p.payload.to_vec()));
            true
        }) {
            Ok(used) => {
                assert!(used <= self.buf.len());
                self.buf.drain(..used);
            }
            Err(e) => self.error = Some(e),
        }
    }
}

fn stream_of(packets: &[Owned]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, payload) in packets {
        encode_into(&mut out, *id, payload).unwrap();
    }
    out
}

fn sample_packets() -> Vec<Owned> {
    vec![
        (1, b"hello".to_vec()),
        (0xFFFF, Vec::new()),
        (0x0102, vec![0xAA; 17]),
        (7, b"x".to_vec()),
        (0, (0..=40).collect()),
    ]
}

fn header(size: u16, id: u16) -> Vec<u8> {
    let mut h = size.to_le_bytes().to_vec();
    h.extend_from_slice(&id.to_le_bytes());
    h
}

#[test]
fn every_split_point() {
    let packets = sample_packets();
    let wire = stream_of(&packets);
    for at in 0..=wire.len() {
        let mut rx = Rx::new(DEFAULT_MAX_PACKET_SIZE);
        rx.feed(&wire[..at]);
        rx.feed(&wire[at..]);
        assert_eq!(rx.packets, packets, "split at {at}");
        assert_eq!(rx.error, None);
        assert!(rx.buf.is_empty());
    }
}

#[test]
fn every_pair_of_split_points() {
    let packets = vec![(1, b"ab".to_vec()), (2, Vec::new()), (3, b"cdefg".to_vec())];
    let wire = stream_of(&packets);
    for a in 0..=wire.len() {
        for b in a..=wire.len() {
            let mut rx = Rx::new(64);
            rx.feed(&wire[..a]);
            rx.feed(&wire[a..b]);
            rx.feed(&wire[b..]);
            assert_eq!(rx.packets, packets, "splits at {a}, {b}");
            assert!(rx.buf.is_empty());
        }
    }
}

#[test]
fn one_byte_at_a_time() {
    let packets = sample_packets();
    let wire = stream_of(&packets);
    let mut rx = Rx::new(DEFAULT_MAX_PACKET_SIZE);
    for (i, byte) in wire.iter().enumerate() {
        rx.feed(std::slice::from_ref(byte));
        // Never more than one partial packet is held back.
        assert!(rx.buf.len() < 4 + 41, "after byte {i}");
    }
    assert_eq!(rx.packets, packets);
    assert!(rx.buf.is_empty());
}

#[test]
fn many_packets_in_one_read() {
    let packets: Vec<Owned> =
        (0..1000u16).map(|i| (i, vec![i as u8; usize::from(i % 50)])).collect();
    let wire = stream_of(&packets);
    let mut rx = Rx::new(DEFAULT_MAX_PACKET_SIZE);
    rx.feed(&wire);
    assert_eq!(rx.packets, packets);
    assert!(rx.buf.is_empty());
}

#[test]
fn need_more_bytes() {
    assert_eq!(decode(&[], 4096), Ok(None));
    assert_eq!(decode(&[10], 4096), Ok(None));
    let wire = encode(3, b"payload").unwrap();
    for cut in 0..wire.len() {
        assert_eq!(decode(&wire[..cut], 4096), Ok(None), "cut at {cut}");
    }
    assert!(decode(&wire, 4096).unwrap().is_some());
}

#[test]
fn too_small_sizes() {
    for size in [0u16, 1, 2, 3] {
        let expected = Err(FrameError::TooSmall { size });
        // As soon as the two size bytes are in, and with the rest of a header too.
        assert_eq!(decode(&size.to_le_bytes(), 4096), expected);
        assert_eq!(decode(&header(size, 9), 4096), expected);
        let mut rx = Rx::new(4096);
        rx.feed(&size.to_le_bytes());
        assert_eq!(rx.error, Some(FrameError::TooSmall { size }));
    }
    assert_eq!(
        FrameError::TooSmall { size: 2 }.to_string(),
        "packet size 2 is below the 4-byte header"
    );
}

#[test]
fn too_large_sizes() {
    let err = |size, max| Err(FrameError::TooLarge { size, max });
    assert_eq!(decode(&4097u16.to_le_bytes(), 4096), err(4097, 4096));
    assert_eq!(decode(&65535u16.to_le_bytes(), 64), err(65535, 64));
    assert_eq!(decode(&65u16.to_le_bytes(), 64), err(65, 64));
    // Reported from the size bytes alone, not after buffering the claimed size.
    let mut rx = Rx::new(64);
    rx.feed(&[0xFF]);
    assert_eq!(rx.error, None);
    rx.feed(&[0xFF]);
    assert_eq!(rx.error, Some(FrameError::TooLarge { size: 65535, max: 64 }));
    assert_eq!(
        FrameError::TooLarge { size: 9000, max: 4096 }.to_string(),
        "packet size 9000 exceeds the maximum 4096"
    );
}

#[test]
fn boundary_sizes_are_fine() {
    // Size exactly 4: empty payload.
    assert_eq!(decode(&header(4, 5), 64), Ok(Some((Packet { id: 5, payload: &[] }, 4))));
    // Size exactly max.
    let wire = encode(6, &[1; 60]).unwrap();
    assert_eq!(wire.len(), 64);
    let (p, used) = decode(&wire, 64).unwrap().unwrap();
    assert_eq!((p.id, p.payload, used), (6, &[1u8; 60][..], 64));
    // Size 65535 with the largest maximum.
    let wire = encode(7, &vec![2; 65531]).unwrap();
    let (p, used) = decode(&wire, MAX_PACKET_SIZE_LIMIT).unwrap().unwrap();
    assert_eq!((p.id, p.payload.len(), used), (7, 65531, 65535));
}

#[test]
fn nothing_read_past_the_packet() {
    let mut wire = encode(1, b"abc").unwrap().to_vec();
    wire.extend_from_slice(&[0, 0, 0xFF]); // garbage (a bad header) right after it
    let (p, used) = decode(&wire, 4096).unwrap().unwrap();
    assert_eq!((p.id, p.payload, used), (1, &b"abc"[..], 7));
    assert_eq!(decode(&wire[used..], 4096), Err(FrameError::TooSmall { size: 0 }));
}

#[test]
fn packets_before_a_bad_header_are_delivered() {
    let mut wire = stream_of(&[(1, b"a".to_vec()), (2, b"b".to_vec())]);
    wire.extend_from_slice(&3u16.to_le_bytes());
    let mut seen = Vec::new();
    let result = FrameDecoder::default().decode_all(&wire, |p| {
        seen.push(p.id);
        true
    });
    assert_eq!(result, Err(FrameError::TooSmall { size: 3 }));
    assert_eq!(seen, [1, 2]);
}

#[test]
fn decode_all_stops_early() {
    let wire = stream_of(&sample_packets());
    let decoder = FrameDecoder::default();
    let mut seen = 0;
    let used = decoder
        .decode_all(&wire, |_| {
            seen += 1;
            seen < 2
        })
        .unwrap();
    assert_eq!(seen, 2);
    assert_eq!(used, 4 + 5 + 4); // the first two packets, the second one included
    let used_all = decoder.decode_all(&wire, |_| true).unwrap();
    assert_eq!(used_all, wire.len());
}

#[test]
fn decoder_clamps_its_maximum() {
    assert_eq!(FrameDecoder::new(0).max_packet_size(), HEADER_LEN);
    assert_eq!(FrameDecoder::new(usize::MAX).max_packet_size(), 65535);
    assert_eq!(FrameDecoder::default().max_packet_size(), 4096);
    // With the clamped minimum, only empty packets pass.
    let d = FrameDecoder::new(1);
    assert!(d.decode(&header(4, 0)).unwrap().is_some());
    assert_eq!(d.decode(&header(5, 0)), Err(FrameError::TooLarge { size: 5, max: 4 }));
}

#[test]
fn encode_limits() {
    assert_eq!(encode(1, &vec![0; 65531]).unwrap().len(), 65535);
    assert_eq!(
        encode(1, &vec![0; 65532]),
        Err(FrameError::TooLarge { size: u16::MAX, max: 65535 })
    );
    assert_eq!(&encode(0x0201, b"z").unwrap()[..], &[5, 0, 1, 2, b'z']);
}

#[test]
fn packet_writer_round_trip() {
    let mut w = PacketWriter::with_capacity(0xBEEF, 32);
    w.put_u8(1)
        .put_i8(-1)
        .put_u16_le(0x0203)
        .put_i16_le(-2)
        .put_u32_le(0x0405_0607)
        .put_i32_le(-3)
        .put_u64_le(8)
        .put_i64_le(-4)
        .put_f32_le(1.5)
        .put_f64_le(-2.25)
        .put_slice(b"tail");
    let packet = w.finish().unwrap();

    let mut expected = Vec::new();
    expected.push(1u8);
    expected.extend_from_slice(&(-1i8).to_le_bytes());
    expected.extend_from_slice(&0x0203u16.to_le_bytes());
    expected.extend_from_slice(&(-2i16).to_le_bytes());
    expected.extend_from_slice(&0x0405_0607u32.to_le_bytes());
    expected.extend_from_slice(&(-3i32).to_le_bytes());
    expected.extend_from_slice(&8u64.to_le_bytes());
    expected.extend_from_slice(&(-4i64).to_le_bytes());
    expected.extend_from_slice(&1.5f32.to_le_bytes());
    expected.extend_from_slice(&(-2.25f64).to_le_bytes());
    expected.extend_from_slice(b"tail");

    let (p, used) = decode(&packet, 4096).unwrap().unwrap();
    assert_eq!(used, packet.len());
    assert_eq!(p.id, 0xBEEF);
    assert_eq!(p.payload, &expected[..]);
    assert_eq!(&packet[..], &encode(0xBEEF, &expected).unwrap()[..]);
}

#[test]
fn packet_writers_make_a_stream() {
    let packets = sample_packets();
    let mut wire = Vec::new();
    for (id, payload) in &packets {
        let mut w = PacketWriter::new(*id);
        w.put_slice(payload);
        wire.extend_from_slice(&w.finish().unwrap());
    }
    assert_eq!(wire, stream_of(&packets));
    let mut rx = Rx::new(4096);
    rx.feed(&wire);
    assert_eq!(rx.packets, packets);
}

/// Splits `data` into reads whose lengths cycle through `sizes` (each at least 1).
fn chunked<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(1).max(1);
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
        i += 1;
    }
    out
}

/// What a correct decoder must produce for `raw`: walks the headers directly.
fn reference(raw: &[u8], max: usize) -> (Vec<Owned>, Option<FrameError>) {
    let max = max.clamp(HEADER_LEN, MAX_PACKET_SIZE_LIMIT);
    let mut packets = Vec::new();
    let mut off = 0;
    while raw.len() - off >= 2 {
        let size = u16::from_le_bytes([raw[off], raw[off + 1]]);
        let len = usize::from(size);
        if len < HEADER_LEN {
            return (packets, Some(FrameError::TooSmall { size }));
        }
        if len > max {
            return (packets, Some(FrameError::TooLarge { size, max }));
        }
        if raw.len() - off < len {
            break;
        }
        let id = u16::from_le_bytes([raw[off + 2], raw[off + 3]]);
        packets.push((id, raw[off + 4..off + len].to_vec()));
        off += len;
    }
    (packets, None)
}

fn arb_packets() -> impl Strategy<Value = Vec<Owned>> {
    prop::collection::vec((any::<u16>(), prop::collection::vec(any::<u8>(), 0..300)), 0..20)
}

fn arb_chunks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..400, 1..16)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encoded_packets_survive_any_chunking(packets in arb_packets(), sizes in arb_chunks()) {
        let wire = stream_of(&packets);
        let mut rx = Rx::new(HEADER_LEN + 300);
        for read in chunked(&wire, &sizes) {
            rx.feed(read);
        }
        prop_assert_eq!(rx.error, None);
        prop_assert!(rx.buf.is_empty());
        prop_assert_eq!(rx.packets, packets);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_consistent(
        raw in prop::collection::vec(any::<u8>(), 0..2048),
        sizes in arb_chunks(),
        max in prop_oneof![0usize..600, Just(DEFAULT_MAX_PACKET_SIZE), Just(usize::MAX)],
    ) {
        let mut rx = Rx::new(max);
        for read in chunked(&raw, &sizes) {
            rx.feed(read);
        }
        // Every packet matches the raw bytes at its offset, in order.
        let mut off = 0;
        for (id, payload) in &rx.packets {
            let size = usize::from(u16::from_le_bytes([raw[off], raw[off + 1]]));
            prop_assert_eq!(size, HEADER_LEN + payload.len());
            prop_assert!(off + size <= raw.len());
            prop_assert_eq!(u16::from_le_bytes([raw[off + 2], raw[off + 3]]), *id);
            prop_assert_eq!(&raw[off + HEADER_LEN..off + size], &payload[..]);
            off += size;
        }
        let (expected_packets, expected_error) = reference(&raw, max);
        prop_assert_eq!(&rx.packets, &expected_packets);
        prop_assert_eq!(&rx.error, &expected_error);
        if rx.error.is_none() {
            // What is held back is exactly the unconsumed tail: one partial packet.
            prop_assert_eq!(&rx.buf[..], &raw[off..]);
            prop_assert_eq!(decode(&rx.buf, max), Ok(None));
        }
    }

    #[test]
    fn packet_writer_matches_encode(id in any::<u16>(), payload in prop::collection::vec(any::<u8>(), 0..3000)) {
        let mut w = PacketWriter::with_capacity(id, payload.len() / 2);
        w.put_slice(&payload);
        let built = w.finish().unwrap();
        prop_assert_eq!(&built[..], &encode(id, &payload).unwrap()[..]);
    }
}
