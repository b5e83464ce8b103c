//! The capability bit set an endpoint advertises to its stack.

use std::fmt;

use fdlink_sys::tun::OffloadFlags;
use std::ops::{BitOr, BitOrAssign};

/// Capabilities of an endpoint, computed once from its [`crate::Options`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(u32);

impl Capabilities {
    /// Link addresses must be resolved (ARP/NDP): set with Ethernet framing.
    pub const RESOLUTION_REQUIRED: Capabilities = Capabilities(1 << 0);
    /// The link takes segmentation-offload super-packets whole (up to
    /// [`crate::Endpoint::gso_max_size`]): its frames carry virtio-net
    /// headers, so the kernel segments them.
    pub const GSO: Capabilities = Capabilities(1 << 1);

    const NAMES: [(Capabilities, &'static str); 2] = [
        (Self::RESOLUTION_REQUIRED, "RESOLUTION_REQUIRED"),
        (Self::GSO, "GSO"),
    ];

    /// No capability.
    pub const fn empty() -> Self {
        Capabilities(0)
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// True when every bit of `other` is set in `self`.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// `self` with `other` set when `on`.
    pub(crate) const fn with(self, other: Capabilities, on: bool) -> Self {
        if on {
            Capabilities(self.0 | other.0)
        } else {
            self
        }
    }
}

impl BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Self) -> Self {
        Capabilities(self.0 | rhs.0)
    }
}

impl BitOrAssign for Capabilities {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (cap, name) in Self::NAMES {
            if self.contains(cap) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("(empty)")?;
        }
        Ok(())
    }
}

/// What a device took of the offloads asked for (for a TUN/TAP, what
/// `TUNSETOFFLOAD` accepted): the kernel hands over super-packets of these
/// kinds, and takes them whole on write. The offload layer segments the
/// other kinds in software.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DeviceOffloads(u8);

impl DeviceOffloads {
    /// Nothing: no virtio-net headers.
    pub const NONE: DeviceOffloads = DeviceOffloads(0);
    /// Checksum offload (partial checksums in both directions).
    pub const CSUM: DeviceOffloads = DeviceOffloads(1 << 0);
    /// TCP segmentation over IPv4.
    pub const TSO4: DeviceOffloads = DeviceOffloads(1 << 1);
    /// TCP segmentation over IPv6.
    pub const TSO6: DeviceOffloads = DeviceOffloads(1 << 2);
    /// UDP segmentation, both IP versions.
    pub const USO: DeviceOffloads = DeviceOffloads(1 << 3);
    /// Everything.
    pub const ALL: DeviceOffloads = DeviceOffloads(0b1111);

    /// True when every offload of `other` is in the set.
    pub fn contains(self, other: DeviceOffloads) -> bool {
        self.0 & other.0 == other.0
    }

    pub(crate) fn from_tun(flags: OffloadFlags) -> DeviceOffloads {
        let mut set = DeviceOffloads::NONE;
        for (flag, offload) in [
            (OffloadFlags::CSUM, DeviceOffloads::CSUM),
            (OffloadFlags::TSO4, DeviceOffloads::TSO4),
            (OffloadFlags::TSO6, DeviceOffloads::TSO6),
            (OffloadFlags::USO4 | OffloadFlags::USO6, DeviceOffloads::USO),
        ] {
            if flags.contains(flag) {
                set = set | offload;
            }
        }
        set
    }
}

impl std::ops::BitOr for DeviceOffloads {
    type Output = DeviceOffloads;
    fn bitor(self, rhs: DeviceOffloads) -> DeviceOffloads {
        DeviceOffloads(self.0 | rhs.0)
    }
}

impl fmt::Debug for DeviceOffloads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::CSUM, "CSUM"),
            (Self::TSO4, "TSO4"),
            (Self::TSO6, "TSO6"),
            (Self::USO, "USO"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(o, _)| self.contains(*o))
            .map(|(_, n)| *n)
            .collect();
        if set.is_empty() {
            f.write_str("NONE")
        } else {
            f.write_str(&set.join(" | "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_combine_and_print() {
        let c = Capabilities::GSO | Capabilities::RESOLUTION_REQUIRED;
        assert!(c.contains(Capabilities::GSO));
        assert!(!Capabilities::GSO.contains(Capabilities::RESOLUTION_REQUIRED));
        assert_eq!(format!("{c:?}"), "RESOLUTION_REQUIRED | GSO");
        assert_eq!(format!("{:?}", Capabilities::empty()), "(empty)");
    }
}
