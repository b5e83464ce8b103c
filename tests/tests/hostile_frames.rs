//! Hostile frames from a real peer (root; a veth pair in a namespace): an
//! AF_PACKET socket on one end writes garbage, foreign-MAC frames, unknown
//! EtherTypes, and IPv4/IPv6 headers with lying lengths, interleaved with
//! good frames, into an fdlink endpoint on the other end (an AF_PACKET
//! socket). The endpoint keeps delivering every good frame and counts the
//! bad ones by reason.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use fdlink_core::{DropReason, Endpoint, MacAddr, Options};
use fdlink_sys::netdev::{if_hwaddr, if_index};
use fdlink_sys::packet::{ETH_P_ALL, PacketSocket};
use fdlink_tests::netns::{Netns, require_root};

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn good_ipv4(tag: u16) -> Vec<u8> {
    let mut p = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 9, 0, 2], [10, 9, 0, 1], 64)
        .udp(4000, 4001)
        .write(&mut p, &tag.to_be_bytes())
        .unwrap();
    p
}

/// Both ends of a veth pair in `ns`, each with an AF_PACKET socket: ours
/// (`a`) for the endpoint, the other (`b`) to inject frames from.
struct Ends {
    own: [u8; 6],
    peer_mac: [u8; 6],
    ours: PacketSocket,
    inject: PacketSocket,
}

fn packet_sockets(ns: &Netns, a: &'static str, b: &'static str) -> Ends {
    ns.run(move || Ends {
        own: if_hwaddr(a).unwrap().unwrap(),
        peer_mac: if_hwaddr(b).unwrap().unwrap(),
        ours: PacketSocket::open(if_index(a).unwrap(), ETH_P_ALL).unwrap(),
        inject: PacketSocket::open(if_index(b).unwrap(), ETH_P_ALL).unwrap(),
    })
    .unwrap()
}

#[test]
fn hostile_frames_are_counted_and_good_ones_keep_flowing() {
    if !require_root("hostile_frames_are_counted_and_good_ones_keep_flowing") {
        return;
    }
    let ns = Netns::new("fdlink-hostile").unwrap();
    ns.veth("ha", "hb").unwrap();
    let _ = ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    let Ends {
        own,
        peer_mac,
        ours,
        inject,
    } = packet_sockets(&ns, "ha", "hb");
    let e = Endpoint::new(
        Options::new()
            .fd(ours.into_fd())
            .ethernet(true)
            .link_address(MacAddr(own)),
    )
    .unwrap();
    let inject = inject.into_fd();
    let foreign = [0x02, 0x55, 0x55, 0x55, 0x55, 0x55];
    let mut lying4 = good_ipv4(0);
    lying4[2..4].copy_from_slice(&9000u16.to_be_bytes()); // total length lies
    let mut bad_opts = good_ipv4(0);
    bad_opts[0] = 0x4f; // IHL 60 with no options present
    let mut lying6 = vec![0u8; 40];
    lying6[0] = 0x60;
    lying6[4..6].copy_from_slice(&60000u16.to_be_bytes());
    let garbage: Vec<(Vec<u8>, Option<DropReason>)> = vec![
        (
            eth(foreign, peer_mac, 0x0800, &good_ipv4(0)),
            Some(DropReason::ForeignMac),
        ),
        // An IPv4 EtherType carrying an IPv6 header.
        (
            eth(own, peer_mac, 0x0800, &lying6),
            Some(DropReason::UnknownProtocol),
        ),
        // Runt IP: shorter than the IPv4 header (padded by nobody: veth
        // does not pad).
        (
            eth(own, peer_mac, 0x0800, &[0x45, 0, 0]),
            Some(DropReason::ShortFrame),
        ),
        (
            eth(own, peer_mac, 0x86dd, &[0x60; 10]),
            Some(DropReason::ShortFrame),
        ),
        // Lying lengths and options: delivered (the stack judges them),
        // never a crash.
        (eth(own, peer_mac, 0x0800, &lying4), None),
        (eth(own, peer_mac, 0x0800, &bad_opts), None),
        (eth(own, peer_mac, 0x86dd, &lying6), None),
        (eth(own, peer_mac, 0x1234, &[0xde, 0xad]), None),
    ];
    let rounds = 50u16;
    let mut expected_drops = std::collections::HashMap::new();
    let mut batch = e.new_batch();
    let mut good = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for round in 0..rounds {
        for (frame, reason) in &garbage {
            if fdlink_sys::io::write(inject.as_fd(), frame).is_ok()
                && let Some(r) = reason
            {
                *expected_drops.entry(*r).or_insert(0u64) += 1;
            }
        }
        fdlink_sys::io::write(
            inject.as_fd(),
            &eth(own, peer_mac, 0x0800, &good_ipv4(round)),
        )
        .unwrap();
        // Read this round before the next, so the kernel's queues (not
        // fdlink) never overflow.
        while !good.contains(&round) && Instant::now() < deadline {
            e.wait_readable(Some(Duration::from_millis(50))).unwrap();
            e.recv_batch(&mut batch).unwrap();
            for p in batch.iter() {
                let n = p.network();
                if n.len() == 30 && n[12..20] == [10, 9, 0, 2, 10, 9, 0, 1] {
                    good.insert(u16::from_be_bytes([n[28], n[29]]));
                }
            }
        }
    }
    // The last garbage may still be queued: drain it.
    while e.recv_batch(&mut batch).unwrap() > 0 {}
    let s = e.stats();
    eprintln!("hostile: {s}");
    assert_eq!(
        good.len(),
        rounds as usize,
        "good frames lost among garbage: {s}"
    );
    for (reason, n) in expected_drops {
        assert!(
            s.drops.get(reason) >= n,
            "{reason}: {} < {n}: {s}",
            s.drops.get(reason)
        );
    }
    assert_eq!(s.frames_read, s.rx_packets + s.drops.inbound(), "{s}");
    assert!(!e.is_closed());
}

/// A TCP segment to `dst` whose checksum is wrong.
fn corrupt_tcp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = Vec::new();
    etherparse::PacketBuilder::ipv4(src, dst, 64)
        .tcp(4000, 80, 1, 1000)
        .syn()
        .write(&mut p, &[])
        .unwrap();
    let at = p.len() - 20 + 16;
    p[at] ^= 0xff;
    p
}

#[test]
fn smoltcp_keeps_answering_ping_among_garbage() {
    use fdlink_smoltcp::{DeviceConfig, FdlinkDevice, poll};
    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    if !require_root("smoltcp_keeps_answering_ping_among_garbage") {
        return;
    }
    let ns = Netns::new("fdlink-hostile-smol").unwrap();
    ns.veth("sa", "sb").unwrap();
    let _ = ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    ns.addr("sb", "10.9.6.1/24").unwrap();
    let Ends {
        own,
        peer_mac,
        ours,
        inject,
    } = packet_sockets(&ns, "sa", "sb");
    // Room for the whole burst, so the kernel drops none before fdlink
    // sees it and every hostile frame is counted here.
    fdlink_sys::packet::set_recv_buffer(ours.as_fd(), 8 << 20).unwrap();
    let endpoint = Endpoint::new(
        Options::new()
            .fd(ours.into_fd())
            .ethernet(true)
            .link_address(MacAddr(own)),
    )
    .unwrap();
    let mut device = FdlinkDevice::new(endpoint, DeviceConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::clone(&stop);
    let stack = std::thread::spawn(move || {
        let hw = HardwareAddress::Ethernet(EthernetAddress(own));
        let mut iface = Interface::new(Config::new(hw), &mut device, smoltcp::time::Instant::now());
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 9, 6, 2), 24)).unwrap();
        });
        let mut sockets = SocketSet::new(vec![]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !running.load(Ordering::Relaxed) && Instant::now() < deadline {
            poll(
                &mut iface,
                &mut device,
                &mut sockets,
                Duration::from_millis(5),
            )
            .unwrap();
        }
        device
    });
    let ping = || ns.exec("ping", &["-c", "2", "-i", "0.2", "-W", "2", "10.9.6.2"]);
    ping().expect("ping before the garbage");

    let inject = inject.into_fd();
    let foreign = [0x02, 0x55, 0x55, 0x55, 0x55, 0x55];
    // (The kernel refuses to send a frame shorter than the link header, so
    // the runts are short IP packets behind a whole Ethernet header.)
    let hostile: Vec<Vec<u8>> = vec![
        eth(own, peer_mac, 0x0800, &[0x45, 0, 0]),
        eth(foreign, peer_mac, 0x0800, &good_ipv4(1)),
        eth(own, peer_mac, 0x0800, &[0x60; 40]),
        eth(
            own,
            peer_mac,
            0x0800,
            &corrupt_tcp([10, 9, 6, 1], [10, 9, 6, 2]),
        ),
        eth(own, peer_mac, 0x0800, &{
            let mut p = good_ipv4(2);
            p[2..4].copy_from_slice(&9000u16.to_be_bytes());
            p
        }),
        eth(own, peer_mac, 0x0806, &[0u8; 5]),
    ];
    for _ in 0..100 {
        for frame in &hostile {
            fdlink_sys::io::write(inject.as_fd(), frame).unwrap();
        }
    }
    ping().expect("ping after 600 hostile frames");
    stop.store(true, Ordering::Relaxed);
    let device = stack.join().expect("the stack thread panicked");
    let s = device.endpoint().stats();
    eprintln!("hostile smoltcp: {s}");
    for reason in [
        DropReason::ShortFrame,
        DropReason::ForeignMac,
        DropReason::UnknownProtocol,
        DropReason::BadChecksum,
    ] {
        assert!(s.drops.get(reason) >= 100, "{reason} not counted: {s}");
    }
    assert!(!device.endpoint().is_closed());
}
