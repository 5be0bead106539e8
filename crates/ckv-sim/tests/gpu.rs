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
