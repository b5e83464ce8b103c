//! Runs the examples that need a real device (`dump`, `echo`,
//! `tun_offload`) against TUN
//! devices in a network namespace made for the purpose, so they never rot:
//! each does its job, and each exits promptly — non-zero, with one line on
//! stderr saying the link closed — when its TUN is deleted under it.
//! Needs root: without it the step is skipped with a note, unless
//! `CI=true`, where a missing capability is a failure.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cmd;

/// How long an example may take to print `ready` or to exit.
const LIMIT: Duration = Duration::from_secs(20);
/// How long an example may take to exit once its TUN is deleted.
const EXIT_ON_DEATH: Duration = Duration::from_secs(1);
/// How often the exit is checked meanwhile.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// Whether this process can make namespaces and TUN devices.
pub(crate) fn capable() -> bool {
    cmd::is_root() && std::path::Path::new("/dev/net/tun").exists()
}

/// Builds both examples in release mode and runs each once.
pub(crate) fn run() -> Result<(), String> {
    cmd::run(&mut cmd::cargo([
        "build",
        "--release",
        "-p",
        "fdlink-core",
        "--example",
        "dump",
        "-p",
        "fdlink-smoltcp",
        "--example",
        "echo",
        "--example",
        "tun_offload",
        "--example",
        "netstack_echo",
        "--features",
        "fdlink-smoltcp/tokio",
    ]))?;
    let ns = Namespace::new()?;
    dump(&ns)?;
    echo(&ns)?;
    tun_offload(&ns)?;
    netstack_echo(&ns, false, "fdx6", 84)?;
    netstack_echo(&ns, true, "fdx7", 86)?;
    exits_when_tun_deleted(
        &ns,
        "tun_offload",
        &["fdx5", "10.82.0.2/24"],
        "fdx5",
        "10.82.0.1/24",
    )?;
    exits_when_tun_deleted(&ns, "dump", &["--tun", "fdx2"], "fdx2", "10.79.0.1/24")?;
    exits_when_tun_deleted(
        &ns,
        "echo",
        &["--tun", "fdx3", "--addr", "10.80.0.2/24"],
        "fdx3",
        "10.80.0.1/24",
    )
}

fn example(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| cmd::workspace_root().join("target"), PathBuf::from);
    target.join("release/examples").join(name)
}

/// `dump` sees the pings routed into its TUN, then stops at `--count`.
fn dump(ns: &Namespace) -> Result<(), String> {
    let mut child = ns.spawn(&example("dump"), &["--tun", "fdx0", "--count", "3"])?;
    let lines = wait_ready(&mut child, "dump")?;
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "fdx0"])?;
    ns.ip(&["link", "set", "fdx0", "up"])?;
    // Nobody answers: the pings only have to reach the TUN.
    let _ = ns.exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", "10.77.0.2"]);
    let out = finish(child, lines, "dump")?;
    let wanted = ["queue 0 received=3", "stats received="];
    check(&out, &wanted, "dump")
}

/// `echo` answers ping on its TUN and prints its statistics on SIGTERM.
fn echo(ns: &Namespace) -> Result<(), String> {
    let mut child = ns.spawn(
        &example("echo"),
        &["--tun", "fdx1", "--addr", "10.78.0.2/24"],
    )?;
    let lines = wait_ready(&mut child, "echo")?;
    ns.ip(&["addr", "add", "10.78.0.1/24", "dev", "fdx1"])?;
    ns.ip(&["link", "set", "fdx1", "up"])?;
    let ping = ns.exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.78.0.2"]);
    // `ip netns exec` execs the example, so this is the example's pid.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = finish(child, lines, "echo")?;
    ping.map_err(|e| format!("echo did not answer ping: {e}"))?;
    check(&out, &["stats "], "echo")
}

/// `tun_offload` echoes what a kernel TCP client sends to port 7 (bash's
/// `/dev/tcp` is the client: no tool to install).
fn tun_offload(ns: &Namespace) -> Result<(), String> {
    let mut child = ns.spawn(&example("tun_offload"), &["fdx4", "10.81.0.2/24"])?;
    let lines = wait_ready(&mut child, "tun_offload")?;
    ns.ip(&["addr", "add", "10.81.0.1/24", "dev", "fdx4"])?;
    ns.ip(&["link", "set", "fdx4", "up"])?;
    let script = "exec 3<>/dev/tcp/10.81.0.2/7 && printf 'echoed by fdlink\\n' >&3 \
                  && read -r -t 5 reply <&3 && [ \"$reply\" = 'echoed by fdlink' ]";
    let echoed = ns.exec("timeout", &["10", "bash", "-c", script]);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = finish(child, lines, "tun_offload");
    echoed.map_err(|e| format!("tun_offload did not echo over TCP: {e}"))
}

/// `netstack_echo` echoes TCP and UDP to any address routed into its TUN
/// (threads, or tokio tasks), and prints its statistics on SIGTERM. The
/// TUN gets 10.`net`.0.1/24, the subnet 10.`net + 1`.0.0/16 is routed in.
fn netstack_echo(ns: &Namespace, tokio: bool, tun: &str, net: u8) -> Result<(), String> {
    let what = if tokio {
        "netstack_echo --tokio"
    } else {
        "netstack_echo"
    };
    let mut args = vec!["--tun", tun];
    if tokio {
        args.push("--tokio");
    }
    let mut child = ns.spawn(&example("netstack_echo"), &args)?;
    let lines = wait_ready(&mut child, what)?;
    let routed = format!("10.{}.0.0/16", net + 1);
    ns.ip(&["addr", "add", &format!("10.{net}.0.1/24"), "dev", tun])?;
    ns.ip(&["link", "set", tun, "up"])?;
    ns.ip(&["route", "add", &routed, "dev", tun])?;
    let far = format!("10.{}.3.4", net + 1);
    let tcp = format!(
        "exec 3<>/dev/tcp/{far}/7777 && printf 'any address\\n' >&3 \
         && read -r -t 5 reply <&3 && [ \"$reply\" = 'any address' ]"
    );
    // `read` takes a byte per system call, which would cut a datagram to
    // its first byte; `head` reads the whole datagram at once.
    let udp = format!(
        "exec 4<>/dev/udp/{far}/5353 && printf 'datagram\\n' >&4 \
         && reply=$(timeout 5 head -c 9 <&4) && [ \"$reply\" = 'datagram' ]"
    );
    let tcp_echoed = ns.exec("timeout", &["10", "bash", "-c", &tcp]);
    let udp_echoed = ns.exec("timeout", &["10", "bash", "-c", &udp]);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = finish(child, lines, what)?;
    tcp_echoed.map_err(|e| format!("{what} did not echo TCP to {far}: {e}"))?;
    udp_echoed.map_err(|e| format!("{what} did not echo UDP to {far}: {e}"))?;
    check(&out, &["stats tcp_accepted=1 ", " udp_flows=1 "], what)
}

/// Starts example `name` on TUN `tun`, waits for `ready`, deletes the TUN
/// (`ip link del`) and requires the example to exit within
/// [`EXIT_ON_DEATH`], with a non-zero status and exactly one non-empty line
/// on stderr that mentions "closed".
fn exits_when_tun_deleted(
    ns: &Namespace,
    name: &str,
    args: &[&str],
    tun: &str,
    kernel_addr: &str,
) -> Result<(), String> {
    let what = format!("{name} (TUN deleted)");
    let mut child = ns.spawn_with_stderr(&example(name), args)?;
    let stderr = read_all_on_a_thread(&mut child)?;
    let lines = wait_ready(&mut child, &what)?;
    // A live, configured link, as in use.
    let configured = ns
        .ip(&["addr", "add", kernel_addr, "dev", tun])
        .and_then(|()| ns.ip(&["link", "set", tun, "up"]));
    if let Err(e) = configured {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{what}: {e}"));
    }
    if let Err(e) = ns.ip(&["link", "del", tun]) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{what}: {e}"));
    }
    let deleted = Instant::now();
    let status = wait_exit(&mut child, deleted, &what)?;
    let took = deleted.elapsed();
    let mut out = String::new();
    while let Ok(line) = lines.try_recv() {
        out.push_str(&line);
        out.push('\n');
    }
    // The example has exited: its stderr is at end of file, unless
    // something it started still holds the pipe.
    let err = stderr
        .recv_timeout(Duration::from_secs(2))
        .map_err(|_| format!("{what}: stderr still open after the exit"))?;
    let err_lines: Vec<&str> = err.lines().collect();
    if status.success() {
        return Err(format!(
            "{what}: exited with {status}, expected a failure\nstdout:\n{out}stderr:\n{err}"
        ));
    }
    match err_lines.as_slice() {
        [line] if !line.trim().is_empty() && line.to_lowercase().contains("closed") => {
            println!("{what}: exited with {status} {took:?} after the deletion: {line}");
            Ok(())
        }
        _ => Err(format!(
            "{what}: stderr should be one line mentioning \"closed\", got {} lines:\n{err}",
            err_lines.len()
        )),
    }
}

/// Polls `child` every [`EXIT_POLL`] until it exits, at most
/// [`EXIT_ON_DEATH`] after `since`; kills it and fails otherwise.
fn wait_exit(child: &mut Child, since: Instant, what: &str) -> Result<ExitStatus, String> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if since.elapsed() >= EXIT_ON_DEATH => {
                let waited = since.elapsed();
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what}: still running {waited:?} after its TUN was deleted \
                     (limit {EXIT_ON_DEATH:?}); killed"
                ));
            }
            Ok(None) => std::thread::sleep(EXIT_POLL),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: {e}"));
            }
        }
    }
}

/// Reads the child's whole stderr on a thread; the text arrives once the
/// pipe is closed.
fn read_all_on_a_thread(child: &mut Child) -> Result<mpsc::Receiver<String>, String> {
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    Ok(rx)
}

fn check(out: &str, wanted: &[&str], name: &str) -> Result<(), String> {
    match wanted.iter().find(|w| !out.contains(*w)) {
        None => {
            println!("{name}: ok");
            Ok(())
        }
        Some(w) => Err(format!("{name} output lacks {w:?}:\n{out}")),
    }
}

/// Reads stdout lines on a thread, so waits can be bounded.
fn wait_ready(child: &mut Child, name: &str) -> Result<mpsc::Receiver<String>, String> {
    let stdout: ChildStdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    match rx.recv_timeout(LIMIT) {
        Ok(line) if line == "ready" => Ok(rx),
        Ok(line) => {
            let _ = child.kill();
            Err(format!("{name}: first line {line:?}, expected \"ready\""))
        }
        Err(_) => {
            let _ = child.kill();
            Err(format!("{name} did not print ready within {LIMIT:?}"))
        }
    }
}

/// Waits (bounded) for the example to exit 0 and returns what it printed.
fn finish(mut child: Child, lines: mpsc::Receiver<String>, name: &str) -> Result<String, String> {
    let mut out = String::new();
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        while let Ok(line) = lines.try_recv() {
            out.push_str(&line);
            out.push('\n');
        }
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(status)) => return Err(format!("{name} exited with {status}:\n{out}")),
            Ok(None) if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                return Err(format!("{name} did not exit within {LIMIT:?}:\n{out}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    // Lines printed just before exit.
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
        out.push_str(&line);
        out.push('\n');
    }
    print!("{out}");
    Ok(out)
}

/// A network namespace, deleted (with its devices) when dropped.
struct Namespace {
    name: String,
}

impl Namespace {
    fn new() -> Result<Self, String> {
        let name = format!("fdlx-{}", std::process::id());
        run_ip(&["netns", "add", &name])?;
        let ns = Namespace { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    fn exec(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("{program}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{program} {args:?}: {status}"))
        }
    }

    fn spawn(&self, program: &std::path::Path, args: &[&str]) -> Result<Child, String> {
        self.command(program, args)
            .spawn()
            .map_err(|e| format!("{}: {e}", program.display()))
    }

    /// [`Namespace::spawn`] with stderr piped too.
    fn spawn_with_stderr(&self, program: &std::path::Path, args: &[&str]) -> Result<Child, String> {
        self.command(program, args)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", program.display()))
    }

    fn command(&self, program: &std::path::Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        cmd
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run_ip(&["netns", "del", &self.name]);
    }
}

fn run_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
