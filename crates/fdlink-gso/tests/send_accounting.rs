//! Property tests: send accounting adds up exactly, frame by frame.
//!
//! Random mixes of good IPv4/IPv6 TCP and UDP packets (plain, or with a
//! segment size asking for segmentation), packets the offload layer must
//! refuse (a segment size on ICMP or on garbage), empty frames and
//! oversized ones are committed to an [`OffloadEndpoint`] sender and
//! flushed over a SEQPACKET socketpair, with a 10-byte virtio header (host
//! offload) and without (software offload). For every flush:
//!
//! - `sent + dropped` equals the frames the flush stood for, counted
//!   independently: one per packet handed in, except that a packet
//!   segmented in software counts its segments (found by running
//!   [`segment`] on a copy);
//! - which packets are sent and which dropped, and for which reason
//!   (`TxOffloadFailed`, `Oversized`, `InvalidFrame`), follows from what
//!   each packet is;
//! - the statistics moved by exactly the outcome: `tx_packets` by `sent`,
//!   the outbound drops by `dropped`;
//! - the peer reads exactly `sent` messages, of the expected lengths, in
//!   order.
//!
//! The same for the core `Endpoint::send` alone, with good, empty and
//! oversized packets. Batches are small and the peer is drained after each
//! flush, so the socket buffer never fills (no `SendBufferFull` drop).

use std::os::fd::{AsFd, OwnedFd};

use fdlink_core::{DropReason, Endpoint, Options, OutPacket, StatsSnapshot};
use fdlink_gso::offload::{OffloadConfig, OffloadEndpoint};
use fdlink_gso::segment::{SegmentBuf, segment};
use fdlink_sys::fd::{SocketType, set_nonblocking, socketpair};
use proptest::prelude::*;

/// The endpoints' MTU (the default).
const MTU: usize = 1500;
/// The virtio header length in host offload.
const VNET: usize = 10;
/// Packets per flush at most (the sender's capacity).
const BATCH: usize = 4;
/// Larger than any IP packet ([`Options::DEFAULT_GSO_MAX_SIZE`]).
const HUGE: usize = 65_536;

/// One packet handed to the sender, by what it is.
#[derive(Debug, Clone)]
enum Item {
    /// A TCP or UDP packet that fits the MTU, no segmentation asked.
    Plain { v6: bool, tcp: bool, payload: usize },
    /// A TCP or UDP packet with a segment size.
    Super {
        v6: bool,
        tcp: bool,
        payload: usize,
        gso: u16,
    },
    /// A TCP packet above the MTU, no segmentation asked.
    BigPlain { payload: usize },
    /// ICMP with a segment size: cannot be segmented.
    IcmpWithGso { v6: bool, payload: usize, gso: u16 },
    /// Bytes that are no IP packet, with a segment size.
    GarbageWithGso { bytes: Vec<u8>, gso: u16 },
    /// Bytes that are no IP packet, no segmentation: the link does not
    /// look inside, so they leave as they are.
    Garbage { bytes: Vec<u8> },
    /// A zero-length frame.
    Empty { gso: Option<u16> },
    /// Above the largest IP packet.
    Huge { extra: usize, gso: Option<u16> },
}

fn pattern(len: usize, salt: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + salt) % 251) as u8).collect()
}

fn ip_builder(v6: bool) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    if v6 {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..2].copy_from_slice(&[0xfd, 0x00]);
        dst[..2].copy_from_slice(&[0xfd, 0x00]);
        src[15] = 1;
        dst[15] = 2;
        etherparse::PacketBuilder::ipv6(src, dst, 64)
    } else {
        etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
    }
}

/// A valid packet with every checksum right.
fn transport_packet(v6: bool, tcp: bool, payload: usize) -> Vec<u8> {
    let data = pattern(payload, payload);
    let mut out = Vec::new();
    if tcp {
        ip_builder(v6)
            .tcp(40000, 5000, 1_000_000, 65535)
            .ack(7)
            .write(&mut out, &data)
            .unwrap();
    } else {
        ip_builder(v6)
            .udp(40000, 5000)
            .write(&mut out, &data)
            .unwrap();
    }
    out
}

fn icmp_packet(v6: bool, payload: usize) -> Vec<u8> {
    let data = pattern(payload, 3);
    let mut out = Vec::new();
    if v6 {
        ip_builder(true)
            .icmpv6_echo_request(1, 2)
            .write(&mut out, &data)
            .unwrap();
    } else {
        ip_builder(false)
            .icmpv4_echo_request(1, 2)
            .write(&mut out, &data)
            .unwrap();
    }
    out
}

/// What one packet must become.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Sent as these frames (lengths as the peer reads them).
    Sent(Vec<usize>),
    /// One drop for this reason.
    Dropped(DropReason),
}

impl Item {
    /// The packet's bytes and segment size.
    fn build(&self) -> (Vec<u8>, Option<u16>) {
        match self {
            Item::Plain { v6, tcp, payload } => (transport_packet(*v6, *tcp, *payload), None),
            Item::Super {
                v6,
                tcp,
                payload,
                gso,
            } => (transport_packet(*v6, *tcp, *payload), Some(*gso)),
            Item::BigPlain { payload } => (transport_packet(false, true, *payload), None),
            Item::IcmpWithGso { v6, payload, gso } => (icmp_packet(*v6, *payload), Some(*gso)),
            Item::GarbageWithGso { bytes, gso } => (bytes.clone(), Some(*gso)),
            Item::Garbage { bytes } => (bytes.clone(), None),
            Item::Empty { gso } => (Vec::new(), *gso),
            Item::Huge { extra, gso } => (pattern(HUGE + extra, 5), *gso),
        }
    }

    /// What `packet` (this item, built) must become, worked out from what
    /// the item is; software segments are counted by segmenting a copy.
    fn fate(&self, packet: &[u8], host: bool) -> Fate {
        let hdr = if host { VNET } else { 0 };
        let whole = Fate::Sent(vec![hdr + packet.len()]);
        let cannot_segment = |gso: u16| {
            let mut segs = SegmentBuf::new();
            assert!(
                segment(packet, 0, gso as usize, &mut segs).is_err(),
                "{self:?} segments"
            );
            Fate::Dropped(DropReason::TxOffloadFailed)
        };
        match self {
            Item::Plain { .. } | Item::Garbage { .. } => whole,
            Item::Super { gso, .. } if !host => {
                let mut segs = SegmentBuf::new();
                let n =
                    segment(packet, 0, *gso as usize, &mut segs).expect("a good packet segments");
                assert_eq!(n, segs.len());
                Fate::Sent(segs.iter().map(<[u8]>::len).collect())
            }
            // The kernel (here: the peer) takes the super-packet whole.
            Item::Super { .. } => whole,
            // With virtio headers the link takes up to the largest IP
            // packet; without, the MTU.
            Item::BigPlain { .. } if host => whole,
            Item::BigPlain { .. } => Fate::Dropped(DropReason::Oversized),
            Item::IcmpWithGso { gso, .. } | Item::GarbageWithGso { gso, .. } => {
                cannot_segment(*gso)
            }
            Item::Empty { gso: None } => Fate::Dropped(DropReason::InvalidFrame),
            Item::Empty { gso: Some(gso) } => cannot_segment(*gso),
            Item::Huge { .. } => Fate::Dropped(DropReason::Oversized),
        }
    }
}

/// Bytes whose first nibble is no IP version (0–3).
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    (0u8..0x40, proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(first, mut rest)| {
        rest.insert(0, first);
        rest
    })
}

fn item() -> impl Strategy<Value = Item> {
    let gso = 500u16..=1400;
    prop_oneof![
        4 => (any::<bool>(), any::<bool>(), 0usize..=1400)
            .prop_map(|(v6, tcp, payload)| Item::Plain { v6, tcp, payload }),
        4 => (any::<bool>(), any::<bool>(), 1usize..=6000, gso.clone())
            .prop_map(|(v6, tcp, payload, gso)| Item::Super { v6, tcp, payload, gso }),
        1 => (1500usize..4000).prop_map(|payload| Item::BigPlain { payload }),
        2 => (any::<bool>(), 0usize..2000, gso.clone())
            .prop_map(|(v6, payload, gso)| Item::IcmpWithGso { v6, payload, gso }),
        2 => (garbage(), gso.clone()).prop_map(|(bytes, gso)| Item::GarbageWithGso { bytes, gso }),
        1 => garbage().prop_map(|bytes| Item::Garbage { bytes }),
        2 => proptest::option::of(gso.clone()).prop_map(|gso| Item::Empty { gso }),
        1 => (0usize..100, proptest::option::of(gso))
            .prop_map(|(extra, gso)| Item::Huge { extra, gso }),
    ]
}

/// Up to six flushes of one to [`BATCH`] packets each, each with an
/// optional flow hash.
fn batches() -> impl Strategy<Value = Vec<Vec<(Item, Option<u32>)>>> {
    proptest::collection::vec(
        proptest::collection::vec((item(), proptest::option::of(any::<u32>())), 1..=BATCH),
        1..=6,
    )
}

/// A SEQPACKET socketpair: the endpoint's end and the peer, non-blocking.
fn pair() -> (OwnedFd, OwnedFd) {
    let (a, b) = socketpair(SocketType::SeqPacket).unwrap();
    set_nonblocking(b.as_fd()).unwrap();
    (a, b)
}

/// Reads every message queued on the peer; returns their lengths.
fn drain(peer: &OwnedFd) -> Vec<usize> {
    let mut buf = vec![0u8; HUGE + 2 * VNET + 1024];
    let mut lens = Vec::new();
    loop {
        match fdlink_sys::io::recv_one(peer.as_fd(), &mut buf) {
            Ok(info) => {
                assert!(!info.truncated, "a {}-byte message", info.len);
                lens.push(info.len);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return lens,
            Err(e) => panic!("peer read: {e}"),
        }
    }
}

/// What a flush or send moved in the statistics.
struct Delta {
    tx_packets: u64,
    outbound: u64,
    by_reason: Vec<(DropReason, u64)>,
}

fn delta(before: &StatsSnapshot, after: &StatsSnapshot) -> Delta {
    Delta {
        tx_packets: after.tx_packets - before.tx_packets,
        outbound: after.drops.outbound() - before.drops.outbound(),
        by_reason: after
            .drops
            .iter()
            .zip(before.drops.iter())
            .map(|((reason, a), (_, b))| (reason, a - b))
            .filter(|&(_, n)| n > 0)
            .collect(),
    }
}

/// `counts` in one order, whatever order they were listed in.
fn sorted(mut counts: Vec<(DropReason, u64)>) -> Vec<(DropReason, u64)> {
    counts.sort_by_key(|(r, _)| r.name());
    counts
}

/// Counts drops by reason.
fn count_reasons(reasons: &[DropReason]) -> Vec<(DropReason, u64)> {
    let counts = DropReason::ALL
        .iter()
        .map(|&r| (r, reasons.iter().filter(|&&x| x == r).count() as u64))
        .filter(|&(_, n)| n > 0)
        .collect();
    sorted(counts)
}

fn check_offload_flushes(
    batches: &[Vec<(Item, Option<u32>)>],
    host: bool,
    fill_tcp: bool,
) -> Result<(), TestCaseError> {
    let (a, peer) = pair();
    let e = Endpoint::new(
        Options::new()
            .fd(a)
            .vnet_header_len(if host { VNET } else { 0 }),
    )
    .unwrap();
    let link = OffloadEndpoint::new(e, OffloadConfig::default().fill_tcp_checksums(fill_tcp));
    prop_assert_eq!(link.host_offload(), host);
    let mut tx = link.sender(BATCH, 65535);
    for (n, batch) in batches.iter().enumerate() {
        let mut want_lens = Vec::new();
        let mut want_drops = Vec::new();
        for (item, hash) in batch {
            let (packet, gso) = item.build();
            match item.fate(&packet, host) {
                Fate::Sent(lens) => want_lens.extend(lens),
                Fate::Dropped(reason) => want_drops.push(reason),
            }
            tx.next_buffer(packet.len()).copy_from_slice(&packet);
            tx.commit(packet.len(), gso, *hash);
        }
        let frames = want_lens.len() + want_drops.len();
        let before = link.endpoint().stats();
        let out = link.flush(&mut tx, None);
        let after = link.endpoint().stats();
        let got = drain(&peer);
        let d = delta(&before, &after);
        let ctx = format!("flush {n} (host {host}): {out:?}, {after}");
        prop_assert!(tx.is_empty(), "{}", ctx);
        prop_assert_eq!(out.sent + out.dropped, frames, "frames: {}", ctx);
        prop_assert_eq!(d.tx_packets, out.sent as u64, "tx_packets: {}", ctx);
        prop_assert_eq!(d.outbound, out.dropped as u64, "outbound drops: {}", ctx);
        prop_assert_eq!(got.len(), out.sent, "peer read: {}", ctx);
        prop_assert_eq!(&got, &want_lens, "frames sent: {}", ctx);
        prop_assert_eq!(out.dropped, want_drops.len(), "{}", ctx);
        prop_assert_eq!(
            sorted(d.by_reason),
            count_reasons(&want_drops),
            "reasons: {}",
            ctx
        );
    }
    Ok(())
}

/// One packet for the core endpoint.
#[derive(Debug, Clone)]
enum CoreItem {
    Good(usize),
    Empty,
    Oversized(usize),
}

fn core_item() -> impl Strategy<Value = CoreItem> {
    prop_oneof![
        4 => (1usize..=MTU).prop_map(CoreItem::Good),
        1 => Just(CoreItem::Empty),
        1 => (MTU + 1..MTU + 3000).prop_map(CoreItem::Oversized),
    ]
}

fn check_core_sends(batches: &[Vec<CoreItem>]) -> Result<(), TestCaseError> {
    let (a, peer) = pair();
    let e = Endpoint::new(Options::new().fd(a)).unwrap();
    for (n, batch) in batches.iter().enumerate() {
        let packets: Vec<Vec<u8>> = batch
            .iter()
            .map(|i| match i {
                CoreItem::Good(len) | CoreItem::Oversized(len) => pattern(*len, *len),
                CoreItem::Empty => Vec::new(),
            })
            .collect();
        let out_packets: Vec<OutPacket<'_>> = packets.iter().map(|p| OutPacket::ip(p)).collect();
        let mut want_lens = Vec::new();
        let mut want_drops = Vec::new();
        for i in batch {
            match i {
                CoreItem::Good(len) => want_lens.push(*len),
                CoreItem::Empty => want_drops.push(DropReason::InvalidFrame),
                CoreItem::Oversized(_) => want_drops.push(DropReason::Oversized),
            }
        }
        let before = e.stats();
        let out = e.send(&out_packets);
        let after = e.stats();
        let got = drain(&peer);
        let d = delta(&before, &after);
        let ctx = format!("send {n}: {out:?}, {after}");
        prop_assert_eq!(out.sent + out.dropped, batch.len(), "handed: {}", ctx);
        prop_assert_eq!(d.tx_packets, out.sent as u64, "tx_packets: {}", ctx);
        prop_assert_eq!(d.outbound, out.dropped as u64, "outbound drops: {}", ctx);
        prop_assert_eq!(got.len(), out.sent, "peer read: {}", ctx);
        prop_assert_eq!(&got, &want_lens, "frames sent: {}", ctx);
        prop_assert_eq!(
            sorted(d.by_reason),
            count_reasons(&want_drops),
            "reasons: {}",
            ctx
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn offload_flush_accounts_for_every_frame_host(
        batches in batches(),
        fill_tcp in any::<bool>(),
    ) {
        check_offload_flushes(&batches, true, fill_tcp)?;
    }

    #[test]
    fn offload_flush_accounts_for_every_frame_software(
        batches in batches(),
        fill_tcp in any::<bool>(),
    ) {
        check_offload_flushes(&batches, false, fill_tcp)?;
    }

    #[test]
    fn core_send_accounts_for_every_packet(
        batches in proptest::collection::vec(
            proptest::collection::vec(core_item(), 1..=8),
            1..=6,
        ),
    ) {
        check_core_sends(&batches)?;
    }
}
