//! A minimal TCP receiver played by hand against a kernel TCP sender: it
//! answers the SYN with a SYN-ACK, takes the bytes that arrive in order
//! (or overlap what it has, as retransmissions do), and acknowledges them.
//! No retransmission, no congestion control, no sending of data: the kernel
//! does all the work, which is what the TUN tests and the ACK-only ceiling
//! benchmark want.
//!
//! [`TcpPeer`] is a state machine without I/O: the caller reads packets
//! (from a TUN descriptor or an endpoint), hands each IP packet (a segment
//! or a TSO super-packet) to [`TcpPeer::handle`], and writes the packets
//! that [`TcpPeer::syn_ack`] and [`TcpPeer::ack`] return. When to ACK is the
//! caller's choice: after every read, per batch, or every
//! [`TcpPeerConfig::ack_every`] reads ([`TcpPeer::ack_due`]).

use std::net::IpAddr;

use fdlink_gso::wire::tcp::flags;

use crate::packet::{Csum, IpSpec, TcpSeg, TcpSpec, parse_tcp, seq_lt, tcp_packet};

/// Addresses and the behaviour of a [`TcpPeer`].
#[derive(Debug, Clone)]
pub struct TcpPeerConfig {
    /// The peer's own address (the kernel sends to it).
    pub local: IpAddr,
    /// The kernel's address.
    pub remote: IpAddr,
    /// The port the peer listens on.
    pub port: u16,
    /// The peer's initial sequence number.
    pub isn: u32,
    /// The MSS announced in the SYN-ACK.
    pub mss: u16,
    /// The window scale announced in the SYN-ACK.
    pub wscale: u8,
    /// The (unscaled) window of every packet sent.
    pub window: u16,
    /// Zero bytes in front of every packet built (e.g. a virtio-net header
    /// that asks for no offload), so it can be written in one go.
    pub headroom: usize,
    /// Handled packets after which [`TcpPeer::ack_due`] says an ACK is due.
    pub ack_every: usize,
}

impl TcpPeerConfig {
    /// Listens on `local`:`port` for `remote`: ISN 0x8000_0000, MSS 1460
    /// (IPv4) or 1440 (IPv6), window scale 7, window 0xffff, no headroom,
    /// ACK due after every packet.
    pub fn new(local: IpAddr, remote: IpAddr, port: u16) -> Self {
        Self {
            local,
            remote,
            port,
            isn: 0x8000_0000,
            mss: if local.is_ipv6() { 1440 } else { 1460 },
            wscale: 7,
            window: 0xffff,
            headroom: 0,
            ack_every: 1,
        }
    }
}

/// What one packet did to a [`TcpPeer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled<'a> {
    /// Not a TCP packet of this connection (or not for this port).
    Ignored,
    /// A SYN opened (or reopened) the connection: send [`TcpPeer::syn_ack`].
    Syn,
    /// A RST closed the connection; later segments are ignored until the
    /// next SYN.
    Reset,
    /// A segment of the connection; these bytes (possibly none) are new
    /// and in order.
    Data(&'a [u8]),
}

/// The receiving side of one TCP connection, see the module docs.
#[derive(Debug)]
pub struct TcpPeer {
    cfg: TcpPeerConfig,
    ip: IpSpec,
    remote_port: Option<u16>,
    rcv_nxt: u32,
    fin_received: bool,
    need_ack: bool,
    since_ack: usize,
    delivered: u64,
}

impl TcpPeer {
    /// A peer waiting for a SYN.
    pub fn new(cfg: TcpPeerConfig) -> Self {
        let ip = IpSpec::new(cfg.local, cfg.remote);
        Self {
            cfg,
            ip,
            remote_port: None,
            rcv_nxt: 0,
            fin_received: false,
            need_ack: false,
            since_ack: 0,
            delivered: 0,
        }
    }

    /// Whether IP packet `pkt` is TCP from the kernel to this peer's port;
    /// its fields if so.
    pub fn parse(&self, pkt: &[u8]) -> Option<TcpSeg> {
        parse_tcp(pkt).filter(|t| {
            t.src == self.cfg.remote && t.dst == self.cfg.local && t.dport == self.cfg.port
        })
    }

    /// Takes one IP packet (a segment or a super-packet) read from the
    /// kernel.
    pub fn handle<'a>(&mut self, pkt: &'a [u8]) -> Handled<'a> {
        match self.parse(pkt) {
            Some(t) => self.handle_parsed(&t, pkt),
            None => Handled::Ignored,
        }
    }

    /// [`TcpPeer::handle`] for a packet already parsed (with
    /// [`parse_tcp`]); addresses and port are checked again.
    pub fn handle_parsed<'a>(&mut self, t: &TcpSeg, pkt: &'a [u8]) -> Handled<'a> {
        if t.src != self.cfg.remote || t.dst != self.cfg.local || t.dport != self.cfg.port {
            return Handled::Ignored;
        }
        self.since_ack += 1;
        if t.flags & flags::SYN != 0 && t.flags & flags::ACK == 0 {
            self.remote_port = Some(t.sport);
            self.rcv_nxt = t.seq.wrapping_add(1);
            self.fin_received = false;
            return Handled::Syn;
        }
        if self.remote_port != Some(t.sport) {
            return Handled::Ignored;
        }
        if t.flags & flags::RST != 0 {
            self.remote_port = None;
            return Handled::Reset;
        }
        let payload = t.payload(pkt);
        let end = t.seq.wrapping_add(payload.len() as u32);
        let mut new: &'a [u8] = &[];
        if !payload.is_empty() {
            self.need_ack = true;
            // In order, or overlapping what we have (a retransmission).
            if !seq_lt(self.rcv_nxt, t.seq) && seq_lt(self.rcv_nxt, end) {
                let skip = self.rcv_nxt.wrapping_sub(t.seq) as usize;
                new = &payload[skip..];
                self.rcv_nxt = end;
                self.delivered += new.len() as u64;
            }
        }
        if t.flags & flags::FIN != 0 && end == self.rcv_nxt {
            self.need_ack = true;
            if !self.fin_received {
                self.fin_received = true;
                self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
            }
        }
        Handled::Data(new)
    }

    /// The SYN-ACK answering the last SYN: MSS, NOP, window scale.
    pub fn syn_ack(&mut self) -> Vec<u8> {
        let mss = self.cfg.mss.to_be_bytes();
        let opts = [2, 4, mss[0], mss[1], 1, 3, 3, self.cfg.wscale];
        self.build(
            self.cfg.isn,
            flags::SYN | flags::ACK,
            &opts,
            self.remote_port.unwrap_or(0),
        )
    }

    /// Whether received data or a FIN waits for an ACK.
    pub fn needs_ack(&self) -> bool {
        self.need_ack
    }

    /// Whether an ACK is waiting and [`TcpPeerConfig::ack_every`] packets
    /// were handled since the last one.
    pub fn ack_due(&self) -> bool {
        self.need_ack && self.since_ack >= self.cfg.ack_every
    }

    /// A cumulative ACK of everything received in order, with `extra` flags
    /// (e.g. FIN, or RST to abort); `None` before a SYN (or after a RST).
    /// Clears [`TcpPeer::needs_ack`].
    pub fn ack(&mut self, extra: u8) -> Option<Vec<u8>> {
        self.need_ack = false;
        self.since_ack = 0;
        let port = self.remote_port?;
        Some(self.build(self.cfg.isn.wrapping_add(1), flags::ACK | extra, &[], port))
    }

    /// Whether the kernel's FIN arrived (in order).
    pub fn fin_received(&self) -> bool {
        self.fin_received
    }

    /// The kernel's port, once its SYN arrived.
    pub fn remote_port(&self) -> Option<u16> {
        self.remote_port
    }

    /// Payload bytes received in order so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    fn build(&mut self, seq: u32, flags: u8, options: &[u8], dport: u16) -> Vec<u8> {
        self.ip.ident = self.ip.ident.wrapping_add(1);
        let t = TcpSpec {
            sport: self.cfg.port,
            dport,
            seq,
            ack: self.rcv_nxt,
            flags,
            window: self.cfg.window,
            options,
        };
        let packet = tcp_packet(&self.ip, &t, &[], Csum::Full);
        if self.cfg.headroom == 0 {
            return packet;
        }
        let mut out = vec![0u8; self.cfg.headroom + packet.len()];
        out[self.cfg.headroom..].copy_from_slice(&packet);
        out
    }
}
