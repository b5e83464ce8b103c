//! Segments smoltcp mishandles, which the netstack rewrites before it
//! sees them:
//!
//! - A connection whose receive window is closed still takes the peer's
//!   acknowledgments. smoltcp, left alone, drops a segment outside its
//!   window whole, acknowledgment included; an echo server whose window
//!   closed while it waits for room to write then waits for ever once one
//!   of the peer's segments was lost (the peer's later segments, its bare
//!   ACKs included, all start past the window). The netstack hands smoltcp
//!   such an acknowledgment again as a bare ACK it accepts
//!   (`NetstackStats::tcp_acks_salvaged`).
//! - A FIN behind data that does not all fit the window does not end the
//!   stream early. smoltcp, left alone, takes the part of the data inside
//!   the window and the FIN too: the application reads an end of stream a
//!   few bytes short (a peer filling a window whose scaled edge moved back
//!   sends exactly that).
//!
//! The peer is the test itself, writing raw IP packets into a
//! `SOCK_SEQPACKET` socketpair: no privileges needed. Every wait is
//! bounded.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use fdlink_core::Link;
use fdlink_smoltcp::netstack::{Netstack, NetstackConfig};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_tests::netns::wait_readable;
use fdlink_tests::packet::{TcpSeg, parse_tcp, tcp_segment};
use std::os::fd::{AsFd, OwnedFd};

const LIMIT: Duration = Duration::from_secs(10);
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

fn send(fd: &OwnedFd, packet: &[u8]) {
    let n = fdlink_sys::io::write(fd.as_fd(), packet).expect("write a packet");
    assert_eq!(n, packet.len());
}

/// The next TCP segment from `from` to `to` within `timeout`.
fn next_segment(
    fd: &OwnedFd,
    from: SocketAddr,
    to: SocketAddr,
    timeout: Duration,
) -> Option<(TcpSeg, usize)> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_readable(fd.as_fd(), left).unwrap_or(false) {
            return None;
        }
        let n = fdlink_sys::io::read(fd.as_fd(), &mut buf).expect("read a packet");
        if let Some(t) = parse_tcp(&buf[..n])
            && SocketAddr::new(t.src, t.sport) == from
            && SocketAddr::new(t.dst, t.dport) == to
        {
            let len = t.payload_range.len();
            return Some((t, len));
        }
    }
}

#[test]
fn acknowledgments_reach_a_connection_whose_window_is_closed() {
    let (ours, peer_end) = socketpair(SocketType::SeqPacket).expect("socketpair");
    // 1 KiB in smoltcp and 1 KiB in the ring each way: the window closes
    // after 2 KiB the application does not read.
    let netstack = Netstack::open(
        Link::socket(ours),
        NetstackConfig::default().buffers(1024, 1024),
    )
    .expect("netstack");
    let (peer, dst) = (
        "10.0.0.1:7100".parse::<SocketAddr>().unwrap(),
        "10.9.9.9:80".parse::<SocketAddr>().unwrap(),
    );

    // Handshake.
    send(&peer_end, &tcp_segment(peer, dst, 1000, 0, SYN, &[]));
    let (synack, _) = next_segment(&peer_end, dst, peer, LIMIT).expect("a SYN-ACK");
    assert!(synack.has(SYN | ACK));
    let mut peer_seq = 1001u32;
    let their_first = synack.seq.wrapping_add(1);
    send(
        &peer_end,
        &tcp_segment(peer, dst, peer_seq, their_first, ACK, &[]),
    );
    let stream = netstack
        .accept_timeout(LIMIT)
        .expect("netstack open")
        .expect("the connection");

    // The application writes 3 KiB: 1 KiB goes to smoltcp (and out), 1 KiB
    // waits in the ring, the last 1 KiB waits for room.
    let (done_tx, done_rx) = mpsc::channel();
    let writer = {
        let mut stream = stream.try_clone().expect("clone");
        thread::spawn(move || {
            stream.set_write_timeout(Some(LIMIT));
            let r = stream.write_all(&[0x77u8; 3072]);
            let _ = done_tx.send(());
            r
        })
    };

    // The peer fills the netstack's receive side, never acknowledging the
    // netstack's data; it reads what the netstack sends meanwhile.
    let mut their_end = their_first;
    let mut window_closed = false;
    for _ in 0..16 {
        send(
            &peer_end,
            &tcp_segment(peer, dst, peer_seq, their_first, ACK | PSH, &[0x55u8; 512]),
        );
        // The netstack's answer to it: data (ours to note) and an ACK.
        let mut acked = None;
        while let Some((t, len)) = next_segment(&peer_end, dst, peer, Duration::from_millis(300)) {
            their_end = their_end.max(t.seq.wrapping_add(len as u32));
            if t.has(ACK) {
                acked = Some((t.ack, t.window));
            }
        }
        let (ack, window) = acked.expect("the netstack acknowledges");
        peer_seq = ack;
        if window == 0 {
            window_closed = true;
            break;
        }
    }
    assert!(window_closed, "the netstack's window never closed");
    assert!(
        done_rx.try_recv().is_err(),
        "the writer must be waiting for room"
    );
    assert_eq!(netstack.stats().tcp_acks_salvaged, 0);

    // A 19-byte segment the window cannot take (as if one sent in a
    // window that closed since), then the peer's bare ACK of everything
    // the netstack sent, which starts 19 bytes past the window.
    send(
        &peer_end,
        &tcp_segment(peer, dst, peer_seq, their_first, ACK | PSH, &[0x66u8; 19]),
    );
    send(
        &peer_end,
        &tcp_segment(peer, dst, peer_seq.wrapping_add(19), their_end, ACK, &[]),
    );

    // The acknowledgment frees smoltcp's send buffer: the writer finishes.
    let deadline = Instant::now() + LIMIT;
    while done_rx.try_recv().is_err() {
        assert!(
            Instant::now() < deadline,
            "the acknowledgment was dropped: the writer still waits ({})",
            netstack.stats()
        );
        // Keep reading what the netstack sends (it retransmits).
        let _ = next_segment(&peer_end, dst, peer, Duration::from_millis(20));
    }
    writer.join().expect("writer").expect("the whole write");
    assert_eq!(
        netstack.stats().tcp_acks_salvaged,
        1,
        "{}",
        netstack.stats()
    );
    drop(stream);
}

/// A netstack with 1 KiB buffers each way and one connection from the raw
/// peer, established; returns the peer's next sequence number and the
/// netstack's.
fn connected(
    port: u16,
) -> (
    Netstack,
    fdlink_smoltcp::netstack::TcpStream,
    OwnedFd,
    SocketAddr,
    SocketAddr,
    u32,
    u32,
) {
    let (ours, peer_end) = socketpair(SocketType::SeqPacket).expect("socketpair");
    let netstack = Netstack::open(
        Link::socket(ours),
        NetstackConfig::default().buffers(1024, 1024),
    )
    .expect("netstack");
    let peer: SocketAddr = format!("10.0.0.1:{port}").parse().unwrap();
    let dst: SocketAddr = "10.9.9.9:80".parse().unwrap();
    send(&peer_end, &tcp_segment(peer, dst, 1000, 0, SYN, &[]));
    let (synack, _) = next_segment(&peer_end, dst, peer, LIMIT).expect("a SYN-ACK");
    assert!(synack.has(SYN | ACK));
    let theirs = synack.seq.wrapping_add(1);
    send(&peer_end, &tcp_segment(peer, dst, 1001, theirs, ACK, &[]));
    let stream = netstack
        .accept_timeout(LIMIT)
        .expect("netstack open")
        .expect("the connection");
    (netstack, stream, peer_end, peer, dst, 1001, theirs)
}

/// The latest window the netstack advertised after the peer's last
/// segment, and the sequence number it expects, once it has gone quiet.
fn latest_ack(peer_end: &OwnedFd, dst: SocketAddr, peer: SocketAddr) -> (u32, u16) {
    let mut latest = None;
    while let Some((t, _)) = next_segment(peer_end, dst, peer, Duration::from_millis(300)) {
        if t.has(ACK) {
            latest = Some((t.ack, t.window));
        }
    }
    latest.expect("the netstack acknowledges")
}

#[test]
fn a_fin_behind_data_that_does_not_fit_does_not_end_the_stream_early() {
    let (_netstack, mut stream, peer_end, peer, dst, mut seq, theirs) = connected(7300);
    let mut sent: Vec<u8> = Vec::new();
    // Fill the receive side (the application does not read) until the
    // window is smaller than a chunk.
    let window = loop {
        let chunk: Vec<u8> = (0..500).map(|i| (sent.len() + i) as u8).collect();
        send(
            &peer_end,
            &tcp_segment(peer, dst, seq, theirs, ACK | PSH, &chunk),
        );
        sent.extend_from_slice(&chunk);
        let (ack, window) = latest_ack(&peer_end, dst, peer);
        assert_eq!(ack, seq.wrapping_add(500), "each chunk is taken whole");
        seq = ack;
        if window < 500 {
            break window as usize;
        }
    };
    assert!(
        window > 0,
        "the window closed before the test could overrun it"
    );
    // The last data and the FIN, 4 bytes more than the window: as a peer
    // filling an edge that since moved back would send.
    let tail: Vec<u8> = (0..window + 4)
        .map(|i| (sent.len() + i) as u8 ^ 0x5a)
        .collect();
    send(
        &peer_end,
        &tcp_segment(peer, dst, seq, theirs, ACK | PSH | 0x01, &tail),
    );
    let (ack, _) = latest_ack(&peer_end, dst, peer);
    assert_eq!(
        ack,
        seq.wrapping_add(window as u32),
        "the data inside the window is taken, the FIN is not"
    );
    // The application reads everything taken, and no end of stream yet.
    stream.set_read_timeout(Some(Duration::from_millis(500)));
    let taken = sent.len() + window;
    let mut got = vec![0u8; taken];
    stream.read_exact(&mut got).expect("the data taken");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!(
            "after {taken} of {} bytes the stream gave {other:?}, not a wait",
            taken + 4
        ),
    }
    // The peer sends what was not taken again, with its FIN.
    send(
        &peer_end,
        &tcp_segment(
            peer,
            dst,
            seq.wrapping_add(window as u32),
            theirs,
            ACK | PSH | 0x01,
            &tail[window..],
        ),
    );
    stream.set_read_timeout(Some(LIMIT));
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the rest and the end of stream");
    got.extend_from_slice(&rest);
    let mut expected = sent;
    expected.extend_from_slice(&tail);
    assert!(
        got == expected,
        "{} bytes read, {} sent",
        got.len(),
        expected.len()
    );
}
