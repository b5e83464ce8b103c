//! Queries of network interfaces by name, in the calling thread's network
//! namespace: index, MTU, MAC address (`if_nametoindex` and the `SIOCGIF*`
//! ioctls on a throwaway socket), and the `struct ifreq` they and the TUN
//! set-up share.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::cvt;

/// Interface name length limit including the terminating NUL (`IFNAMSIZ`).
pub(crate) const IFNAMSIZ: usize = 16;

/// Hardware type of an Ethernet-like device in `sa_family` of
/// `SIOCGIFHWADDR` and `ifi_type` of a link message (`ARPHRD_ETHER`).
pub(crate) const ARPHRD_ETHER: libc::sa_family_t = 1;

/// `struct ifreq` with the members this crate uses. Its size equals the
/// kernel's (checked below), so the kernel never reads or writes past it.
#[repr(C)]
pub(crate) struct IfReq {
    name: [u8; IFNAMSIZ],
    pub(crate) data: IfReqData,
}

/// The `ifr_ifru` union of `struct ifreq`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union IfReqData {
    pub(crate) flags: libc::c_short,
    mtu: libc::c_int,
    hwaddr: libc::sockaddr,
    /// `struct ifmap`, the largest member: three `unsigned long`s in size
    /// (with padding) on 64-bit targets.
    _map: [libc::c_ulong; 3],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == std::mem::size_of::<libc::ifreq>());

impl IfReq {
    /// An all-zero request for interface `name`.
    ///
    /// Errors: `InvalidInput` if the name is too long for `IFNAMSIZ` or
    /// contains a NUL byte.
    pub(crate) fn new(name: &str) -> io::Result<IfReq> {
        let bytes = name.as_bytes();
        if bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}: at most 15 bytes, no NUL"),
            ));
        }
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            data: IfReqData { _map: [0; 3] },
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        Ok(req)
    }

    /// The interface name the kernel wrote back (up to the first NUL).
    pub(crate) fn name(&self) -> String {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(&self.name[..len]).into_owned()
    }
}

/// The index of interface `name` in the calling thread's network namespace
/// (`if_nametoindex`).
///
/// Errors: `InvalidInput` for a name with a NUL byte; `ENODEV` (kind
/// `NotFound`) when no such interface exists.
pub fn if_index(name: &str) -> io::Result<u32> {
    let cname = CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name contains a NUL byte",
        )
    })?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the
    // call; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        let err = io::Error::last_os_error();
        // glibc reports a missing interface as ENODEV; be explicit in case a
        // libc leaves errno unset.
        return Err(match err.raw_os_error() {
            Some(0) | None => io::Error::from_raw_os_error(libc::ENODEV),
            _ => err,
        });
    }
    Ok(index)
}

/// Runs the interface ioctl `request` for `req` on a throwaway datagram
/// socket of the calling thread's network namespace.
fn if_ioctl(request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: socket() has no memory arguments; the result is checked
    // before use.
    let raw =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a descriptor socket() just returned and nothing else
    // owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: SIOCGIF* requests read and write one `struct ifreq`; `req` is
    // a live, exclusively borrowed value of exactly that size.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut IfReq) })?;
    Ok(())
}

/// The MTU of interface `name` in the calling thread's network namespace
/// (`SIOCGIFMTU`): the largest IP packet, without link-layer header.
///
/// Errors: `InvalidInput` for a bad name; `ENODEV` when no such interface
/// exists.
pub fn if_mtu(name: &str) -> io::Result<u32> {
    let mut req = IfReq::new(name)?;
    if_ioctl(libc::SIOCGIFMTU as libc::c_ulong, &mut req)?;
    // SAFETY: SIOCGIFMTU succeeded, so the kernel stored `ifr_mtu`, a plain
    // integer valid for any bit pattern.
    let mtu = unsafe { req.data.mtu };
    u32::try_from(mtu).map_err(|_| io::Error::other("kernel returned a negative MTU"))
}

/// The MAC address of interface `name` in the calling thread's network
/// namespace (`SIOCGIFHWADDR`), or `None` when the device is not
/// Ethernet-like (a TUN device or loopback has no MAC address).
///
/// Errors: `InvalidInput` for a bad name; `ENODEV` when no such interface
/// exists.
pub fn if_hwaddr(name: &str) -> io::Result<Option<[u8; 6]>> {
    let mut req = IfReq::new(name)?;
    if_ioctl(libc::SIOCGIFHWADDR as libc::c_ulong, &mut req)?;
    // SAFETY: SIOCGIFHWADDR succeeded, so the kernel stored `ifr_hwaddr`, a
    // `sockaddr` of plain integers valid for any bit pattern.
    let addr = unsafe { req.data.hwaddr };
    if addr.sa_family != ARPHRD_ETHER {
        return Ok(None);
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(addr.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(Some(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_name_limits() {
        assert!(IfReq::new("fifteen-chars-x").is_ok());
        assert_eq!(
            IfReq::new("sixteen-chars-xx").err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidInput)
        );
        assert!(IfReq::new("a\0b").is_err());
        assert_eq!(
            IfReq::new("tun7").map(|r| r.name()).ok().as_deref(),
            Some("tun7")
        );
    }

    #[test]
    fn loopback_facts() {
        assert_eq!(if_hwaddr("lo").ok(), Some(None));
        assert!(if_mtu("lo").is_ok_and(|m| m > 0));
        assert!(if_index("lo").is_ok_and(|i| i > 0));
        assert_eq!(
            if_index("fdl-no-such").err().and_then(|e| e.raw_os_error()),
            Some(libc::ENODEV)
        );
    }
}
