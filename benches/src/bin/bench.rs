//! `bench [--quick] [--out DIR]`: every benchmark scenario next to its
//! baseline; writes `DIR/report.md` and `DIR/report.svg`. Run by
//! `cargo xtask bench`. Build with `--release`.

fn main() -> std::process::ExitCode {
    fdlink_benches::cli::main(std::env::args().skip(1))
}
