//! The CUDA kernels against the CPU path on fresh random inputs (DESIGN section 6): the
//! attention, selection, k-means, KV append and all-heads clustering kernels, and the
//! offload tier under a reuse that keeps everything. The decode
//! pipeline on the GPU backend (against the CPU pipeline, offload, the configurations it
//! refuses) is tested by `ckv-attn`'s pipeline suite, whose every test also runs on the GPU
//! (`cargo test -p ckv-attn --features cuda --test pipeline`). Without a GPU (or its driver)
//! every test prints one line saying so and passes. NVRTC and the CUDA headers come from
//! `cargo xtask kernels`' toolkit folder (or `CKV_CUDA_INCLUDE`); `cargo xtask gpu-check`
//! sets `LD_LIBRARY_PATH` for libnvrtc.

use std::path::PathBuf;

use ckv_attn::sparse_attention;
use ckv_core::Regions;
use ckv_kernels::{DecodeStep, Gpu, IndexParts, KernelError};
use half::f16;
use proptest::prelude::*;

/// The folders that may hold `cuda_fp16.h`: the usual ones, then the toolkit folder of
/// `cargo xtask kernels`.
fn include_dirs() -> Vec<PathBuf> {
    let toolkit = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/cuda-toolkit/unzipped/nvidia/cu13/include");
    let mut dirs = ckv_kernels::default_include_dirs();
    dirs.push(toolkit);
    dirs
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

/// A deterministic pseudo-random integer in `[0, modulus)` for element `i` of the input
/// salted `salt` (a multiplicative hash): the inputs of every test, scaled by each.
fn hashed(i: usize, salt: u64, modulus: u64) -> f32 {
    ((i as u64 * 2654435761 + salt * 97) % modulus) as f32
}

/// The relative error `|got - want| / |want|` (Euclidean norms, in f64).
fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    let diff: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// The attention kernel against `sparse_attention` on the CPU: dense and sparse id lists,
/// every instantiated group size and head dimension, any chunk length.
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
        let val = |i: usize, salt: u64| hashed(i, salt, 2001) / 500.0 - 2.0;
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

/// The GPU's selection against `rank_covering` + `take_units` on the CPU, for cluster counts
/// on both sides of the shared-memory tile (4096): one run, and several runs merged.
#[test]
fn selection_kernel_matches_the_cpu_ranking() {
    let Some(gpu) = gpu() else { return };
    let config = ProptestConfig { cases: 48, ..ProptestConfig::default() };
    proptest!(config, |(
        k in prop_oneof![
            Just(4096usize), Just(4097), Just(8192), Just(8193), 1usize..4097, 4097usize..20000
        ],
        d in prop::sample::select(vec![8usize, 64, 128, 130, 7, 256]),
        rows in 1usize..5,
        selections in 1usize..5,
        seed in 0u64..1000,
        share in prop_oneof![0.0f64..0.05, 0.0f64..1.0, Just(1.0)],
        nans in any::<bool>(),
    )| {
        // Small integers: every centroid is exact in f16 and every score exact in f32 on
        // both sides, so ties break alike.
        let val = |i: usize, salt: u64| hashed(i, salt, 7) - 3.0;
        let labels: Vec<u32> = (0..k * 3).map(|i| ((i as u64 * 40503 + seed) % k as u64) as u32).collect();
        let mut sizes = vec![0u32; k];
        for &l in &labels {
            sizes[l as usize] += 1;
        }
        let centroids = (0..k * d).map(|i| val(i, seed)).collect();
        let clustering = ckv_cluster::Clustering::from_parts(d, labels, centroids, sizes).unwrap();
        let mut index = ckv_index::ClusterIndex::new(d).unwrap();
        index.append(&clustering, 16).unwrap();
        // Some centroids hold a NaN or an infinity: NaN scores (NaN, inf * 0)
        // rank first, as the positive NaN does under total_cmp, among themselves by id.
        let mut centroids = index.centroids_f16().to_vec();
        if nans {
            for c in (seed as usize % 5..k).step_by(5) {
                let odd = [f16::NAN, f16::INFINITY, f16::NEG_INFINITY][c / 5 % 3];
                centroids[c * d + (c * 31) % d] = odd;
            }
        }
        let queries: Vec<f32> = (0..selections * rows * d).map(|i| val(i, seed + 1)).collect();
        let count = ((index.n_tokens() as f64 * share) as usize).max(1);
        let parts = IndexParts {
            centroids: &centroids,
            sizes: index.sizes(),
            offsets: index.offsets(),
            members: index.members(),
        };
        let got = gpu.select(&queries, rows, parts, d, count).unwrap();
        for (s, got) in got.iter().enumerate() {
            let mut query = vec![0.0f32; d];
            for r in 0..rows {
                for e in 0..d {
                    query[e] += queries[(s * rows + r) * d + e];
                }
            }
            let scores: Vec<f32> = centroids
                .chunks_exact(d)
                .map(|c| c.iter().zip(&query).map(|(a, b)| a.to_f32() * b).sum::<f32>())
                .map(|s| if s.is_nan() { f32::NAN } else { s })
                .collect();
            let mut order = Vec::new();
            ckv_select::rank_covering(&scores, count, |c| index.members_of(c as usize).len(), &mut order);
            let mut want = Vec::new();
            ckv_select::take_units(&order, count, |c| index.members_of(c as usize).iter().copied(), &mut want);
            prop_assert_eq!(got, &want, "selection {} of {} clusters, {} ids", s, k, count);
        }
    });
}

/// GPU k-means keeps the CPU k-means' invariants: centroids are the means of their members,
/// every row is labelled with its most cosine-similar centroid.
#[test]
fn kmeans_kernels_keep_the_invariants_of_the_cpu_kmeans() {
    let Some(gpu) = gpu() else { return };
    let config = ProptestConfig { cases: 24, ..ProptestConfig::default() };
    proptest!(config, |(
        blobs in 1usize..40,
        per_blob in 1usize..60,
        // 250 and 256: the assignment's shared memory is over 48 KiB (opted into).
        d in prop::sample::select(vec![16usize, 64, 128, 250, 256]),
        seed in 0u64..1000,
    )| {
        let val = |i: usize, salt: u64| hashed(i, salt, 2001) / 1000.0 - 1.0;
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
        // Every row is labelled with its most cosine-similar centroid, within the rounding
        // of the f16 unit rows and centroids the tensor cores multiply (2^-11 relative
        // each: under 2e-3 on a cosine).
        let cn: Vec<Vec<f32>> = (0..blobs).map(|c| unit(&centroids[c * d..(c + 1) * d])).collect();
        for i in 0..n {
            let xn = unit(&x[i * d..(i + 1) * d]);
            let cos = |c: usize| xn.iter().zip(&cn[c]).map(|(a, b)| a * b).sum::<f32>();
            let best = (0..blobs).map(cos).fold(f32::NEG_INFINITY, f32::max);
            prop_assert!(cos(labels[i] as usize) >= best - 3e-3, "row {} label {}", i, labels[i]);
        }
    });
}

/// Rows appended to the device KV are bitwise the f16 of the new f32 rows, as `half` rounds.
#[test]
fn appended_kv_is_the_f16_of_the_new_rows() {
    let Some(gpu) = gpu() else { return };
    let config = ProptestConfig { cases: 16, ..ProptestConfig::default() };
    proptest!(config, |(
        heads in 1usize..9,
        d in prop::sample::select(vec![1usize, 7, 64, 128]),
        prompt in 0usize..40,
        appended in 1usize..70,
        seed in 0u64..1000,
    )| {
        // Values across f16's range, subnormals and ties included.
        let val = |i: usize, salt: u64| {
            let x = hashed(i, salt, 20001) / 10000.0 - 1.0;
            x * [1e-7f32, 1e-3, 1.0, 3e4][i % 4]
        };
        let rows = |n: usize, salt: u64| -> Vec<f32> { (0..n).map(|i| val(i, salt)).collect() };
        let to_f16 = |v: &[f32]| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<f16>>();
        let prompt_keys: Vec<Vec<f16>> = (0..heads).map(|h| to_f16(&rows(prompt * d, seed + h as u64))).collect();
        // A small capacity: the appends grow it.
        let mut kv = gpu.kv(heads, d, 1).unwrap();
        let uploaded: Vec<(&[f16], &[f16])> = prompt_keys.iter().map(|k| (&k[..], &k[..])).collect();
        gpu.upload_kv(&mut kv, &uploaded).unwrap();
        let mut want_k: Vec<Vec<f16>> = prompt_keys.clone();
        let mut want_v: Vec<Vec<f16>> = prompt_keys.clone();
        for t in 0..appended {
            let (key, value) = (rows(heads * d, seed + 1000 + t as u64), rows(heads * d, seed + 5000 + t as u64));
            gpu.append_kv(&mut kv, &key, &value).unwrap();
            for h in 0..heads {
                want_k[h].extend(to_f16(&key[h * d..(h + 1) * d]));
                want_v[h].extend(to_f16(&value[h * d..(h + 1) * d]));
            }
        }
        prop_assert_eq!(kv.len(), prompt + appended);
        for h in 0..heads {
            let (k, v) = gpu.download_kv(&kv, h).unwrap();
            let bits = |r: &[f16]| r.iter().map(|x| x.to_bits()).collect::<Vec<u16>>();
            prop_assert_eq!(bits(&k), bits(&want_k[h]), "keys of head {}", h);
            prop_assert_eq!(bits(&v), bits(&want_v[h]), "values of head {}", h);
        }
    });
}

/// k-means of every head at once builds each head's index, below and beyond 4096 clusters;
/// the index's f16 centroids are the f32 means rounded as `half` rounds.
#[test]
fn clustering_every_head_at_once_builds_its_index() {
    let Some(gpu) = gpu() else { return };
    let config = ProptestConfig { cases: 12, ..ProptestConfig::default() };
    proptest!(config, |(
        heads in 1usize..4,
        k in prop_oneof![3 => 1usize..50, 1 => 4090usize..4300],
        extra in 0usize..300,
        first in 0usize..40,
        d in prop::sample::select(vec![64usize, 128, 256]),
        seed in 0u64..1000,
    )| {
        let n = k + extra;
        let val = |i: usize, salt: u64| hashed(i, salt, 2001) / 1000.0 - 1.0;
        let keys: Vec<Vec<f16>> = (0..heads)
            .map(|h| (0..(first + n) * d).map(|i| f16::from_f32(val(i, seed + h as u64))).collect())
            .collect();
        let mut kv = gpu.kv(heads, d, first + n).unwrap();
        let rows: Vec<(&[f16], &[f16])> = keys.iter().map(|k| (&k[..], &k[..])).collect();
        gpu.upload_kv(&mut kv, &rows).unwrap();
        // Rows first .. first + k start the clusters of every head.
        let initial: Vec<f32> =
            keys.iter().flat_map(|rows| rows[first * d..(first + k) * d].iter().map(|x| x.to_f32())).collect();
        let clustering = gpu.cluster(&kv, first..first + n, &initial, 20).unwrap();
        prop_assert_eq!(clustering.index.clusters(), k);
        prop_assert_eq!(clustering.index.tokens(), n);
        for (h, head_keys) in keys.iter().enumerate() {
            let labels = gpu.download_labels(&clustering, h).unwrap();
            let means = gpu.download_centroids(&clustering, h).unwrap();
            let (centroids, sizes, offsets, members) = gpu.download_index(&clustering.index, h).unwrap();
            let rounded: Vec<u16> = means.iter().map(|&m| f16::from_f32(m).to_bits()).collect();
            prop_assert_eq!(centroids.iter().map(|c| c.to_bits()).collect::<Vec<u16>>(), rounded);
            // The index is the counting sort of the labels: members are token ids, grouped by
            // cluster, ascending within each.
            let mut want_members = vec![Vec::new(); k];
            for (i, &l) in labels.iter().enumerate() {
                want_members[l as usize].push((first + i) as u32);
            }
            let want_sizes: Vec<u32> = want_members.iter().map(|m| m.len() as u32).collect();
            prop_assert_eq!(&sizes, &want_sizes);
            for (c, want) in want_members.iter().enumerate() {
                let start = offsets[c] as usize;
                prop_assert_eq!(&members[start..start + sizes[c] as usize], &want[..], "cluster {} of head {}", c, h);
                // A non-empty centroid is the mean of its members' keys.
                for e in 0..d {
                    if want.is_empty() {
                        break;
                    }
                    let mean = want.iter().map(|&t| head_keys[t as usize * d + e].to_f32()).sum::<f32>()
                        / want.len() as f32;
                    prop_assert!((means[c * d + e] - mean).abs() <= 1e-4 * (1.0 + mean.abs()));
                }
            }
        }
    });
}

/// A reuse that keeps everything (u32::MAX steps, or more: the tier clamps it) keeps every
/// row it fetched: over dense offloaded steps, every attended row after the first step is a
/// hit and none is fetched again (a wrapping `last_used + reuse` would free them all).
#[test]
fn a_reuse_that_keeps_everything_keeps_every_row() {
    let Some(gpu) = gpu() else { return };
    let (heads, d, prompt, steps) = (2usize, 64usize, 50usize, 6usize);
    let val = |i: usize, salt: u64| hashed(i, salt, 2001) / 1000.0 - 1.0;
    for reuse in [u32::MAX as usize, usize::MAX] {
        let keys: Vec<Vec<f16>> =
            (0..heads).map(|h| (0..prompt * d).map(|i| f16::from_f32(val(i, h as u64))).collect()).collect();
        let mut host = gpu.pinned_kv(heads, d, prompt + steps).unwrap();
        let rows: Vec<(&[f16], &[f16])> = keys.iter().map(|k| (&k[..], &k[..])).collect();
        gpu.extend_pinned(&mut host, &rows).unwrap();
        let mut tier = gpu.tier(heads, d, reuse).unwrap();
        let mut scratch = gpu.scratch().unwrap();
        for t in 0..steps {
            let row: Vec<f32> = (0..heads * d).map(|i| val(i, 100 + t as u64)).collect();
            gpu.append_pinned(&mut host, &row, &row).unwrap();
            let regions = Regions::new(0, 0, (prompt + t) as u32).unwrap();
            let step = DecodeStep { group: 1, per_kv_head: true, regions, selected: None, scale: 0.125 };
            gpu.decode_step_offloaded(&host, &mut tier, None, &step, &row, &mut scratch).unwrap();
        }
        let all: Vec<u32> = (0..(prompt + steps) as u32).collect();
        for (h, stats) in gpu.tier_stats(&tier, 1).unwrap().iter().enumerate() {
            assert_eq!(gpu.tier_resident(&tier, h).unwrap(), all, "reuse {reuse}, head {h}");
            assert!(stats.attended > 0);
            assert_eq!((stats.hits, stats.bytes_fetched), (stats.attended, 0), "reuse {reuse}, head {h}");
        }
    }
}
