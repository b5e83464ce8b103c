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

use fdlink_gso::wire::tcp::flags;
use fdlink_sys::wait::{self, Interest};
use fdlink_tests::netns::Netns;
use fdlink_tests::tcp_peer::{Handled, TcpPeer, TcpPeerConfig};

use crate::kernel::{self, Peer, Window, next_port};
use crate::measure::{Plan, Sample, Summary};
use crate::report::Row;
use crate::tcp::{self, KERNEL_ADDR, TcpFigures, USER_ADDR};

/// Virtio-net header length on the responder's TUN.
const VNET: usize = 10;
/// Window scale the responder announces: its 16-bit window times 2^14.
const WSCALE: u8 = 14;
/// Reads between two ACKs while the queue is not yet drained.
const ACK_EVERY: usize = 8;

/// The responder: a [`TcpPeer`] for the kernel's connection to `port`,
/// with a large window and an ACK every [`ACK_EVERY`] reads, its packets
/// built behind a zero (no offload) virtio header.
fn responder(port: u16) -> TcpPeer {
    TcpPeer::new(TcpPeerConfig {
        isn: 1000,
        mss: 1460,
        wscale: WSCALE,
        window: 0xffff,
        headroom: VNET,
        ack_every: ACK_EVERY,
        ..TcpPeerConfig::new(USER_ADDR.into(), KERNEL_ADDR.into(), port)
    })
}

/// Sends the responder's cumulative ACK (with `extra` flags), if it has a
/// connection.
fn ack(fd: BorrowedFd<'_>, r: &mut TcpPeer, extra: u8) -> io::Result<()> {
    match r.ack(extra) {
        Some(pkt) => fdlink_sys::io::write(fd, &pkt).map(drop),
        None => Ok(()),
    }
}

/// Runs the responder on `fd` until its window closes.
fn respond(fd: BorrowedFd<'_>, port: u16, plan: &Plan, peer: &Peer) -> Result<Sample, String> {
    fdlink_sys::fd::set_nonblocking(fd).map_err(|e| e.to_string())?;
    peer.ready.store(true, Ordering::Release);
    let mut r = responder(port);
    let mut buf = vec![0u8; VNET + 65536];
    let mut window = Window::new(plan);
    let io = |e: io::Error| format!("responder: {e}");
    loop {
        loop {
            match fdlink_sys::io::read(fd, &mut buf) {
                Ok(n) => {
                    let frame = buf.get(VNET..n).unwrap_or_default();
                    if r.handle(frame) == Handled::Syn {
                        fdlink_sys::io::write(fd, &r.syn_ack()).map_err(io)?;
                    }
                    if r.ack_due() {
                        ack(fd, &mut r, 0).map_err(io)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(io(e)),
            }
        }
        if r.needs_ack() {
            ack(fd, &mut r, 0).map_err(io)?;
        }
        if let Some(sample) = window.update(r.delivered())? {
            peer.stop.store(true, Ordering::Relaxed);
            ack(fd, &mut r, flags::RST).map_err(io)?;
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
