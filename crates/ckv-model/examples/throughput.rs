//! Prefill and decode speed of one method at one context, for a batch of sequences:
//! `cargo run --release -p ckv-model --example throughput -- MODEL CONTEXT DECODE [METHOD] [BUDGET] [BATCH]`.

use std::time::Instant;

use ckv_model::{Model, Sequence};
use ckv_select::{Method, SelectParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: throughput MODEL CONTEXT DECODE [METHOD] [BUDGET] [BATCH]".into());
    }
    let (context, decode): (usize, usize) = (args[2].parse()?, args[3].parse()?);
    let method: Method = args.get(4).map_or(Ok(Method::Dense), |m| m.parse())?;
    let budget: usize = args.get(5).map_or(Ok(1024), |b| b.parse())?;
    let batch: usize = args.get(6).map_or(Ok(1), |b| b.parse())?;
    let started = Instant::now();
    let model = Model::load(&args[1])?;
    println!(
        "loaded in {:.3} s: weights {:.1} MB ({:?})",
        started.elapsed().as_secs_f64(),
        model.weight_bytes() as f64 / 1e6,
        model.weight_types()
    );
    let vocab = model.config().vocab as u32;
    let tokens: Vec<u32> = (0..(context + decode) as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let select = SelectParams::new(method).budget(budget).max_context(context + decode);
    let mut runner = model.runner(&select, 2)?;
    let started = Instant::now();
    let (snapshot, _) = runner.snapshot(&tokens[..context])?;
    let prefill = started.elapsed().as_secs_f64();
    let mut seqs = (0..batch).map(|_| runner.restore(&snapshot)).collect::<Result<Vec<Sequence>, _>>()?;
    let started = Instant::now();
    for &t in &tokens[context..] {
        let mut step: Vec<(&mut Sequence, u32)> = seqs.iter_mut().map(|s| (s, t)).collect();
        runner.decode(&mut step)?;
        std::hint::black_box(runner.logits());
    }
    let decoding = started.elapsed().as_secs_f64();
    println!(
        "{method} budget {budget}: prefill {context} tokens in {prefill:.1} s ({:.1} tokens/s); decode {decode} steps of {batch} at context {context} in {decoding:.2} s ({:.2} tokens/s)",
        context as f64 / prefill,
        (decode * batch) as f64 / decoding
    );
    Ok(())
}
