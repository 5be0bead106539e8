//! The forward pass: embeddings, RMSNorm, RoPE, attention through `ckv-attn`'s per-layer
//! pipeline, SwiGLU FFN, tied output. Prefill takes a prompt in chunks; decode takes one token
//! per sequence for a batch of sequences.

use std::path::Path;

use ckv_attn::{
    DecodeInput, LayerPipeline, OffloadParams, PipelineConfig, PrefillInput, PrefillSnapshot, SeqId,
    TierStats,
};
use ckv_core::{ParamGuard, rope, rope_inv_freq};
use ckv_select::SelectParams;
use half::f16;
use rayon::prelude::*;

use crate::ops::{LinearScratch, argmax, linear, rms_norm, swiglu};
use crate::weights::{Block, Weights};
use crate::{GgmlType, GgufFile, LlamaConfig, ModelError};

/// A loaded model: configuration and weights, kept in their GGUF types (quantized blocks
/// stay in the file's mapping).
#[derive(Debug, Clone)]
pub struct Model {
    config: LlamaConfig,
    weights: Weights,
    inv_freq: Vec<f32>,
}

impl Model {
    /// Loads a Llama-family GGUF file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::from_gguf(&GgufFile::open(path)?)
    }

    /// Builds the model from an open GGUF file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, ModelError> {
        let config = LlamaConfig::from_gguf(gguf)?;
        let weights = Weights::load(gguf, &config)?;
        let inv_freq = rope_inv_freq(config.rope_base, config.head_dim);
        Ok(Self { config, weights, inv_freq })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// A runner whose attention selects with `select` in every layer from `dense_layers` on
    /// (the layers before attend densely).
    pub fn runner(&self, select: &SelectParams, dense_layers: usize) -> Result<Runner<'_>, ModelError> {
        self.runner_with(select, dense_layers, None)
    }

    /// [`runner`](Self::runner), with offload on in every layer when `offload` is given
    /// (each KV head attends through a device tier; outputs do not change).
    pub fn runner_with(
        &self,
        select: &SelectParams,
        dense_layers: usize,
        offload: Option<OffloadParams>,
    ) -> Result<Runner<'_>, ModelError> {
        let c = &self.config;
        let layers = (0..c.n_layers)
            .map(|l| {
                let config = PipelineConfig::new(c.n_heads, c.n_kv_heads, c.head_dim, select.clone())
                    .layer(l, dense_layers);
                let config = match offload {
                    Some(offload) => config.offload(offload),
                    None => config,
                }
                .validate()?;
                Ok(LayerPipeline::new(config))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Runner { model: self, layers, prefill_chunk: PREFILL_CHUNK, work: DecodeWork::default() })
    }

    /// Logits `[n, vocab]` of final hidden states `[n, hidden]` (see [`Runner::logits`] for a
    /// decode step's, without allocating).
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        let n = hidden.len() / self.config.hidden;
        let mut out = vec![0.0f32; n * self.config.vocab];
        linear(hidden, self.weights.head(), &mut out, &mut LinearScratch::default());
        out
    }

    /// The greedy next token after final hidden states `[n, hidden]` (a prefill's): the
    /// argmax of the last row's logits.
    pub fn greedy_next(&self, hidden: &[f32]) -> u32 {
        let h = self.config.hidden;
        argmax(&self.logits(&hidden[hidden.len().saturating_sub(h)..]))
    }

    /// Bytes the weights hold in memory: quantized matrices in their GGUF blocks (inside the
    /// file's mapping), float ones as typed rows, norms as `f32`.
    pub fn weight_bytes(&self) -> usize {
        self.weights.memory_bytes()
    }

    /// How many weight matrices have each type, in code order.
    pub fn weight_types(&self) -> Vec<(GgmlType, usize)> {
        self.weights.types()
    }

    fn check_tokens(&self, tokens: impl IntoIterator<Item = u32>) -> Result<(), ModelError> {
        match tokens.into_iter().find(|&t| t as usize >= self.config.vocab) {
            Some(id) => Err(ModelError::TokenOutOfRange { id, vocab: self.config.vocab }),
            None => Ok(()),
        }
    }

    /// The embeddings of `tokens` (in range) into `x`, resized to `[tokens.len(), hidden]`.
    fn embed(&self, tokens: impl ExactSizeIterator<Item = u32>, x: &mut Vec<f32>) {
        let h = self.config.hidden;
        x.resize(tokens.len() * h, 0.0);
        for (t, x) in tokens.zip(x.chunks_exact_mut(h)) {
            self.weights.embed.row_into(t as usize, x);
        }
    }

    /// The final RMSNorm of hidden states `[n, hidden]` into `out`, resized to match.
    fn final_norm(&self, x: &[f32], out: &mut Vec<f32>) {
        out.resize(x.len(), 0.0);
        rms_norm(x, &self.weights.output_norm, self.config.eps, out);
    }
}

/// A sequence held by a [`Runner`]: its id in every layer and its length.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    ids: Vec<SeqId>,
    len: usize,
}

impl Sequence {
    /// Tokens processed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token was processed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The dense prefill of one prompt in every layer, taken by [`Runner::snapshot`] and
/// restored by [`Runner::restore`].
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSnapshot {
    layers: Vec<PrefillSnapshot<f16>>,
    len: usize,
}

impl PromptSnapshot {
    /// Prompt tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held (KV of every layer).
    pub fn memory_bytes(&self) -> usize {
        self.layers.iter().map(PrefillSnapshot::memory_bytes).sum()
    }
}

/// Called by [`Runner::decode_observed`] after each layer's attention step with the layer,
/// its pipeline and the step's inputs in batch order.
pub type DecodeObserver<'a> = dyn FnMut(usize, &LayerPipeline<f16>, &[DecodeInput<'_>]) + 'a;

/// Prompt tokens per prefill chunk by default: bounds the activations of a long prompt.
pub const PREFILL_CHUNK: usize = 512;

/// Runs the model with one attention method; holds the KV of its sequences and the buffers
/// of the decode step, so that a warm step allocates nothing.
pub struct Runner<'m> {
    model: &'m Model,
    layers: Vec<LayerPipeline<f16>>,
    prefill_chunk: usize,
    work: DecodeWork,
}

/// The decode step's buffers, reused from step to step.
#[derive(Default)]
struct DecodeWork {
    acts: Activations,
    /// The residual stream `[n, hidden]`.
    x: Vec<f32>,
    /// The last step's final hidden states `[n, hidden]`.
    hidden: Vec<f32>,
    /// The logits of `hidden`.
    logits: Vec<f32>,
    positions: Vec<usize>,
    /// Always empty: its capacity serves each layer's attention inputs.
    inputs: Vec<DecodeInput<'static>>,
}

/// An empty vector of attention inputs of any lifetime, on the capacity of `inputs`.
fn recycle<'b>(mut inputs: Vec<DecodeInput<'_>>) -> Vec<DecodeInput<'b>> {
    inputs.clear();
    // Collecting a vector's own iterator into a type of the same layout reuses its buffer.
    inputs.into_iter().map(|_| unreachable!("the vector is empty")).collect()
}

/// Activations of one block for `n` rows.
#[derive(Default)]
struct Activations {
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scratch: LinearScratch,
}

impl Activations {
    /// Sizes every buffer for `n` rows (allocating only to grow).
    fn resize(&mut self, c: &LlamaConfig, n: usize) {
        let kv = c.n_kv_heads * c.head_dim;
        for (buf, width) in [
            (&mut self.normed, c.hidden),
            (&mut self.q, c.hidden),
            (&mut self.k, kv),
            (&mut self.v, kv),
            (&mut self.attn, c.hidden),
            (&mut self.proj, c.hidden),
            (&mut self.gate, c.ffn),
            (&mut self.up, c.ffn),
        ] {
            buf.resize(n * width, 0.0);
        }
    }
}

impl Runner<'_> {
    /// Prompt tokens per prefill chunk (default [`PREFILL_CHUNK`]); `0` is taken as 1.
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Self {
        self.prefill_chunk = tokens.max(1);
        self
    }

    /// Adds a sequence from its prompt, in chunks: each chunk attends densely (causal) to
    /// everything before it; the prompt is clustered at the end. Returns the sequence and the
    /// final hidden states `[P, hidden]` (see [`Model::logits`]).
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<(Sequence, Vec<f32>), ModelError> {
        let (ids, hidden) = self.prefill_chunks(tokens)?;
        let seq = Sequence { ids, len: tokens.len() };
        self.finish(seq).map(|seq| (seq, hidden))
    }

    /// Prefills `tokens` densely, as [`prefill`](Self::prefill) does, and returns a snapshot
    /// of the prompt's KV instead of a sequence, with the final hidden states `[P, hidden]`.
    /// Any runner of the same model restores it with [`restore`](Self::restore), whatever its
    /// method: one dense prefill serves every method.
    pub fn snapshot(&mut self, tokens: &[u32]) -> Result<(PromptSnapshot, Vec<f32>), ModelError> {
        let (ids, hidden) = self.prefill_chunks(tokens)?;
        let layers: Result<Vec<_>, _> =
            self.layers.iter().zip(&ids).map(|(layer, &id)| layer.snapshot(id)).collect();
        for (layer, &id) in self.layers.iter_mut().zip(&ids) {
            layer.remove(id)?;
        }
        Ok((PromptSnapshot { layers: layers?, len: tokens.len() }, hidden))
    }

    /// Adds a sequence holding the prompt of `snapshot`, clustered for this runner's method:
    /// the same as [`prefill`](Self::prefill) of the snapshot's tokens.
    pub fn restore(&mut self, snapshot: &PromptSnapshot) -> Result<Sequence, ModelError> {
        if snapshot.layers.len() != self.layers.len() {
            return Err(ModelError::SnapshotMismatch {
                layers: snapshot.layers.len(),
                expected: self.layers.len(),
            });
        }
        let mut ids = Vec::with_capacity(self.layers.len());
        for (layer, snap) in self.layers.iter_mut().zip(&snapshot.layers) {
            match layer.restore(snap) {
                Ok(id) => ids.push(id),
                Err(err) => {
                    self.discard(&ids);
                    return Err(err.into());
                }
            }
        }
        self.finish(Sequence { ids, len: snapshot.len })
    }

    /// Ends the prefill of `seq` in every layer (clustering its prompt).
    fn finish(&mut self, seq: Sequence) -> Result<Sequence, ModelError> {
        let result =
            self.layers.iter_mut().zip(&seq.ids).try_for_each(|(layer, &id)| layer.finish_prefill(id));
        match result {
            Ok(()) => Ok(seq),
            Err(err) => {
                self.discard(&seq.ids);
                Err(err.into())
            }
        }
    }

    /// Removes the per-layer sequences `ids` (of a failed prefill).
    fn discard(&mut self, ids: &[SeqId]) {
        for (layer, &id) in self.layers.iter_mut().zip(ids) {
            // The id was just created in this layer, so removing it cannot fail.
            let _ = layer.remove(id);
        }
    }

    /// Runs the prompt through every layer in chunks; the per-layer sequences stay in
    /// prefill. On error they are removed.
    fn prefill_chunks(&mut self, tokens: &[u32]) -> Result<(Vec<SeqId>, Vec<f32>), ModelError> {
        let model = self.model;
        model.check_tokens(tokens.iter().copied())?;
        let c = &model.config;
        let mut ids = Vec::with_capacity(self.layers.len());
        for layer in &mut self.layers {
            match layer.add_sequence() {
                Ok(id) => ids.push(id),
                Err(err) => {
                    self.discard(&ids);
                    return Err(err.into());
                }
            }
        }
        let mut hidden = Vec::with_capacity(tokens.len() * c.hidden);
        let (mut x, mut normed, mut a) = (Vec::new(), Vec::new(), Activations::default());
        let result = (|| {
            for (i, chunk) in tokens.chunks(self.prefill_chunk).enumerate() {
                let base = i * self.prefill_chunk;
                model.embed(chunk.iter().copied(), &mut x);
                a.resize(c, chunk.len());
                for ((block, layer), &id) in model.weights.blocks.iter().zip(&mut self.layers).zip(&ids) {
                    project_qkv(model, block, &x, &mut a, |row| base + row);
                    let input = PrefillInput { keys: &a.k, values: &a.v, queries: Some(&a.q) };
                    layer.extend(id, input, Some(&mut a.attn))?;
                    finish_block(model, block, &mut x, &mut a);
                }
                model.final_norm(&x, &mut normed);
                hidden.extend_from_slice(&normed);
            }
            Ok::<(), ModelError>(())
        })();
        match result {
            Ok(()) => Ok((ids, hidden)),
            Err(err) => {
                self.discard(&ids);
                Err(err)
            }
        }
    }

    /// The device-tier traffic of `seq` in every layer, summed over its KV heads: `None`
    /// for a runner without offload.
    pub fn offload_stats(&self, seq: &Sequence) -> Result<Option<Vec<TierStats>>, ModelError> {
        let heads = self.model.config.n_kv_heads;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (layer, &id) in self.layers.iter().zip(&seq.ids) {
            let mut total: Option<TierStats> = None;
            for h in 0..heads {
                if let Some(stats) = layer.offload_stats(id, h)? {
                    total = Some(total.map_or(stats, |t| t.merged(stats)));
                }
            }
            match total {
                Some(total) => layers.push(total),
                None => return Ok(None),
            }
        }
        Ok(Some(layers))
    }

    /// Decodes one token for each `(sequence, token)` of `batch` (distinct sequences).
    /// Returns the final hidden states `[batch.len(), hidden]`, held by the runner until the
    /// next step; [`logits`](Self::logits) turns them into logits. Once the buffers have
    /// grown to the batch (after the first step), a step allocates nothing.
    pub fn decode(&mut self, batch: &mut [(&mut Sequence, u32)]) -> Result<&[f32], ModelError> {
        self.decode_observed(batch, &mut |_: usize, _: &LayerPipeline<f16>, _: &[DecodeInput<'_>]| {})
    }

    /// [`decode`](Self::decode), calling `observer(layer, pipeline, inputs)` after each
    /// layer's attention step: the pipeline then holds each sequence's selection
    /// ([`LayerPipeline::selection`]) and KV, and `inputs` the step's queries, keys and
    /// values in batch order (for attention-fidelity measurements).
    pub fn decode_observed(
        &mut self,
        batch: &mut [(&mut Sequence, u32)],
        observer: &mut DecodeObserver<'_>,
    ) -> Result<&[f32], ModelError> {
        let model = self.model;
        let c = &model.config;
        model.check_tokens(batch.iter().map(|(_, t)| *t))?;
        let (q_width, kv_width) = (c.hidden, c.n_kv_heads * c.head_dim);
        let w = &mut self.work;
        w.positions.clear();
        w.positions.extend(batch.iter().map(|(s, _)| s.len));
        model.embed(batch.iter().map(|(_, t)| *t), &mut w.x);
        w.acts.resize(c, batch.len());
        for (l, (block, layer)) in model.weights.blocks.iter().zip(&mut self.layers).enumerate() {
            let positions = &w.positions;
            project_qkv(model, block, &w.x, &mut w.acts, |row| positions[row]);
            let a = &mut w.acts;
            let mut inputs = recycle(std::mem::take(&mut w.inputs));
            inputs.extend(batch.iter().enumerate().map(|(b, (seq, _))| DecodeInput {
                seq: seq.ids[l],
                query: &a.q[b * q_width..(b + 1) * q_width],
                key: &a.k[b * kv_width..(b + 1) * kv_width],
                value: &a.v[b * kv_width..(b + 1) * kv_width],
            }));
            layer.decode(&inputs, &mut a.attn)?;
            observer(l, layer, &inputs);
            w.inputs = recycle(inputs);
            finish_block(model, block, &mut w.x, &mut w.acts);
        }
        for (seq, _) in batch.iter_mut() {
            seq.len += 1;
        }
        model.final_norm(&w.x, &mut w.hidden);
        Ok(&w.hidden)
    }

    /// The logits `[n, vocab]` of the hidden states the last [`decode`](Self::decode)
    /// returned, into a buffer the runner reuses (empty before the first step).
    pub fn logits(&mut self) -> &[f32] {
        let w = &mut self.work;
        let n = w.hidden.len() / self.model.config.hidden;
        w.logits.resize(n * self.model.config.vocab, 0.0);
        linear(&w.hidden, self.model.weights.head(), &mut w.logits, &mut w.acts.scratch);
        &w.logits
    }

    /// One greedy decode step: [`decode`](Self::decode)s the token of each `(sequence,
    /// token)` of `batch`, then replaces each token by the argmax of its logits, the token
    /// to feed next. Allocation-free once warm, as `decode` is.
    pub fn decode_greedy(&mut self, batch: &mut [(&mut Sequence, u32)]) -> Result<(), ModelError> {
        self.decode(batch)?;
        let vocab = self.model.config.vocab;
        for ((_, next), logits) in batch.iter_mut().zip(self.logits().chunks_exact(vocab)) {
            *next = argmax(logits);
        }
        Ok(())
    }

    /// Frees a sequence's KV in every layer.
    pub fn remove(&mut self, seq: Sequence) -> Result<(), ModelError> {
        for (layer, id) in self.layers.iter_mut().zip(seq.ids) {
            layer.remove(id)?;
        }
        Ok(())
    }
}

/// Normalises `x` and computes q, k (both rotated at `position(row)`) and v.
fn project_qkv(
    model: &Model,
    block: &Block,
    x: &[f32],
    a: &mut Activations,
    position: impl Fn(usize) -> usize + Sync,
) {
    let c = &model.config;
    rms_norm(x, &block.attn_norm, c.eps, &mut a.normed);
    linear(&a.normed, &block.wq, &mut a.q, &mut a.scratch);
    linear(&a.normed, &block.wk, &mut a.k, &mut a.scratch);
    linear(&a.normed, &block.wv, &mut a.v, &mut a.scratch);
    let kv_width = c.n_kv_heads * c.head_dim;
    let inv_freq = &model.inv_freq;
    a.q.par_chunks_mut(c.hidden).enumerate().for_each(|(row, q)| rope(q, position(row), inv_freq));
    a.k.par_chunks_mut(kv_width).enumerate().for_each(|(row, k)| rope(k, position(row), inv_freq));
}

/// Output projection and residual, then the SwiGLU FFN and residual.
fn finish_block(model: &Model, block: &Block, x: &mut [f32], a: &mut Activations) {
    let c = &model.config;
    linear(&a.attn, &block.wo, &mut a.proj, &mut a.scratch);
    add(x, &a.proj);
    rms_norm(x, &block.ffn_norm, c.eps, &mut a.normed);
    linear(&a.normed, &block.gate, &mut a.gate, &mut a.scratch);
    linear(&a.normed, &block.up, &mut a.up, &mut a.scratch);
    swiglu(&mut a.gate, &a.up);
    linear(&a.gate, &block.down, &mut a.proj, &mut a.scratch);
    add(x, &a.proj);
}

fn add(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}
