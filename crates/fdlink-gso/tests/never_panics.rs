//! Property tests: no input, however malformed, makes any entry point panic.

mod common;

use fdlink_gso::complete::{complete_checksum, verify_l4_checksum};
use fdlink_gso::gro::Coalescer;
use fdlink_gso::segment::{SegmentBuf, segment, segment_with_hdr};
use fdlink_gso::virtio::VirtioNetHdr;
use fdlink_gso::wire::{PacketLayout, ipv4, ipv6, tcp, udp};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Runs every parser and transformation on `bytes`.
fn exercise(bytes: &[u8], a: usize, b: usize) {
    let _ = PacketLayout::parse(bytes);
    let _ = PacketLayout::parse_at(bytes, a % 20);
    if let Ok(p) = ipv4::Packet::new_checked(bytes) {
        let _ = (p.payload(), p.options(), p.verify_checksum(), p.src_addr());
    }
    if let Ok(p) = ipv6::Packet::new_checked(bytes) {
        let _ = (p.extensions(), p.dst_addr(), p.payload_len());
    }
    if let Ok(p) = tcp::Packet::new_checked(bytes) {
        let _ = (p.payload(), p.options(), p.seq_number());
    }
    if let Ok(p) = udp::Packet::new_checked(bytes) {
        let _ = (p.payload(), p.len());
    }
    for hdr in [VirtioNetHdr::decode(bytes), VirtioNetHdr::decode_mrg(bytes)]
        .into_iter()
        .flatten()
    {
        let rest = &bytes[hdr.encoded_len()..];
        let _ = hdr.validate(rest);
        let mut out = SegmentBuf::new();
        let _ = segment_with_hdr(rest, a % 20, &hdr, &mut out);
        let _ = segment_with_hdr(rest, 0, &hdr, &mut out);
    }
    let mut out = SegmentBuf::new();
    let _ = segment(bytes, a % 20, b % 2000, &mut out);
    let _ = segment(bytes, 0, b % 2000 + 1, &mut out);
    let _ = verify_l4_checksum(bytes);
    let mut copy = bytes.to_vec();
    let _ = complete_checksum(&mut copy, a, b);
    let _ = complete_checksum(&mut copy, a % 64, b % 64);
    let mut gro = Coalescer::new();
    gro.push(bytes);
    gro.push(bytes);
    gro.flush();
    let _ = gro.iter().count();
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/never_panics.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300), a in any::<usize>(), b in any::<usize>()) {
        exercise(&bytes, a, b);
    }

    /// Valid packets with a few bytes corrupted or cut reach the deep paths.
    #[test]
    fn corrupted_packets(
        spec in common::spec_with(any::<u8>()),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
        vnet in proptest::collection::vec(any::<u8>(), 10),
        a in any::<usize>(),
        b in any::<usize>(),
    ) {
        let mut p = spec.build();
        for (at, v) in edits {
            let at = at % 80.min(p.len());
            p[at] = v;
        }
        if cut % 4 == 0 {
            p.truncate(cut % (p.len() + 1));
        }
        exercise(&p, a, b);
        let mut framed = vnet;
        framed.extend_from_slice(&p);
        exercise(&framed, a, b);
        // A stream of corrupted segments through one coalescer.
        let mut gro = Coalescer::new();
        let mut segs = SegmentBuf::new();
        if segment(&spec.build(), 0, spec.mss, &mut segs).is_ok() {
            for (i, s) in segs.iter().enumerate() {
                let mut s = s.to_vec();
                if i % 2 == 1 && !s.is_empty() {
                    let at = a % s.len();
                    s[at] ^= 0x5a;
                }
                gro.push(&s);
            }
        }
        gro.flush();
        let total: usize = gro.iter().map(|(_, b)| b.len()).sum();
        prop_assert!(total > 0 || segs.is_empty());
    }
}
