//! The offloading endpoint between two socketpair ends: host offload (both
//! ends carry virtio headers) and software offload, coalescing on send,
//! and counted drops for lying headers and bad checksums.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use fdlink_core::{DropReason, Endpoint, Options};
use fdlink_gso::complete::verify_l4_checksum;
use fdlink_gso::offload::{GroSender, OffloadConfig, OffloadEndpoint, Receiver};
use fdlink_gso::segment::{SegmentBuf, segment};
use fdlink_sys::fd::{SocketType, socketpair};

/// An IPv4 TCP packet with `payload_len` bytes of a known pattern and every
/// checksum right.
fn tcp_v4(payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    let builder = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 5000, 1_000_000, 65535)
        .ack(7);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).unwrap();
    out
}

/// An IPv4 UDP packet with `payload_len` bytes and every checksum right.
fn udp_v4(payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    let builder =
        etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(40000, 5000);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).unwrap();
    out
}

fn pair(vnet: usize) -> (OffloadEndpoint, OwnedFd, OffloadEndpoint) {
    let (a, b) = socketpair(SocketType::SeqPacket).unwrap();
    let raw = a.try_clone().unwrap();
    let wrap = |fd| {
        let e = Endpoint::new(Options::new().fd(fd).vnet_header_len(vnet)).unwrap();
        OffloadEndpoint::new(e, OffloadConfig::default().fill_tcp_checksums(true))
    };
    (wrap(a), raw, wrap(b))
}

fn receive(link: &OffloadEndpoint, rx: &mut Receiver, want: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "received {} of {want}",
            got.len()
        );
        link.endpoint()
            .wait_readable(Some(Duration::from_millis(50)))
            .unwrap();
        link.recv(rx, None).unwrap();
        while let Some(p) = rx.pop() {
            got.push(p.frame.to_vec());
        }
    }
    got
}

#[test]
fn coalesced_send_crosses_as_one_super_packet_and_splits_back() {
    let (a, _raw, b) = pair(10);
    let mut segments = SegmentBuf::new();
    segment(&tcp_v4(1448 * 10), 0, 1448, &mut segments).unwrap();
    let originals: Vec<Vec<u8>> = segments.iter().map(<[u8]>::to_vec).collect();
    let mut tx = GroSender::new();
    let out = a.send_coalesced(&mut tx, originals.iter().map(Vec::as_slice), None);
    assert_eq!(out.sent, 1, "ten segments of one flow leave as one write");
    let mut rx = b.receiver();
    let got = receive(&b, &mut rx, originals.len());
    assert_eq!(got, originals, "split back into the very same segments");
}

#[test]
fn super_packet_is_handed_up_whole_when_accepted() {
    let (a, b) = socketpair(SocketType::SeqPacket).unwrap();
    let wrap = |fd, large| {
        let e = Endpoint::new(Options::new().fd(fd).vnet_header_len(10)).unwrap();
        OffloadEndpoint::new(
            e,
            OffloadConfig::default()
                .accept_large(large)
                .fill_tcp_checksums(true),
        )
    };
    let (a, b) = (wrap(a, false), wrap(b, true));
    let packet = tcp_v4(20000);
    let mut tx = a.sender(4, 65535);
    tx.next_buffer(packet.len()).copy_from_slice(&packet);
    tx.commit(packet.len(), Some(1448), None);
    assert_eq!(a.flush(&mut tx, None).sent, 1);
    let mut rx = b.receiver();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx.is_empty() {
        assert!(Instant::now() < deadline);
        b.recv(&mut rx, None).unwrap();
    }
    let p = rx.pop().unwrap();
    assert_eq!(p.gso_size, Some(1448));
    assert_eq!(p.frame.len(), packet.len());
    assert_eq!(p.frame[40..], packet[40..], "payload intact");
}

#[test]
fn software_offload_segments_and_fills_checksums() {
    let (a, _raw, b) = pair(0);
    let packet = tcp_v4(1448 * 3 + 100);
    let mut tx = a.sender(4, 65535);
    tx.next_buffer(packet.len()).copy_from_slice(&packet);
    tx.commit(packet.len(), Some(1448), None);
    // A plain TCP packet whose checksum the stack left out.
    let mut plain = tcp_v4(300);
    plain[36..38].copy_from_slice(&[0, 0]);
    tx.next_buffer(plain.len()).copy_from_slice(&plain);
    tx.commit(plain.len(), None, None);
    assert_eq!(a.flush(&mut tx, None).sent, 5);
    let mut rx = b.receiver();
    let got = receive(&b, &mut rx, 5);
    assert!(
        got.iter().all(|p| verify_l4_checksum(p)),
        "every checksum filled"
    );
    let payload: Vec<u8> = got[..4].iter().flat_map(|p| p[40..].to_vec()).collect();
    assert_eq!(payload, packet[40..]);
    assert_eq!(got[4], tcp_v4(300));
}

#[test]
fn lying_virtio_header_and_bad_checksum_are_counted_and_the_next_packet_arrives() {
    let (_a, raw, b) = pair(10);
    let good = tcp_v4(100);
    // csum_start points past the packet: a lying header.
    let mut lying = vec![1u8, 0, 0, 0, 0, 0, 0xff, 0x7f, 16, 0];
    lying.extend_from_slice(&good);
    fdlink_sys::io::write(raw.as_fd(), &lying).unwrap();
    // No virtio verdict and a corrupt TCP checksum.
    let mut corrupt = vec![0u8; 10];
    corrupt.extend_from_slice(&good);
    corrupt[10 + 36] ^= 0xff;
    fdlink_sys::io::write(raw.as_fd(), &corrupt).unwrap();
    let mut fine = vec![0u8; 10];
    fine.extend_from_slice(&good);
    fdlink_sys::io::write(raw.as_fd(), &fine).unwrap();
    let mut rx = b.receiver();
    assert_eq!(receive(&b, &mut rx, 1), vec![good]);
    let stats = b.endpoint().stats();
    assert_eq!(stats.drops.get(DropReason::InvalidVirtioHeader), 1);
    assert_eq!(stats.drops.get(DropReason::BadChecksum), 1);
}

#[test]
fn headers_linux_refuses_are_dropped_on_receive() {
    let (_a, raw, b) = pair(10);
    // NEEDS_CSUM, UDP_L4, hdr_len 28, gso_size, csum_start 20, csum_offset 6.
    let udp_l4 = |gso_size: u16, payload_len: usize| {
        let mut w = vec![1u8, 5, 28, 0];
        w.extend_from_slice(&gso_size.to_le_bytes());
        w.extend_from_slice(&[20, 0, 6, 0]);
        w.extend_from_slice(&udp_v4(payload_len));
        w
    };
    // 129 segments of one byte; then GSO_BY_FRAGS; then 128 segments.
    for write in [udp_l4(1, 129), udp_l4(0xffff, 100), udp_l4(1, 128)] {
        fdlink_sys::io::write(raw.as_fd(), &write).unwrap();
    }
    let mut rx = b.receiver();
    let got = receive(&b, &mut rx, 128);
    assert_eq!(got.len(), 128);
    let payload: Vec<u8> = got.iter().flat_map(|p| p[28..].to_vec()).collect();
    assert_eq!(payload, udp_v4(128)[28..], "only the 128-segment packet");
    assert!(got.iter().all(|p| verify_l4_checksum(p)));
    let stats = b.endpoint().stats();
    assert_eq!(stats.drops.get(DropReason::InvalidVirtioHeader), 2);
}
