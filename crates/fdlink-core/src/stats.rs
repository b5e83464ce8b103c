//! Counters: packets and bytes in and out, and every drop by its reason.
//!
//! The invariant the endpoint keeps: every frame read from a channel is
//! either delivered or counted under exactly one [`DropReason`], so
//! `frames_read == rx_packets + rx drops` at any quiescent moment.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Inbound: shorter than its link, virtio or fixed IP header.
    ShortFrame,
    /// Inbound: an Ethernet unicast destination that is not ours.
    ForeignMac,
    /// Inbound: not IPv4/IPv6 (IP mode), or an IP EtherType whose payload
    /// has another version.
    UnknownProtocol,
    /// Inbound: larger than the receive buffer; never delivered cut.
    Truncated,
    /// Inbound: a frame this host sent (`PACKET_OUTGOING`), read back by an
    /// `AF_PACKET` socket on a kernel without `PACKET_IGNORE_OUTGOING`.
    Outgoing,
    /// Inbound: a virtio-net header that does not describe its packet.
    InvalidVirtioHeader,
    /// Inbound: a transport checksum that does not verify.
    BadChecksum,
    /// Inbound: a packet the offload layer could not segment or complete.
    OffloadFailed,
    /// Outbound: a packet the offload layer could not segment or give a
    /// virtio-net header (not TCP or UDP, or malformed).
    TxOffloadFailed,
    /// Outbound: an empty frame, or a virtio-net header of the wrong
    /// length: nothing a link can carry (an empty write reads as end of
    /// file on a SEQPACKET socket or a TUN).
    InvalidFrame,
    /// Outbound: the send buffer stayed full past the send timeout.
    SendBufferFull,
    /// Outbound: the kernel refused the packet (too big, device down, ...).
    SendError,
    /// Outbound: the channel is closed.
    LinkClosed,
    /// Outbound: the packet is larger than the link allows.
    Oversized,
}

impl DropReason {
    /// Every reason, in a stable order (the order of [`DropCounts`]).
    pub const ALL: [DropReason; 14] = [
        DropReason::ShortFrame,
        DropReason::ForeignMac,
        DropReason::UnknownProtocol,
        DropReason::Truncated,
        DropReason::Outgoing,
        DropReason::InvalidVirtioHeader,
        DropReason::BadChecksum,
        DropReason::OffloadFailed,
        DropReason::TxOffloadFailed,
        DropReason::InvalidFrame,
        DropReason::SendBufferFull,
        DropReason::SendError,
        DropReason::LinkClosed,
        DropReason::Oversized,
    ];

    /// A short, stable snake_case name for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::ShortFrame => "short_frame",
            DropReason::ForeignMac => "foreign_mac",
            DropReason::UnknownProtocol => "unknown_protocol",
            DropReason::Truncated => "truncated",
            DropReason::Outgoing => "outgoing",
            DropReason::InvalidVirtioHeader => "invalid_virtio_header",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::OffloadFailed => "offload_failed",
            DropReason::TxOffloadFailed => "tx_offload_failed",
            DropReason::InvalidFrame => "invalid_frame",
            DropReason::SendBufferFull => "send_buffer_full",
            DropReason::SendError => "send_error",
            DropReason::LinkClosed => "link_closed",
            DropReason::Oversized => "oversized",
        }
    }

    /// True for reasons that apply to received packets.
    pub fn is_inbound(self) -> bool {
        !matches!(
            self,
            DropReason::TxOffloadFailed
                | DropReason::InvalidFrame
                | DropReason::SendBufferFull
                | DropReason::SendError
                | DropReason::LinkClosed
                | DropReason::Oversized
        )
    }

    fn index(self) -> usize {
        DropReason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every reason is in ALL")
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Live counters, updated with relaxed atomics from any thread.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    frames_read: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    offload_fallbacks: AtomicU64,
    kernel_drops: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Stats {
    pub(crate) fn read(&self, frames: u64) {
        self.frames_read.fetch_add(frames, Relaxed);
    }

    pub(crate) fn delivered(&self, packets: u64, bytes: u64) {
        self.rx_packets.fetch_add(packets, Relaxed);
        self.rx_bytes.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn sent(&self, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Relaxed);
        self.tx_bytes.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn kernel_dropped(&self, frames: u64) {
        self.kernel_drops.fetch_add(frames, Relaxed);
    }

    pub(crate) fn offload_fallback(&self) {
        self.offload_fallbacks.fetch_add(1, Relaxed);
    }

    pub(crate) fn drop(&self, reason: DropReason, packets: u64) {
        self.drops[reason.index()].fetch_add(packets, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let mut drops = DropCounts::default();
        for (slot, counter) in drops.0.iter_mut().zip(&self.drops) {
            *slot = counter.load(Relaxed);
        }
        StatsSnapshot {
            frames_read: self.frames_read.load(Relaxed),
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            offload_fallbacks: self.offload_fallbacks.load(Relaxed),
            kernel_drops: self.kernel_drops.load(Relaxed),
            drops,
        }
    }
}

/// Drop counters by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    /// Drops counted for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// Every reason with its count, including zeros.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().copied().zip(self.0.iter().copied())
    }

    /// All inbound drops.
    pub fn inbound(&self) -> u64 {
        self.iter()
            .filter(|(r, _)| r.is_inbound())
            .map(|(_, n)| n)
            .sum()
    }

    /// All outbound drops.
    pub fn outbound(&self) -> u64 {
        self.iter()
            .filter(|(r, _)| !r.is_inbound())
            .map(|(_, n)| n)
            .sum()
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Frames read from the channels, good or bad.
    pub frames_read: u64,
    /// Packets delivered to the stack.
    pub rx_packets: u64,
    /// Bytes delivered (whole frames, link header included).
    pub rx_bytes: u64,
    /// Packets the kernel accepted for sending.
    pub tx_packets: u64,
    /// Bytes sent (whole frames, link header included).
    pub tx_bytes: u64,
    /// Times an offload layer switched a kernel offload to software after
    /// the kernel refused it at run time (once per offload kind).
    pub offload_fallbacks: u64,
    /// Frames the kernel dropped before the endpoint could read them (an
    /// `AF_PACKET` socket's queue was full: `PACKET_STATISTICS`). They
    /// never reached the endpoint, so they are not in `frames_read`.
    pub kernel_drops: u64,
    /// Drops by reason.
    pub drops: DropCounts,
}

impl fmt::Display for StatsSnapshot {
    /// One line: `rx_packets=.. rx_bytes=.. tx_packets=.. tx_bytes=..
    /// dropped=..` followed by each non-zero reason as `drop.<name>=..`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frames_read={} rx_packets={} rx_bytes={} tx_packets={} tx_bytes={} dropped={}",
            self.frames_read,
            self.rx_packets,
            self.rx_bytes,
            self.tx_packets,
            self.tx_bytes,
            self.drops.total()
        )?;
        if self.kernel_drops > 0 {
            write!(f, " kernel_drops={}", self.kernel_drops)?;
        }
        if self.offload_fallbacks > 0 {
            write!(f, " offload_fallbacks={}", self.offload_fallbacks)?;
        }
        for (reason, n) in self.drops.iter().filter(|(_, n)| *n > 0) {
            write!(f, " drop.{reason}={n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_by_reason() {
        let stats = Stats::default();
        stats.read(5);
        stats.delivered(3, 300);
        stats.drop(DropReason::ForeignMac, 1);
        stats.drop(DropReason::Truncated, 1);
        stats.drop(DropReason::SendError, 4);
        let s = stats.snapshot();
        assert_eq!(s.drops.get(DropReason::ForeignMac), 1);
        assert_eq!(s.drops.inbound(), 2);
        assert_eq!(s.drops.outbound(), 4);
        assert_eq!(s.frames_read, s.rx_packets + s.drops.inbound());
        let line = s.to_string();
        assert!(line.contains("drop.foreign_mac=1"), "{line}");
        assert!(!line.contains("drop.short_frame"), "{line}");
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }
}
