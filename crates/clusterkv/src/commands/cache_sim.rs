//! `clusterkv cache-sim`: the device tier's hit rate and traffic on the real model.

use std::error::Error;
use std::time::Instant;

use ckv_eval::{CacheSimConfig, cache_sim, cache_sim_table};

use crate::args::CacheSimArgs;
use crate::common::{Bar, load, read_text, write_json};

pub(crate) fn run(args: CacheSimArgs) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let config = CacheSimConfig {
        context: args.context,
        budget: args.budget,
        steps: args.steps,
        reuse: args.reuse,
        dense_layers: args.model.dense_layers,
    };
    let (model, tokenizer) = load(&args.model.model)?;
    let tokens = read_text(&args.text, &tokenizer)?;
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
