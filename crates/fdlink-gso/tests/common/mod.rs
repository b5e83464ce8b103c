//! Generators of valid TCP/UDP super-packets for the property tests.
#![allow(dead_code, unreachable_pub)]

use fdlink_gso::checksum::{Checksum, checksum, pseudo_header_ipv4, pseudo_header_ipv6};
use proptest::prelude::*;

/// Everything that varies in a generated super-packet.
#[derive(Debug, Clone)]
pub struct Spec {
    pub v6: bool,
    /// IPv4 options (multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv6 extension headers: (next-header kind, body bytes), the body
    /// length being 6 + a multiple of 8.
    pub extensions: Vec<(u8, Vec<u8>)>,
    pub tcp: bool,
    /// TCP options (multiple of 4 bytes).
    pub tcp_options: Vec<u8>,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub ident: u16,
    pub dont_frag: bool,
    pub tos: u8,
    pub ttl: u8,
    pub flow: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
    pub mss: usize,
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

fn words(max_words: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..=max_words).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 4))
}

fn extension() -> impl Strategy<Value = (u8, Vec<u8>)> {
    (
        prop_oneof![Just(43u8), Just(60u8)],
        (0usize..3).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), 6 + 8 * n)),
    )
}

fn extensions() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    (
        any::<bool>(),
        proptest::collection::vec(extension(), 0..3),
        (0usize..2).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), 6 + 8 * n)),
    )
        .prop_map(|(hbh, mut rest, body)| {
            if hbh {
                rest.insert(0, (0, body));
            }
            rest
        })
}

/// ACK-class TCP flags: ACK plus any of PSH, ECE, CWR.
pub fn ack_class_flags() -> impl Strategy<Value = u8> {
    (any::<bool>(), any::<bool>(), any::<bool>())
        .prop_map(|(psh, ece, cwr)| 0x10 | (psh as u8) << 3 | (ece as u8) << 6 | (cwr as u8) << 7)
}

/// A valid super-packet spec with the given flags strategy.
pub fn spec_with(flags: impl Strategy<Value = u8>) -> impl Strategy<Value = Spec> {
    let ip = (
        any::<bool>(),
        words(10),
        extensions(),
        any::<u16>(),
        any::<bool>(),
        any::<u8>(),
        any::<u8>(),
        0u32..1 << 20,
    );
    let l4 = (
        any::<bool>(),
        words(10),
        flags,
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        any::<u16>(),
    );
    let data = (1usize..1500).prop_flat_map(|mss| {
        (
            Just(mss),
            proptest::collection::vec(any::<u8>(), 0..(mss * 6).min(6000)),
        )
    });
    (ip, l4, data).prop_map(
        |(
            (v6, ip_options, extensions, ident, dont_frag, tos, ttl, flow),
            (tcp, tcp_options, tcp_flags, seq, ack, window, src_port, dst_port),
            (mss, payload),
        )| Spec {
            v6,
            ip_options,
            extensions,
            tcp,
            tcp_options,
            tcp_flags,
            seq,
            ack,
            window,
            ident,
            dont_frag,
            tos,
            ttl,
            flow,
            src_port,
            dst_port,
            payload,
            mss: mss.max(1),
        },
    )
}

/// A spec whose TCP flags are in the class GRO merges.
pub fn spec() -> impl Strategy<Value = Spec> {
    spec_with(ack_class_flags())
}

pub const SRC4: [u8; 4] = [10, 0, 0, 1];
pub const DST4: [u8; 4] = [10, 0, 0, 2];
pub const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

impl Spec {
    pub fn protocol(&self) -> u8 {
        if self.tcp { TCP } else { UDP }
    }

    /// The transport header with a zero checksum.
    fn l4_header(&self, l4_len: usize) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&self.src_port.to_be_bytes());
        h.extend_from_slice(&self.dst_port.to_be_bytes());
        if self.tcp {
            h.extend_from_slice(&self.seq.to_be_bytes());
            h.extend_from_slice(&self.ack.to_be_bytes());
            h.push((((20 + self.tcp_options.len()) / 4) as u8) << 4);
            h.push(self.tcp_flags);
            h.extend_from_slice(&self.window.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0]);
            h.extend_from_slice(&self.tcp_options);
        } else {
            h.extend_from_slice(&(l4_len as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
        }
        h
    }

    pub fn l4_header_len(&self) -> usize {
        if self.tcp {
            20 + self.tcp_options.len()
        } else {
            8
        }
    }

    /// Builds the super-packet with valid checksums.
    pub fn build(&self) -> Vec<u8> {
        let l4_len = self.l4_header_len() + self.payload.len();
        let mut p = Vec::new();
        let pseudo: Checksum = if self.v6 {
            let ext_len: usize = self.extensions.iter().map(|e| e.1.len() + 2).sum();
            let vtf = 6u32 << 28 | u32::from(self.tos) << 20 | self.flow;
            p.extend_from_slice(&vtf.to_be_bytes());
            p.extend_from_slice(&((ext_len + l4_len) as u16).to_be_bytes());
            p.push(self.extensions.first().map_or(self.protocol(), |e| e.0));
            p.push(self.ttl);
            p.extend_from_slice(&SRC6);
            p.extend_from_slice(&DST6);
            for (i, (_, body)) in self.extensions.iter().enumerate() {
                p.push(self.extensions.get(i + 1).map_or(self.protocol(), |e| e.0));
                p.push(((body.len() + 2) / 8 - 1) as u8);
                p.extend_from_slice(body);
            }
            pseudo_header_ipv6(SRC6, DST6, self.protocol(), l4_len as u32)
        } else {
            let ihl = 20 + self.ip_options.len();
            p.push(0x40 | (ihl / 4) as u8);
            p.push(self.tos);
            p.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
            p.extend_from_slice(&self.ident.to_be_bytes());
            p.extend_from_slice(&(if self.dont_frag { 0x4000u16 } else { 0 }).to_be_bytes());
            p.push(self.ttl);
            p.push(self.protocol());
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(&SRC4);
            p.extend_from_slice(&DST4);
            p.extend_from_slice(&self.ip_options);
            let c = checksum(&p);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            pseudo_header_ipv4(SRC4, DST4, self.protocol(), l4_len as u16)
        };
        let l4_offset = p.len();
        p.extend_from_slice(&self.l4_header(l4_len));
        p.extend_from_slice(&self.payload);
        let mut c = pseudo;
        c.add_bytes(&p[l4_offset..]);
        let mut csum = c.finish();
        if !self.tcp && csum == 0 {
            csum = 0xffff;
        }
        let at = l4_offset + if self.tcp { 16 } else { 6 };
        p[at..at + 2].copy_from_slice(&csum.to_be_bytes());
        p
    }

    /// Offset of the transport header in the built packet.
    pub fn l4_offset(&self) -> usize {
        if self.v6 {
            40 + self.extensions.iter().map(|e| e.1.len() + 2).sum::<usize>()
        } else {
            20 + self.ip_options.len()
        }
    }

    /// Offset of the payload in the built packet.
    pub fn payload_offset(&self) -> usize {
        self.l4_offset() + self.l4_header_len()
    }

    /// Number of segments Linux would produce.
    pub fn segment_count(&self) -> usize {
        self.payload.len().div_ceil(self.mss).max(1)
    }
}
