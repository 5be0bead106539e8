//! The per-layer decode pipeline: prefill -> cluster -> select -> attend, for a batch of
//! sequences of different lengths, parallel over (sequence, KV head).

use std::fmt;

use std::sync::Arc;

use ckv_cache::{DeviceTier, HeadKv, HostBudget, HostReservation, TierStats};
use ckv_core::{Element, ValueError, check_values, derive_seed, standard_slice};
use ckv_index::ClusterIndex;
use ckv_select::{GqaPolicy, Growth, Regions, SelectError, Selector, StepCtx, new_selector, select_group};
use ndarray::{ArrayView, ArrayView2, ArrayView3, Dimension};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
use crate::device::GpuState;
use crate::prefill::{HeadF32, causal_attention};
use crate::{AttnError, AttnScratch, Backend, Selected, ValidPipelineConfig, attend_selected};

/// Identifies a sequence held by a [`LayerPipeline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(usize);

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The prompt of one sequence for [`LayerPipeline::prefill`], token-major.
#[derive(Debug, Clone, Copy)]
pub struct PrefillInput<'a> {
    /// Keys after RoPE, `[P, Hkv, d]`.
    pub keys: &'a [f32],
    /// Values, `[P, Hkv, d]`.
    pub values: &'a [f32],
    /// Queries after RoPE, `[P, Hq, d]`; `None` stores the prompt without attending (no
    /// outputs, and H2O starts without accumulated attention).
    pub queries: Option<&'a [f32]>,
}

impl<'a> PrefillInput<'a> {
    /// The prompt from `ndarray` views in the shapes of `config`: keys and values
    /// `[P, Hkv, d]`, queries `[P, Hq, d]`, token-major, in standard (row-major, contiguous)
    /// layout. Only the shapes are checked here, against `config` (a head-major `[Hkv, P, d]`
    /// array has the right length but the wrong axes); nothing is copied, and the values are
    /// checked once, by [`LayerPipeline::extend`].
    ///
    /// # Errors
    /// [`AttnError::Value`]: [`ValueError::ViewShape`] naming the view and both shapes,
    /// [`ValueError::NotContiguous`] naming its shape and strides.
    pub fn from_views(
        config: &ValidPipelineConfig,
        keys: ArrayView3<'a, f32>,
        values: ArrayView3<'a, f32>,
        queries: Option<ArrayView3<'a, f32>>,
    ) -> Result<Self, AttnError> {
        let (hq, hkv, d) = (config.n_q_heads(), config.n_kv_heads(), config.head_dim());
        let p = keys.dim().0;
        let keys = rows("keys", &keys, &[p, hkv, d])?;
        let values = rows("values", &values, &[p, hkv, d])?;
        let queries = queries.map(|q| rows("queries", &q, &[p, hq, d])).transpose()?;
        Ok(Self { keys, values, queries })
    }
}

/// One sequence's new token for [`LayerPipeline::decode`].
#[derive(Debug, Clone, Copy)]
pub struct DecodeInput<'a> {
    /// The sequence.
    pub seq: SeqId,
    /// Query rows after RoPE, `[Hq, d]`.
    pub query: &'a [f32],
    /// Key rows after RoPE, `[Hkv, d]`.
    pub key: &'a [f32],
    /// Value rows, `[Hkv, d]`.
    pub value: &'a [f32],
}

impl<'a> DecodeInput<'a> {
    /// The new token of `seq` from `ndarray` views in the shapes of `config`: query `[Hq, d]`,
    /// key and value `[Hkv, d]`, in standard layout. Only the shapes are checked here;
    /// nothing is copied, and the values are checked once, by [`LayerPipeline::decode`].
    ///
    /// # Errors
    /// [`AttnError::Value`]: [`ValueError::ViewShape`] or [`ValueError::NotContiguous`],
    /// naming the view.
    pub fn from_views(
        config: &ValidPipelineConfig,
        seq: SeqId,
        query: ArrayView2<'a, f32>,
        key: ArrayView2<'a, f32>,
        value: ArrayView2<'a, f32>,
    ) -> Result<Self, AttnError> {
        let (hq, hkv, d) = (config.n_q_heads(), config.n_kv_heads(), config.head_dim());
        let query = rows("query", &query, &[hq, d])?;
        let key = rows("key", &key, &[hkv, d])?;
        let value = rows("value", &value, &[hkv, d])?;
        Ok(Self { seq, query, key, value })
    }
}

/// The memory of `view` (the input `what`), which must have the shape `expected` and be in
/// standard layout.
pub(crate) fn rows<'a, D: Dimension>(
    what: &'static str,
    view: &ArrayView<'a, f32, D>,
    expected: &[usize],
) -> Result<&'a [f32], ValueError> {
    if view.shape() != expected {
        return Err(ValueError::ViewShape {
            what,
            expected: expected.to_vec(),
            given: view.shape().to_vec(),
        });
    }
    standard_slice(what, view)
}

/// The prompt of one sequence in prefill, taken by [`LayerPipeline::snapshot`]: per KV
/// head, its KV and the attention each token received from the prompt's queries.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefillSnapshot<E> {
    heads: Vec<(HeadKv<E>, Vec<f32>)>,
}

impl<E: Element> PrefillSnapshot<E> {
    /// Prompt tokens held.
    pub fn len(&self) -> usize {
        self.heads.first().map_or(0, |(kv, _)| kv.len())
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of KV and attention sums held.
    pub fn memory_bytes(&self) -> usize {
        self.heads.iter().map(|(kv, a)| kv.memory_bytes() + std::mem::size_of_val(a.as_slice())).sum()
    }
}

/// State of one (sequence, KV head): its KV, its selector and reusable buffers.
struct HeadState<E: Element> {
    kv: HeadKv<E>,
    selector: Box<dyn Selector<E>>,
    /// The ids of the last step: one list per query head, or one per group.
    selections: Vec<Vec<u32>>,
    scratch: AttnScratch,
    /// Attention each prompt token received from the prompt's queries (summed over the
    /// group), while in prefill; the selector observes it when the prefill ends.
    prompt_attention: Vec<f32>,
    /// The device tier the attention reads through, when offload is on.
    tier: Option<DeviceTier<E>>,
}

struct SeqState<E: Element> {
    heads: Vec<HeadState<E>>,
    clustered_end: u32,
    /// Still taking prompt chunks; not clustered yet.
    prefilling: bool,
    /// The last step's output, `[Hq, d]`.
    out: Vec<f32>,
    /// The host bytes of its KV, under the pipeline's host budget.
    host: Option<HostReservation>,
}

impl<E: Element> SeqState<E> {
    fn len(&self) -> usize {
        self.heads[0].kv.len()
    }
}

/// One attention layer's decode pipeline over a batch of sequences; each sequence owns its
/// KV, its index and its regions.
pub struct LayerPipeline<E: Element> {
    config: ValidPipelineConfig,
    seqs: Vec<Option<SeqState<E>>>,
    batch_slot: Vec<usize>,
    /// The cap of the host KV of every sequence, when offload sets one.
    host_budget: Option<Arc<HostBudget>>,
    /// The device side, when decode steps run on a GPU.
    #[cfg(feature = "cuda")]
    device: Option<GpuState>,
}

impl<E: Element> LayerPipeline<E> {
    /// An empty pipeline decoding on the CPU.
    pub fn new(config: ValidPipelineConfig) -> Self {
        let host_budget = config.offload().and_then(|o| o.host_capacity_bytes()).map(HostBudget::new);
        Self {
            config,
            seqs: Vec::new(),
            batch_slot: Vec::new(),
            host_budget,
            #[cfg(feature = "cuda")]
            device: None,
        }
    }

    /// An empty pipeline decoding on `backend`. The GPU backend takes dense and ClusterKV
    /// layers with f16 KV, in the group sizes and head dimensions its kernels instantiate;
    /// anything else is refused here, by name.
    pub fn with_backend(config: ValidPipelineConfig, backend: Backend) -> Result<Self, AttnError> {
        match backend {
            Backend::Cpu => Ok(Self::new(config)),
            #[cfg(feature = "cuda")]
            Backend::Cuda(gpu) => {
                let device = Some(GpuState::new::<E>(gpu, &config)?);
                Ok(Self { device, ..Self::new(config) })
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ValidPipelineConfig {
        &self.config
    }

    /// Adds a sequence from its prompt of `P` tokens: stores the KV, attends densely
    /// (causal) when queries are given, writing `[P, Hq, d]` into `out`, then clusters the
    /// keys of `[s, P)`. The same as [`add_sequence`](Self::add_sequence), one
    /// [`extend`](Self::extend) and [`finish_prefill`](Self::finish_prefill).
    pub fn prefill(&mut self, input: PrefillInput<'_>, out: Option<&mut [f32]>) -> Result<SeqId, AttnError> {
        let seq = self.add_sequence()?;
        let result = self.extend(seq, input, out).and_then(|()| self.finish_prefill(seq));
        if result.is_err() {
            self.seqs[seq.0] = None;
        }
        result.map(|()| seq)
    }

    /// Adds an empty sequence in prefill: its prompt comes in chunks through
    /// [`extend`](Self::extend), then [`finish_prefill`](Self::finish_prefill) clusters it.
    pub fn add_sequence(&mut self) -> Result<SeqId, AttnError> {
        let on_device = self.on_device();
        let cfg = &self.config;
        let (hq, d, select) = (cfg.n_q_heads(), cfg.head_dim(), cfg.select());
        let capacity = select.max_context().unwrap_or(0);
        let attended = select.max_attended(capacity);
        let heads = (0..cfg.n_kv_heads())
            .map(|h| {
                Ok(HeadState {
                    kv: HeadKv::with_capacity(d, capacity)?,
                    selector: new_selector(
                        select,
                        derive_seed(select.seed(), &[cfg.layer() as u64, h as u64]),
                    ),
                    selections: (0..select.gqa().selections_per_group(cfg.group()))
                        .map(|_| Vec::with_capacity(attended))
                        .collect(),
                    scratch: AttnScratch::with_capacity(cfg.group(), attended),
                    prompt_attention: Vec::new(),
                    // On the GPU backend the tier lives on the device.
                    tier: cfg.offload().filter(|_| !on_device).map(|o| DeviceTier::new(d, o)).transpose()?,
                })
            })
            .collect::<Result<Vec<_>, AttnError>>()?;
        let clustered_end = select.sink() as u32;
        // Ids are never reused, so a stale id of a removed sequence stays unknown.
        let host = self.host_budget.as_ref().map(HostBudget::reserve);
        self.seqs.push(Some(SeqState {
            heads,
            clustered_end,
            prefilling: true,
            out: vec![0.0; hq * d],
            host,
        }));
        Ok(SeqId(self.seqs.len() - 1))
    }

    /// Appends a chunk of `n` prompt tokens to a sequence in prefill: stores the KV and, when
    /// queries are given, attends each query densely and causally to everything stored so
    /// far, writing `[n, Hq, d]` into `out`. On error nothing has changed.
    pub fn extend(
        &mut self,
        seq: SeqId,
        input: PrefillInput<'_>,
        out: Option<&mut [f32]>,
    ) -> Result<(), AttnError> {
        let cfg = &self.config;
        let (hq, hkv, d) = (cfg.n_q_heads(), cfg.n_kv_heads(), cfg.head_dim());
        let state = self.state(seq)?;
        if !state.prefilling {
            return Err(AttnError::PrefillClosed(seq));
        }
        let n = input.keys.len() / (hkv * d);
        check_values::<E>("keys", input.keys, n * hkv * d)?;
        check_values::<E>("values", input.values, n * hkv * d)?;
        if let Some(queries) = input.queries {
            check_values::<f32>("queries", queries, n * hq * d)?;
            let given = out.as_ref().map_or(0, |o| o.len());
            if given != n * hq * d {
                return Err(ValueError::Shape { what: "out", expected: n * hq * d, given }.into());
            }
        }
        let context = state.len() + n;
        if let Some(max_context) = cfg.select().max_context()
            && context > max_context
        {
            return Err(ckv_select::SelectError::ContextTooLong { context, max_context }.into());
        }
        let Some(Some(state)) = self.seqs.get_mut(seq.0) else { return Err(AttnError::UnknownSequence(seq)) };
        if let Some(host) = &mut state.host {
            host.grow(n * token_bytes::<E>(cfg))?;
        }
        let base = state.len();
        for (h, head) in state.heads.iter_mut().enumerate() {
            let rows = |src: &[f32]| -> Vec<f32> {
                (0..n).flat_map(|t| &src[(t * hkv + h) * d..(t * hkv + h + 1) * d]).copied().collect()
            };
            head.kv.extend(&rows(input.keys), &rows(input.values))?;
        }
        if let (Some(queries), Some(out)) = (input.queries, out) {
            prefill_attention(cfg, state, base, queries, out);
        }
        Ok(())
    }

    /// Ends the prefill of `seq`: clusters the keys of `[s, P)`; decoding may start.
    pub fn finish_prefill(&mut self, seq: SeqId) -> Result<(), AttnError> {
        let (d, sink) = (self.config.head_dim(), self.config.select().sink() as u32);
        let Some(Some(state)) = self.seqs.get_mut(seq.0) else { return Err(AttnError::UnknownSequence(seq)) };
        if !state.prefilling {
            return Err(AttnError::PrefillClosed(seq));
        }
        let prompt = state.len() as u32;
        state.heads.par_iter_mut().try_for_each(|head| {
            let attention = std::mem::take(&mut head.prompt_attention);
            if !attention.is_empty() {
                let ids: Vec<u32> = (0..attention.len() as u32).collect();
                head.selector.observe(&ids, &attention);
            }
            head.selector.grow(head.kv.keys(), d, sink..prompt.max(sink), Growth::Prompt)
        })?;
        #[cfg(feature = "cuda")]
        if let Some(device) = &mut self.device {
            let heads: Vec<_> = state.heads.iter().map(|h| (&h.kv, h.selector.as_ref())).collect();
            let capacity = self.config.select().max_context().unwrap_or(0);
            device.upload(seq.0, &heads, capacity, self.config.offload())?;
        }
        state.clustered_end = prompt.max(sink);
        state.prefilling = false;
        Ok(())
    }

    /// A copy of the prompt of `seq`, still in prefill: its KV and the attention its tokens
    /// received. [`restore`](Self::restore) starts a sequence from it in any pipeline of the
    /// same shape, whatever its method: one dense prefill can serve every method.
    pub fn snapshot(&self, seq: SeqId) -> Result<PrefillSnapshot<E>, AttnError> {
        let state = self.state(seq)?;
        if !state.prefilling {
            return Err(AttnError::PrefillClosed(seq));
        }
        let heads = state.heads.iter().map(|h| (h.kv.clone(), h.prompt_attention.clone())).collect();
        Ok(PrefillSnapshot { heads })
    }

    /// Adds a sequence in prefill holding the prompt of `snapshot`; more chunks may follow
    /// through [`extend`](Self::extend), then [`finish_prefill`](Self::finish_prefill)
    /// clusters it for this pipeline's method.
    pub fn restore(&mut self, snapshot: &PrefillSnapshot<E>) -> Result<SeqId, AttnError> {
        let cfg = &self.config;
        let d = snapshot.heads.first().map_or(cfg.head_dim(), |(kv, _)| kv.d());
        if snapshot.heads.len() != cfg.n_kv_heads() || d != cfg.head_dim() {
            return Err(AttnError::from(ckv_core::ParamError::new(
                "snapshot",
                format!("{} KV heads of dimension {d}", snapshot.heads.len()),
                format!("{} KV heads of dimension {}", cfg.n_kv_heads(), cfg.head_dim()),
            )));
        }
        let context = snapshot.len();
        if let Some(max_context) = cfg.select().max_context()
            && context > max_context
        {
            return Err(ckv_select::SelectError::ContextTooLong { context, max_context }.into());
        }
        let seq = self.add_sequence()?;
        let Some(Some(state)) = self.seqs.get_mut(seq.0) else { return Err(AttnError::UnknownSequence(seq)) };
        let bytes = context * token_bytes::<E>(&self.config);
        if let Some(host) = &mut state.host
            && let Err(full) = host.grow(bytes)
        {
            self.seqs[seq.0] = None;
            return Err(full.into());
        }
        for (head, (kv, attention)) in state.heads.iter_mut().zip(&snapshot.heads) {
            head.kv.extend_from(kv)?;
            head.prompt_attention.clone_from(attention);
        }
        Ok(seq)
    }

    /// Decodes one new token for each sequence of `batch` (distinct sequences, any subset,
    /// any lengths): appends its K/V, re-clusters a full tail window, selects, attends.
    /// Writes `[batch.len(), Hq, d]` into `out`. On error nothing has changed.
    ///
    /// Steps allocate nothing once their buffers are warm (KV storage is reserved for
    /// `max_context` when it is set), except the clustering of a full window. Call it from
    /// inside a rayon pool (`ThreadPool::install`) for that: rayon's queue for work sent from
    /// outside a pool allocates now and then.
    pub fn decode(&mut self, batch: &[DecodeInput<'_>], out: &mut [f32]) -> Result<(), AttnError> {
        let cfg = &self.config;
        let (hq, hkv, d) = (cfg.n_q_heads(), cfg.n_kv_heads(), cfg.head_dim());
        if out.len() != batch.len() * hq * d {
            return Err(
                ValueError::Shape { what: "out", expected: batch.len() * hq * d, given: out.len() }.into()
            );
        }
        self.batch_slot.clear();
        self.batch_slot.resize(self.seqs.len(), usize::MAX);
        for (b, input) in batch.iter().enumerate() {
            let state = self.seqs.get(input.seq.0).and_then(Option::as_ref);
            let state = state.ok_or(AttnError::UnknownSequence(input.seq))?;
            if state.prefilling {
                return Err(AttnError::InPrefill(input.seq));
            }
            if self.batch_slot[input.seq.0] != usize::MAX {
                return Err(AttnError::DuplicateSequence(input.seq));
            }
            self.batch_slot[input.seq.0] = b;
            check_values::<f32>("query", input.query, hq * d)?;
            check_values::<E>("key", input.key, hkv * d)?;
            check_values::<E>("value", input.value, hkv * d)?;
            if let Some(max_context) = cfg.select().max_context()
                && state.len() + 1 > max_context
            {
                let context = state.len() + 1;
                return Err(ckv_select::SelectError::ContextTooLong { context, max_context }.into());
            }
        }
        // The host tier must take one more token of every sequence of the batch.
        let grow = token_bytes::<E>(cfg);
        if let Some(budget) = &self.host_budget
            && budget.used() + batch.len() * grow > budget.capacity()
        {
            let (needed, used, capacity) = (batch.len() * grow, budget.used(), budget.capacity());
            return Err(ckv_cache::CacheError::HostFull { needed, used, capacity }.into());
        }
        if self.on_device() {
            #[cfg(feature = "cuda")]
            if let Some(device) = &mut self.device {
                for (input, out) in batch.iter().zip(out.chunks_exact_mut(hq * d)) {
                    let Some(Some(state)) = self.seqs.get_mut(input.seq.0) else {
                        return Err(AttnError::UnknownSequence(input.seq));
                    };
                    decode_one_device(cfg, state, device, input, out)?;
                }
            }
        } else {
            // Every sequence of the batch decodes into its own output buffer, in parallel;
            // then the buffers are copied out in batch order. No allocation once the
            // buffers exist.
            let slots = &self.batch_slot;
            self.seqs.par_iter_mut().zip(slots).try_for_each(|(state, &b)| match (state, batch.get(b)) {
                (Some(state), Some(input)) => decode_one(cfg, state, input),
                _ => Ok(()),
            })?;
            for (input, out) in batch.iter().zip(out.chunks_exact_mut(hq * d)) {
                out.copy_from_slice(&self.state(input.seq)?.out);
            }
        }
        for input in batch {
            if let Some(Some(SeqState { host: Some(host), .. })) = self.seqs.get_mut(input.seq.0) {
                // Checked above: the budget has room for the whole batch.
                host.grow(grow)?;
            }
        }
        Ok(())
    }

    fn state(&self, seq: SeqId) -> Result<&SeqState<E>, AttnError> {
        self.seqs.get(seq.0).and_then(Option::as_ref).ok_or(AttnError::UnknownSequence(seq))
    }

    /// Removes a sequence and frees its KV; its id stays unknown from then on.
    pub fn remove(&mut self, seq: SeqId) -> Result<(), AttnError> {
        self.state(seq)?;
        self.seqs[seq.0] = None;
        #[cfg(feature = "cuda")]
        if let Some(device) = &mut self.device {
            device.remove(seq.0);
        }
        Ok(())
    }

    /// Tokens stored for `seq`.
    pub fn len(&self, seq: SeqId) -> Result<usize, AttnError> {
        Ok(self.state(seq)?.len())
    }

    /// The regions the next decode step of `seq` starts from: its current token at position
    /// `len`, before the re-clustering that step may trigger. Right after a prefill of `P`
    /// tokens: sink `[0, s)`, clustered `[s, P)`, empty tail.
    pub fn regions(&self, seq: SeqId) -> Result<Regions, AttnError> {
        let state = self.state(seq)?;
        let sink = self.config.select().sink() as u32;
        Ok(Regions::new(sink, state.clustered_end, state.len() as u32).map_err(SelectError::from)?)
    }

    /// The sorted ids that query head `q_head` of `seq` attended to in the last decode step
    /// (empty before the first one).
    pub fn selection(&self, seq: SeqId, q_head: usize) -> Result<&[u32], AttnError> {
        let state = self.state(seq)?;
        let cfg = &self.config;
        let head = state.heads.get(q_head / cfg.group()).ok_or_else(|| {
            AttnError::from(ckv_core::ParamError::new("q_head", q_head, format!("below {}", cfg.n_q_heads())))
        })?;
        let which = match cfg.select().gqa() {
            GqaPolicy::PerQueryHead => q_head % cfg.group(),
            GqaPolicy::PerKvHead => 0,
        };
        Ok(&head.selections[which])
    }

    /// The traffic of the device tier of (`seq`, `kv_head`): `None` when offload is off.
    pub fn offload_stats(&self, seq: SeqId, kv_head: usize) -> Result<Option<TierStats>, AttnError> {
        let head = self.head(seq, kv_head)?;
        #[cfg(feature = "cuda")]
        if let Some(device) = &self.device {
            let row_bytes = (2 * self.config.head_dim() * size_of::<E>()) as u64;
            return device.offload_stats(seq.0, kv_head, row_bytes);
        }
        Ok(head.tier.as_ref().map(DeviceTier::stats))
    }

    /// The tokens the device tier of (`seq`, `kv_head`) holds, ascending: `None` when
    /// offload is off.
    pub fn resident(&self, seq: SeqId, kv_head: usize) -> Result<Option<Vec<u32>>, AttnError> {
        let head = self.head(seq, kv_head)?;
        #[cfg(feature = "cuda")]
        if let Some(device) = &self.device {
            return device.resident(seq.0, kv_head);
        }
        Ok(head.tier.as_ref().map(DeviceTier::resident))
    }

    /// Whether decode steps run on a GPU.
    fn on_device(&self) -> bool {
        #[cfg(feature = "cuda")]
        if self.device.is_some() {
            return true;
        }
        false
    }

    /// Host bytes of KV held under the offload's host cap (`None` without a cap).
    pub fn host_bytes_used(&self) -> Option<usize> {
        self.host_budget.as_ref().map(|b| b.used())
    }

    /// The host KV of (`seq`, `kv_head`).
    pub fn kv(&self, seq: SeqId, kv_head: usize) -> Result<&HeadKv<E>, AttnError> {
        Ok(&self.head(seq, kv_head)?.kv)
    }

    /// The cluster index of (`seq`, `kv_head`): `None` for methods that keep none.
    pub fn index(&self, seq: SeqId, kv_head: usize) -> Result<Option<&ClusterIndex>, AttnError> {
        Ok(self.head(seq, kv_head)?.selector.index())
    }

    fn head(&self, seq: SeqId, kv_head: usize) -> Result<&HeadState<E>, AttnError> {
        let n = self.config.n_kv_heads();
        self.state(seq)?.heads.get(kv_head).ok_or_else(|| {
            AttnError::from(ckv_core::ParamError::new("kv_head", kv_head, format!("below {n}")))
        })
    }
}

/// Host bytes of one token's KV over every KV head.
fn token_bytes<E: Element>(cfg: &ValidPipelineConfig) -> usize {
    2 * cfg.n_kv_heads() * cfg.head_dim() * size_of::<E>()
}

/// Dense causal attention of a prompt chunk whose first token is at `base`; each KV head
/// accumulates the attention its tokens received (summed over the chunk's queries and the
/// group), which its selector observes when the prefill ends.
fn prefill_attention<E: Element>(
    cfg: &ValidPipelineConfig,
    state: &mut SeqState<E>,
    base: usize,
    queries: &[f32],
    out: &mut [f32],
) {
    let kv: Vec<HeadF32> = state.heads.par_iter().map(|h| HeadF32::new(h.kv.keys(), h.kv.values())).collect();
    let received = causal_attention(&kv, cfg.group(), cfg.head_dim(), base, queries, cfg.scale(), out);
    let len = state.len();
    for (h, received) in received.iter().enumerate() {
        let total = &mut state.heads[h / cfg.group()].prompt_attention;
        total.resize(len, 0.0);
        for (t, r) in total.iter_mut().zip(received) {
            *t += r;
        }
    }
}

/// One decode step of one sequence on the GPU: the host appends the K/V and grows the index
/// (parallel over KV heads), then the device appends, selects and attends.
#[cfg(feature = "cuda")]
fn decode_one_device<E: Element>(
    cfg: &ValidPipelineConfig,
    state: &mut SeqState<E>,
    device: &mut GpuState,
    input: &DecodeInput<'_>,
    out: &mut [f32],
) -> Result<(), AttnError> {
    let d = cfg.head_dim();
    let (regions, grow) = step_regions(cfg, state)?;
    let (t, c) = (regions.current(), state.clustered_end);
    state.heads.par_iter_mut().zip(input.key.par_chunks(d)).zip(input.value.par_chunks(d)).try_for_each(
        |((head, key), value)| {
            head.kv.append(key, value)?;
            if grow {
                head.selector.grow(head.kv.keys(), d, c..t, Growth::Window)?;
            }
            Ok::<(), AttnError>(())
        },
    )?;
    state.clustered_end = regions.clustered().end;
    let (heads, mut selections): (Vec<_>, Vec<_>) =
        state.heads.iter_mut().map(|h| ((&h.kv, h.selector.as_ref()), &mut h.selections)).unzip();
    device.decode(
        input.seq.0,
        cfg,
        &heads,
        &mut selections,
        regions,
        input.key,
        input.value,
        input.query,
        out,
    )?;
    Ok(())
}

/// The regions of the next step of `state`, and whether its full tail is clustered first.
fn step_regions<E: Element>(
    cfg: &ValidPipelineConfig,
    state: &SeqState<E>,
) -> Result<(Regions, bool), AttnError> {
    let select = cfg.select();
    let t = state.len() as u32;
    let c = state.clustered_end;
    // The tail [c, t) is full: cluster it alone and append its clusters.
    let grow = t >= c && (t - c) as usize >= select.window();
    let clustered_end = if grow { t } else { c };
    Ok((Regions::new(select.sink() as u32, clustered_end, t).map_err(SelectError::from)?, grow))
}

/// One decode step of one sequence, parallel over its KV heads.
fn decode_one<E: Element>(
    cfg: &ValidPipelineConfig,
    state: &mut SeqState<E>,
    input: &DecodeInput<'_>,
) -> Result<(), AttnError> {
    let (d, g, select) = (cfg.head_dim(), cfg.group(), cfg.select());
    let (regions, grow) = step_regions(cfg, state)?;
    let (t, c, clustered_end) = (regions.current(), state.clustered_end, regions.clustered().end);
    state
        .heads
        .par_iter_mut()
        .zip(input.key.par_chunks(d))
        .zip(input.value.par_chunks(d))
        .zip(input.query.par_chunks(g * d))
        .zip(state.out.par_chunks_mut(g * d))
        .try_for_each(|((((head, key), value), queries), out)| {
            head.kv.append(key, value)?;
            if grow {
                head.selector.grow(head.kv.keys(), d, c..t, Growth::Window)?;
            }
            let step =
                StepCtx { queries, n_queries: g, keys: head.kv.keys(), d, scale: cfg.scale(), regions };
            select_group(head.selector.as_mut(), select, &step, &mut head.selections)?;
            let lists = &head.selections;
            // With offload the attention reads the device tier's slots: the same rows in the
            // same order, so the same result, bitwise.
            let (keys, values, read) = match &mut head.tier {
                Some(tier) => {
                    tier.step(&head.kv, lists, t)?;
                    (tier.keys(), tier.values(), tier.slot_lists())
                }
                None => (head.kv.keys(), head.kv.values(), &lists[..]),
            };
            // The selector observes token ids: the i-th call is about the i-th list (every
            // list alike when they are shared).
            let mut call = 0;
            let observe = |_: &[u32], probs: &[f32]| {
                head.selector.observe(&lists[call.min(lists.len() - 1)], probs);
                call += 1;
            };
            let selected = Selected { lists: read, context: regions.context() };
            attend_selected(queries, d, keys, values, selected, cfg.scale(), &mut head.scratch, out, observe);
            Ok::<(), AttnError>(())
        })?;
    state.clustered_end = clustered_end;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PipelineConfig;
    use ckv_core::ParamGuard;
    use ckv_select::{Method, SelectParams};
    use ndarray::{Array2, Array3, Axis, s};

    fn config(hq: usize, hkv: usize, d: usize) -> ValidPipelineConfig {
        let select = SelectParams::new(Method::ClusterKv).budget(48).sink(4);
        PipelineConfig::new(hq, hkv, d, select).validate().unwrap()
    }

    fn val(i: usize, salt: usize) -> f32 {
        ((i * 7919 + salt * 104_729) % 2003) as f32 / 500.0 - 2.0
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

        /// A prefill and decode steps from views give bitwise the outputs, selections and KV
        /// of the same inputs as slices.
        #[test]
        fn views_equal_slices(
            heads in proptest::sample::select(vec![(1usize, 1usize), (4, 2), (6, 3)]),
            d in 1usize..12,
            prompt in 1usize..120,
            steps in 1usize..20,
            salt in 0usize..1000,
        ) {
            let (hq, hkv) = heads;
            let cfg = config(hq, hkv, d);
            let keys = Array3::from_shape_fn((prompt, hkv, d), |(t, h, e)| val((t * hkv + h) * d + e, salt));
            let values = keys.mapv(|x| x * 0.5 - 0.25);
            let queries = Array3::from_shape_fn((prompt, hq, d), |(t, h, e)| val((t * hq + h) * d + e, salt + 1));
            let (mut a, mut b) = (LayerPipeline::<f32>::new(cfg.clone()), LayerPipeline::<f32>::new(cfg.clone()));
            let (mut out_a, mut out_b) = (vec![0.0; prompt * hq * d], vec![0.0; prompt * hq * d]);
            let slices = PrefillInput {
                keys: keys.as_slice().unwrap(),
                values: values.as_slice().unwrap(),
                queries: Some(queries.as_slice().unwrap()),
            };
            let sa = a.prefill(slices, Some(&mut out_a)).unwrap();
            let views = PrefillInput::from_views(&cfg, keys.view(), values.view(), Some(queries.view())).unwrap();
            let sb = b.prefill(views, Some(&mut out_b)).unwrap();
            proptest::prop_assert_eq!(&out_a, &out_b);
            for step in 0..steps {
                let q = Array2::from_shape_fn((hq, d), |(h, e)| val(h * d + e, salt + 2 + step));
                let k = Array2::from_shape_fn((hkv, d), |(h, e)| val(h * d + e, salt + 3 + step));
                let input = DecodeInput {
                    seq: sa,
                    query: q.as_slice().unwrap(),
                    key: k.as_slice().unwrap(),
                    value: k.as_slice().unwrap(),
                };
                let (mut o_a, mut o_b) = (vec![0.0; hq * d], vec![0.0; hq * d]);
                a.decode(&[input], &mut o_a).unwrap();
                let view = DecodeInput::from_views(&cfg, sb, q.view(), k.view(), k.view()).unwrap();
                b.decode(&[view], &mut o_b).unwrap();
                proptest::prop_assert_eq!(&o_a, &o_b);
                for h in 0..hq {
                    proptest::prop_assert_eq!(a.selection(sa, h).unwrap(), b.selection(sb, h).unwrap());
                }
            }
            for h in 0..hkv {
                proptest::prop_assert_eq!(a.kv(sa, h).unwrap(), b.kv(sb, h).unwrap());
            }
        }
    }

    #[test]
    fn views_of_the_wrong_shape_or_layout_are_errors() {
        let cfg = config(4, 2, 8);
        let shape = |what, expected: &[usize], given: &[usize]| {
            AttnError::Value(ValueError::ViewShape {
                what,
                expected: expected.to_vec(),
                given: given.to_vec(),
            })
        };
        // Token-major [P, Hkv, d] is right; head-major [Hkv, P, d] of the same length is not.
        let kv = Array3::<f32>::zeros((10, 2, 8));
        let head_major = Array3::<f32>::zeros((2, 10, 8));
        let q = Array3::<f32>::zeros((10, 4, 8));
        assert!(PrefillInput::from_views(&cfg, kv.view(), kv.view(), Some(q.view())).is_ok());
        let err = PrefillInput::from_views(&cfg, head_major.view(), head_major.view(), None).unwrap_err();
        assert_eq!(err, shape("keys", &[2, 2, 8], &[2, 10, 8]));
        assert!(err.to_string().contains("[2, 10, 8]"), "{err}");
        let short = Array3::<f32>::zeros((9, 2, 8));
        let err = PrefillInput::from_views(&cfg, kv.view(), short.view(), None).unwrap_err();
        assert_eq!(err, shape("values", &[10, 2, 8], &[9, 2, 8]));
        let q_wrong = Array3::<f32>::zeros((10, 2, 8));
        let err = PrefillInput::from_views(&cfg, kv.view(), kv.view(), Some(q_wrong.view())).unwrap_err();
        assert_eq!(err, shape("queries", &[10, 4, 8], &[10, 2, 8]));
        // A non-standard view of the right shape: the heads axis of a [P, 2 * Hkv, d] array.
        let wide = Array3::<f32>::zeros((10, 4, 8));
        let strided = wide.slice(s![.., ..2, ..]);
        let err = PrefillInput::from_views(&cfg, strided, kv.view(), None).unwrap_err();
        let want = ValueError::NotContiguous { what: "keys", shape: vec![10, 2, 8], strides: vec![32, 8, 1] };
        assert_eq!(err, AttnError::Value(want));

        let seq = SeqId(0);
        let (q, k) = (Array2::<f32>::zeros((4, 8)), Array2::<f32>::zeros((2, 8)));
        assert!(DecodeInput::from_views(&cfg, seq, q.view(), k.view(), k.view()).is_ok());
        let err = DecodeInput::from_views(&cfg, seq, k.view(), k.view(), k.view()).unwrap_err();
        assert_eq!(err, shape("query", &[4, 8], &[2, 8]));
        let flat = Array2::<f32>::zeros((1, 16));
        let err = DecodeInput::from_views(&cfg, seq, q.view(), flat.view(), k.view()).unwrap_err();
        assert_eq!(err, shape("key", &[2, 8], &[1, 16]));
        let err = DecodeInput::from_views(&cfg, seq, q.view(), k.view(), q.slice(s![..;2, ..])).unwrap_err();
        assert!(matches!(err, AttnError::Value(ValueError::NotContiguous { what: "value", .. })), "{err:?}");
        let per_token = Array3::<f32>::zeros((3, 2, 8));
        let key = per_token.index_axis(Axis(0), 1);
        assert!(DecodeInput::from_views(&cfg, seq, q.view(), key, key).is_ok());
    }
}
