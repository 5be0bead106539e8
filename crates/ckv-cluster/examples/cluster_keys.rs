//! k-means of one attention head's keys, as ClusterKV clusters a prompt: 4096 f16 key rows
//! of d = 128 (drawn around 64 random directions, at random norms) into 256 clusters by
//! cosine similarity. Prints the cluster sizes, the objective per iteration, and how well
//! the clusters follow the directions the keys were drawn from.
//!
//! Run: `cargo run -p ckv-cluster --example cluster_keys`.

use std::time::Instant;

use ckv_cluster::{ClusterParams, Init, ParamGuard, kmeans_view};
use half::f16;
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (n, d, k, directions) = (4096, 128, 256, 64);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let centers = Array2::from_shape_fn((directions, d), |_| rng.random::<f32>() * 2.0 - 1.0);
    let truth: Vec<usize> = (0..n).map(|_| rng.random_range(0..directions)).collect();
    let norms: Vec<f32> = (0..n).map(|_| 0.5 + 2.0 * rng.random::<f32>()).collect();
    // Keys as a model holds them: [tokens, d], f16.
    let keys = Array2::from_shape_fn((n, d), |(i, j)| {
        f16::from_f32(norms[i] * (centers[[truth[i], j]] + 0.3 * (rng.random::<f32>() * 2.0 - 1.0)))
    });

    let params = ClusterParams::new(k).seed(7).init(Init::PlusPlus).max_iters(20).validate()?;
    let started = Instant::now();
    let clustering = kmeans_view(&params, keys.view())?;
    let seconds = started.elapsed().as_secs_f64();

    let mut sizes = clustering.sizes().to_vec();
    sizes.sort_unstable();
    let empty = sizes.iter().filter(|&&s| s == 0).count();
    println!(
        "{n} keys of d = {d} into {k} clusters in {:.2} s, {} iterations",
        seconds,
        clustering.iterations()
    );
    println!(
        "sizes: min {}, median {}, max {}, {empty} empty; mean {:.1} tokens per cluster",
        sizes[0],
        sizes[k / 2],
        sizes[k - 1],
        n as f64 / k as f64
    );
    let history = clustering.objective_history();
    println!(
        "objective sum |x| cos(x, c): {:.1} after the first assignment, {:.1} final ({} steps)",
        history[0],
        clustering.objective(),
        history.len()
    );
    // Purity: the share of keys whose cluster's majority direction is their own.
    let mut votes = vec![vec![0u32; directions]; k];
    for (&label, &t) in clustering.labels().iter().zip(&truth) {
        votes[label as usize][t] += 1;
    }
    let majority: u32 = votes.iter().map(|v| v.iter().copied().max().unwrap_or(0)).sum();
    println!("purity against the {directions} source directions: {:.3}", f64::from(majority) / n as f64);
    println!("centroids: a {:?} f32 view, read in place", clustering.centroids_view().dim());
    Ok(())
}
