//! Property tests: segmentation against the generator and etherparse, and
//! coalescing as the exact inverse of segmentation.

mod common;

use common::{Spec, spec, spec_with};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use fdlink_gso::complete::verify_l4_checksum;
use fdlink_gso::gro::Coalescer;
use fdlink_gso::segment::{SegmentBuf, segment, segment_with_hdr};
use fdlink_gso::virtio::{VirtioNetHdr, flags, gso};
use fdlink_gso::wire::PacketLayout;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Checks the IP and transport checksums of `seg` with etherparse only.
fn etherparse_checksums_ok(seg: &[u8]) -> Result<(), String> {
    let sliced = SlicedPacket::from_ip(seg).map_err(|e| format!("etherparse: {e:?}"))?;
    let (src, dst) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            if h.to_header().calc_header_checksum() != h.header_checksum() {
                return Err("IPv4 header checksum".into());
            }
            (Some((h.source(), h.destination())), None)
        }
        Some(NetSlice::Ipv6(ip)) => (
            None,
            Some((ip.header().source(), ip.header().destination())),
        ),
        other => return Err(format!("unexpected net slice {other:?}")),
    };
    let (want, got) = match (&sliced.transport, src, dst) {
        (Some(TransportSlice::Tcp(t)), Some((s, d)), _) => {
            (t.calc_checksum_ipv4(s, d).unwrap(), t.checksum())
        }
        (Some(TransportSlice::Tcp(t)), _, Some((s, d))) => {
            (t.calc_checksum_ipv6(s, d).unwrap(), t.checksum())
        }
        (Some(TransportSlice::Udp(u)), Some((s, d)), _) => (
            u.to_header()
                .calc_checksum_ipv4_raw(s, d, u.payload())
                .unwrap(),
            u.checksum(),
        ),
        (Some(TransportSlice::Udp(u)), _, Some((s, d))) => (
            u.to_header()
                .calc_checksum_ipv6_raw(s, d, u.payload())
                .unwrap(),
            u.checksum(),
        ),
        (other, _, _) => return Err(format!("unexpected transport {other:?}")),
    };
    if want != got {
        return Err(format!(
            "transport checksum {got:#06x}, etherparse computes {want:#06x}"
        ));
    }
    Ok(())
}

fn segments_of(spec: &Spec) -> (Vec<u8>, SegmentBuf) {
    let packet = spec.build();
    let mut out = SegmentBuf::new();
    let n = segment(&packet, 0, spec.mss, &mut out).expect("valid super-packet");
    assert_eq!(n, spec.segment_count());
    (packet, out)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 96,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/segment_gro.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn segments_rejoin_to_the_payload_and_verify(spec in spec()) {
        let (packet, segs) = segments_of(&spec);
        let hdrs = spec.payload_offset();
        let mut joined = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            prop_assert_eq!(&seg[..spec.l4_offset()].len(), &spec.l4_offset());
            let layout = PacketLayout::parse(seg).unwrap();
            prop_assert_eq!(layout.ip_len, seg.len());
            prop_assert_eq!(layout.payload_offset, hdrs);
            prop_assert!(layout.payload_len() <= spec.mss);
            joined.extend_from_slice(&seg[hdrs..]);
            prop_assert!(verify_l4_checksum(seg), "segment {} checksum", i);
            if let Err(e) = etherparse_checksums_ok(seg) {
                prop_assert!(false, "segment {}: {}", i, e);
            }
            if spec.v6 {
                prop_assert_eq!(usize::from(be16(seg, 4)), seg.len() - 40);
                // Fixed header (minus payload length) and extension headers copied.
                prop_assert_eq!(&seg[..4], &packet[..4]);
                prop_assert_eq!(&seg[6..spec.l4_offset()], &packet[6..spec.l4_offset()]);
            } else {
                prop_assert_eq!(usize::from(be16(seg, 2)), seg.len());
                prop_assert_eq!(be16(seg, 4), spec.ident.wrapping_add(i as u16));
                prop_assert_eq!(&seg[6..10], &packet[6..10]);
                prop_assert_eq!(&seg[12..spec.l4_offset()], &packet[12..spec.l4_offset()]);
            }
            let l4 = &seg[spec.l4_offset()..];
            if spec.tcp {
                prop_assert_eq!(be32(l4, 4), spec.seq.wrapping_add((i * spec.mss) as u32));
                prop_assert_eq!(&l4[8..13], &packet[spec.l4_offset() + 8..spec.l4_offset() + 13]);
            } else {
                prop_assert_eq!(usize::from(be16(l4, 4)), l4.len());
            }
        }
        prop_assert_eq!(joined, spec.payload.clone());
    }

    #[test]
    fn tcp_flags_follow_linux(spec in spec_with(any::<u8>())) {
        let (_, segs) = segments_of(&spec);
        let n = segs.len();
        for (i, seg) in segs.iter().enumerate() {
            if !spec.tcp {
                continue;
            }
            let flags = seg[spec.l4_offset() + 13];
            let mut want = spec.tcp_flags;
            if i > 0 {
                want &= !0x80; // CWR on the first segment only
            }
            if i + 1 < n {
                want &= !0x09; // FIN and PSH on the last only
            }
            prop_assert_eq!(flags, want, "segment {} of {}", i, n);
        }
    }

    #[test]
    fn link_header_is_copied_verbatim(spec in spec(), link in proptest::collection::vec(any::<u8>(), 0..20)) {
        let packet = spec.build();
        let mut framed = link.clone();
        framed.extend_from_slice(&packet);
        let (mut plain, mut with_link) = (SegmentBuf::new(), SegmentBuf::new());
        segment(&packet, 0, spec.mss, &mut plain).unwrap();
        segment(&framed, link.len(), spec.mss, &mut with_link).unwrap();
        prop_assert_eq!(plain.len(), with_link.len());
        for (a, b) in plain.iter().zip(with_link.iter()) {
            prop_assert_eq!(&b[..link.len()], &link[..]);
            prop_assert_eq!(&b[link.len()..], a);
        }
    }

    #[test]
    fn coalescing_inverts_segmentation(spec in spec()) {
        let (packet, segs) = segments_of(&spec);
        let mut gro = Coalescer::new();
        for seg in segs.iter() {
            gro.push(seg);
        }
        gro.flush();
        prop_assert_eq!(gro.len(), 1);
        let (hdr, merged) = gro.get(0).unwrap();
        if segs.len() == 1 {
            prop_assert_eq!(*hdr, VirtioNetHdr::default());
            prop_assert_eq!(merged, segs.get(0).unwrap());
            return Ok(());
        }
        // The super-packet, byte for byte, except the transport checksum
        // field, which holds the pseudo-header seed.
        let l4 = spec.l4_offset();
        let csum_at = l4 + if spec.tcp { 16 } else { 6 };
        let seed = {
            let l4_len = (packet.len() - l4) as u32;
            let c = if spec.v6 {
                fdlink_gso::checksum::pseudo_header_ipv6(common::SRC6, common::DST6, spec.protocol(), l4_len)
            } else {
                fdlink_gso::checksum::pseudo_header_ipv4(common::SRC4, common::DST4, spec.protocol(), l4_len as u16)
            };
            c.fold()
        };
        let mut expected = packet.clone();
        expected[csum_at..csum_at + 2].copy_from_slice(&seed.to_be_bytes());
        prop_assert_eq!(merged, &expected[..]);

        let want_type = match (spec.tcp, spec.v6) {
            (true, false) => gso::TCPV4,
            (true, true) => gso::TCPV6,
            (false, _) => gso::UDP_L4,
        } | if spec.tcp && spec.tcp_flags & 0x80 != 0 { gso::ECN } else { 0 };
        prop_assert_eq!(hdr.flags, flags::NEEDS_CSUM);
        prop_assert_eq!(hdr.gso_type, want_type);
        prop_assert_eq!(usize::from(hdr.gso_size), spec.mss);
        prop_assert_eq!(usize::from(hdr.csum_start), l4);
        prop_assert_eq!(usize::from(hdr.hdr_len), spec.payload_offset());

        // Segmenting the output with its own header gives back the input.
        let mut again = SegmentBuf::new();
        segment_with_hdr(merged, 0, hdr, &mut again).unwrap();
        prop_assert_eq!(again.len(), segs.len());
        for (a, b) in again.iter().zip(segs.iter()) {
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn interleaved_flows_are_not_merged(a in spec(), b in spec()) {
        let (_, sa) = segments_of(&a);
        let (_, sb) = segments_of(&b);
        let mut gro = Coalescer::new();
        for (x, y) in sa.iter().zip(sb.iter()) {
            gro.push(x);
            gro.push(y);
        }
        gro.flush();
        let n = sa.len().min(sb.len());
        // Alternating flows: every packet is its own output.
        prop_assert_eq!(gro.len(), 2 * n);
        for (i, (hdr, bytes)) in gro.iter().enumerate() {
            prop_assert_eq!(hdr.gso_type, gso::NONE);
            let src = if i % 2 == 0 { sa.get(i / 2) } else { sb.get(i / 2) };
            prop_assert_eq!(Some(bytes), src);
        }
    }
}
