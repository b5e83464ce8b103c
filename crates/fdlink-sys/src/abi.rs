//! Kernel ABI constants more than one module (and crate) needs, each
//! declared once: link sizes every layer shares, and the `AF_PACKET`
//! option and status values of `linux/if_packet.h`, the same on every
//! architecture and defined here so an older `libc` does not limit us.

/// Length of an Ethernet header (`ETH_HLEN`): destination, source,
/// EtherType.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// Length of `struct virtio_net_hdr`, the header in front of each packet
/// of a TUN/TAP with `IFF_VNET_HDR` or an `AF_PACKET` socket with
/// `PACKET_VNET_HDR`.
pub const VNET_HDR_LEN: usize = 10;

/// Length of `struct virtio_net_hdr_mrg_rxbuf`, the header with
/// `num_buffers` (`TUNSETVNETHDRSZ` 12).
pub const VNET_HDR_LEN_MRG: usize = 12;

/// The largest IP packet (IPv4's 16-bit total length), and so the largest
/// segmentation-offload super-packet.
pub const MAX_IP_PACKET: usize = 65535;

/// `SOL_PACKET`, the socket level of `AF_PACKET` options.
pub(crate) const SOL_PACKET: libc::c_int = 263;

/// `PACKET_AUXDATA`: the option, and the type of the `tpacket_auxdata`
/// control message it enables.
pub(crate) const PACKET_AUXDATA: libc::c_int = 8;

/// `sll_pkttype` of a frame this host transmitted.
pub(crate) const PACKET_OUTGOING: u8 = 4;

/// `tp_status`: the checksum is partial (`CHECKSUM_PARTIAL`).
pub(crate) const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;

/// `tp_status`: the checksum was verified (Linux 4.1).
pub(crate) const TP_STATUS_CSUM_VALID: u32 = 1 << 7;
