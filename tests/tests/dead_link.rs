//! A dead link ends the poll loop: whatever killed it — the TUN device
//! deleted under the endpoint, the socketpair peer closed, or the packet
//! object failing (a fatal `recv`, a failed `wait_readable`) — a
//! `fdlink_smoltcp::poll` loop sleeping on the link wakes and ends with
//! `Err(Closed(reason))` carrying the cause, the closed callback runs once
//! with the same cause, and from then on every `poll`, `wait_readable`
//! and `recv_batch` returns that `Err` at once, whatever its timeout.
//!
//! The regression these guard against: `wait_readable` returned `Ok` at
//! once on a closed endpoint (its descriptor polls as ready forever), so a
//! poll loop over a dead link spun at 75 % CPU instead of ending. After
//! the closure each test keeps calling `poll` and `wait_readable` (10 s
//! timeouts) for 300 ms and fails if any call returns `Ok`, takes long, or
//! if the thread burnt its CPU meanwhile (a spin detector, not a speed
//! measurement: the thread must be asleep most of the window).
//!
//! The TUN cases need root (SKIP otherwise, failure under `CI=true`). Every
//! loop is bounded in time.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fdlink_core::{
    CloseReason, Closed, DispatchMode, Endpoint, MemoryPacketIo, Options, PacketIo, memory_pair,
};
use fdlink_smoltcp::{DeviceConfig, FdlinkDevice, poll};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_sys::tun::{OffloadFlags, TunConfig};
use fdlink_tests::faults::{ClosedLog, Fault, FaultyIo, Plan, under_valgrind};
use fdlink_tests::netns::{Netns, read_until, require_root};
use fdlink_tests::procfs::thread_cpu_time;
use fdlink_tests::tun::open_in;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

/// How long a poll may sleep: far longer than [`CLOSE_LIMIT`], so a loop
/// that ends in time was woken by the closure, not by its timeout.
const LONG_SLEEP: Duration = Duration::from_secs(10);
/// The loop must have ended this long after the link died (a liveness
/// bound).
const CLOSE_LIMIT: Duration = Duration::from_secs(5);
/// A call on a closed endpoint must return well before its 10 s timeout.
const AT_ONCE: Duration = Duration::from_secs(2);
/// How long the link lives while the loop sleeps before it is killed.
const KILL_DELAY: Duration = Duration::from_millis(200);
/// How long the calls go on after the closure.
const AFTER_WINDOW: Duration = Duration::from_millis(300);
/// Bound for a live exchange (a ping answered) before the kill.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(10);

/// The smoltcp side's address on every link.
const STACK_ADDR: [u8; 4] = [10, 91, 0, 2];

/// A smoltcp interface over an `FdlinkDevice` (IP medium), no sockets:
/// smoltcp answers ICMP echo itself.
struct Stack {
    device: FdlinkDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
}

impl Stack {
    fn new(endpoint: Endpoint) -> Stack {
        let mut device = FdlinkDevice::new(endpoint, DeviceConfig::default());
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut device,
            smoltcp::time::Instant::now(),
        );
        iface.update_ip_addrs(|a| {
            let [a0, a1, a2, a3] = STACK_ADDR;
            a.push(IpCidr::new(IpAddress::v4(a0, a1, a2, a3), 24))
                .unwrap();
        });
        Stack {
            device,
            iface,
            sockets: SocketSet::new(vec![]),
        }
    }

    fn poll(&mut self, max_sleep: Duration) -> Result<bool, Closed> {
        poll(
            &mut self.iface,
            &mut self.device,
            &mut self.sockets,
            max_sleep,
        )
    }

    fn endpoint(&self) -> &Endpoint {
        self.device.endpoint()
    }

    /// Polls (short sleeps) until `done` holds, at most [`EXCHANGE_LIMIT`].
    fn poll_until(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + EXCHANGE_LIMIT;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}: not done within {EXCHANGE_LIMIT:?} ({})",
                self.endpoint().stats()
            );
            if let Err(Closed(reason)) = self.poll(Duration::from_millis(10)) {
                panic!("{what}: the link closed while alive: {reason}");
            }
        }
    }
}

/// An ICMP echo request from 10.91.0.1 to the stack.
fn ping_request(seq: u16) -> Vec<u8> {
    let mut p = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 91, 0, 1], STACK_ADDR, 64)
        .icmpv4_echo_request(0x77, seq)
        .write(&mut p, &[seq as u8; 32])
        .unwrap();
    p
}

/// True for an ICMP echo reply from the stack.
fn is_ping_reply(p: &[u8]) -> bool {
    p.len() >= 28 && p[0] >> 4 == 4 && p[9] == 1 && p[12..16] == STACK_ADDR && p[20] == 0
}

/// Runs the poll loop as an application would (sleeping up to
/// [`LONG_SLEEP`] per call) while another thread runs `kill` after
/// [`KILL_DELAY`]. Returns the reason the loop ended with; panics unless it
/// ended within [`CLOSE_LIMIT`] of the kill.
fn poll_until_killed(stack: &mut Stack, what: &str, kill: impl FnOnce() + Send) -> CloseReason {
    thread::scope(|s| {
        let killer = s.spawn(move || {
            thread::sleep(KILL_DELAY);
            // The link may be seen dead before `kill` returns (`ip link
            // del` exits after the kernel removed the device).
            let at = Instant::now();
            kill();
            at
        });
        let start = Instant::now();
        let reason = loop {
            match stack.poll(LONG_SLEEP) {
                Ok(_) => assert!(
                    start.elapsed() < KILL_DELAY + CLOSE_LIMIT,
                    "{what}: the poll loop still runs {:?} after the link died \
                     (it must end with Err): {}",
                    start.elapsed().saturating_sub(KILL_DELAY),
                    stack.endpoint().stats()
                ),
                Err(Closed(reason)) => break reason,
            }
        };
        let ended = Instant::now();
        let killed = killer.join().expect("killer thread");
        assert!(
            ended >= killed,
            "{what}: the loop ended ({reason}) before the link was killed"
        );
        assert!(
            ended - killed < CLOSE_LIMIT,
            "{what}: the loop ended {:?} after the link died",
            ended - killed
        );
        reason
    })
}

/// Everything that must hold once the link is dead and the loop ended with
/// `expected`.
fn check_dead(stack: &mut Stack, log: &ClosedLog, expected: &CloseReason, what: &str) {
    assert_eq!(
        stack.device.close_reason().as_ref(),
        Some(expected),
        "{what}"
    );
    let e = stack.endpoint();
    assert!(e.is_closed(), "{what}: endpoint not closed");
    assert_eq!(e.close_reason().as_ref(), Some(expected), "{what}");
    assert_eq!(log.calls(), 1, "{what}: closed callback exactly once");
    assert_eq!(log.reason().as_ref(), Some(expected), "{what}");

    // A plain wait with a long timeout returns Err at once.
    let t = Instant::now();
    let waited = e.wait_readable(Some(LONG_SLEEP));
    let took = t.elapsed();
    assert_eq!(
        waited,
        Err(Closed(expected.clone())),
        "{what}: wait_readable on a closed endpoint"
    );
    assert!(took < AT_ONCE, "{what}: wait_readable took {took:?}");
    let t = Instant::now();
    assert_eq!(
        e.wait_readable_on(0, Some(LONG_SLEEP)),
        Err(Closed(expected.clone())),
        "{what}: wait_readable_on a closed queue"
    );
    assert!(t.elapsed() < AT_ONCE, "{what}: wait_readable_on took long");
    let mut batch = e.new_batch();
    assert_eq!(
        e.recv_batch(&mut batch),
        Err(Closed(expected.clone())),
        "{what}: recv_batch on a closed, drained endpoint"
    );

    // Go on calling poll and wait_readable for a while, as a loop that
    // ignored the closure would: every call must be an immediate Err, and
    // the thread must have slept through the window, not spun.
    let cpu_before = thread_cpu_time();
    let start = Instant::now();
    let (mut oks, mut errs, mut slowest) = (Vec::new(), 0u32, Duration::ZERO);
    while start.elapsed() < AFTER_WINDOW {
        let t = Instant::now();
        match stack.poll(LONG_SLEEP) {
            Ok(r) => oks.push(format!("poll -> Ok({r})")),
            Err(Closed(reason)) => {
                assert_eq!(&reason, expected, "{what}: poll's reason changed");
                errs += 1;
            }
        }
        slowest = slowest.max(t.elapsed());
        let t = Instant::now();
        match stack.endpoint().wait_readable(Some(LONG_SLEEP)) {
            Ok(r) => oks.push(format!("wait_readable -> Ok({r})")),
            Err(Closed(reason)) => {
                assert_eq!(&reason, expected, "{what}: wait's reason changed");
                errs += 1;
            }
        }
        slowest = slowest.max(t.elapsed());
        // The application has ended its loop; it idles here.
        thread::sleep(Duration::from_millis(10));
    }
    let wall = start.elapsed();
    let cpu = thread_cpu_time().saturating_sub(cpu_before);
    assert!(
        oks.is_empty(),
        "{what}: {} of {} calls on a closed endpoint returned Ok (a loop over the \
         dead link would spin), first: {}",
        oks.len(),
        oks.len() + errs as usize,
        oks[0]
    );
    assert!(errs >= 2, "{what}: only {errs} calls in {wall:?}");
    assert!(
        slowest < AT_ONCE,
        "{what}: a call on the closed endpoint took {slowest:?}"
    );
    // Asleep, the thread uses a few milliseconds here; spinning, it took
    // more than half the window on this 2-vCPU VM. Memcheck makes every
    // call costly: there only the checks above apply.
    assert!(
        under_valgrind() || cpu < wall / 4,
        "{what}: the thread used {cpu:?} of CPU in {wall:?} after the closure ({errs} calls): \
         it spun"
    );
}

// ---------------------------------------------------------------------------
// TUN device deleted.
// ---------------------------------------------------------------------------

/// The TUN is deleted (`ip link del`) in its namespace while the loop
/// sleeps; with and without a virtio header. The descriptor then polls
/// as an error and reads fail with `EBADFD`: the device was removed.
#[test]
fn tun_deleted_ends_the_poll_loop() {
    if !require_root("tun_deleted_ends_the_poll_loop") {
        return;
    }
    for vnet in [false, true] {
        let what = format!("TUN deleted (vnet header {vnet})");
        let ns = Netns::new("fdl-dead").expect("netns");
        let name = "fdd0";
        let offloads = if vnet {
            OffloadFlags::CSUM | OffloadFlags::TSO4 | OffloadFlags::TSO6
        } else {
            OffloadFlags::empty()
        };
        let dev = open_in(
            &ns,
            TunConfig::tun().name(name).vnet_hdr(vnet),
            offloads,
            &what,
        );
        let log = ClosedLog::new();
        let e = Endpoint::new(
            Options::new()
                .fds(dev.into_fds())
                .vnet_header_len(if vnet { 10 } else { 0 })
                .on_closed(ClosedLog::callback(&log)),
        )
        .unwrap();
        let mut stack = Stack::new(e);
        ns.addr(name, "10.91.0.1/24").unwrap();
        ns.link_up(name).unwrap();

        // Alive first: the kernel's ping is answered.
        let mut ping = Command::new("ip")
            .args(["netns", "exec", ns.name(), "ping", "-c", "1", "-W", "5"])
            .arg("10.91.0.2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ping");
        let mut status = None;
        stack.poll_until(&format!("{what}: ping"), || {
            status = ping.try_wait().expect("ping status");
            status.is_some()
        });
        assert!(
            status.is_some_and(|s| s.success()),
            "{what}: ping not answered: {status:?}"
        );

        let reason = poll_until_killed(&mut stack, &what, || {
            ns.ip(&["link", "del", name]).expect("ip link del");
        });
        let expected = CloseReason::DeviceRemoved;
        assert_eq!(reason, expected, "{what}");
        check_dead(&mut stack, &log, &expected, &what);
    }
}

// ---------------------------------------------------------------------------
// Socketpair peer closed.
// ---------------------------------------------------------------------------

/// The SEQPACKET peer is closed while the loop sleeps, with one packet
/// per read and with recvmmsg (where gVisor spins on the zero-length
/// messages).
#[test]
fn socketpair_peer_closed_ends_the_poll_loop() {
    for mode in [DispatchMode::PerPacket, DispatchMode::Recvmmsg] {
        let what = format!("socketpair peer closed ({mode:?})");
        let (a, b) = socketpair(SocketType::SeqPacket).unwrap();
        let log = ClosedLog::new();
        let e = Endpoint::new(
            Options::new()
                .fd(a)
                .dispatch(mode)
                .on_closed(ClosedLog::callback(&log)),
        )
        .unwrap();
        let mut stack = Stack::new(e);

        // Alive first: a ping from the peer is answered.
        let request = ping_request(1);
        let n = fdlink_sys::io::write(b.as_fd(), &request).unwrap();
        assert_eq!(n, request.len());
        let readable =
            |fd: &OwnedFd| fdlink_tests::netns::wait_readable(fd.as_fd(), Duration::ZERO).unwrap();
        stack.poll_until(&format!("{what}: ping"), || readable(&b));
        read_until(b.as_fd(), Duration::from_secs(1), is_ping_reply).expect("ping reply");

        let reason = poll_until_killed(&mut stack, &what, move || drop(b));
        assert_eq!(reason, CloseReason::PeerClosed, "{what}");
        check_dead(&mut stack, &log, &CloseReason::PeerClosed, &what);
    }
}

// ---------------------------------------------------------------------------
// Packet object failed.
// ---------------------------------------------------------------------------

fn eio() -> CloseReason {
    CloseReason::Error {
        kind: io::Error::from_raw_os_error(libc::EIO).kind(),
        os_error: Some(libc::EIO),
    }
}

fn object_endpoint(io: impl PacketIo, log: &Arc<ClosedLog>) -> Endpoint {
    Endpoint::new(
        Options::new()
            .packet_io(io)
            .on_closed(ClosedLog::callback(log)),
    )
    .unwrap()
}

/// A packet object whose `recv` (fatal `EIO` or end of file) or
/// `wait_readable` (`EIO`) fails, through [`FaultyIo`]: the link is dead
/// from the first call, and the loop ends on its own.
#[test]
fn faulty_packet_object_ends_the_poll_loop() {
    let cases = [
        (
            "fatal recv error",
            Plan::after(0, Fault::HardError),
            Plan::none(),
            eio(),
        ),
        (
            "recv end of file",
            Plan::after(0, Fault::Eof),
            Plan::none(),
            CloseReason::PeerClosed,
        ),
        (
            "failed wait",
            Plan::none(),
            Plan::after(0, Fault::HardError),
            eio(),
        ),
    ];
    for (what, recv, wait, expected) in cases {
        // The peer stays open: only the object's own failure ends the link.
        let (a, _peer) = memory_pair(64);
        let io = Arc::new(FaultyIo::new(a).recv_plan(recv).wait_plan(wait));
        let log = ClosedLog::new();
        let mut stack = Stack::new(object_endpoint(Arc::clone(&io), &log));
        let start = Instant::now();
        let reason = loop {
            match stack.poll(LONG_SLEEP) {
                Ok(_) => assert!(
                    start.elapsed() < CLOSE_LIMIT,
                    "{what}: the poll loop did not end: {:?}",
                    io.counts()
                ),
                Err(Closed(reason)) => break reason,
            }
        };
        assert!(start.elapsed() < CLOSE_LIMIT, "{what}");
        assert_eq!(reason, expected, "{what}: {:?}", io.counts());
        check_dead(&mut stack, &log, &expected, what);
    }
}

/// A packet object that works until [`DyingIo::kill`], then fails every
/// `wait_readable` with `ENODEV` while its `recv` only ever says "nothing
/// yet": the wait is the one place the failure shows.
struct DyingIo {
    inner: MemoryPacketIo,
    dead: Arc<AtomicBool>,
}

impl PacketIo for DyingIo {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.dead.load(Ordering::Acquire) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.inner.recv(buf)
    }

    fn send(&self, parts: &[&[u8]]) -> io::Result<()> {
        self.inner.send(parts)
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        if self.dead.load(Ordering::Acquire) {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        self.inner.wait_readable(timeout)
    }
}

/// The object dies while the loop sleeps in its wait, after answering a
/// ping.
#[test]
fn packet_object_whose_wait_fails_ends_the_poll_loop() {
    let what = "packet object's wait failed";
    let (a, peer) = memory_pair(64);
    let dead = Arc::new(AtomicBool::new(false));
    let log = ClosedLog::new();
    let io = DyingIo {
        inner: a,
        dead: Arc::clone(&dead),
    };
    let mut stack = Stack::new(object_endpoint(io, &log));

    peer.send(&[&ping_request(1)]).unwrap();
    let mut buf = vec![0u8; 2048];
    let mut answered = false;
    stack.poll_until("ping", || {
        while let Ok(n) = peer.recv(&mut buf) {
            answered |= is_ping_reply(&buf[..n]);
        }
        answered
    });

    let reason = poll_until_killed(&mut stack, what, || dead.store(true, Ordering::Release));
    let expected = CloseReason::Error {
        kind: io::Error::from_raw_os_error(libc::ENODEV).kind(),
        os_error: Some(libc::ENODEV),
    };
    assert_eq!(reason, expected, "{what}");
    check_dead(&mut stack, &log, &expected, what);
    drop(peer);
}

/// A wait over a descriptor channel and a packet object that has failed
/// sleeps on the descriptor for its time, rather than polling it in a loop.
#[test]
fn a_wait_left_with_descriptors_only_sleeps() {
    let (ours, _peer) = socketpair(SocketType::SeqPacket).unwrap();
    let (object, _object_peer) = fdlink_core::memory_pair(4);
    let failing = FaultyIo::new(object).wait_plan(Plan::script([Fault::HardError]));
    let e = Endpoint::new(Options::new().fd(ours).packet_io(failing)).unwrap();
    let cpu = thread_cpu_time();
    let started = Instant::now();
    let ready = e.wait_readable(Some(Duration::from_millis(400))).unwrap();
    let waited = started.elapsed();
    let used = thread_cpu_time() - cpu;
    assert!(!ready, "nothing arrived");
    assert!(waited >= Duration::from_millis(350), "waited {waited:?}");
    assert_eq!(e.channel_count(), 2);
    assert!(!e.is_closed(), "the descriptor channel is still open");
    assert!(
        under_valgrind() || used < Duration::from_millis(100),
        "{used:?} of CPU in a {waited:?} wait"
    );
}
