//! The TCP servers of the netstack scenarios, each on a TUN of its own in
//! the scenario's namespace: fdlink's netstack (std threads or tokio tasks,
//! offload on or off), fdlink's `echo` example engine (the raw smoltcp
//! device loop), and the peers — netstack-smoltcp fed by tun-rs with
//! offload, set up as its `forward-offload-linux` example does, and ipstack
//! on a plain TUN, set up as its `tun` example does. Every one echoes, or
//! only holds its connections (the memory scenario).
//!
//! The stacks that take any address get `ROUTED` routed into their TUN;
//! the echo engine has one address on the TUN's subnet.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use fdlink_core::{Link, Offload};
use fdlink_smoltcp::netstack::{Netstack, NetstackConfig};
use fdlink_smoltcp::{DeviceConfig, FdlinkDevice};
use fdlink_tests::netns::Netns;
use futures::{SinkExt, StreamExt};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpCidr};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The TUNs of the netstack scenarios are `fdn0`, `fdn1`, ...: a new name
/// per server, so that one whose runtime does not let go of its TUN
/// (ipstack 1.0.1's streams block in `Drop` while their runtime shuts
/// down) cannot take the next server's.
fn tun_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("fdn{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
/// The kernel's address on the TUN, with its prefix.
const KERNEL_CIDR: &str = "10.9.0.1/24";
/// The kernel's address on the TUN.
const KERNEL_ADDR: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
/// The echo engine's own address on the TUN's subnet.
const ENGINE_ADDR: [u8; 4] = [10, 9, 0, 2];
/// The port the echo engine listens on.
const ENGINE_PORT: u16 = 7;
/// Routed into the TUN for the any-address stacks.
const ROUTED: &str = "10.10.0.0/16";
/// The address the client connects to on an any-address stack.
const ROUTED_TARGET: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 7);
/// Bytes per read of every echo loop.
const ECHO_BUFFER: usize = 64 << 10;

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// fdlink's netstack, each connection on a std thread (or a tokio
    /// task), the TUN with offloads (or without).
    Netstack {
        /// Tokio tasks instead of std threads.
        tokio: bool,
        /// Virtio headers and the kernel's offloads, GSO.
        offload: bool,
    },
    /// fdlink's netstack on std threads with offload, its smoltcp buffer
    /// and stream ring each 1 MiB each way, as the echo engine's buffers.
    NetstackEngineBuffers,
    /// fdlink's `echo` example engine: one smoltcp interface over an
    /// [`FdlinkDevice`] with offload, eight listening sockets, data moved
    /// from each socket's receive to its send buffer.
    EchoEngine,
    /// netstack-smoltcp fed by tun-rs with offload.
    NetstackSmoltcp,
    /// ipstack on a plain TUN.
    Ipstack,
}

impl Stack {
    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Stack::Netstack {
                tokio: false,
                offload: true,
            } => "threads offload",
            Stack::Netstack {
                tokio: false,
                offload: false,
            } => "threads no offload",
            Stack::Netstack {
                tokio: true,
                offload: true,
            } => "tokio offload",
            Stack::Netstack {
                tokio: true,
                offload: false,
            } => "tokio no offload",
            Stack::NetstackEngineBuffers => "threads offload, 1 MiB buffers as the engine's",
            Stack::EchoEngine => "fdlink echo engine (raw smoltcp loop, offload)",
            Stack::NetstackSmoltcp => "netstack-smoltcp 0.2.4 + tun-rs offload",
            Stack::Ipstack => "ipstack 1.0.1, plain TUN",
        }
    }
}

/// What a server does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Echo it until the peer finishes, then finish too.
    Echo,
    /// Keep it open and idle.
    Hold,
}

/// Per-connection buffers of the memory scenario: each way, fdlink's
/// smoltcp buffer and stream ring, netstack-smoltcp's smoltcp buffer and
/// its own ring (which follows the same setting).
#[derive(Debug, Clone, Copy)]
pub struct Buffers(pub usize);

/// A running server; dropping it stops it and removes its TUN.
pub struct Running {
    /// Where the client connects: `port == 0` means any port.
    pub target: SocketAddr,
    /// Its TUN.
    pub tun: String,
    /// Echo loops still running.
    live: Arc<AtomicUsize>,
    /// Connections accepted (for netstack-smoltcp: announced, which it
    /// does at the SYN).
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    netstack: Option<Arc<Netstack>>,
    held: Arc<Mutex<Vec<Box<dyn Send>>>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Running {
    fn new(target: SocketAddr, tun: String) -> Running {
        Running {
            target,
            tun,
            live: Arc::new(AtomicUsize::new(0)),
            accepted: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            runtime: None,
            netstack: None,
            held: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The netstack's statistics, for a fdlink netstack.
    pub fn netstack_stats(&self) -> Option<String> {
        self.netstack.as_ref().map(|n| n.stats().to_string())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Let the echo loops see the client go while everything still
        // runs: a stream dropped by a runtime's shutdown may block there
        // (ipstack's).
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while self.live.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < until {
            thread::sleep(Duration::from_millis(2));
        }
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The last handle: the engines stop and the TUN goes.
        self.netstack.take();
    }
}

/// Starts `stack` on a new TUN in `ns`.
pub fn start(
    ns: &Netns,
    stack: Stack,
    serve: Serve,
    buffers: Option<Buffers>,
) -> Result<Running, String> {
    match stack {
        Stack::Netstack { tokio, offload } => start_netstack(ns, tokio, offload, serve, buffers),
        Stack::NetstackEngineBuffers => {
            start_netstack(ns, false, true, serve, Some(Buffers(ENGINE_BUFFER)))
        }
        Stack::EchoEngine => start_echo_engine(ns),
        Stack::NetstackSmoltcp => start_netstack_smoltcp(ns, serve, buffers),
        Stack::Ipstack => start_ipstack(ns),
    }
}

fn any_port_target() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ROUTED_TARGET), 0)
}

/// The kernel's side of the TUN: its address, up, and (for the
/// any-address stacks) the routed prefix.
fn configure(ns: &Netns, tun: &str, route: bool) -> Result<(), String> {
    let e = |e: io::Error| format!("configure {tun}: {e}");
    ns.addr(tun, KERNEL_CIDR).map_err(e)?;
    ns.link_up(tun).map_err(e)?;
    if route {
        ns.ip(&["route", "add", ROUTED, "dev", tun]).map_err(e)?;
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))
}

/// Counts a running echo loop for as long as it lives.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Ordering::Relaxed);
        Live(Arc::clone(count))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Echoes one connection with blocking reads and writes (the
/// `netstack_echo` example's loop).
fn echo_blocking(mut stream: fdlink_smoltcp::netstack::TcpStream, _live: Live) {
    let mut buf = vec![0u8; ECHO_BUFFER];
    loop {
        match Read::read(&mut stream, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if Write::write_all(&mut stream, &buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Echoes one connection in a tokio task: the same loop for every stack.
async fn echo_async<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, _live: Live) {
    let mut buf = vec![0u8; ECHO_BUFFER];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

fn start_netstack(
    ns: &Netns,
    tokio: bool,
    offload: bool,
    serve: Serve,
    buffers: Option<Buffers>,
) -> Result<Running, String> {
    let tun = tun_name();
    let link = Link::tun(&tun).offload(if offload { Offload::Auto } else { Offload::Off });
    let mut config = NetstackConfig::default().device(DeviceConfig::default().gso(offload));
    if let Some(Buffers(b)) = buffers {
        config = config.buffers(b, b);
    }
    let netstack = ns
        .run(|| Netstack::open(link, config))
        .map_err(|e| format!("netns: {e}"))?
        .map_err(|e| format!("netstack: {e}"))?;
    let netstack = Arc::new(netstack);
    configure(ns, &tun, true)?;
    let mut running = Running::new(any_port_target(), tun);
    running.netstack = Some(Arc::clone(&netstack));
    let accepted = Arc::clone(&running.accepted);
    let live = Arc::clone(&running.live);
    let held = Arc::clone(&running.held);
    if tokio {
        let rt = runtime()?;
        rt.spawn(async move {
            while let Ok(stream) = netstack.accept_async().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                match serve {
                    Serve::Echo => {
                        tokio::spawn(echo_async(stream, Live::new(&live)));
                    }
                    Serve::Hold => held
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Box::new(stream)),
                }
            }
        });
        running.runtime = Some(rt);
    } else {
        let stop = Arc::clone(&running.stop);
        running.threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match netstack.accept_timeout(Duration::from_millis(20)) {
                    Ok(Some(stream)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        match serve {
                            Serve::Echo => {
                                let live = Live::new(&live);
                                thread::spawn(move || echo_blocking(stream, live));
                            }
                            Serve::Hold => held
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(Box::new(stream)),
                        }
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }));
    }
    Ok(running)
}

/// Listening sockets kept ready by the echo engine (as the example).
const LISTEN_POOL: usize = 8;
/// The echo engine's TCP buffers (as the example).
const ENGINE_BUFFER: usize = 1 << 20;

fn engine_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; ENGINE_BUFFER]),
        tcp::SocketBuffer::new(vec![0; ENGINE_BUFFER]),
    );
    s.set_nagle_enabled(false);
    s
}

/// The `echo` example's serve loop, TCP only.
fn engine_loop(mut device: FdlinkDevice, stop: &AtomicBool) -> Result<(), String> {
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ip),
        &mut device,
        smoltcp::time::Instant::now(),
    );
    let [a, b, c, d] = ENGINE_ADDR;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(smoltcp::wire::IpAddress::v4(a, b, c, d), 24));
    });
    let mut sockets = SocketSet::new(vec![]);
    let mut tcp: Vec<SocketHandle> = Vec::new();
    let mut scratch = vec![0u8; 64 << 10];
    let closed = |c: fdlink_core::Closed| format!("the link closed: {}", c.0);
    while !stop.load(Ordering::Relaxed) {
        tcp.retain(|&h| {
            let closed = sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Closed;
            if closed {
                sockets.remove(h);
            }
            !closed
        });
        let listening = tcp
            .iter()
            .filter(|&&h| sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Listen)
            .count();
        for _ in listening..LISTEN_POOL {
            let mut s = engine_socket();
            s.listen(ENGINE_PORT).map_err(|e| format!("listen: {e}"))?;
            tcp.push(sockets.add(s));
        }
        fdlink_smoltcp::poll(
            &mut iface,
            &mut device,
            &mut sockets,
            Duration::from_millis(50),
        )
        .map_err(closed)?;
        let mut moved = false;
        for &h in &tcp {
            let s = sockets.get_mut::<tcp::Socket<'_>>(h);
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(scratch.len());
                let n = s.recv_slice(&mut scratch[..room]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let _ = s.send_slice(&scratch[..n]);
                moved = true;
            }
            if !s.may_recv() && s.may_send() && s.send_queue() == 0 {
                s.close();
            }
        }
        if moved {
            fdlink_smoltcp::poll(&mut iface, &mut device, &mut sockets, Duration::ZERO)
                .map_err(closed)?;
        }
    }
    Ok(())
}

fn start_echo_engine(ns: &Netns) -> Result<Running, String> {
    let tun = tun_name();
    let device = ns
        .run(|| {
            FdlinkDevice::open(
                Link::tun(&tun).offload(Offload::Auto),
                DeviceConfig::default().gso(true),
            )
        })
        .map_err(|e| format!("netns: {e}"))?
        .map_err(|e| format!("echo engine: {e}"))?;
    configure(ns, &tun, false)?;
    let mut running = Running::new(SocketAddr::from((ENGINE_ADDR, ENGINE_PORT)), tun);
    let stop = Arc::clone(&running.stop);
    running.threads.push(thread::spawn(move || {
        if let Err(e) = engine_loop(device, &stop) {
            eprintln!("bench: echo engine: {e}");
        }
    }));
    Ok(running)
}

/// netstack-smoltcp as its `forward-offload-linux` example sets it up —
/// a tun-rs device with offload and an MTU of 9000, the stack with TCP,
/// UDP and ICMP, a task per direction between them (a zero virtio header
/// before every packet to the TUN, `recv_multiple` from it into 1600-byte
/// packets) — with an echo where the example forwards.
fn start_netstack_smoltcp(
    ns: &Netns,
    serve: Serve,
    buffers: Option<Buffers>,
) -> Result<Running, String> {
    use netstack_smoltcp::StackBuilder;
    use tun_rs::{DeviceBuilder, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

    let tun = tun_name();
    let rt = runtime()?;
    let dev = ns
        .run(|| {
            let _in_runtime = rt.enter();
            DeviceBuilder::new()
                .name(&tun)
                .ipv4(KERNEL_ADDR, 24, None)
                .mtu(9000)
                .offload(true)
                .build_async()
        })
        .map_err(|e| format!("netns: {e}"))?
        .map_err(|e| format!("tun-rs: {e}"))?;
    ns.link_up(&tun).map_err(|e| format!("link up: {e}"))?;
    ns.ip(&["route", "add", ROUTED, "dev", &tun])
        .map_err(|e| format!("route: {e}"))?;
    let dev = Arc::new(dev);
    let mut builder = StackBuilder::default()
        .enable_tcp(true)
        .enable_udp(true)
        .enable_icmp(true);
    if let Some(Buffers(b)) = buffers {
        builder = builder
            .tcp_recv_buffer_size(b as u32)
            .tcp_send_buffer_size(b as u32);
    }
    let (stack, runner, udp, listener) = {
        let _in_runtime = rt.enter();
        builder
            .build()
            .map_err(|e| format!("netstack-smoltcp: {e}"))?
    };
    let (udp, mut listener) = match (udp, listener) {
        (Some(u), Some(l)) => (u, l),
        _ => return Err("netstack-smoltcp: no TCP listener or UDP socket".into()),
    };
    if let Some(runner) = runner {
        rt.spawn(runner);
    }
    let (mut stack_sink, mut stack_stream) = stack.split();
    // stack → TUN
    let dev1 = Arc::clone(&dev);
    rt.spawn(async move {
        while let Some(pkt) = stack_stream.next().await {
            if let Ok(pkt) = pkt {
                let mut buf = vec![0u8; VIRTIO_NET_HDR_LEN + pkt.len()];
                buf[VIRTIO_NET_HDR_LEN..].copy_from_slice(&pkt);
                let _ = dev1.send(&buf).await;
            }
        }
    });
    // TUN → stack
    rt.spawn(async move {
        let mut orig = vec![0u8; VIRTIO_NET_HDR_LEN + 65535];
        let mut bufs = vec![vec![0u8; 1600]; IDEAL_BATCH_SIZE];
        let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
        while let Ok(n) = dev.recv_multiple(&mut orig, &mut bufs, &mut sizes, 0).await {
            for i in 0..n {
                let pkt = &bufs[i][..sizes[i]];
                if stack_sink.send(pkt.to_vec()).await.is_err() {
                    return;
                }
            }
        }
    });
    // UDP is not measured: drain it.
    rt.spawn(async move {
        let (mut read_half, _write_half) = udp.split();
        while read_half.next().await.is_some() {}
    });
    let mut running = Running::new(any_port_target(), tun);
    let accepted = Arc::clone(&running.accepted);
    let live = Arc::clone(&running.live);
    let held = Arc::clone(&running.held);
    rt.spawn(async move {
        while let Some((stream, _local, _remote)) = listener.next().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            match serve {
                Serve::Echo => {
                    tokio::spawn(echo_async(stream, Live::new(&live)));
                }
                Serve::Hold => held
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Box::new(stream)),
            }
        }
    });
    running.runtime = Some(rt);
    Ok(running)
}

/// A plain TUN descriptor as tokio's `AsyncRead`/`AsyncWrite`, one packet
/// per read or write: the device ipstack takes.
struct TunIo(AsyncFd<OwnedFd>);

impl AsyncRead for TunIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| fdlink_sys::io::read(fd.as_fd(), unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for TunIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| fdlink_sys::io::write(fd.as_fd(), buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// ipstack as its `tun` example sets it up: MTU 65535 on the TUN and the
/// stack, an MSS of 1460 announced, 256 KiB unacknowledged at most.
fn start_ipstack(ns: &Netns) -> Result<Running, String> {
    const MTU: u16 = u16::MAX;
    let tun = tun_name();
    let rt = runtime()?;
    let fd = ns
        .run(|| fdlink_sys::tun::TunConfig::tun().name(&tun).open())
        .map_err(|e| format!("netns: {e}"))?
        .map_err(|e| format!("open TUN: {e}"))?
        .into_fds()
        .pop()
        .ok_or("TUN without a queue")?;
    ns.ip(&["link", "set", "dev", &tun, "mtu", &MTU.to_string()])
        .map_err(|e| format!("mtu: {e}"))?;
    configure(ns, &tun, true)?;
    fdlink_sys::fd::set_nonblocking(fd.as_fd()).map_err(|e| format!("nonblocking: {e}"))?;
    let io = {
        let _in_runtime = rt.enter();
        // `AsyncFd::register`, which replaces `new`, is `unsafe` (this
        // crate has none): the wrapper owns the descriptor outright, so
        // nothing can close it while it is registered.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd).map_err(|e| format!("AsyncFd: {e}"))?;
        TunIo(fd)
    };
    let mut config = ipstack::IpStackConfig::default();
    config.mtu(MTU).map_err(|e| format!("ipstack: {e}"))?;
    let mut tcp = ipstack::TcpConfig::default();
    tcp.options = Some(vec![ipstack::TcpOptions::MaximumSegmentSize(1460)]);
    tcp.max_unacked_bytes = 256 * 1024;
    config.with_tcp_config(tcp);
    let running = Running::new(any_port_target(), tun);
    let accepted = Arc::clone(&running.accepted);
    let live = Arc::clone(&running.live);
    rt.spawn(async move {
        let mut stack = ipstack::IpStack::new(config, io);
        while let Ok(stream) = stack.accept().await {
            if let ipstack::IpStackStream::Tcp(tcp) = stream {
                accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(echo_async(tcp, Live::new(&live)));
            }
        }
    });
    let mut running = running;
    running.runtime = Some(rt);
    Ok(running)
}
