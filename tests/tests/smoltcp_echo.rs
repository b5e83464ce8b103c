//! fdlink-smoltcp against the Linux TCP/IP stack, inside throwaway network
//! namespaces. Needs root and /dev/net/tun (SKIP otherwise, failure under
//! `CI=true`).
//!
//! An in-process smoltcp echo server ([`fdlink_tests::echo`]: TCP and UDP
//! echo, ICMP echo answered by smoltcp itself) runs over an
//! [`FdlinkDevice`] on a TUN, a TAP or an AF_PACKET socket on a veth end;
//! kernel clients in the namespace talk to it and check every byte that
//! comes back.
//!
//! The links here are set up the long way (a `TunConfig` or a
//! `PacketSocket`, then `Options` and `Endpoint::new`); `link_builder.rs`
//! opens the same kinds through `fdlink_core::Link`.
//!
//! Only 10.x and fd00:: addresses inside namespaces made here are used, and
//! every loop is bounded in time.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use fdlink_core::{Endpoint, MacAddr, Options};
use fdlink_smoltcp::{DeviceConfig, FdlinkDevice};
use fdlink_sys::netdev::{if_hwaddr, if_index};
use fdlink_sys::packet::{ETH_P_ALL, PacketSocket};
use fdlink_sys::tun::{OffloadFlags, TunConfig};
use fdlink_tests::echo::{self, Net, PORT, Server, ping, tcp_exchange, udp_exchange};
use fdlink_tests::netns::{Netns, require_root};
use fdlink_tests::tun::open_in;

/// The smoltcp side's MAC address on Ethernet links.
const SMOLTCP_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x5e, 0x01];

/// Network `n` of this test binary.
fn net(n: u8) -> Net {
    echo::net(77, n)
}

// ---------------------------------------------------------------------------
// Links.
// ---------------------------------------------------------------------------

/// A TUN or TAP in a fresh namespace with the kernel side configured, and
/// its fdlink devices (one per queue).
fn tuntap(
    prefix: &str,
    net: &Net,
    tap: bool,
    offload: bool,
    queues: usize,
) -> (Netns, Vec<FdlinkDevice>) {
    let ns = Netns::new(prefix).expect("create netns");
    let dev = "smol0";
    let config = if tap {
        TunConfig::tap()
    } else {
        TunConfig::tun()
    }
    .name(dev)
    .vnet_hdr(offload)
    .multi_queue(queues > 1)
    .queues(queues);
    let offloads = if offload {
        OffloadFlags::CSUM | OffloadFlags::TSO4 | OffloadFlags::TSO6
    } else {
        OffloadFlags::empty()
    };
    let tun = open_in(&ns, config, offloads, "open TUN/TAP");
    if tap {
        // The kernel's own router solicitations and such are harmless; keep
        // the link quiet anyway.
        ns.sysctl(&format!("net.ipv6.conf.{dev}.accept_ra"), "0")
            .unwrap();
    }
    net.configure_kernel(&ns, dev);
    let mut options = Options::new()
        .fds(tun.into_fds())
        .mtu(1500)
        .ethernet(tap)
        .vnet_header_len(if offload { 10 } else { 0 });
    if tap {
        options = options.link_address(MacAddr(SMOLTCP_MAC));
    }
    let endpoint = Endpoint::new(options).expect("endpoint");
    let config = DeviceConfig::default().gso(offload);
    let devices = if queues > 1 {
        FdlinkDevice::per_queue(endpoint, config)
    } else {
        vec![FdlinkDevice::new(endpoint, config)]
    };
    (ns, devices)
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

/// Bytes each way of the TUN bulk exchanges.
const BULK: u64 = 64 << 20;

fn tun_bulk(name: &str, n: u8, offload: bool, v6: bool) {
    if !require_root(name) {
        return;
    }
    let net = net(n);
    let (ns, devices) = tuntap("fdlsmol", &net, false, offload, 1);
    let server = Server::start(devices, net.server(None, 2, 4 << 20));
    let started = Instant::now();
    let result = tcp_exchange(&ns, SocketAddr::new(net.smol(v6), PORT), BULK, 0);
    let elapsed = started.elapsed();
    let stats = server.stop();
    eprintln!(
        "{name}: {} MiB each way in {elapsed:?}; {stats}",
        BULK >> 20
    );
    result.unwrap_or_else(|e| panic!("{name}: {e}; stats {stats}"));
}

#[test]
fn smoltcp_tun_tcp4_offload_on() {
    tun_bulk("smoltcp_tun_tcp4_offload_on", 1, true, false);
}

#[test]
fn smoltcp_tun_tcp6_offload_on() {
    tun_bulk("smoltcp_tun_tcp6_offload_on", 2, true, true);
}

#[test]
fn smoltcp_tun_tcp4_offload_off() {
    tun_bulk("smoltcp_tun_tcp4_offload_off", 3, false, false);
}

#[test]
fn smoltcp_tun_tcp6_offload_off() {
    tun_bulk("smoltcp_tun_tcp6_offload_off", 4, false, true);
}

#[test]
fn smoltcp_tun_ping_and_udp() {
    let name = "smoltcp_tun_ping_and_udp";
    if !require_root(name) {
        return;
    }
    let net = net(5);
    let (ns, devices) = tuntap("fdlsmol", &net, false, true, 1);
    let server = Server::start(devices, net.server(None, 1, 64 << 10));
    for v6 in [false, true] {
        let to = net.smol(v6);
        ping(&ns, to).unwrap_or_else(|e| panic!("ping {to}: {e}"));
        udp_exchange(&ns, SocketAddr::new(to, PORT))
            .unwrap_or_else(|e| panic!("UDP echo {to}: {e}"));
    }
    eprintln!("{name}: {}", server.stop());
}

#[test]
fn smoltcp_tun_sharded_two_queues() {
    let name = "smoltcp_tun_sharded_two_queues";
    if !require_root(name) {
        return;
    }
    const CONNECTIONS: u64 = 16;
    const EACH: u64 = 4 << 20;
    let net = net(6);
    let (ns, devices) = tuntap("fdlsmol", &net, false, true, 2);
    assert_eq!(devices.len(), 2, "one device per queue");
    let server = Server::start(devices, net.server(None, CONNECTIONS as usize, 1 << 20));
    let started = Instant::now();
    let results: Vec<io::Result<()>> = thread::scope(|s| {
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|i| {
                let ns = &ns;
                let to = SocketAddr::new(net.smol(i % 2 == 1), PORT);
                s.spawn(move || tcp_exchange(ns, to, EACH, i * 104_729))
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("client thread"))
            .collect()
    });
    let elapsed = started.elapsed();
    let stats = server.stop();
    eprintln!(
        "{name}: {CONNECTIONS} x {} MiB each way in {elapsed:?}; {stats}",
        EACH >> 20
    );
    for (i, r) in results.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("connection {i}: {e}; stats {stats}"));
    }
}

#[test]
fn smoltcp_tap_arp_ndp_then_tcp() {
    let name = "smoltcp_tap_arp_ndp_then_tcp";
    if !require_root(name) {
        return;
    }
    let net = net(7);
    let (ns, devices) = tuntap("fdlsmol", &net, true, false, 1);
    let server = Server::start(devices, net.server(Some(SMOLTCP_MAC), 2, 1 << 20));
    for v6 in [false, true] {
        let to = SocketAddr::new(net.smol(v6), PORT);
        tcp_exchange(&ns, to, 4 << 20, 17).unwrap_or_else(|e| panic!("TAP TCP {to}: {e}"));
        udp_exchange(&ns, to).unwrap_or_else(|e| panic!("TAP UDP {to}: {e}"));
    }
    // The kernel learned the smoltcp side's MAC by ARP and NDP.
    let neigh = ns.ip(&["neigh", "show", "dev", "smol0"]).unwrap();
    let mac = fdlink_tests::netns::format_mac(SMOLTCP_MAC);
    for ip in [net.smol4, net.smol6] {
        assert!(
            neigh
                .lines()
                .any(|l| l.starts_with(&format!("{ip} ")) && l.contains(&mac)),
            "no neighbour entry {ip} -> {mac}: {neigh}"
        );
    }
    eprintln!("{name}: {}", server.stop());
}

/// smoltcp over an AF_PACKET socket on a veth whose kernel end keeps its
/// default offloads: the kernel's frames arrive with partial checksums
/// (and, without a virtio header, as super-frames), which the endpoint
/// learns of from the kernel and completes; its own transmissions are not
/// read back, so every frame read is one the kernel peer sent.
fn af_packet_echo(name: &str, n: u8, offload: bool) {
    if !require_root(name) {
        return;
    }
    let net = net(n);
    let ns = Netns::new("fdlsmol").expect("create netns");
    // Links stay down until the socket exists, so it sees every frame the
    // kernel end ever sends.
    ns.ip(&[
        "link", "add", "kern0", "type", "veth", "peer", "name", "smol0",
    ])
    .unwrap();
    let (socket, mac) = ns
        .run(|| -> io::Result<(OwnedFd, [u8; 6])> {
            let index = if_index("smol0")?;
            let mac = if_hwaddr("smol0")?.ok_or_else(|| io::Error::other("veth has no MAC"))?;
            let socket = PacketSocket::open(index, ETH_P_ALL)?.into_fd();
            if offload {
                fdlink_sys::packet::set_vnet_hdr(socket.as_fd(), true)?;
            }
            Ok((socket, mac))
        })
        .expect("enter netns")
        .expect("AF_PACKET socket");
    let endpoint = Endpoint::new(
        Options::new()
            .fd(socket)
            .mtu(1500)
            .ethernet(true)
            .link_address(MacAddr(mac))
            .vnet_header_len(if offload { 10 } else { 0 }),
    )
    .expect("endpoint");
    ns.link_up("smol0").unwrap();
    net.configure_kernel(&ns, "kern0");
    let device = FdlinkDevice::new(endpoint, DeviceConfig::default().gso(offload));
    let server = Server::start(vec![device], net.server(Some(mac), 2, 4 << 20));
    for v6 in [false, true] {
        let to = net.smol(v6);
        ping(&ns, to).unwrap_or_else(|e| panic!("ping {to}: {e}"));
    }
    for v6 in [false, true] {
        let to = SocketAddr::new(net.smol(v6), PORT);
        let total = if v6 { 8 << 20 } else { BULK };
        tcp_exchange(&ns, to, total, 29).unwrap_or_else(|e| panic!("AF_PACKET TCP {to}: {e}"));
    }
    let neigh = ns.ip(&["neigh", "show", "dev", "kern0"]).unwrap();
    let mac_text = fdlink_tests::netns::format_mac(mac);
    assert!(
        neigh
            .lines()
            .any(|l| l.starts_with(&format!("{} ", net.smol4)) && l.contains(&mac_text)),
        "no ARP entry {} -> {mac_text}: {neigh}",
        net.smol4
    );
    // Every frame read is one the kernel end sent (its tx_packets counts
    // a super-frame once, as the socket reads it), once both are still;
    // a frame the socket's full queue dropped is counted as such.
    let sent_by_peer = || -> u64 {
        ns.exec("cat", &["/sys/class/net/kern0/statistics/tx_packets"])
            .expect("kern0 statistics")
            .trim()
            .parse()
            .expect("a number")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let (sent, read) = loop {
        let before = sent_by_peer();
        thread::sleep(Duration::from_millis(100));
        let read = server.frames_seen();
        let sent = sent_by_peer();
        if (before == sent && read == sent) || Instant::now() > deadline {
            break (sent, read);
        }
    };
    let stats = server.stop();
    assert_eq!(
        read, sent,
        "frames read + kernel drops vs frames kern0 sent: {stats}"
    );
    assert!(!stats.contains("drop."), "nothing dropped: {stats}");
    eprintln!("{name}: {stats}");
}

#[test]
fn smoltcp_af_packet_veth_default_offloads_offload_off() {
    af_packet_echo(
        "smoltcp_af_packet_veth_default_offloads_offload_off",
        8,
        false,
    );
}

#[test]
fn smoltcp_af_packet_veth_default_offloads_offload_on() {
    af_packet_echo(
        "smoltcp_af_packet_veth_default_offloads_offload_on",
        9,
        true,
    );
}
