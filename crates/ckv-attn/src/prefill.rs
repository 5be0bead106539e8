//! Dense causal attention of a prompt chunk, blocked: scores and outputs of a block of
//! queries are two matrix products (`Q · Kᵀ`, `P · V`) through `ckv-cluster`'s sgemm.

use ckv_core::{Element, matmul_nn, matmul_nt, softmax};
use rayon::prelude::*;

/// Queries per block: a block's scores are `QUERY_BLOCK x context` f32 values.
const QUERY_BLOCK: usize = 256;

/// One KV head's keys and values in f32, `[len, d]` each.
pub(crate) struct HeadF32 {
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl HeadF32 {
    /// Converts stored rows to f32.
    pub(crate) fn new<E: Element>(keys: &[E], values: &[E]) -> Self {
        let convert = |src: &[E]| {
            let mut dst = vec![0.0f32; src.len()];
            E::to_f32_slice(src, &mut dst);
            dst
        };
        Self { keys: convert(keys), values: convert(values) }
    }
}

/// The outputs of one (query head, block of queries) and the attention each key received
/// from the block's queries.
struct BlockResult {
    head: usize,
    first: usize,
    outs: Vec<f32>,
    received: Vec<f32>,
}

/// Causal attention of `n` queries `[n, Hq, d]` at positions `base..base + n` over the KV
/// heads `kv` (`base + n` rows each; query head `h` reads KV head `h / group`). Writes
/// `[n, Hq, d]` into `out`; returns, per query head, the attention each key received, summed
/// over the `n` queries. Deterministic for any thread count.
pub(crate) fn causal_attention(
    kv: &[HeadF32],
    group: usize,
    d: usize,
    base: usize,
    queries: &[f32],
    scale: f32,
    out: &mut [f32],
) -> Vec<Vec<f32>> {
    let hq = kv.len() * group;
    let n = queries.len() / (hq * d);
    let len = base + n;
    let blocks: Vec<(usize, usize)> =
        (0..hq).flat_map(|h| (0..n).step_by(QUERY_BLOCK).map(move |first| (h, first))).collect();
    let results: Vec<BlockResult> = blocks
        .into_par_iter()
        .map(|(head, first)| {
            let rows = QUERY_BLOCK.min(n - first);
            // The block's last query sees keys [0, cols).
            let cols = base + first + rows;
            let q: Vec<f32> = (first..first + rows)
                .flat_map(|i| &queries[(i * hq + head) * d..(i * hq + head + 1) * d])
                .map(|x| x * scale)
                .collect();
            let kv = &kv[head / group];
            let mut probs = vec![0.0f32; rows * cols];
            matmul_nt(&q, &kv.keys[..cols * d], d, &mut probs);
            let mut received = vec![0.0f32; cols];
            for (i, row) in probs.chunks_exact_mut(cols).enumerate() {
                let (seen, masked) = row.split_at_mut(base + first + i + 1);
                softmax(seen);
                masked.fill(0.0);
                for (r, p) in received.iter_mut().zip(seen.iter()) {
                    *r += p;
                }
            }
            let mut outs = vec![0.0f32; rows * d];
            matmul_nn(&probs, &kv.values[..cols * d], d, &mut outs);
            BlockResult { head, first, outs, received }
        })
        .collect();
    let mut received = vec![vec![0.0f32; len]; hq];
    for block in results {
        for (i, o) in block.outs.chunks_exact(d).enumerate() {
            let t = block.first + i;
            out[(t * hq + block.head) * d..(t * hq + block.head + 1) * d].copy_from_slice(o);
        }
        for (r, p) in received[block.head].iter_mut().zip(&block.received) {
            *r += p;
        }
    }
    received
}
