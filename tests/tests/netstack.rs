//! The netstack (`fdlink_smoltcp::netstack`) over one end of a
//! `SOCK_SEQPACKET` socketpair; no privileges needed. On the other end is
//! either a plain smoltcp stack ([`Client`], an `FdlinkDevice` as in the
//! `loopback` example) whose default routes point into the link, so it
//! connects to any address, or the test itself writing and reading raw IP
//! packets ([`Raw`]).
//!
//! Every wait is bounded; every count asserted is exact.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fdlink_core::Link;
use fdlink_gso::checksum;
use fdlink_gso::wire::{PacketLayout, proto};
use fdlink_smoltcp::netstack::{
    DestinationPolicy, Netstack, NetstackConfig, SpecialDestination, TcpStream,
};
use fdlink_smoltcp::{DeviceConfig, FdlinkDevice};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_tests::netns::wait_readable;
use fdlink_tests::packet::{Csum, IpSpec, parse_tcp, pattern, src_dst, tcp_segment};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};

/// Upper bound of any one wait.
const LIMIT: Duration = Duration::from_secs(20);

/// The client's own addresses.
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A netstack over one end of a fresh socketpair; the other end returned.
fn netstack(config: NetstackConfig) -> (Netstack, OwnedFd) {
    let (ours, theirs) = socketpair(SocketType::SeqPacket).expect("socketpair");
    let ns = Netstack::open(Link::socket(ours), config).expect("open the netstack");
    (ns, theirs)
}

/// Waits (bounded by [`LIMIT`]) until `f` gives a value.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------
// A smoltcp client on the other end.
// ---------------------------------------------------------------------------

struct ClientState {
    iface: Interface,
    device: FdlinkDevice,
    sockets: SocketSet<'static>,
}

/// A smoltcp stack on the link's other end, polled by a thread of its own;
/// the test reaches its sockets under a lock.
struct Client {
    state: Arc<Mutex<ClientState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    next_port: AtomicU16,
}

impl Client {
    fn new(fd: OwnedFd) -> Client {
        let mut device = FdlinkDevice::open(
            Link::socket(fd),
            DeviceConfig::default().busy_poll(Duration::ZERO),
        )
        .expect("client device");
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut device,
            smoltcp::time::Instant::now(),
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::from(CLIENT_V4), 24)).unwrap();
            a.push(IpCidr::new(IpAddress::from(CLIENT_V6), 64)).unwrap();
        });
        // Everything else goes into the link.
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(10, 0, 0, 254))
            .unwrap();
        iface
            .routes_mut()
            .add_default_ipv6_route(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xfe))
            .unwrap();
        let state = Arc::new(Mutex::new(ClientState {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (state2, stop2) = (Arc::clone(&state), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(120);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < until {
                {
                    let mut s = state2.lock().unwrap();
                    let ClientState {
                        iface,
                        device,
                        sockets,
                    } = &mut *s;
                    if fdlink_smoltcp::poll(iface, device, sockets, Duration::from_millis(1))
                        .is_err()
                    {
                        break;
                    }
                }
                thread::yield_now();
            }
        });
        Client {
            state,
            stop,
            thread: Some(thread),
            next_port: AtomicU16::new(40000),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ClientState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Runs `f` on TCP socket `h` under the lock.
    fn tcp<T>(&self, h: SocketHandle, f: impl FnOnce(&mut tcp::Socket<'static>) -> T) -> T {
        self.with(|s| f(s.sockets.get_mut::<tcp::Socket<'static>>(h)))
    }

    /// Waits until `f` on TCP socket `h` gives a value.
    fn wait_tcp<T>(
        &self,
        h: SocketHandle,
        what: &str,
        mut f: impl FnMut(&mut tcp::Socket<'static>) -> Option<T>,
    ) -> T {
        wait_for(what, || self.tcp(h, &mut f))
    }

    /// Opens a TCP connection to `dst` (any address: it goes into the link)
    /// with `buffer` bytes each way; returns the socket and its local
    /// address.
    fn connect(&self, dst: SocketAddr, buffer: usize) -> (SocketHandle, SocketAddr) {
        let port = self.next_port.fetch_add(1, Ordering::SeqCst);
        let local = match dst {
            SocketAddr::V4(_) => SocketAddr::new(CLIENT_V4.into(), port),
            SocketAddr::V6(_) => SocketAddr::new(CLIENT_V6.into(), port),
        };
        let h = self.with(|s| {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0u8; buffer]),
                tcp::SocketBuffer::new(vec![0u8; buffer]),
            );
            socket.set_nagle_enabled(false);
            socket
                .connect(
                    s.iface.context(),
                    (IpAddress::from(dst.ip()), dst.port()),
                    port,
                )
                .expect("connect");
            s.sockets.add(socket)
        });
        (h, local)
    }

    fn state(&self, h: SocketHandle) -> tcp::State {
        self.tcp(h, |s| s.state())
    }

    /// Sends all of `data` on `h`.
    fn send_all(&self, h: SocketHandle, data: &[u8]) {
        let mut sent = 0;
        wait_for("room to send", || {
            sent += self.tcp(h, |s| {
                if s.can_send() {
                    s.send_slice(&data[sent..]).expect("send")
                } else {
                    assert!(s.may_send(), "the connection closed while sending");
                    0
                }
            });
            (sent == data.len()).then_some(())
        });
    }

    /// Receives exactly `n` bytes on `h`.
    fn recv_exact(&self, h: SocketHandle, n: usize) -> Vec<u8> {
        let mut got = Vec::with_capacity(n);
        wait_for("data", || {
            self.tcp(h, |s| {
                while got.len() < n && s.can_recv() {
                    let want = n - got.len();
                    s.recv(|b| {
                        let k = b.len().min(want);
                        got.extend_from_slice(&b[..k]);
                        (k, ())
                    })
                    .expect("recv");
                }
            });
            (got.len() == n).then_some(())
        });
        got
    }

    /// Waits until the peer's FIN came and everything before it was read.
    fn wait_fin(&self, h: SocketHandle) {
        self.wait_tcp(h, "the peer's FIN", |s| {
            (!s.may_recv() && s.recv_queue() == 0).then_some(())
        });
    }

    /// A UDP socket on `port`.
    fn udp(&self, port: u16) -> SocketHandle {
        self.with(|s| {
            let mut socket = udp::Socket::new(
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 << 10]),
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 << 10]),
            );
            socket.bind(port).expect("bind");
            s.sockets.add(socket)
        })
    }

    fn udp_send(&self, h: SocketHandle, dst: SocketAddr, payload: &[u8]) {
        self.with(|s| {
            s.sockets
                .get_mut::<udp::Socket<'static>>(h)
                .send_slice(payload, IpEndpoint::from(dst))
                .expect("send a datagram")
        });
    }

    fn udp_recv(&self, h: SocketHandle) -> (Vec<u8>, SocketAddr) {
        wait_for("a datagram", || {
            self.with(|s| {
                let socket = s.sockets.get_mut::<udp::Socket<'static>>(h);
                socket.recv().ok().map(|(data, meta)| {
                    let from = SocketAddr::new(meta.endpoint.addr.into(), meta.endpoint.port);
                    (data.to_vec(), from)
                })
            })
        })
    }
}

impl Drop for Client {
    /// Stops the polling thread; the device, and so the link's end, closes
    /// with the state.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Raw IP packets on the other end.
// ---------------------------------------------------------------------------

/// The link's other end, written to directly; what the netstack sends is
/// read by a thread and queued.
struct Raw {
    fd: Arc<OwnedFd>,
    rx: mpsc::Receiver<Vec<u8>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Raw {
    fn new(fd: OwnedFd) -> Raw {
        let fd = Arc::new(fd);
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (fd2, stop2) = (Arc::clone(&fd), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let until = Instant::now() + Duration::from_secs(120);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < until {
                if !wait_readable(fd2.as_fd(), Duration::from_millis(20)).unwrap_or(false) {
                    continue;
                }
                match fdlink_sys::io::read(fd2.as_fd(), &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Raw {
            fd,
            rx,
            stop,
            thread: Some(thread),
        }
    }

    fn send(&self, packet: &[u8]) {
        let n = fdlink_sys::io::write(self.fd.as_fd(), packet).expect("write a packet");
        assert_eq!(n, packet.len());
    }

    /// The next packet for which `accept` holds, within `timeout`
    /// (others are dropped).
    fn recv_matching(
        &self,
        timeout: Duration,
        mut accept: impl FnMut(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(p) if accept(&p) => return Some(p),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Every packet that arrives within `quiet` of the previous one.
    fn drain(&self, quiet: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Ok(p) = self.rx.recv_timeout(quiet) {
            out.push(p);
        }
        out
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn syn(src: SocketAddr, dst: SocketAddr, seq: u32) -> Vec<u8> {
    tcp_seg(src, dst, seq, 0, SYN)
}

fn tcp_seg(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    tcp_segment(src, dst, seq, ack, flags, &[])
}

fn udp_dgram(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let ip = IpSpec::new(src.ip(), dst.ip());
    fdlink_tests::packet::udp_packet(&ip, src.port(), dst.port(), payload, Csum::Full)
}

/// An ICMP (IPv4) or ICMPv6 echo request.
fn echo_request(src: IpAddr, dst: IpAddr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let ip = IpSpec::new(src, dst);
    let v6 = ip.is_v6();
    let mut l4 = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    l4.extend_from_slice(&id.to_be_bytes());
    l4.extend_from_slice(&seq.to_be_bytes());
    l4.extend_from_slice(payload);
    let protocol = if v6 { proto::ICMPV6 } else { proto::ICMP };
    let csum = if v6 {
        let mut c = ip.pseudo(protocol, l4.len());
        c.add_bytes(&l4);
        c.finish()
    } else {
        checksum::checksum(&l4)
    };
    l4[2..4].copy_from_slice(&csum.to_be_bytes());
    ip.wrap(protocol, &l4)
}

/// The TCP segment of `pkt` between `from` and `to`, if it is one.
fn tcp_between(
    pkt: &[u8],
    from: SocketAddr,
    to: SocketAddr,
) -> Option<fdlink_tests::packet::TcpSeg> {
    let t = parse_tcp(pkt)?;
    (SocketAddr::new(t.src, t.sport) == from && SocketAddr::new(t.dst, t.dport) == to).then_some(t)
}

// ---------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------

/// A connection to any address comes out of `accept` with the client as
/// its peer and the address it dialled as its original destination; data
/// crosses both ways byte-exact, over IPv4 and IPv6.
#[test]
fn accept_gives_peer_and_original_destination_and_data_crosses_exactly() {
    let (ns, theirs) = netstack(NetstackConfig::default());
    let client = Client::new(theirs);
    for dst in [addr("10.1.2.3:80"), addr("[fd00:1::99]:443")] {
        let (h, local) = client.connect(dst, 256 << 10);
        let mut stream = ns
            .accept_timeout(LIMIT)
            .expect("accept")
            .expect("a connection");
        stream.set_read_timeout(Some(LIMIT));
        stream.set_write_timeout(Some(LIMIT));
        assert_eq!(stream.peer_addr(), local, "peer");
        assert_eq!(stream.original_dst(), dst, "original destination");
        client.wait_tcp(h, "established", |s| {
            (s.state() == tcp::State::Established).then_some(())
        });
        let up = pattern(1 << 20, 1);
        let down = pattern(1 << 20, 2);
        thread::scope(|s| {
            // The application echoes nothing: it reads all of `up` and
            // writes all of `down`, at once.
            let reader = s.spawn(|| {
                let mut got = vec![0u8; up.len()];
                if let Err(e) = (&stream).read_exact(&mut got) {
                    let (state, queued) = client.tcp(h, |s| (s.state(), s.send_queue()));
                    panic!(
                        "read: {e}; client {state} with {queued} bytes unacknowledged; {:?}; client link {:?}",
                        ns.stats(),
                        client.with(|s| s.device.endpoint().stats())
                    );
                }
                got
            });
            let writer = s.spawn(|| (&stream).write_all(&down).expect("write"));
            let sender = s.spawn(|| client.send_all(h, &up));
            let got_down = client.recv_exact(h, down.len());
            sender.join().unwrap();
            writer.join().unwrap();
            assert!(reader.join().unwrap() == up, "upstream bytes differ");
            assert!(got_down == down, "downstream bytes differ");
        });
    }
    let stats = ns.stats();
    assert_eq!(stats.tcp_accepted, 2);
    assert_eq!(stats.bytes_in, 2 << 20);
    assert_eq!(stats.bytes_out, 2 << 20);
    assert_eq!(stats.refused(), 0);
}

/// The client finishes first: the application reads everything, then end
/// of stream, and can still send; its shutdown reaches the client as a
/// FIN. Then the other way: the application finishes first and still
/// reads what the client sends after.
#[test]
fn half_close_both_directions() {
    let (ns, theirs) = netstack(NetstackConfig::default());
    let client = Client::new(theirs);

    // Client first.
    let (h, _) = client.connect(addr("10.1.2.3:80"), 64 << 10);
    let mut stream = ns.accept_timeout(LIMIT).unwrap().expect("a connection");
    let up = pattern(100_000, 3);
    client.send_all(h, &up);
    client.tcp(h, |s| s.close());
    let mut got = Vec::new();
    stream.set_read_timeout(Some(LIMIT));
    stream
        .read_to_end(&mut got)
        .expect("read to the client's FIN");
    assert!(got == up, "bytes before the FIN differ");
    let down = pattern(50_000, 4);
    stream
        .write_all(&down)
        .expect("write after the client's FIN");
    stream.shutdown(Shutdown::Write).expect("shutdown");
    assert!(client.recv_exact(h, down.len()) == down);
    client.wait_fin(h);
    assert_eq!(
        stream.write(b"x").map_err(|e| e.kind()),
        Err(io::ErrorKind::BrokenPipe),
        "write after shutdown"
    );
    drop(stream);
    client.wait_tcp(h, "closed", |s| {
        matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait).then_some(())
    });

    // Application first.
    let (h, _) = client.connect(addr("10.1.2.4:81"), 64 << 10);
    let mut stream = ns.accept_timeout(LIMIT).unwrap().expect("a connection");
    stream.set_read_timeout(Some(LIMIT));
    let greeting = pattern(30_000, 5);
    stream.write_all(&greeting).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    assert!(client.recv_exact(h, greeting.len()) == greeting);
    client.wait_fin(h);
    let late = pattern(200_000, 6);
    client.send_all(h, &late);
    client.tcp(h, |s| s.close());
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("read after our FIN");
    assert!(got == late, "bytes sent after the application's FIN differ");
}

/// Dropping the last handle sends a FIN after what was written;
/// `try_clone` keeps the connection open until the clone goes too.
#[test]
fn dropping_the_stream_sends_fin() {
    let (ns, theirs) = netstack(NetstackConfig::default());
    let client = Client::new(theirs);
    let (h, _) = client.connect(addr("10.9.9.9:9999"), 64 << 10);
    let mut stream = ns.accept_timeout(LIMIT).unwrap().expect("a connection");
    let clone = stream.try_clone().unwrap();
    let last = pattern(10_000, 7);
    stream.write_all(&last).unwrap();
    drop(stream);
    assert!(client.recv_exact(h, last.len()) == last);
    thread::sleep(Duration::from_millis(200));
    assert!(client.tcp(h, |s| s.may_recv()), "FIN while a clone lives");
    drop(clone);
    client.wait_fin(h);
    assert_eq!(client.state(h), tcp::State::CloseWait);
}

/// An application that stops reading closes the window: the client's
/// sending stalls with at most the two buffers' worth accepted (smoltcp's
/// and the ring's); once it reads again everything arrives byte-exact.
#[test]
fn back_pressure_stalls_the_sender_then_everything_arrives() {
    const TCP_BUF: usize = 16 << 10;
    const RING: usize = 8 << 10;
    let (ns, theirs) = netstack(NetstackConfig::default().buffers(TCP_BUF, RING));
    let client = Client::new(theirs);
    let (h, _) = client.connect(addr("10.1.2.3:80"), 64 << 10);
    let mut stream = ns.accept_timeout(LIMIT).unwrap().expect("a connection");
    let data = pattern(1 << 20, 8);
    let mut queued = 0usize;
    // Push until the client's own buffer is full and nothing more is
    // acknowledged for a while.
    let mut delivered = 0usize;
    let mut since = Instant::now();
    let deadline = Instant::now() + LIMIT;
    loop {
        let (q, unacked) = client.tcp(h, |s| {
            let n = if s.can_send() {
                s.send_slice(&data[queued..]).unwrap()
            } else {
                0
            };
            (n, s.send_queue())
        });
        queued += q;
        let now_delivered = queued - unacked;
        assert!(
            now_delivered <= TCP_BUF + RING,
            "{now_delivered} bytes accepted, above the {} bytes of buffers",
            TCP_BUF + RING
        );
        if now_delivered != delivered {
            delivered = now_delivered;
            since = Instant::now();
        } else if since.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(Instant::now() < deadline, "never stalled");
        thread::sleep(Duration::from_millis(2));
    }
    println!("stalled with {delivered} bytes accepted, {queued} queued");
    assert!(delivered > 0, "nothing accepted");
    assert!(
        queued < data.len(),
        "the whole megabyte was taken without reading"
    );
    // Read again: everything arrives.
    stream.set_read_timeout(Some(LIMIT));
    thread::scope(|s| {
        s.spawn(|| client.send_all(h, &data[queued..]));
        let mut got = vec![0u8; data.len()];
        stream.read_exact(&mut got).expect("read everything");
        assert!(got == data, "bytes differ after the stall");
    });
}

/// With decide_before_handshake, a connection waits in `accept_pending`
/// (no SYN-ACK meanwhile); refused, the client gets a reset; accepted, the
/// handshake completes and data flows.
#[test]
fn decide_before_handshake_accept_and_refuse() {
    let (ns, theirs) = netstack(NetstackConfig::default().decide_before_handshake(true));
    let client = Client::new(theirs);

    let (h, local) = client.connect(addr("10.5.5.5:25"), 64 << 10);
    let pending = ns.accept_pending().expect("a pending connection");
    assert_eq!(pending.peer_addr(), local);
    assert_eq!(pending.original_dst(), addr("10.5.5.5:25"));
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        client.state(h),
        tcp::State::SynSent,
        "no SYN-ACK before the decision"
    );
    pending.refuse();
    client.wait_tcp(h, "the reset", |s| {
        (s.state() == tcp::State::Closed).then_some(())
    });
    assert_eq!(ns.stats().refused_by_app, 1);
    assert!(
        ns.accept_timeout(Duration::from_millis(100))
            .unwrap()
            .is_none()
    );

    let (h, _) = client.connect(addr("[fd00:5::5]:25"), 64 << 10);
    let pending = ns.accept_pending().expect("a pending connection");
    let mut stream = pending.accept();
    stream.set_read_timeout(Some(LIMIT));
    client.wait_tcp(h, "established", |s| {
        (s.state() == tcp::State::Established).then_some(())
    });
    client.send_all(h, b"HELO");
    let mut got = [0u8; 4];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HELO");
    stream.write_all(b"250 ok").unwrap();
    assert_eq!(client.recv_exact(h, 6), b"250 ok");
    let stats = ns.stats();
    assert_eq!((stats.tcp_accepted, stats.refused_by_app), (1, 1));
}

/// Dropping a pending connection refuses it.
#[test]
fn dropping_a_pending_connection_refuses_it() {
    let (ns, theirs) = netstack(NetstackConfig::default().decide_before_handshake(true));
    let raw = Raw::new(theirs);
    let (src, dst) = (addr("10.0.0.1:5000"), addr("10.6.6.6:80"));
    raw.send(&syn(src, dst, 1000));
    drop(ns.accept_pending().expect("pending"));
    let rst = raw
        .recv_matching(LIMIT, |p| tcp_between(p, dst, src).is_some())
        .expect("an answer to the SYN");
    let t = parse_tcp(&rst).unwrap();
    assert!(t.has(RST | ACK), "a reset, flags {:#x}", t.flags);
    assert_eq!(t.ack, 1001, "the reset acknowledges the SYN");
    assert_eq!(ns.stats().refused_by_app, 1);
}

/// A reset during the handshake frees the half-open slot, and the next
/// SYN to the same address from another peer gets a connection of its own,
/// handed over with that peer's address.
#[test]
fn a_reset_during_the_handshake_frees_its_slot() {
    let (ns, theirs) = netstack(NetstackConfig::default().caps(1, 8, 8));
    let raw = Raw::new(theirs);
    let dst = addr("10.8.8.8:80");
    let (a, b) = (addr("10.0.0.1:7001"), addr("10.0.0.2:7002"));
    raw.send(&syn(a, dst, 100));
    let synack = raw
        .recv_matching(LIMIT, |p| tcp_between(p, dst, a).is_some())
        .expect("a SYN-ACK");
    assert!(parse_tcp(&synack).unwrap().has(SYN | ACK));
    assert_eq!(ns.stats().tcp_half_open, 1);
    raw.send(&tcp_seg(a, dst, 101, 0, RST));
    wait_for("the slot to be freed", || {
        (ns.stats().tcp_half_open == 0).then_some(())
    });
    raw.send(&syn(b, dst, 200));
    let synack = raw
        .recv_matching(LIMIT, |p| tcp_between(p, dst, b).is_some())
        .expect("a SYN-ACK to the second peer");
    let t = parse_tcp(&synack).unwrap();
    assert!(t.has(SYN | ACK), "flags {:#x}", t.flags);
    raw.send(&tcp_seg(b, dst, 201, t.seq.wrapping_add(1), ACK));
    let stream = ns.accept_timeout(LIMIT).unwrap().expect("established");
    assert_eq!(stream.peer_addr(), b, "the connection's peer");
    let stats = ns.stats();
    assert_eq!((stats.tcp_accepted, stats.refused()), (1, 0));
}

/// The netstack gives up on an undecided connection after 10 s (a reset).
/// A decision that comes later refuses nothing else — not the next
/// connection held in the same place — and the late stream fails at once
/// instead of waiting for ever.
#[test]
fn a_late_decision_touches_no_other_connection() {
    let (ns, theirs) = netstack(NetstackConfig::default().decide_before_handshake(true));
    let raw = Raw::new(theirs);
    let dst = addr("10.7.7.7:80");
    let (a, b) = (addr("10.0.0.1:7001"), addr("10.0.0.1:7002"));
    raw.send(&syn(a, dst, 100));
    let late = ns.accept_pending().expect("pending");
    let rst = raw
        .recv_matching(Duration::from_secs(15), |p| {
            tcp_between(p, dst, a).is_some()
        })
        .expect("a reset once the netstack gave up");
    assert!(parse_tcp(&rst).unwrap().has(RST));
    raw.send(&syn(b, dst, 200));
    let pending = ns.accept_pending().expect("the next connection");
    let mut stream = late.accept();
    stream.set_read_timeout(Some(LIMIT));
    let err = stream.read(&mut [0u8; 1]).expect_err("the late stream");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    assert!(
        raw.recv_matching(Duration::from_millis(500), |p| tcp_between(p, dst, b)
            .is_some())
            .is_none(),
        "the late decision answered the next connection"
    );
    let _next = pending.accept();
    let synack = raw
        .recv_matching(LIMIT, |p| tcp_between(p, dst, b).is_some())
        .expect("a SYN-ACK to the next connection");
    assert!(parse_tcp(&synack).unwrap().has(SYN | ACK));
    assert_eq!(ns.stats().refused_by_app, 1, "the expired one only");
}

// ---------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------

/// A datagram to any address opens a flow with the right peer and
/// original destination; replies leave from that destination; more
/// datagrams join the flow; an idle flow ends, and the next datagram opens
/// a new one.
#[test]
fn udp_flows_peer_original_destination_replies_and_idle_expiry() {
    let idle = Duration::from_millis(300);
    let (ns, theirs) = netstack(NetstackConfig::default().udp_idle(idle));
    let client = Client::new(theirs);
    let sock = client.udp(5353);
    for dst in [addr("10.53.0.1:53"), addr("[fd00:53::1]:53")] {
        let local = SocketAddr::new(
            if dst.is_ipv4() {
                CLIENT_V4.into()
            } else {
                CLIENT_V6.into()
            },
            5353,
        );
        client.udp_send(sock, dst, b"query one");
        let flow = ns.accept_udp_timeout(LIMIT).unwrap().expect("a new flow");
        assert_eq!(flow.peer_addr(), local);
        assert_eq!(flow.original_dst(), dst);
        let mut buf = [0u8; 64];
        let n = flow.recv(&mut buf, Some(LIMIT)).unwrap();
        assert_eq!(&buf[..n], b"query one");
        flow.send(b"answer one", Some(LIMIT)).unwrap();
        let (data, from) = client.udp_recv(sock);
        assert_eq!((data.as_slice(), from), (&b"answer one"[..], dst));
        // The same source and destination: the same flow.
        client.udp_send(sock, dst, b"query two");
        let n = flow.recv(&mut buf, Some(LIMIT)).unwrap();
        assert_eq!(&buf[..n], b"query two");
        assert!(
            ns.accept_udp_timeout(Duration::from_millis(100))
                .unwrap()
                .is_none()
        );
        // Idle: the flow ends (expiry is looked for every second).
        let started = Instant::now();
        let err = flow
            .recv(&mut buf, Some(LIMIT))
            .expect_err("the flow expires");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(started.elapsed() >= idle, "ended before its idle time");
        assert_eq!(
            flow.send(b"late", Some(LIMIT)).map_err(|e| e.kind()),
            Err(io::ErrorKind::UnexpectedEof)
        );
        // A new datagram: a new flow.
        client.udp_send(sock, dst, b"query three");
        let again = ns.accept_udp_timeout(LIMIT).unwrap().expect("a new flow");
        let n = again.recv(&mut buf, Some(LIMIT)).unwrap();
        assert_eq!(&buf[..n], b"query three");
        assert_eq!(ns.stats().udp_active, 1, "the expired flow is gone");
        // Dropping the handle ends a flow too.
        drop(again);
        wait_for("the dropped flow to end", || {
            (ns.stats().udp_active == 0).then_some(())
        });
    }
    assert_eq!(ns.stats().udp_flows, 4);
}

// ---------------------------------------------------------------------------
// ICMP, policy, caps
// ---------------------------------------------------------------------------

/// Echo requests to any address are answered from that address, payload
/// intact and checksums right; not at all with `icmp_echo(false)`.
#[test]
fn icmp_echo_answered_for_any_address_unless_off() {
    for on in [true, false] {
        let (ns, theirs) = netstack(NetstackConfig::default().icmp_echo(on));
        let raw = Raw::new(theirs);
        let payload = pattern(56, 9);
        for (src, dst) in [
            (IpAddr::from(CLIENT_V4), IpAddr::from([10, 77, 66, 55])),
            (IpAddr::from(CLIENT_V6), "fd00:77::55".parse().unwrap()),
        ] {
            raw.send(&echo_request(src, dst, 0x4242, 7, &payload));
            let reply = raw
                .recv_matching(Duration::from_millis(if on { 5000 } else { 300 }), |p| {
                    PacketLayout::parse(p).is_ok_and(|l| src_dst(&l, p) == (dst, src))
                });
            if !on {
                assert!(reply.is_none(), "an echo reply with icmp_echo(false)");
                continue;
            }
            let reply = reply.expect("an echo reply");
            let layout = PacketLayout::parse(&reply).unwrap();
            let l4 = &reply[layout.l4_offset..layout.end()];
            assert_eq!(l4[0], if dst.is_ipv4() { 0 } else { 129 }, "reply type");
            assert_eq!(&l4[4..6], &0x4242u16.to_be_bytes(), "identifier");
            assert_eq!(&l4[6..8], &7u16.to_be_bytes(), "sequence");
            assert_eq!(&l4[8..], &payload[..], "payload");
            let sum_ok = if dst.is_ipv4() {
                checksum::checksum(&reply[..layout.l4_offset]) == 0 && checksum::checksum(l4) == 0
            } else {
                let ip = IpSpec::new(dst, src);
                let mut c = ip.pseudo(proto::ICMPV6, l4.len());
                c.add_bytes(l4);
                c.finish() == 0
            };
            assert!(sum_ok, "checksums of the reply from {dst}");
        }
        assert_eq!(ns.stats().icmp_echoes, if on { 2 } else { 0 });
    }
}

/// SYNs, datagrams and echo requests to loopback addresses are dropped
/// (no answer, no connection, no flow) and counted by kind; allowed by the
/// policy, they go through.
#[test]
fn loopback_destinations_refused_and_counted() {
    let (ns, theirs) = netstack(NetstackConfig::default());
    let raw = Raw::new(theirs);
    let targets: [(IpAddr, IpAddr); 4] = [
        (CLIENT_V4.into(), "127.0.0.1".parse().unwrap()),
        (CLIENT_V4.into(), "127.255.0.9".parse().unwrap()),
        (CLIENT_V6.into(), "::1".parse().unwrap()),
        (CLIENT_V6.into(), "::ffff:127.0.0.1".parse().unwrap()),
    ];
    for (i, &(src, dst)) in targets.iter().enumerate() {
        let (src, dst) = (
            SocketAddr::new(src, 6000 + i as u16),
            SocketAddr::new(dst, 22),
        );
        raw.send(&syn(src, dst, 1));
        raw.send(&udp_dgram(src, dst, b"hi"));
        raw.send(&echo_request(src.ip(), dst.ip(), 1, 1, b"ping"));
    }
    let answers = raw.drain(Duration::from_millis(300));
    assert!(
        answers.is_empty(),
        "{} answers to loopback packets",
        answers.len()
    );
    assert!(
        ns.accept_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none()
    );
    assert!(
        ns.accept_udp_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none()
    );
    let stats = ns.stats();
    assert_eq!(stats.refused_to(SpecialDestination::Loopback), 12);
    assert_eq!(stats.refused(), 12);
    assert_eq!((stats.udp_flows, stats.icmp_echoes), (0, 0));

    // Allowed: a SYN to 127.0.0.1 gets its SYN-ACK.
    let allow = DestinationPolicy::strict().allow(SpecialDestination::Loopback);
    let (ns, theirs) = netstack(NetstackConfig::default().policy(allow));
    let raw = Raw::new(theirs);
    let (src, dst) = (addr("10.0.0.1:6000"), addr("127.0.0.1:22"));
    raw.send(&syn(src, dst, 1));
    let answer = raw
        .recv_matching(LIMIT, |p| tcp_between(p, dst, src).is_some())
        .expect("an answer");
    assert!(parse_tcp(&answer).unwrap().has(SYN | ACK), "a SYN-ACK");
    assert_eq!(ns.stats().refused(), 0);
}

/// The caps: SYNs past the half-open cap get a reset and are counted;
/// established connections count against the connection cap; flows past
/// the UDP cap are dropped and counted. A flood of SYNs to random
/// addresses leaves exactly the cap half-open.
#[test]
fn caps_refuse_and_count() {
    const HALF_OPEN: usize = 4;
    const CONNECTIONS: usize = 6;
    const UDP_FLOWS: usize = 2;
    let (ns, theirs) = netstack(NetstackConfig::default().caps(HALF_OPEN, CONNECTIONS, UDP_FLOWS));
    let raw = Raw::new(theirs);
    let dst = addr("10.1.2.3:80");
    let src = |i: u16| SocketAddr::new(CLIENT_V4.into(), 20000 + i);
    // Ten SYNs: four SYN-ACKs, six resets.
    for i in 0..10 {
        raw.send(&syn(src(i), dst, 1000));
    }
    let mut synacks = Vec::new();
    let mut resets = 0;
    for _ in 0..10 {
        let p = raw
            .recv_matching(LIMIT, |p| parse_tcp(p).is_some_and(|t| t.sport == 80))
            .expect("an answer to each SYN");
        let t = parse_tcp(&p).unwrap();
        if t.has(SYN | ACK) {
            synacks.push(t);
        } else {
            assert!(t.has(RST), "flags {:#x}", t.flags);
            resets += 1;
        }
    }
    assert_eq!((synacks.len(), resets), (HALF_OPEN, 10 - HALF_OPEN));
    let stats = ns.stats();
    assert_eq!(stats.refused_half_open, (10 - HALF_OPEN) as u64);
    assert_eq!(stats.tcp_half_open, HALF_OPEN as u64);
    // Complete the four handshakes: four established, none half-open.
    for t in &synacks {
        raw.send(&tcp_seg(
            src(t.dport - 20000),
            dst,
            1001,
            t.seq.wrapping_add(1),
            ACK,
        ));
    }
    let streams: Vec<TcpStream> = (0..HALF_OPEN)
        .map(|_| ns.accept_timeout(LIMIT).unwrap().expect("established"))
        .collect();
    let stats = ns.stats();
    assert_eq!(
        (stats.tcp_active, stats.tcp_half_open),
        (HALF_OPEN as u64, 0)
    );
    // Two more fit (six in all); the seventh hits the connection cap.
    for i in 10..13 {
        raw.send(&syn(src(i), dst, 1000));
    }
    let answers: Vec<_> = (0..3)
        .map(|_| {
            let p = raw
                .recv_matching(LIMIT, |p| parse_tcp(p).is_some_and(|t| t.sport == 80))
                .expect("an answer");
            parse_tcp(&p).unwrap()
        })
        .collect();
    assert_eq!(answers.iter().filter(|t| t.has(SYN | ACK)).count(), 2);
    assert_eq!(answers.iter().filter(|t| t.has(RST)).count(), 1);
    let stats = ns.stats();
    assert_eq!(stats.refused_connections, 1);
    assert_eq!(stats.tcp_half_open, 2);
    drop(streams);

    // UDP: two flows, the third refused.
    for i in 0..3 {
        raw.send(&udp_dgram(src(100 + i), addr("10.53.0.1:53"), b"q"));
    }
    let flows: Vec<_> = (0..UDP_FLOWS)
        .map(|_| ns.accept_udp_timeout(LIMIT).unwrap().expect("a flow"))
        .collect();
    assert!(
        ns.accept_udp_timeout(Duration::from_millis(200))
            .unwrap()
            .is_none()
    );
    assert_eq!(ns.stats().refused_udp, 1);
    drop(flows);
}

/// A flood of SYNs to random addresses and ports over a netstack with a
/// small half-open cap: exactly the cap stays half-open, every other SYN
/// is answered with a reset and counted, and a real connection still
/// works once the half-open ones are reset.
#[test]
fn syn_flood_is_capped_and_counted() {
    const HALF_OPEN: usize = 16;
    const FLOOD: u32 = 2000;
    let (ns, theirs) = netstack(NetstackConfig::default().caps(HALF_OPEN, 64, 16));
    let raw = Raw::new(theirs);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut sent = Vec::new();
    for i in 0..FLOOD {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let dst = SocketAddr::new(
            Ipv4Addr::new(10, (seed >> 8) as u8, (seed >> 16) as u8, seed as u8 | 1).into(),
            (seed >> 24) as u16 | 1,
        );
        let src = SocketAddr::new(CLIENT_V4.into(), 1024 + i as u16);
        raw.send(&syn(src, dst, 7));
        sent.push((dst, src));
    }
    let mut synacks = Vec::new();
    let mut resets = 0;
    let deadline = Instant::now() + LIMIT;
    while synacks.len() + resets < FLOOD as usize {
        assert!(Instant::now() < deadline, "not every SYN was answered");
        let Some(p) = raw.recv_matching(LIMIT, |p| parse_tcp(p).is_some()) else {
            break;
        };
        let t = parse_tcp(&p).unwrap();
        if t.has(SYN | ACK) {
            // Retransmitted SYN-ACKs count once.
            let key = (t.src, t.sport, t.dport);
            if !synacks.contains(&key) {
                synacks.push(key);
            }
        } else if t.has(RST) {
            resets += 1;
        }
    }
    assert_eq!(synacks.len(), HALF_OPEN, "half-open connections");
    assert_eq!(resets, FLOOD as usize - HALF_OPEN, "resets");
    let stats = ns.stats();
    assert_eq!(stats.refused_half_open, u64::from(FLOOD) - HALF_OPEN as u64);
    assert_eq!(stats.tcp_half_open, HALF_OPEN as u64);
    // Reset the half-open ones from our side; then a new SYN gets its
    // SYN-ACK again.
    for &(ip, sport, dport) in &synacks {
        let (dst, src) = sent
            .iter()
            .copied()
            .find(|(d, s)| d.ip() == ip && d.port() == sport && s.port() == dport)
            .unwrap();
        raw.send(&tcp_seg(src, dst, 8, 0, RST));
    }
    wait_for("the half-open to be reset", || {
        (ns.stats().tcp_half_open == 0).then_some(())
    });
    let (src, dst) = (addr("10.0.0.1:65000"), addr("10.1.1.1:443"));
    raw.send(&syn(src, dst, 1));
    let answer = raw
        .recv_matching(LIMIT, |p| tcp_between(p, dst, src).is_some())
        .expect("an answer");
    assert!(
        parse_tcp(&answer).unwrap().has(SYN | ACK),
        "a SYN-ACK after the flood"
    );
}

// ---------------------------------------------------------------------------
// The link closing
// ---------------------------------------------------------------------------

/// When the link's other end closes, accept ends with an error, an open
/// stream fails, and an open UDP flow ends.
#[test]
fn link_closing_ends_accept_streams_and_flows() {
    let (ns, theirs) = netstack(NetstackConfig::default());
    let client = Client::new(theirs);
    let (_h, _) = client.connect(addr("10.1.2.3:80"), 64 << 10);
    let mut stream = ns.accept_timeout(LIMIT).unwrap().expect("a connection");
    let sock = client.udp(999);
    client.udp_send(sock, addr("10.53.0.1:53"), b"q");
    let flow = ns.accept_udp_timeout(LIMIT).unwrap().expect("a flow");
    let mut buf = [0u8; 8];
    assert_eq!(flow.recv(&mut buf, Some(LIMIT)).unwrap(), 1);
    drop(client);
    let err = ns
        .accept()
        .map(drop)
        .expect_err("accept after the link closed");
    assert_eq!(err.kind(), io::ErrorKind::NotConnected);
    assert!(ns.accept_udp().is_err(), "accept_udp after the link closed");
    stream.set_read_timeout(Some(LIMIT));
    let err = stream
        .read(&mut buf)
        .expect_err("a read after the link closed");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert!(stream.write(b"x").is_err(), "a write after the link closed");
    let err = flow
        .recv(&mut buf, Some(LIMIT))
        .expect_err("the flow ended");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    wait_for("the engines to end", || ns.is_closed().then_some(()));
}
