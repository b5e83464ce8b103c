//! Scenario 3: TCP bulk transfer between the kernel and smoltcp over a TUN
//! in a namespace, both directions, with three devices under the same
//! smoltcp stack, socket buffers and poll loop:
//!
//! - fdlink with offload: `IFF_VNET_HDR`, `TUNSETOFFLOAD(CSUM|TSO4|TSO6)`,
//!   a 10-byte virtio header and [`FdlinkDevice`] with GSO;
//! - fdlink without offload: a plain TUN, GSO off;
//! - smoltcp's own `TunTapInterface` (the baseline).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use fdlink_core::{Endpoint, Options};
use fdlink_smoltcp::{DeviceConfig, FdlinkDevice};
use fdlink_sys::tun::{OffloadFlags, TunConfig, set_offload};
use fdlink_tests::netns::Netns;
use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::phy::{Device, Medium, TunTapInterface};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::ceiling;
use crate::kernel::{self, Peer, Window, next_port};
use crate::measure::{Plan, Sample, Summary, interleaved};
use crate::report::Row;

/// Receive and send buffer of the smoltcp socket, for every device.
pub const SOCKET_BUFFER: usize = 4 << 20;
/// The TUN's name inside the namespace.
pub const TUN: &str = "fdb0";
/// The kernel's address on the TUN.
pub const KERNEL_ADDR: [u8; 4] = [10, 7, 0, 1];
/// The userspace side's address.
pub const USER_ADDR: [u8; 4] = [10, 7, 0, 2];
/// Longest sleep of the poll loop.
const MAX_SLEEP: Duration = Duration::from_millis(10);

/// The device under the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// fdlink with virtio header, kernel offloads and GSO.
    Offload,
    /// fdlink on a plain TUN.
    Plain,
    /// smoltcp's `TunTapInterface`.
    TunTap,
    /// No stack: the ACK-only responder (ceiling, kernel→user only).
    AckOnly,
    /// No TUN: kernel-to-kernel TCP over veth (ceiling).
    Veth,
}

/// Which way the bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A kernel sender, smoltcp receives.
    KernelToSmoltcp,
    /// smoltcp sends, a kernel receiver.
    SmoltcpToKernel,
}

/// What the shared poll loop needs beyond `phy::Device`.
trait PollDevice: Device {
    /// Sends what transmit tokens queued.
    fn flush(&mut self);
    /// Sleeps until input may be ready or `timeout` passes.
    fn sleep(&mut self, timeout: Duration) -> io::Result<()>;
}

impl PollDevice for FdlinkDevice {
    fn flush(&mut self) {
        FdlinkDevice::flush(self);
    }
    fn sleep(&mut self, timeout: Duration) -> io::Result<()> {
        self.wait(Some(timeout))
            .map(drop)
            .map_err(|closed| io::Error::new(io::ErrorKind::BrokenPipe, closed))
    }
}

impl PollDevice for TunTapInterface {
    fn flush(&mut self) {}
    fn sleep(&mut self, timeout: Duration) -> io::Result<()> {
        let d = smoltcp::time::Duration::from_micros(timeout.as_micros() as u64);
        smoltcp::phy::wait(self.as_raw_fd(), Some(d))
    }
}

/// Creates a TUN (inside the calling thread's namespace) and returns its
/// descriptor; with `offload`, opened with a virtio header and the
/// kernel's checksum and TSO offloads on.
pub fn open_tun(offload: bool) -> io::Result<OwnedFd> {
    let dev = TunConfig::tun().name(TUN).vnet_hdr(offload).open()?;
    let fd = dev
        .into_fds()
        .pop()
        .ok_or_else(|| io::Error::other("TUN without a queue"))?;
    if offload {
        set_offload(
            fd.as_fd(),
            OffloadFlags::CSUM | OffloadFlags::TSO4 | OffloadFlags::TSO6,
        )?;
    }
    Ok(fd)
}

/// Gives the TUN the kernel's address and sets it up.
pub fn configure_tun(ns: &Netns) -> io::Result<()> {
    let [a, b, c, d] = KERNEL_ADDR;
    ns.addr(TUN, &format!("{a}.{b}.{c}.{d}/24"))?;
    ns.link_up(TUN)
}

fn ip(a: [u8; 4]) -> IpAddress {
    IpAddress::v4(a[0], a[1], a[2], a[3])
}

/// The same stack and poll loop for every device: poll, flush, move
/// application data, and when nothing happened sleep on the descriptor
/// until smoltcp's next deadline.
fn stack_loop<D: PollDevice>(
    dev: &mut D,
    dir: Direction,
    port: u16,
    plan: &Plan,
    peer: &Peer,
) -> Result<Sample, String> {
    let now = smoltcp::time::Instant::now;
    let mut iface = Interface::new(Config::new(HardwareAddress::Ip), dev, now());
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(ip(USER_ADDR), 24))
            .expect("one address fits")
    });
    let mut sockets = SocketSet::new(vec![]);
    let handle = sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    ));
    {
        let socket = sockets.get_mut::<tcp::Socket<'_>>(handle);
        match dir {
            Direction::KernelToSmoltcp => socket.listen(port).map_err(|e| e.to_string())?,
            Direction::SmoltcpToKernel => socket
                .connect(iface.context(), (ip(KERNEL_ADDR), port), port)
                .map_err(|e| e.to_string())?,
        }
    }
    peer.ready.store(true, Ordering::Release);
    let data = vec![0x5au8; 256 << 10];
    let mut received = 0u64;
    let mut window = Window::new(plan);
    loop {
        let changed = iface.poll(now(), dev, &mut sockets) == PollResult::SocketStateChanged;
        dev.flush();
        let socket = sockets.get_mut::<tcp::Socket<'_>>(handle);
        let mut progressed = false;
        match dir {
            Direction::KernelToSmoltcp => {
                while socket.can_recv() {
                    received += socket
                        .recv(|b| (b.len(), b.len() as u64))
                        .map_err(|e| e.to_string())?;
                    progressed = true;
                }
            }
            Direction::SmoltcpToKernel => {
                while socket.can_send() {
                    if socket.send_slice(&data).map_err(|e| e.to_string())? == 0 {
                        break;
                    }
                    progressed = true;
                }
            }
        }
        let bytes = match dir {
            Direction::KernelToSmoltcp => received,
            Direction::SmoltcpToKernel => peer.bytes.load(Ordering::Relaxed),
        };
        let state = socket.state();
        match window.update(bytes) {
            Ok(Some(sample)) => {
                // Stop the peer first: the reset must not look like an error.
                peer.stop.store(true, Ordering::Relaxed);
                socket.abort();
                iface.poll(now(), dev, &mut sockets);
                dev.flush();
                return Ok(sample);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("{e} (smoltcp socket {state})")),
        }
        if !changed && !progressed {
            let delay = iface
                .poll_delay(now(), &sockets)
                .map_or(MAX_SLEEP, |d| Duration::from_micros(d.total_micros()))
                .min(MAX_SLEEP);
            if !delay.is_zero() {
                dev.sleep(delay).map_err(|e| format!("wait: {e}"))?;
            }
        }
    }
}

/// Creates the device inside the namespace and runs the stack on it.
fn run_stack(
    ns: &Netns,
    link: Link,
    dir: Direction,
    port: u16,
    plan: &Plan,
    peer: &Peer,
) -> Result<Sample, String> {
    let e = |what: &'static str| move |e: io::Error| format!("{what}: {e}");
    ns.run(|| match link {
        Link::TunTap => {
            let mut dev = TunTapInterface::new(TUN, Medium::Ip).map_err(e("TunTapInterface"))?;
            configure_tun(ns).map_err(e("configure TUN"))?;
            stack_loop(&mut dev, dir, port, plan, peer)
        }
        Link::AckOnly | Link::Veth => Err("not a stack device".to_owned()),
        Link::Offload | Link::Plain => {
            let offload = link == Link::Offload;
            let fd = open_tun(offload).map_err(e("open TUN"))?;
            configure_tun(ns).map_err(e("configure TUN"))?;
            let options =
                Options::new()
                    .fd(fd)
                    .mtu(1500)
                    .vnet_header_len(if offload { 10 } else { 0 });
            let endpoint = Endpoint::new(options).map_err(|e| format!("endpoint: {e}"))?;
            let mut dev = FdlinkDevice::new(endpoint, DeviceConfig::default().gso(offload));
            stack_loop(&mut dev, dir, port, plan, peer)
        }
    })
    .map_err(|e| format!("netns: {e}"))?
}

/// One transfer: the kernel peer on one thread, the stack on another,
/// both in `ns`.
fn measure(
    ns: &Netns,
    veth: &(Netns, Netns),
    link: Link,
    dir: Direction,
    plan: &Plan,
) -> Result<Sample, String> {
    match link {
        Link::AckOnly => return ceiling::measure_ack_only(ns, plan),
        Link::Veth => return ceiling::measure_veth(&veth.0, &veth.1, plan),
        _ => {}
    }
    let peer = Peer::default();
    let port = next_port();
    let listener = match dir {
        Direction::SmoltcpToKernel => Some(
            ns.run(|| TcpListener::bind(("0.0.0.0", port)))
                .and_then(|r| r)
                .map_err(|e| format!("listen: {e}"))?,
        ),
        Direction::KernelToSmoltcp => None,
    };
    thread::scope(|s| {
        let peer = &peer;
        let kernel = s.spawn(move || {
            ns.run(move || match listener {
                Some(l) => kernel::receive(l, peer),
                None => {
                    let [a, b, c, d] = USER_ADDR;
                    kernel::send(SocketAddr::from(([a, b, c, d], port)), peer)
                }
            })
        });
        let result = run_stack(ns, link, dir, port, plan, peer);
        peer.stop.store(true, Ordering::Relaxed);
        let joined = kernel.join().map_err(|_| "kernel peer panicked".to_owned());
        let sample = result?;
        joined?
            .map_err(|e| format!("netns: {e}"))?
            .map_err(|e| format!("kernel peer: {e}"))?;
        Ok(sample)
    })
}

/// The medians of scenario 3 (and of the ceilings, which compare with them).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpFigures {
    /// kernel→smoltcp, fdlink with offload.
    pub in_offload: Summary,
    /// smoltcp→kernel, fdlink with offload.
    pub out_offload: Summary,
}

/// Scenarios 3 and 4, as root: each direction's devices interleaved
/// with its ceiling (ACK-only responder kernel→user, veth for
/// smoltcp→kernel). Returns the rows of both.
pub fn run(plan: &Plan, ns: &Netns) -> Result<Vec<Row>, String> {
    let veth = ceiling::veth_pair()?;
    let mut rows = Vec::new();
    let mut figures = TcpFigures::default();
    let mut ceilings = [Summary::default(); 2];
    for (k, (dir, label, ceiling)) in [
        (Direction::KernelToSmoltcp, "kernel→smoltcp", Link::AckOnly),
        (Direction::SmoltcpToKernel, "smoltcp→kernel", Link::Veth),
    ]
    .into_iter()
    .enumerate()
    {
        let links = [Link::TunTap, Link::Offload, Link::Plain, ceiling];
        let samples = interleaved(plan.runs, &links, |link| {
            measure(ns, &veth, link, dir, plan)
        })
        .map_err(|e| format!("{label}: {e}"))?;
        let tuntap = Summary::of(&samples[0]);
        let offload = Summary::of(&samples[1]);
        ceilings[k] = Summary::of(&samples[3]);
        match dir {
            Direction::KernelToSmoltcp => figures.in_offload = offload,
            Direction::SmoltcpToKernel => figures.out_offload = offload,
        }
        for (i, name) in [(1, "fdlink offload"), (2, "fdlink no offload")] {
            rows.push(Row::measured(
                "TCP over TUN",
                format!("{label} {name}"),
                "Gbit/s",
                "smoltcp TunTapInterface",
                Summary::of(&samples[i]),
                tuntap,
            ));
        }
    }
    rows.extend(ceiling::rows(ceilings[0], ceilings[1], figures));
    Ok(rows)
}
