//! The CUDA kernels against the CPU path on fresh random inputs. Without a GPU (or its
//! driver) every test prints one line saying so and passes. NVRTC and the CUDA headers
//! come from `cargo xtask kernels`' toolkit folder (or `CKV_CUDA_INCLUDE`); `cargo xtask
//! gpu-check` sets `LD_LIBRARY_PATH` for libnvrtc.

use std::path::PathBuf;

use ckv_attn::sparse_attention;
use ckv_kernels::{Gpu, KernelError};
use half::f16;
use proptest::prelude::*;

/// The folders holding `cuda_fp16.h`.
fn include_dirs() -> Vec<PathBuf> {
    let toolkit = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/cuda-toolkit/unzipped/nvidia/cu13/include");
    std::env::var_os("CKV_CUDA_INCLUDE").map(PathBuf::from).into_iter().chain([toolkit]).collect()
}

/// The GPU, or `None` after saying why the test skips.
fn gpu() -> Option<Gpu> {
    match Gpu::open(0, &include_dirs()) {
        Ok(gpu) => Some(gpu),
        Err(KernelError::NoGpu(why)) => {
            eprintln!("skipped: {why}");
            None
        }
        Err(e) => panic!("a GPU is present but the kernels do not load: {e}"),
    }
}

fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    let diff: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

#[test]
fn attention_kernel_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    eprintln!("GPU: {}", gpu.describe());
    let config = ProptestConfig { cases: 48, ..ProptestConfig::default() };
    proptest!(config, |(
        shape in prop::sample::select(vec![(1usize, 64usize), (3, 64), (4, 128), (8, 128), (1, 128)]),
        rows in 1usize..3000,
        picks in prop::collection::btree_set(0usize..3000, 1..1200),
        dense in any::<bool>(),
        chunk_len in prop::sample::select(vec![1usize, 7, 64, 256, 4096]),
        seed in 0u64..1000,
    )| {
        let (g, d) = shape;
        let val = |i: usize, salt: u64| ((i as u64 * 2654435761 + salt * 97) % 2001) as f32 / 500.0 - 2.0;
        let keys: Vec<f16> = (0..rows * d).map(|i| f16::from_f32(val(i, seed))).collect();
        let values: Vec<f16> = (0..rows * d).map(|i| f16::from_f32(val(i, seed + 1))).collect();
        let queries: Vec<f32> = (0..g * d).map(|i| val(i, seed + 2)).collect();
        let ids: Vec<u32> = if dense {
            (0..rows as u32).collect()
        } else {
            picks.iter().filter(|&&p| p < rows).map(|&p| p as u32).collect()
        };
        prop_assume!(!ids.is_empty());
        let scale = 1.0 / (d as f32).sqrt();
        let got = gpu
            .attention(&keys, &values, d, &queries, (!dense).then_some(&ids[..]), ids.len(), scale, chunk_len)
            .unwrap();
        let (mut probs, mut want) = (Vec::new(), vec![0.0f32; g * d]);
        sparse_attention(&queries, d, &keys, &values, &ids, scale, &mut probs, &mut want);
        let err = relative_error(&got, &want);
        prop_assert!(err <= 1e-3, "g {} d {} rows {} ids {}: relative error {}", g, d, rows, ids.len(), err);
    });
}

#[test]
fn selection_kernel_matches_the_cpu_ranking() {
    let Some(gpu) = gpu() else { return };
    let config = ProptestConfig { cases: 48, ..ProptestConfig::default() };
    proptest!(config, |(
        k in 1usize..4097,
        d in prop::sample::select(vec![8usize, 64, 128, 130]),
        rows in 1usize..5,
        selections in 1usize..5,
        seed in 0u64..1000,
        share in 0.0f64..1.0,
    )| {
        // Small integers: every score is exact in f32 on both sides, so ties break alike.
        let val = |i: usize, salt: u64| ((i as u64 * 2654435761 + salt * 97) % 7) as f32 - 3.0;
        let labels: Vec<u32> = (0..k * 3).map(|i| ((i as u64 * 40503 + seed) % k as u64) as u32).collect();
        let mut sizes = vec![0u32; k];
        for &l in &labels {
            sizes[l as usize] += 1;
        }
        let clustering = ckv_cluster::Clustering {
            d,
            labels,
            centroids: (0..k * d).map(|i| val(i, seed)).collect(),
            sizes,
            iterations: 0,
            objective: 0.0,
            objective_history: Vec::new(),
        };
        let mut index = ckv_index::ClusterIndex::new(d).unwrap();
        index.append(&clustering, 16).unwrap();
        let queries: Vec<f32> = (0..selections * rows * d).map(|i| val(i, seed + 1)).collect();
        let count = ((index.n_tokens() as f64 * share) as usize).max(1);
        let got = gpu
            .select(&queries, rows, d, index.centroids(), index.sizes(), index.offsets(), index.members(), count)
            .unwrap();
        for (s, got) in got.iter().enumerate() {
            let mut query = vec![0.0f32; d];
            for r in 0..rows {
                for e in 0..d {
                    query[e] += queries[(s * rows + r) * d + e];
                }
            }
            let scores: Vec<f32> =
                (0..k).map(|c| index.centroid(c).iter().zip(&query).map(|(a, b)| a * b).sum()).collect();
            let mut order = Vec::new();
            ckv_select::rank_covering(&scores, count, |c| index.members_of(c as usize).len(), &mut order);
            let mut want = Vec::new();
            ckv_select::take_units(&order, count, |c| index.members_of(c as usize).iter().copied(), &mut want);
            prop_assert_eq!(got, &want, "selection {} of {} clusters", s, k);
        }
    });
}

#[test]
fn kmeans_kernels_keep_the_invariants_of_the_cpu_kmeans() {
    let Some(gpu) = gpu() else { return };
    let config = ProptestConfig { cases: 24, ..ProptestConfig::default() };
    proptest!(config, |(
        blobs in 1usize..40,
        per_blob in 1usize..60,
        d in prop::sample::select(vec![16usize, 64, 128]),
        seed in 0u64..1000,
    )| {
        let val = |i: usize, salt: u64| ((i as u64 * 2654435761 + salt * 97) % 2001) as f32 / 1000.0 - 1.0;
        let n = blobs * per_blob;
        let centers: Vec<f32> = (0..blobs * d).map(|i| 4.0 * val(i, seed)).collect();
        let keys: Vec<f16> = (0..n * d)
            .map(|i| f16::from_f32(centers[(i / d % blobs) * d + i % d] + 0.05 * val(i, seed + 1)))
            .collect();
        // One row of each blob starts a cluster.
        let initial: Vec<f32> = (0..blobs * d).map(|i| keys[i].to_f32()).collect();
        let (labels, centroids, iterations) = gpu.kmeans(&keys, d, &initial, 20).unwrap();
        prop_assert!(iterations <= 20);
        let x: Vec<f32> = keys.iter().map(|k| k.to_f32()).collect();
        let unit = |v: &[f32]| {
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.iter().map(|a| if norm > 0.0 { a / norm } else { 0.0 }).collect::<Vec<f32>>()
        };
        // Centroids are the means of their members.
        for c in 0..blobs {
            let rows: Vec<usize> = (0..n).filter(|&i| labels[i] as usize == c).collect();
            if rows.is_empty() {
                continue;
            }
            for e in 0..d {
                let mean = rows.iter().map(|&i| x[i * d + e]).sum::<f32>() / rows.len() as f32;
                prop_assert!((centroids[c * d + e] - mean).abs() <= 1e-4 * (1.0 + mean.abs()));
            }
        }
        // Every row is labelled with its most cosine-similar centroid (within rounding).
        let cn: Vec<Vec<f32>> = (0..blobs).map(|c| unit(&centroids[c * d..(c + 1) * d])).collect();
        for i in 0..n {
            let xn = unit(&x[i * d..(i + 1) * d]);
            let cos = |c: usize| xn.iter().zip(&cn[c]).map(|(a, b)| a * b).sum::<f32>();
            let best = (0..blobs).map(cos).fold(f32::NEG_INFINITY, f32::max);
            prop_assert!(cos(labels[i] as usize) >= best - 1e-5, "row {} label {}", i, labels[i]);
        }
    });
}
