//! `cargo bench -p fdlink-benches [-- --quick]`: the micro benchmarks
//! (plain harness, see `fdlink_benches::micro`).

fn main() -> std::process::ExitCode {
    fdlink_benches::micro::cli(std::env::args().skip(1))
}
