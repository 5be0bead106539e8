//! `clusterkv eval`: the accuracy evaluation (DESIGN section 8), reports rewritten after each context.

use std::error::Error;
use std::time::Instant;

use ckv_eval::{EvalConfig, EvalReport, evaluate, score_tables, write_reports};
use tracing::info;

use crate::args::EvalArgs;
use crate::check;
use crate::common::{Bar, load, read_text, run_meta, text_for, tokenize, write_json};

pub(crate) fn run(args: EvalArgs) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let mut config = if args.quick { EvalConfig::quick() } else { EvalConfig::full() };
    if !args.contexts.is_empty() {
        config.contexts = args.contexts.clone();
    }
    if !args.budgets.is_empty() {
        config.budgets = args.budgets.clone();
    }
    if !args.methods.is_empty() {
        config.variants.retain(|v| args.methods.contains(&v.method));
    }
    if !args.tasks.is_empty() {
        config.tasks = args.tasks.clone();
    }
    config.positions = args.positions.unwrap_or(config.positions);
    config.decode = args.decode;
    config.passage_len = args.passage_len;
    config.passkey_seeds = args.passkey_seeds.unwrap_or(config.passkey_seeds);
    config.fidelity_every = args.fidelity_every.unwrap_or(config.fidelity_every);
    config.dense_layers = args.model.dense_layers;
    config.batch = args.batch.batch.into();
    config.seed = args.seed;
    let select = &mut config.select;
    if let Some(sink) = args.sink {
        *select = select.clone().sink(sink);
    }
    if let Some(tpc) = args.tokens_per_cluster {
        *select = select.clone().tokens_per_cluster(tpc);
    }
    if let Some(window) = args.window {
        *select = select.clone().window(window);
    }
    if let Some(clusters) = args.window_clusters {
        *select = select.clone().window_clusters(clusters);
    }
    if let Some(init) = args.init {
        *select = select.clone().init(init);
    }
    config.masses = args.masses.clone();
    // Refuse bad input before loading anything.
    check::distinct("--contexts", &config.contexts)?;
    check::distinct("--budgets", &config.budgets)?;
    check::distinct("--methods", &args.methods)?;
    check::distinct("--tasks", &config.tasks.iter().map(|t| t.name()).collect::<Vec<_>>())?;
    check::distinct("--masses", &config.masses)?;
    let contexts = check::joined(&config.contexts);
    for &context in &config.contexts {
        let within = format!("{context} of --contexts {contexts}");
        check::budgets("--budgets", &config.budgets, &config.select, context, &within)?;
    }
    check::writable_dir("--out", &args.out)?;
    if let Some(path) = &args.json {
        check::writable_file("--json", path)?;
    }
    let text = read_text(&args.text)?;
    let (model, tokenizer) = load(&args.model.model)?;
    let largest = config.contexts.iter().copied().max().unwrap_or(0);
    check::fits_model("--contexts", &contexts, largest, model.config())?;
    let tokens =
        tokenize(&tokenizer, &text, &args.text, config.text_tokens(), &text_for(&config, &contexts))?;
    let bar = Bar::new()?;
    let mut meta = run_meta(&args.model.model, &args.text, tokens.len(), &config, args.quick)?;
    // One context at a time, the reports rewritten after each: a long run stopped early
    // keeps the contexts it finished.
    let mut records = Vec::new();
    let mut files = Vec::new();
    for &context in &config.contexts {
        let one = EvalConfig { contexts: vec![context], ..config.clone() };
        records.extend(evaluate(&model, &tokenizer, &tokens, &one, &bar)?);
        meta.seconds = started.elapsed().as_secs_f64();
        let report = EvalReport { meta: meta.clone(), records: records.clone() };
        files = write_reports(&args.out, &report)?;
        if let Some(path) = &args.json {
            write_json(path, &report.records)?;
        }
        info!(context, out = %args.out.display(), "context done, reports written");
    }
    bar.finish();
    println!("{}", score_tables(&EvalReport { meta, records }));
    eprintln!(
        "wrote {} ({} files{}) in {:.1} s",
        args.out.display(),
        files.len(),
        args.json.as_ref().map_or(String::new(), |p| format!(" and {}", p.display())),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
