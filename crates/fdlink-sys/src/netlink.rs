//! Following one network interface's own changes (MTU, MAC address, up or
//! down, removal) as the kernel announces them: `RTM_NEWLINK` and
//! `RTM_DELLINK` on a `NETLINK_ROUTE` socket subscribed to `RTMGRP_LINK`.
//!
//! A [`LinkWatch`] owns the socket and a reused receive buffer; a caller
//! polls its descriptor next to its others and, when it is readable, takes
//! the changes with [`LinkWatch::next_change`] until that says `None`.
//!
//! # What counts as a change
//!
//! Every link message of the kernel carries the interface's whole state,
//! whatever made it send one (MTU, address, flags, carrier, ...). A
//! [`LinkChange`] is that state as announced; its values may equal the
//! previous ones. Only messages of the plain link family (`AF_UNSPEC`)
//! count: a bridge announces its ports' own changes with `AF_BRIDGE`
//! messages, and an `AF_BRIDGE` `RTM_DELLINK` only means the interface
//! left its bridge, not that it is gone.
//!
//! # Never losing a change
//!
//! - [`LinkWatch::new`] subscribes first and then asks the kernel for the
//!   interface's state (`RTM_GETLINK` for its index), so the first change
//!   reported is the state at subscription time: nothing that happened
//!   between a caller's own query and the subscription is missed.
//! - When the socket's receive queue overflows, the kernel drops
//!   announcements and reports `ENOBUFS` once. The watch then reads what is
//!   still queued and, once the queue is empty (the kernel drops even
//!   replies until then), asks for the state again and reports the reply as
//!   a change. An interface that is gone by then is reported as removed
//!   (the kernel answers `ENODEV`).
//! - A datagram larger than the receive buffer (`MSG_TRUNC`) is dropped,
//!   the buffer grows to its size and the state is asked for the same way.
//!
//! # Parsing
//!
//! Messages are parsed from bytes with bounds checks, stepping by
//! `NLMSG_ALIGN` and `RTA_ALIGN`; a malformed message is skipped, and a
//! header whose length does not fit ends the datagram. Datagrams that do
//! not come from the kernel (port id 0) are ignored.

use std::fmt;
use std::io;
use std::mem;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::io::retry_eintr;
use crate::netdev::ARPHRD_ETHER;
use crate::{cvt, cvt_size};

/// Initial size of the receive buffer: a link message is a few KiB, one
/// with many virtual functions can be tens.
const RECV_BUF_LEN: usize = 32 * 1024;

/// The receive buffer never grows past this; a larger datagram is an
/// error.
const MAX_RECV_BUF_LEN: usize = 1 << 20;

/// `NLMSG_ALIGNTO` and `RTA_ALIGNTO`.
const ALIGNTO: usize = 4;
/// `NLMSG_HDRLEN`: `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct ifinfomsg)`.
const IFINFOMSG_LEN: usize = 16;
/// `RTA_LENGTH(0)`: `sizeof(struct rtattr)`.
const RTA_HDRLEN: usize = 4;
/// Length of the `RTM_GETLINK` request: header and `ifinfomsg`.
const GETLINK_LEN: usize = NLMSG_HDRLEN + IFINFOMSG_LEN;

/// Message types (`linux/netlink.h`, `linux/rtnetlink.h`).
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
/// `nlmsg_flags`: a request to the kernel (no `NLM_F_ACK`: a success is
/// answered by the link message alone).
const NLM_F_REQUEST: u16 = 1;
/// Attribute types (`linux/if_link.h`).
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
/// `NLA_TYPE_MASK`: an attribute type without `NLA_F_NESTED` and
/// `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `ifi_family` of a plain link message.
const AF_UNSPEC: u8 = 0;
/// `IFF_UP` in `ifi_flags`.
const IFF_UP: u32 = 1;
/// `RTMGRP_LINK`: the multicast group of link announcements.
const RTMGRP_LINK: u32 = 1;

/// Byte ranges of the fields read or written, all in host byte order.
mod field {
    use std::ops::Range;

    /// `struct nlmsghdr`.
    pub(super) const NLMSG_LEN: Range<usize> = 0..4;
    pub(super) const NLMSG_TYPE: Range<usize> = 4..6;
    pub(super) const NLMSG_FLAGS: Range<usize> = 6..8;
    pub(super) const NLMSG_SEQ: Range<usize> = 8..12;
    /// `struct nlmsgerr`, from the start of the message: the negative
    /// errno, 0 for an acknowledgement.
    pub(super) const ERROR_CODE: Range<usize> = 16..20;
    /// `struct ifinfomsg`, from the start of the message.
    pub(super) const IFI_FAMILY: usize = 16;
    pub(super) const IFI_TYPE: Range<usize> = 18..20;
    pub(super) const IFI_INDEX: Range<usize> = 20..24;
    pub(super) const IFI_FLAGS: Range<usize> = 24..28;
    /// `struct rtattr`, from the start of the attribute.
    pub(super) const RTA_LEN: Range<usize> = 0..2;
    pub(super) const RTA_TYPE: Range<usize> = 2..4;
}

/// `NLMSG_ALIGN` / `RTA_ALIGN`. Saturates instead of wrapping; a length
/// that large never fits a buffer anyway.
fn align(len: usize) -> usize {
    len.saturating_add(ALIGNTO - 1) & !(ALIGNTO - 1)
}

fn u16_at(bytes: &[u8], at: Range<usize>) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: Range<usize>) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at)?.try_into().ok()?))
}

/// One announced change of the watched interface: its state as the kernel
/// reported it. `None` means the message did not say.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkChange {
    /// The MTU (`IFLA_MTU`): the largest IP packet, without link-layer
    /// header.
    pub mtu: Option<u32>,
    /// The MAC address (`IFLA_ADDRESS`) of an Ethernet-like interface
    /// (`ARPHRD_ETHER`: a TAP, a veth, a bridge); `None` for other link
    /// types (a TUN device, loopback), as [`crate::netdev::if_hwaddr`].
    pub address: Option<[u8; 6]>,
    /// Whether the interface is administratively up (`IFF_UP`).
    pub up: Option<bool>,
    /// The interface is gone (`RTM_DELLINK`, moved to another namespace, or
    /// `ENODEV` when its state was asked for). Nothing follows a removal.
    pub removed: bool,
}

impl LinkChange {
    /// The change that says "gone" and nothing else.
    fn removed() -> LinkChange {
        LinkChange {
            mtu: None,
            address: None,
            up: None,
            removed: true,
        }
    }
}

/// What one netlink message means to a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A link message about the watched interface.
    Change(LinkChange),
    /// `NLMSG_ERROR` with a failure, as a positive errno.
    Failed(i32),
    /// Anything else: another interface, another family, an
    /// acknowledgement, `NLMSG_DONE`, a malformed message.
    Skip,
}

/// Delimits the first message of `bytes`: its length (`nlmsg_len`) and the
/// offset of the next one (`NLMSG_ALIGN`ed, at most `bytes.len()`).
///
/// `None` when `bytes` holds no header or `nlmsg_len` is shorter than one
/// or runs past the end: the rest cannot be delimited.
fn split_message(bytes: &[u8]) -> Option<(usize, usize)> {
    let len = u32_at(bytes, field::NLMSG_LEN)? as usize;
    if len < NLMSG_HDRLEN || len > bytes.len() {
        return None;
    }
    Some((len, align(len).min(bytes.len())))
}

/// What message `msg` (exactly `nlmsg_len` bytes) means to a watch of
/// interface `ifindex`.
fn parse_message(msg: &[u8], ifindex: u32) -> Event {
    match u16_at(msg, field::NLMSG_TYPE) {
        Some(NLMSG_ERROR) => match u32_at(msg, field::ERROR_CODE) {
            // `error` is a negative errno; 0 acknowledges.
            Some(code) if code != 0 => Event::Failed((code as i32).wrapping_neg()),
            _ => Event::Skip,
        },
        Some(ty @ (RTM_NEWLINK | RTM_DELLINK)) => {
            parse_link(msg, ifindex, ty == RTM_DELLINK).map_or(Event::Skip, Event::Change)
        }
        _ => Event::Skip,
    }
}

/// The change a link message reports, if it is a well-formed `AF_UNSPEC`
/// message about interface `ifindex`.
fn parse_link(msg: &[u8], ifindex: u32, removed: bool) -> Option<LinkChange> {
    if *msg.get(field::IFI_FAMILY)? != AF_UNSPEC || u32_at(msg, field::IFI_INDEX)? != ifindex {
        return None;
    }
    let ethernet = u16_at(msg, field::IFI_TYPE)? == ARPHRD_ETHER;
    let flags = u32_at(msg, field::IFI_FLAGS)?;
    let mut change = LinkChange {
        mtu: None,
        address: None,
        up: Some(flags & IFF_UP != 0),
        removed,
    };
    let mut attrs = msg.get(NLMSG_HDRLEN + align(IFINFOMSG_LEN)..)?;
    while !attrs.is_empty() {
        let len = usize::from(u16_at(attrs, field::RTA_LEN)?);
        let ty = u16_at(attrs, field::RTA_TYPE)? & NLA_TYPE_MASK;
        let payload = attrs.get(RTA_HDRLEN..len)?;
        match ty {
            IFLA_MTU => change.mtu = Some(u32::from_ne_bytes(payload.try_into().ok()?)),
            IFLA_ADDRESS if ethernet => change.address = payload.try_into().ok(),
            _ => {}
        }
        attrs = attrs.get(align(len).min(attrs.len())..)?;
    }
    Some(change)
}

/// The `RTM_GETLINK` request for interface `ifindex`'s state, with sequence
/// number `seq`.
fn getlink_request(ifindex: u32, seq: u32) -> [u8; GETLINK_LEN] {
    let mut req = [0u8; GETLINK_LEN];
    req[field::NLMSG_LEN].copy_from_slice(&(GETLINK_LEN as u32).to_ne_bytes());
    req[field::NLMSG_TYPE].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[field::NLMSG_FLAGS].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[field::NLMSG_SEQ].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in the sender. ifi_family AF_UNSPEC,
    // flags and change mask zero.
    req[field::IFI_INDEX].copy_from_slice(&ifindex.to_ne_bytes());
    req
}

/// A `sockaddr_nl` for `groups`, port id 0 (the kernel, or "choose one"
/// in `bind`).
fn sockaddr_nl(groups: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain integers (and private padding); all-zero
    // is valid.
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    addr
}

/// Watches one interface, by index, for the changes the kernel announces
/// in the network namespace of the thread that created the watch (the
/// socket stays in that namespace wherever it is used from).
///
/// Owns a non-blocking, close-on-exec `NETLINK_ROUTE` socket; poll it
/// through [`AsFd`] for readability, then call
/// [`next_change`](LinkWatch::next_change) until it returns `None`.
pub struct LinkWatch {
    fd: OwnedFd,
    ifindex: u32,
    /// The receive buffer, reused; `buf[pos..end]` are the messages of the
    /// last datagram not yet looked at.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Sequence number of the last `RTM_GETLINK` sent.
    seq: u32,
    /// A change may have been lost: ask for the state once the queue is
    /// empty.
    resync: bool,
    resyncs: u64,
}

impl fmt::Debug for LinkWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkWatch")
            .field("fd", &self.fd)
            .field("ifindex", &self.ifindex)
            .field("buf_len", &self.buf.len())
            .field("resync", &self.resync)
            .field("resyncs", &self.resyncs)
            .finish()
    }
}

impl LinkWatch {
    /// Subscribes to link announcements in the calling thread's network
    /// namespace and asks for interface `ifindex`'s current state, which is
    /// the first change reported (a removal when no such interface
    /// exists).
    ///
    /// Errors: `InvalidInput` for index 0 or one above `i32::MAX` (the
    /// kernel's `int`); the errors of `socket`, `bind` and `sendto` (for
    /// example `EMFILE`).
    pub fn new(ifindex: u32) -> io::Result<LinkWatch> {
        if ifindex == 0 || i32::try_from(ifindex).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface index {ifindex}"),
            ));
        }
        // SAFETY: socket() has no memory arguments; the result is checked
        // before use.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        })?;
        // SAFETY: `raw` is a descriptor socket() just returned and nothing
        // else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = sockaddr_nl(RTMGRP_LINK);
        // SAFETY: the pointer and length describe a live sockaddr_nl that
        // bind only reads.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        let mut watch = LinkWatch {
            fd,
            ifindex,
            buf: vec![0; RECV_BUF_LEN],
            pos: 0,
            end: 0,
            seq: 0,
            resync: false,
            resyncs: 0,
        };
        watch.request_state()?;
        Ok(watch)
    }

    /// The index of the watched interface.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// How many times a change may have been lost (the socket overflowed,
    /// or a datagram did not fit the buffer) and the state was asked for
    /// again.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// The next change of the watched interface, without blocking:
    /// `Ok(None)` when nothing is queued. Announcements about other
    /// interfaces are skipped. After an overflow, the interface's state is
    /// asked for and reported as a change (see the module docs).
    ///
    /// Errors: a failure the kernel reports for the state request (other
    /// than `ENODEV`, which is a removal); `InvalidData` for a datagram
    /// larger than 1 MiB; the errors of `recvfrom` and `sendto`. A state
    /// request that could not be sent is retried by the next call.
    pub fn next_change(&mut self) -> io::Result<Option<LinkChange>> {
        loop {
            while let Some((len, next)) = split_message(&self.buf[self.pos..self.end]) {
                let msg = &self.buf[self.pos..self.pos + len];
                let event = parse_message(msg, self.ifindex);
                self.pos += next;
                match event {
                    Event::Change(change) => return Ok(Some(change)),
                    // The socket sends nothing but state requests for this
                    // interface, and the kernel sends errors only to the
                    // sender of the request that failed.
                    Event::Failed(libc::ENODEV) => return Ok(Some(LinkChange::removed())),
                    Event::Failed(errno) => return Err(io::Error::from_raw_os_error(errno)),
                    Event::Skip => {}
                }
            }
            // Whatever is left cannot be delimited: drop it.
            self.pos = 0;
            self.end = 0;
            match self.recv() {
                Ok(len) if len <= self.buf.len() => self.end = len,
                Ok(len) => {
                    // MSG_TRUNC: the datagram was cut and is gone.
                    self.resync = true;
                    self.resyncs += 1;
                    if len > MAX_RECV_BUF_LEN {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("netlink datagram of {len} bytes, above the 1 MiB limit"),
                        ));
                    }
                    self.buf.resize(len.next_power_of_two(), 0);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.resync = true;
                    self.resyncs += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.resync {
                        return Ok(None);
                    }
                    // The queue is empty, so the kernel delivers again
                    // (an overflowed socket gets nothing until drained).
                    self.request_state()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `RTM_GETLINK` for the watched interface. The kernel answers
    /// within the call: the reply (the link message, or `NLMSG_ERROR`) is
    /// queued on the socket before this returns, unless the queue filled up
    /// again meanwhile, and then the kernel reports a new overflow. Clears
    /// the resync flag once sent.
    fn request_state(&mut self) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let req = getlink_request(self.ifindex, self.seq);
        let kernel = sockaddr_nl(0);
        retry_eintr(|| {
            // SAFETY: `req` and `kernel` are live locals of the lengths
            // passed; sendto only reads them.
            cvt_size(unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    req.as_ptr().cast(),
                    req.len(),
                    libc::MSG_DONTWAIT,
                    (&kernel as *const libc::sockaddr_nl).cast(),
                    mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            })
        })?;
        self.resync = false;
        Ok(())
    }

    /// Receives one datagram from the kernel into the buffer and returns
    /// its full length, which exceeds the buffer when it was truncated.
    /// Datagrams from other senders are dropped.
    fn recv(&mut self) -> io::Result<usize> {
        loop {
            let mut from = sockaddr_nl(0);
            let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            let len = retry_eintr(|| {
                // SAFETY: the buffer pointer and length describe the live,
                // exclusively borrowed receive buffer; `from` and
                // `from_len` are live locals, the length the size of
                // `from`. The kernel writes no more than those lengths.
                cvt_size(unsafe {
                    libc::recvfrom(
                        self.fd.as_raw_fd(),
                        self.buf.as_mut_ptr().cast(),
                        self.buf.len(),
                        libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                        (&mut from as *mut libc::sockaddr_nl).cast(),
                        &mut from_len,
                    )
                })
            })?;
            let full = from_len as usize >= mem::size_of::<libc::sockaddr_nl>();
            if full && from.nl_family == libc::AF_NETLINK as libc::sa_family_t && from.nl_pid == 0 {
                return Ok(len);
            }
        }
    }
}

impl AsFd for LinkWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A link message of type `ty` and family `family` about `index`, with
    /// `flags` and the attributes `attrs` (type, payload), padded as the
    /// kernel pads them.
    fn link_msg(ty: u16, family: u8, index: u32, flags: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
        m[field::NLMSG_TYPE].copy_from_slice(&ty.to_ne_bytes());
        m[field::IFI_FAMILY] = family;
        m[field::IFI_TYPE].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
        m[field::IFI_INDEX].copy_from_slice(&index.to_ne_bytes());
        m[field::IFI_FLAGS].copy_from_slice(&flags.to_ne_bytes());
        for (aty, payload) in attrs {
            let len = RTA_HDRLEN + payload.len();
            m.extend_from_slice(&(len as u16).to_ne_bytes());
            m.extend_from_slice(&aty.to_ne_bytes());
            m.extend_from_slice(payload);
            m.resize(align(m.len()), 0);
        }
        let len = m.len() as u32;
        m[field::NLMSG_LEN].copy_from_slice(&len.to_ne_bytes());
        m
    }

    fn error_msg(errno: i32, seq: u32) -> Vec<u8> {
        // nlmsgerr: the error and the header of the failed request.
        let mut m = vec![0u8; NLMSG_HDRLEN + 4 + NLMSG_HDRLEN];
        let len = m.len() as u32;
        m[field::NLMSG_LEN].copy_from_slice(&len.to_ne_bytes());
        m[field::NLMSG_TYPE].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[field::NLMSG_SEQ].copy_from_slice(&seq.to_ne_bytes());
        m[field::ERROR_CODE].copy_from_slice(&(-errno).to_ne_bytes());
        m
    }

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
    /// An attribute the parser does not read, with a length that needs
    /// padding.
    const IFNAME: (u16, &[u8]) = (3, b"veth0\0");

    fn events(datagram: &[u8], ifindex: u32) -> Vec<Event> {
        let mut out = Vec::new();
        let mut rest = datagram;
        while let Some((len, next)) = split_message(rest) {
            out.push(parse_message(&rest[..len], ifindex));
            rest = &rest[next..];
        }
        out
    }

    #[test]
    fn newlink_reports_mtu_address_and_up() {
        let mtu = 9000u32.to_ne_bytes();
        let m = link_msg(
            RTM_NEWLINK,
            AF_UNSPEC,
            7,
            IFF_UP | 0x40,
            &[IFNAME, (IFLA_MTU, &mtu), (IFLA_ADDRESS, &MAC)],
        );
        assert_eq!(
            events(&m, 7),
            [Event::Change(LinkChange {
                mtu: Some(9000),
                address: Some(MAC),
                up: Some(true),
                removed: false,
            })]
        );
    }

    #[test]
    fn no_mac_address_but_of_an_ethernet_device() {
        let mtu = 1500u32.to_ne_bytes();
        let down = Event::Change(LinkChange {
            mtu: Some(1500),
            address: None,
            up: Some(false),
            removed: false,
        });
        // A 4-byte address is not a MAC address.
        let short = link_msg(
            RTM_NEWLINK,
            AF_UNSPEC,
            7,
            0,
            &[(IFLA_MTU, &mtu), (IFLA_ADDRESS, &[10, 0, 0, 1])],
        );
        assert_eq!(events(&short, 7), [down]);
        // Loopback (ARPHRD_LOOPBACK 772) has six zero bytes.
        let mut lo = link_msg(
            RTM_NEWLINK,
            AF_UNSPEC,
            7,
            0,
            &[(IFLA_MTU, &mtu), (IFLA_ADDRESS, &[0; 6])],
        );
        lo[field::IFI_TYPE].copy_from_slice(&772u16.to_ne_bytes());
        assert_eq!(events(&lo, 7), [down]);
    }

    #[test]
    fn other_interfaces_and_bridge_messages_are_skipped() {
        let mtu = 9000u32.to_ne_bytes();
        let other = link_msg(RTM_NEWLINK, AF_UNSPEC, 8, IFF_UP, &[(IFLA_MTU, &mtu)]);
        assert_eq!(events(&other, 7), [Event::Skip]);
        // A port leaving its bridge: AF_BRIDGE (7) DELLINK, device alive.
        let bridge = link_msg(RTM_DELLINK, 7, 7, IFF_UP, &[(IFLA_MTU, &mtu)]);
        assert_eq!(events(&bridge, 7), [Event::Skip]);
    }

    #[test]
    fn dellink_is_a_removal() {
        let m = link_msg(RTM_DELLINK, AF_UNSPEC, 7, 0, &[IFNAME]);
        assert_eq!(
            events(&m, 7),
            [Event::Change(LinkChange {
                mtu: None,
                address: None,
                up: Some(false),
                removed: true,
            })]
        );
    }

    #[test]
    fn errors_acks_and_done() {
        let mut done = error_msg(0, 1);
        done[field::NLMSG_TYPE].copy_from_slice(&3u16.to_ne_bytes());
        assert_eq!(
            events(&error_msg(libc::ENODEV, 1), 7),
            [Event::Failed(libc::ENODEV)]
        );
        assert_eq!(events(&error_msg(0, 1), 7), [Event::Skip]);
        assert_eq!(events(&done, 7), [Event::Skip]);
        // An error message too short to hold the code.
        assert_eq!(events(&error_msg(libc::EPERM, 1)[..NLMSG_HDRLEN], 7), []);
        let mut short = error_msg(libc::EPERM, 1);
        short.truncate(NLMSG_HDRLEN + 2);
        let len = short.len() as u32;
        short[field::NLMSG_LEN].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(events(&short, 7), [Event::Skip]);
    }

    #[test]
    fn several_messages_in_one_datagram() {
        let mtu = 1400u32.to_ne_bytes();
        let mut d = link_msg(RTM_NEWLINK, AF_UNSPEC, 8, 0, &[IFNAME]);
        d.extend(link_msg(
            RTM_NEWLINK,
            AF_UNSPEC,
            7,
            IFF_UP,
            &[(IFLA_MTU, &mtu)],
        ));
        d.extend(link_msg(RTM_DELLINK, AF_UNSPEC, 7, 0, &[]));
        let got = events(&d, 7);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Event::Skip);
        assert!(matches!(got[1], Event::Change(c) if c.mtu == Some(1400) && !c.removed));
        assert!(matches!(got[2], Event::Change(c) if c.removed));
    }

    #[test]
    fn truncated_and_malformed_messages_are_skipped() {
        let mtu = 9000u32.to_ne_bytes();
        let m = link_msg(
            RTM_NEWLINK,
            AF_UNSPEC,
            7,
            IFF_UP,
            &[IFNAME, (IFLA_MTU, &mtu), (IFLA_ADDRESS, &MAC)],
        );
        // Every cut of the datagram: the header's length no longer fits.
        for cut in 0..m.len() {
            assert_eq!(events(&m[..cut], 7), [], "cut at {cut}");
        }
        // The header shortened to end inside an attribute.
        for len in NLMSG_HDRLEN..m.len() {
            if align(len) == m.len() {
                // Only the padding of the last attribute is cut.
                continue;
            }
            let mut short = m.clone();
            short[field::NLMSG_LEN].copy_from_slice(&(len as u32).to_ne_bytes());
            let got = events(&short[..len], 7);
            assert!(
                got == [Event::Skip]
                    || matches!(got[..], [Event::Change(c)] if c.address.is_none()),
                "nlmsg_len {len}: {got:?}"
            );
        }
        // An attribute length below its header, and one past the message.
        for bad in [2u16, 3, 200] {
            let mut b = m.clone();
            let at = NLMSG_HDRLEN + IFINFOMSG_LEN;
            b[at..at + 2].copy_from_slice(&bad.to_ne_bytes());
            assert_eq!(events(&b, 7), [Event::Skip], "rta_len {bad}");
        }
        // An MTU attribute of the wrong size.
        let odd = link_msg(RTM_NEWLINK, AF_UNSPEC, 7, 0, &[(IFLA_MTU, &[1, 2])]);
        assert_eq!(events(&odd, 7), [Event::Skip]);
        // nlmsg_len below a header stops the walk instead of looping.
        let mut zero = m.clone();
        zero[field::NLMSG_LEN].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(events(&zero, 7), []);
    }

    #[test]
    fn getlink_request_layout() {
        let req = getlink_request(7, 42);
        assert_eq!(split_message(&req), Some((GETLINK_LEN, GETLINK_LEN)));
        assert_eq!(u16_at(&req, field::NLMSG_TYPE), Some(RTM_GETLINK));
        assert_eq!(u16_at(&req, field::NLMSG_FLAGS), Some(NLM_F_REQUEST));
        assert_eq!(u32_at(&req, field::NLMSG_SEQ), Some(42));
        assert_eq!(req[field::IFI_FAMILY], AF_UNSPEC);
        assert_eq!(u32_at(&req, field::IFI_INDEX), Some(7));
        assert_eq!(u32_at(&req, field::IFI_FLAGS), Some(0));
    }

    fn lo() -> (u32, u32) {
        let index = crate::netdev::if_index("lo").unwrap();
        (index, crate::netdev::if_mtu("lo").unwrap())
    }

    /// Needs no privilege: any process may read link announcements.
    #[test]
    fn first_change_is_the_current_state() {
        let (index, mtu) = lo();
        let mut watch = LinkWatch::new(index).unwrap();
        let first = watch.next_change().unwrap().expect("the state of lo");
        assert_eq!(
            (first.mtu, first.address, first.removed),
            (Some(mtu), None, false)
        );
        assert_eq!(watch.next_change().unwrap(), None);
        assert_eq!(watch.resyncs(), 0);
    }

    #[test]
    fn resync_reports_the_current_state_once_the_queue_is_empty() {
        let (index, mtu) = lo();
        let mut watch = LinkWatch::new(index).unwrap();
        // What an ENOBUFS leaves behind, the queue holding the initial
        // state: that is read first, the new state after it.
        watch.resync = true;
        assert_eq!(watch.next_change().unwrap().and_then(|c| c.mtu), Some(mtu));
        assert_eq!(watch.next_change().unwrap().and_then(|c| c.mtu), Some(mtu));
        assert_eq!(watch.next_change().unwrap(), None);
        assert!(!watch.resync);
    }

    #[test]
    fn a_truncated_datagram_grows_the_buffer_and_resyncs() {
        let (index, mtu) = lo();
        let mut watch = LinkWatch::new(index).unwrap();
        // Too small for the queued state of lo: MSG_TRUNC.
        watch.buf = vec![0; 64];
        let change = watch
            .next_change()
            .unwrap()
            .expect("the state, asked again");
        assert_eq!((change.mtu, change.removed), (Some(mtu), false));
        assert_eq!(watch.resyncs(), 1);
        assert!(watch.buf.len() > 64 && watch.buf.len().is_power_of_two());
        assert_eq!(watch.next_change().unwrap(), None);
    }

    #[test]
    fn missing_interface_is_a_removal() {
        let mut watch = LinkWatch::new(i32::MAX as u32).unwrap();
        assert_eq!(watch.next_change().unwrap(), Some(LinkChange::removed()));
        assert_eq!(watch.next_change().unwrap(), None);
        for bad in [0, u32::MAX] {
            assert_eq!(
                LinkWatch::new(bad).err().map(|e| e.kind()),
                Some(io::ErrorKind::InvalidInput)
            );
        }
    }

    #[test]
    fn the_socket_is_close_on_exec_and_non_blocking() {
        let watch = LinkWatch::new(lo().0).unwrap();
        let fd = watch.as_fd().as_raw_fd();
        // SAFETY: F_GETFD/F_GETFL on a descriptor the watch keeps open.
        let (fd_flags, fl_flags) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFD),
                libc::fcntl(fd, libc::F_GETFL),
            )
        };
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
        assert_ne!(fl_flags & libc::O_NONBLOCK, 0);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = events(&bytes, 7);
        }

        #[test]
        fn corrupted_messages_never_panic(
            at in 0usize..64,
            value in any::<u8>(),
            cut in 0usize..80,
        ) {
            let mtu = 9000u32.to_ne_bytes();
            let mut d = link_msg(RTM_NEWLINK, AF_UNSPEC, 7, IFF_UP,
                &[IFNAME, (IFLA_MTU, &mtu), (IFLA_ADDRESS, &MAC)]);
            d.extend(error_msg(libc::ENODEV, 1));
            let at = at % d.len();
            d[at] = value;
            d.truncate(d.len().saturating_sub(cut));
            let _ = events(&d, 7);
        }
    }
}
