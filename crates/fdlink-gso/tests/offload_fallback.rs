//! Degrading instead of failing forever: a link whose kernel refuses a
//! segmentation offload at run time (`EINVAL` on a write with a GSO virtio
//! header, as an older kernel does for UDP segmentation) gets that kind
//! segmented in software from then on, the refused packet included, and the
//! switch is counted once.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fdlink_core::{Endpoint, MemoryPacketIo, Options, PacketIo, memory_pair};
use fdlink_gso::complete::verify_l4_checksum;
use fdlink_gso::offload::{GsoKinds, OffloadConfig, OffloadEndpoint};

/// A packet object that takes plain packets but refuses every super-packet
/// (a virtio header with a GSO type) with `EINVAL`, as a kernel does for a
/// GSO type it does not know.
#[derive(Debug)]
struct RefusesGso {
    inner: MemoryPacketIo,
    refused: AtomicU64,
}

impl PacketIo for RefusesGso {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.recv(buf)
    }

    fn send(&self, parts: &[&[u8]]) -> io::Result<()> {
        let header = parts.first().copied().unwrap_or_default();
        if header.len() == 10 && header[1] != 0 {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::from_raw_os_error(22));
        }
        self.inner.send(parts)
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        self.inner.wait_readable(timeout)
    }
}

fn tcp_v4(payload_len: usize, seq: u32) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    let builder = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 5000, seq, 65535)
        .ack(7);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).unwrap();
    out
}

fn udp_v4(payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 13) as u8).collect();
    let builder = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(4000, 53);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).unwrap();
    out
}

/// The offloading endpoint over a [`RefusesGso`] with virtio headers, and
/// the peer's end.
fn link(host_gso: GsoKinds) -> (OffloadEndpoint, Arc<RefusesGso>, MemoryPacketIo) {
    let (ours, peer) = memory_pair(1024);
    let io = Arc::new(RefusesGso {
        inner: ours,
        refused: AtomicU64::new(0),
    });
    let e = Endpoint::new(
        Options::new()
            .packet_io(Arc::clone(&io))
            .vnet_header_len(10),
    )
    .unwrap();
    let link = OffloadEndpoint::new(
        e,
        OffloadConfig::default()
            .fill_tcp_checksums(true)
            .host_gso(host_gso),
    );
    (link, io, peer)
}

/// Flushes one super-packet of `packet` with segment size `gso_size`.
fn flush_one(link: &OffloadEndpoint, packet: &[u8], gso_size: u16) -> fdlink_core::SendOutcome {
    let mut tx = link.sender(4, 65535);
    tx.next_buffer(packet.len()).copy_from_slice(packet);
    tx.commit(packet.len(), Some(gso_size), None);
    link.flush(&mut tx, None)
}

/// Reads every packet the peer has, each behind its 10-byte header;
/// returns the IP packets after checking the header is plain.
fn drain(peer: &MemoryPacketIo) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    let mut got = Vec::new();
    while let Ok(n) = peer.recv(&mut buf) {
        assert_eq!(buf[..10], [0u8; 10], "segments leave with a plain header");
        got.push(buf[10..n].to_vec());
    }
    got
}

#[test]
fn a_refused_super_packet_leaves_as_segments_and_the_kind_stays_in_software() {
    let (link, io, peer) = link(GsoKinds::ALL);
    let packet = tcp_v4(10 * 1000, 1);
    let out = flush_one(&link, &packet, 1000);
    assert_eq!((out.sent, out.dropped), (10, 0), "not lost: segmented");
    assert_eq!(io.refused.load(Ordering::Relaxed), 1);
    let segments = drain(&peer);
    assert_eq!(segments.len(), 10);
    assert!(segments.iter().all(|s| verify_l4_checksum(s)));
    let joined: Vec<u8> = segments.iter().flat_map(|s| s[40..].to_vec()).collect();
    assert_eq!(joined, packet[40..], "the same bytes, in order");
    let s = link.endpoint().stats();
    assert_eq!(s.offload_fallbacks, 1, "{s}");
    assert_eq!((s.tx_packets, s.drops.outbound()), (10, 0), "{s}");
    assert!(!link.host_gso().contains(GsoKinds::TCPV4));
    assert!(link.host_gso().contains(GsoKinds::UDP_L4));

    // From now on TCP is segmented before the link: no more refusals.
    let out = flush_one(&link, &tcp_v4(3 * 1000, 10_001), 1000);
    assert_eq!((out.sent, out.dropped), (3, 0));
    assert_eq!(io.refused.load(Ordering::Relaxed), 1, "not tried again");
    assert_eq!(drain(&peer).len(), 3);

    // UDP is still offered to the kernel once, then falls back too.
    let out = flush_one(&link, &udp_v4(4 * 500), 500);
    assert_eq!((out.sent, out.dropped), (4, 0));
    assert_eq!(io.refused.load(Ordering::Relaxed), 2);
    let datagrams = drain(&peer);
    assert_eq!(datagrams.len(), 4);
    assert!(datagrams.iter().all(|d| verify_l4_checksum(d)));
    let s = link.endpoint().stats();
    assert_eq!(s.offload_fallbacks, 2, "once per kind: {s}");
    assert_eq!(s.tx_packets, 17, "{s}");
}

#[test]
fn kinds_the_kernel_did_not_grant_are_never_offered() {
    // As for a TUN whose TUNSETOFFLOAD refused USO4|USO6.
    let (link, io, peer) = link(GsoKinds::TCPV4 | GsoKinds::TCPV6);
    let out = flush_one(&link, &udp_v4(3 * 400), 400);
    assert_eq!((out.sent, out.dropped), (3, 0));
    assert_eq!(io.refused.load(Ordering::Relaxed), 0);
    assert_eq!(drain(&peer).len(), 3);
    assert_eq!(link.endpoint().stats().offload_fallbacks, 0);
}
