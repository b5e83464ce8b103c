//! fdlink-gso on TCP streams with the Linux kernel, inside throwaway network
//! namespaces. Needs root and /dev/net/tun (SKIP otherwise, failure under
//! `CI=true`).
//!
//! - TSO receive: a kernel TCP client sends a bulk stream through a TUN with
//!   `IFF_VNET_HDR` and TSO offloads to a [`TcpPeer`] on the TUN
//!   descriptor; its super-packets are split with `segment_with_hdr`.
//! - GRO transmit: a hand-written TCP client on the TUN descriptor coalesces
//!   its segments with `gro::Coalescer` and writes super-packets to a kernel
//!   TCP server.
//!
//! The segmentation oracle cases are in `gso_kernel_oracle.rs`. Only 10.x
//! and fd00:: addresses inside namespaces made here are used, and every
//! loop is bounded in time.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::thread;
use std::time::{Duration, Instant};

use fdlink_gso::complete::verify_l4_checksum;
use fdlink_gso::gro::Coalescer;
use fdlink_gso::segment::{SegmentBuf, segment_with_hdr};
use fdlink_gso::virtio::{self, VirtioNetHdr, flags as vflags, gso};
use fdlink_gso::wire::tcp;
use fdlink_sys::tun::{OffloadFlags, TunConfig, TunDevice};
use fdlink_tests::netns::{Netns, require_root, wait_readable};
use fdlink_tests::packet::{
    Csum, IpSpec, TcpSeg, TcpSpec, parse_tcp, pattern, tcp_option, tcp_packet,
};
use fdlink_tests::tcp_peer::{Handled, TcpPeer, TcpPeerConfig};
use fdlink_tests::tun::{BUF_LEN, open_in, plain_hdr, tun_write};

/// Upper bound for a whole stream test.
const STREAM_WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// (b) A kernel TCP sender's TSO super-packets, split with segment_with_hdr.
// ---------------------------------------------------------------------------

/// Addresses of a one-TUN namespace: the kernel's side and the peer played
/// by the test on the TUN descriptor.
#[derive(Debug, Clone, Copy)]
struct Pair {
    kernel: IpAddr,
    peer: IpAddr,
    kernel_cidr: &'static str,
}

fn pair(v6: bool, net: u16) -> Pair {
    if v6 {
        let (k, p, c) = match net {
            61 => ("fd00:61::1", "fd00:61::2", "fd00:61::1/64"),
            _ => ("fd00:62::1", "fd00:62::2", "fd00:62::1/64"),
        };
        Pair {
            kernel: k.parse().unwrap(),
            peer: p.parse().unwrap(),
            kernel_cidr: c,
        }
    } else {
        let (k, p, c) = match net {
            61 => ("10.61.0.1", "10.61.0.2", "10.61.0.1/24"),
            _ => ("10.62.0.1", "10.62.0.2", "10.62.0.1/24"),
        };
        Pair {
            kernel: k.parse().unwrap(),
            peer: p.parse().unwrap(),
            kernel_cidr: c,
        }
    }
}

fn tun_ns(prefix: &str, dev: &str, pair: &Pair, offloads: OffloadFlags) -> (Netns, TunDevice) {
    let ns = Netns::new(prefix).expect("create netns");
    let config = TunConfig::tun().name(dev).vnet_hdr(true);
    let tun = open_in(&ns, config, offloads, "open TUN with IFF_VNET_HDR");
    ns.addr(dev, pair.kernel_cidr).unwrap();
    ns.link_up(dev).unwrap();
    (ns, tun)
}

/// What the responder saw.
#[derive(Debug, Default)]
struct BulkStats {
    reads: usize,
    super_packets: usize,
    largest: usize,
    segments: usize,
}

const BULK_PORT: u16 = 5001;
const BULK_LEN: usize = 2 << 20;

fn bulk_stream(v6: bool) {
    let pair = pair(v6, 61);
    let (ns, tun) = tun_ns(
        "fdlbulk",
        "bulk0",
        &pair,
        OffloadFlags::CSUM | OffloadFlags::TSO4 | OffloadFlags::TSO6,
    );
    let fd = tun.fds()[0].as_fd();
    let data = pattern(BULK_LEN, 7);
    let (client, responder) = thread::scope(|s| {
        let client = s.spawn(|| {
            ns.run(|| -> io::Result<()> {
                let to = SocketAddr::new(pair.peer, BULK_PORT);
                let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
                stream.set_write_timeout(Some(STREAM_WAIT))?;
                stream.set_read_timeout(Some(STREAM_WAIT))?;
                stream.write_all(&data)?;
                stream.shutdown(Shutdown::Write)?;
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest)?;
                Ok(())
            })
        });
        let responder = respond(fd, &pair, v6);
        (client.join(), responder)
    });
    let (received, stats) = responder.expect("responder");
    client
        .expect("client thread")
        .expect("enter netns")
        .expect("kernel client");
    eprintln!("bulk v6={v6}: {stats:?}");
    assert_eq!(received.len(), data.len(), "received stream length");
    assert!(
        received == data,
        "received stream differs from what was sent"
    );
    assert!(
        stats.super_packets > 0,
        "no TSO super-packet was read: {stats:?}"
    );
}

/// Plays the TCP peer of a kernel client with a [`TcpPeer`]: SYN-ACK, ACK
/// every read, FIN after the client's FIN. Returns the received stream.
fn respond(fd: BorrowedFd<'_>, pair: &Pair, v6: bool) -> io::Result<(Vec<u8>, BulkStats)> {
    let deadline = Instant::now() + STREAM_WAIT;
    let mss: u16 = if v6 { 1440 } else { 1460 };
    let mut peer = TcpPeer::new(TcpPeerConfig {
        mss,
        ..TcpPeerConfig::new(pair.peer, pair.kernel, BULK_PORT)
    });
    let mut received = Vec::with_capacity(BULK_LEN);
    let mut stats = BulkStats::default();
    let mut buf = vec![0u8; BUF_LEN];
    let mut segs = SegmentBuf::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "stream incomplete after {STREAM_WAIT:?}: {} of {BULK_LEN} bytes, {stats:?}",
                    received.len()
                ),
            ));
        }
        if !wait_readable(fd, deadline - now)? {
            continue;
        }
        let n = fdlink_sys::io::read(fd, &mut buf)?;
        let hdr = VirtioNetHdr::decode(&buf[..n]).map_err(io::Error::other)?;
        let pkt = &buf[virtio::HDR_LEN..n];
        if peer.parse(pkt).is_none() {
            continue;
        }
        stats.reads += 1;
        stats.largest = stats.largest.max(pkt.len());
        if pkt.len() > 1500 {
            stats.super_packets += 1;
            let want = if v6 { gso::TCPV6 } else { gso::TCPV4 };
            let hl = if v6 { 40 } else { 20 };
            assert_eq!(hdr.gso_type & !gso::ECN, want, "gso_type of {hdr:?}");
            assert_eq!(
                hdr.flags & vflags::NEEDS_CSUM,
                vflags::NEEDS_CSUM,
                "{hdr:?}"
            );
            assert_eq!((hdr.csum_start, hdr.csum_offset), (hl, 16), "{hdr:?}");
            assert!(hdr.gso_size > 0 && hdr.gso_size <= mss, "{hdr:?}");
        }
        segs.clear();
        segment_with_hdr(pkt, 0, &hdr, &mut segs)
            .map_err(|e| io::Error::other(format!("segment_with_hdr {hdr:?}: {e}")))?;
        for seg in segs.iter() {
            stats.segments += 1;
            if !verify_l4_checksum(seg) {
                return Err(io::Error::other(format!(
                    "segment {} of a {}-byte read ({hdr:?}) fails its checksum",
                    stats.segments,
                    pkt.len()
                )));
            }
            let t = parse_tcp(seg).expect("a segment of a TCP packet parses");
            match peer.handle_parsed(&t, seg) {
                Handled::Syn => tun_write(fd, &plain_hdr(), &peer.syn_ack())?,
                Handled::Data(new) => received.extend_from_slice(new),
                Handled::Ignored | Handled::Reset => {}
            }
        }
        if peer.needs_ack() {
            let fin = if peer.fin_received() {
                tcp::flags::FIN
            } else {
                0
            };
            if let Some(ack) = peer.ack(fin) {
                tun_write(fd, &plain_hdr(), &ack)?;
                if peer.fin_received() {
                    return Ok((received, stats));
                }
            }
        }
    }
}

#[test]
fn tso_bulk_stream_v4() {
    if !require_root("tso_bulk_stream_v4") {
        return;
    }
    bulk_stream(false);
}

#[test]
fn tso_bulk_stream_v6() {
    if !require_root("tso_bulk_stream_v6") {
        return;
    }
    bulk_stream(true);
}

// ---------------------------------------------------------------------------
// (c) GRO: our segments coalesced and written to a kernel TCP server.
// ---------------------------------------------------------------------------

const GRO_PORT: u16 = 5002;
const GRO_LEN: usize = 1 << 20;
/// Segments per coalescing batch (about one 64 KiB super-packet).
const GRO_BATCH: usize = 44;

/// What the GRO client wrote.
#[derive(Debug, Default)]
struct GroStats {
    writes: usize,
    super_packets: usize,
    largest: usize,
    retransmits: usize,
}

fn gro_stream(v6: bool) {
    let pair = pair(v6, 62);
    let (_ns, tun) = tun_ns("fdlgro", "gro0", &pair, OffloadFlags::empty());
    let fd = tun.fds()[0].as_fd();
    let listener = _ns
        .run(|| TcpListener::bind(SocketAddr::new(pair.kernel, GRO_PORT)))
        .expect("enter netns")
        .expect("listen");
    listener.set_nonblocking(true).unwrap();
    let data = pattern(GRO_LEN, 99);
    let (server, client) = thread::scope(|s| {
        let server = s.spawn(|| -> io::Result<Vec<u8>> {
            let deadline = Instant::now() + STREAM_WAIT;
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "no connection"));
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e),
                }
            };
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))?;
            let mut got = Vec::with_capacity(GRO_LEN);
            stream.read_to_end(&mut got)?;
            Ok(got)
        });
        let client = gro_client(fd, &pair, v6, &data);
        (server.join(), client)
    });
    let stats = client.expect("GRO client");
    let got = server.expect("server thread").expect("kernel server");
    eprintln!("gro v6={v6}: {stats:?}");
    assert_eq!(got.len(), data.len(), "stream length at the kernel server");
    assert!(got == data, "the kernel server received different bytes");
    assert!(
        stats.super_packets > 0 && stats.largest > 1500,
        "no super-packet was written: {stats:?}"
    );
}

/// Reads TCP packets of our connection from the TUN until `f` says stop or
/// `wait` passes; returns whether `f` stopped it.
fn read_acks(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    pair: &Pair,
    sport: u16,
    wait: Duration,
    mut f: impl FnMut(&TcpSeg, &[u8]) -> bool,
) -> io::Result<bool> {
    let end = Instant::now() + wait;
    loop {
        let now = Instant::now();
        if now >= end || !wait_readable(fd, end - now)? {
            return Ok(false);
        }
        let n = fdlink_sys::io::read(fd, buf)?;
        let pkt = &buf[virtio::HDR_LEN..n];
        let Some(t) = parse_tcp(pkt) else {
            continue;
        };
        if t.src == pair.kernel && t.dst == pair.peer && t.dport == sport && f(&t, pkt) {
            return Ok(true);
        }
    }
}

fn gro_client(fd: BorrowedFd<'_>, pair: &Pair, v6: bool, data: &[u8]) -> io::Result<GroStats> {
    let deadline = Instant::now() + STREAM_WAIT;
    let timed_out = |what: &str| io::Error::new(io::ErrorKind::TimedOut, what.to_string());
    let sport: u16 = 41000;
    let isn: u32 = 0xffff_0000; // wraps during the stream
    let mut ip = IpSpec::new(pair.peer, pair.kernel);
    let mut buf = vec![0u8; BUF_LEN];
    let mut stats = GroStats::default();
    let seg = |ip: &mut IpSpec, seq: u32, ack: u32, flags: u8, opts: &[u8], payload: &[u8]| {
        ip.ident = ip.ident.wrapping_add(1);
        let t = TcpSpec {
            sport,
            dport: GRO_PORT,
            seq,
            ack,
            flags,
            window: 0xffff,
            options: opts,
        };
        tcp_packet(ip, &t, payload, Csum::Full)
    };

    // Handshake: MSS 1460, NOP, window scale 7.
    let mut synack = None;
    for _ in 0..5 {
        let syn = seg(
            &mut ip,
            isn,
            0,
            tcp::flags::SYN,
            &[2, 4, 0x05, 0xb4, 1, 3, 3, 7],
            &[],
        );
        tun_write(fd, &plain_hdr(), &syn)?;
        read_acks(
            fd,
            &mut buf,
            pair,
            sport,
            Duration::from_secs(1),
            |t, pkt| {
                let ok = t.flags & (tcp::flags::SYN | tcp::flags::ACK)
                    == tcp::flags::SYN | tcp::flags::ACK
                    && t.ack == isn.wrapping_add(1);
                if ok {
                    synack = Some((t.clone(), t.options(pkt).to_vec()));
                }
                ok
            },
        )?;
        if synack.is_some() {
            break;
        }
    }
    let (synack, options) = synack.ok_or_else(|| timed_out("no SYN-ACK from the kernel server"))?;
    let peer_ws = tcp_option(&options, 3).map_or(0, |v| v[0].min(14));
    let peer_mss = tcp_option(&options, 2).map_or(536, |v| u16::from_be_bytes([v[0], v[1]]));
    let mss = usize::from(peer_mss).min(1448);
    let rcv = synack.seq.wrapping_add(1);
    let ack = seg(&mut ip, isn.wrapping_add(1), rcv, tcp::flags::ACK, &[], &[]);
    tun_write(fd, &plain_hdr(), &ack)?;

    // Data, window-limited, in coalesced batches.
    let base = isn.wrapping_add(1);
    let mut snd_una = 0usize; // offsets into `data`
    let mut snd_nxt = 0usize;
    let mut wnd = usize::from(synack.window); // not scaled in a SYN-ACK
    let mut gro = Coalescer::new();
    let mut last_progress = Instant::now();
    while snd_una < data.len() {
        if Instant::now() >= deadline {
            return Err(timed_out(&format!(
                "{snd_una} of {} bytes acknowledged, {stats:?}",
                data.len()
            )));
        }
        gro.clear();
        let mut n = 0;
        while snd_nxt < data.len() && n < GRO_BATCH {
            let len = mss.min(data.len() - snd_nxt);
            if snd_nxt + len > snd_una + wnd {
                break;
            }
            let last = n + 1 == GRO_BATCH || snd_nxt + len == data.len();
            let psh = if last { tcp::flags::PSH } else { 0 };
            let seq = base.wrapping_add(snd_nxt as u32);
            let p = seg(
                &mut ip,
                seq,
                rcv,
                tcp::flags::ACK | psh,
                &[],
                &data[snd_nxt..snd_nxt + len],
            );
            gro.push(&p);
            snd_nxt += len;
            n += 1;
        }
        gro.flush();
        for (hdr, p) in gro.iter() {
            tun_write(fd, hdr, p)?;
            stats.writes += 1;
            stats.largest = stats.largest.max(p.len());
            if hdr.gso_type != gso::NONE {
                stats.super_packets += 1;
                let want = if v6 { gso::TCPV6 } else { gso::TCPV4 };
                assert_eq!(hdr.gso_type, want, "{hdr:?}");
                assert_eq!(usize::from(hdr.gso_size), mss, "{hdr:?}");
            }
        }
        // ACKs: wait briefly when the window is full, otherwise just drain.
        let window_full = snd_nxt == data.len() || snd_nxt + mss > snd_una + wnd;
        let wait = if window_full {
            Duration::from_millis(200)
        } else {
            Duration::ZERO
        };
        let before = snd_una;
        read_acks(fd, &mut buf, pair, sport, wait, |t, _| {
            if t.flags & tcp::flags::ACK != 0 {
                let acked = t.ack.wrapping_sub(base) as usize;
                if acked <= data.len() && acked > snd_una {
                    snd_una = acked;
                }
                wnd = usize::from(t.window) << peer_ws;
            }
            // Stop at the first ACK that makes progress when waiting.
            window_full && snd_una > before
        })?;
        if snd_una > before {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_millis(500) {
            // Go back N: resend everything not acknowledged.
            stats.retransmits += 1;
            snd_nxt = snd_una;
            last_progress = Instant::now();
        }
        if snd_nxt < snd_una {
            snd_nxt = snd_una;
        }
    }

    // FIN, until it is acknowledged.
    let fin_seq = base.wrapping_add(data.len() as u32);
    loop {
        if Instant::now() >= deadline {
            return Err(timed_out("FIN not acknowledged"));
        }
        let fin = seg(
            &mut ip,
            fin_seq,
            rcv,
            tcp::flags::FIN | tcp::flags::ACK,
            &[],
            &[],
        );
        tun_write(fd, &plain_hdr(), &fin)?;
        let acked = read_acks(
            fd,
            &mut buf,
            pair,
            sport,
            Duration::from_millis(500),
            |t, _| t.ack == fin_seq.wrapping_add(1),
        )?;
        if acked {
            return Ok(stats);
        }
    }
}

#[test]
fn gro_stream_to_kernel_server_v4() {
    if !require_root("gro_stream_to_kernel_server_v4") {
        return;
    }
    gro_stream(false);
}

#[test]
fn gro_stream_to_kernel_server_v6() {
    if !require_root("gro_stream_to_kernel_server_v6") {
        return;
    }
    gro_stream(true);
}
