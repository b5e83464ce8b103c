//! Scenario 4, the ceilings:
//!
//! - (a) a bare ACK-only TCP responder written directly on a TSO-enabled
//!   TUN with a virtio header: no stack, it answers the SYN (window
//!   scaling, a large window) and acknowledges what it reads, with
//!   hand-built packets. The most the descriptor path carries
//!   kernel→user.
//! - (b) kernel-to-kernel TCP over a veth pair between two namespaces.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use fdlink_gso::checksum;
use fdlink_sys::wait::{self, Interest};
use fdlink_tests::netns::Netns;

use crate::kernel::{self, Peer, Window, next_port};
use crate::measure::{Plan, Sample, Summary};
use crate::report::Row;
use crate::tcp::{self, KERNEL_ADDR, TcpFigures, USER_ADDR};

/// Virtio-net header length on the responder's TUN.
const VNET: usize = 10;
/// The responder's initial sequence number.
const ISN: u32 = 1000;
/// Window scale the responder announces: its 16-bit window times 2^14.
const WSCALE: u8 = 14;
/// Reads between two ACKs while the queue is not yet drained.
const ACK_EVERY: usize = 8;

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;
const ACK: u8 = 0x10;

/// `a < b` in sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// A virtio header (no offload) and an IPv4/TCP segment from the
/// responder to the kernel, checksums complete.
fn segment(dst_port: u16, src_port: u16, seq: u32, ack: u32, flags: u8, syn: bool) -> Vec<u8> {
    let opts: &[u8] = if syn {
        // MSS 1460, NOP, window scale.
        &[2, 4, 0x05, 0xb4, 1, 3, 3, WSCALE]
    } else {
        &[]
    };
    let tcp_len = 20 + opts.len();
    let total = 20 + tcp_len;
    let mut p = vec![0u8; VNET + total];
    let ip = &mut p[VNET..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&USER_ADDR);
    ip[16..20].copy_from_slice(&KERNEL_ADDR);
    let c = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut ip[20..];
    t[0..2].copy_from_slice(&src_port.to_be_bytes());
    t[2..4].copy_from_slice(&dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = ((tcp_len / 4) as u8) << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    t[20..].copy_from_slice(opts);
    let mut sum = checksum::pseudo_header_ipv4(USER_ADDR, KERNEL_ADDR, 6, tcp_len as u16);
    sum.add_bytes(t);
    let c = sum.finish();
    t[16..18].copy_from_slice(&c.to_be_bytes());
    p
}

/// The responder's view of the one connection.
#[derive(Debug, Default)]
struct Responder {
    port: u16,
    peer_port: Option<u16>,
    rcv_nxt: u32,
    delivered: u64,
    need_ack: bool,
}

impl Responder {
    /// Handles one read frame; returns a SYN-ACK to send, if any.
    fn handle(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let p = frame.get(VNET..)?;
        if p.len() < 40 || p[0] >> 4 != 4 || p[9] != 6 {
            return None;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let t = p.get(ihl..)?;
        if t.len() < 20 || u16::from_be_bytes([t[2], t[3]]) != self.port {
            return None;
        }
        let src = u16::from_be_bytes([t[0], t[1]]);
        let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        let doff = usize::from(t[12] >> 4) * 4;
        let flags = t[13];
        let len = t.len().checked_sub(doff)? as u32;
        if flags & SYN != 0 && flags & ACK == 0 {
            self.peer_port = Some(src);
            self.rcv_nxt = seq.wrapping_add(1);
            return Some(segment(src, self.port, ISN, self.rcv_nxt, SYN | ACK, true));
        }
        if self.peer_port != Some(src) {
            return None;
        }
        if flags & RST != 0 {
            self.peer_port = None;
            return None;
        }
        let end = seq.wrapping_add(len);
        if len > 0 && !seq_lt(self.rcv_nxt, seq) && seq_lt(self.rcv_nxt, end) {
            self.delivered += u64::from(end.wrapping_sub(self.rcv_nxt));
            self.rcv_nxt = end;
        }
        if flags & FIN != 0 && end == self.rcv_nxt {
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        }
        self.need_ack |= len > 0 || flags & FIN != 0;
        None
    }

    fn ack(&mut self, fd: BorrowedFd<'_>, flags: u8) -> io::Result<()> {
        self.need_ack = false;
        let Some(peer) = self.peer_port else {
            return Ok(());
        };
        let pkt = segment(
            peer,
            self.port,
            ISN.wrapping_add(1),
            self.rcv_nxt,
            flags,
            false,
        );
        fdlink_sys::io::write(fd, &pkt).map(drop)
    }
}

/// Runs the responder on `fd` until its window closes.
fn respond(fd: BorrowedFd<'_>, port: u16, plan: &Plan, peer: &Peer) -> Result<Sample, String> {
    fdlink_sys::fd::set_nonblocking(fd).map_err(|e| e.to_string())?;
    peer.ready.store(true, Ordering::Release);
    let mut r = Responder {
        port,
        ..Responder::default()
    };
    let mut buf = vec![0u8; VNET + 65536];
    let mut window = Window::new(plan);
    let io = |e: io::Error| format!("responder: {e}");
    loop {
        let mut reads = 0usize;
        loop {
            match fdlink_sys::io::read(fd, &mut buf) {
                Ok(n) => {
                    reads += 1;
                    if let Some(reply) = r.handle(&buf[..n]) {
                        fdlink_sys::io::write(fd, &reply).map_err(io)?;
                    }
                    if r.need_ack && reads.is_multiple_of(ACK_EVERY) {
                        r.ack(fd, ACK).map_err(io)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(io(e)),
            }
        }
        if r.need_ack {
            r.ack(fd, ACK).map_err(io)?;
        }
        if let Some(sample) = window.update(r.delivered)? {
            peer.stop.store(true, Ordering::Relaxed);
            r.ack(fd, RST | ACK).map_err(io)?;
            return Ok(sample);
        }
        wait::wait(fd, Interest::Read, None, Some(Duration::from_millis(10))).map_err(io)?;
    }
}

pub(crate) fn measure_ack_only(ns: &Netns, plan: &Plan) -> Result<Sample, String> {
    let peer = Peer::default();
    let port = next_port();
    thread::scope(|s| {
        let peer = &peer;
        let sender = s
            .spawn(move || ns.run(move || kernel::send(SocketAddr::from((USER_ADDR, port)), peer)));
        let result = ns
            .run(|| {
                let fd = tcp::open_tun(true).map_err(|e| format!("open TUN: {e}"))?;
                tcp::configure_tun(ns).map_err(|e| format!("configure TUN: {e}"))?;
                respond(fd.as_fd(), port, plan, peer)
            })
            .map_err(|e| format!("netns: {e}"))
            .and_then(|r| r);
        peer.stop.store(true, Ordering::Relaxed);
        let joined = sender.join().map_err(|_| "sender panicked".to_owned());
        let sample = result?;
        joined?
            .map_err(|e| format!("netns: {e}"))?
            .map_err(|e| format!("kernel sender: {e}"))?;
        Ok(sample)
    })
}

/// Two namespaces joined by the veth pair `vk1` (10.6.0.1) — `vk2`
/// (10.6.0.2).
pub(crate) fn veth_pair() -> Result<(Netns, Netns), String> {
    let e = |e: io::Error| format!("veth setup: {e}");
    let a = Netns::new("fdlb-va").map_err(e)?;
    let b = Netns::new("fdlb-vb").map_err(e)?;
    a.ip(&[
        "link",
        "add",
        "vk1",
        "type",
        "veth",
        "peer",
        "name",
        "vk2",
        "netns",
        b.name(),
    ])
    .map_err(e)?;
    a.addr("vk1", "10.6.0.1/24").map_err(e)?;
    b.addr("vk2", "10.6.0.2/24").map_err(e)?;
    a.link_up("vk1").map_err(e)?;
    b.link_up("vk2").map_err(e)?;
    Ok((a, b))
}

pub(crate) fn measure_veth(a: &Netns, b: &Netns, plan: &Plan) -> Result<Sample, String> {
    let peer = Peer::default();
    peer.ready.store(true, Ordering::Release);
    let port = next_port();
    let listener = b
        .run(|| TcpListener::bind(("0.0.0.0", port)))
        .and_then(|r| r)
        .map_err(|e| format!("listen: {e}"))?;
    thread::scope(|s| {
        let peer = &peer;
        let receiver = s.spawn(move || kernel::receive(listener, peer));
        let sender = s.spawn(move || {
            a.run(move || kernel::send(SocketAddr::from(([10, 6, 0, 2], port)), peer))
        });
        let mut window = Window::new(plan);
        let result = loop {
            match window.update(peer.bytes.load(Ordering::Relaxed)) {
                Ok(Some(sample)) => break Ok(sample),
                Ok(None) => thread::sleep(Duration::from_millis(1)),
                Err(e) => break Err(e),
            }
        };
        peer.stop.store(true, Ordering::Relaxed);
        let sent = sender.join().map_err(|_| "sender panicked".to_owned());
        let received = receiver.join().map_err(|_| "receiver panicked".to_owned());
        let sample = result?;
        sent?
            .map_err(|e| format!("netns: {e}"))?
            .map_err(|e| format!("kernel sender: {e}"))?;
        received?.map_err(|e| format!("kernel receiver: {e}"))?;
        Ok(sample)
    })
}

/// The rows of scenario 4. The ACK-only ceiling was measured interleaved
/// with the kernel→smoltcp runs and the veth ceiling with the
/// smoltcp→kernel runs (see [`crate::tcp::run`]), so each TCP figure is
/// compared with a ceiling measured under the same machine load.
pub fn rows(ack_only: Summary, veth: Summary, tcp: TcpFigures) -> Vec<Row> {
    vec![
        Row::measured(
            "ceilings",
            "ACK-only responder on TSO TUN, kernel→user",
            "Gbit/s",
            "kernel→kernel TCP over veth",
            ack_only,
            veth,
        ),
        Row::measured(
            "ceilings",
            "kernel→smoltcp fdlink offload vs ACK-only",
            "Gbit/s",
            "ACK-only responder",
            tcp.in_offload,
            ack_only,
        ),
        Row::measured(
            "ceilings",
            "smoltcp→kernel fdlink offload vs veth",
            "Gbit/s",
            "kernel→kernel TCP over veth",
            tcp.out_offload,
            veth,
        ),
    ]
}
