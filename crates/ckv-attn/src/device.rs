//! The GPU backend of [`LayerPipeline`](crate::LayerPipeline) (feature `cuda`): every
//! sequence keeps a device copy of its KV and cluster index, and each decode step appends
//! the new K/V, selects and attends on the GPU through `ckv-kernels`. The host keeps the
//! full KV as well: prefill, clustering (every full tail window too) and the accessors run
//! there, and the index is uploaded whenever it grows, so both backends select alike.
//! With offload the sequence's KV lives in pinned host memory instead, and the device
//! holds only its tier of recently attended rows, swapped on the GPU each step.

use std::sync::Arc;

use ckv_cache::{HeadKv, OffloadParams, TierStats};
use ckv_core::{Element, RowData};
use ckv_kernels::{
    ATTENTION_SHAPES, DecodeScratch, DecodeStep, DeviceIndex, DeviceKv, Gpu, GpuTier, IndexParts, PinnedKv,
};
use ckv_select::{GqaPolicy, Method, Regions, Selector};

use crate::{AttnError, ValidPipelineConfig};

/// A GPU error as an [`AttnError`].
fn gpu_error(e: ckv_kernels::KernelError) -> AttnError {
    AttnError::Gpu(e.to_string())
}

/// The device side of a pipeline: the GPU and each sequence's device state, by sequence
/// slot.
pub(crate) struct GpuState {
    gpu: Arc<Gpu>,
    seqs: Vec<Option<DeviceSeq>>,
}

/// Where a sequence's KV lives on the GPU path.
enum Storage {
    /// All of it on the device.
    Device(DeviceKv),
    /// In pinned host memory, the recently attended rows in a device tier.
    Offloaded { host: PinnedKv, tier: Box<GpuTier> },
}

/// One sequence on the device.
struct DeviceSeq {
    kv: Storage,
    index: Option<DeviceIndex>,
    /// Clusters per head in the uploaded index (0: none).
    clusters: usize,
    scratch: DecodeScratch,
    /// The id lists of the last step, `[lists]`.
    lists: Vec<Vec<u32>>,
}

impl GpuState {
    /// The device side for `config`, refusing what the kernels do not cover: methods other
    /// than dense and ClusterKV, a mass-targeted budget, f32 KV, and group sizes or head
    /// dimensions not instantiated.
    pub(crate) fn new<E: Element>(gpu: Arc<Gpu>, config: &ValidPipelineConfig) -> Result<Self, AttnError> {
        let (g, d, method) = (config.group(), config.head_dim(), config.select().method());
        let bad = |name, value: String, expected: String| {
            Err(AttnError::from(ckv_core::ParamError::new(name, value, expected)))
        };
        if config.offload().is_some() && !d.is_multiple_of(2) {
            return bad("head_dim", d.to_string(), "even with offload on the GPU backend".into());
        }
        if !matches!(method, Method::Dense | Method::ClusterKv) {
            return bad("method", method.to_string(), "dense or clusterkv on the GPU backend".into());
        }
        if let (Some(p), Method::ClusterKv) = (config.select().mass(), method) {
            return bad(
                "budget",
                config.select().budget_rule().to_string(),
                format!("a token count on the GPU backend (mass target {p} is CPU only)"),
            );
        }
        if !matches!(E::row_data(&[]), RowData::F16(_)) {
            return bad("KV element", "f32".into(), "f16 on the GPU backend".into());
        }
        let rows = match config.select().gqa() {
            GqaPolicy::PerQueryHead if method == Method::ClusterKv => 1,
            _ => g,
        };
        if !ATTENTION_SHAPES.contains(&(rows, d)) || !ATTENTION_SHAPES.contains(&(g, d)) {
            return bad(
                "group and head_dim",
                format!("{g} x {d}"),
                format!("one of the GPU attention shapes {ATTENTION_SHAPES:?}"),
            );
        }
        Ok(Self { gpu, seqs: Vec::new() })
    }

    /// Sends the KV and index of sequence `slot` to the device, once its prefill is done.
    pub(crate) fn upload<E: Element>(
        &mut self,
        slot: usize,
        heads: &[(&HeadKv<E>, &dyn Selector<E>)],
        capacity: usize,
        offload: Option<&OffloadParams>,
    ) -> Result<(), AttnError> {
        let gpu = &self.gpu;
        let d = heads.first().map_or(1, |(kv, _)| kv.d());
        let capacity = capacity.max(heads.first().map_or(0, |(kv, _)| kv.len() + 1));
        let rows: Vec<(&[half::f16], &[half::f16])> =
            heads.iter().map(|(kv, _)| (f16_rows(kv.keys()), f16_rows(kv.values()))).collect();
        let kv = match offload {
            None => {
                let mut kv = gpu.kv(heads.len(), d, capacity).map_err(gpu_error)?;
                gpu.upload_kv(&mut kv, &rows).map_err(gpu_error)?;
                Storage::Device(kv)
            }
            Some(offload) => {
                let mut host = gpu.pinned_kv(heads.len(), d, capacity).map_err(gpu_error)?;
                gpu.extend_pinned(&mut host, &rows).map_err(gpu_error)?;
                let tier = Box::new(gpu.tier(heads.len(), d, offload.reuse()).map_err(gpu_error)?);
                Storage::Offloaded { host, tier }
            }
        };
        let mut seq = DeviceSeq {
            kv,
            index: None,
            clusters: 0,
            scratch: gpu.scratch().map_err(gpu_error)?,
            lists: Vec::new(),
        };
        refresh_index(gpu, &mut seq, heads)?;
        if self.seqs.len() <= slot {
            self.seqs.resize_with(slot + 1, || None);
        }
        self.seqs[slot] = Some(seq);
        Ok(())
    }

    /// Forgets sequence `slot`, freeing its device memory.
    pub(crate) fn remove(&mut self, slot: usize) {
        if let Some(seq) = self.seqs.get_mut(slot) {
            *seq = None;
        }
    }

    /// One decode step of sequence `slot` on the GPU, after the host appended the K/V and
    /// grew the index: writes `[Hq, d]` into `out` and the step's sorted id lists into
    /// `selections` of each head.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decode<E: Element>(
        &mut self,
        slot: usize,
        config: &ValidPipelineConfig,
        heads: &[(&HeadKv<E>, &dyn Selector<E>)],
        selections: &mut [&mut Vec<Vec<u32>>],
        regions: Regions,
        key: &[f32],
        value: &[f32],
        query: &[f32],
        out: &mut [f32],
    ) -> Result<(), AttnError> {
        let gpu = &self.gpu;
        let seq = self
            .seqs
            .get_mut(slot)
            .and_then(Option::as_mut)
            .ok_or_else(|| AttnError::Gpu(format!("sequence slot {slot} has no device state")))?;
        match &mut seq.kv {
            Storage::Device(kv) => gpu.append_kv(kv, key, value),
            Storage::Offloaded { host, .. } => gpu.append_pinned(host, key, value),
        }
        .map_err(gpu_error)?;
        refresh_index(gpu, seq, heads)?;
        let select = config.select();
        let selected = match select.method() {
            Method::Dense => None,
            _ => Some(regions.selected_count(select.budget())),
        };
        let step = DecodeStep {
            group: config.group(),
            per_kv_head: select.gqa() == GqaPolicy::PerKvHead,
            regions,
            selected,
            scale: config.scale(),
        };
        let index = seq.index.as_ref();
        match &mut seq.kv {
            Storage::Device(kv) => gpu.decode_step(kv, index, &step, query, &mut seq.scratch),
            Storage::Offloaded { host, tier } => {
                gpu.decode_step_offloaded(host, tier, index, &step, query, &mut seq.scratch)
            }
        }
        .map_err(gpu_error)?;
        gpu.read_output(&seq.scratch, out).map_err(gpu_error)?;
        let per_head = selections.first().map_or(1, |s| s.len());
        if selected.is_none() {
            for list in selections.iter_mut().flat_map(|s| s.iter_mut()) {
                list.clear();
                list.extend(0..=regions.current());
            }
            return Ok(());
        }
        seq.lists.resize_with(step.lists(heads.len()), Vec::new);
        gpu.read_ids(&seq.scratch, &mut seq.lists).map_err(gpu_error)?;
        for (h, head) in selections.iter_mut().enumerate() {
            for (j, list) in head.iter_mut().enumerate() {
                list.clone_from(&seq.lists[h * per_head + j]);
                list.sort_unstable();
            }
        }
        Ok(())
    }
}

impl GpuState {
    /// The offload traffic of (`slot`, `kv_head`), as the CPU tier counts it; `None`
    /// without offload.
    pub(crate) fn offload_stats(
        &self,
        slot: usize,
        kv_head: usize,
        row_bytes: u64,
    ) -> Result<Option<TierStats>, AttnError> {
        let Some(Storage::Offloaded { tier, .. }) =
            self.seqs.get(slot).and_then(Option::as_ref).map(|s| &s.kv)
        else {
            return Ok(None);
        };
        let stats = self.gpu.tier_stats(tier, row_bytes).map_err(gpu_error)?;
        let head = stats.get(kv_head).ok_or_else(|| AttnError::Gpu(format!("no KV head {kv_head}")))?;
        Ok(Some(*head))
    }

    /// The tokens the device tier of (`slot`, `kv_head`) holds; `None` without offload.
    pub(crate) fn resident(&self, slot: usize, kv_head: usize) -> Result<Option<Vec<u32>>, AttnError> {
        let Some(Storage::Offloaded { tier, .. }) =
            self.seqs.get(slot).and_then(Option::as_ref).map(|s| &s.kv)
        else {
            return Ok(None);
        };
        self.gpu.tier_resident(tier, kv_head).map(Some).map_err(gpu_error)
    }
}

/// Uploads the heads' index when it has grown since the last upload.
fn refresh_index<E: Element>(
    gpu: &Gpu,
    seq: &mut DeviceSeq,
    heads: &[(&HeadKv<E>, &dyn Selector<E>)],
) -> Result<(), AttnError> {
    let indexes: Vec<_> = heads.iter().filter_map(|(_, s)| s.index()).collect();
    let clusters = indexes.first().map_or(0, |i| i.n_clusters());
    if indexes.len() != heads.len() || clusters == seq.clusters {
        return Ok(());
    }
    let d = indexes[0].d();
    let parts: Vec<IndexParts<'_>> = indexes
        .iter()
        .map(|i| IndexParts {
            centroids: i.centroids_f16(),
            sizes: i.sizes(),
            offsets: i.offsets(),
            members: i.members(),
        })
        .collect();
    seq.index = Some(gpu.upload_index(&parts, d).map_err(gpu_error)?);
    seq.clusters = clusters;
    Ok(())
}

/// Rows of a store whose element is f16 ([`GpuState::new`] refuses any other).
fn f16_rows<E: Element>(rows: &[E]) -> &[half::f16] {
    match E::row_data(rows) {
        RowData::F16(rows) => rows,
        RowData::F32(_) => &[],
    }
}
