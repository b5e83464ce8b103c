//! Soak: a flood at full rate in both directions over a SEQPACKET
//! socketpair (a peer thread writing as fast as it can into a push reader,
//! the endpoint sending as fast as it can to a draining peer) for
//! `FDLINK_SOAK_SECS` seconds (2 by default: CI; `cargo xtask fuzz --soak`
//! runs 60). Peak memory (`VmHWM`) stays bounded, and at the end every
//! packet written was read and delivered, the closure reported once.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fdlink_core::{Batch, CloseReason, Endpoint, Options, OutPacket};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_tests::faults::{ClosedLog, check_rx_accounting, memory_kib, under_valgrind};
use fdlink_tests::packet::tagged_ipv4;

#[test]
fn flood_keeps_peak_memory_bounded() {
    let secs: u64 = std::env::var("FDLINK_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let (ours, peer) = socketpair(SocketType::SeqPacket).unwrap();
    fdlink_sys::fd::set_nonblocking(peer.as_fd()).unwrap();
    let peer = Arc::new(peer);
    let log = ClosedLog::new();
    let e = Arc::new(
        Endpoint::new(
            Options::new()
                .fd(ours)
                .dispatch(fdlink_core::DispatchMode::Recvmmsg)
                .send_timeout(Duration::from_millis(5))
                .on_closed(ClosedLog::callback(&log)),
        )
        .unwrap(),
    );
    let delivered = Arc::new(AtomicU64::new(0));
    let d = Arc::clone(&delivered);
    e.attach(Arc::new(move |_q: usize, b: &mut Batch| {
        d.fetch_add(b.len() as u64, Ordering::Relaxed);
    }))
    .unwrap();
    let (_, hwm_before) = memory_kib().unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    // Peer → endpoint.
    let (p2, s2) = (Arc::clone(&peer), Arc::clone(&stop));
    let writer = std::thread::spawn(move || {
        let packets: Vec<Vec<u8>> = (0..16).map(|i| tagged_ipv4(64 + i * 90, i as u8)).collect();
        let mut written = 0u64;
        while !s2.load(Ordering::Relaxed) {
            let p = &packets[(written % 16) as usize];
            if fdlink_sys::io::write(p2.as_fd(), p).is_ok() {
                written += 1;
            } else {
                std::thread::yield_now();
            }
        }
        written
    });
    // Endpoint → peer, drained by the peer.
    let (p3, s3) = (Arc::clone(&peer), Arc::clone(&stop));
    let drainer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        let mut read = 0u64;
        while !s3.load(Ordering::Relaxed) {
            match fdlink_sys::io::read(p3.as_fd(), &mut buf) {
                Ok(_) => read += 1,
                Err(_) => std::thread::yield_now(),
            }
        }
        read
    });
    let p = tagged_ipv4(1200, 9);
    let burst: Vec<OutPacket<'_>> = (0..32).map(|_| OutPacket::ip(&p)).collect();
    let (mut sent, mut dropped) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let o = e.send(&burst);
        sent += o.sent as u64;
        dropped += o.dropped as u64;
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let _ = drainer.join().unwrap();
    let (rss, hwm_after) = memory_kib().unwrap();
    drop(peer);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !e.is_closed() {
        assert!(Instant::now() < deadline, "no closure: {}", e.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    e.wait();
    let s = e.stats();
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "soak-report flood {secs}s: in {written} pkts ({:.0}/s), out {sent} sent + {dropped} dropped ({:.0}/s), VmHWM {hwm_before} -> {hwm_after} KiB, VmRSS {rss} KiB",
            written as f64 / secs as f64,
            sent as f64 / secs as f64,
        );
    }
    check_rx_accounting(&s).unwrap();
    assert_eq!(s.rx_packets, written, "{s}");
    assert_eq!(delivered.load(Ordering::Relaxed), written);
    assert_eq!(s.tx_packets, sent);
    assert_eq!(s.drops.outbound(), dropped);
    assert_eq!(log.calls(), 1);
    assert_eq!(log.reason(), Some(CloseReason::PeerClosed));
    assert!(
        under_valgrind() || hwm_after <= hwm_before + 64 * 1024,
        "peak memory grew from {hwm_before} to {hwm_after} KiB"
    );
}
