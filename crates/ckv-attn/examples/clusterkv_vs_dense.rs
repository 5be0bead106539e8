//! One attention layer decoding with ClusterKV beside the exact dense layer: a 2048-token
//! prompt (8 query heads, 2 KV heads of d = 64, keys drawn around 32 topics) is prefilled
//! from `ndarray` views `[P, Hkv, d]`; then 24 decode steps, each query head asking about
//! one topic, attend densely in one pipeline and to a budget of 256 tokens per head in the
//! others (ClusterKV, and StreamingLLM for comparison). Prints the output's relative error
//! `|o - o_dense| / |o_dense|`.
//!
//! Run: `cargo run -p ckv-attn --example clusterkv_vs_dense`.

use ckv_attn::{
    DecodeInput, LayerPipeline, ParamGuard, PipelineConfig, PrefillInput, SeqId, ValidPipelineConfig,
};
use ckv_select::{Method, SelectParams};
use half::f16;
use ndarray::{Array2, Array3};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One layer of one method, holding one sequence.
struct Layer {
    method: Method,
    config: ValidPipelineConfig,
    pipeline: LayerPipeline<f16>,
    seq: SeqId,
    out: Vec<f32>,
    errors: Vec<f64>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (hq, hkv, d, prompt, steps, topics, budget) = (8, 2, 64, 2048, 24, 32, 256);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let centers = Array2::from_shape_fn((topics, d), |_| rng.random::<f32>() * 2.0 - 1.0);
    let mut noise = move |scale: f32| scale * (rng.random::<f32>() * 2.0 - 1.0);
    // A token's key lies near its topic's direction; its value is noise.
    let topic_of = |t: usize, h: usize| (t * 7 + h * 13 + t / 5) % topics;
    let keys = Array3::from_shape_fn((prompt, hkv, d), |(t, h, j)| centers[[topic_of(t, h), j]] + noise(0.4));
    let values = Array3::from_shape_fn((prompt, hkv, d), |_| noise(1.0));

    let mut layers = Vec::new();
    for method in [Method::Dense, Method::ClusterKv, Method::StreamingLlm] {
        let select = SelectParams::new(method).budget(budget).sink(4).seed(1);
        let config = PipelineConfig::new(hq, hkv, d, select).validate()?;
        let mut pipeline = LayerPipeline::<f16>::new(config.clone());
        // Stores the prompt (no prompt queries here, so no prefill outputs) and clusters it.
        let seq =
            pipeline.prefill(PrefillInput::from_views(&config, keys.view(), values.view(), None)?, None)?;
        if let Some(index) = pipeline.index(seq, 0)? {
            println!("{method}: {} clusters per KV head over the {prompt} prompt tokens", index.n_clusters());
        }
        layers.push(Layer { method, config, pipeline, seq, out: vec![0.0; hq * d], errors: Vec::new() });
    }

    let norm = |xs: &[f32]| xs.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    for step in 0..steps {
        // Query head h asks about one topic; the new token is near another.
        let query =
            Array2::from_shape_fn((hq, d), |(h, j)| 3.0 * centers[[(step + 3 * h) % topics, j]] + noise(0.2));
        let key = Array2::from_shape_fn((hkv, d), |(h, j)| centers[[(step + h) % topics, j]] + noise(0.4));
        let value = Array2::from_shape_fn((hkv, d), |_| noise(1.0));
        for layer in &mut layers {
            let input =
                DecodeInput::from_views(&layer.config, layer.seq, query.view(), key.view(), value.view())?;
            layer.pipeline.decode(&[input], &mut layer.out)?;
        }
        let (dense, sparse) = layers.split_at_mut(1);
        for layer in sparse {
            let diff: Vec<f32> = layer.out.iter().zip(&dense[0].out).map(|(a, b)| a - b).collect();
            layer.errors.push(norm(&diff) / norm(&dense[0].out));
        }
    }
    for layer in &layers[1..] {
        let attended = layer.pipeline.selection(layer.seq, 0)?.len();
        let mean = layer.errors.iter().sum::<f64>() / steps as f64;
        let worst = layer.errors.iter().copied().fold(0.0, f64::max);
        println!(
            "{:>12}: attends {attended} of {} tokens per head; relative error vs dense over {steps} steps: \
             mean {mean:.4}, worst {worst:.4}",
            layer.method.name(),
            prompt + steps
        );
    }
    Ok(())
}
