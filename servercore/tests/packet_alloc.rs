//! Proves that pooled packet construction allocates nothing in steady state, and that
//! cloning a packet for a broadcast never allocates.
//!
//! A counting global allocator counts allocations per thread, so the test harness's own
//! threads do not disturb the numbers.

mod counting;

use counting::allocations_during;
use servercore::packet::{decode, PacketWriter, WRITER_CHUNK_SIZE};
use servercore::SendBuffer;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

fn build(id: u16, payload: &[u8; 60]) -> SendBuffer {
    let mut w = PacketWriter::new(id);
    w.put_slice(payload);
    w.finish().expect("64-byte packet fits")
}

#[test]
fn the_counter_sees_allocations() {
    let (allocs, v) = allocations_during(|| Vec::<u8>::with_capacity(100));
    assert_eq!((allocs, v.capacity() >= 100), (1, true));
    // A writer on a thread with no chunk yet has to allocate one.
    let fresh = std::thread::spawn(|| allocations_during(|| build(1, &[0; 60])).0);
    assert!(fresh.join().unwrap() >= 1);
}

#[test]
fn steady_state_packet_building_allocates_nothing() {
    let payload = [0x5A; 60]; // 64-byte packets: they tile the chunk exactly
                              // Warm up: the first chunk and its shared header are allocated here, and a full pass
                              // through the chunk exercises the reclaim path once.
    for i in 0..(2 * WRITER_CHUNK_SIZE / 64) {
        drop(build(i as u16, &payload));
    }

    let packets = 10_000;
    let (allocs, checked) = allocations_during(|| {
        let mut checked = 0u64;
        for i in 0..packets {
            let packet = build(i as u16, &payload);
            // Touch the bytes so the work is not optimised away.
            checked += u64::from(packet[2]) + packet.len() as u64;
            drop(packet);
        }
        checked
    });
    assert!(checked > 0);
    assert_eq!(
        allocs,
        0,
        "{allocs} allocations for {packets} packets (about {} chunk passes)",
        packets * 64 / WRITER_CHUNK_SIZE
    );
}

#[test]
fn steady_state_with_odd_sizes_and_a_few_in_flight() {
    // Packets that do not tile the chunk, and a window of packets alive at once (a send
    // queue); once every packet of a chunk is gone, the chunk is reused.
    let payload = [7u8; 93];
    let mut window = std::collections::VecDeque::with_capacity(16);
    let one_pass = |window: &mut std::collections::VecDeque<SendBuffer>| {
        for i in 0..5_000u16 {
            let mut w = PacketWriter::new(i);
            w.put_slice(&payload);
            window.push_back(w.finish().unwrap());
            if window.len() == 8 {
                window.pop_front();
            }
        }
    };
    one_pass(&mut window); // warm-up
    let (allocs, ()) = allocations_during(|| one_pass(&mut window));
    eprintln!("{allocs} allocations for 5000 packets with 7 in flight");
    // A chunk whose tail is reached while packets are still queued is replaced (one
    // allocation for its storage, one for its shared header): a few per 64 KiB at most,
    // never one per packet.
    let passes = (5_000 * 97 / WRITER_CHUNK_SIZE + 1) as u64;
    assert!(allocs <= 2 * passes, "{allocs} allocations for 5000 packets ({passes} chunk passes)");
}

#[test]
fn broadcast_clones_allocate_nothing() {
    let packet = build(1, &[1; 60]);
    let mut clones: Vec<SendBuffer> = Vec::with_capacity(1000);
    let (allocs, ()) = allocations_during(|| {
        for _ in 0..1000 {
            clones.push(packet.clone());
        }
    });
    assert_eq!(allocs, 0, "{allocs} allocations for 1000 clones");
    assert!(clones.iter().all(|c| c.as_ptr() == packet.as_ptr()));
    let (p, _) = decode(&clones[999], 4096).unwrap().unwrap();
    assert_eq!((p.id, p.payload), (1, &[1u8; 60][..]));
}
