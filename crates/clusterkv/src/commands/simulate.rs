//! `clusterkv simulate`: every method on a seeded synthetic trace, scored against dense.

use std::error::Error;

use std::time::Instant;

use ckv_select::SelectParams;
use ckv_sim::{SimConfig, Trace, TraceConfig, Variant, simulate, table};
use half::f16;

use crate::args::{KvType, SimulateArgs};
use crate::check;

pub(crate) fn run(args: SimulateArgs) -> Result<(), Box<dyn Error>> {
    let trace_config = TraceConfig {
        context: args.context,
        steps: args.steps,
        head_dim: args.head_dim,
        n_q_heads: args.q_heads,
        n_kv_heads: args.kv_heads,
        topics: args.topics,
        seed: args.seed,
        ..TraceConfig::default()
    };
    let select = SelectParams::default().sink(args.sink).seed(args.seed);
    // Fail on bad parameters before any long work.
    check::distinct("--methods", &args.methods)?;
    let within = format!("--context {}", args.context);
    check::budgets("--budget", &[args.budget], &select, args.context, &within)?;
    let config = SimConfig { select: select.budget(args.budget) };
    let started = Instant::now();
    eprintln!("generating the synthetic trace ({} + {} tokens)...", args.context, args.steps);
    let trace = Trace::generate(&trace_config)?;
    let variants: Vec<Variant> = Variant::all()
        .into_iter()
        .filter(|v| args.methods.is_empty() || args.methods.contains(&v.method))
        .collect();
    let mut reports = Vec::with_capacity(variants.len());
    for (i, variant) in variants.iter().enumerate() {
        eprintln!("[{}/{}] {} ...", i + 1, variants.len(), variant.label());
        let one = std::slice::from_ref(variant);
        reports.extend(match args.kv {
            KvType::F16 => simulate::<f16>(&trace, &config, one)?,
            KvType::F32 => simulate::<f32>(&trace, &config, one)?,
        });
    }
    println!("{}", table(&trace, &config, &reports));
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
