//! Dense perplexity of the first N tokens of a text (no BOS):
//! `cargo run --release -p ckv-model --example dense_ppl -- MODEL TEXT N`.

use ckv_model::{GgufFile, Model, Tokenizer, nll};
use ckv_select::{Method, SelectParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model_path, text_path, n] = args.as_slice() else {
        return Err("usage: dense_ppl MODEL TEXT N".into());
    };
    let n: usize = n.parse()?;
    let gguf = GgufFile::open(model_path)?;
    let model = Model::from_gguf(&gguf)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let tokens = tokenizer.encode(&std::fs::read_to_string(text_path)?)?;
    let started = std::time::Instant::now();
    let mut runner = model.runner(&SelectParams::new(Method::Dense), 0)?;
    let (_, hidden) = runner.prefill(&tokens[..n])?;
    let prefill_s = started.elapsed().as_secs_f64();
    let logits = model.logits(&hidden);
    let vocab = model.config().vocab;
    let total: f64 = (0..n - 1).map(|i| nll(&logits[i * vocab..(i + 1) * vocab], tokens[i + 1])).sum();
    let mean = total / (n - 1) as f64;
    println!(
        "tokens {n}: mean NLL {mean:.6}, perplexity {:.4} (prefill {prefill_s:.1} s, {:.0} tokens/s)",
        mean.exp(),
        n as f64 / prefill_s
    );
    Ok(())
}
