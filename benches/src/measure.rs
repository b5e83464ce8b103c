//! Repeated measurements: wall time next to CPU seconds (`getrusage`), and
//! the median, minimum and maximum over the runs.

use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeValLike;

/// How long and how often to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Smoke run: short windows, few runs, figures not meaningful.
    pub quick: bool,
    /// Runs per measurement (the median is quoted).
    pub runs: usize,
    /// Length of one packets/s window.
    pub pps_window: Duration,
    /// Length of one TCP throughput window.
    pub tcp_window: Duration,
    /// Traffic before a TCP window opens (slow start, buffers filling).
    pub tcp_warmup: Duration,
}

impl Plan {
    /// The plan of a full (`quick == false`) or smoke run.
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                runs: 3,
                pps_window: Duration::from_millis(100),
                tcp_window: Duration::from_millis(200),
                tcp_warmup: Duration::from_millis(50),
            }
        } else {
            Plan {
                quick,
                runs: 5,
                pps_window: Duration::from_millis(700),
                tcp_window: Duration::from_secs(2),
                tcp_warmup: Duration::from_millis(300),
            }
        }
    }
}

/// CPU seconds (user + system) used so far by every thread of the process.
pub fn cpu_seconds() -> f64 {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let us = u.user_time().num_microseconds() + u.system_time().num_microseconds();
            us as f64 / 1e6
        }
        Err(_) => f64::NAN,
    }
}

/// A running wall-clock and CPU stopwatch.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    wall: Instant,
    cpu: f64,
}

impl Meter {
    /// Starts now.
    pub fn start() -> Meter {
        Meter {
            wall: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    /// Wall time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.wall.elapsed()
    }

    /// `(wall seconds, CPU seconds)` since the start.
    pub fn stop(&self) -> (f64, f64) {
        (self.wall.elapsed().as_secs_f64(), cpu_seconds() - self.cpu)
    }
}

/// One run of one measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// The figure (packets/s, Gbit/s).
    pub value: f64,
    /// Wall seconds of the measured window.
    pub wall: f64,
    /// CPU seconds of the whole process in that window.
    pub cpu: f64,
    /// Packets per wakeup (receive calls that returned packets), where
    /// that applies.
    pub per_wakeup: Option<f64>,
}

impl Sample {
    /// A sample of `value` measured over the `meter` window.
    pub fn new(value: f64, meter: &Meter) -> Sample {
        let (wall, cpu) = meter.stop();
        Sample {
            value,
            wall,
            cpu,
            per_wakeup: None,
        }
    }
}

/// Median, minimum and maximum over the runs of one measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Median figure.
    pub median: f64,
    /// Smallest figure.
    pub min: f64,
    /// Largest figure.
    pub max: f64,
    /// Median CPU seconds per window.
    pub cpu: Option<f64>,
    /// Median wall seconds per window.
    pub wall: Option<f64>,
    /// Median packets per wakeup.
    pub per_wakeup: Option<f64>,
    /// How many runs.
    pub runs: usize,
}

/// The median of `v` (upper median for an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Summary {
    /// Summarises the runs.
    pub fn of(samples: &[Sample]) -> Summary {
        let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
        let wakeups: Vec<f64> = samples.iter().filter_map(|s| s.per_wakeup).collect();
        Summary {
            median: median(values.clone()),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            cpu: Some(median(samples.iter().map(|s| s.cpu).collect())),
            wall: Some(median(samples.iter().map(|s| s.wall).collect())),
            per_wakeup: (!wakeups.is_empty()).then(|| median(wakeups)),
            runs: samples.len(),
        }
    }

    /// A single figure without spread or CPU time (the micro benchmarks,
    /// which report their own medians).
    pub fn single(value: f64) -> Summary {
        Summary {
            median: value,
            min: value,
            max: value,
            cpu: None,
            wall: None,
            per_wakeup: None,
            runs: 1,
        }
    }
}

/// Runs `measure(variant)` `runs` times for every variant, interleaved
/// (v1, v2, v3, v1, v2, v3, ...) so that drift of the machine hits every
/// variant alike. Returns the samples per variant, in `variants` order.
pub fn interleaved<V: Copy>(
    runs: usize,
    variants: &[V],
    mut measure: impl FnMut(V) -> Result<Sample, String>,
) -> Result<Vec<Vec<Sample>>, String> {
    let mut out = vec![Vec::with_capacity(runs); variants.len()];
    for _ in 0..runs {
        for (i, v) in variants.iter().enumerate() {
            out[i].push(measure(*v)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_quotes_median_min_max() {
        let s: Vec<Sample> = [3.0, 1.0, 2.0, 5.0, 4.0]
            .iter()
            .map(|&value| Sample {
                value,
                ..Sample::default()
            })
            .collect();
        let sum = Summary::of(&s);
        assert_eq!((sum.median, sum.min, sum.max, sum.runs), (3.0, 1.0, 5.0, 5));
    }

    #[test]
    fn cpu_seconds_advance() {
        let m = Meter::start();
        let mut x = 0u64;
        while m.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let (wall, cpu) = m.stop();
        assert!(wall >= 0.03 && cpu > 0.0, "wall {wall} cpu {cpu}");
    }
}
