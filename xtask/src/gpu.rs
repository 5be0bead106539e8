//! `cargo xtask gpu-check`: builds the GPU tests and `clusterkv` with the `cuda` feature,
//! runs the tests (every kernel against the CPU path, and the pipeline suite on the GPU
//! backend), then `clusterkv gpu-bench`, whose table comes last. `--bundle DIR` instead puts
//! the programs and a `run.sh` into DIR, for a GPU machine with a CUDA toolkit but no Rust.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::fetch::stderr_tail;
use crate::kernels::{library_path, target_dir, toolkit};

/// The script of a bundle: the CUDA toolkit's NVRTC and headers, the tests, the benchmark.
const RUN_SH: &str = r#"#!/bin/sh
# The GPU check of clusterkv-rs on a machine with an NVIDIA GPU and a CUDA 13 toolkit
# (NVRTC and cuda_fp16.h; CUDA_HOME, default /usr/local/cuda): the GPU tests, then the GPU
# benchmark. Arguments go to `clusterkv gpu-bench`.
set -e
here=$(cd "$(dirname "$0")" && pwd)
cuda=${CUDA_HOME:-/usr/local/cuda}
export LD_LIBRARY_PATH="$cuda/lib64:$cuda/lib:${LD_LIBRARY_PATH:-}"
export CKV_CUDA_INCLUDE="${CKV_CUDA_INCLUDE:-$cuda/include}"
"$here/ckv-kernels-tests" --nocapture --test-threads 1
"$here/ckv-gpu-tests" --nocapture --test-threads 1
"$here/ckv-pipeline-tests" --nocapture --test-threads 1
"$here/clusterkv" gpu-bench "$@"
"#;

/// The test target that stands for a package's unit tests (`cargo test --lib`).
const LIB: &str = "lib";

/// The GPU test programs: `(package, target, name in a bundle)`, the target a test
/// target's name or [`LIB`].
/// ckv-kernels' unit tests drive its launchers where no public call reaches (a tier given
/// too few slots); ckv-sim's hold each kernel against the CPU path; ckv-attn's is the
/// pipeline suite, every test instantiated for the GPU backend too.
const GPU_TESTS: [(&str, &str, &str); 3] = [
    ("ckv-kernels", LIB, "ckv-kernels-tests"),
    ("ckv-sim", "gpu", "ckv-gpu-tests"),
    ("ckv-attn", "pipeline", "ckv-pipeline-tests"),
];

/// A built test program and its name in a bundle.
type Program = (PathBuf, &'static str);

/// Builds `clusterkv` and the GPU test programs (release, feature `cuda`); returns the path
/// of `clusterkv` and of each test program, named as in a bundle.
fn build() -> Result<(PathBuf, Vec<Program>), String> {
    let mut args = vec!["build", "--release", "--locked", "--package", "clusterkv", "--features", "cuda"];
    args.extend(["--bin", "clusterkv"]);
    crate::cargo_with_env(&args, &[])?;
    let mut tests = Vec::new();
    for (package, test, name) in GPU_TESTS {
        let features = ["--release", "--locked", "--package", package, "--features", "cuda"];
        let target: &[&str] = if test == LIB { &["--lib"] } else { &["--test", test] };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        eprintln!("\n$ cargo test {} {} --no-run", features.join(" "), target.join(" "));
        let out = Command::new(cargo)
            .arg("test")
            .args(features)
            .args(target)
            .args(["--no-run", "--message-format=json"])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!("building the GPU tests of {package} failed: {}", stderr_tail(&out.stderr)));
        }
        let program = executable(&String::from_utf8_lossy(&out.stdout), package, test)
            .ok_or(format!("cargo named no executable for the test {test} of {package}"))?;
        tests.push((program, name));
    }
    Ok((target_dir().join("release/clusterkv"), tests))
}

/// The executable of the test target `test` of `package` (its unit tests for [`LIB`]) in
/// cargo's JSON messages.
fn executable(messages: &str, package: &str, test: &str) -> Option<PathBuf> {
    let (name, kind) = match test {
        LIB => (package.replace('-', "_"), "lib"),
        _ => (test.to_string(), "test"),
    };
    let (name, kind) = (format!(r#""name":"{name}""#), format!(r#""kind":["{kind}"]"#));
    messages
        .lines()
        .filter(|l| l.contains(&name) && l.contains(&kind))
        .find_map(|l| l.split(r#""executable":""#).nth(1)?.split('"').next().map(PathBuf::from))
}

/// Runs a program to the end, failing on a non-zero exit.
fn run(program: &Path, args: &[&str], env: &[(&str, String)]) -> Result<(), String> {
    eprintln!("\n$ {} {}", program.display(), args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .status()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if status.success() { Ok(()) } else { Err(format!("{} failed ({status})", program.display())) }
}

/// `cargo xtask gpu-check [--bundle DIR] [-- gpu-bench arguments]`.
pub fn gpu_check(bundle: Option<&Path>, bench_args: &[String]) -> Result<(), String> {
    let (clusterkv, tests) = build()?;
    if let Some(dir) = bundle {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let programs = std::iter::once((&clusterkv, "clusterkv")).chain(tests.iter().map(|(p, n)| (p, *n)));
        for (from, name) in programs {
            let to = dir.join(name);
            std::fs::copy(from, &to)
                .map_err(|e| format!("cannot copy {} into {}: {e}", from.display(), dir.display()))?;
            // Without their line tables the programs are a sixth of the size, small enough
            // to travel.
            if !Command::new("strip").arg(&to).status().is_ok_and(|s| s.success()) {
                eprintln!("could not strip {}: it stays as built", to.display());
            }
        }
        let script = dir.join("run.sh");
        std::fs::write(&script, RUN_SH).map_err(|e| format!("cannot write {}: {e}", script.display()))?;
        eprintln!("gpu-check bundle in {}: run `sh {}` on the GPU machine", dir.display(), script.display());
        return Ok(());
    }
    let root = toolkit(&target_dir())?;
    let env = [
        ("LD_LIBRARY_PATH", library_path(&root)),
        ("CKV_CUDA_INCLUDE", root.join("include").display().to_string()),
    ];
    for (program, _) in &tests {
        run(program, &["--nocapture", "--test-threads", "1"], &env)?;
    }
    let mut args = vec!["gpu-bench"];
    args.extend(bench_args.iter().map(String::as_str));
    run(&clusterkv, &args, &env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_test_executable_in_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"ckv_sim"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"gpu"},"executable":"/t/release/deps/gpu-0a1b"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"ckv_kernels"},"executable":"/t/release/deps/ckv_kernels-9c"}"#,
        );
        assert_eq!(executable(messages, "ckv-sim", "gpu"), Some(PathBuf::from("/t/release/deps/gpu-0a1b")));
        assert_eq!(executable(messages, "ckv-attn", "pipeline"), None);
        assert_eq!(executable("{}", "ckv-sim", "gpu"), None);
        // A package's unit tests: its lib target built as a test (the plain lib has none).
        assert_eq!(
            executable(messages, "ckv-kernels", LIB),
            Some(PathBuf::from("/t/release/deps/ckv_kernels-9c"))
        );
        assert_eq!(executable(messages, "ckv-sim", LIB), None);
    }
}
