//! fdlink-sys TUN/TAP against the kernel, inside throwaway network
//! namespaces. Needs root and /dev/net/tun (SKIP otherwise, failure on CI).

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use fdlink_sys::netdev::{if_hwaddr, if_index, if_mtu};
use fdlink_sys::tun::{
    OffloadFlags, TunConfig, TunKind, set_offload, set_vnet_hdr_size, vnet_hdr_size,
};
use fdlink_tests::netns::{
    Netns, is_cloexec, kernel_version, open_fd_count, read_until, require_root,
};
use fdlink_tests::packet::udp4;
use fdlink_tests::serial::serial;

const WAIT: Duration = Duration::from_secs(5);

/// The UDP payload of an IPv4 packet from `src` to `dst:port`, if `pkt` is
/// one; also checks the IPv4 and UDP length fields.
fn udp4_payload(pkt: &[u8], src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Option<&[u8]> {
    let u = udp4(pkt)?;
    if u.src != src.octets() || u.dst != dst.octets() || u.dport != port {
        return None;
    }
    assert_eq!(u.ip_total_len, pkt.len(), "IPv4 total length");
    assert_eq!(u.udp_len, u.datagram.len(), "UDP length");
    Some(u.rest())
}

#[test]
fn tun_delivers_a_kernel_udp_datagram() {
    if !require_root("tun_delivers_a_kernel_udp_datagram") {
        return;
    }
    let _g = serial();
    let ns = Netns::new("fdl").unwrap();
    let dev = ns
        .run(|| TunConfig::tun().name("fdltun0").open())
        .unwrap()
        .expect("open TUN inside the namespace");
    assert_eq!(dev.name(), "fdltun0");
    assert_eq!(dev.kind(), TunKind::Tun);
    assert_eq!(dev.fds().len(), 1);
    assert!(is_cloexec(&dev.fds()[0]).unwrap(), "TUN fd must be CLOEXEC");
    ns.addr("fdltun0", "10.20.0.1/24").unwrap();
    ns.link_up("fdltun0").unwrap();

    let (index, mtu, hwaddr) = ns
        .run(|| (if_index("fdltun0"), if_mtu("fdltun0"), if_hwaddr("fdltun0")))
        .unwrap();
    assert!(index.unwrap() > 0);
    assert_eq!(mtu.unwrap(), 1500);
    assert_eq!(hwaddr.unwrap(), None, "a TUN device has no MAC address");

    let sock = ns.run(|| UdpSocket::bind("10.20.0.1:0")).unwrap().unwrap();
    let payload = b"fdlink tun test datagram";
    sock.send_to(payload, "10.20.0.2:4242").unwrap();

    let src = Ipv4Addr::new(10, 20, 0, 1);
    let dst = Ipv4Addr::new(10, 20, 0, 2);
    let pkt = read_until(dev.fds()[0].as_fd(), WAIT, |p| {
        udp4_payload(p, src, dst, 4242).is_some()
    })
    .expect("the datagram comes out of the TUN");
    // No packet-information prefix (IFF_NO_PI): the read starts at IPv4.
    assert_eq!(pkt[0] >> 4, 4);
    let udp = &pkt[usize::from(pkt[0] & 0x0f) * 4..];
    assert_eq!(
        u16::from_be_bytes([udp[0], udp[1]]),
        sock.local_addr().unwrap().port()
    );
    assert_eq!(udp4_payload(&pkt, src, dst, 4242), Some(&payload[..]));
}

#[test]
fn multi_queue_tun_gives_one_fd_per_queue() {
    if !require_root("multi_queue_tun_gives_one_fd_per_queue") {
        return;
    }
    let _g = serial();
    let ns = Netns::new("fdl").unwrap();
    let dev = ns
        .run(|| {
            TunConfig::tun()
                .name("fdlmq0")
                .multi_queue(true)
                .queues(4)
                .open()
        })
        .unwrap()
        .expect("open a 4-queue TUN");
    assert_eq!(dev.fds().len(), 4);
    let mut raw: Vec<_> = dev.fds().iter().map(|fd| fd.as_raw_fd()).collect();
    raw.sort_unstable();
    raw.dedup();
    assert_eq!(raw.len(), 4, "distinct descriptors");
    let details = ns.ip(&["-d", "link", "show", "fdlmq0"]).unwrap();
    assert!(
        details.contains("multi_queue"),
        "ip -d link shows a multi-queue tun: {details}"
    );

    // A single-queue open of the multi-queue device is refused (flags
    // differ), and so is a second attach of a single-queue device.
    let mismatch = ns.run(|| TunConfig::tun().name("fdlmq0").open()).unwrap();
    assert_eq!(
        mismatch.err().and_then(|e| e.raw_os_error()),
        Some(libc::EINVAL)
    );
    let single = ns.run(|| TunConfig::tun().name("fdlsq0").open()).unwrap();
    let single = single.expect("single-queue TUN");
    let busy = ns.run(|| TunConfig::tun().name("fdlsq0").open()).unwrap();
    assert_eq!(busy.err().and_then(|e| e.raw_os_error()), Some(libc::EBUSY));
    drop(single);
}

#[test]
fn dropping_a_tun_device_closes_its_fds_and_removes_it() {
    if !require_root("dropping_a_tun_device_closes_its_fds_and_removes_it") {
        return;
    }
    let _g = serial();
    let ns = Netns::new("fdl").unwrap();
    let before = open_fd_count().unwrap();
    let dev = ns
        .run(|| {
            TunConfig::tap()
                .name("fdldrop0")
                .multi_queue(true)
                .queues(3)
                .open()
        })
        .unwrap()
        .unwrap();
    assert_eq!(open_fd_count().unwrap(), before + 3);
    ns.ip(&["link", "show", "fdldrop0"]).unwrap();
    drop(dev);
    assert_eq!(open_fd_count().unwrap(), before);
    assert!(
        ns.ip(&["link", "show", "fdldrop0"]).is_err(),
        "a non-persistent device goes away with its last fd"
    );
}

#[test]
fn kernel_picks_a_name_when_none_is_given() {
    if !require_root("kernel_picks_a_name_when_none_is_given") {
        return;
    }
    let _g = serial();
    let ns = Netns::new("fdl").unwrap();
    let dev = ns.run(|| TunConfig::tap().open()).unwrap().unwrap();
    assert!(dev.name().starts_with("tap"), "got {:?}", dev.name());
    ns.ip(&["link", "show", dev.name()]).unwrap();
}

/// `ethtool -k` feature `name` ("on"/"off") of `dev` in `ns`.
fn ethtool_feature(ns: &Netns, dev: &str, name: &str) -> Option<String> {
    let out = ns.exec("ethtool", &["-k", dev]).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
}

#[test]
fn offloads_are_accepted_reported_and_reset() {
    if !require_root("offloads_are_accepted_reported_and_reset") {
        return;
    }
    let _g = serial();
    let ns = Netns::new("fdl").unwrap();
    let dev = ns
        .run(|| TunConfig::tun().name("fdloff0").vnet_hdr(true).open())
        .unwrap()
        .unwrap();
    assert!(dev.vnet_hdr());
    let fd = dev.fds()[0].as_fd();

    let all = OffloadFlags::CSUM
        | OffloadFlags::TSO4
        | OffloadFlags::TSO6
        | OffloadFlags::USO4
        | OffloadFlags::USO6;
    let accepted = set_offload(fd, all).unwrap();
    assert!(
        accepted.contains(OffloadFlags::CSUM | OffloadFlags::TSO4 | OffloadFlags::TSO6),
        "{accepted:?}"
    );
    assert_eq!(
        accepted - all,
        OffloadFlags::empty(),
        "never more than asked"
    );
    if kernel_version().is_some_and(|v| v >= (6, 2)) {
        assert!(
            accepted.contains(OffloadFlags::USO4 | OffloadFlags::USO6),
            "kernels from 6.2 accept USO: {accepted:?}"
        );
    }
    let has_ethtool = ethtool_feature(&ns, "fdloff0", "tcp-segmentation-offload").is_some();
    if has_ethtool {
        assert_eq!(
            ethtool_feature(&ns, "fdloff0", "tcp-segmentation-offload").as_deref(),
            Some("on")
        );
    } else {
        println!("note: ethtool missing, device features not cross-checked");
    }

    // Kernels take USO only as a pair: a lone USO4 is rejected and retried
    // without USO.
    let lone = set_offload(fd, OffloadFlags::CSUM | OffloadFlags::USO4).unwrap();
    assert_eq!(lone, OffloadFlags::CSUM);

    // Reset to nothing.
    assert_eq!(
        set_offload(fd, OffloadFlags::empty()).unwrap(),
        OffloadFlags::empty()
    );
    if has_ethtool {
        assert_eq!(
            ethtool_feature(&ns, "fdloff0", "tcp-segmentation-offload").as_deref(),
            Some("off")
        );
        assert_eq!(
            ethtool_feature(&ns, "fdloff0", "tx-checksumming").as_deref(),
            Some("off")
        );
    }

    // Segmentation without checksum offload is refused before the kernel.
    let err = set_offload(fd, OffloadFlags::TSO4).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

    // Header size: 10 by default, 12 for the mergeable form, < 10 refused.
    assert_eq!(vnet_hdr_size(fd).unwrap(), 10);
    set_vnet_hdr_size(fd, 12).unwrap();
    assert_eq!(vnet_hdr_size(fd).unwrap(), 12);
    assert_eq!(
        set_vnet_hdr_size(fd, 4).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
}

#[test]
fn offload_calls_on_a_non_tun_fd_fail() {
    if !require_root("offload_calls_on_a_non_tun_fd_fail") {
        return;
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(set_offload(sock.as_fd(), OffloadFlags::CSUM).is_err());
    assert!(vnet_hdr_size(sock.as_fd()).is_err());
}

#[test]
fn tap_sends_an_arp_request_for_an_unresolved_neighbour() {
    if !require_root("tap_sends_an_arp_request_for_an_unresolved_neighbour") {
        return;
    }
    let _g = serial();
    let ns = Netns::new("fdl").unwrap();
    let dev = ns
        .run(|| TunConfig::tap().name("fdltap0").open())
        .unwrap()
        .unwrap();
    ns.addr("fdltap0", "10.20.1.1/24").unwrap();
    ns.link_up("fdltap0").unwrap();
    let (mac, mtu) = ns
        .run(|| (if_hwaddr("fdltap0"), if_mtu("fdltap0")))
        .unwrap();
    let mac = mac.unwrap().expect("a TAP device has a MAC address");
    assert_ne!(mac, [0; 6]);
    assert_eq!(mtu.unwrap(), 1500);

    let sock = ns.run(|| UdpSocket::bind("10.20.1.1:0")).unwrap().unwrap();
    sock.send_to(b"needs arp", "10.20.1.2:4242").unwrap();

    let target = Ipv4Addr::new(10, 20, 1, 2).octets();
    let frame = read_until(dev.fds()[0].as_fd(), WAIT, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[38..42] == target
    })
    .expect("an ARP request comes out of the TAP");
    assert_eq!(frame[0..6], [0xff; 6], "broadcast destination");
    assert_eq!(frame[6..12], mac, "source is the TAP's MAC");
    let arp = &frame[14..];
    assert_eq!(arp[0..2], [0, 1], "hardware type Ethernet");
    assert_eq!(arp[2..4], [0x08, 0x00], "protocol IPv4");
    assert_eq!(arp[4..6], [6, 4], "address lengths");
    assert_eq!(arp[6..8], [0, 1], "operation: request");
    assert_eq!(arp[8..14], mac, "sender hardware address");
    assert_eq!(arp[14..18], [10, 20, 1, 1], "sender protocol address");

    ns.ip(&["link", "set", "fdltap0", "mtu", "1400"]).unwrap();
    assert_eq!(ns.run(|| if_mtu("fdltap0")).unwrap().unwrap(), 1400);
}
