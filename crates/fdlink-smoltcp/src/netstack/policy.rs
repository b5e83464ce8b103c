//! Which destinations a packet arriving on the link may reach. By default
//! the special ones — loopback, unspecified, multicast, broadcast,
//! link-local — are refused, so whoever can write into the TUN cannot reach
//! services bound to the proxy host's own loopback through it.

use std::net::IpAddr;

/// A kind of destination address the netstack refuses unless allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SpecialDestination {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
}

impl SpecialDestination {
    /// Every kind, in the order of [`crate::netstack::NetstackStats`]'
    /// counters.
    pub const ALL: [SpecialDestination; 5] = [
        SpecialDestination::Loopback,
        SpecialDestination::Unspecified,
        SpecialDestination::Multicast,
        SpecialDestination::Broadcast,
        SpecialDestination::LinkLocal,
    ];

    /// The kind of `ip`, when it is a special one.
    pub fn of(ip: IpAddr) -> Option<SpecialDestination> {
        // An IPv4-mapped IPv6 address is judged as the IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(a) if a.is_loopback() => Some(SpecialDestination::Loopback),
            IpAddr::V4(a) if a.is_unspecified() => Some(SpecialDestination::Unspecified),
            IpAddr::V4(a) if a.is_multicast() => Some(SpecialDestination::Multicast),
            IpAddr::V4(a) if a.is_broadcast() => Some(SpecialDestination::Broadcast),
            IpAddr::V4(a) if a.is_link_local() => Some(SpecialDestination::LinkLocal),
            IpAddr::V6(a) if a.is_loopback() => Some(SpecialDestination::Loopback),
            IpAddr::V6(a) if a.is_unspecified() => Some(SpecialDestination::Unspecified),
            IpAddr::V6(a) if a.is_multicast() => Some(SpecialDestination::Multicast),
            IpAddr::V6(a) if a.is_unicast_link_local() => Some(SpecialDestination::LinkLocal),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Which special destinations are allowed; none by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DestinationPolicy {
    allowed: u8,
}

impl DestinationPolicy {
    /// The default: every special destination refused.
    pub fn strict() -> Self {
        DestinationPolicy::default()
    }

    /// Allows one kind of special destination too.
    pub fn allow(mut self, kind: SpecialDestination) -> Self {
        self.allowed |= kind.bit();
        self
    }

    /// Whether a packet to `ip` may go on; `Err` names the refused kind.
    pub fn check(self, ip: IpAddr) -> Result<(), SpecialDestination> {
        match SpecialDestination::of(ip) {
            Some(kind) if self.allowed & kind.bit() == 0 => Err(kind),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_destinations_are_refused_unless_allowed() {
        let strict = DestinationPolicy::strict();
        for (ip, kind) in [
            ("127.0.0.1", SpecialDestination::Loopback),
            ("127.9.9.9", SpecialDestination::Loopback),
            ("::1", SpecialDestination::Loopback),
            ("::ffff:127.0.0.1", SpecialDestination::Loopback),
            ("0.0.0.0", SpecialDestination::Unspecified),
            ("::", SpecialDestination::Unspecified),
            ("224.0.0.251", SpecialDestination::Multicast),
            ("ff02::1", SpecialDestination::Multicast),
            ("255.255.255.255", SpecialDestination::Broadcast),
            ("169.254.1.1", SpecialDestination::LinkLocal),
            ("fe80::1", SpecialDestination::LinkLocal),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(strict.check(ip), Err(kind), "{ip}");
            assert_eq!(strict.allow(kind).check(ip), Ok(()), "{ip}");
        }
        for ip in ["10.1.2.3", "93.184.216.34", "2001:db8::1", "fd00::5"] {
            assert_eq!(strict.check(ip.parse().unwrap()), Ok(()), "{ip}");
        }
    }
}
