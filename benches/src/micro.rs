//! Micro benchmarks of fdlink-gso, each next to a `memcpy` baseline.
//!
//! A plain harness (no criterion): every measurement runs in several
//! rounds, each timing a calibrated number of iterations, and the median
//! time per operation is kept. The measured operation and its baseline are
//! measured in alternating rounds, so both see the same machine state.

use std::fmt;
use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fdlink_gso::checksum;
use fdlink_gso::gro::Coalescer;
use fdlink_gso::segment::{SegmentBuf, segment};

/// One micro benchmark result: `value` in `unit`, the `baseline` (a copy
/// of the same bytes) in the same unit, and `ratio = value / baseline`.
///
/// For throughputs (GB/s) a ratio below 1 means slower than the copy; for
/// times (ns per operation) the ratio says how many copies the operation
/// costs.
#[derive(Debug, Clone, PartialEq)]
pub struct MicroResult {
    /// What was measured, e.g. `checksum 1500 B`.
    pub name: String,
    /// The measured figure (median over the rounds).
    pub value: f64,
    /// The baseline figure measured in the same run.
    pub baseline: f64,
    /// `value / baseline`.
    pub ratio: f64,
    /// Unit of `value` and `baseline`: `GB/s` or `ns`.
    pub unit: &'static str,
    /// What the baseline is, e.g. `memcpy 1500 B`.
    pub baseline_name: String,
}

impl fmt::Display for MicroResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<32} {:>10.2} {:<5} | {:<18} {:>10.2} {:<5} | ratio {:>6.3}",
            self.name,
            self.value,
            self.unit,
            self.baseline_name,
            self.baseline,
            self.unit,
            self.ratio
        )
    }
}

/// How long to measure.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Rounds per measurement (the median is reported).
    rounds: usize,
    /// Target duration of one round (used to calibrate iterations).
    round_time: Duration,
    /// Fixed iterations per round instead of calibrating (quick mode).
    fixed_iters: Option<u64>,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 3,
                round_time: Duration::ZERO,
                fixed_iters: Some(16),
            }
        } else {
            Self {
                rounds: 11,
                round_time: Duration::from_millis(30),
                fixed_iters: None,
            }
        }
    }

    /// Iterations so that one round of `f` takes about `round_time`.
    fn iterations(&self, f: &mut impl FnMut()) -> u64 {
        if let Some(n) = self.fixed_iters {
            return n;
        }
        let mut n = 1u64;
        loop {
            let t = time(n, f);
            if t >= self.round_time / 4 || n >= 1 << 32 {
                let per = t.as_secs_f64() / n as f64;
                return ((self.round_time.as_secs_f64() / per) as u64).max(1);
            }
            n *= 2;
        }
    }
}

fn time(iters: u64, f: &mut impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median nanoseconds per call of `op` and of `base`, measured in
/// alternating rounds.
fn measure_pair(plan: &Plan, mut op: impl FnMut(), mut base: impl FnMut()) -> (f64, f64) {
    // Warm up both (page faults, caches, branch predictors).
    time(3, &mut op);
    time(3, &mut base);
    let n_op = plan.iterations(&mut op);
    let n_base = plan.iterations(&mut base);
    let mut t_op = Vec::with_capacity(plan.rounds);
    let mut t_base = Vec::with_capacity(plan.rounds);
    for _ in 0..plan.rounds {
        t_op.push(time(n_op, &mut op).as_nanos().max(1) as f64 / n_op as f64);
        t_base.push(time(n_base, &mut base).as_nanos().max(1) as f64 / n_base as f64);
    }
    (median(t_op), median(t_base))
}

/// A buffer of `len` bytes of a fixed pattern.
fn buffer(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(131) >> 3) as u8).collect()
}

/// Payload bytes per segment (MSS with TCP timestamps over a 1500 MTU).
pub const SEGMENT_SIZE: usize = 1448;
/// Segments per super-packet: 44 × 1448 = 63712 payload bytes, a 63752-byte
/// IPv4 packet (as large as a 64 KiB TSO packet gets with this MSS).
pub const SEGMENTS: usize = 44;
/// Size of the copy the segmentation and GRO figures are compared with.
pub const COPY_LEN: usize = 64 * 1024;

/// An IPv4/TCP super-packet with `SEGMENTS × SEGMENT_SIZE` payload bytes
/// and a complete TCP checksum.
pub fn tcp_super_packet() -> Vec<u8> {
    let payload = buffer(SEGMENTS * SEGMENT_SIZE);
    let total = 40 + payload.len();
    let mut p = vec![
        0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // IPv4
        0x30, 0x39, 0x00, 0x50, 0, 0, 0x03, 0xe8, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0,
        0, // TCP, ACK|PSH
    ];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    let ip_csum = checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    p.extend_from_slice(&payload);
    let mut c = checksum::pseudo_header_ipv4([10, 0, 0, 1], [10, 0, 0, 2], 6, (total - 20) as u16);
    c.add_bytes(&p[20..]);
    let tcp_csum = c.finish();
    p[36..38].copy_from_slice(&tcp_csum.to_be_bytes());
    p
}

/// Runs the micro benchmarks. `quick` runs a handful of iterations only
/// (a smoke test: the figures are then not meaningful).
pub fn run_micro(quick: bool) -> Vec<MicroResult> {
    let plan = Plan::new(quick);
    let mut results = Vec::new();

    // Checksum throughput next to memcpy of the same buffer.
    for (len, label) in [(64, "64 B"), (1500, "1500 B"), (64 * 1024, "64 KiB")] {
        let src = buffer(len);
        let mut dst = vec![0u8; len];
        let (ns_sum, ns_copy) = measure_pair(
            &plan,
            || {
                black_box(checksum::checksum(black_box(&src)));
            },
            || {
                black_box(&mut dst).copy_from_slice(black_box(&src));
                black_box(&dst);
            },
        );
        let gbps = |ns: f64| len as f64 / ns; // bytes per ns = GB/s
        let (value, baseline) = (gbps(ns_sum), gbps(ns_copy));
        results.push(MicroResult {
            name: format!("checksum {label}"),
            value,
            baseline,
            ratio: value / baseline,
            unit: "GB/s",
            baseline_name: format!("memcpy {label}"),
        });
    }

    let packet = tcp_super_packet();
    let src = buffer(COPY_LEN);
    let mut dst = vec![0u8; COPY_LEN];
    let mut copy = || {
        black_box(&mut dst).copy_from_slice(black_box(&src));
        black_box(&dst);
    };

    // Segmentation of one super-packet.
    let mut out = SegmentBuf::new();
    let (ns_seg, ns_copy) = measure_pair(
        &plan,
        || {
            out.clear();
            let n = segment(black_box(&packet), 0, SEGMENT_SIZE, &mut out).ok();
            black_box((n, out.total_bytes()));
        },
        &mut copy,
    );
    results.push(MicroResult {
        name: format!("segment {} B into {SEGMENTS}×{SEGMENT_SIZE}", packet.len()),
        value: ns_seg,
        baseline: ns_copy,
        ratio: ns_seg / ns_copy,
        unit: "ns",
        baseline_name: "memcpy 64 KiB".to_string(),
    });

    // GRO of the segments back into one super-packet (checksums verified,
    // the default configuration).
    let mut segments = SegmentBuf::new();
    let n = segment(&packet, 0, SEGMENT_SIZE, &mut segments).expect("segment the bench packet");
    assert_eq!(n, SEGMENTS);
    let mut gro = Coalescer::new();
    let (ns_gro, ns_copy) = measure_pair(
        &plan,
        || {
            gro.clear();
            for seg in segments.iter() {
                gro.push(black_box(seg));
            }
            gro.flush();
            black_box(gro.get(0));
        },
        &mut copy,
    );
    assert_eq!(gro.len(), 1, "the {SEGMENTS} segments coalesce into one");
    results.push(MicroResult {
        name: format!("GRO {SEGMENTS}×{SEGMENT_SIZE} into one"),
        value: ns_gro,
        baseline: ns_copy,
        ratio: ns_gro / ns_copy,
        unit: "ns",
        baseline_name: "memcpy 64 KiB".to_string(),
    });

    results
}

/// Command-line entry point shared by the `micro` binary and the
/// `gso_micro` bench target: `[--quick]`, prints one line per result.
pub fn cli(args: impl Iterator<Item = String>) -> ExitCode {
    let mut quick = false;
    for arg in args {
        match arg.as_str() {
            "--quick" => quick = true,
            // `cargo bench` passes `--bench` to harness-less targets.
            "--bench" => {}
            other => {
                eprintln!("usage: micro [--quick] (unexpected argument `{other}`)");
                return ExitCode::from(2);
            }
        }
    }
    if cfg!(debug_assertions) && !quick {
        eprintln!("warning: debug build; use --release for meaningful figures");
    }
    for r in run_micro(quick) {
        println!("{r}");
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdlink_gso::complete::verify_l4_checksum;

    #[test]
    fn super_packet_is_valid() {
        let p = tcp_super_packet();
        assert!(verify_l4_checksum(&p));
        assert_eq!(p.len(), 40 + SEGMENTS * SEGMENT_SIZE);
    }

    #[test]
    fn quick_run_reports_every_measurement() {
        let r = run_micro(true);
        assert_eq!(r.len(), 5);
        for m in &r {
            assert!(
                m.value > 0.0 && m.baseline > 0.0 && m.ratio.is_finite(),
                "{m}"
            );
        }
    }
}
