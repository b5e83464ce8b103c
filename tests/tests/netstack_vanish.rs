//! A peer that vanishes — stops answering without a FIN or a reset —
//! ends its streams with an error and frees their sockets: keep-alive
//! probes go unanswered (an idle connection), or the data sent is never
//! acknowledged (a busy one), and the netstack gives up after
//! [`NetstackConfig::tcp_timeout`].
//!
//! The peer is the test itself, writing raw IP packets into a
//! `SOCK_SEQPACKET` socketpair: no privileges needed. Every wait is
//! bounded.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use fdlink_core::Link;
use fdlink_smoltcp::netstack::{Netstack, NetstackConfig, TcpStream};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_tests::netns::wait_readable;
use fdlink_tests::packet::{parse_tcp, tcp_segment};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const LIMIT: Duration = Duration::from_secs(10);

/// A netstack that probes idle connections every 200 ms and gives up on
/// a silent peer after 1 s, with one connection from a raw peer that
/// answered the handshake and then falls silent.
fn silent_peer(port: u16) -> (Netstack, TcpStream, OwnedFd) {
    let (ours, peer_end) = socketpair(SocketType::SeqPacket).expect("socketpair");
    let mut config = NetstackConfig::default();
    config.keep_alive = Some(Duration::from_millis(200));
    config.tcp_timeout = Some(Duration::from_secs(1));
    let netstack = Netstack::open(Link::socket(ours), config).expect("netstack");
    let peer: SocketAddr = format!("10.0.0.1:{port}").parse().unwrap();
    let dst: SocketAddr = "10.9.9.9:443".parse().unwrap();
    let write = |p: &[u8]| {
        let n = fdlink_sys::io::write(peer_end.as_fd(), p).expect("write a packet");
        assert_eq!(n, p.len());
    };
    write(&tcp_segment(peer, dst, 5000, 0, SYN, &[]));
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + LIMIT;
    let synack = loop {
        assert!(Instant::now() < deadline, "no SYN-ACK");
        if !wait_readable(peer_end.as_fd(), LIMIT).unwrap_or(false) {
            continue;
        }
        let n = fdlink_sys::io::read(peer_end.as_fd(), &mut buf).expect("read");
        if let Some(t) = parse_tcp(&buf[..n])
            && t.has(SYN | ACK)
        {
            break t;
        }
    };
    write(&tcp_segment(
        peer,
        dst,
        5001,
        synack.seq.wrapping_add(1),
        ACK,
        &[],
    ));
    let stream = netstack
        .accept_timeout(LIMIT)
        .expect("netstack open")
        .expect("the connection");
    // From here on the peer answers nothing (its end stays open).
    (netstack, stream, peer_end)
}

/// Waits until the netstack holds no connection, and returns how long
/// that took.
fn wait_freed(netstack: &Netstack) -> Duration {
    let start = Instant::now();
    while netstack.stats().tcp_active != 0 {
        assert!(
            start.elapsed() < LIMIT,
            "the socket was not freed: {}",
            netstack.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn an_idle_connection_to_a_vanished_peer_ends_with_an_error() {
    let (netstack, mut stream, _peer_end) = silent_peer(7201);
    stream.set_read_timeout(Some(LIMIT));
    let started = Instant::now();
    let err = stream
        .read(&mut [0u8; 16])
        .expect_err("a read on a connection whose peer vanished");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(
        started.elapsed() < LIMIT,
        "ended by the read timeout, not by the netstack"
    );
    drop(stream);
    wait_freed(&netstack);
    assert_eq!(netstack.stats().tcp_reset, 1, "{}", netstack.stats());
}

#[test]
fn a_busy_connection_to_a_vanished_peer_ends_with_an_error() {
    let (netstack, mut stream, _peer_end) = silent_peer(7202);
    stream.set_write_timeout(Some(LIMIT));
    stream.set_read_timeout(Some(LIMIT));
    // Never acknowledged: the netstack retransmits, then gives up.
    stream.write_all(&[0xabu8; 4096]).expect("queued");
    let err = stream
        .read(&mut [0u8; 16])
        .expect_err("a read on a connection whose peer vanished");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let err = stream
        .write(&[1])
        .expect_err("a write on the ended connection");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    drop(stream);
    wait_freed(&netstack);
    assert_eq!(netstack.stats().tcp_reset, 1, "{}", netstack.stats());
}
