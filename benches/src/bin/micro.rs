//! `micro [--quick]`: runs the micro benchmarks and prints one line each.
//! Build with `--release`: debug figures mean nothing.

fn main() -> std::process::ExitCode {
    fdlink_benches::micro::cli(std::env::args().skip(1))
}
