//! An in-process smoltcp echo server over [`FdlinkDevice`]s, and the kernel
//! clients that talk to it from inside a [`Netns`].
//!
//! The server answers TCP and UDP echo on [`PORT`]; smoltcp itself answers
//! ICMP echo. The clients send a pattern with a prime period and check
//! every byte that comes back, so loss, duplication and misplaced blocks
//! all show. Every loop is bounded in time.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fdlink_core::StatsSnapshot;
use fdlink_smoltcp::{FdlinkDevice, poll};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

use crate::netns::Netns;

/// The echo port.
pub const PORT: u16 = 7;
/// Upper bound for one whole exchange.
pub const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);
/// The echo server's own upper bound (it also stops when told to).
const SERVER_LIMIT: Duration = Duration::from_secs(90);
/// The pattern repeats with this (prime) period, so that misplaced blocks
/// are noticed.
const PATTERN_PERIOD: usize = 1_000_003;

// ---------------------------------------------------------------------------
// The in-process smoltcp echo server.
// ---------------------------------------------------------------------------

/// What the echo server serves.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Its IPv4 and IPv6 addresses (with prefix lengths).
    pub v4: (IpAddress, u8),
    /// See `v4`.
    pub v6: (IpAddress, u8),
    /// Its MAC address, on Ethernet links.
    pub mac: Option<[u8; 6]>,
    /// Listening TCP sockets kept ready: as many as concurrent connects.
    pub pool: usize,
    /// Each TCP socket's receive and send buffer.
    pub buffer: usize,
}

fn tcp_socket(buffer: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buffer]),
        tcp::SocketBuffer::new(vec![0; buffer]),
    );
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    s
}

fn udp_socket() -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 256 << 10]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 256 << 10]),
    )
}

/// What a server thread last saw of its link, after its latest poll.
#[derive(Debug, Clone, Copy, Default)]
pub struct Status {
    /// The endpoint's counters (shared by every queue's device).
    pub stats: StatsSnapshot,
    /// The endpoint's MTU, read before the last poll: `poll` made the
    /// smoltcp interface again for it when it changed, so the interface
    /// works with (at least) this MTU change.
    pub mtu: u32,
}

/// Runs a smoltcp TCP + UDP echo server on `device` until `stop` is set (or
/// [`SERVER_LIMIT`] passes). Returns the device, for its stats.
fn serve(
    mut device: FdlinkDevice,
    cfg: ServerConfig,
    stop: &AtomicBool,
    status: &Mutex<Status>,
) -> FdlinkDevice {
    let hw = match cfg.mac {
        Some(mac) => HardwareAddress::Ethernet(EthernetAddress(mac)),
        None => HardwareAddress::Ip,
    };
    let mut iface = Interface::new(Config::new(hw), &mut device, smoltcp::time::Instant::now());
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(cfg.v4.0, cfg.v4.1)).unwrap();
        a.push(IpCidr::new(cfg.v6.0, cfg.v6.1)).unwrap();
    });
    let mut sockets = SocketSet::new(vec![]);
    let udp = sockets.add(udp_socket());
    sockets
        .get_mut::<udp::Socket<'_>>(udp)
        .bind(IpListenEndpoint::from(PORT))
        .unwrap();
    let mut tcp: Vec<SocketHandle> = Vec::new();
    let mut scratch = vec![0u8; 64 << 10];
    let deadline = Instant::now() + SERVER_LIMIT;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        // Keep `pool` listeners ready; forget finished connections.
        tcp.retain(|&h| {
            let done = sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Closed;
            if done {
                sockets.remove(h);
            }
            !done
        });
        let listening = tcp
            .iter()
            .filter(|&&h| sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Listen)
            .count();
        for _ in listening..cfg.pool {
            let mut s = tcp_socket(cfg.buffer);
            s.listen(PORT).unwrap();
            tcp.push(sockets.add(s));
        }
        let mtu = device.endpoint().mtu();
        poll(
            &mut iface,
            &mut device,
            &mut sockets,
            Duration::from_millis(10),
        )
        .expect("poll");
        *status.lock().unwrap_or_else(|e| e.into_inner()) = Status {
            stats: device.endpoint().stats(),
            mtu,
        };
        let mut moved = false;
        for &h in &tcp {
            let s = sockets.get_mut::<tcp::Socket<'_>>(h);
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(scratch.len());
                let n = s.recv_slice(&mut scratch[..room]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                s.send_slice(&scratch[..n]).unwrap();
                moved = true;
            }
            if !s.may_recv() && s.may_send() && s.send_queue() == 0 {
                s.close();
            }
        }
        let s = sockets.get_mut::<udp::Socket<'_>>(udp);
        while s.can_recv() && s.can_send() {
            let Ok((n, meta)) = s.recv_slice(&mut scratch) else {
                break;
            };
            let _ = s.send_slice(&scratch[..n], meta.endpoint);
            moved = true;
        }
        if moved {
            // Send what was queued now rather than after the next sleep.
            poll(&mut iface, &mut device, &mut sockets, Duration::ZERO).expect("poll");
        }
    }
    device
}

/// Running echo server threads, one per device; stopped and joined on drop.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<FdlinkDevice>>,
    status: Arc<Mutex<Status>>,
}

impl Server {
    /// Starts one server thread per device, all serving `cfg`.
    pub fn start(devices: Vec<FdlinkDevice>, cfg: ServerConfig) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(Status::default()));
        let threads = devices
            .into_iter()
            .map(|d| {
                let stop = Arc::clone(&stop);
                let status = Arc::clone(&status);
                thread::spawn(move || serve(d, cfg, &stop, &status))
            })
            .collect();
        Server {
            stop,
            threads,
            status,
        }
    }

    /// What the server threads last saw of the link (the devices of one
    /// server share an endpoint, so any thread's view will do).
    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frames the link saw so far: read, or dropped by the kernel before
    /// they could be (`frames_read + kernel_drops`).
    pub fn frames_seen(&self) -> u64 {
        let stats = self.status().stats;
        stats.frames_read + stats.kernel_drops
    }

    /// Stops the server and returns the endpoint's final counters.
    ///
    /// # Panics
    /// When a server thread panicked.
    pub fn stop_stats(mut self) -> StatsSnapshot {
        self.stop.store(true, Ordering::Relaxed);
        let mut stats = StatsSnapshot::default();
        for t in self.threads.drain(..) {
            let device = t.join().expect("echo server panicked");
            stats = device.endpoint().stats();
        }
        stats
    }

    /// Stops the server and returns the endpoint's stats line.
    ///
    /// # Panics
    /// When a server thread panicked.
    pub fn stop(self) -> String {
        self.stop_stats().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Addresses.
// ---------------------------------------------------------------------------

/// Addresses of one test network: the kernel side `.1`, smoltcp `.2`.
#[derive(Debug, Clone, Copy)]
pub struct Net {
    /// The kernel side's IPv4 address.
    pub kernel4: &'static str,
    /// The smoltcp side's IPv4 address.
    pub smol4: &'static str,
    /// The kernel side's IPv6 address.
    pub kernel6: &'static str,
    /// The smoltcp side's IPv6 address.
    pub smol6: &'static str,
}

/// Network `n`: `10.<second>.n.0/24` and `fd00:<second>:n::/64`, where
/// `second` keeps test binaries apart.
pub fn net(second: u8, n: u8) -> Net {
    // Leaked strings: a handful per test process.
    let s = |v: String| -> &'static str { Box::leak(v.into_boxed_str()) };
    Net {
        kernel4: s(format!("10.{second}.{n}.1")),
        smol4: s(format!("10.{second}.{n}.2")),
        kernel6: s(format!("fd00:{second}:{n}::1")),
        smol6: s(format!("fd00:{second}:{n}::2")),
    }
}

impl Net {
    /// The echo server's configuration on this network.
    pub fn server(&self, mac: Option<[u8; 6]>, pool: usize, buffer: usize) -> ServerConfig {
        ServerConfig {
            v4: (IpAddress::Ipv4(self.smol4.parse().unwrap()), 24),
            v6: (IpAddress::Ipv6(self.smol6.parse().unwrap()), 64),
            mac,
            pool,
            buffer,
        }
    }

    /// Gives `dev` the kernel side's addresses and sets it up.
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn configure_kernel(&self, ns: &Netns, dev: &str) {
        ns.addr(dev, &format!("{}/24", self.kernel4)).unwrap();
        ns.addr(dev, &format!("{}/64", self.kernel6)).unwrap();
        ns.link_up(dev).unwrap();
    }

    /// The smoltcp side's address.
    pub fn smol(&self, v6: bool) -> IpAddr {
        if v6 { self.smol6 } else { self.smol4 }.parse().unwrap()
    }
}

// ---------------------------------------------------------------------------
// Kernel clients.
// ---------------------------------------------------------------------------

fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x = 0x9e37_79b9u32;
        (0..PATTERN_PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    })
}

/// The pattern from `offset` on, at most `len` bytes (up to the period's
/// end).
pub fn pattern_at(offset: u64, len: usize) -> &'static [u8] {
    let p = pattern();
    let start = (offset % PATTERN_PERIOD as u64) as usize;
    &p[start..(start + len).min(PATTERN_PERIOD)]
}

/// Connects from inside `ns` to `to`, retrying while the server is not
/// listening yet (10 s at most).
pub fn connect(ns: &Netns, to: SocketAddr) -> io::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ns.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))?;
        match r {
            Ok(s) => return Ok(s),
            // The server may not be listening quite yet.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends `total` pattern bytes (offset by `salt`) to the echo server over a
/// kernel TCP connection and checks that exactly those come back.
pub fn tcp_exchange(ns: &Netns, to: SocketAddr, total: u64, salt: u64) -> io::Result<()> {
    let stream = connect(ns, to)?;
    exchange_on(stream, total, salt, None)
}

/// [`tcp_exchange`] on a connected `stream`; `echoed`, when given, follows
/// the bytes checked so far.
pub fn exchange_on(
    stream: TcpStream,
    total: u64,
    salt: u64,
    echoed: Option<&AtomicU64>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(EXCHANGE_LIMIT))?;
    stream.set_write_timeout(Some(EXCHANGE_LIMIT))?;
    let mut writer = stream.try_clone()?;
    let sender = thread::spawn(move || -> io::Result<()> {
        let mut sent = 0u64;
        while sent < total {
            let chunk = pattern_at(salt + sent, (total - sent).min(256 << 10) as usize);
            writer.write_all(chunk)?;
            sent += chunk.len() as u64;
        }
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = stream;
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0u64;
    let deadline = Instant::now() + EXCHANGE_LIMIT;
    let result = loop {
        if Instant::now() > deadline {
            break Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{got} of {total} bytes echoed in time"),
            ));
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(io::Error::new(e.kind(), format!("after {got} bytes: {e}"))),
        };
        let mut at = 0;
        let mut bad = None;
        while at < n {
            let want = pattern_at(salt + got, n - at);
            let have = &buf[at..at + want.len()];
            if have != want {
                bad = have.iter().zip(want).position(|(a, b)| a != b);
                break;
            }
            at += want.len();
            got += want.len() as u64;
        }
        if let Some(echoed) = echoed {
            echoed.store(got, Ordering::Relaxed);
        }
        if let Some(i) = bad {
            break Err(io::Error::other(format!(
                "echoed byte {} differs",
                got + i as u64
            )));
        }
        if got > total {
            break Err(io::Error::other(format!(
                "{got} bytes echoed, sent {total}"
            )));
        }
    };
    let _ = reader.shutdown(Shutdown::Both);
    sender.join().expect("sender thread")?;
    result?;
    if got != total {
        return Err(io::Error::other(format!(
            "{got} bytes echoed, sent {total}"
        )));
    }
    Ok(())
}

/// Sends a few datagrams of different sizes and checks each echo.
pub fn udp_exchange(ns: &Netns, to: SocketAddr) -> io::Result<()> {
    let bind: SocketAddr = if to.is_ipv6() {
        "[::]:0".parse().unwrap()
    } else {
        "0.0.0.0:0".parse().unwrap()
    };
    let socket = ns.run(|| UdpSocket::bind(bind))??;
    socket.connect(to)?;
    socket.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut buf = vec![0u8; 2048];
    for (i, len) in [1usize, 100, 1000, 1400].into_iter().enumerate() {
        let msg = pattern_at(i as u64 * 7919, len);
        let deadline = Instant::now() + Duration::from_secs(5);
        // UDP may be lost: resend until the echo comes back.
        'retry: loop {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no UDP echo of {len} bytes"),
                ));
            }
            socket.send(msg)?;
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) if buf[..n] == *msg => break 'retry,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue 'retry;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Three pings from inside `ns` (10 s at most); `Ok` with ping's output
/// when they were answered.
pub fn ping(ns: &Netns, to: IpAddr) -> io::Result<String> {
    let to = to.to_string();
    let mut args = vec!["-c", "3", "-i", "0.2", "-W", "2", "-w", "10"];
    if to.contains(':') {
        args.insert(0, "-6");
    }
    args.push(&to);
    ns.exec("ping", &args)
}
