//! `clusterkv gpu-bench`: the decode step and the clustering on a GPU (feature `cuda`).

use std::error::Error;

#[cfg(feature = "cuda")]
use std::time::Instant;

#[cfg(feature = "cuda")]
use ckv_core::ParamGuard;

use crate::args::GpuBenchArgs;
#[cfg(feature = "cuda")]
use crate::{check, common::write_json};

#[cfg(feature = "cuda")]
pub(crate) fn run(args: GpuBenchArgs) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let mut config = ckv_bench::GpuBenchConfig::full();
    if !args.contexts.is_empty() {
        config.contexts = args.contexts;
    }
    if !args.budgets.is_empty() {
        config.budgets = args.budgets;
    }
    config.reps = args.reps.unwrap_or(config.reps);
    config.cluster_context = args.cluster_context.unwrap_or(config.cluster_context);
    config.check_ref()?;
    check::distinct("--contexts", &config.contexts)?;
    check::distinct("--budgets", &config.budgets)?;
    if let Some(path) = &args.json {
        check::writable_file("--json", path)?;
    }
    let gpu = ckv_kernels::Gpu::open(args.device, &ckv_kernels::default_include_dirs())?;
    eprintln!("GPU: {}", gpu.describe());
    let report = ckv_bench::run_gpu_bench(&gpu, &config)?;
    println!("{}", ckv_bench::gpu_bench_tables(&report));
    if let Some(path) = &args.json {
        write_json(path, &report.records)?;
    }
    eprintln!("gpu-bench done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(not(feature = "cuda"))]
pub(crate) fn run(_: GpuBenchArgs) -> Result<(), Box<dyn Error>> {
    Err("this clusterkv was built without the `cuda` feature: run `cargo xtask gpu-check`, or build \
         with `--features cuda`"
        .into())
}
