//! Generators shared by the `fuzz_*` targets: valid packets built with
//! etherparse (IPv4 options, IPv6 extension headers, TCP options), mutated
//! packets (cut, lying lengths, bad options, flipped bytes), pure random
//! bytes, Ethernet framing and lying virtio-net headers.
//!
//! Case counts come from `PROPTEST_CASES` (see [`config`]); without it each
//! property runs a short pass so `cargo test` stays fast.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};

use etherparse::{
    IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv4Options, Ipv6Extensions,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, Ipv6RoutingExtensions, PacketBuilder,
    TcpHeader,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

/// Cases per property when `PROPTEST_CASES` is not set: the CI pass.
pub const CI_CASES: u32 = 64;

/// proptest's default configuration (which reads `PROPTEST_CASES` and the
/// other `PROPTEST_*` variables), with a short default case count when the
/// variable is absent.
pub fn config() -> Config {
    let base = Config::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        base.cases
    } else {
        CI_CASES
    };
    Config {
        cases,
        // Shrinking a failure in the long run must not take hours.
        max_shrink_iters: 4096,
        ..base
    }
}

/// Runs one fuzz target: `test` on `cases` values of `strategy` (see
/// [`config`]), failures persisted next to `source` (pass `file!()`), then
/// prints `fuzz-report target=<name> cases=<n> failures=<0|1>` past
/// libtest's capture, which `cargo xtask fuzz` collects. A failure (a
/// panic or a broken invariant) panics with the shrunk input.
pub fn fuzz<S: Strategy>(
    source: &'static str,
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let cases = AtomicU64::new(0);
    // Regressions next to the target's file, as
    // `tests/tests/<target>.proptest-regressions`, committed with it.
    let stem = std::path::Path::new(source)
        .file_stem()
        .map_or_else(|| name.to_owned(), |s| s.to_string_lossy().into_owned());
    let path = regressions_path(format!(
        "{}/tests/{stem}.proptest-regressions",
        env!("CARGO_MANIFEST_DIR")
    ));
    let mut runner = proptest::test_runner::TestRunner::new(Config {
        source_file: Some(source),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(path),
        )),
        ..config()
    });
    let result = runner.run(&strategy, |v| {
        cases.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    let failed = result.is_err();
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "fuzz-report target={name} cases={} failures={}",
            cases.load(Ordering::Relaxed),
            u8::from(failed)
        );
    }
    if let Err(e) = result {
        panic!("fuzz target {name}: {e}");
    }
}

pub const SRC4: [u8; 4] = [10, 0, 0, 2];
pub const DST4: [u8; 4] = [10, 0, 0, 1];
pub const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const OWN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Transport of a generated packet.
#[derive(Debug, Clone)]
pub enum L4 {
    Tcp {
        src: u16,
        dst: u16,
        seq: u32,
        flags: u8,
        options: Vec<u8>,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    IcmpEcho {
        id: u16,
        seq: u16,
    },
}

/// Everything that varies in a valid packet.
#[derive(Debug, Clone)]
pub struct PacketSpec {
    pub v6: bool,
    pub ipv4_options: Vec<u8>,
    pub hop_by_hop: Option<Vec<u8>>,
    pub dest_opts: Option<Vec<u8>>,
    pub routing: Option<Vec<u8>>,
    pub fragment: Option<(u16, bool, u32)>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

fn words(max: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..=max).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 4))
}

/// An extension header body: 6 + 8n bytes.
fn ext_body() -> impl Strategy<Value = Vec<u8>> {
    (0usize..3).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), 6 + 8 * n))
}

fn l4() -> impl Strategy<Value = L4> {
    prop_oneof![
        (
            any::<u16>(),
            prop_oneof![Just(80u16), any::<u16>()],
            any::<u32>(),
            any::<u8>(),
            words(10)
        )
            .prop_map(|(src, dst, seq, flags, options)| L4::Tcp {
                src,
                dst,
                seq,
                flags,
                options
            }),
        (any::<u16>(), prop_oneof![Just(7u16), any::<u16>()])
            .prop_map(|(src, dst)| L4::Udp { src, dst }),
        (any::<u16>(), any::<u16>()).prop_map(|(id, seq)| L4::IcmpEcho { id, seq }),
    ]
}

/// A valid IPv4/IPv6 TCP/UDP/ICMP packet spec.
pub fn packet_spec() -> impl Strategy<Value = PacketSpec> {
    (
        any::<bool>(),
        words(10),
        proptest::option::weighted(0.3, ext_body()),
        proptest::option::weighted(0.3, ext_body()),
        proptest::option::weighted(0.2, ext_body()),
        proptest::option::weighted(0.1, (0u16..8191, any::<bool>(), any::<u32>())),
        l4(),
        proptest::collection::vec(any::<u8>(), 0..1400),
    )
        .prop_map(
            |(v6, ipv4_options, hop_by_hop, dest_opts, routing, fragment, l4, payload)| {
                PacketSpec {
                    v6,
                    ipv4_options,
                    hop_by_hop,
                    dest_opts,
                    routing,
                    fragment,
                    l4,
                    payload,
                }
            },
        )
}

impl PacketSpec {
    /// Builds the packet with etherparse (valid lengths and checksums).
    pub fn build(&self) -> Vec<u8> {
        let ip = if self.v6 {
            let raw = |b: &Vec<u8>| Ipv6RawExtHeader::new_raw(IpNumber::UDP, b).ok();
            let exts =
                Ipv6Extensions {
                    hop_by_hop_options: self.hop_by_hop.as_ref().and_then(raw),
                    destination_options: self.dest_opts.as_ref().and_then(raw),
                    routing: self.routing.as_ref().and_then(raw).map(|routing| {
                        Ipv6RoutingExtensions {
                            routing,
                            final_destination_options: None,
                        }
                    }),
                    fragment: self.fragment.and_then(|(off, more, id)| {
                        etherparse::IpFragOffset::try_new(off)
                            .ok()
                            .map(|o| Ipv6FragmentHeader::new(IpNumber::UDP, o, more, id))
                    }),
                    auth: None,
                };
            IpHeaders::Ipv6(
                Ipv6Header {
                    traffic_class: 0,
                    flow_label: Default::default(),
                    payload_length: 0,
                    next_header: IpNumber::UDP,
                    hop_limit: 64,
                    source: SRC6,
                    destination: DST6,
                },
                exts,
            )
        } else {
            let mut h = Ipv4Header::new(0, 64, IpNumber::UDP, SRC4, DST4).expect("ipv4 header");
            if let Ok(o) = Ipv4Options::try_from(&self.ipv4_options[..]) {
                h.options = o;
            }
            IpHeaders::Ipv4(h, Ipv4Extensions::default())
        };
        let b = PacketBuilder::ip(ip);
        let mut out = Vec::new();
        let written = match &self.l4 {
            L4::Tcp {
                src,
                dst,
                seq,
                flags,
                options,
            } => {
                let mut t = TcpHeader::new(*src, *dst, *seq, 65535);
                t.fin = flags & 1 != 0;
                t.syn = flags & 2 != 0;
                t.rst = flags & 4 != 0;
                t.psh = flags & 8 != 0;
                t.ack = flags & 16 != 0;
                t.ece = flags & 64 != 0;
                t.cwr = flags & 128 != 0;
                let _ = t.set_options_raw(options);
                b.tcp_header(t).write(&mut out, &self.payload)
            }
            L4::Udp { src, dst } => b.udp(*src, *dst).write(&mut out, &self.payload),
            L4::IcmpEcho { id, seq } => {
                if self.v6 {
                    b.icmpv6_echo_request(*id, *seq)
                        .write(&mut out, &self.payload)
                } else {
                    b.icmpv4_echo_request(*id, *seq)
                        .write(&mut out, &self.payload)
                }
            }
        };
        if written.is_err() {
            // A combination etherparse refuses: fall back to a bare header.
            out.clear();
            let _ = PacketBuilder::ipv4(SRC4, DST4, 64)
                .udp(1, 2)
                .write(&mut out, &self.payload);
        }
        out
    }
}

/// How a valid packet is damaged.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Cut at this point (modulo length).
    Truncate(usize),
    /// Set one byte.
    SetByte(usize, u8),
    /// Rewrite the IP length field (IPv4 total length, IPv6 payload
    /// length).
    LieIpLength(u16),
    /// Rewrite the IPv4 header length nibble.
    LieIhl(u8),
    /// Fill the option area (IPv4 options / first IPv6 extension) with
    /// this option: kind, length.
    BadOption(u8, u8),
    /// Rewrite the transport length field (UDP length, TCP data offset).
    LieL4Length(u16),
    /// Append junk.
    Extend(Vec<u8>),
    /// Change the IP version nibble.
    Version(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::SetByte(a, b)),
        prop_oneof![any::<u16>(), 0u16..80].prop_map(Mutation::LieIpLength),
        (0u8..16).prop_map(Mutation::LieIhl),
        (
            prop_oneof![
                Just(0u8),
                Just(1),
                Just(7),
                Just(68),
                Just(130),
                any::<u8>()
            ],
            prop_oneof![Just(0u8), Just(1), Just(2), Just(255), any::<u8>()]
        )
            .prop_map(|(k, l)| Mutation::BadOption(k, l)),
        prop_oneof![any::<u16>(), 0u16..16].prop_map(Mutation::LieL4Length),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        (0u8..16).prop_map(Mutation::Version),
    ]
}

/// Applies `m` to packet `p` (an IP packet).
pub fn mutate(p: &mut Vec<u8>, m: &Mutation) {
    let v6 = p.first().is_some_and(|b| b >> 4 == 6);
    let ihl = p.first().map_or(20, |b| usize::from(b & 0xf) * 4);
    let l4_at = if v6 { 40 } else { ihl };
    match m {
        Mutation::Truncate(at) => {
            let at = at % (p.len() + 1);
            p.truncate(at);
        }
        Mutation::SetByte(at, v) => {
            if !p.is_empty() {
                let at = at % p.len();
                p[at] = *v;
            }
        }
        Mutation::LieIpLength(len) => {
            let at = if v6 { 4 } else { 2 };
            if p.len() >= at + 2 {
                p[at..at + 2].copy_from_slice(&len.to_be_bytes());
            }
        }
        Mutation::LieIhl(n) => {
            if let Some(b) = p.first_mut() {
                *b = (*b & 0xf0) | (n & 0xf);
            }
        }
        Mutation::BadOption(kind, len) => {
            let at = if v6 { 42 } else { 20 };
            if p.len() > at + 1 {
                p[at] = *kind;
                p[at + 1] = *len;
            }
        }
        Mutation::LieL4Length(v) => {
            if p.len() >= l4_at + 14 {
                // UDP length at +4; TCP data offset at +12 (both written:
                // one of them lies about the transport).
                p[l4_at + 4..l4_at + 6].copy_from_slice(&v.to_be_bytes());
                p[l4_at + 12] = (*v as u8) << 4;
            }
        }
        Mutation::Extend(junk) => p.extend_from_slice(junk),
        Mutation::Version(v) => {
            if let Some(b) = p.first_mut() {
                *b = (*b & 0x0f) | (v << 4);
            }
        }
    }
}

/// A valid packet damaged by 1..4 mutations.
pub fn mutated_packet() -> impl Strategy<Value = Vec<u8>> {
    (packet_spec(), proptest::collection::vec(mutation(), 1..4)).prop_map(|(spec, ms)| {
        let mut p = spec.build();
        for m in &ms {
            mutate(&mut p, m);
        }
        p
    })
}

/// Pure random bytes, biased to start like IP.
pub fn random_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        (
            prop_oneof![Just(0x45u8), Just(0x60), any::<u8>()],
            proptest::collection::vec(any::<u8>(), 0..1600)
        )
            .prop_map(|(first, mut rest)| {
                rest.insert(0, first);
                rest
            }),
    ]
}

/// Any IP packet: valid, mutated, or random.
pub fn any_ip_packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => packet_spec().prop_map(|s| s.build()),
        3 => mutated_packet(),
        1 => random_bytes(),
    ]
}

/// An Ethernet header for a payload: destination own / broadcast /
/// multicast / foreign, EtherType matching or not.
pub fn ethernet_header() -> impl Strategy<Value = ([u8; 6], Option<u16>)> {
    (
        prop_oneof![
            Just(OWN_MAC),
            Just([0xff; 6]),
            Just([0x33, 0x33, 0, 0, 0, 1]),
            Just(PEER_MAC),
            any::<[u8; 6]>()
        ],
        // None: the EtherType that matches the IP version.
        proptest::option::weighted(
            0.3,
            prop_oneof![Just(0x0800u16), Just(0x86dd), Just(0x0806), any::<u16>()],
        ),
    )
}

/// Frames `packet` in Ethernet.
pub fn ethernet_frame(dst: [u8; 6], ethertype: Option<u16>, packet: &[u8]) -> Vec<u8> {
    let ethertype = ethertype.unwrap_or(match packet.first().map(|b| b >> 4) {
        Some(6) => 0x86dd,
        _ => 0x0800,
    });
    let mut f = Vec::with_capacity(14 + packet.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(packet);
    f
}

/// A frame for an endpoint: an Ethernet frame (sometimes a runt) or a bare
/// IP packet.
pub fn link_frame(ethernet: bool) -> BoxedStrategy<Vec<u8>> {
    if ethernet {
        prop_oneof![
            8 => (ethernet_header(), any_ip_packet())
                .prop_map(|((dst, et), p)| ethernet_frame(dst, et, &p)),
            1 => proptest::collection::vec(any::<u8>(), 0..14),
        ]
        .boxed()
    } else {
        any_ip_packet().boxed()
    }
}

/// A virtio-net header (10 bytes) for `packet` (the frame after the
/// header, `link_len` bytes of link header first): the one that describes
/// it, then possibly a lie.
#[derive(Debug, Clone)]
pub enum VnetLie {
    Honest,
    CsumStart(u16),
    CsumOffset(u16),
    GsoSizeZero,
    GsoType(u8),
    HdrLen(u16),
    Flags(u8),
    Random([u8; 10]),
}

pub fn vnet_lie() -> impl Strategy<Value = VnetLie> {
    prop_oneof![
        3 => Just(VnetLie::Honest),
        1 => prop_oneof![any::<u16>(), 0u16..200].prop_map(VnetLie::CsumStart),
        1 => prop_oneof![any::<u16>(), 0u16..40].prop_map(VnetLie::CsumOffset),
        1 => Just(VnetLie::GsoSizeZero),
        1 => prop_oneof![Just(0u8), Just(1), Just(3), Just(4), Just(5), Just(0x81), Just(0x85), any::<u8>()]
            .prop_map(VnetLie::GsoType),
        1 => prop_oneof![any::<u16>(), 0u16..200].prop_map(VnetLie::HdrLen),
        1 => any::<u8>().prop_map(VnetLie::Flags),
        1 => any::<[u8; 10]>().prop_map(VnetLie::Random),
    ]
}

/// The honest header for an IP packet behind `link_len` bytes: NEEDS_CSUM
/// at the real transport checksum and, with `gso_size`, a segmentation
/// request of the right type.
pub fn honest_vnet(packet: &[u8], link_len: usize, gso_size: u16) -> [u8; 10] {
    let mut h = [0u8; 10];
    let ip = packet.get(link_len..).unwrap_or_default();
    let Ok(sliced) = etherparse::SlicedPacket::from_ip(ip) else {
        return h;
    };
    let (l4_at, csum_off, tcp) = match &sliced.transport {
        Some(etherparse::TransportSlice::Tcp(_)) => {
            (ip.len() - sliced_payload_len(&sliced), 16u16, true)
        }
        Some(etherparse::TransportSlice::Udp(_)) => {
            (ip.len() - sliced_payload_len(&sliced), 6u16, false)
        }
        _ => return h,
    };
    let v6 = ip.first().is_some_and(|b| b >> 4 == 6);
    h[0] = 1; // NEEDS_CSUM
    let csum_start = (link_len + l4_at) as u16;
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&csum_off.to_le_bytes());
    if gso_size > 0 {
        h[1] = match (tcp, v6) {
            (true, false) => 1,
            (true, true) => 4,
            (false, _) => 5,
        };
        let l4_hdr = if tcp {
            ip.get(l4_at + 12).map_or(20, |b| usize::from(b >> 4) * 4)
        } else {
            8
        };
        let hdr_len = (link_len + l4_at + l4_hdr) as u16;
        h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    }
    h
}

/// Bytes from the transport header to the end of the packet.
fn sliced_payload_len(s: &etherparse::SlicedPacket<'_>) -> usize {
    match &s.net {
        Some(etherparse::NetSlice::Ipv4(v4)) => v4.payload().payload.len(),
        Some(etherparse::NetSlice::Ipv6(v6)) => v6.payload().payload.len(),
        _ => 0,
    }
}

/// Applies a lie to an honest header.
pub fn lie(mut h: [u8; 10], lie: &VnetLie) -> [u8; 10] {
    match lie {
        VnetLie::Honest => {}
        VnetLie::CsumStart(v) => {
            h[0] |= 1;
            h[6..8].copy_from_slice(&v.to_le_bytes());
        }
        VnetLie::CsumOffset(v) => {
            h[0] |= 1;
            h[8..10].copy_from_slice(&v.to_le_bytes());
        }
        VnetLie::GsoSizeZero => {
            if h[1] == 0 {
                h[1] = 1;
            }
            h[4..6].copy_from_slice(&[0, 0]);
        }
        VnetLie::GsoType(t) => h[1] = *t,
        VnetLie::HdrLen(v) => h[2..4].copy_from_slice(&v.to_le_bytes()),
        VnetLie::Flags(f) => h[0] = *f,
        VnetLie::Random(r) => h = *r,
    }
    h
}

/// A frame with a virtio header in front: an IP packet (valid, mutated or
/// random) behind an honest or lying header.
pub fn vnet_frame(ethernet: bool) -> impl Strategy<Value = Vec<u8>> {
    (
        link_frame(ethernet),
        prop_oneof![Just(0u16), 1u16..1500, any::<u16>()],
        vnet_lie(),
    )
        .prop_map(move |(frame, gso, l)| {
            let link_len = if ethernet { 14 } else { 0 };
            let h = lie(honest_vnet(&frame, link_len, gso), &l);
            let mut out = h.to_vec();
            out.extend_from_slice(&frame);
            out
        })
}

/// A `'static` copy of `path`, as proptest's file persistence wants one.
/// Each distinct path is leaked once and kept in a static list, so memcheck
/// (`cargo xtask valgrind`) sees it as still reachable, not lost.
fn regressions_path(path: String) -> &'static str {
    static PATHS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = paths.iter().find(|p| **p == path) {
        return known;
    }
    let leaked: &'static str = Box::leak(path.into_boxed_str());
    paths.push(leaked);
    leaked
}
