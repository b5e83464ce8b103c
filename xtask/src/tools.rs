//! The programs CI needs besides the Rust toolchain: the commands the tests
//! and the device examples run, and the rustup components of the fmt and
//! clippy steps. `cargo xtask ci` checks them first and, as root, installs
//! what is missing.
//!
//! Why here: the README gives one command, `cargo xtask ci`, and it must
//! pass on a fresh Debian 12 that has only the Rust toolchain. A separate
//! install script would be a second path that a developer skips; here the
//! check is part of the one command, and costs nothing when all is present
//! (apt-get runs only when a command is missing, so reruns stay fast).
//!
//! Without root nothing is installed: the tests that run these commands
//! need root anyway and print SKIP lines, so a note naming what is missing
//! is enough. With `CI=true` a missing program is a failure, as a missing
//! root or `/dev/net/tun` is for the tests: CI must never pass by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{self, Steps};

/// An external command run by the tests or the device examples, and the
/// Debian package that provides it.
#[derive(Debug)]
struct Tool {
    /// Program name, looked up like a shell does (see [`find`]).
    command: &'static str,
    /// The Debian 12 package that installs it.
    package: &'static str,
}

/// Every external command the tests (`tests/`) and the device examples
/// (`xtask/src/device_examples.rs`) run. Add a row when a test starts
/// running a new program.
const TOOLS: &[Tool] = &[
    // Namespaces, veth pairs, addresses, `ip netns exec`.
    Tool {
        command: "ip",
        package: "iproute2",
    },
    // Traffic to and from the endpoints under test, across TUN and veth.
    Tool {
        command: "ping",
        package: "iputils-ping",
    },
    // Device offloads: read by `sys_tun`, switched off by `smoltcp_echo`.
    Tool {
        command: "ethtool",
        package: "ethtool",
    },
    // Per-namespace settings (IPv6 off, forwarding).
    Tool {
        command: "sysctl",
        package: "procps",
    },
    // The device examples stop `echo` with `kill -TERM`.
    Tool {
        command: "kill",
        package: "procps",
    },
    // `netstack_proxy`: an HTTP download through the tunproxy example, from
    // `python3 -m http.server` to `curl`.
    Tool {
        command: "curl",
        package: "curl",
    },
    Tool {
        command: "python3",
        package: "python3",
    },
    // Not run by the tests but by the kernel, to load `tun`, `veth` and
    // the like on first use; without it those devices cannot be created.
    Tool {
        command: "modprobe",
        package: "kmod",
    },
];

/// The rustup components the fmt and clippy steps use: a minimal toolchain
/// lacks them. Each is checked with `cargo <subcommand> --version`.
const COMPONENTS: &[(&str, &str)] = &[("rustfmt", "fmt"), ("clippy", "clippy")];

/// Where Debian puts administration commands; a non-root user's PATH
/// usually lacks them, yet the commands are installed.
const SBIN: &[&str] = &["/usr/sbin", "/sbin"];

/// Checks the tools and components, and, as root, installs the missing
/// ones as the `tools` step. Without root, missing ones are named in a note
/// (a failed step with `CI=true`). Runs before every other CI step.
pub(crate) fn ensure(steps: &mut Steps) {
    let tools = missing_tools();
    let components = missing_components();
    if tools.is_empty() && components.is_empty() {
        steps.step("tools", || Ok(()));
        return;
    }
    let missing = describe(&tools, &components);
    if cmd::is_root() {
        steps.step("tools", || {
            install(&tools, &components).map_err(|why| format!("{why}; missing {missing}"))
        });
    } else if cmd::on_ci() {
        steps.step("tools", || {
            Err(format!(
                "CI=true but not root, so nothing is installed; missing {missing}"
            ))
        });
    } else {
        steps.note(&format!(
            "tools: missing {missing}; not root, so not installed \
             (tests that need them need root too and SKIP)"
        ));
    }
}

/// The tools of [`TOOLS`] that [`find`] does not find.
fn missing_tools() -> Vec<&'static Tool> {
    TOOLS.iter().filter(|t| find(t.command).is_none()).collect()
}

/// The components of [`COMPONENTS`] whose cargo subcommand does not run.
fn missing_components() -> Vec<&'static str> {
    COMPONENTS
        .iter()
        .filter(|(_, sub)| !cmd::succeeds(&mut cmd::cargo([sub, "--version"])))
        .map(|(component, _)| *component)
        .collect()
}

/// Looks `command` up in `$PATH`, then in [`SBIN`]: the first executable
/// file of that name.
fn find(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join(command))
        .find(|file| is_executable(file))
}

/// Whether `file` is a regular file (after symlinks) with an execute bit.
fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `ping (iputils-ping), ethtool (ethtool), rustup component clippy`.
fn describe(tools: &[&Tool], components: &[&str]) -> String {
    tools
        .iter()
        .map(|t| format!("{} ({})", t.command, t.package))
        .chain(components.iter().map(|c| format!("rustup component {c}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The packages that provide `tools`, each once, in table order.
fn packages(tools: &[&Tool]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = Vec::new();
    for tool in tools {
        if !packages.contains(&tool.package) {
            packages.push(tool.package);
        }
    }
    packages
}

/// Installs the packages of `tools` with apt-get and `components` with
/// rustup (root only), then checks that the tools are now found.
fn install(tools: &[&Tool], components: &[&str]) -> Result<(), String> {
    if !tools.is_empty() {
        let packages = packages(tools);
        // No questions from debconf: CI has no one to answer them.
        let apt = |args: &[&str]| {
            let mut cmd = Command::new("apt-get");
            cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            cmd
        };
        cmd::run(&mut apt(&["update"]))?;
        let mut install = apt(&["install", "-y", "--no-install-recommends"]);
        install.args(&packages);
        cmd::run(&mut install)?;
        let still: Vec<&str> = tools
            .iter()
            .filter(|t| find(t.command).is_none())
            .map(|t| t.command)
            .collect();
        if !still.is_empty() {
            return Err(format!(
                "installed {} but {} still not found",
                packages.join(" "),
                still.join(" ")
            ));
        }
    }
    for component in components {
        // From the workspace root, so a toolchain file there would apply.
        cmd::run(
            Command::new("rustup")
                .args(["component", "add", component])
                .current_dir(cmd::workspace_root()),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{TOOLS, Tool, describe, packages};

    fn tool(command: &str) -> &'static Tool {
        TOOLS.iter().find(|t| t.command == command).unwrap()
    }

    #[test]
    fn each_package_is_installed_once() {
        assert_eq!(
            packages(&[tool("sysctl"), tool("ping"), tool("kill")]),
            ["procps", "iputils-ping"]
        );
    }

    #[test]
    fn missing_names_command_package_and_component() {
        assert_eq!(
            describe(&[tool("ping"), tool("ethtool")], &["clippy"]),
            "ping (iputils-ping), ethtool (ethtool), rustup component clippy"
        );
    }
}
