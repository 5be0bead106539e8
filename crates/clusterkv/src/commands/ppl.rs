//! `clusterkv ppl`: long-context perplexity of every method against dense: the `ppl` task of
//! the evaluation (`clusterkv eval --tasks ppl`) at one context, with its own defaults.

use std::error::Error;
use std::time::Instant;

use ckv_eval::{EvalConfig, EvalReport, Task, evaluate, score_tables};

use crate::args::PplArgs;
use crate::check;
use crate::common::{Bar, load, read_text, run_meta, tokenize, write_json};

pub(crate) fn run(args: PplArgs) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let mut config = EvalConfig::quick();
    config.tasks = vec![Task::Ppl];
    config.contexts = vec![args.context];
    config.budgets = args.budgets.clone();
    config.variants.retain(|v| args.methods.contains(&v.method));
    config.positions = args.positions;
    config.decode = args.decode;
    config.dense_layers = args.model.dense_layers;
    config.batch = args.batch.batch.into();
    config.seed = args.seed;
    // Refuse bad input before loading anything.
    check::distinct("--methods", &args.methods)?;
    check::distinct("--budgets", &args.budgets)?;
    let within = format!("--context {}", args.context);
    check::budgets("--budgets", &args.budgets, &config.select, args.context, &within)?;
    if let Some(path) = &args.json {
        check::writable_file("--json", path)?;
    }
    let text = read_text(&args.text)?;
    let (model, tokenizer) = load(&args.model.model)?;
    check::fits_model("--context", args.context, args.context, model.config())?;
    let tokens = tokenize(&tokenizer, &text, &args.text, args.context, &within)?;
    let bar = Bar::new()?;
    let records = evaluate(&model, &tokenizer, &tokens, &config, &bar)?;
    bar.finish();
    let mut meta = run_meta(&args.model.model, &args.text, tokens.len(), &config, true)?;
    meta.seconds = started.elapsed().as_secs_f64();
    println!(
        "model {}, text {}: {} windows of {} tokens, the last {} scored, dense layers {}, seed {}",
        args.model.model.display(),
        args.text.display(),
        args.positions,
        args.context,
        args.decode,
        args.model.dense_layers,
        args.seed
    );
    let report = EvalReport { meta, records };
    println!("{}", score_tables(&report));
    if let Some(path) = &args.json {
        write_json(path, &report.records)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
