//! `clusterkv cache-sim`: the device tier's hit rate and traffic on the real model.

use std::error::Error;
use std::time::Instant;

use ckv_eval::{CacheSimConfig, cache_sim, cache_sim_table};
use ckv_select::{Method, SelectParams};

use crate::args::CacheSimArgs;
use crate::check;
use crate::common::{Bar, load, read_text, tokenize, write_json};

pub(crate) fn run(args: CacheSimArgs) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let config = CacheSimConfig {
        context: args.context,
        budget: args.budget,
        steps: args.steps,
        reuse: args.reuse,
        dense_layers: args.model.dense_layers,
    };
    // Refuse bad input before loading anything.
    check::distinct("--reuse", &config.reuse)?;
    let within = format!("--context {}", args.context);
    check::budgets("--budget", &[args.budget], &SelectParams::new(Method::ClusterKv), args.context, &within)?;
    if let Some(path) = &args.json {
        check::writable_file("--json", path)?;
    }
    let text = read_text(&args.text)?;
    let (model, tokenizer) = load(&args.model.model)?;
    check::fits_model("--context", args.context, args.context, model.config())?;
    let tokens = tokenize(&tokenizer, &text, &args.text, args.context, &within)?;
    let bar = Bar::new()?;
    let records = cache_sim(&config, &model, &tokens, &bar)?;
    bar.finish();
    println!("{}", cache_sim_table(&config, &records));
    if let Some(path) = &args.json {
        write_json(path, &records)?;
    }
    eprintln!("cache-sim done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
