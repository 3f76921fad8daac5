//! Installs a Debian package a test needs when it is missing: the README promises that
//! `cargo test --workspace` needs nothing installed by hand, as `.ci/run` promises for CI.
//! (Shared with the command-line package's tests through `#[path]`.)

use std::process::Command;

/// Makes sure `binary` (a name on the PATH, or a path) exists, installing `package` with
/// apt-get if it does not. Test processes that run at once take turns through `flock`.
pub fn ensure(binary: &str, package: &str) {
    if present(binary) {
        return;
    }
    let check = if binary.contains('/') {
        format!("test -x {binary}")
    } else {
        format!("command -v {binary} >/dev/null")
    };
    let script = format!(
        "flock /tmp/servercore-test-provision.lock sh -c '{check} || \
         (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package})'"
    );
    eprintln!("{binary} is missing: installing the Debian package {package}");
    let status = Command::new("sh").args(["-c", &script]).status();
    assert!(
        present(binary),
        "{binary} is missing and `apt-get install {package}` did not provide it ({status:?}); \
         install it by hand"
    );
}

fn present(binary: &str) -> bool {
    if binary.contains('/') {
        return std::path::Path::new(binary).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {binary} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}
