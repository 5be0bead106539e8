//! The row kernels of a decode step on f16 KV rows: score 4096 stored keys (d = 128) against
//! two query rows with `score_rows`, normalise each row with `softmax`, and mix the values
//! with `weigh_rows`; every figure is checked against an `f64` reference. Shows which SIMD
//! path this CPU runs.
//!
//! Run: `cargo run -p ckv-core --example rows`.

use ckv_core::{score_rows, simd_level, softmax, weigh_rows};
use half::f16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    let (n, d, g) = (4096, 128, 2);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut random = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect() };
    // KV rows are stored in f16; queries stay f32.
    let to_f16 = |xs: Vec<f32>| -> Vec<f16> { xs.into_iter().map(f16::from_f32).collect() };
    let keys = to_f16(random(n * d));
    let values = to_f16(random(n * d));
    let mut queries = random(g * d);
    // Make query 0 look like key 1234, so that its attention is peaked.
    for (q, k) in queries[..d].iter_mut().zip(&keys[1234 * d..1235 * d]) {
        *q = 4.0 * k.to_f32();
    }
    let scale = 1.0 / (d as f32).sqrt();

    let mut probs = vec![0.0f32; g * n];
    score_rows(&queries, d, &keys, 0..n, scale, &mut probs);
    let scores = probs.clone();
    probs.chunks_exact_mut(n).for_each(softmax);
    let mut out = vec![0.0f32; g * d];
    weigh_rows(&probs, d, &values, 0..n, &mut out);

    println!("simd path: {}; {n} f16 rows of d = {d}, {g} query rows", simd_level());
    for j in 0..g {
        let (q, row_probs) = (&queries[j * d..(j + 1) * d], &probs[j * n..(j + 1) * n]);
        // The f64 reference of the scores, the probabilities and the output.
        let exact: Vec<f64> = keys
            .chunks_exact(d)
            .map(|k| f64::from(scale) * k.iter().zip(q).map(|(k, q)| k.to_f64() * f64::from(*q)).sum::<f64>())
            .collect();
        let max = exact.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = exact.iter().map(|s| (s - max).exp()).sum();
        let score_err =
            exact.iter().zip(&scores[j * n..]).map(|(e, s)| (e - f64::from(*s)).abs()).fold(0.0, f64::max);
        let prob_err = exact
            .iter()
            .zip(row_probs)
            .map(|(e, p)| ((e - max).exp() / z - f64::from(*p)).abs())
            .fold(0.0, f64::max);
        let out_err = (0..d)
            .map(|e| {
                let want: f64 = exact
                    .iter()
                    .zip(values.chunks_exact(d))
                    .map(|(s, v)| (s - max).exp() / z * v[e].to_f64())
                    .sum();
                (want - f64::from(out[j * d + e])).abs()
            })
            .fold(0.0, f64::max);
        let (top, p_top) =
            row_probs.iter().enumerate().fold((0, 0.0f32), |b, (i, &p)| if p > b.1 { (i, p) } else { b });
        println!(
            "query {j}: top key {top} with p = {p_top:.4}; max error vs f64: score {score_err:.1e}, \
             prob {prob_err:.1e}, output {out_err:.1e}"
        );
    }
}
