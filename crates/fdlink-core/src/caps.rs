//! The capability bit set an endpoint advertises to its stack.

use std::fmt;
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
