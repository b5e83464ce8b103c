//! Nothing is lost at closure: a peer writes a burst of 10,000 packets and
//! closes at once; every packet it queued is delivered, in order, before
//! the closure is reported — in each dispatch mode, on SEQPACKET and DGRAM
//! socketpairs and packet objects, pulled and pushed.
//!
//! The endpoint first sends the peer a few packets the peer never reads.
//! A SEQPACKET peer that closes with unread packets leaves `ECONNRESET`
//! pending on our socket although its own packets still wait for us: the
//! read that meets it must read on, not end the channel.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fdlink_core::{
    Batch, CloseReason, DispatchMode, Endpoint, MemoryPacketIo, Options, OutPacket, PacketIo,
    memory_pair,
};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_tests::faults::{ClosedLog, check_rx_accounting};
use fdlink_tests::packet::tagged_ipv4;

const BURST: u64 = 10_000;
/// Packets the endpoint sends the peer, which it never reads.
const UNREAD: usize = 8;

/// Packet `i` of the burst: its number in bytes 4..12, so order and loss
/// show.
fn numbered(i: u64) -> Vec<u8> {
    let mut p = tagged_ipv4(64 + (i % 7) as usize * 50, 0x5a);
    p[4..12].copy_from_slice(&i.to_be_bytes());
    p
}

fn number_of(packet: &[u8]) -> u64 {
    u64::from_be_bytes(packet[4..12].try_into().expect("numbered packet"))
}

/// Where the burst comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Socket(SocketType),
    Object,
}

/// How the endpoint receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receive {
    Pull,
    Push,
}

/// Checks that packets arrive numbered 0, 1, 2, ... and counts them.
#[derive(Debug, Default)]
struct InOrder {
    next: AtomicU64,
}

impl InOrder {
    fn take(&self, batch: &Batch) {
        for p in batch.iter() {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            assert_eq!(number_of(p.network()), n, "packets out of order or lost");
        }
    }

    fn count(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

/// Writes the burst from a thread, blocking when the peer's queue is full
/// (as a real peer would), then closes its end at once.
fn burst_then_close(peer: Peer, fd: Option<OwnedFd>, object: Option<MemoryPacketIo>) {
    match peer {
        Peer::Socket(_) => {
            let fd = fd.expect("socket peer");
            for i in 0..BURST {
                // The peer end is blocking: a full queue waits for room.
                fdlink_sys::io::write(fd.as_fd(), &numbered(i)).expect("peer write");
            }
            drop(fd);
        }
        Peer::Object => {
            let io = object.expect("object peer");
            for i in 0..BURST {
                let p = numbered(i);
                let deadline = Instant::now() + Duration::from_secs(10);
                while let Err(e) = io.send(&[&p]) {
                    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
                    assert!(Instant::now() < deadline, "the reader stopped reading");
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            drop(io);
        }
    }
}

fn run_case(peer: Peer, mode: DispatchMode, receive: Receive) {
    let case = format!("{peer:?} {mode} {receive:?}");
    let log = ClosedLog::new();
    let mut options = Options::new()
        .dispatch(mode)
        .on_closed(ClosedLog::callback(&log));
    let (mut peer_fd, mut peer_object) = (None, None);
    match peer {
        Peer::Socket(ty) => {
            let (ours, theirs) = socketpair(ty).unwrap();
            options = options.fd(ours);
            peer_fd = Some(theirs);
        }
        Peer::Object => {
            let (ours, theirs) = memory_pair(256);
            options = options.packet_io(ours);
            peer_object = Some(theirs);
        }
    }
    let e = Arc::new(Endpoint::new(options).unwrap());
    let unread = tagged_ipv4(100, 1);
    let out = e.send(&vec![OutPacket::ip(&unread); UNREAD]);
    assert_eq!(out.sent, UNREAD, "{case}");

    let seen = Arc::new(InOrder::default());
    if receive == Receive::Push {
        let s = Arc::clone(&seen);
        e.attach(Arc::new(move |_q: usize, b: &mut Batch| s.take(b)))
            .unwrap();
    }
    let writer = std::thread::spawn(move || burst_then_close(peer, peer_fd, peer_object));

    // A SOCK_DGRAM peer's closure cannot be seen by reads (they only ever
    // return EAGAIN): everything is read, then the first send finds it.
    let reads_see_closure = peer != Peer::Socket(SocketType::Datagram);
    let deadline = Instant::now() + Duration::from_secs(30);
    match receive {
        Receive::Pull => {
            let mut batch = e.new_batch();
            loop {
                assert!(
                    Instant::now() < deadline,
                    "{case}: {} of {BURST} and no closure: {}",
                    seen.count(),
                    e.stats()
                );
                if !reads_see_closure && seen.count() == BURST {
                    break;
                }
                if let Err(closed) = e.wait_readable(Some(Duration::from_millis(100))) {
                    // Closed: nothing may be left to read.
                    assert_eq!(e.recv_batch(&mut batch), Err(closed), "{case}");
                    break;
                }
                match e.recv_batch(&mut batch) {
                    Ok(_) => seen.take(&batch),
                    Err(_) => break,
                }
            }
        }
        Receive::Push => {
            while (reads_see_closure && !e.is_closed())
                || (!reads_see_closure && seen.count() < BURST)
            {
                assert!(
                    Instant::now() < deadline,
                    "{case}: {} of {BURST} and no closure: {}",
                    seen.count(),
                    e.stats()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    writer.join().unwrap();
    assert_eq!(
        seen.count(),
        BURST,
        "{case}: every packet queued before the closure"
    );
    if !reads_see_closure {
        let out = e.send(&[OutPacket::ip(&unread)]);
        assert_eq!(
            (out.sent, out.dropped),
            (0, 1),
            "{case}: the send finds the closure"
        );
        assert!(e.is_closed(), "{case}");
    }
    e.wait();
    let s = e.stats();
    check_rx_accounting(&s).unwrap();
    assert_eq!(s.rx_packets, BURST, "{case}: {s}");
    assert_eq!(s.frames_read, BURST, "{case}: {s}");
    assert_eq!(log.calls(), 1, "{case}: closure reported once");
    assert_eq!(log.reason(), Some(CloseReason::PeerClosed), "{case}");
}

#[test]
fn seqpacket_burst_then_close_delivers_everything() {
    for mode in [DispatchMode::PerPacket, DispatchMode::Recvmmsg] {
        for receive in [Receive::Pull, Receive::Push] {
            run_case(Peer::Socket(SocketType::SeqPacket), mode, receive);
        }
    }
}

#[test]
fn dgram_burst_then_close_delivers_everything() {
    for mode in [DispatchMode::PerPacket, DispatchMode::Recvmmsg] {
        for receive in [Receive::Pull, Receive::Push] {
            run_case(Peer::Socket(SocketType::Datagram), mode, receive);
        }
    }
}

#[test]
fn packet_object_burst_then_close_delivers_everything() {
    for receive in [Receive::Pull, Receive::Push] {
        run_case(Peer::Object, DispatchMode::PerPacket, receive);
    }
}

/// A send that finds the peer gone refuses the sends after it, but the
/// packets the peer queued before it closed are still read, and the
/// closure is reported when the reads reach its end.
#[test]
fn a_send_that_finds_the_peer_gone_loses_nothing_it_queued() {
    for receive in [Receive::Pull, Receive::Push] {
        let (ours, theirs) = socketpair(SocketType::SeqPacket).unwrap();
        let log = ClosedLog::new();
        let e =
            Endpoint::new(Options::new().fd(ours).on_closed(ClosedLog::callback(&log))).unwrap();
        const QUEUED: u64 = 100;
        for i in 0..QUEUED {
            fdlink_sys::io::write(theirs.as_fd(), &numbered(i)).unwrap();
        }
        drop(theirs);
        let p = tagged_ipv4(100, 1);
        let out = e.send(&[OutPacket::ip(&p), OutPacket::ip(&p)]);
        assert_eq!((out.sent, out.dropped), (0, 2), "{receive:?}");
        assert_eq!(
            e.stats().drops.get(fdlink_core::DropReason::LinkClosed),
            2,
            "{receive:?}"
        );
        assert!(!e.is_closed(), "{receive:?}: packets still wait to be read");
        let seen = Arc::new(InOrder::default());
        let deadline = Instant::now() + Duration::from_secs(10);
        match receive {
            Receive::Pull => {
                let mut batch = e.new_batch();
                while e.recv_batch(&mut batch).is_ok() {
                    seen.take(&batch);
                    assert!(Instant::now() < deadline, "no closure");
                }
            }
            Receive::Push => {
                let s = Arc::clone(&seen);
                e.attach(Arc::new(move |_q: usize, b: &mut Batch| s.take(b)))
                    .unwrap();
                e.wait();
            }
        }
        assert_eq!(seen.count(), QUEUED, "{receive:?}");
        assert_eq!(log.calls(), 1);
        assert_eq!(log.reason(), Some(CloseReason::PeerClosed));
        assert_eq!(e.stats().rx_packets, QUEUED);
    }
}
