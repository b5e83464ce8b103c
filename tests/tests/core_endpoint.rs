//! fdlink-core against real socketpairs: framing, dispatch modes, drops,
//! closure, channels chosen by flow hash, and packet objects.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fdlink_core::{
    Batch, Capabilities, CloseReason, DispatchMode, DropReason, Endpoint, EtherType, MacAddr,
    Options, OptionsError, OutPacket, PacketIo, memory_pair,
};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_tests::packet::tagged_ipv4;

const OWN: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
const PEER: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);
const MODES: [DispatchMode; 2] = [DispatchMode::PerPacket, DispatchMode::Recvmmsg];
const TYPES: [SocketType; 2] = [SocketType::SeqPacket, SocketType::Datagram];

/// An IPv6 packet with a hop-by-hop and a destination-options header before
/// a UDP header.
fn ipv6_with_extensions(tag: u8) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[6] = 0; // next header: hop-by-hop
    p.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // -> destination options
    p.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // -> UDP
    p.extend_from_slice(&[0x30, 0x39, 0x00, 0x07, 0, 12, 0, 0, tag, tag, tag, tag]);
    let payload_len = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&payload_len.to_be_bytes());
    p
}

fn frame(dst: MacAddr, ethertype: EtherType, payload: &[u8]) -> Vec<u8> {
    let mut f = fdlink_core::link::ethernet::header(dst, PEER, ethertype).to_vec();
    f.extend_from_slice(payload);
    f
}

fn peer_write(peer: &OwnedFd, bytes: &[u8]) {
    fdlink_sys::io::write(peer.as_fd(), bytes).expect("peer write");
}

fn peer_read(peer: &OwnedFd) -> Vec<u8> {
    let mut buf = vec![0u8; 70000];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fdlink_sys::io::read(peer.as_fd(), &mut buf) {
            Ok(n) => return buf[..n].to_vec(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "peer read timed out");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("peer read: {e}"),
        }
    }
}

fn pair(ty: SocketType) -> (OwnedFd, OwnedFd) {
    let (ours, peer) = socketpair(ty).unwrap();
    fdlink_sys::fd::set_nonblocking(peer.as_fd()).unwrap();
    (ours, peer)
}

/// Pulls until `want` packets arrived (bounded in time).
fn pull(endpoint: &Endpoint, batch: &mut Batch, want: usize) -> Vec<(EtherType, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "received {} of {want}",
            got.len()
        );
        endpoint
            .wait_readable(Some(Duration::from_millis(50)))
            .unwrap();
        endpoint.recv_batch(batch).expect("endpoint open");
        got.extend(batch.iter().map(|p| (p.protocol(), p.network().to_vec())));
    }
    got
}

#[test]
fn header_length_follows_framing() {
    let (a, _pa) = pair(SocketType::SeqPacket);
    let ip = Endpoint::new(Options::new().fd(a)).unwrap();
    assert_eq!(ip.max_header_length(), 0);
    let (b, _pb) = pair(SocketType::SeqPacket);
    let eth = Endpoint::new(Options::new().fd(b).ethernet(true)).unwrap();
    assert_eq!(eth.max_header_length(), 14);
    let (c, _pc) = pair(SocketType::SeqPacket);
    let vnet = Endpoint::new(Options::new().fd(c).ethernet(true).vnet_header_len(10)).unwrap();
    assert_eq!(vnet.max_header_length(), 24);
}

#[test]
fn mtu_and_address_round_trip() {
    let (a, _p) = pair(SocketType::Datagram);
    let e = Endpoint::new(
        Options::new()
            .fd(a)
            .mtu(9000)
            .ethernet(true)
            .link_address(OWN),
    )
    .unwrap();
    assert_eq!(e.mtu(), 9000);
    assert_eq!(e.link_address(), Some(OWN));
    let (b, _q) = pair(SocketType::Datagram);
    let e = Endpoint::new(Options::new().fd(b).mtu(1280)).unwrap();
    assert_eq!((e.mtu(), e.link_address()), (1280, None));
}

#[test]
fn capability_bits_follow_options() {
    type SetOption = fn(Options) -> Options;
    let cases: [(SetOption, Capabilities); 4] = [
        (|o| o, Capabilities::empty()),
        (|o| o.ethernet(true), Capabilities::RESOLUTION_REQUIRED),
        // Super-packets leave whole only where frames carry virtio headers.
        (|o| o.vnet_header_len(10), Capabilities::GSO),
        (
            |o| o.vnet_header_len(10).gso_max_size(0),
            Capabilities::empty(),
        ),
    ];
    for (set, cap) in cases {
        let (a, _p) = pair(SocketType::SeqPacket);
        let e = Endpoint::new(set(Options::new().fd(a))).unwrap();
        assert_eq!(e.capabilities(), cap, "only {cap:?} expected");
    }
}

#[test]
fn gso_max_size_bounds_what_a_send_takes() {
    let (a, peer) = pair(SocketType::SeqPacket);
    let e = Endpoint::new(
        Options::new()
            .fd(a)
            .mtu(1500)
            .vnet_header_len(10)
            .gso_max_size(9000),
    )
    .unwrap();
    assert_eq!(e.gso_max_size(), 9000);
    let fits = tagged_ipv4(9000, 1);
    let too_big = tagged_ipv4(9001, 2);
    let out = e.send(&[OutPacket::ip(&fits), OutPacket::ip(&too_big)]);
    assert_eq!((out.sent, out.dropped), (1, 1));
    let s = e.stats();
    assert_eq!(s.tx_packets, 1);
    assert_eq!(s.drops.get(DropReason::Oversized), 1);
    let mut buf = vec![0u8; 10 + 9001];
    let got = fdlink_sys::io::read(peer.as_fd(), &mut buf).unwrap();
    assert_eq!(got, 10 + 9000, "the packet that fits, behind its header");

    // Without GSO, the MTU bounds every send.
    let (b, _q) = pair(SocketType::SeqPacket);
    let e = Endpoint::new(Options::new().fd(b).vnet_header_len(10).gso_max_size(0)).unwrap();
    let out = e.send(&[OutPacket::ip(&tagged_ipv4(1501, 3))]);
    assert_eq!((out.sent, out.dropped), (0, 1));
    assert_eq!(e.stats().drops.get(DropReason::Oversized), 1);
}

#[test]
fn empty_frames_are_refused_not_written() {
    // An empty write would read as end of file on the peer's SEQPACKET end.
    let (a, peer) = pair(SocketType::SeqPacket);
    let e = Endpoint::new(Options::new().fd(a)).unwrap();
    let p = tagged_ipv4(40, 1);
    let out = e.send(&[OutPacket::ip(&[]), OutPacket::ip(&p), OutPacket::frame(&[])]);
    assert_eq!((out.sent, out.dropped), (1, 2));
    let s = e.stats();
    assert_eq!(
        (s.tx_packets, s.drops.get(DropReason::InvalidFrame)),
        (1, 2)
    );
    let mut buf = [0u8; 64];
    assert_eq!(fdlink_sys::io::read(peer.as_fd(), &mut buf).unwrap(), 40);
}

#[test]
fn bad_option_combinations_are_typed_errors() {
    let err = |o: Options| Endpoint::new(o).unwrap_err();
    assert!(matches!(err(Options::new()), OptionsError::NoChannels));
    let fd = || pair(SocketType::SeqPacket).0;
    assert!(matches!(
        err(Options::new().fd(fd()).mtu(0)),
        OptionsError::InvalidMtu(0)
    ));
    assert!(matches!(
        err(Options::new().fd(fd()).mtu(70000)),
        OptionsError::InvalidMtu(_)
    ));
    assert!(matches!(
        err(Options::new().fd(fd()).link_address(OWN)),
        OptionsError::LinkAddressWithoutEthernet
    ));
    assert!(matches!(
        err(Options::new()
            .fd(fd())
            .ethernet(true)
            .link_address(MacAddr::BROADCAST)),
        OptionsError::MulticastLinkAddress(_)
    ));
    assert!(matches!(
        err(Options::new().fd(fd()).batch_size(0)),
        OptionsError::InvalidBatchSize(0)
    ));
    assert!(matches!(
        err(Options::new().fd(fd()).vnet_header_len(11)),
        OptionsError::InvalidVnetHeaderLen(11)
    ));
    for size in [1000, 65536] {
        assert!(matches!(
            err(Options::new().fd(fd()).mtu(1500).gso_max_size(size)),
            OptionsError::InvalidGsoMaxSize { mtu: 1500, .. }
        ));
    }
    assert!(matches!(
        err(Options::new().fd(fd()).receive_buffer_size(100)),
        OptionsError::ReceiveBufferTooSmall { size: 100, .. }
    ));
    let (stream, _s) = socketpair(SocketType::Stream).unwrap();
    assert!(matches!(
        err(Options::new().fd(stream)),
        OptionsError::NotPacketOriented { channel: 0 }
    ));
    let (pipe_r, _w) = std::io::pipe().unwrap();
    let e = err(Options::new()
        .fd(fd())
        .fd(pipe_r.into())
        .dispatch(DispatchMode::Recvmmsg));
    assert!(
        matches!(e, OptionsError::DispatchUnsupported { channel: 1, .. }),
        "{e}"
    );
}

#[test]
fn written_bytes_are_exact() {
    for ethernet in [false, true] {
        for len in [0usize, 100, 1000] {
            let (a, peer) = pair(SocketType::Datagram);
            let mut o = Options::new().fd(a);
            if ethernet {
                o = o.ethernet(true).link_address(OWN);
            }
            let e = Endpoint::new(o).unwrap();
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let out = OutPacket::new(EtherType::IPV4, &payload).to(PEER);
            if !ethernet && len == 0 {
                // Nothing to carry: refused, not written as an empty datagram.
                assert_eq!(e.send(&[out]).dropped, 1);
                assert_eq!(e.stats().drops.get(DropReason::InvalidFrame), 1);
                continue;
            }
            assert_eq!(e.send(&[out]).sent, 1);
            let wire = peer_read(&peer);
            if ethernet {
                assert_eq!(wire.len(), 14 + len);
                assert_eq!(
                    &wire[..14],
                    &fdlink_core::link::ethernet::header(PEER, OWN, EtherType::IPV4)
                );
                assert_eq!(&wire[14..], &payload[..]);
            } else {
                assert_eq!(wire, payload);
            }
            assert_eq!(
                e.stats().tx_bytes,
                (len + if ethernet { 14 } else { 0 }) as u64
            );
        }
    }
}

#[test]
fn explicit_source_mac_is_preserved() {
    let (a, peer) = pair(SocketType::Datagram);
    let e = Endpoint::new(Options::new().fd(a).ethernet(true).link_address(OWN)).unwrap();
    let other = MacAddr([0x02, 0xaa, 0, 0, 0, 9]);
    e.send(&[OutPacket::ip(&tagged_ipv4(20, 1)).to(PEER).from(other)]);
    let wire = peer_read(&peer);
    assert_eq!(&wire[6..12], &other.0);
}

#[test]
fn hashed_packet_leaves_on_hash_mod_channels() {
    let pairs: Vec<_> = (0..3).map(|_| pair(SocketType::Datagram)).collect();
    let (ours, peers): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
    let e = Endpoint::new(Options::new().fds(ours)).unwrap();
    for hash in [0u32, 1, 2, 3, 7, 11, u32::MAX] {
        let p = tagged_ipv4(40, hash as u8);
        assert_eq!(e.send(&[OutPacket::ip(&p).with_hash(hash)]).sent, 1);
        let want = hash as usize % 3;
        assert_eq!(peer_read(&peers[want]), p, "hash {hash} on channel {want}");
        for (i, other) in peers.iter().enumerate().filter(|(i, _)| *i != want) {
            let mut buf = [0u8; 64];
            let r = fdlink_sys::io::read(other.as_fd(), &mut buf);
            assert!(r.is_err(), "hash {hash} also appeared on channel {i}");
        }
    }
    // No hash: the first channel.
    let p = tagged_ipv4(20, 0xee);
    e.send(&[OutPacket::ip(&p)]);
    assert_eq!(peer_read(&peers[0]), p);
}

#[test]
fn peer_packets_arrive_with_their_protocol_in_every_mode() {
    for ty in TYPES {
        for mode in MODES {
            for ethernet in [false, true] {
                let (a, peer) = pair(ty);
                let mut o = Options::new().fd(a).dispatch(mode);
                if ethernet {
                    o = o.ethernet(true).link_address(OWN);
                }
                let e = Endpoint::new(o).unwrap();
                let v4 = tagged_ipv4(100, 4);
                let v6 = ipv6_with_extensions(6);
                let arp = vec![0u8; 28];
                let wrap = |t, p: &[u8]| {
                    if ethernet {
                        frame(OWN, t, p)
                    } else {
                        p.to_vec()
                    }
                };
                peer_write(&peer, &wrap(EtherType::IPV4, &v4));
                peer_write(&peer, &wrap(EtherType::IPV6, &v6));
                if ethernet {
                    peer_write(&peer, &frame(MacAddr::BROADCAST, EtherType::ARP, &arp));
                }
                let mut batch = e.new_batch();
                let want = if ethernet { 3 } else { 2 };
                let got = pull(&e, &mut batch, want);
                let ctx = format!("{ty:?} {mode} ethernet={ethernet}");
                assert_eq!(got[0], (EtherType::IPV4, v4), "{ctx}");
                assert_eq!(got[1], (EtherType::IPV6, v6), "{ctx}");
                if ethernet {
                    assert_eq!(got[2], (EtherType::ARP, arp), "{ctx}");
                }
                let s = e.stats();
                assert_eq!(
                    (s.frames_read, s.rx_packets, s.drops.total()),
                    (want as u64, want as u64, 0),
                    "{ctx}"
                );
            }
        }
    }
}

#[test]
fn bad_frames_are_counted_and_the_next_good_one_arrives() {
    for ty in TYPES {
        for mode in MODES {
            let ctx = format!("{ty:?} {mode}");
            // IP framing: unknown version nibble, short IPv4 header.
            let (a, peer) = pair(ty);
            let e = Endpoint::new(Options::new().fd(a).dispatch(mode)).unwrap();
            peer_write(&peer, &[0x50; 40]);
            peer_write(&peer, &[0x45; 10]);
            let good = tagged_ipv4(60, 9);
            peer_write(&peer, &good);
            let mut batch = e.new_batch();
            assert_eq!(
                pull(&e, &mut batch, 1),
                vec![(EtherType::IPV4, good.clone())],
                "{ctx}"
            );
            let s = e.stats();
            assert_eq!(s.drops.get(DropReason::UnknownProtocol), 1, "{ctx}");
            assert_eq!(s.drops.get(DropReason::ShortFrame), 1, "{ctx}");
            assert_eq!(s.frames_read, s.rx_packets + s.drops.inbound(), "{ctx}");

            // Ethernet framing: a runt and a foreign unicast destination.
            let (a, peer) = pair(ty);
            let e = Endpoint::new(
                Options::new()
                    .fd(a)
                    .dispatch(mode)
                    .ethernet(true)
                    .link_address(OWN),
            )
            .unwrap();
            peer_write(&peer, &[0xff; 9]);
            peer_write(&peer, &frame(PEER, EtherType::IPV4, &good));
            peer_write(&peer, &frame(OWN, EtherType::IPV4, &good));
            assert_eq!(
                pull(&e, &mut batch, 1),
                vec![(EtherType::IPV4, good.clone())],
                "{ctx}"
            );
            let s = e.stats();
            assert_eq!(s.drops.get(DropReason::ShortFrame), 1, "{ctx}");
            assert_eq!(s.drops.get(DropReason::ForeignMac), 1, "{ctx}");
        }
    }
}

#[test]
fn oversized_packet_is_counted_as_truncated_never_delivered_cut() {
    for ty in TYPES {
        for mode in MODES {
            let (a, peer) = pair(ty);
            let e = Endpoint::new(Options::new().fd(a).dispatch(mode).mtu(1000)).unwrap();
            peer_write(&peer, &tagged_ipv4(5000, 1));
            peer_write(&peer, &tagged_ipv4(1001, 2));
            let good = tagged_ipv4(1000, 3);
            peer_write(&peer, &good);
            let mut batch = e.new_batch();
            let got = pull(&e, &mut batch, 1);
            assert_eq!(got, vec![(EtherType::IPV4, good)], "{ty:?} {mode}");
            assert_eq!(
                e.stats().drops.get(DropReason::Truncated),
                2,
                "{ty:?} {mode}"
            );
        }
    }
}

fn counting_callback() -> (
    Arc<Mutex<Vec<CloseReason>>>,
    impl FnOnce(CloseReason) + Send + 'static,
) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = Arc::clone(&calls);
    (calls, move |r| c.lock().unwrap().push(r))
}

#[test]
fn seqpacket_peer_close_calls_back_exactly_once_when_pulling() {
    for mode in MODES {
        let (a, peer) = pair(SocketType::SeqPacket);
        let (calls, cb) = counting_callback();
        let e = Endpoint::new(Options::new().fd(a).dispatch(mode).on_closed(cb)).unwrap();
        let last = tagged_ipv4(40, 7);
        peer_write(&peer, &last);
        drop(peer);
        let mut batch = e.new_batch();
        // What the peer sent before closing is still delivered.
        assert_eq!(e.recv_batch(&mut batch).unwrap(), 1, "{mode}");
        assert_eq!(batch.get(0).unwrap().network(), &last[..]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while e.recv_batch(&mut batch).is_ok() {
            assert!(Instant::now() < deadline, "{mode}: closure never reported");
        }
        for _ in 0..3 {
            assert!(e.recv_batch(&mut batch).is_err());
        }
        assert_eq!(
            *calls.lock().unwrap(),
            vec![CloseReason::PeerClosed],
            "{mode}"
        );
        assert!(e.is_closed());
    }
}

#[test]
fn seqpacket_peer_close_ends_readers_and_calls_back_once() {
    for mode in MODES {
        let (a, peer) = pair(SocketType::SeqPacket);
        let (calls, cb) = counting_callback();
        let e = Endpoint::new(Options::new().fd(a).dispatch(mode).on_closed(cb)).unwrap();
        let delivered = Arc::new(AtomicUsize::new(0));
        let d = Arc::clone(&delivered);
        e.attach(Arc::new(move |_q: usize, b: &mut Batch| {
            d.fetch_add(b.len(), Ordering::SeqCst);
        }))
        .unwrap();
        for i in 0..10 {
            peer_write(&peer, &tagged_ipv4(64, i));
        }
        drop(peer);
        // wait() returns only because the reader ended on the closure: it
        // would block forever on a spinning reader.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                e.wait();
                done_tx.send(()).unwrap();
            });
            done_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("reader did not end on peer close");
        });
        assert_eq!(delivered.load(Ordering::SeqCst), 10, "{mode}");
        assert_eq!(
            *calls.lock().unwrap(),
            vec![CloseReason::PeerClosed],
            "{mode}"
        );
    }
}

#[test]
fn datagram_peer_close_is_seen_on_send_and_calls_back_once() {
    // A SOCK_DGRAM peer's close is invisible to reads (they only return
    // EAGAIN); the first send after it is refused, which closes the link.
    for mode in MODES {
        let (a, peer) = pair(SocketType::Datagram);
        let (calls, cb) = counting_callback();
        let e = Endpoint::new(Options::new().fd(a).dispatch(mode).on_closed(cb)).unwrap();
        drop(peer);
        let p = tagged_ipv4(20, 1);
        let out = e.send(&[OutPacket::ip(&p), OutPacket::ip(&p)]);
        assert_eq!((out.sent, out.dropped), (0, 2), "{mode}");
        e.send(&[OutPacket::ip(&p)]);
        assert_eq!(
            *calls.lock().unwrap(),
            vec![CloseReason::PeerClosed],
            "{mode}"
        );
        assert_eq!(e.stats().drops.get(DropReason::LinkClosed), 3, "{mode}");
    }
}

#[test]
fn detach_is_prompt_and_reattach_works() {
    let (a, peer) = pair(SocketType::SeqPacket);
    let e = Endpoint::new(Options::new().fd(a)).unwrap();
    let delivered = Arc::new(AtomicUsize::new(0));
    let make = |d: Arc<AtomicUsize>| {
        Arc::new(move |_q: usize, b: &mut Batch| {
            d.fetch_add(b.len(), Ordering::SeqCst);
        })
    };
    e.attach(make(Arc::clone(&delivered))).unwrap();
    e.attach(make(Arc::clone(&delivered))).unwrap(); // no-op
    peer_write(&peer, &tagged_ipv4(20, 1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while delivered.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    e.detach();
    assert!(!e.is_attached());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "detach took {:?}",
        t.elapsed()
    );
    e.attach(make(Arc::clone(&delivered))).unwrap();
    peer_write(&peer, &tagged_ipv4(20, 2));
    while delivered.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        2,
        "exactly one reader per channel"
    );
}

#[test]
fn endpoint_runs_over_the_in_memory_pair() {
    let (ours, theirs) = memory_pair(64);
    let (calls, cb) = counting_callback();
    let e = Endpoint::new(
        Options::new()
            .packet_io(ours)
            .ethernet(true)
            .link_address(OWN)
            .on_closed(cb),
    )
    .unwrap();
    let good = tagged_ipv4(200, 5);
    theirs.send(&[&frame(OWN, EtherType::IPV4, &good)]).unwrap();
    theirs
        .send(&[&frame(PEER, EtherType::IPV4, &good)])
        .unwrap();
    theirs.send(&[&tagged_ipv4(3000, 1)]).unwrap();
    theirs.send(&[&frame(OWN, EtherType::IPV4, &good)]).unwrap();
    let mut batch = e.new_batch();
    let got = pull(&e, &mut batch, 2);
    assert_eq!(
        got,
        vec![
            (EtherType::IPV4, good.clone()),
            (EtherType::IPV4, good.clone())
        ]
    );
    let s = e.stats();
    assert_eq!(s.drops.get(DropReason::ForeignMac), 1);
    assert_eq!(s.drops.get(DropReason::Truncated), 1);
    assert_eq!(e.send(&[OutPacket::ip(&good).to(PEER)]).sent, 1);
    let mut buf = [0u8; 2048];
    let n = theirs.recv(&mut buf).unwrap();
    assert_eq!(&buf[14..n], &good[..]);
    drop(theirs);
    assert!(e.recv_batch(&mut batch).is_err());
    assert_eq!(*calls.lock().unwrap(), vec![CloseReason::PeerClosed]);
}

/// A user-supplied packet object: a queue of prepared packets and a log of
/// what was sent, with no descriptor anywhere.
#[derive(Default)]
struct Scripted {
    inbound: Mutex<std::collections::VecDeque<Vec<u8>>>,
    sent: Mutex<Vec<Vec<u8>>>,
}

impl PacketIo for Scripted {
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let p = self
            .inbound
            .lock()
            .unwrap()
            .pop_front()
            .ok_or(std::io::ErrorKind::WouldBlock)?;
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        Ok(p.len())
    }
    fn send(&self, parts: &[&[u8]]) -> std::io::Result<()> {
        self.sent.lock().unwrap().push(parts.concat());
        Ok(())
    }
    fn wait_readable(&self, timeout: Duration) -> std::io::Result<bool> {
        if self.inbound.lock().unwrap().is_empty() {
            std::thread::sleep(timeout.min(Duration::from_millis(1)));
        }
        Ok(!self.inbound.lock().unwrap().is_empty())
    }
}

#[test]
fn endpoint_runs_over_a_user_supplied_object() {
    let obj = Arc::new(Scripted::default());
    obj.inbound.lock().unwrap().extend([
        tagged_ipv4(30, 1),
        vec![0x70; 30],
        ipv6_with_extensions(2),
    ]);
    let e = Endpoint::new(Options::new().packet_io(Arc::clone(&obj))).unwrap();
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let d = Arc::clone(&delivered);
    e.attach(Arc::new(move |q: usize, b: &mut Batch| {
        d.lock()
            .unwrap()
            .extend(b.iter().map(|p| (q, p.protocol())));
    }))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while delivered.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "object packets not delivered");
        std::thread::sleep(Duration::from_millis(1));
    }
    e.detach();
    assert_eq!(
        *delivered.lock().unwrap(),
        vec![(0, EtherType::IPV4), (0, EtherType::IPV6)]
    );
    assert_eq!(e.stats().drops.get(DropReason::UnknownProtocol), 1);
    e.send(&[OutPacket::ip(&tagged_ipv4(20, 3))]);
    assert_eq!(*obj.sent.lock().unwrap(), vec![tagged_ipv4(20, 3)]);
}

#[test]
fn full_send_buffer_waits_then_counts_drops() {
    let (a, _peer) = pair(SocketType::Datagram);
    let e = Endpoint::new(Options::new().fd(a).send_timeout(Duration::from_millis(20))).unwrap();
    let p = tagged_ipv4(1400, 1);
    let packets: Vec<_> = (0..2000).map(|_| OutPacket::ip(&p)).collect();
    let out = e.send(&packets);
    assert_eq!(out.sent + out.dropped, 2000);
    assert!(out.sent > 0 && out.dropped > 0, "{out:?}");
    assert_eq!(
        e.stats().drops.get(DropReason::SendBufferFull),
        out.dropped as u64
    );
}
