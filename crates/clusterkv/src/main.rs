//! `clusterkv`: the command line of ClusterKV. Every command is a thin layer over a library
//! crate: `eval`, `sweep`, `ppl` and `cache-sim` over `ckv-eval`, `bench` and `gpu-bench`
//! over `ckv-bench`, `simulate` over `ckv-sim`, `generate` over `ckv-model`.

mod args;
mod check;
mod commands;
mod common;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    }
    match cli.command {
        Command::Simulate(args) => commands::simulate::run(args),
        Command::Ppl(args) => commands::ppl::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::GpuBench(args) => commands::gpu_bench::run(args),
        Command::CacheSim(args) => commands::cache_sim::run(args),
        Command::Sweep(args) => commands::sweep::run(args),
    }
}
