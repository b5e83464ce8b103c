//! The netstack's counters, per queue (engine): what it accepted and
//! refused, by reason, what is active, and the bytes it moved.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::policy::SpecialDestination;

/// Why a new connection or flow was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The cap on half-open TCP connections was reached.
    HalfOpenCap,
    /// The cap on established TCP connections was reached.
    ConnectionCap,
    /// The cap on UDP flows was reached.
    UdpFlowCap,
    /// A special destination the policy refuses.
    Destination(SpecialDestination),
    /// The application refused it.
    Application,
}

/// Live counters of one engine.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) tcp_accepted: AtomicU64,
    pub(crate) tcp_active: AtomicU64,
    pub(crate) tcp_half_open: AtomicU64,
    pub(crate) tcp_reset: AtomicU64,
    pub(crate) tcp_acks_salvaged: AtomicU64,
    pub(crate) udp_flows: AtomicU64,
    pub(crate) udp_active: AtomicU64,
    pub(crate) udp_dropped: AtomicU64,
    pub(crate) icmp_echoes: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    refused_half_open: AtomicU64,
    refused_connections: AtomicU64,
    refused_udp: AtomicU64,
    refused_by_app: AtomicU64,
    refused_destination: [AtomicU64; SpecialDestination::ALL.len()],
}

impl Counters {
    pub(crate) fn refused(&self, why: Refusal) {
        let counter = match why {
            Refusal::HalfOpenCap => &self.refused_half_open,
            Refusal::ConnectionCap => &self.refused_connections,
            Refusal::UdpFlowCap => &self.refused_udp,
            Refusal::Application => &self.refused_by_app,
            Refusal::Destination(kind) => &self.refused_destination[kind.index()],
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> NetstackStats {
        let mut refused_destination = [0; SpecialDestination::ALL.len()];
        for (out, c) in refused_destination
            .iter_mut()
            .zip(&self.refused_destination)
        {
            *out = c.load(Relaxed);
        }
        NetstackStats {
            tcp_accepted: self.tcp_accepted.load(Relaxed),
            tcp_active: self.tcp_active.load(Relaxed),
            tcp_half_open: self.tcp_half_open.load(Relaxed),
            tcp_reset: self.tcp_reset.load(Relaxed),
            tcp_acks_salvaged: self.tcp_acks_salvaged.load(Relaxed),
            udp_flows: self.udp_flows.load(Relaxed),
            udp_active: self.udp_active.load(Relaxed),
            udp_dropped: self.udp_dropped.load(Relaxed),
            icmp_echoes: self.icmp_echoes.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            refused_half_open: self.refused_half_open.load(Relaxed),
            refused_connections: self.refused_connections.load(Relaxed),
            refused_udp: self.refused_udp.load(Relaxed),
            refused_by_app: self.refused_by_app.load(Relaxed),
            refused_destination,
        }
    }
}

/// A copy of a netstack's counters (one queue's, or the sum of all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct NetstackStats {
    /// TCP connections that completed their handshake and were handed to
    /// the application.
    pub tcp_accepted: u64,
    /// TCP connections open now (handed over, not yet finished).
    pub tcp_active: u64,
    /// TCP handshakes in progress now.
    pub tcp_half_open: u64,
    /// TCP connections that ended with a reset or a timeout.
    pub tcp_reset: u64,
    /// Acknowledgments from peers that a closed receive window would have
    /// dropped, handed to smoltcp as bare ACKs instead.
    pub tcp_acks_salvaged: u64,
    /// UDP flows seen (each a new source and original destination).
    pub udp_flows: u64,
    /// UDP flows open now.
    pub udp_active: u64,
    /// UDP datagrams dropped because their flow's queue was full.
    pub udp_dropped: u64,
    /// ICMP echo requests answered.
    pub icmp_echoes: u64,
    /// Bytes from the link's peers handed to the application (TCP data and
    /// UDP payloads).
    pub bytes_in: u64,
    /// Bytes the application sent to the link's peers.
    pub bytes_out: u64,
    /// SYNs refused: the half-open cap was reached.
    pub refused_half_open: u64,
    /// SYNs refused: the connection cap was reached.
    pub refused_connections: u64,
    /// UDP datagrams of new flows refused: the flow cap was reached.
    pub refused_udp: u64,
    /// Connections the application refused.
    pub refused_by_app: u64,
    /// Packets to special destinations refused, by kind (in the order of
    /// [`SpecialDestination::ALL`]).
    pub refused_destination: [u64; SpecialDestination::ALL.len()],
}

impl NetstackStats {
    /// Everything refused, for every reason.
    pub fn refused(&self) -> u64 {
        self.refused_half_open
            + self.refused_connections
            + self.refused_udp
            + self.refused_by_app
            + self.refused_destination.iter().sum::<u64>()
    }

    /// Packets refused for going to `kind` of destination.
    pub fn refused_to(&self, kind: SpecialDestination) -> u64 {
        self.refused_destination[kind.index()]
    }

    pub(crate) fn merge(mut self, other: NetstackStats) -> NetstackStats {
        self.tcp_accepted += other.tcp_accepted;
        self.tcp_active += other.tcp_active;
        self.tcp_half_open += other.tcp_half_open;
        self.tcp_reset += other.tcp_reset;
        self.tcp_acks_salvaged += other.tcp_acks_salvaged;
        self.udp_flows += other.udp_flows;
        self.udp_active += other.udp_active;
        self.udp_dropped += other.udp_dropped;
        self.icmp_echoes += other.icmp_echoes;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.refused_half_open += other.refused_half_open;
        self.refused_connections += other.refused_connections;
        self.refused_udp += other.refused_udp;
        self.refused_by_app += other.refused_by_app;
        for (a, b) in self
            .refused_destination
            .iter_mut()
            .zip(other.refused_destination)
        {
            *a += b;
        }
        self
    }
}

impl fmt::Display for NetstackStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcp_accepted={} tcp_active={} tcp_half_open={} tcp_reset={} tcp_acks_salvaged={} udp_flows={} udp_active={} udp_dropped={} icmp_echoes={} bytes_in={} bytes_out={} refused={}",
            self.tcp_accepted,
            self.tcp_active,
            self.tcp_half_open,
            self.tcp_reset,
            self.tcp_acks_salvaged,
            self.udp_flows,
            self.udp_active,
            self.udp_dropped,
            self.icmp_echoes,
            self.bytes_in,
            self.bytes_out,
            self.refused()
        )
    }
}
