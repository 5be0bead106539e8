//! `cargo xtask fuzz`: the cargo-fuzz targets of `fuzz/` (libFuzzer). Builds every target
//! once, then runs each on its corpus in `fuzz/corpus/<target>/` (ignored by git); the `gguf`
//! target writes its seeds there first (`CKV_FUZZ_SEEDS`). Crashes land in
//! `fuzz/artifacts/<target>/`.
//!
//! Two builds, one layout (`fuzz/target/<host>/<release|debug>/<target>`):
//! - with AddressSanitizer (the default of `cargo xtask fuzz`): `cargo fuzz build`,
//!   installing the pinned cargo-fuzz when it is missing; its nightly flags (`-Z sanitizer`)
//!   are allowed on the stable toolchain with `RUSTC_BOOTSTRAP=1`, as CI has only stable;
//! - without (`--no-asan`, and `cargo xtask ci`): a plain `cargo build` with the coverage
//!   flags cargo-fuzz passes ([`COVERAGE_FLAGS`]): the same binaries less the sanitizer,
//!   without installing cargo-fuzz (minutes on a clean machine).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cargo_with_env;

/// The cargo-fuzz release installed when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What cargo-fuzz 0.13.2 passes `rustc` without a sanitizer (`cargo fuzz build -v`): the
/// sanitizer coverage libFuzzer reads, `cfg(fuzzing)`, debug assertions and overflow checks.
const COVERAGE_FLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
     -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
     -Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
     -Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

/// The build of `cargo xtask ci`: unoptimized, no sanitizer, no cargo-fuzz.
pub(crate) const CI_BUILD: Build = Build { asan: false, dev: true };

/// Every fuzz target, in the order they run.
pub(crate) const TARGETS: [&str; 3] = ["gguf", "tokenizer", "pipeline"];

/// How long each target runs: until either limit is reached (60 s when neither is set).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Length {
    /// Executions.
    pub(crate) runs: Option<u64>,
    /// Seconds.
    pub(crate) seconds: Option<u64>,
}

/// How the targets are built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Build {
    /// With AddressSanitizer, through cargo-fuzz (installed when missing); otherwise a plain
    /// `cargo build` with [`COVERAGE_FLAGS`].
    pub(crate) asan: bool,
    /// Unoptimized: half the build time of an optimized build, fast enough for a few
    /// thousand executions. Debug assertions and overflow checks are on either way.
    pub(crate) dev: bool,
}

/// The fuzz folder beside `xtask/`.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// `cargo`, as the one running xtask.
fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The host's target triple (`rustc -vV`): the targets are built for it explicitly, so that
/// the flags reach neither build scripts nor proc macros.
fn host() -> Result<String, String> {
    let out = Command::new("rustc").arg("-vV").output().map_err(|e| format!("cannot run rustc: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| "`rustc -vV` names no host".to_owned())
}

/// Installs cargo-fuzz [`CARGO_FUZZ_VERSION`] unless `cargo fuzz --version` reports it.
fn ensure_cargo_fuzz() -> Result<(), String> {
    let installed = Command::new(cargo_program())
        .args(["fuzz", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if installed.as_deref() == Some(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}")) {
        return Ok(());
    }
    cargo_with_env(&["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION], &[])
}

/// `cargo fmt --check` of the fuzz crate (outside the workspace, so not in `cargo fmt --all`).
pub(crate) fn check_format() -> Result<(), String> {
    let manifest = fuzz_dir().join("Cargo.toml");
    let manifest = manifest.to_str().ok_or("the fuzz folder is not UTF-8")?;
    cargo_with_env(&["fmt", "--manifest-path", manifest, "--", "--check"], &[])
}

/// Builds every target as `build` says; returns the folder of the binaries.
fn build_targets(dir: &str, build: Build) -> Result<PathBuf, String> {
    let host = host()?;
    if build.asan {
        ensure_cargo_fuzz()?;
        let profile = if build.dev { "--dev" } else { "--release" };
        let args = ["fuzz", "build", "--fuzz-dir", dir, "--target", &host, "--sanitizer", "address", profile];
        cargo_with_env(&args, &[("RUSTC_BOOTSTRAP", "1".to_owned())])?;
    } else {
        let (manifest, target_dir) = (format!("{dir}/Cargo.toml"), format!("{dir}/target"));
        let mut args = vec!["build", "--manifest-path", &manifest, "--target-dir", &target_dir, "--locked"];
        args.extend(["--bins", "--target", &host]);
        if !build.dev {
            args.push("--release");
        }
        cargo_with_env(&args, &[("RUSTFLAGS", COVERAGE_FLAGS.to_owned())])?;
    }
    Ok(Path::new(dir).join("target").join(host).join(if build.dev { "debug" } else { "release" }))
}

/// Builds every target as `build` says, then runs `targets` for `length` each; fails on the
/// first crash.
pub(crate) fn fuzz(targets: &[&str], length: Length, build: Build) -> Result<(), String> {
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(t)) {
        return Err(format!("unknown fuzz target {unknown:?}: the targets are {}", TARGETS.join(", ")));
    }
    let dir = fuzz_dir();
    let dir = dir.to_str().ok_or_else(|| format!("the fuzz folder {} is not UTF-8", dir.display()))?;
    let bins = build_targets(dir, build)?;
    let mut limits = vec!["-timeout=20".to_owned()];
    limits.extend(length.runs.map(|n| format!("-runs={n}")));
    let seconds = if length.runs.is_none() { Some(length.seconds.unwrap_or(60)) } else { length.seconds };
    limits.extend(seconds.map(|s| format!("-max_total_time={s}")));
    for target in targets {
        let (corpus, artifacts) = (format!("{dir}/corpus/{target}"), format!("{dir}/artifacts/{target}/"));
        for folder in [&corpus, &artifacts] {
            std::fs::create_dir_all(folder).map_err(|e| format!("cannot create {folder}: {e}"))?;
        }
        let bin = bins.join(target);
        eprintln!("\n$ {} {corpus} {}", bin.display(), limits.join(" "));
        let started = std::time::Instant::now();
        let status = Command::new(&bin)
            .arg(&corpus)
            .args(&limits)
            .arg(format!("-artifact_prefix={artifacts}"))
            .env("CKV_FUZZ_SEEDS", &corpus)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        eprintln!("  ({:.0} s)", started.elapsed().as_secs_f64());
        if !status.success() {
            return Err(format!("fuzz target {target} failed ({status}): the input is in {artifacts}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_target_is_refused_by_name_before_any_work() {
        let err = fuzz(&["gguf", "nope"], Length { runs: Some(1), seconds: None }, CI_BUILD).unwrap_err();
        assert!(err.contains("\"nope\"") && err.contains("gguf, tokenizer, pipeline"), "{err}");
    }

    #[test]
    fn coverage_flags_are_one_line_of_flags() {
        assert!(!COVERAGE_FLAGS.contains("  ") && !COVERAGE_FLAGS.contains('\n'), "{COVERAGE_FLAGS}");
        assert!(COVERAGE_FLAGS.split(' ').all(|f| f.starts_with('-') || f == "fuzzing"), "{COVERAGE_FLAGS}");
    }

    #[test]
    fn every_target_has_a_source_and_a_bin() {
        let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
        for target in TARGETS {
            assert!(fuzz_dir().join(format!("fuzz_targets/{target}.rs")).exists(), "{target}");
            assert!(manifest.contains(&format!("name = \"{target}\"")), "{target} is not a [[bin]]");
        }
    }
}
