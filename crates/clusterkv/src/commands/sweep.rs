//! `clusterkv sweep`: the settings sweep behind ClusterKV's defaults.

use std::error::Error;

use std::time::Instant;

use ckv_core::ParamGuard;
use ckv_eval::{EvalConfig, SWEEP_TASKS, SweepConfig, SweepReport, run_sweep, sweep_tables, write_sweep};

use crate::args::SweepArgs;
use crate::check;
use crate::common::{Bar, load, read_text, run_meta, text_for, tokenize};

pub(crate) fn run(args: SweepArgs) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let mut config = if args.quick { SweepConfig::quick() } else { SweepConfig::full() };
    let set = |field: &mut Vec<usize>, value: Option<Vec<usize>>| {
        if let Some(v) = value {
            *field = v;
        }
    };
    set(&mut config.contexts, args.contexts);
    set(&mut config.budget_fractions, args.budget_fractions);
    set(&mut config.tokens_per_cluster, args.tokens_per_cluster);
    set(&mut config.windows, args.windows);
    set(&mut config.window_clusters, args.window_clusters);
    set(&mut config.sinks, args.sinks);
    set(&mut config.iters, args.iters);
    if let Some(v) = args.inits {
        config.inits = v;
    }
    if let Some(v) = args.gqa {
        config.gqa = v;
    }
    if let Some(v) = args.masses {
        config.masses = v;
    }
    config.eval.positions = args.positions.unwrap_or(config.eval.positions);
    config.eval.decode = args.decode.unwrap_or(config.eval.decode);
    config.eval.passage_len = args.passage_len.unwrap_or(config.eval.passage_len);
    config.eval.dense_layers = args.model.dense_layers;
    config.eval.batch = args.batch.batch.into();
    config.eval.seed = args.seed;
    config.step_context = args.step_context.unwrap_or(config.step_context);
    config.reps = args.reps.unwrap_or(config.reps);
    // Refuse bad input before loading anything.
    config.check_ref()?;
    check::distinct("--contexts", &config.contexts)?;
    check::distinct("--budget-fractions", &config.budget_fractions)?;
    check::distinct("--tokens-per-cluster", &config.tokens_per_cluster)?;
    check::distinct("--windows", &config.windows)?;
    check::distinct("--window-clusters", &config.window_clusters)?;
    check::distinct("--sinks", &config.sinks)?;
    check::distinct("--inits", &config.inits)?;
    check::distinct("--iters", &config.iters)?;
    check::distinct("--gqa", &config.gqa)?;
    check::distinct("--masses", &config.masses)?;
    check::writable_dir("--out", &args.out)?;
    let text = read_text(&args.text)?;
    let (model, tokenizer) = load(&args.model.model)?;
    let contexts = check::joined(&config.contexts);
    let largest = config.contexts.iter().copied().max().unwrap_or(0);
    check::fits_model("--contexts", &contexts, largest, model.config())?;
    let probes =
        EvalConfig { tasks: SWEEP_TASKS.to_vec(), contexts: config.contexts.clone(), ..config.eval.clone() };
    let tokens =
        tokenize(&tokenizer, &text, &args.text, probes.text_tokens(), &text_for(&probes, &contexts))?;
    let bar = Bar::new()?;
    let mut meta = run_meta(&args.model.model, &args.text, tokens.len(), &config.eval, args.quick)?;
    let run = run_sweep(&model, &tokenizer, &tokens, &config, &bar)?;
    bar.finish();
    meta.seconds = started.elapsed().as_secs_f64();
    let report = SweepReport { meta, run };
    let files = write_sweep(&args.out, &report)?;
    println!("{}", sweep_tables(&report));
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    eprintln!("wrote {} in {:.1} s", names.join(", "), started.elapsed().as_secs_f64());
    Ok(())
}
