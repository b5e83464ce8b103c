//! The `tunproxy` example (crates/fdlink-smoltcp/examples) against real
//! kernel peers, in three namespaces made here. Needs root and
//! /dev/net/tun (SKIP otherwise, failure under `CI=true`).
//!
//! ```text
//!  client ns                    proxy ns                  server ns
//!  kernel clients               tunproxy ── tpv0 ═══════ tpv1 ── servers
//!  10.199.0.1, fd00:199::1      10.200.1.1               10.200.1.2
//!  10.200.0.0/16, fd00:200::/32 fd00:200:1::1            fd00:200:1::2
//!    routed into tpx0 ──TUN──> (the netstack)
//! ```
//!
//! tunproxy creates the TUN in the proxy namespace and prints `ready`;
//! the test then moves the TUN into the client namespace
//! (`ip link set tpx0 netns ...`), so every case also shows that the proxy
//! keeps working on a device it no longer sees by name, while its upstream
//! sockets stay in its own namespace. One case puts a SOCKS5 server
//! (written here) in the server namespace and runs tunproxy with
//! `--socks5`. The example is built here once, in release mode, with
//! `cargo build` (the cargo that runs the tests).
//!
//! Only 10.x and fd00:: addresses and loopback, inside namespaces made
//! here; every wait is bounded.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fdlink_sys::packet::PacketSocket;
use fdlink_tests::netns::{Netns, require_root, wait_readable};
use fdlink_tests::packet::{Csum, IpSpec, TcpSpec, pattern, tcp_packet, udp_packet};
use fdlink_tests::serial::serial;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The TUN tunproxy creates.
const TUN: &str = "tpx0";
/// The server namespace's addresses.
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 2);
/// The client's own addresses, on the TUN.
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 1);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x199, 0, 0, 0, 0, 0, 1);
/// Server ports: TCP echo, TCP "read all then echo", nothing listening,
/// TCP "greet then read", UDP echo, HTTP.
const ECHO: u16 = 7;
const ECHO_AFTER_EOF: u16 = 8;
const CLOSED: u16 = 9;
const GREET: u16 = 10;
const HTTP: u16 = 8080;
/// How long one step (ready, a connection, an exchange, an exit) may take.
const LIMIT: Duration = Duration::from_secs(30);
/// How long a server serves at most.
const SERVER_LIMIT: Duration = Duration::from_secs(180);

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(SERVER_V4.into(), port)
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::new(SERVER_V6.into(), port)
}

// ---------------------------------------------------------------------------
// The example and its process.
// ---------------------------------------------------------------------------

/// Builds the example once (release) and returns its path, which cargo
/// names in its JSON messages.
fn tunproxy_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root");
        let out = Command::new(cargo)
            .current_dir(root)
            .args([
                "build",
                "--release",
                "-p",
                "fdlink-smoltcp",
                "--example",
                "tunproxy",
                "--message-format=json-render-diagnostics",
            ])
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "building tunproxy failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let messages = String::from_utf8_lossy(&out.stdout);
        messages
            .lines()
            .filter(|l| l.contains("\"name\":\"tunproxy\""))
            .find_map(|l| {
                let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
                let len = l[start..].find('"')?;
                Some(PathBuf::from(&l[start..start + len]))
            })
            .expect("cargo named the tunproxy executable")
    })
}

/// A running tunproxy; killed on drop if still running.
struct Tunproxy {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tunproxy {
    /// Starts it in `ns` (`ip netns exec` execs it: the child's pid is
    /// tunproxy's) and waits for `ready`.
    fn start(ns: &Netns, args: &[&str]) -> Tunproxy {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(tunproxy_bin())
            .args(["--tun", TUN])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tunproxy");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let proxy = Tunproxy { child, lines };
        match proxy.lines.recv_timeout(LIMIT) {
            Ok(line) => assert_eq!(line, "ready", "tunproxy's first line"),
            Err(_) => panic!("tunproxy did not print ready within {LIMIT:?}"),
        }
        proxy
    }

    /// A `kB` or count field of /proc/PID/status (`VmRSS`, `Threads`).
    fn status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("tunproxy's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    /// Sends SIGTERM, requires exit 0 within [`LIMIT`] and returns the
    /// counters of its `stats` line.
    fn stop(&mut self) -> HashMap<String, u64> {
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGTERM).expect("SIGTERM tunproxy");
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            match self.child.try_wait().expect("wait for tunproxy") {
                Some(status) => break status,
                None if Instant::now() > deadline => panic!("tunproxy ignored SIGTERM"),
                None => thread::sleep(Duration::from_millis(10)),
            }
        };
        assert!(status.success(), "tunproxy exited with {status}");
        let mut stats = None;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            if let Some(rest) = line.strip_prefix("stats ") {
                stats = Some(
                    rest.split_whitespace()
                        .filter_map(|kv| {
                            let (k, v) = kv.split_once('=')?;
                            Some((k.to_owned(), v.parse().ok()?))
                        })
                        .collect(),
                );
            }
        }
        let stats = stats.expect("tunproxy printed a stats line");
        println!("tunproxy {stats:?}");
        stats
    }
}

impl Drop for Tunproxy {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The three namespaces with tunproxy between them, set up as the module
/// docs say. Fields drop in order: tunproxy first, then the namespaces.
struct Topology {
    tunproxy: Tunproxy,
    client: Netns,
    proxy: Netns,
    server: Netns,
}

impl Topology {
    fn new(args: &[&str]) -> Topology {
        let server = Netns::new("tpx-s").expect("server netns");
        let proxy = Netns::new("tpx-p").expect("proxy netns");
        let client = Netns::new("tpx-c").expect("client netns");
        proxy
            .ip(&[
                "link",
                "add",
                "tpv0",
                "type",
                "veth",
                "peer",
                "name",
                "tpv1",
                "netns",
                server.name(),
            ])
            .expect("veth");
        for (ns, dev, v4, v6) in [
            (&proxy, "tpv0", "10.200.1.1/24", "fd00:200:1::1/64"),
            (&server, "tpv1", "10.200.1.2/24", "fd00:200:1::2/64"),
        ] {
            ns.addr(dev, v4).expect("veth IPv4");
            ns.addr(dev, v6).expect("veth IPv6");
            ns.link_up(dev).expect("veth up");
        }
        // The proxy reaches the servers before the cases start: the first
        // IPv6 neighbour resolution on a new link can take a second, long
        // enough for a client's SYN to be sent again, which would blur the
        // exact counts.
        for target in ["10.200.1.2", "fd00:200:1::2"] {
            proxy
                .exec("ping", &["-c", "1", "-W", "5", target])
                .expect("the proxy namespace reaches the server namespace");
        }
        let tunproxy = Tunproxy::start(&proxy, args);
        // From here on tunproxy has only its descriptors.
        proxy
            .ip(&["link", "set", TUN, "netns", client.name()])
            .expect("move the TUN to the client namespace");
        client.addr(TUN, "10.199.0.1/32").expect("TUN IPv4");
        client.addr(TUN, "fd00:199::1/128").expect("TUN IPv6");
        client.link_up(TUN).expect("TUN up");
        client
            .ip(&["route", "add", "10.200.0.0/16", "dev", TUN])
            .expect("IPv4 route into the TUN");
        client
            .ip(&["-6", "route", "add", "fd00:200::/32", "dev", TUN])
            .expect("IPv6 route into the TUN");
        Topology {
            tunproxy,
            client,
            proxy,
            server,
        }
    }

    /// Packets the TUN dropped on the way to tunproxy (its queue full).
    fn tun_tx_dropped(&self) -> u64 {
        let path = format!("/sys/class/net/{TUN}/statistics/tx_dropped");
        self.client
            .exec("cat", &[&path])
            .expect("read the TUN's counters")
            .trim()
            .parse()
            .expect("a number")
    }

    /// Runs `f` on a thread in the client namespace.
    fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.client.run(f).expect("enter the client namespace")
    }
}

// ---------------------------------------------------------------------------
// Servers in the server namespace.
// ---------------------------------------------------------------------------

/// A server's accept loop; stopped (and joined) on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Connections (TCP) or datagrams (UDP) served.
    served: Arc<AtomicUsize>,
}

impl Server {
    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves TCP on `addr` in `ns`, each connection on a thread of its own
/// with `handler`. The threads are started from inside the namespace, so
/// sockets a handler opens (the SOCKS5 server's) are the namespace's too.
fn tcp_server(ns: &Netns, addr: SocketAddr, handler: fn(TcpStream)) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let (stop2, served2) = (Arc::clone(&stop), Arc::clone(&served));
    let thread = ns
        .run(move || {
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            listener.set_nonblocking(true).expect("nonblocking");
            thread::spawn(move || {
                let until = Instant::now() + SERVER_LIMIT;
                while !stop2.load(Ordering::SeqCst) && Instant::now() < until {
                    if !wait_readable(listener.as_fd(), Duration::from_millis(50)).unwrap_or(false)
                    {
                        continue;
                    }
                    if let Ok((stream, _)) = listener.accept() {
                        served2.fetch_add(1, Ordering::SeqCst);
                        stream.set_nonblocking(false).expect("blocking stream");
                        stream.set_read_timeout(Some(LIMIT)).expect("timeout");
                        stream.set_write_timeout(Some(LIMIT)).expect("timeout");
                        thread::spawn(move || handler(stream));
                    }
                }
            })
        })
        .expect("enter the server namespace");
    Server {
        stop,
        thread: Some(thread),
        served,
    }
}

/// Echoes until the peer finishes, then finishes too.
fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// Reads everything until the peer's FIN, then sends it all back and
/// closes: the reply exists only if the FIN got through.
fn echo_after_eof(mut stream: TcpStream) {
    let mut all = Vec::new();
    if stream.read_to_end(&mut all).is_ok() {
        let _ = stream.write_all(&all);
    }
}

/// What the greeting server sends before shutting its write side.
const GREETING: &[u8] = b"hello from the server; no more from me\n";

/// Greets, shuts its write side down, then reads until the peer's FIN and
/// sends what it read (its length and a checksum) nowhere but to
/// [`GREET_RESULTS`].
fn greet_then_read(mut stream: TcpStream) {
    let _ = stream.write_all(GREETING);
    let _ = stream.shutdown(Shutdown::Write);
    let mut all = Vec::new();
    let got = stream.read_to_end(&mut all).map(|_| all);
    if let Some(tx) = GREET_RESULTS.get() {
        let _ = tx.lock().unwrap().send(got.map_err(|e| e.kind()));
    }
}

type GreetResult = Result<Vec<u8>, io::ErrorKind>;
static GREET_RESULTS: OnceLock<std::sync::Mutex<mpsc::Sender<GreetResult>>> = OnceLock::new();

/// Echoes UDP datagrams on `addr` in `ns`.
fn udp_echo_server(ns: &Netns, addr: SocketAddr) -> Server {
    let socket = ns
        .run(move || UdpSocket::bind(addr))
        .expect("enter the server namespace")
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let (stop2, served2) = (Arc::clone(&stop), Arc::clone(&served));
    let thread = thread::spawn(move || {
        let until = Instant::now() + SERVER_LIMIT;
        let mut buf = vec![0u8; 65536];
        while !stop2.load(Ordering::SeqCst) && Instant::now() < until {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                served2.fetch_add(1, Ordering::SeqCst);
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    });
    Server {
        stop,
        thread: Some(thread),
        served,
    }
}

/// A connection through the proxy (from the client namespace: call inside
/// [`Topology::in_client`]), with timeouts.
fn connect(dst: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&dst, LIMIT)?;
    stream.set_read_timeout(Some(LIMIT))?;
    stream.set_write_timeout(Some(LIMIT))?;
    Ok(stream)
}

/// One echo exchange of `len` bytes: sent, echoed byte-exact, then a
/// half-close answered by the server's FIN.
fn echo_exchange(dst: SocketAddr, len: usize, salt: u32) {
    let mut s = connect(dst).unwrap_or_else(|e| panic!("connect {dst}: {e}"));
    exchange(&mut s, len, salt);
}

fn exchange(s: &mut TcpStream, len: usize, salt: u32) {
    let data = pattern(len, salt);
    s.write_all(&data).expect("send");
    let mut back = vec![0u8; len];
    s.read_exact(&mut back).expect("echo");
    assert!(
        back == data,
        "the echo of {len} bytes differs (salt {salt})"
    );
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("the server's FIN");
    assert_eq!(rest.len(), 0, "bytes after the echo");
}

// ---------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("fdlink-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop (one this test started).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `len` bytes of xorshift noise (no pattern compression could hide).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// 1. `curl` downloads a few MiB from `python3 -m http.server` through the
///    proxy; the file arrives byte-exact.
#[test]
fn http_download_through_the_proxy() {
    if !require_root("http_download_through_the_proxy") {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new(&["--queues", "2"]);
    let dir = TempDir::new("tunproxy-http");
    let blob = noise((4 << 20) + 12345, 0x5eed_f00d);
    std::fs::write(dir.0.join("blob"), &blob).expect("write the file to serve");
    let dir_arg = dir.0.to_str().expect("utf-8 temp dir");
    let _http = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", topo.server.name(), "python3", "-m"])
            .args(["http.server", &HTTP.to_string(), "--bind", "10.200.1.2"])
            .args(["--directory", dir_arg])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server"),
    );
    // Wait (bounded) until it listens.
    let deadline = Instant::now() + LIMIT;
    while topo
        .server
        .run(|| TcpStream::connect_timeout(&v4(HTTP), Duration::from_secs(1)))
        .expect("enter the server namespace")
        .is_err()
    {
        assert!(Instant::now() < deadline, "http.server did not listen");
        thread::sleep(Duration::from_millis(50));
    }
    let out = dir.0.join("downloaded");
    let out_arg = out.to_str().expect("utf-8 path");
    let url = format!("http://10.200.1.2:{HTTP}/blob");
    topo.client
        .exec(
            "curl",
            &["-sS", "--fail", "--max-time", "60", "-o", out_arg, &url],
        )
        .expect("curl through the proxy");
    let got = std::fs::read(&out).expect("the downloaded file");
    assert_eq!(got.len(), blob.len(), "downloaded length");
    assert!(
        got == blob,
        "the downloaded file differs from the served one"
    );
    let stats = topo.tunproxy.stop();
    assert!(stats["bytes_out"] >= blob.len() as u64, "bytes_out");
}

/// 2. UDP datagrams of many sizes (empty included) to the echo server, over
///    IPv4 and IPv6: each comes back byte-exact, from the original
///    destination.
#[test]
fn udp_exchange_through_the_proxy() {
    if !require_root("udp_exchange_through_the_proxy") {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new(&["--queues", "2"]);
    let servers = [
        udp_echo_server(&topo.server, v4(ECHO)),
        udp_echo_server(&topo.server, v6(ECHO)),
    ];
    let sizes = [0, 1, 2, 17, 100, 512, 1000, 1200, 1400];
    topo.in_client(|| {
        for dst in [v4(ECHO), v6(ECHO)] {
            let any: IpAddr = if dst.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            let socket = UdpSocket::bind((any, 0)).expect("client UDP socket");
            socket.set_read_timeout(Some(LIMIT)).expect("timeout");
            let mut buf = vec![0u8; 65536];
            for (i, &size) in sizes.iter().enumerate() {
                let payload = pattern(size, i as u32);
                socket.send_to(&payload, dst).expect("send");
                let (n, from) = socket.recv_from(&mut buf).expect("the echo");
                assert_eq!(from, dst, "the reply's source");
                assert_eq!(&buf[..n], &payload[..], "echo of {size} bytes to {dst}");
            }
            // A burst, then the replies: none lost, each byte-exact.
            let burst: Vec<Vec<u8>> = (0..32).map(|i| pattern(300 + i, 1000 + i as u32)).collect();
            for p in &burst {
                socket.send_to(p, dst).expect("send");
            }
            let mut got = Vec::new();
            for _ in &burst {
                let (n, _) = socket.recv_from(&mut buf).expect("the burst's echo");
                got.push(buf[..n].to_vec());
            }
            got.sort();
            let mut want = burst.clone();
            want.sort();
            assert!(got == want, "the burst's echoes differ from the burst");
        }
    });
    let per_family = sizes.len() + 32;
    assert_eq!(servers[0].served(), per_family, "IPv4 datagrams served");
    assert_eq!(servers[1].served(), per_family, "IPv6 datagrams served");
    let stats = topo.tunproxy.stop();
    assert_eq!(stats["udp_flows"], 2, "one flow per family");
}

/// 3. Three hundred TCP connections open at once, each echoing 32 KiB
///    byte-exact, IPv4 and IPv6 mixed.
#[test]
fn concurrent_tcp_connections_through_the_proxy() {
    if !require_root("concurrent_tcp_connections_through_the_proxy") {
        return;
    }
    const CONNECTIONS: usize = 300;
    const LEN: usize = 32 << 10;
    let _serial = serial();
    let mut topo = Topology::new(&["--queues", "2"]);
    let servers = [
        tcp_server(&topo.server, v4(ECHO), echo),
        tcp_server(&topo.server, v6(ECHO), echo),
    ];
    topo.in_client(|| {
        // All open first, so they are concurrent; then all exchange at once.
        let mut streams: Vec<TcpStream> = (0..CONNECTIONS)
            .map(|i| {
                let dst = if i % 3 == 0 { v6(ECHO) } else { v4(ECHO) };
                connect(dst).unwrap_or_else(|e| panic!("connection {i} to {dst}: {e}"))
            })
            .collect();
        thread::scope(|s| {
            for (i, stream) in streams.iter_mut().enumerate() {
                s.spawn(move || exchange(stream, LEN, i as u32));
            }
        });
    });
    assert_eq!(
        servers[0].served() + servers[1].served(),
        CONNECTIONS,
        "connections the servers accepted"
    );
    let stats = topo.tunproxy.stop();
    assert_eq!(stats["tcp_accepted"], CONNECTIONS as u64, "tcp_accepted");
    // (Not `refused`: the client's kernel sends IPv6 multicast into the
    // TUN, which is refused and counted.)
    for reason in ["refused_half_open", "refused_connections", "refused_by_app"] {
        assert_eq!(stats[reason], 0, "{reason}");
    }
}

/// 4. Half-close both ways: the client's FIN reaches the server, which
///    answers only then, and the reply arrives in full; the server's FIN
///    reaches the client, which still sends, and all of it arrives.
#[test]
fn half_close_through_the_proxy() {
    if !require_root("half_close_through_the_proxy") {
        return;
    }
    let _serial = serial();
    let (tx, results) = mpsc::channel();
    let _ = GREET_RESULTS.set(std::sync::Mutex::new(tx));
    let mut topo = Topology::new(&["--queues", "2"]);
    let _servers = [
        tcp_server(&topo.server, v4(ECHO_AFTER_EOF), echo_after_eof),
        tcp_server(&topo.server, v6(ECHO_AFTER_EOF), echo_after_eof),
        tcp_server(&topo.server, v4(GREET), greet_then_read),
    ];
    let upload = pattern(256 << 10, 77);
    topo.in_client(|| {
        // The client finishes first.
        for dst in [v4(ECHO_AFTER_EOF), v6(ECHO_AFTER_EOF)] {
            let data = pattern(1 << 20, 7);
            let mut s = connect(dst).expect("connect");
            s.write_all(&data).expect("send");
            s.shutdown(Shutdown::Write).expect("half-close");
            let mut reply = Vec::new();
            s.read_to_end(&mut reply)
                .expect("the reply, then the server's FIN");
            assert_eq!(reply.len(), data.len(), "reply length from {dst}");
            assert!(reply == data, "the reply differs from what was sent");
        }
        // The server finishes first.
        let mut s = connect(v4(GREET)).expect("connect");
        let mut greeting = Vec::new();
        s.read_to_end(&mut greeting)
            .expect("the greeting, then the server's FIN");
        assert_eq!(greeting, GREETING);
        s.write_all(&upload).expect("send after the server's FIN");
        s.shutdown(Shutdown::Write).expect("half-close");
        let mut rest = [0u8; 1];
        assert_eq!(s.read(&mut rest).expect("end of stream"), 0);
    });
    let got = results
        .recv_timeout(LIMIT)
        .expect("the greeting server's result")
        .expect("the greeting server read to the end");
    assert_eq!(got.len(), upload.len(), "bytes the server read");
    assert!(
        got == upload,
        "what the server read differs from the upload"
    );
    let stats = topo.tunproxy.stop();
    assert_eq!(stats["tcp_accepted"], 3, "tcp_accepted");
}

/// 5. An upstream that refuses (nothing listens, or no route) gives the
///    client a reset at once: `ECONNREFUSED`, not a timeout.
#[test]
fn refused_upstream_resets_the_client() {
    if !require_root("refused_upstream_resets_the_client") {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new(&["--queues", "2"]);
    let _echo = tcp_server(&topo.server, v4(ECHO), echo);
    let unrouted: SocketAddr = "10.200.9.9:80".parse().unwrap();
    topo.in_client(|| {
        for dst in [v4(CLOSED), v6(CLOSED), unrouted] {
            let started = Instant::now();
            let err = TcpStream::connect_timeout(&dst, LIMIT)
                .map(drop)
                .expect_err("a refused connection");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{dst}: {err}");
            println!("{dst}: refused after {:?}", started.elapsed());
        }
        // The proxy still serves.
        echo_exchange(v4(ECHO), 1000, 5);
    });
    let stats = topo.tunproxy.stop();
    assert_eq!(stats["refused_by_app"], 3, "refused_by_app");
    assert_eq!(stats["tcp_accepted"], 1, "tcp_accepted");
}

/// An AF_PACKET socket on the TUN in the client namespace: what is written
/// to it leaves through the TUN, to tunproxy, whatever its addresses.
fn tun_injector(topo: &Topology) -> PacketSocket {
    topo.in_client(|| {
        let index = fdlink_sys::netdev::if_index(TUN).expect("the TUN's index");
        // Protocol 0: receives nothing, only sends.
        PacketSocket::open(index, 0).expect("AF_PACKET socket on the TUN")
    })
}

/// Writes `packet` through `socket`, waiting out a full queue (ENOBUFS)
/// for at most [`LIMIT`].
fn inject(socket: &PacketSocket, packet: &[u8]) {
    let deadline = Instant::now() + LIMIT;
    loop {
        match fdlink_sys::io::write(socket.as_fd(), packet) {
            Ok(n) => {
                assert_eq!(n, packet.len(), "short write");
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("inject: {e}"),
        }
    }
}

fn syn(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let ip = IpSpec::new(src.ip(), dst.ip());
    let t = TcpSpec {
        sport: src.port(),
        dport: dst.port(),
        seq: 0x1000_0000,
        ack: 0,
        flags: 0x02,
        window: 65535,
        options: &[],
    };
    tcp_packet(&ip, &t, &[], Csum::Full)
}

fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let ip = IpSpec::new(src.ip(), dst.ip());
    udp_packet(&ip, src.port(), dst.port(), payload, Csum::Full)
}

/// 6. SYNs and UDP datagrams to 127.0.0.1, 127.1.2.3, ::1 and
///    ::ffff:127.0.0.1 written into the TUN never reach the listeners on
///    the proxy host's own loopback, and tunproxy counts each as refused
///    for its loopback destination.
#[test]
fn loopback_destinations_are_refused() {
    if !require_root("loopback_destinations_are_refused") {
        return;
    }
    const PORT: u16 = 7777;
    const ROUNDS: u16 = 3;
    let _serial = serial();
    let mut topo = Topology::new(&["--queues", "2"]);
    let _udp_echo = udp_echo_server(&topo.server, v4(ECHO));
    let (tcp_listeners, udp_listeners) = topo
        .proxy
        .run(|| {
            let mut tcp = Vec::new();
            let mut udp = Vec::new();
            for ip in ["127.0.0.1", "127.1.2.3", "::1"] {
                let addr = SocketAddr::new(ip.parse().unwrap(), PORT);
                tcp.push(TcpListener::bind(addr).expect("loopback TCP listener"));
                udp.push(UdpSocket::bind(addr).expect("loopback UDP socket"));
            }
            (tcp, udp)
        })
        .expect("enter the proxy namespace");
    let injector = tun_injector(&topo);
    let v4_src = IpAddr::from(CLIENT_V4);
    let v6_src = IpAddr::from(CLIENT_V6);
    let targets: [(IpAddr, IpAddr); 4] = [
        (v4_src, "127.0.0.1".parse().unwrap()),
        (v4_src, "127.1.2.3".parse().unwrap()),
        (v6_src, "::1".parse().unwrap()),
        (v6_src, "::ffff:127.0.0.1".parse().unwrap()),
    ];
    let mut injected = 0u64;
    for round in 0..ROUNDS {
        for (i, &(src, dst)) in targets.iter().enumerate() {
            let sport = 40000 + round * 10 + i as u16;
            let (src, dst) = (SocketAddr::new(src, sport), SocketAddr::new(dst, PORT));
            inject(&injector, &syn(src, dst));
            inject(&injector, &udp(src, dst, b"to the proxy's loopback"));
            injected += 2;
        }
    }
    // The proxy is alive and has read past them: a UDP exchange through it
    // works. Then give any stray packet time to land.
    topo.in_client(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("UDP socket");
        socket.set_read_timeout(Some(LIMIT)).expect("timeout");
        socket.send_to(b"still there?", v4(ECHO)).expect("send");
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf).expect("the echo");
        assert_eq!(&buf[..n], b"still there?");
    });
    thread::sleep(Duration::from_millis(300));
    for l in &tcp_listeners {
        l.set_nonblocking(true).expect("nonblocking");
        let got = l.accept().map(|(_, from)| from);
        assert!(
            matches!(&got, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "a loopback TCP listener was reached: {got:?}"
        );
    }
    for u in &udp_listeners {
        u.set_nonblocking(true).expect("nonblocking");
        let got = u.recv_from(&mut [0u8; 64]).map(|(_, from)| from);
        assert!(
            matches!(&got, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "a loopback UDP socket was reached: {got:?}"
        );
    }
    let stats = topo.tunproxy.stop();
    assert_eq!(stats["refused_loopback"], injected, "refused_loopback");
    assert_eq!(stats["tcp_accepted"], 0, "tcp_accepted");
    assert_eq!(stats["udp_flows"], 1, "udp_flows: only the check's");
}

/// 7. Thousands of SYNs to random addresses and ports, written into the
///    TUN as fast as it takes them: every one is refused (by the upstream's
///    failure, or by the half-open cap), the proxy keeps serving, and its
///    memory stays bounded.
///
/// The bound: the flood can hold at most the half-open cap (1024 per
/// queue) of SYNs (a copy of each, ~100 bytes) and as many threads waiting
/// on an upstream connect (each touching a few pages of stack, kept in
/// glibc's stack cache of at most 40 MiB after they end). No connection
/// buffer is made for a SYN that is refused. So the growth is a few tens
/// of MiB at the very most; 96 MiB leaves room while still failing a
/// proxy that kept per-SYN state (tens of thousands of SYNs' connection
/// buffers would be gigabytes).
#[test]
fn syn_flood_leaves_the_proxy_serving() {
    if !require_root("syn_flood_leaves_the_proxy_serving") {
        return;
    }
    const FLOOD: u32 = 5000;
    const GROWTH_LIMIT_KB: u64 = 96 << 10;
    let _serial = serial();
    let mut topo = Topology::new(&["--queues", "2"]);
    let _echo = tcp_server(&topo.server, v4(ECHO), echo);
    let idle_threads = topo.tunproxy.status("Threads");
    topo.in_client(|| echo_exchange(v4(ECHO), 64 << 10, 1));
    let settle = |what: &str| {
        let deadline = Instant::now() + LIMIT;
        while topo.tunproxy.status("Threads") > idle_threads {
            assert!(Instant::now() < deadline, "{what}: threads never settled");
            thread::sleep(Duration::from_millis(20));
        }
    };
    settle("after the first connection");
    let rss_before = topo.tunproxy.status("VmRSS");
    let dropped_before = topo.tun_tx_dropped();
    let injector = tun_injector(&topo);
    let mut seed = 0x1234_5678_9abc_def0_u64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..FLOOD {
        // 10.200.0.0/16 less 10.200.1.0/24: the proxy has no route there,
        // so each upstream connect fails at once.
        let r = random();
        let third = match (r >> 8) as u8 {
            1 => 2,
            x => x,
        };
        let dst = SocketAddr::new(
            Ipv4Addr::new(10, 200, third, r as u8).into(),
            (r >> 16) as u16 | 1,
        );
        // Distinct sources: every SYN is a new connection.
        let src = SocketAddr::new(Ipv4Addr::new(10, 199, 1, 1).into(), 1024 + i as u16);
        inject(&injector, &syn(src, dst));
    }
    settle("after the flood");
    // What the TUN's queue could not take never reached the proxy.
    let dropped = topo.tun_tx_dropped() - dropped_before;
    topo.in_client(|| echo_exchange(v4(ECHO), 64 << 10, 2));
    settle("after the last connection");
    let rss_after = topo.tunproxy.status("VmRSS");
    println!("VmRSS {rss_before} kB before the flood, {rss_after} kB after");
    assert!(
        rss_after <= rss_before + GROWTH_LIMIT_KB,
        "VmRSS grew from {rss_before} kB to {rss_after} kB"
    );
    let stats = topo.tunproxy.stop();
    println!(
        "{FLOOD} SYNs: {dropped} dropped by the TUN's full queue, {} refused for the \
         upstream, {} for the half-open cap",
        stats["refused_by_app"], stats["refused_half_open"]
    );
    assert_eq!(
        stats["refused_by_app"] + stats["refused_half_open"],
        u64::from(FLOOD) - dropped,
        "every flood SYN that reached the proxy refused once, by the upstream or the cap"
    );
    assert_eq!(stats["refused_connections"], 0, "refused_connections");
    assert_eq!(stats["tcp_accepted"], 2, "tcp_accepted");
}

// ---------------------------------------------------------------------------
// Through a SOCKS5 server.
// ---------------------------------------------------------------------------

/// The SOCKS5 server's port (in the server namespace).
const SOCKS: u16 = 1080;
/// Requests the SOCKS5 server got, by command.
static SOCKS_CONNECTS: AtomicUsize = AtomicUsize::new(0);
static SOCKS_ASSOCIATES: AtomicUsize = AtomicUsize::new(0);

/// Reads a SOCKS5 address (IPv4 or IPv6) of type `atyp`.
fn read_socks_addr(r: &mut impl Read, atyp: u8) -> io::Result<SocketAddr> {
    let ip = match atyp {
        1 => {
            let mut a = [0u8; 4];
            r.read_exact(&mut a)?;
            IpAddr::from(a)
        }
        4 => {
            let mut a = [0u8; 16];
            r.read_exact(&mut a)?;
            IpAddr::from(a)
        }
        _ => return Err(io::Error::other("address type")),
    };
    let mut port = [0u8; 2];
    r.read_exact(&mut port)?;
    Ok(SocketAddr::new(ip, u16::from_be_bytes(port)))
}

fn put_socks_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn socks_reply(c: &mut TcpStream, status: u8, bound: SocketAddr) -> io::Result<()> {
    let mut reply = vec![5, status, 0];
    put_socks_addr(&mut reply, bound);
    c.write_all(&reply)
}

/// A SOCKS5 server session (RFC 1928: no authentication; CONNECT, relayed
/// with half-close; UDP ASSOCIATE, relayed until the control connection
/// closes), written here so the test depends on no outside server.
fn socks5(mut c: TcpStream) {
    let _ = socks5_session(&mut c);
}

fn socks5_session(c: &mut TcpStream) -> io::Result<()> {
    let mut head = [0u8; 2];
    c.read_exact(&mut head)?;
    let mut methods = vec![0u8; usize::from(head[1])];
    c.read_exact(&mut methods)?;
    if head[0] != 5 || !methods.contains(&0) {
        return c.write_all(&[5, 0xff]);
    }
    c.write_all(&[5, 0])?;
    let mut req = [0u8; 4];
    c.read_exact(&mut req)?;
    let dst = read_socks_addr(c, req[3])?;
    let unspecified = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    match req[1] {
        1 => {
            SOCKS_CONNECTS.fetch_add(1, Ordering::SeqCst);
            let up = match TcpStream::connect_timeout(&dst, Duration::from_secs(5)) {
                Ok(up) => up,
                Err(e) => {
                    let status = if e.kind() == io::ErrorKind::ConnectionRefused {
                        5
                    } else {
                        1
                    };
                    return socks_reply(c, status, unspecified);
                }
            };
            socks_reply(c, 0, up.local_addr()?)?;
            up.set_read_timeout(Some(LIMIT))?;
            let (c, up) = (&*c, &up);
            thread::scope(|s| {
                s.spawn(move || {
                    let _ = io::copy(&mut &*c, &mut &*up);
                    let _ = up.shutdown(Shutdown::Write);
                });
                let _ = io::copy(&mut &*up, &mut &*c);
                let _ = c.shutdown(Shutdown::Write);
            });
            Ok(())
        }
        3 => {
            SOCKS_ASSOCIATES.fetch_add(1, Ordering::SeqCst);
            let client_ip = c.peer_addr()?.ip();
            let relay = UdpSocket::bind((c.local_addr()?.ip(), 0))?;
            relay.set_read_timeout(Some(Duration::from_millis(20)))?;
            socks_reply(c, 0, relay.local_addr()?)?;
            c.set_nonblocking(true)?;
            let mut client = None;
            let mut buf = vec![0u8; 65536];
            let until = Instant::now() + SERVER_LIMIT;
            while Instant::now() < until {
                // The association lasts as long as the control connection.
                match c.read(&mut [0u8; 1]) {
                    Ok(0) => break,
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => break,
                    _ => {}
                }
                let Ok((n, from)) = relay.recv_from(&mut buf) else {
                    continue;
                };
                if from.ip() == client_ip {
                    // Reserved, fragment 0, destination, payload.
                    let mut d = &buf[..n];
                    let mut fixed = [0u8; 4];
                    d.read_exact(&mut fixed)?;
                    let dst = read_socks_addr(&mut d, fixed[3])?;
                    client = Some(from);
                    relay.send_to(d, dst)?;
                } else if let Some(client) = client {
                    let mut d = vec![0, 0, 0];
                    put_socks_addr(&mut d, from);
                    d.extend_from_slice(&buf[..n]);
                    relay.send_to(&d, client)?;
                }
            }
            Ok(())
        }
        _ => socks_reply(c, 7, unspecified),
    }
}

/// 8. With `--socks5`, TCP (IPv4 and IPv6 destinations, half-close
///    included) and UDP go through the SOCKS5 server, and a destination
///    the server cannot reach is refused with a reset.
#[test]
fn through_a_socks5_server() {
    if !require_root("through_a_socks5_server") {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new(&["--queues", "2", "--socks5", "10.200.1.2:1080"]);
    let _servers = [
        tcp_server(&topo.server, v4(SOCKS), socks5),
        tcp_server(&topo.server, v4(ECHO), echo),
        tcp_server(&topo.server, v6(ECHO_AFTER_EOF), echo_after_eof),
        udp_echo_server(&topo.server, v4(ECHO)),
    ];
    SOCKS_CONNECTS.store(0, Ordering::SeqCst);
    SOCKS_ASSOCIATES.store(0, Ordering::SeqCst);
    topo.in_client(|| {
        echo_exchange(v4(ECHO), 200_000, 11);
        let data = pattern(300_000, 12);
        let mut s = connect(v6(ECHO_AFTER_EOF)).expect("connect");
        s.write_all(&data).expect("send");
        s.shutdown(Shutdown::Write).expect("half-close");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).expect("the reply");
        assert!(reply == data, "the reply through SOCKS5 differs");
        let err = TcpStream::connect_timeout(&v4(CLOSED), LIMIT)
            .map(drop)
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let socket = UdpSocket::bind("0.0.0.0:0").expect("UDP socket");
        socket.set_read_timeout(Some(LIMIT)).expect("timeout");
        let mut buf = vec![0u8; 2048];
        for size in [0, 1, 100, 1400] {
            let payload = pattern(size, 13);
            socket.send_to(&payload, v4(ECHO)).expect("send");
            let (n, from) = socket.recv_from(&mut buf).expect("the echo");
            assert_eq!(from, v4(ECHO), "the reply's source");
            assert_eq!(&buf[..n], &payload[..], "echo of {size} bytes");
        }
    });
    assert_eq!(SOCKS_CONNECTS.load(Ordering::SeqCst), 3, "SOCKS5 CONNECTs");
    assert_eq!(
        SOCKS_ASSOCIATES.load(Ordering::SeqCst),
        1,
        "SOCKS5 UDP ASSOCIATEs"
    );
    let stats = topo.tunproxy.stop();
    assert_eq!(stats["tcp_accepted"], 2, "tcp_accepted");
    assert_eq!(stats["refused_by_app"], 1, "refused_by_app");
    assert_eq!(stats["udp_flows"], 1, "udp_flows");
}
