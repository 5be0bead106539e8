//! Prefill and decode speed of one method at one context:
//! `cargo run --release -p ckv-model --example throughput -- MODEL CONTEXT DECODE [METHOD] [BUDGET]`.

use std::time::Instant;

use ckv_model::Model;
use ckv_select::{Method, SelectParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: throughput MODEL CONTEXT DECODE [METHOD] [BUDGET]".into());
    }
    let (context, decode): (usize, usize) = (args[2].parse()?, args[3].parse()?);
    let method: Method = args.get(4).map_or(Ok(Method::Dense), |m| m.parse())?;
    let budget: usize = args.get(5).map_or(Ok(1024), |b| b.parse())?;
    let model = Model::load(&args[1])?;
    let vocab = model.config().vocab as u32;
    let tokens: Vec<u32> = (0..(context + decode) as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let select = SelectParams::new(method).budget(budget).max_context(context + decode);
    let mut runner = model.runner(&select, 2)?;
    let started = Instant::now();
    let (mut seq, _) = runner.prefill(&tokens[..context])?;
    let prefill = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for &t in &tokens[context..] {
        runner.decode(&mut [(&mut seq, t)])?;
        std::hint::black_box(runner.logits());
    }
    let decoding = started.elapsed().as_secs_f64();
    println!(
        "{method} budget {budget}: prefill {context} tokens in {prefill:.1} s ({:.1} tokens/s); decode {decode} tokens at context {context} in {decoding:.2} s ({:.2} tokens/s)",
        context as f64 / prefill,
        decode as f64 / decoding
    );
    Ok(())
}
