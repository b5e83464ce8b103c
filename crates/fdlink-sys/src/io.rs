//! One-packet I/O: read/readv/write/writev and recvmsg/sendmsg.
//!
//! `EINTR` is retried here, so callers never see it; `EAGAIN` surfaces as
//! [`std::io::ErrorKind::WouldBlock`]. Socket writes use `MSG_NOSIGNAL`, so a
//! closed peer is an `EPIPE` error rather than a process-killing `SIGPIPE`.
//!
//! # Packet metadata
//!
//! [`recv_one_meta`] (and [`crate::mmsg::RecvMmsg::with_packet_meta`]) also
//! ask the kernel for the sender's address and the control messages, and
//! fill [`RecvInfo::checksum`] and [`RecvInfo::outgoing`] from what an
//! `AF_PACKET` socket puts there:
//!
//! - the packet type of the `sockaddr_ll` address: `PACKET_OUTGOING` for a
//!   frame this host transmitted on the interface;
//! - the `tpacket_auxdata` control message, sent only once `PACKET_AUXDATA`
//!   is on ([`crate::packet::set_auxdata`]): its status says whether the
//!   transport checksum is still partial (`TP_STATUS_CSUMNOTREADY`) or was
//!   verified (`TP_STATUS_CSUM_VALID`, Linux 4.1).
//!
//! Where neither is there (another socket family, `PACKET_AUXDATA` off, a
//! control message the buffer had no room for) the fields keep their
//! defaults: [`RxChecksum::Unknown`] and not outgoing. Control messages of
//! other kinds (timestamps, drop counters) are skipped.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::abi::{PACKET_AUXDATA, PACKET_OUTGOING, SOL_PACKET};
use crate::cvt_size;
pub use crate::meta::{RecvInfo, RxChecksum};

/// Bytes of control-message room per packet: a `tpacket_auxdata` takes 40
/// (`CMSG_SPACE(20)`), and the kernel puts the socket-level messages someone
/// may have enabled (timestamps, `SO_RXQ_OVFL`, `SO_MARK`; up to about 150
/// bytes together) before it, so they must not crowd it out.
const CONTROL_LEN: usize = 256;

/// `sizeof(struct tpacket_auxdata)`: `tp_status`, `tp_len`, `tp_snaplen`
/// (u32 each), then `tp_mac`, `tp_net`, `tp_vlan_tci`, `tp_vlan_tpid` (u16
/// each). Only `tp_status`, at offset 0, is read.
const TPACKET_AUXDATA_LEN: usize = 20;

/// A control-message buffer aligned for `struct cmsghdr`, as
/// `CMSG_FIRSTHDR`/`CMSG_NXTHDR` require.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct ControlBuf([u8; CONTROL_LEN]);

const _: () = assert!(mem::align_of::<ControlBuf>() >= mem::align_of::<libc::cmsghdr>());

/// The per-packet buffers a metadata receive hands the kernel: room for the
/// sender's `sockaddr_ll` and for the control messages. Plain bytes and
/// integers, reused from call to call; nothing points into them between
/// calls.
#[derive(Clone, Copy)]
pub(crate) struct MetaBufs {
    name: libc::sockaddr_ll,
    control: ControlBuf,
}

impl MetaBufs {
    /// Zeroed buffers.
    pub(crate) fn new() -> MetaBufs {
        MetaBufs {
            // SAFETY: sockaddr_ll is a struct of integers; all-zero is valid.
            name: unsafe { mem::zeroed() },
            control: ControlBuf([0; CONTROL_LEN]),
        }
    }

    /// Points `msg`'s name and control fields at these buffers, with their
    /// full sizes. Needed before every receive: the kernel overwrites both
    /// lengths with what it wrote.
    ///
    /// The pointers stay valid while `self` is neither moved nor dropped;
    /// the caller must not hand `msg` to the kernel after that.
    pub(crate) fn attach(&mut self, msg: &mut libc::msghdr) {
        msg.msg_name = (&mut self.name as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_control = self.control.0.as_mut_ptr().cast();
        // The field is size_t with glibc and socklen_t with musl.
        msg.msg_controllen = CONTROL_LEN as _;
    }

    /// The checksum state and the outgoing flag of the packet just received
    /// into these buffers, read with the lengths the kernel left in `msg`
    /// (only its length fields are used, never its pointers).
    pub(crate) fn parse(&self, msg: &libc::msghdr) -> (RxChecksum, bool) {
        #[allow(
            clippy::unnecessary_cast,
            reason = "msg_controllen is size_t with glibc, socklen_t with musl"
        )]
        let control_len = msg.msg_controllen as usize;
        (
            parse_checksum(&self.control, control_len),
            is_outgoing(&self.name, msg.msg_namelen as usize),
        )
    }
}

/// Whether the address the kernel wrote (`namelen` bytes of it, as it
/// reports them) is an `AF_PACKET` address of packet type
/// `PACKET_OUTGOING`.
///
/// The kernel reports the address's full length, which can exceed the
/// buffer (`sll_addr` grows past 8 bytes for some link types) or be zero
/// (no address: another socket family); the fields read here come first, so
/// only a length that covers them counts.
fn is_outgoing(name: &libc::sockaddr_ll, namelen: usize) -> bool {
    namelen > mem::offset_of!(libc::sockaddr_ll, sll_pkttype)
        && name.sll_family == libc::AF_PACKET as libc::c_ushort
        && name.sll_pkttype == PACKET_OUTGOING
}

/// The checksum state in the `tpacket_auxdata` message among the first
/// `len` bytes of `control` (the `msg_controllen` the kernel returned);
/// [`RxChecksum::Unknown`] when there is none.
///
/// Walks the messages with `CMSG_FIRSTHDR`/`CMSG_NXTHDR` over a `msghdr`
/// that describes only `control`, with `len` clamped to its size. Those
/// macros check that each header lies inside the buffer; each message's
/// `cmsg_len` is checked here against the bytes left before its payload is
/// read, and a message that claims more than that (one the kernel cut short,
/// `MSG_CTRUNC`, or garbage) ends the walk. Unknown messages are skipped.
fn parse_checksum(control: &ControlBuf, len: usize) -> RxChecksum {
    let len = len.min(CONTROL_LEN);
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    // The CMSG_* helpers only read through this pointer; the cast to *mut
    // is what the msghdr field type demands.
    msg.msg_control = control.0.as_ptr().cast_mut().cast();
    msg.msg_controllen = len as _;
    let start = control.0.as_ptr() as usize;
    let header_len = cmsg_len(0);
    let mut checksum = RxChecksum::Unknown;

    // SAFETY: CMSG_FIRSTHDR only reads the fields of `msg`, a live local; it
    // returns null or `msg_control` when `len` holds a whole header.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // FIRSTHDR/NXTHDR return a header that lies wholly inside the first
        // `len` bytes of `control`, so `offset + size_of::<cmsghdr>() <= len`.
        let offset = cmsg as usize - start;
        // SAFETY: as just said, the header's bytes are inside `control`,
        // which `&control` keeps alive and unchanged; any bytes are a valid
        // cmsghdr (integers). read_unaligned needs no alignment.
        let hdr = unsafe { cmsg.read_unaligned() };
        let msg_len = hdr.cmsg_len as usize;
        if msg_len < header_len || msg_len > len - offset {
            break;
        }
        if hdr.cmsg_level == SOL_PACKET
            && hdr.cmsg_type == PACKET_AUXDATA
            && msg_len >= cmsg_len(TPACKET_AUXDATA_LEN)
        {
            // SAFETY: CMSG_DATA is the header's address plus the aligned
            // header size; the check above puts `msg_len` bytes from the
            // header, which cover the 20-byte payload, inside `control`. The
            // u32 `tp_status` is read unaligned; any bits are valid.
            let status = unsafe { libc::CMSG_DATA(cmsg).cast::<u32>().read_unaligned() };
            checksum = RxChecksum::from_tp_status(status);
        }
        // SAFETY: NXTHDR reads `msg` and this header's `cmsg_len` (inside
        // `control`, checked above) and returns null or the next header
        // when its bytes fit within `msg_control + len`. `control` is
        // 8-byte aligned and NXTHDR steps by CMSG_ALIGN, so the header it
        // dereferences is aligned for cmsghdr.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    checksum
}

/// `CMSG_LEN(payload)`: a control message's length with `payload` bytes.
fn cmsg_len(payload: usize) -> usize {
    // SAFETY: CMSG_LEN is arithmetic on its argument only (an unsafe fn in
    // libc for no memory reason).
    unsafe { libc::CMSG_LEN(payload as libc::c_uint) as usize }
}

/// Calls `f` until it fails with something other than `EINTR`.
pub(crate) fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `read(2)`: one packet from a TUN/TAP queue or a packet socket.
///
/// A TUN queue silently truncates a packet larger than the buffer; callers
/// that must detect that pass a buffer one byte larger than the largest
/// packet they accept and treat a full buffer as truncation.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry_eintr(|| {
        // SAFETY: buf is a live, writable slice of buf.len() bytes.
        cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    })
}

/// `readv(2)`: one packet scattered over several buffers.
pub fn readv(fd: BorrowedFd<'_>, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    let count = bufs.len().min(libc::c_int::MAX as usize) as libc::c_int;
    retry_eintr(|| {
        // SAFETY: IoSliceMut is ABI-compatible with `struct iovec` on Unix
        // and every slice is live and writable for the call.
        cvt_size(unsafe { libc::readv(fd.as_raw_fd(), bufs.as_ptr().cast(), count) })
    })
}

/// `write(2)`: one packet.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry_eintr(|| {
        // SAFETY: buf is a live slice of buf.len() bytes.
        cvt_size(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
    })
}

/// `writev(2)`: one packet gathered from several buffers (for example a
/// virtio header, a link header and a payload).
pub fn writev(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let count = bufs.len().min(libc::c_int::MAX as usize) as libc::c_int;
    retry_eintr(|| {
        // SAFETY: IoSlice is ABI-compatible with `struct iovec` on Unix and
        // every slice is live for the call.
        cvt_size(unsafe { libc::writev(fd.as_raw_fd(), bufs.as_ptr().cast(), count) })
    })
}

/// The length of the next queued datagram, without taking it (`recv` with
/// `MSG_PEEK | MSG_TRUNC` into no buffer). 0 is end of file on a
/// `SOCK_SEQPACKET` socket whose peer closed with nothing left queued (or
/// an empty datagram); `WouldBlock` when nothing is queued.
pub fn peek_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    retry_eintr(|| {
        // SAFETY: a zero-length buffer: the kernel writes nothing, and the
        // dangling (non-null) pointer is never dereferenced.
        cvt_size(unsafe {
            libc::recv(
                fd.as_raw_fd(),
                std::ptr::NonNull::<u8>::dangling().as_ptr().cast(),
                0,
                libc::MSG_PEEK | libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        })
    })
}

/// `recvmsg(2)` of one datagram with `MSG_TRUNC`, so truncation is reported
/// instead of silently cutting the packet. No metadata is read: the
/// returned [`RecvInfo::checksum`] and [`RecvInfo::outgoing`] are the
/// defaults (see [`recv_one_meta`]).
pub fn recv_one(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<RecvInfo> {
    recv_msg(fd, buf, None)
}

/// [`recv_one`] that also reads the packet's metadata: the packet type of
/// the sender's address and the `tpacket_auxdata` control message, into
/// [`RecvInfo::outgoing`] and [`RecvInfo::checksum`] (see the module docs).
///
/// Meant for `AF_PACKET` sockets, with `PACKET_AUXDATA` on for the
/// checksum state; on any other socket it works like [`recv_one`].
///
/// Errors: as [`recv_one`] (`WouldBlock` when nothing is queued).
pub fn recv_one_meta(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<RecvInfo> {
    let mut meta = MetaBufs::new();
    recv_msg(fd, buf, Some(&mut meta))
}

/// One `recvmsg` into `buf`, with the metadata buffers `meta` if given.
fn recv_msg(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    mut meta: Option<&mut MetaBufs>,
) -> io::Result<RecvInfo> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    retry_eintr(|| {
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(meta) = meta.as_deref_mut() {
            meta.attach(&mut msg);
        }
        // SAFETY: msg points at one iovec that describes the live buffer
        // and, with `meta`, at its name and control buffers (exclusively
        // borrowed for this call) with their sizes; the kernel writes no
        // more than those sizes.
        let len = cvt_size(unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &mut msg,
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        })?;
        let info = RecvInfo::new(len, msg.msg_flags & libc::MSG_TRUNC != 0 || len > buf.len());
        Ok(match meta.as_deref() {
            Some(meta) => {
                let (checksum, outgoing) = meta.parse(&msg);
                info.with_checksum(checksum).with_outgoing(outgoing)
            }
            None => info,
        })
    })
}

/// `sendmsg(2)` of one datagram gathered from several buffers, with
/// `MSG_NOSIGNAL`.
pub fn send_one(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    retry_eintr(|| {
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len();
        // SAFETY: IoSlice is ABI-compatible with iovec; sendmsg only reads
        // through the pointers, which are live for the call.
        cvt_size(unsafe {
            libc::sendmsg(
                fd.as_raw_fd(),
                &msg,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{TP_STATUS_CSUM_VALID, TP_STATUS_CSUMNOTREADY};
    use crate::fd::{SocketType, socketpair};
    use std::os::fd::AsFd;

    #[test]
    fn peek_len_tells_what_is_queued_without_taking_it() {
        let (a, b) = socketpair(SocketType::SeqPacket).unwrap();
        crate::fd::set_nonblocking(a.as_fd()).unwrap();
        assert_eq!(
            peek_len(a.as_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        send_one(b.as_fd(), &[IoSlice::new(&[7u8; 300])]).unwrap();
        drop(b);
        assert_eq!(peek_len(a.as_fd()).unwrap(), 300, "the next datagram");
        assert_eq!(peek_len(a.as_fd()).unwrap(), 300, "still queued");
        let mut buf = [0u8; 400];
        assert_eq!(recv_one(a.as_fd(), &mut buf).unwrap().len, 300);
        assert_eq!(peek_len(a.as_fd()).unwrap(), 0, "end of file");
    }

    #[test]
    fn recv_one_reports_truncation_and_real_length() {
        let (a, b) = socketpair(SocketType::SeqPacket).unwrap();
        send_one(b.as_fd(), &[IoSlice::new(&[7u8; 100])]).unwrap();
        let mut buf = [0u8; 40];
        let info = recv_one(a.as_fd(), &mut buf).unwrap();
        assert_eq!(info, RecvInfo::new(100, true));
        assert_eq!(buf, [7u8; 40]);
    }

    #[test]
    fn gathered_write_arrives_as_one_packet() {
        let (a, b) = socketpair(SocketType::Datagram).unwrap();
        writev(b.as_fd(), &[IoSlice::new(b"head"), IoSlice::new(b"-body")]).unwrap();
        let mut head = [0u8; 3];
        let mut rest = [0u8; 16];
        let n = readv(
            a.as_fd(),
            &mut [IoSliceMut::new(&mut head), IoSliceMut::new(&mut rest)],
        )
        .unwrap();
        assert_eq!(n, 9);
        assert_eq!(&head, b"hea");
        assert_eq!(&rest[..6], b"d-body");
    }

    #[test]
    fn recv_info_defaults_carry_no_metadata() {
        let info = RecvInfo::new(60, false);
        assert_eq!((info.checksum, info.outgoing), (RxChecksum::Unknown, false));
        assert_eq!(RecvInfo::default(), RecvInfo::new(0, false));
        let info = info.with_checksum(RxChecksum::Partial).with_outgoing(true);
        assert_eq!(
            (info.len, info.checksum, info.outgoing),
            (60, RxChecksum::Partial, true)
        );
    }

    /// Writes a control message at byte `at` of `buf`: a header claiming
    /// `claimed_len` bytes (`CMSG_LEN(payload.len())` when `None`), then
    /// `payload`. Returns where the next message starts (`CMSG_SPACE`).
    fn put_cmsg(
        buf: &mut ControlBuf,
        at: usize,
        level: libc::c_int,
        ty: libc::c_int,
        payload: &[u8],
        claimed_len: Option<usize>,
    ) -> usize {
        let header_len = cmsg_len(0);
        assert!(
            at + header_len + payload.len() <= CONTROL_LEN,
            "test message too long"
        );
        // SAFETY: a cmsghdr is integers (and padding on musl); all-zero is
        // valid.
        let mut hdr: libc::cmsghdr = unsafe { mem::zeroed() };
        hdr.cmsg_len = claimed_len.unwrap_or(cmsg_len(payload.len())) as _;
        hdr.cmsg_level = level;
        hdr.cmsg_type = ty;
        // SAFETY: the assert above keeps the header's bytes inside `buf`;
        // write_unaligned needs no alignment.
        unsafe {
            buf.0
                .as_mut_ptr()
                .add(at)
                .cast::<libc::cmsghdr>()
                .write_unaligned(hdr);
        }
        buf.0[at + header_len..at + header_len + payload.len()].copy_from_slice(payload);
        // SAFETY: CMSG_SPACE is arithmetic on its argument only.
        at + unsafe { libc::CMSG_SPACE(payload.len() as libc::c_uint) } as usize
    }

    /// A `tpacket_auxdata` payload with status `status`.
    fn auxdata(status: u32) -> [u8; TPACKET_AUXDATA_LEN] {
        let mut aux = [0u8; TPACKET_AUXDATA_LEN];
        aux[..4].copy_from_slice(&status.to_ne_bytes());
        // tp_len, tp_snaplen: 60; tp_mac 0, tp_net 14.
        aux[4..8].copy_from_slice(&60u32.to_ne_bytes());
        aux[8..12].copy_from_slice(&60u32.to_ne_bytes());
        aux[14..16].copy_from_slice(&14u16.to_ne_bytes());
        aux
    }

    fn empty_control() -> ControlBuf {
        ControlBuf([0; CONTROL_LEN])
    }

    #[test]
    fn auxdata_message_gives_the_checksum_state() {
        for (status, want) in [
            (1, RxChecksum::Unknown),
            (1 | TP_STATUS_CSUMNOTREADY, RxChecksum::Partial),
            (1 | TP_STATUS_CSUM_VALID, RxChecksum::Valid),
        ] {
            let mut buf = empty_control();
            let end = put_cmsg(
                &mut buf,
                0,
                SOL_PACKET,
                PACKET_AUXDATA,
                &auxdata(status),
                None,
            );
            assert_eq!(parse_checksum(&buf, end), want, "status {status:#x}");
        }
    }

    #[test]
    fn other_control_messages_are_skipped() {
        // A timestamp (SO_TIMESTAMPNS, 16 bytes) and a drop counter
        // (SO_RXQ_OVFL, 4 bytes) before the auxdata, as the kernel orders
        // them, and an unknown SOL_PACKET message after it.
        let mut buf = empty_control();
        let mut at = put_cmsg(
            &mut buf,
            0,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &[7; 16],
            None,
        );
        at = put_cmsg(
            &mut buf,
            at,
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            &[1, 0, 0, 0],
            None,
        );
        let aux = auxdata(1 | TP_STATUS_CSUMNOTREADY);
        at = put_cmsg(&mut buf, at, SOL_PACKET, PACKET_AUXDATA, &aux, None);
        let end = put_cmsg(&mut buf, at, SOL_PACKET, 99, &[0xff; 8], None);
        assert_eq!(parse_checksum(&buf, end), RxChecksum::Partial);
        // An auxdata-like message of another level is not auxdata.
        let mut buf = empty_control();
        let aux = auxdata(1 | TP_STATUS_CSUM_VALID);
        let end = put_cmsg(&mut buf, 0, libc::SOL_SOCKET, PACKET_AUXDATA, &aux, None);
        assert_eq!(parse_checksum(&buf, end), RxChecksum::Unknown);
    }

    #[test]
    fn short_or_cut_messages_are_not_read() {
        let aux = auxdata(1 | TP_STATUS_CSUMNOTREADY);
        // No control data at all, or less than a header.
        assert_eq!(parse_checksum(&empty_control(), 0), RxChecksum::Unknown);
        let mut buf = empty_control();
        let end = put_cmsg(&mut buf, 0, SOL_PACKET, PACKET_AUXDATA, &aux, None);
        assert_eq!(parse_checksum(&buf, cmsg_len(0) - 1), RxChecksum::Unknown);
        // Cut by the kernel (MSG_CTRUNC): the returned length ends inside
        // the payload, the header still claims all of it.
        assert_eq!(parse_checksum(&buf, end - 8), RxChecksum::Unknown);
        // The header says the payload is shorter than a tpacket_auxdata.
        let mut buf = empty_control();
        let end = put_cmsg(
            &mut buf,
            0,
            SOL_PACKET,
            PACKET_AUXDATA,
            &aux,
            Some(cmsg_len(4)),
        );
        assert_eq!(parse_checksum(&buf, end), RxChecksum::Unknown);
        // A header claiming less than itself ends the walk: the auxdata
        // behind it is not trusted.
        let mut buf = empty_control();
        let at = put_cmsg(&mut buf, 0, libc::SOL_SOCKET, 1, &[0; 8], Some(3));
        let end = put_cmsg(&mut buf, at, SOL_PACKET, PACKET_AUXDATA, &aux, None);
        assert_eq!(parse_checksum(&buf, end), RxChecksum::Unknown);
        // A length beyond the buffer is clamped to it.
        let mut buf = empty_control();
        put_cmsg(&mut buf, 0, SOL_PACKET, PACKET_AUXDATA, &aux, None);
        assert_eq!(parse_checksum(&buf, usize::MAX), RxChecksum::Partial);
        // A header claiming more than the buffer holds is not read past it.
        let mut buf = empty_control();
        put_cmsg(
            &mut buf,
            0,
            SOL_PACKET,
            PACKET_AUXDATA,
            &aux,
            Some(CONTROL_LEN + 1),
        );
        assert_eq!(parse_checksum(&buf, CONTROL_LEN), RxChecksum::Unknown);
    }

    #[test]
    fn arbitrary_control_bytes_never_panic() {
        // xorshift64*: random buffers and lengths, with the first header
        // often plausible so the walk goes past it.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for round in 0..20_000 {
            let mut buf = empty_control();
            for b in buf.0.iter_mut() {
                *b = next() as u8;
            }
            if round % 2 == 0 {
                let claimed = (next() % 64) as usize;
                put_cmsg(
                    &mut buf,
                    0,
                    SOL_PACKET,
                    PACKET_AUXDATA,
                    &[0; 0],
                    Some(claimed),
                );
            }
            let len = (next() % (CONTROL_LEN as u64 + 16)) as usize;
            let _ = parse_checksum(&buf, len);
        }
    }

    #[test]
    fn outgoing_needs_a_packet_address_that_says_so() {
        // SAFETY: sockaddr_ll is integers; all-zero is valid.
        let mut name: libc::sockaddr_ll = unsafe { mem::zeroed() };
        name.sll_family = libc::AF_PACKET as libc::c_ushort;
        name.sll_pkttype = PACKET_OUTGOING;
        let full = mem::size_of::<libc::sockaddr_ll>();
        assert!(is_outgoing(&name, full));
        assert!(is_outgoing(&name, 18), "Ethernet: sll_addr holds 6 bytes");
        assert!(is_outgoing(&name, 40), "longer than the buffer");
        // No address written this time: stale bytes do not count.
        assert!(!is_outgoing(&name, 0));
        assert!(!is_outgoing(
            &name,
            mem::offset_of!(libc::sockaddr_ll, sll_pkttype)
        ));
        name.sll_pkttype = 0; // PACKET_HOST
        assert!(!is_outgoing(&name, full));
        name.sll_pkttype = PACKET_OUTGOING;
        name.sll_family = libc::AF_UNIX as libc::c_ushort;
        assert!(!is_outgoing(&name, full));
    }

    #[test]
    fn metadata_receive_on_another_socket_reads_as_none() {
        // SO_PASSCRED makes the kernel attach an SCM_CREDENTIALS message to
        // each datagram: a real control message of another kind, skipped.
        let (a, b) = socketpair(SocketType::Datagram).unwrap();
        crate::fd::setsockopt_int(a.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1).unwrap();
        send_one(b.as_fd(), &[IoSlice::new(&[3u8; 100])]).unwrap();
        send_one(b.as_fd(), &[IoSlice::new(&[4u8; 10])]).unwrap();
        let mut buf = [0u8; 40];
        assert_eq!(
            recv_one_meta(a.as_fd(), &mut buf).unwrap(),
            RecvInfo::new(100, true)
        );
        assert_eq!(
            recv_one_meta(a.as_fd(), &mut buf).unwrap(),
            RecvInfo::new(10, false)
        );
        assert_eq!(&buf[..10], &[4u8; 10]);
        let err = recv_one_meta(a.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn send_to_closed_seqpacket_peer_is_epipe_not_sigpipe() {
        let (a, b) = socketpair(SocketType::SeqPacket).unwrap();
        drop(b);
        let err = send_one(a.as_fd(), &[IoSlice::new(b"x")]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }
}
