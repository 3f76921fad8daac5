//! The library reads no environment variable but `SERVERCORE_BACKEND` (issue 12, item 3):
//! diagnostic switches are configuration (`Diagnostics`), which the CLI and the benchmark
//! set from their environment. This reads the library's sources and fails on any other read.

mod sources;

use sources::rust_files;
use std::path::Path;

#[test]
fn only_the_backend_choice_reads_the_environment() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found the sources: {files:?}");
    // Test-only modules (`#[cfg(test)] mod x;`) are not the library: the conformance
    // suite, say, may re-run itself in a child process marked by a variable.
    let test_only = test_only_files(&files);
    assert!(
        test_only.iter().any(|f| f.ends_with("driver/conformance.rs")),
        "found the test-only modules: {test_only:?}"
    );
    let mut reads = Vec::new();
    for file in files.iter().filter(|f| !test_only.contains(f)) {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("env::var") {
                reads.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    let allowed = |r: &String| r.contains("select.rs") && r.contains("BACKEND_ENV");
    let others: Vec<_> = reads.iter().filter(|r| !allowed(r)).collect();
    assert!(others.is_empty(), "environment reads besides SERVERCORE_BACKEND:\n{others:#?}");
    assert_eq!(reads.len(), 1, "the one read of SERVERCORE_BACKEND: {reads:#?}");
}

/// The files of modules declared `#[cfg(test)] mod name;` (or `#[cfg(all(test, ..))]`): `name.rs` or `name/mod.rs` next
/// to the declaring file (in its directory when it is a `mod.rs` or `lib.rs`).
fn test_only_files(files: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("mod.rs" | "lib.rs") => file.parent().unwrap().to_path_buf(),
            _ => file.with_extension(""),
        };
        let mut cfg_test = false;
        for line in text.lines().map(str::trim) {
            if let Some(name) = line
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
                .filter(|_| cfg_test)
            {
                for candidate in [dir.join(format!("{name}.rs")), dir.join(name).join("mod.rs")] {
                    if files.contains(&candidate) {
                        out.push(candidate);
                    }
                }
            }
            if !line.is_empty() {
                cfg_test = line == "#[cfg(test)]" || line.starts_with("#[cfg(all(test,");
            }
        }
    }
    out
}

/// `Diagnostics::deny_io_uring` replaces the probe hook that used to read
/// `SERVERCORE_TEST_DENY_IO_URING`: a forced io_uring is a startup error naming it, a forced
/// poll is not affected.
#[test]
fn denied_io_uring_is_a_setting_of_the_builder() {
    use servercore::{BackendChoice, Ctx, Diagnostics, ServerService, Session};
    struct Sink;
    impl Session for Sink {
        fn on_recv(&mut self, _: &mut Ctx<'_>, data: &[u8]) -> usize {
            data.len()
        }
    }
    let denied = Diagnostics { deny_io_uring: true, ..Default::default() };
    let builder = || ServerService::builder("127.0.0.1:0".parse().unwrap()).workers(1);
    let err = builder()
        .backend(BackendChoice::IoUring)
        .diagnostics(denied)
        .start(|| Sink)
        .err()
        .expect("io_uring was denied");
    assert!(err.to_string().contains("deny_io_uring"), "{err}");
    let server = builder().backend(BackendChoice::Poll).diagnostics(denied).start(|| Sink).unwrap();
    assert_eq!(server.backend(), servercore::Backend::Poll);
    server.shutdown(std::time::Duration::from_secs(1)).unwrap();
}
