//! One decode step's KV selection: the prompt's keys (2048 f16 rows of d = 64, drawn around
//! 32 topics) are clustered by the ClusterKV selector; a query about one topic ranks the
//! clusters by `q · centroid` and takes whole clusters until a budget of 256 tokens is full.
//! The same step under Oracle top-k, Quest and StreamingLLM, at the same budget, shows what
//! share of the exact attention mass each selection keeps.
//!
//! Run: `cargo run -p ckv-select --example select`.

use ckv_core::ParamGuard;
use ckv_select::{Growth, Method, Regions, SelectParams, StepCtx, new_selector, rank_covering, select_step};
use half::f16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (prompt, d, topics, budget, sink) = (2048usize, 64, 32, 256, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let centers: Vec<f32> = (0..topics * d).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    let topic: Vec<usize> = (0..=prompt).map(|_| rng.random_range(0..topics)).collect();
    // Keys of the prompt and of the current token (position `prompt`), f16.
    let keys: Vec<f16> = (0..=prompt)
        .flat_map(|t| (0..d).map(move |j| (t, j)))
        .map(|(t, j)| f16::from_f32(centers[topic[t] * d + j] + 0.4 * (rng.random::<f32>() * 2.0 - 1.0)))
        .collect();
    let asked = 5;
    let query: Vec<f32> = centers[asked * d..(asked + 1) * d].iter().map(|c| 1.5 * c).collect();
    let scale = 1.0 / (d as f32).sqrt();
    // Sink [0, 4), clustered [4, 2048), no tail yet, current token 2048.
    let regions = Regions::new(sink as u32, prompt as u32, prompt as u32)?;
    let step = StepCtx { queries: &query, n_queries: 1, keys: &keys, d, scale, regions };

    // The exact attention of the step, to measure each selection by.
    let scores: Vec<f64> = keys
        .chunks_exact(d)
        .map(|k| {
            f64::from(scale) * k.iter().zip(&query).map(|(k, q)| k.to_f64() * f64::from(*q)).sum::<f64>()
        })
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
    let mass = |ids: &[u32]| ids.iter().map(|&i| (scores[i as usize] - max).exp()).sum::<f64>() / total;
    println!("{} tokens of d = {d} about {topics} topics; the query asks about topic {asked}", prompt + 1);

    for method in [Method::ClusterKv, Method::Oracle, Method::Quest, Method::StreamingLlm] {
        let params = SelectParams::new(method).budget(budget).sink(sink).seed(1).validate()?;
        let mut selector = new_selector::<f16>(&params, 0);
        selector.grow(&keys, d, regions.clustered(), Growth::Prompt)?;
        if let Some(index) = selector.index() {
            // What the selector does inside (on the f16 copy of the centroids): score every
            // cluster, rank them, take them until they cover the count.
            let cluster_scores: Vec<f32> = index
                .centroids()
                .chunks_exact(d)
                .map(|c| c.iter().zip(&query).map(|(c, q)| c * q).sum())
                .collect();
            let count = regions.selected_count(budget);
            let mut order = Vec::new();
            rank_covering(&cluster_scores, count, |c| index.sizes()[c as usize] as usize, &mut order);
            let best: Vec<String> = order
                .iter()
                .take(4)
                .map(|&c| {
                    format!(
                        "#{c} (score {:.1}, {} tokens)",
                        cluster_scores[c as usize],
                        index.sizes()[c as usize]
                    )
                })
                .collect();
            println!(
                "{} clusters of about {} tokens; {count} tokens to select; best clusters: {}",
                index.n_clusters(),
                params.tokens_per_cluster(),
                best.join(", ")
            );
        }
        let mut ids = Vec::new();
        select_step(selector.as_mut(), &params, &step, &mut ids)?;
        let on_topic = ids.iter().filter(|&&i| topic[i as usize] == asked).count();
        println!(
            "{:>13}: {} ids, {on_topic} on the asked topic, {:.1}% of the attention mass",
            method.name(),
            ids.len(),
            100.0 * mass(&ids)
        );
    }
    Ok(())
}
