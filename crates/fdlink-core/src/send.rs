//! The send path: outgoing packets, framing, the channel a flow hash
//! picks, batched writes and the policy on a full send buffer.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::closure::CloseReason;
use crate::link::{EtherType, MacAddr, ethernet};
use crate::shared::Shared;
use crate::stats::DropReason;

/// One packet to send.
#[derive(Debug, Clone, Copy)]
pub struct OutPacket<'a> {
    /// The network-layer packet (IP, ARP, ...), or the whole link frame
    /// when [`OutPacket::framed`] is set.
    pub payload: &'a [u8],
    /// The payload already starts with its link header (a stack that builds
    /// Ethernet frames itself); the endpoint adds none.
    pub framed: bool,
    /// The EtherType written in the Ethernet header.
    pub protocol: EtherType,
    /// Ethernet destination.
    pub dst: MacAddr,
    /// Ethernet source; the endpoint's own address when `None`.
    pub src: Option<MacAddr>,
    /// The flow hash: the packet leaves on channel `hash % channels`
    /// (the first channel when `None`).
    pub hash: Option<u32>,
    /// The virtio-net header to put in front, when the endpoint uses one
    /// (all zeros when empty: no offload).
    pub vnet_header: &'a [u8],
}

impl<'a> OutPacket<'a> {
    /// An IP packet; the EtherType comes from its version nibble, the
    /// Ethernet destination is broadcast until [`OutPacket::to`] sets it.
    pub fn ip(payload: &'a [u8]) -> Self {
        OutPacket {
            payload,
            framed: false,
            protocol: EtherType::from_ip_version(payload).unwrap_or(EtherType::IPV4),
            dst: MacAddr::BROADCAST,
            src: None,
            hash: None,
            vnet_header: &[],
        }
    }

    /// Any payload with an explicit EtherType.
    pub fn new(protocol: EtherType, payload: &'a [u8]) -> Self {
        OutPacket {
            protocol,
            ..OutPacket::ip(payload)
        }
    }

    /// A complete link frame (Ethernet header included, in Ethernet mode),
    /// written as is.
    pub fn frame(frame: &'a [u8]) -> Self {
        OutPacket {
            framed: true,
            ..OutPacket::ip(frame)
        }
    }

    /// Sets the Ethernet destination.
    pub fn to(mut self, dst: MacAddr) -> Self {
        self.dst = dst;
        self
    }

    /// Sets an explicit Ethernet source.
    pub fn from(mut self, src: MacAddr) -> Self {
        self.src = Some(src);
        self
    }

    /// Sets the flow hash that picks the channel.
    pub fn with_hash(mut self, hash: u32) -> Self {
        self.hash = Some(hash);
        self
    }

    /// Sets the virtio-net header.
    pub fn with_vnet_header(mut self, header: &'a [u8]) -> Self {
        self.vnet_header = header;
        self
    }
}

/// What a send did with its packets: each was sent or dropped (and the drop
/// counted by reason in the endpoint's statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SendOutcome {
    /// Packets the kernel accepted.
    pub sent: usize,
    /// Packets dropped.
    pub dropped: usize,
}

impl Shared {
    /// Sends the packets `pick` selects on channel `q`, in order.
    ///
    /// `refused(i, error)` hears of each packet the kernel refused; when it
    /// returns true the caller takes packet `i` back (it is neither sent
    /// nor counted here), otherwise it is counted as
    /// [`DropReason::SendError`].
    pub(crate) fn send_on(
        &self,
        q: usize,
        packets: &[OutPacket<'_>],
        pick: impl Fn(&OutPacket<'_>) -> bool,
        refused: &mut dyn FnMut(usize, &io::Error) -> bool,
    ) -> SendOutcome {
        let channel = self.channel(q);
        let config = self.config();
        let mut scratch = channel.tx.lock().expect("tx lock");
        let scratch = &mut *scratch;
        scratch.picked.clear();
        let mut dropped = 0;
        for (i, p) in packets.iter().enumerate().filter(|(_, p)| pick(p)) {
            match self.check_outgoing(p) {
                Ok(()) => scratch.picked.push(i),
                Err(reason) => {
                    self.stats().drop(reason, 1);
                    dropped += 1;
                }
            }
        }
        let mut sent = 0;
        let mut next = 0;
        let mut deadline = None;
        let zero_vnet = [0u8; 12];
        while next < scratch.picked.len() {
            if !self.is_alive(q) || channel.send_closed.load(Ordering::Acquire) {
                let rest = scratch.picked.len() - next;
                self.stats().drop(DropReason::LinkClosed, rest as u64);
                dropped += rest;
                break;
            }
            let chunk = &scratch.picked
                [next..(next + scratch.link_headers.len()).min(scratch.picked.len())];
            for (header, &i) in scratch.link_headers.iter_mut().zip(chunk) {
                let p = &packets[i];
                if config.ethernet && !p.framed {
                    let src = p.src.or(config.link_address()).unwrap_or_default();
                    *header = ethernet::header(p.dst, src, p.protocol);
                }
            }
            let link_len = config.link_len();
            let vnet_len = config.vnet_len;
            let frames = chunk.iter().zip(&scratch.link_headers).map(|(&i, header)| {
                let p = &packets[i];
                let vnet = if p.vnet_header.is_empty() {
                    &zero_vnet[..vnet_len]
                } else {
                    p.vnet_header
                };
                let link = if p.framed { 0 } else { link_len };
                [vnet, &header[..link], p.payload]
            });
            match channel.write(&mut scratch.mmsg, frames) {
                Ok(k) => {
                    let bytes: usize = chunk[..k]
                        .iter()
                        .map(|&i| {
                            let p = &packets[i];
                            p.payload.len() + if p.framed { 0 } else { link_len }
                        })
                        .sum();
                    self.stats().sent(k as u64, bytes as u64);
                    sent += k;
                    next += k;
                }
                // Full, or interrupted before anything was taken (packet
                // objects may report EINTR): retry until the send timeout.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    let deadline =
                        *deadline.get_or_insert_with(|| Instant::now() + config.send_timeout);
                    let left = deadline.saturating_duration_since(Instant::now());
                    let room = !left.is_zero() && channel.wait_writable(left).unwrap_or(false);
                    if !room {
                        let rest = scratch.picked.len() - next;
                        self.stats().drop(DropReason::SendBufferFull, rest as u64);
                        dropped += rest;
                        break;
                    }
                }
                Err(e) if is_peer_gone(&e) => {
                    channel.send_closed.store(true, Ordering::Release);
                    if !channel.has_input_left() {
                        self.channel_closed(q, CloseReason::PeerClosed);
                    }
                }
                Err(e) => {
                    // This packet was refused (too big, device down, a
                    // virtio header the kernel rejects): count it, unless
                    // the caller takes it back, and go on with the next.
                    if !refused(scratch.picked[next], &e) {
                        self.stats().drop(DropReason::SendError, 1);
                        dropped += 1;
                    }
                    next += 1;
                }
            }
        }
        SendOutcome { sent, dropped }
    }

    fn check_outgoing(&self, p: &OutPacket<'_>) -> Result<(), DropReason> {
        let config = self.config();
        let vnet_len = config.vnet_len;
        let adds_link_header = config.ethernet && !p.framed;
        let empty = p.payload.is_empty() && !adds_link_header;
        if empty || !(p.vnet_header.is_empty() || p.vnet_header.len() == vnet_len) {
            return Err(DropReason::InvalidFrame);
        }
        let mtu = config.mtu() as usize;
        let largest = if vnet_len > 0 {
            mtu.max(config.gso_max_size as usize)
        } else {
            mtu
        };
        let link_len = if config.ethernet && p.framed {
            ethernet::HEADER_LEN
        } else {
            0
        };
        if p.payload.len().saturating_sub(link_len) > largest {
            return Err(DropReason::Oversized);
        }
        Ok(())
    }
}

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}
