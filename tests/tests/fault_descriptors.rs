//! Faults on real descriptors (socketpairs, no privileges needed): a full
//! send buffer, the peer closing in the middle of a burst (ours or its),
//! and the peer shut down under a running push reader. Every case ends
//! with the closed callback exactly once where the channel died, every
//! frame read delivered or counted, and nothing hangs.
//!
//! A storm of signals producing `EINTR` is not tested here: it needs a
//! signal handler, and installing one takes `unsafe` (`sigaction`), which
//! the tests crate does not use. fdlink-sys retries `EINTR` itself; the
//! endpoint's handling of `Interrupted` from packet objects is tested with
//! the fault-injecting `PacketIo` (fault_packet_io.rs).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fdlink_core::{Batch, CloseReason, DispatchMode, DropReason, Endpoint, Options, OutPacket};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_tests::faults::{ClosedLog, check_rx_accounting};
use fdlink_tests::packet::tagged_ipv4;

fn pair(ty: SocketType) -> (OwnedFd, OwnedFd) {
    let (a, b) = socketpair(ty).unwrap();
    fdlink_sys::fd::set_nonblocking(b.as_fd()).unwrap();
    (a, b)
}

fn wait_closed(e: &Endpoint, within: Duration) {
    let deadline = Instant::now() + within;
    while !e.is_closed() {
        assert!(
            Instant::now() < deadline,
            "no closure within {within:?}: {}",
            e.stats()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An endpoint over `ours` in `mode` with a push reader attached that
/// counts what it is handed, and a log of its closed callbacks.
fn counting_reader(
    ours: OwnedFd,
    mode: DispatchMode,
) -> (Endpoint, Arc<ClosedLog>, Arc<AtomicU64>) {
    let log = ClosedLog::new();
    let e = Endpoint::new(
        Options::new()
            .fd(ours)
            .dispatch(mode)
            .on_closed(ClosedLog::callback(&log)),
    )
    .unwrap();
    let delivered = Arc::new(AtomicU64::new(0));
    let d = Arc::clone(&delivered);
    e.attach(Arc::new(move |_q: usize, b: &mut Batch| {
        d.fetch_add(b.len() as u64, Ordering::Relaxed);
    }))
    .unwrap();
    (e, log, delivered)
}

#[test]
fn full_send_buffer_gives_counted_drops_in_bounded_time() {
    for ty in [SocketType::SeqPacket, SocketType::Datagram] {
        let (ours, _peer) = pair(ty);
        fdlink_sys::packet::set_send_buffer(ours.as_fd(), 4096).unwrap();
        let log = ClosedLog::new();
        let timeout = Duration::from_millis(30);
        let e = Endpoint::new(
            Options::new()
                .fd(ours)
                .send_timeout(timeout)
                .on_closed(ClosedLog::callback(&log)),
        )
        .unwrap();
        let p = tagged_ipv4(1000, 7);
        let burst: Vec<OutPacket<'_>> = (0..64).map(|_| OutPacket::ip(&p)).collect();
        let start = Instant::now();
        let (mut sent, mut dropped) = (0, 0);
        for _ in 0..20 {
            let o = e.send(&burst);
            assert_eq!(o.sent + o.dropped, burst.len());
            sent += o.sent;
            dropped += o.dropped;
        }
        let took = start.elapsed();
        // Each send waits at most the send timeout (plus scheduling).
        assert!(
            took < timeout * 20 + Duration::from_secs(2),
            "{ty:?}: {took:?}"
        );
        let s = e.stats();
        assert!(
            dropped > 0,
            "{ty:?}: the peer never reads, so sends must drop: {s}"
        );
        assert_eq!(s.tx_packets, sent as u64);
        assert_eq!(
            s.drops.get(DropReason::SendBufferFull),
            dropped as u64,
            "{s}"
        );
        assert_eq!(log.calls(), 0, "a full buffer is not a closure");
        eprintln!("{ty:?}: {sent} sent, {dropped} dropped in {took:?}");
    }
}

#[test]
fn peer_closes_in_the_middle_of_its_burst_under_a_push_reader() {
    for mode in [DispatchMode::PerPacket, DispatchMode::Recvmmsg] {
        let (ours, peer) = pair(SocketType::SeqPacket);
        let (e, log, delivered) = counting_reader(ours, mode);
        let writer = std::thread::spawn(move || {
            let mut written = 0u64;
            let deadline = Instant::now() + Duration::from_secs(10);
            for i in 0..5000u32 {
                let p = tagged_ipv4(100 + (i % 900) as usize, i as u8);
                loop {
                    match fdlink_sys::io::write(peer.as_fd(), &p) {
                        Ok(_) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            assert!(Instant::now() < deadline, "reader stalled");
                            std::thread::yield_now();
                        }
                        Err(e) => panic!("peer write: {e}"),
                    }
                }
                written += 1;
            }
            // The peer goes away right after its burst, with packets
            // still queued.
            drop(peer);
            written
        });
        let written = writer.join().unwrap();
        wait_closed(&e, Duration::from_secs(10));
        e.wait();
        let s = e.stats();
        check_rx_accounting(&s).unwrap();
        assert_eq!(
            s.frames_read, written,
            "{mode}: every queued packet read: {s}"
        );
        assert_eq!(delivered.load(Ordering::Relaxed), s.rx_packets);
        assert_eq!(s.rx_packets, written, "{s}");
        assert_eq!(log.calls(), 1);
        assert_eq!(log.reason(), Some(CloseReason::PeerClosed));
    }
}

#[test]
fn peer_closes_in_the_middle_of_our_send_burst() {
    for ty in [SocketType::SeqPacket, SocketType::Datagram] {
        let (ours, peer) = pair(ty);
        let log = ClosedLog::new();
        let e = Arc::new(
            Endpoint::new(
                Options::new()
                    .fd(ours)
                    .send_timeout(Duration::from_millis(20))
                    .on_closed(ClosedLog::callback(&log)),
            )
            .unwrap(),
        );
        // The peer reads a while, then closes.
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 2000];
            let until = Instant::now() + Duration::from_millis(50);
            while Instant::now() < until {
                let _ = fdlink_sys::io::read(peer.as_fd(), &mut buf);
            }
            drop(peer);
        });
        let p = tagged_ipv4(500, 1);
        let burst: Vec<OutPacket<'_>> = (0..32).map(|_| OutPacket::ip(&p)).collect();
        let start = Instant::now();
        let (mut sent, mut dropped) = (0u64, 0u64);
        while start.elapsed() < Duration::from_millis(300) {
            let o = e.send(&burst);
            assert_eq!(o.sent + o.dropped, burst.len());
            sent += o.sent as u64;
            dropped += o.dropped as u64;
        }
        reader.join().unwrap();
        let s = e.stats();
        assert_eq!(s.tx_packets, sent);
        assert_eq!(s.drops.outbound(), dropped, "{s}");
        assert_eq!(log.calls(), 1, "{ty:?}: closed exactly once: {s}");
        assert_eq!(log.reason(), Some(CloseReason::PeerClosed));
        assert!(s.drops.get(DropReason::LinkClosed) > 0, "{s}");
    }
}

#[test]
fn peer_shut_down_under_a_running_reader() {
    for mode in [DispatchMode::PerPacket, DispatchMode::Recvmmsg] {
        for how in [
            nix::sys::socket::Shutdown::Both,
            nix::sys::socket::Shutdown::Write,
        ] {
            let (ours, peer) = pair(SocketType::SeqPacket);
            let (e, log, delivered) = counting_reader(ours, mode);
            for i in 0..100 {
                fdlink_sys::io::write(peer.as_fd(), &tagged_ipv4(64, i)).unwrap();
            }
            // Let the reader be in its wait when the shutdown comes.
            std::thread::sleep(Duration::from_millis(20));
            nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(&peer), how).unwrap();
            wait_closed(&e, Duration::from_secs(5));
            e.wait();
            let s = e.stats();
            check_rx_accounting(&s).unwrap();
            assert_eq!(s.rx_packets, 100, "{mode} {how:?}: {s}");
            assert_eq!(delivered.load(Ordering::Relaxed), 100);
            assert_eq!(log.calls(), 1);
            assert_eq!(log.reason(), Some(CloseReason::PeerClosed));
            drop(peer);
        }
    }
}

/// A busy peer that keeps writing while the endpoint is detached and
/// re-attached: nothing read is lost between readers.
#[test]
fn detach_and_reattach_under_load_loses_nothing_read() {
    let (ours, peer) = pair(SocketType::SeqPacket);
    let log = ClosedLog::new();
    let e = Endpoint::new(Options::new().fd(ours).on_closed(ClosedLog::callback(&log))).unwrap();
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let writer = std::thread::spawn(move || {
        let mut written = 0u64;
        while !s2.load(Ordering::Relaxed) {
            if fdlink_sys::io::write(peer.as_fd(), &tagged_ipv4(200, written as u8)).is_ok() {
                written += 1;
            } else {
                std::thread::yield_now();
            }
        }
        drop(peer);
        written
    });
    for _ in 0..50 {
        let d = Arc::clone(&delivered);
        e.attach(Arc::new(move |_q: usize, b: &mut Batch| {
            d.fetch_add(b.len() as u64, Ordering::Relaxed);
        }))
        .unwrap();
        std::thread::sleep(Duration::from_millis(2));
        e.detach();
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let d = Arc::clone(&delivered);
    e.attach(Arc::new(move |_q: usize, b: &mut Batch| {
        d.fetch_add(b.len() as u64, Ordering::Relaxed);
    }))
    .unwrap();
    wait_closed(&e, Duration::from_secs(10));
    e.wait();
    let s = e.stats();
    check_rx_accounting(&s).unwrap();
    assert_eq!(s.rx_packets, written, "{s}");
    assert_eq!(delivered.load(Ordering::Relaxed), written);
    assert_eq!(log.calls(), 1);
}
