//! Fuzz target `smoltcp_rx`: arbitrary inbound packets (valid ones aimed at
//! the stack's addresses and sockets, mutated ones, random bytes; with
//! honest or lying virtio headers) through an [`FdlinkDevice`] over an
//! endpoint over an in-memory pair, into a smoltcp `Interface` with a TCP
//! listener and a UDP echo socket, medium `Ip` and `Ethernet`. Nothing may
//! panic; the endpoint's accounting holds; what the stack answers leaves.
//!
//! `PROPTEST_CASES=N` sets the cases (`cargo xtask fuzz --cases N`).

mod fuzz_gen;

use fdlink_core::{Endpoint, MacAddr, Options, PacketIo, memory_pair};
use fdlink_smoltcp::{DeviceConfig, FdlinkDevice};
use proptest::prelude::*;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

fn run(ethernet: bool, vnet: bool, gso: bool, frames: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let (ours, peer) = memory_pair(256);
    let mut options = Options::new()
        .packet_io(ours)
        .ethernet(ethernet)
        .batch_size(4);
    if ethernet {
        options = options.link_address(MacAddr(fuzz_gen::OWN_MAC));
    }
    if vnet {
        options = options.vnet_header_len(10);
    }
    let endpoint = Endpoint::new(options).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut device = FdlinkDevice::new(endpoint, DeviceConfig::default().gso(gso).tx_batch(8));
    let hw = if ethernet {
        HardwareAddress::Ethernet(EthernetAddress(fuzz_gen::OWN_MAC))
    } else {
        HardwareAddress::Ip
    };
    let now = smoltcp::time::Instant::from_millis(1_000);
    let mut iface = Interface::new(Config::new(hw), &mut device, now);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::v4(10, 0, 0, 1), 24));
        let _ = a.push(IpCidr::new(IpAddress::v6(0xfd00, 0, 0, 0, 0, 0, 0, 1), 64));
    });
    let mut sockets = SocketSet::new(vec![]);
    let mut listener = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 4096]),
        tcp::SocketBuffer::new(vec![0; 4096]),
    );
    listener
        .listen(80)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let tcp_handle = sockets.add(listener);
    let mut echo = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
    );
    echo.bind(IpListenEndpoint::from(7))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let udp_handle = sockets.add(echo);

    let mut t = 1_000;
    for f in frames {
        let f = if vnet { &f[..] } else { &f[10..] };
        // A full queue is the peer's problem, not the stack's.
        let _ = peer.send(&[f]);
        t += 10;
        let now = smoltcp::time::Instant::from_millis(t);
        iface.poll(now, &mut device, &mut sockets);
        // Echo what the UDP socket got; read what TCP got.
        let s = sockets.get_mut::<udp::Socket<'_>>(udp_handle);
        while let Ok((data, meta)) = s.recv() {
            let data = data.to_vec();
            let _ = s.send_slice(&data, meta.endpoint);
        }
        let s = sockets.get_mut::<tcp::Socket<'_>>(tcp_handle);
        if s.can_recv() {
            let _ = s.recv(|b| (b.len(), ()));
        }
        iface.poll(now, &mut device, &mut sockets);
        device.flush();
        // Drain what the stack sent.
        let mut buf = vec![0u8; 70_000];
        while peer.recv(&mut buf).is_ok() {}
    }
    let s = device.endpoint().stats();
    prop_assert_eq!(s.frames_read, frames.len() as u64, "{}", s);
    prop_assert_eq!(s.frames_read, s.rx_packets + s.drops.inbound(), "{}", s);
    drop(peer);
    iface.poll(
        smoltcp::time::Instant::from_millis(t + 10),
        &mut device,
        &mut sockets,
    );
    prop_assert!(device.endpoint().is_closed());
    Ok(())
}

fn frames(ethernet: bool) -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(fuzz_gen::vnet_frame(ethernet), 1..8)
}

#[test]
fn smoltcp_rx_ip() {
    let strategy = (any::<bool>(), any::<bool>(), frames(false));
    fuzz_gen::fuzz(file!(), "smoltcp_rx_ip", strategy, |(vnet, gso, f)| {
        run(false, vnet, gso, &f)
    });
}

#[test]
fn smoltcp_rx_ethernet() {
    let strategy = (any::<bool>(), any::<bool>(), frames(true));
    fuzz_gen::fuzz(
        file!(),
        "smoltcp_rx_ethernet",
        strategy,
        |(vnet, gso, f)| run(true, vnet, gso, &f),
    );
}
