//! `clusterkv bench`: the performance protocol (DESIGN section 9).

use std::error::Error;

use std::time::Instant;

use ckv_bench::{BenchConfig, Peer, bench_tables, run_bench};
use ckv_core::ParamGuard;
use ckv_select::SelectParams;

use crate::args::BenchArgs;
use crate::check;
use crate::common::{load, read_text, tokenize, write_json};

pub(crate) fn run(args: BenchArgs) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let mut config = if args.quick { BenchConfig::quick() } else { BenchConfig::full() };
    if !args.contexts.is_empty() {
        config.contexts = args.contexts;
    }
    if !args.budgets.is_empty() {
        config.budgets = args.budgets;
    }
    if !args.e2e_contexts.is_empty() {
        config.e2e_contexts = args.e2e_contexts;
    }
    if !args.e2e_batches.is_empty() {
        config.e2e_batches = args.e2e_batches;
    }
    config.reps = args.reps.unwrap_or(config.reps);
    config.flush = !args.no_flush;
    config.prefill_context = args.prefill_context.unwrap_or(config.prefill_context);
    config.e2e_tokens = args.e2e_tokens.unwrap_or(config.e2e_tokens);
    config.dense_layers = args.model.dense_layers;
    config.seed = args.seed;
    config.check_ref()?;
    check::distinct("--contexts", &config.contexts)?;
    check::distinct("--budgets", &config.budgets)?;
    check::distinct("--e2e-contexts", &config.e2e_contexts)?;
    check::distinct("--e2e-batches", &config.e2e_batches)?;
    let contexts = check::joined(&config.contexts);
    for &context in &config.contexts {
        let within = format!("{context} of --contexts {contexts}");
        check::budgets("--budgets", &config.budgets, &SelectParams::default(), context, &within)?;
    }
    if let Some(path) = &args.json {
        check::writable_file("--json", path)?;
    }
    let peer = match args.llama_cpp {
        Some(llama_bench) if args.no_model => {
            return Err(format!(
                "--llama-cpp {} needs the end-to-end case: drop --no-model",
                llama_bench.display()
            )
            .into());
        }
        Some(llama_bench) if !llama_bench.is_file() => {
            return Err(format!(
                "--llama-cpp {}: no such program (`cargo xtask peer` builds it)",
                llama_bench.display()
            )
            .into());
        }
        Some(llama_bench) => Some(Peer { llama_bench, model: args.model.model.clone() }),
        None => None,
    };
    let real = if args.no_model {
        None
    } else {
        let text = read_text(&args.text)?;
        let (model, tokenizer) = load(&args.model.model)?;
        let e2e = &config.e2e_contexts;
        let largest = e2e.iter().copied().max().unwrap_or(0);
        let within = format!("--e2e-contexts {}", check::joined(e2e));
        let tokens = tokenize(&tokenizer, &text, &args.text, largest, &within)?;
        Some((model, tokens))
    };
    let report = run_bench(&config, real.as_ref().map(|(m, t)| (m, t.as_slice())), peer.as_ref())?;
    println!("{}", bench_tables(&report));
    if let Some(path) = &args.json {
        write_json(path, &report.records)?;
    }
    eprintln!("bench done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
