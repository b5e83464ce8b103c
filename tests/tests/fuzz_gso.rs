//! Fuzz targets for fdlink-gso's parsers and transformations, fed by the
//! structured generators (valid packets built with etherparse, mutated
//! ones, random bytes, honest and lying virtio headers):
//!
//! - `virtio`: decode (10 and 12 bytes) and validate against the packet;
//!   what decodes re-encodes to the same bytes, and what validates keeps
//!   its checksum field inside the packet;
//! - `complete`: checksum completion touches only the checksum field, and a
//!   completed valid packet verifies;
//! - `segment`: `segment_with_hdr` with lying headers fails cleanly
//!   (nothing appended) or yields segments that fit and verify;
//! - `gro`: a coalescer fed arbitrary packets loses none: re-segmenting
//!   its outputs gives back as many packets as were pushed.
//!
//! `PROPTEST_CASES=N` sets the cases (`cargo xtask fuzz --cases N`).

mod fuzz_gen;

use fdlink_gso::complete::{complete_checksum, verify_l4_checksum};
use fdlink_gso::gro::Coalescer;
use fdlink_gso::segment::{SegmentBuf, segment, segment_with_hdr};
use fdlink_gso::virtio::{GSO_BY_FRAGS, GsoKind, UDP_MAX_SEGMENTS, VirtioError, VirtioNetHdr};
use proptest::prelude::*;

#[test]
fn virtio() {
    let strategy = (
        fuzz_gen::any_ip_packet(),
        // Tiny sizes make UDP_L4 super-packets of more than 128 segments.
        prop_oneof![Just(0u16), 1u16..1500, 1u16..8, Just(GSO_BY_FRAGS)],
        fuzz_gen::vnet_lie(),
        any::<[u8; 2]>(),
    );
    fuzz_gen::fuzz(file!(), "virtio", strategy, |(packet, gso, lie, nb)| {
        let h = fuzz_gen::lie(fuzz_gen::honest_vnet(&packet, 0, gso), &lie);
        let hdr = VirtioNetHdr::decode(&h).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut out = [0u8; 12];
        let n = hdr
            .encode(&mut out)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(n, 10);
        prop_assert_eq!(&out[..10], &h[..]);
        let mut mrg = h.to_vec();
        mrg.extend_from_slice(&nb);
        let hdr12 =
            VirtioNetHdr::decode_mrg(&mrg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(hdr12.num_buffers, Some(u16::from_le_bytes(nb)));
        prop_assert!(VirtioNetHdr::decode(&h[..9]).is_err());
        prop_assert!(VirtioNetHdr::decode_mrg(&mrg[..11]).is_err());
        // The kernel's rules (virtio_net_hdr_to_skb): what validates obeys
        // them, and the errors for them are true.
        let udp_payload = |start: usize| packet.len().saturating_sub(start + 8);
        match hdr.validate(&packet) {
            Ok(offload) => {
                if let Some((start, offset)) = offload.needs_csum {
                    prop_assert!(start + offset + 2 <= packet.len());
                    let min = if offload.gso == GsoKind::TcpV6 {
                        40
                    } else {
                        20
                    };
                    prop_assert!(start >= min, "csum_start {} below {}", start, min);
                }
                prop_assert!(usize::from(hdr.hdr_len) <= packet.len());
                if offload.gso != GsoKind::None {
                    prop_assert!(offload.gso_size > 0);
                    prop_assert!(offload.gso_size != GSO_BY_FRAGS);
                    let (start, _) = offload.needs_csum.unwrap_or_default();
                    let l4 = if offload.gso.is_tcp() { 20 } else { 8 };
                    prop_assert!(start + l4 <= packet.len());
                }
                if offload.gso == GsoKind::UdpL4 {
                    let (start, _) = offload.needs_csum.unwrap_or_default();
                    prop_assert!(
                        udp_payload(start) <= usize::from(offload.gso_size) * UDP_MAX_SEGMENTS
                    );
                }
            }
            Err(VirtioError::GsoSizeByFrags) => prop_assert_eq!(hdr.gso_size, GSO_BY_FRAGS),
            Err(VirtioError::TooManyUdpSegments {
                payload_len,
                gso_size,
            }) => {
                prop_assert_eq!(payload_len, udp_payload(usize::from(hdr.csum_start)));
                prop_assert!(payload_len > usize::from(gso_size) * UDP_MAX_SEGMENTS);
            }
            Err(VirtioError::CsumStartTooSmall { csum_start, min }) => {
                prop_assert!(csum_start < min && (min == 20 || min == 40));
            }
            Err(_) => {}
        }
        Ok(())
    });
}

#[test]
fn complete() {
    let strategy = (
        fuzz_gen::packet_spec(),
        proptest::collection::vec(fuzz_gen::vnet_lie(), 0..2),
        any::<usize>(),
        any::<usize>(),
    );
    fuzz_gen::fuzz(file!(), "complete", strategy, |(spec, lies, a, b)| {
        let packet = spec.build();
        let honest = fuzz_gen::honest_vnet(&packet, 0, 0);
        let mut h = honest;
        for l in &lies {
            h = fuzz_gen::lie(h, l);
        }
        let start = usize::from(u16::from_le_bytes([h[6], h[7]]));
        let offset = usize::from(u16::from_le_bytes([h[8], h[9]]));
        for (s, o) in [(start, offset), (a, b), (a % 128, b % 64)] {
            let mut copy = packet.clone();
            match complete_checksum(&mut copy, s, o) {
                Ok(_) => {
                    let at = s + o;
                    prop_assert!(at + 2 <= copy.len());
                    prop_assert_eq!(&copy[..at], &packet[..at]);
                    prop_assert_eq!(&copy[at + 2..], &packet[at + 2..]);
                }
                Err(_) => prop_assert_eq!(&copy, &packet, "untouched on error"),
            }
        }
        // An honest NEEDS_CSUM over a valid TCP/UDP packet whose field
        // holds the pseudo-header seed completes to a verifying checksum.
        if lies.is_empty() && honest[0] == 1 && verify_l4_checksum(&packet) {
            let mut seeded = packet.clone();
            let at = start + offset;
            // Replace the checksum by the folded pseudo-header sum: the
            // stored sum minus the data sum.
            seeded[at..at + 2].copy_from_slice(&[0, 0]);
            let data = fdlink_gso::checksum::sum(&seeded[start..]);
            let whole = !u16::from_be_bytes([packet[at], packet[at + 1]]);
            let seed = fold_sub(whole, data);
            seeded[at..at + 2].copy_from_slice(&seed.to_be_bytes());
            complete_checksum(&mut seeded, start, offset)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(
                verify_l4_checksum(&seeded),
                "completed checksum must verify"
            );
        }
        Ok(())
    });
}

/// `a - b` in ones' complement arithmetic.
fn fold_sub(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(!b);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[test]
fn segment_lying_headers() {
    let strategy = (
        prop_oneof![
            3 => fuzz_gen::packet_spec().prop_map(|s| s.build()),
            2 => fuzz_gen::mutated_packet(),
        ],
        prop_oneof![Just(0u16), 1u16..1500, any::<u16>()],
        fuzz_gen::vnet_lie(),
        any::<bool>(),
    );
    fuzz_gen::fuzz(
        file!(),
        "segment",
        strategy,
        |(packet, gso, lie, framed)| {
            let (frame, link_len) = if framed {
                (fuzz_gen::ethernet_frame([0xff; 6], None, &packet), 14)
            } else {
                (packet.clone(), 0)
            };
            let h = fuzz_gen::lie(fuzz_gen::honest_vnet(&frame, link_len, gso), &lie);
            let hdr = VirtioNetHdr::decode(&h).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut out = SegmentBuf::new();
            match segment_with_hdr(&frame, link_len, &hdr, &mut out) {
                Ok(n) => {
                    prop_assert_eq!(out.len(), n);
                    let valid = hdr
                        .validate(&frame)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    for seg in out.iter() {
                        prop_assert!(
                            seg.len()
                                <= frame.len().max(link_len + 60 + usize::from(valid.gso_size))
                                    + 60
                        );
                        // Segmentation recomputes every checksum (the input
                        // field may hold anything); a NONE packet's checksum is
                        // completed from whatever seed it holds, at the place
                        // the header says (as Linux does), so it need not.
                        if valid.gso != GsoKind::None {
                            prop_assert!(
                                verify_l4_checksum(&seg[link_len..]),
                                "a segmented or completed packet must verify"
                            );
                        }
                    }
                }
                Err(_) => prop_assert_eq!(out.len(), 0, "nothing appended on error"),
            }
            // Plain software segmentation at any size never panics, and
            // appends nothing on error.
            let before = out.len();
            if segment(&frame, link_len, usize::from(gso), &mut out).is_err() {
                prop_assert_eq!(out.len(), before);
            }
            Ok(())
        },
    );
}

/// Packets for the coalescer: segments of valid super-packets (so runs
/// form), with some mutated, cut or random packets mixed in.
fn gro_input() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let flow = (fuzz_gen::packet_spec(), 1usize..1400).prop_map(|(mut spec, mss)| {
        if let fuzz_gen::L4::Tcp { flags, .. } = &mut spec.l4 {
            // ACK-class flags so runs form; PSH/ECE/CWR sometimes.
            *flags = 0x10 | (*flags & 0xc8);
        }
        spec.fragment = None;
        let mut segs = SegmentBuf::new();
        let whole = spec.build();
        if segment(&whole, 0, mss, &mut segs).is_err() {
            return vec![whole];
        }
        segs.iter().map(<[u8]>::to_vec).collect::<Vec<_>>()
    });
    (
        proptest::collection::vec(flow, 1..4),
        proptest::collection::vec(fuzz_gen::any_ip_packet(), 0..4),
        proptest::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 0..3),
    )
        .prop_map(|(flows, noise, edits)| {
            let mut all: Vec<Vec<u8>> = flows.into_iter().flatten().collect();
            for (i, n) in noise.into_iter().enumerate() {
                let at = (i * 7) % (all.len() + 1);
                all.insert(at, n);
            }
            for (which, at, v) in edits {
                let len = all.len();
                let p = &mut all[which % len];
                if !p.is_empty() {
                    let at = at % p.len();
                    p[at] ^= v | 1;
                }
            }
            all
        })
}

#[test]
fn gro() {
    fuzz_gen::fuzz(file!(), "gro", gro_input(), |packets| {
        let mut gro = Coalescer::new();
        for p in &packets {
            gro.push(p);
        }
        gro.flush();
        prop_assert!(gro.len() <= packets.len());
        prop_assert!(!gro.is_empty());
        // Re-segmenting each output gives back as many packets as went in.
        let mut total = 0usize;
        for (hdr, bytes) in gro.iter() {
            if hdr.gso_type == 0 && hdr.flags == 0 {
                total += 1;
                continue;
            }
            let mut segs = SegmentBuf::new();
            let n = segment_with_hdr(bytes, 0, hdr, &mut segs).map_err(|e| {
                TestCaseError::fail(format!("an output does not segment: {e} ({hdr:?})"))
            })?;
            for s in segs.iter() {
                prop_assert!(verify_l4_checksum(s), "re-segmented packet must verify");
            }
            total += n;
        }
        prop_assert_eq!(
            total,
            packets.len(),
            "packets lost or invented by coalescing"
        );
        gro.clear();
        prop_assert!(gro.is_empty());
        Ok(())
    });
}
