//! Network namespaces for integration tests that need real kernel peers.
//!
//! A [`Netns`] is a uniquely named namespace (`ip netns add`), removed when
//! the value is dropped, also while a test panics. Devices and sockets are
//! created inside it either with `ip -n` ([`Netns::ip`]) or from a thread that
//! entered it ([`Netns::run`]); descriptors opened there keep working from any
//! thread. Tests only use 10.0.0.0/8 addresses inside namespaces they made,
//! so they never touch the host's network.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::panic;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, poll};
use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps its bind mounts.
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Turns a finished command into its stdout, or an error carrying the
/// command line and its stderr.
fn check(what: &str, out: Output) -> io::Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn run_cmd(cmd: &str, args: &[&str]) -> io::Result<String> {
    let what = format!("{cmd} {}", args.join(" "));
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run `{what}`: {e}")))?;
    check(&what, out)
}

/// A network namespace that exists for the lifetime of this value.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `<prefix>-<pid>-<counter>` and brings its loopback
    /// up. Namespaces left behind by earlier, killed test processes with the
    /// same prefix (their pid no longer exists) are removed first.
    pub fn new(prefix: &str) -> io::Result<Netns> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        remove_stale(prefix);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_cmd("ip", &["netns", "add", &name])?;
        // From here on, Drop removes the namespace.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as shown by `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> <args>` and returns its stdout; the error carries
    /// stderr.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_cmd("ip", &full)
    }

    /// Runs `cmd args` inside the namespace (`ip netns exec`) and returns its
    /// stdout; the error carries stderr.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> io::Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str(), cmd];
        full.extend_from_slice(args);
        run_cmd("ip", &full)
    }

    /// Runs `f` on a fresh thread that has entered the namespace
    /// (`setns(CLONE_NEWNET)`) and returns its result. Sockets, TUN devices
    /// and interface lookups made by `f` belong to the namespace. A panic in
    /// `f` is resumed in the caller.
    ///
    /// Errors: opening the namespace or `setns` failing.
    pub fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = Path::new(NETNS_RUN_DIR).join(&self.name);
        let ns_file = File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        thread::scope(|s| {
            let handle = s.spawn(move || -> io::Result<T> {
                setns(&ns_file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io::Error::other(format!("setns into netns: {e}")))?;
                drop(ns_file);
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(payload) => panic::resume_unwind(payload),
            }
        })
    }

    /// Creates a veth pair `a`/`b` inside the namespace and sets both up.
    pub fn veth(&self, a: &str, b: &str) -> io::Result<()> {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        self.link_up(a)?;
        self.link_up(b)
    }

    /// Sets interface `dev` up.
    pub fn link_up(&self, dev: &str) -> io::Result<()> {
        self.ip(&["link", "set", dev, "up"]).map(drop)
    }

    /// Adds address `cidr` (e.g. `10.1.0.1/24`, or an IPv6 prefix, added with
    /// `nodad`) to `dev`.
    pub fn addr(&self, dev: &str, cidr: &str) -> io::Result<()> {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", dev, "nodad"])
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev])
        }
        .map(drop)
    }

    /// Adds a permanent neighbour entry `ip` → `mac` on `dev`, so traffic to
    /// `ip` needs no ARP/ND round first.
    pub fn neigh(&self, dev: &str, ip: &str, mac: [u8; 6]) -> io::Result<()> {
        let mac = format_mac(mac);
        self.ip(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    /// Sets sysctl `key` to `value` inside the namespace
    /// (`sysctl -w key=value`).
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_cmd("ip", &["netns", "del", &self.name]) {
            // Never panic in drop (it may run during a panic); say it loudly.
            let _ = writeln!(io::stderr(), "WARNING: removing netns {}: {e}", self.name);
        }
    }
}

/// Removes namespaces `<prefix>-<pid>-<n>` whose process is gone. Best
/// effort: errors are ignored.
fn remove_stale(prefix: &str) {
    let Ok(list) = run_cmd("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let Some((pid, n)) = rest.split_once('-') else {
            continue;
        };
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if numeric(pid) && numeric(n) && !Path::new("/proc").join(pid).exists() {
            let _ = run_cmd("ip", &["netns", "del", name]);
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether this test can use namespaces, TUN/TAP and raw sockets: true when
/// running as root with `/dev/net/tun` present. Otherwise prints
/// `SKIP <test>: needs root and /dev/net/tun` (past the test harness's output
/// capture, so it is visible) and returns false, except with `CI=true` in the
/// environment, where a missing capability is a failure: it panics.
pub fn require_root(test: &str) -> bool {
    let root = effective_uid() == Some(0);
    let tun = Path::new("/dev/net/tun").exists();
    if root && tun {
        return true;
    }
    let msg = format!("{test}: needs root and /dev/net/tun (root: {root}, /dev/net/tun: {tun})");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {msg}");
    }
    // `writeln!` on the raw stderr handle is not captured by libtest, unlike
    // `eprintln!`.
    let _ = writeln!(io::stderr().lock(), "SKIP {msg}");
    false
}

/// The effective user id, from the `Uid:` line of `/proc/self/status`
/// (real, effective, saved, filesystem).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Number of open descriptors of this process (entries of `/proc/self/fd`,
/// not counting the one used to list them). Only meaningful when no other
/// thread opens or closes descriptors meanwhile.
pub fn open_fd_count() -> io::Result<usize> {
    let n = std::fs::read_dir("/proc/self/fd")?.count();
    // read_dir's own descriptor was open while listing.
    Ok(n.saturating_sub(1))
}

/// Waits until `fd` is readable, at most `timeout`. Returns whether it is.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // poll takes milliseconds; at least 1 so a short wait is not a spin.
        let ms = u16::try_from(left.as_millis().clamp(1, 1000)).unwrap_or(1000);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(n) if n > 0 => return Ok(true),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// Reads packets from `fd` (one `read` each) until `accept` returns true for
/// one, and returns that packet. Gives up after `timeout` with a `TimedOut`
/// error that says how many other packets were read.
pub fn read_until(
    fd: BorrowedFd<'_>,
    timeout: Duration,
    mut accept: impl FnMut(&[u8]) -> bool,
) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536 + 128];
    let mut others = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_readable(fd, left)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no matching packet within {timeout:?} ({others} other packets read)"),
            ));
        }
        match nix::unistd::read(fd, &mut buf) {
            Ok(n) if accept(&buf[..n]) => return Ok(buf[..n].to_vec()),
            Ok(_) => others += 1,
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `fd` has `FD_CLOEXEC` set.
pub fn is_cloexec(fd: impl AsFd) -> io::Result<bool> {
    let flags = fcntl(fd, FcntlArg::F_GETFD)?;
    Ok(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC))
}

/// The running kernel's `(major, minor)` version, from
/// `/proc/sys/kernel/osrelease`.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
