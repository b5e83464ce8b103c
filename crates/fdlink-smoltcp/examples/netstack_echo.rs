//! Echoes every TCP connection and UDP datagram routed into a TUN — to any
//! address and port — through the netstack's stream API.
//!
//! ```text
//! netstack_echo --tun NAME [--queues N] [--offload on|off] [--tokio]
//! ```
//!
//! It opens (or creates) the TUN, prints `ready`, and serves: each TCP
//! connection on a thread of its own (or a tokio task with `--tokio`, built
//! with `--features tokio`), each UDP flow likewise. On SIGINT or SIGTERM
//! it prints a `stats ...` line and exits 0; when the link dies it prints
//! one line on stderr and exits 1. The kernel side is yours, e.g.
//!
//! ```text
//! netstack_echo --tun ne0 &
//! ip addr add 10.9.0.1/24 dev ne0; ip link set ne0 up
//! ip route add 198.51.100.0/24 dev ne0    # any address, routed in
//! ```

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fdlink_core::{Link, Offload};
use fdlink_smoltcp::netstack::{Netstack, NetstackConfig, TcpStream, UdpFlow};
use nix::sys::signal::{SigSet, Signal};

const USAGE: &str = "usage: netstack_echo --tun NAME [--queues N] [--offload on|off] [--tokio]";

struct Args {
    tun: String,
    queues: usize,
    offload: bool,
    tokio: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        tun: String::new(),
        queues: 1,
        offload: true,
        tokio: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--tun" => args.tun = value()?,
            "--queues" => {
                args.queues = value()?.parse().map_err(|e| format!("--queues: {e}"))?;
            }
            "--offload" => {
                args.offload = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--offload: {other:?} is not on|off")),
                }
            }
            "--tokio" => args.tokio = true,
            _ => return Err(USAGE.into()),
        }
    }
    if args.tun.is_empty() || args.queues == 0 {
        return Err(USAGE.into());
    }
    Ok(args)
}

/// Echoes one TCP connection until the peer finishes, then finishes too.
fn echo_tcp(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Echoes one UDP flow until it expires.
fn echo_udp(flow: UdpFlow) {
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = flow.recv(&mut buf, None) {
        if flow.send(&buf[..n], Some(Duration::from_secs(1))).is_err() {
            break;
        }
    }
}

fn serve_threads(netstack: &Arc<Netstack>) -> String {
    let udp = Arc::clone(netstack);
    std::thread::spawn(move || {
        while let Ok(flow) = udp.accept_udp() {
            std::thread::spawn(move || echo_udp(flow));
        }
    });
    loop {
        match netstack.accept() {
            Ok(stream) => {
                std::thread::spawn(move || echo_tcp(stream));
            }
            Err(e) => return format!("the link closed: {e}"),
        }
    }
}

#[cfg(feature = "tokio")]
fn serve_tokio(netstack: &Arc<Netstack>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = match tokio::runtime::Builder::new_multi_thread().build() {
        Ok(r) => r,
        Err(e) => return format!("tokio: {e}"),
    };
    runtime.block_on(async {
        let udp = Arc::clone(netstack);
        tokio::spawn(async move {
            while let Ok(flow) = udp.accept_udp_async().await {
                tokio::task::spawn_blocking(move || echo_udp(flow));
            }
        });
        loop {
            match netstack.accept_async().await {
                Ok(mut stream) => {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            match AsyncReadExt::read(&mut stream, &mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if AsyncWriteExt::write_all(&mut stream, &buf[..n])
                                        .await
                                        .is_err()
                                    {
                                        return;
                                    }
                                }
                            }
                        }
                        let _ = AsyncWriteExt::shutdown(&mut stream).await;
                    });
                }
                Err(e) => return format!("the link closed: {e}"),
            }
        }
    })
}

#[cfg(not(feature = "tokio"))]
fn serve_tokio(_netstack: &Arc<Netstack>) -> String {
    "--tokio needs the example built with --features tokio".into()
}

fn run(args: Args) -> Result<(), String> {
    // Block the stop signals before any thread exists, so only the waiter
    // below takes them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let link = Link::tun(&args.tun)
        .queues(args.queues)
        .offload(if args.offload {
            Offload::Auto
        } else {
            Offload::Off
        });
    let config =
        NetstackConfig::default().device(fdlink_smoltcp::DeviceConfig::default().gso(args.offload));
    let netstack = Arc::new(Netstack::open(link, config).map_err(|e| e.to_string())?);
    let for_signal = Arc::clone(&netstack);
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "stats {}", for_signal.stats());
            let _ = out.flush();
            std::process::exit(0);
        }
    });
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    let ended = if args.tokio {
        serve_tokio(&netstack)
    } else {
        serve_threads(&netstack)
    };
    Err(ended)
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netstack_echo: {e}");
            ExitCode::FAILURE
        }
    }
}
