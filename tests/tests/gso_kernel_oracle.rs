//! fdlink-gso against the Linux kernel as a segmentation oracle, inside
//! throwaway network namespaces. Needs root and /dev/net/tun (SKIP
//! otherwise, failure under `CI=true`).
//!
//! A super-packet with a virtio header is written into a TUN opened with
//! `IFF_VNET_HDR`; the kernel forwards it out of a second TUN without
//! offloads, segmenting it in software. The segments read there must equal,
//! byte for byte, what `fdlink_gso::segment` makes of the same super-packet
//! (after decrementing TTL / hop limit, as forwarding does).
//!
//! Headers the kernel refuses (`virtio_net_hdr_to_skb` fails the write with
//! `EINVAL`) must be refused by `segment_with_hdr` too, with the matching
//! typed error, and nothing may be forwarded.
//!
//! The kernel's TSO and GRO on a TCP stream are in `gso_kernel_stream.rs`.
//! Only 10.x and fd00:: addresses inside namespaces made here are used, and
//! every loop is bounded in time.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::time::Duration;

use fdlink_gso::checksum;
use fdlink_gso::complete::verify_l4_checksum;
use fdlink_gso::segment::{SegmentBuf, SegmentError, segment, segment_with_hdr};
use fdlink_gso::virtio::{
    GSO_BY_FRAGS, UDP_MAX_SEGMENTS, VirtioError, VirtioNetHdr, flags as vflags, gso,
};
use fdlink_gso::wire::proto as ipproto;
use fdlink_gso::wire::{PacketLayout, proto, tcp};
use fdlink_sys::tun::{TunConfig, TunDevice};
use fdlink_tests::netns::{Netns, require_root};
use fdlink_tests::packet::{
    Csum, IpSpec, TcpSpec, first_diff, pattern, src_dst, tcp_packet, udp_packet,
};
use fdlink_tests::tun::{collect, tun_write};

/// Upper bound for one oracle case to deliver its segments.
const ORACLE_WAIT: Duration = Duration::from_secs(5);

const IN_DEV: &str = "gsoin";
const OUT_DEV: &str = "gsoout";
const SRC4: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 2);
const DST4: Ipv4Addr = Ipv4Addr::new(10, 60, 2, 2);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 1, 0, 0, 0, 0, 2);
const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 2, 0, 0, 0, 0, 2);

/// A namespace forwarding from TUN `gsoin` (virtio header) to TUN `gsoout`
/// (no virtio header, no offloads: the kernel segments in software).
struct Oracle {
    ingress: TunDevice,
    egress: TunDevice,
    // Dropped last: the devices go with the namespace anyway.
    _ns: Netns,
}

fn oracle() -> Oracle {
    let ns = Netns::new("fdlgso").expect("create netns");
    let (ingress, egress) = ns
        .run(|| {
            (
                TunConfig::tun().name(IN_DEV).vnet_hdr(true).open(),
                TunConfig::tun().name(OUT_DEV).open(),
            )
        })
        .expect("enter netns");
    let ingress = ingress.expect("open ingress TUN with IFF_VNET_HDR");
    let egress = egress.expect("open egress TUN");
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    for (dev, v4, v6) in [
        (IN_DEV, "10.60.1.1/24", "fd00:60:1::1/64"),
        (OUT_DEV, "10.60.2.1/24", "fd00:60:2::1/64"),
    ] {
        ns.addr(dev, v4).unwrap();
        ns.addr(dev, v6).unwrap();
        ns.link_up(dev).unwrap();
    }
    Oracle {
        ingress,
        egress,
        _ns: ns,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4 {
    Tcp,
    Udp,
}

/// One oracle case.
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    ip: IpSpec,
    l4: L4,
    tcp_flags: u8,
    tcp_options: &'static [u8],
    payload_len: usize,
    gso_size: u16,
}

const SPORT: u16 = 40000;
const DPORT: u16 = 5555;

impl Case {
    fn tcp4(name: &'static str) -> Self {
        Self {
            name,
            ip: IpSpec::new(SRC4.into(), DST4.into()),
            l4: L4::Tcp,
            tcp_flags: tcp::flags::ACK | tcp::flags::PSH,
            tcp_options: &[],
            payload_len: 4 * 1200,
            gso_size: 1200,
        }
    }

    fn tcp6(name: &'static str) -> Self {
        Self {
            ip: IpSpec::new(SRC6.into(), DST6.into()),
            ..Self::tcp4(name)
        }
    }

    /// The super-packet and its virtio header.
    fn build(&self) -> (VirtioNetHdr, Vec<u8>) {
        let payload = pattern(self.payload_len, self.payload_len as u32);
        let (packet, gso_type, l4_hdr, csum_offset) = match self.l4 {
            L4::Tcp => {
                let t = TcpSpec {
                    sport: SPORT,
                    dport: DPORT,
                    seq: 0xfffff000, // wraps during the stream
                    ack: 0x0102_0304,
                    flags: self.tcp_flags,
                    window: 501,
                    options: self.tcp_options,
                };
                let g = if self.ip.is_v6() {
                    gso::TCPV6
                } else {
                    gso::TCPV4
                };
                (
                    tcp_packet(&self.ip, &t, &payload, Csum::Seed),
                    g,
                    20 + self.tcp_options.len(),
                    16,
                )
            }
            L4::Udp => (
                udp_packet(&self.ip, SPORT, DPORT, &payload, Csum::Seed),
                gso::UDP_L4,
                8,
                6,
            ),
        };
        let hl = self.ip.header_len();
        let hdr = VirtioNetHdr {
            flags: vflags::NEEDS_CSUM,
            gso_type,
            hdr_len: (hl + l4_hdr) as u16,
            gso_size: self.gso_size,
            csum_start: hl as u16,
            csum_offset,
            num_buffers: None,
        };
        (hdr, packet)
    }

    /// Whether `pkt` (read from the egress TUN) belongs to this case.
    fn matches(&self, pkt: &[u8]) -> bool {
        let Ok(layout) = PacketLayout::parse(pkt) else {
            return false;
        };
        let want = match self.l4 {
            L4::Tcp => proto::TCP,
            L4::Udp => proto::UDP,
        };
        if layout.l4_protocol != want || layout.fragment {
            return false;
        }
        let (src, dst) = src_dst(&layout, pkt);
        let l4 = &pkt[layout.l4_offset..];
        src == self.ip.src
            && dst == self.ip.dst
            && l4.len() >= 4
            && u16::from_be_bytes([l4[0], l4[1]]) == SPORT
            && u16::from_be_bytes([l4[2], l4[3]]) == DPORT
    }
}

/// What forwarding does to a packet: TTL / hop limit minus one (and the
/// IPv4 header checksum recomputed).
fn forwarded(seg: &[u8]) -> Vec<u8> {
    let mut p = seg.to_vec();
    match p[0] >> 4 {
        4 => {
            p[8] -= 1;
            let hl = usize::from(p[0] & 0x0f) * 4;
            p[10..12].copy_from_slice(&[0, 0]);
            let c = checksum::checksum(&p[..hl]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        6 => p[7] -= 1,
        v => panic!("IP version {v}"),
    }
    p
}

fn run_oracle_case(case: &Case) {
    let o = oracle();
    let (hdr, packet) = case.build();
    let expected_count = case.payload_len.div_ceil(usize::from(case.gso_size));

    // Ours, both ways in.
    let mut ours = SegmentBuf::new();
    let n = segment(&packet, 0, usize::from(case.gso_size), &mut ours)
        .unwrap_or_else(|e| panic!("{}: segment: {e}", case.name));
    assert_eq!(n, expected_count, "{}: our segment count", case.name);
    let mut ours_hdr = SegmentBuf::new();
    segment_with_hdr(&packet, 0, &hdr, &mut ours_hdr)
        .unwrap_or_else(|e| panic!("{}: segment_with_hdr: {e}", case.name));
    assert!(
        ours.iter().eq(ours_hdr.iter()),
        "{}: segment and segment_with_hdr disagree",
        case.name
    );

    // The kernel's.
    tun_write(o.ingress.fds()[0].as_fd(), &hdr, &packet)
        .unwrap_or_else(|e| panic!("{}: write super-packet: {e}", case.name));
    let kernel = collect(
        o.egress.fds()[0].as_fd(),
        expected_count,
        ORACLE_WAIT,
        Duration::from_millis(200),
        |p| case.matches(p),
    )
    .unwrap();
    assert_eq!(
        kernel.len(),
        expected_count,
        "{}: the kernel forwarded {} segments, expected {expected_count}",
        case.name,
        kernel.len()
    );

    for (i, (k, ours)) in kernel.iter().zip(ours.iter()).enumerate() {
        assert!(
            verify_l4_checksum(k),
            "{}: kernel segment {i} checksum",
            case.name
        );
        assert!(
            verify_l4_checksum(ours),
            "{}: our segment {i} checksum",
            case.name
        );
        if let Some(d) = first_diff(k, &forwarded(ours)) {
            panic!(
                "{}: segment {i}/{expected_count} differs from the kernel's: {d}",
                case.name
            );
        }
    }
}

#[test]
fn oracle_tcp4_plain() {
    if !require_root("oracle_tcp4_plain") {
        return;
    }
    run_oracle_case(&Case::tcp4("tcp4 plain"));
}

#[test]
fn oracle_tcp4_ip_options_and_tcp_timestamps() {
    if !require_root("oracle_tcp4_ip_options_and_tcp_timestamps") {
        return;
    }
    let mut case = Case::tcp4("tcp4 ip options");
    // NOP, NOP, NOP, EOL: 4 option bytes the kernel forwards unchanged.
    case.ip.v4_options = vec![1, 1, 1, 0];
    // NOP, NOP, timestamps.
    case.tcp_options = &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    case.payload_len = 3 * 1200 + 17;
    run_oracle_case(&case);
}

#[test]
fn oracle_tcp4_flags_fin_psh_cwr() {
    if !require_root("oracle_tcp4_flags_fin_psh_cwr") {
        return;
    }
    let mut case = Case::tcp4("tcp4 flags");
    let f = tcp::flags::FIN | tcp::flags::PSH | tcp::flags::CWR | tcp::flags::ACK;
    case.tcp_flags = f;
    run_oracle_case(&case);
    // The flags themselves, on our segments (equal to the kernel's above).
    let (_, packet) = case.build();
    let mut out = SegmentBuf::new();
    let n = segment(&packet, 0, 1200, &mut out).unwrap();
    let flags: Vec<u8> = out.iter().map(|s| s[20 + 13]).collect();
    let a = tcp::flags::ACK;
    let mut want = vec![a; n];
    want[0] |= tcp::flags::CWR;
    want[n - 1] |= tcp::flags::FIN | tcp::flags::PSH;
    assert_eq!(
        flags, want,
        "CWR on the first only, FIN|PSH on the last only"
    );
}

#[test]
fn oracle_tcp6_plain() {
    if !require_root("oracle_tcp6_plain") {
        return;
    }
    let mut case = Case::tcp6("tcp6 plain");
    case.tcp_flags = tcp::flags::FIN | tcp::flags::PSH | tcp::flags::CWR | tcp::flags::ACK;
    run_oracle_case(&case);
}

#[test]
fn oracle_tcp6_destination_options() {
    if !require_root("oracle_tcp6_destination_options") {
        return;
    }
    let mut case = Case::tcp6("tcp6 dstopts");
    case.ip.v6_dstopts = true;
    case.tcp_options = &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    case.payload_len = 3 * 1200 + 1;
    run_oracle_case(&case);
}

#[test]
fn oracle_udp4_l4() {
    if !require_root("oracle_udp4_l4") {
        return;
    }
    let mut case = Case::tcp4("udp4 uso");
    case.l4 = L4::Udp;
    case.payload_len = 3 * 1200 + 100;
    run_oracle_case(&case);
}

#[test]
fn oracle_udp6_l4() {
    if !require_root("oracle_udp6_l4") {
        return;
    }
    let mut case = Case::tcp6("udp6 uso");
    case.l4 = L4::Udp;
    case.payload_len = 4 * 1200;
    run_oracle_case(&case);
}

/// How long a refused case waits to be sure nothing was forwarded.
const QUIET_WAIT: Duration = Duration::from_millis(300);

/// Writes `hdr` + `packet` into the kernel and into `segment_with_hdr`;
/// both must refuse it: the write with `EINVAL`, ours with `want`. Nothing
/// of `case`'s flow may come out of the egress TUN.
fn run_refused_case(case: &Case, hdr: &VirtioNetHdr, packet: &[u8], want: VirtioError) {
    let o = oracle();
    let mut ours = SegmentBuf::new();
    assert_eq!(
        segment_with_hdr(packet, 0, hdr, &mut ours),
        Err(SegmentError::Virtio(want)),
        "{}: our verdict",
        case.name
    );
    assert!(ours.is_empty(), "{}: nothing appended on error", case.name);
    // validate() alone says the same.
    assert_eq!(hdr.validate(packet), Err(want), "{}: validate", case.name);

    let err = tun_write(o.ingress.fds()[0].as_fd(), hdr, packet)
        .expect_err(&format!("{}: the kernel accepted the write", case.name));
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EINVAL),
        "{}: the kernel refused with {err}, not EINVAL",
        case.name
    );
    let forwarded = collect(
        o.egress.fds()[0].as_fd(),
        1,
        QUIET_WAIT,
        Duration::ZERO,
        |p| case.matches(p),
    )
    .unwrap();
    assert!(
        forwarded.is_empty(),
        "{}: the kernel forwarded {} packets of a refused write",
        case.name,
        forwarded.len()
    );
}

/// A UDP_L4 case of `payload_len` bytes at `gso_size`.
fn udp_case(name: &'static str, v6: bool, payload_len: usize, gso_size: u16) -> Case {
    let base = if v6 {
        Case::tcp6(name)
    } else {
        Case::tcp4(name)
    };
    Case {
        l4: L4::Udp,
        payload_len,
        gso_size,
        ..base
    }
}

#[test]
fn oracle_udp_l4_128_segments_accepted() {
    if !require_root("oracle_udp_l4_128_segments_accepted") {
        return;
    }
    // The boundary: exactly UDP_MAX_SEGMENTS datagrams, by both.
    for v6 in [false, true] {
        let case = udp_case("udp_l4 128 x 1", v6, UDP_MAX_SEGMENTS, 1);
        let (hdr, packet) = case.build();
        assert!(hdr.validate(&packet).is_ok());
        run_oracle_case(&case);
    }
    // 128 full segments of a real size.
    run_oracle_case(&udp_case("udp_l4 128 x 400", false, 128 * 400, 400));
}

#[test]
fn oracle_udp_l4_129_segments_refused() {
    if !require_root("oracle_udp_l4_129_segments_refused") {
        return;
    }
    for (v6, payload_len, gso_size) in [
        (false, UDP_MAX_SEGMENTS + 1, 1),
        (true, UDP_MAX_SEGMENTS + 1, 1),
        (false, 128 * 400 + 1, 400),
    ] {
        let case = udp_case("udp_l4 129 segments", v6, payload_len, gso_size);
        let (hdr, packet) = case.build();
        run_refused_case(
            &case,
            &hdr,
            &packet,
            VirtioError::TooManyUdpSegments {
                payload_len,
                gso_size,
            },
        );
    }
}

#[test]
fn oracle_gso_by_frags_refused() {
    if !require_root("oracle_gso_by_frags_refused") {
        return;
    }
    for mut case in [
        Case::tcp4("tcp4 GSO_BY_FRAGS"),
        Case::tcp6("tcp6 GSO_BY_FRAGS"),
        udp_case("udp4 GSO_BY_FRAGS", false, 4 * 1200, 1200),
    ] {
        case.gso_size = GSO_BY_FRAGS;
        let (hdr, packet) = case.build();
        run_refused_case(&case, &hdr, &packet, VirtioError::GsoSizeByFrags);
    }
}

#[test]
fn oracle_csum_start_below_the_ip_header_refused() {
    if !require_root("oracle_csum_start_below_the_ip_header_refused") {
        return;
    }
    // A plain (NONE) UDP packet asking for a checksum from byte 19.
    let mut case = udp_case("none csum_start 19", false, 100, 1);
    let (mut hdr, packet) = case.build();
    hdr.gso_type = gso::NONE;
    hdr.gso_size = 0;
    hdr.hdr_len = 0;
    hdr.csum_start = 19;
    run_refused_case(
        &case,
        &hdr,
        &packet,
        VirtioError::CsumStartTooSmall {
            csum_start: 19,
            min: 20,
        },
    );
    // TCPV6 needs the 40-byte IPv6 header in front of csum_start.
    case = Case::tcp6("tcp6 csum_start 39");
    let (mut hdr, packet) = case.build();
    hdr.csum_start = 39;
    run_refused_case(
        &case,
        &hdr,
        &packet,
        VirtioError::CsumStartTooSmall {
            csum_start: 39,
            min: 40,
        },
    );
}

#[test]
fn oracle_gso_without_a_whole_tcp_header_refused() {
    if !require_root("oracle_gso_without_a_whole_tcp_header_refused") {
        return;
    }
    // TCPV4 with 18 transport bytes: room for the checksum field, not for
    // the 20-byte TCP header.
    let case = Case::tcp4("tcp4 18-byte transport");
    let mut l4 = tcp_packet(
        &case.ip,
        &TcpSpec {
            sport: SPORT,
            dport: DPORT,
            seq: 1,
            ack: 1,
            flags: tcp::flags::ACK,
            window: 501,
            options: &[],
        },
        &[],
        Csum::Seed,
    )[20..]
        .to_vec();
    l4.truncate(18);
    let packet = case.ip.wrap(ipproto::TCP, &l4);
    let hdr = VirtioNetHdr {
        flags: vflags::NEEDS_CSUM,
        gso_type: gso::TCPV4,
        hdr_len: 0,
        gso_size: 100,
        csum_start: 20,
        csum_offset: 16,
        num_buffers: None,
    };
    run_refused_case(
        &case,
        &hdr,
        &packet,
        VirtioError::TransportHeaderOutOfBounds {
            csum_start: 20,
            header_len: 20,
            packet_len: 38,
        },
    );
}
