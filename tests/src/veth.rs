//! A veth pair inside one namespace, the kernel on one end and packet
//! sockets on the other.
//!
//! Layout: veth `a` has an IPv4 address (the kernel's side), `b` is up
//! with no address (where `AF_PACKET` sockets listen); a permanent
//! neighbour entry on `a` sends the peer address to `b`'s MAC without an
//! ARP round. IPv6 is off in the namespace (no router solicitations, MLD or
//! DAD frames), so only what a test sends crosses the pair.

use std::io;
use std::net::{Ipv4Addr, UdpSocket};

use fdlink_sys::netdev::{if_hwaddr, if_index};
use fdlink_sys::packet::{ETH_P_ALL, PacketSocket};

use crate::netns::{Netns, format_mac};

/// What [`VethPair::new`] makes.
#[derive(Debug, Clone, Copy)]
pub struct VethSpec<'a> {
    /// Namespace name prefix (see [`Netns::new`]).
    pub prefix: &'a str,
    /// The kernel's end.
    pub a: &'a str,
    /// The packet sockets' end.
    pub b: &'a str,
    /// `a`'s address, e.g. `10.30.0.1/24`.
    pub a_cidr: &'a str,
    /// The address `a` reaches at `b`'s MAC, e.g. `10.30.0.2`.
    pub b_ip: &'a str,
    /// A MAC address to give `b` instead of the random one.
    pub mac_b: Option<[u8; 6]>,
}

/// A namespace with a veth pair set up as the module docs say; removed on
/// drop.
#[derive(Debug)]
pub struct VethPair {
    /// The namespace holding both ends.
    pub ns: Netns,
    /// `a`'s MAC.
    pub mac_a: [u8; 6],
    /// `b`'s MAC.
    pub mac_b: [u8; 6],
    /// `b`'s interface index.
    pub index_b: u32,
    a_ip: Ipv4Addr,
}

impl VethPair {
    /// Creates the namespace and the pair.
    pub fn new(spec: &VethSpec<'_>) -> io::Result<VethPair> {
        let ns = Netns::new(spec.prefix)?;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        ns.veth(spec.a, spec.b)?;
        if let Some(mac) = spec.mac_b {
            ns.ip(&["link", "set", spec.b, "address", &format_mac(mac)])?;
        }
        ns.addr(spec.a, spec.a_cidr)?;
        let (a, b) = (spec.a, spec.b);
        let (mac_a, mac_b, index_b) = ns.run(|| (if_hwaddr(a), if_hwaddr(b), if_index(b)))?;
        let no_mac = || io::Error::other("veth has no MAC");
        let mac_a = mac_a?.ok_or_else(no_mac)?;
        let mac_b = mac_b?.ok_or_else(no_mac)?;
        ns.neigh(spec.a, spec.b_ip, mac_b)?;
        let a_ip = spec
            .a_cidr
            .split('/')
            .next()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| io::Error::other(format!("not an IPv4 CIDR: {}", spec.a_cidr)))?;
        Ok(VethPair {
            ns,
            mac_a,
            mac_b,
            index_b: index_b?,
            a_ip,
        })
    }

    /// A packet socket on `b` for every EtherType.
    pub fn packet_socket(&self) -> io::Result<PacketSocket> {
        let index = self.index_b;
        self.ns.run(move || PacketSocket::open(index, ETH_P_ALL))?
    }

    /// A UDP socket bound to `a`'s address and `port` (0: any) inside the
    /// namespace.
    pub fn udp_socket_a(&self, port: u16) -> io::Result<UdpSocket> {
        let addr = (self.a_ip, port);
        self.ns.run(move || UdpSocket::bind(addr))?
    }
}
