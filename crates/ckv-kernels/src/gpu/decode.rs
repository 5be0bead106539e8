//! One decode step of one sequence on the device: the id lists (ClusterKV's selection
//! kernel, or the whole clustered region), then flash-decoding attention over them (or over
//! every row, dense) and the merge of its chunks.

use ckv_core::Regions;
use cudarc::driver::{CudaSlice, PushKernelArg};
use half::f16;

use super::index::MAX_D;
use super::{Gpu, driver, grid, int};
use crate::{DeviceIndex, DeviceKv, KernelError};

/// Threads of an attention block (4 warps), as in `attention.cu`.
const ATTENTION_THREADS: u32 = 128;

/// Threads of a selection block, as in `select.cu`.
const SELECT_THREADS: u32 = 1024;

/// Clusters a selection block sorts in shared memory, and threads of a rank block, as in
/// `select.cu`.
const SELECT_TILE: usize = 4096;
const RANK_THREADS: u32 = 256;

/// Most blocks along a launch's y dimension.
const MAX_GRID_Y: usize = 65535;

/// Group sizes and head dimensions `attention.cu` instantiates.
pub const ATTENTION_SHAPES: [(usize, usize); 9] =
    [(1, 64), (2, 64), (3, 64), (4, 64), (1, 128), (2, 128), (3, 128), (4, 128), (8, 128)];

/// Attention blocks a step aims for per multiprocessor: enough warps in flight to cover
/// the latency of HBM reads (each warp reads one row at a time).
const BLOCKS_PER_SM: usize = 8;

/// The fewest ids an attention block takes: fewer would leave its warps idle.
const MIN_CHUNK: usize = 32;

/// KV rows the attention kernels read: `[heads, _, d]` f16, `head_stride` elements from one
/// head to the next (a sequence's [`DeviceKv`], or the slots of its device tier).
#[derive(Clone, Copy)]
pub(super) struct KvRows<'a> {
    pub keys: &'a CudaSlice<f16>,
    pub values: &'a CudaSlice<f16>,
    pub heads: usize,
    pub d: usize,
    pub head_stride: usize,
}

/// The shape of one decode step of one sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeStep {
    /// Query heads per KV head, `g`.
    pub group: usize,
    /// One selection per KV head from the group's summed queries (`PerKvHead`), or one per
    /// query head (`PerQueryHead`).
    pub per_kv_head: bool,
    /// The step's regions (DESIGN section 4); the current token's K/V is already appended.
    pub regions: Regions,
    /// Ids taken from the clustered region (the whole region when this is its size, else
    /// ranked by the index), beside the sink, the tail and the current token; `None` for a
    /// dense step, which attends to every row `0..=t`.
    pub selected: Option<usize>,
    /// The softmax scale.
    pub scale: f32,
}

impl DecodeStep {
    /// The current token's position `t`.
    pub fn current(&self) -> usize {
        self.regions.current() as usize
    }

    /// Id lists of the step: one per KV head, or per query head under `PerQueryHead`.
    pub fn lists(&self, kv_heads: usize) -> usize {
        match self.selected {
            Some(_) if !self.per_kv_head => kv_heads * self.group,
            _ => kv_heads,
        }
    }

    /// Ids in each list.
    pub fn attended(&self) -> usize {
        match self.selected {
            None => self.current() + 1,
            Some(chosen) => self.regions.sink().len() + chosen + self.regions.tail().len() + 1,
        }
    }

    /// The sink's length, the clustered region's end and the ids chosen from it; all 0 for
    /// a dense step.
    fn clustered(&self) -> (usize, usize, usize) {
        match self.selected {
            None => (0, 0, 0),
            Some(chosen) => (self.regions.sink().len(), self.regions.clustered().end as usize, chosen),
        }
    }
}

/// One launch of the selection kernel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Selection {
    /// Query rows summed per list.
    pub rows: usize,
    /// Lists, a multiple of the index's heads.
    pub lists: usize,
    /// Ids each list takes.
    pub chosen: usize,
    /// Ids from one list to the next.
    pub stride: usize,
    /// Where in its list the chosen ids start.
    pub offset: usize,
}

/// Device buffers of the multi-pass ranking (indexes of more than `SELECT_TILE` clusters),
/// grown on demand and reused, `[lists, clusters]` each.
pub(super) struct RankScratch {
    /// The sorted runs' keys, then the ranked sizes.
    keys: CudaSlice<u64>,
    /// Cluster ids in rank order.
    order: CudaSlice<u32>,
}

/// Device buffers of decode steps, grown on demand and reused: the queries, the id lists,
/// the ranking's scratch, the chunks' partial results and the output.
pub struct DecodeScratch {
    pub(super) queries: CudaSlice<f32>,
    pub(super) ids: CudaSlice<u32>,
    /// The id lists as slots of a device tier (offload), and whether the attention reads
    /// them rather than `ids`.
    pub(super) slot_ids: CudaSlice<u32>,
    pub(super) read_slots: bool,
    pub(super) n_ids: CudaSlice<i32>,
    pub(super) ranking: RankScratch,
    part_out: CudaSlice<f32>,
    part_max: CudaSlice<f32>,
    part_sum: CudaSlice<f32>,
    out: CudaSlice<f32>,
    /// Query values uploaded.
    pub(super) query_values: usize,
    /// Lists of the last step, ids per list, and whether they were written.
    lists: usize,
    pub(super) attended: usize,
    has_ids: bool,
}

/// A buffer of at least `len` elements: `buffer` itself when long enough.
pub(super) fn at_least<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    gpu: &Gpu,
    buffer: &mut CudaSlice<T>,
    len: usize,
) -> Result<(), KernelError> {
    if buffer.len() < len {
        *buffer = gpu.stream.alloc_zeros(len.next_power_of_two()).map_err(driver)?;
    }
    Ok(())
}

impl Gpu {
    /// Empty decode buffers; the first steps size them.
    pub fn scratch(&self) -> Result<DecodeScratch, KernelError> {
        let s = &self.stream;
        let one = || s.alloc_zeros::<f32>(1).map_err(driver);
        Ok(DecodeScratch {
            queries: one()?,
            ids: s.alloc_zeros(1).map_err(driver)?,
            slot_ids: s.alloc_zeros(1).map_err(driver)?,
            read_slots: false,
            n_ids: s.alloc_zeros(1).map_err(driver)?,
            ranking: RankScratch {
                keys: s.alloc_zeros(1).map_err(driver)?,
                order: s.alloc_zeros(1).map_err(driver)?,
            },
            part_out: one()?,
            part_max: one()?,
            part_sum: one()?,
            out: one()?,
            query_values: 0,
            lists: 0,
            attended: 0,
            has_ids: false,
        })
    }

    /// Sends one decode step of one sequence to the GPU: `queries` `[heads * group, d]`
    /// f32 after RoPE; the KV holds the current token. ClusterKV ranks with `index` when
    /// the step takes fewer ids than the clustered region holds. The output `[Hq, d]` and
    /// the id lists stay on the device until [`read_output`](Self::read_output) and
    /// [`read_ids`](Self::read_ids). The same as [`upload_queries`](Self::upload_queries)
    /// then [`step_on_device`](Self::step_on_device).
    pub fn decode_step(
        &self,
        kv: &DeviceKv,
        index: Option<&DeviceIndex>,
        step: &DecodeStep,
        queries: &[f32],
        scratch: &mut DecodeScratch,
    ) -> Result<(), KernelError> {
        self.upload_queries(kv, step, queries, scratch)?;
        self.step_on_device(kv, index, step, scratch)
    }

    /// Copies a step's queries `[heads * group, d]` into `scratch`.
    pub fn upload_queries(
        &self,
        kv: &DeviceKv,
        step: &DecodeStep,
        queries: &[f32],
        scratch: &mut DecodeScratch,
    ) -> Result<(), KernelError> {
        self.upload_queries_for(kv.heads(), kv.d(), step, queries, scratch)
    }

    /// [`upload_queries`](Self::upload_queries) for `heads` KV heads of dimension `d`.
    pub(super) fn upload_queries_for(
        &self,
        heads: usize,
        d: usize,
        step: &DecodeStep,
        queries: &[f32],
        scratch: &mut DecodeScratch,
    ) -> Result<(), KernelError> {
        let g = step.group;
        if queries.len() != heads * g * d {
            return Err(KernelError::Shape(format!(
                "{} query values for {heads} x {g} heads of dimension {d}",
                queries.len()
            )));
        }
        at_least(self, &mut scratch.queries, queries.len())?;
        self.stream.memcpy_htod(queries, &mut scratch.queries.slice_mut(..queries.len())).map_err(driver)?;
        scratch.query_values = queries.len();
        Ok(())
    }

    /// A decode step over the queries already in `scratch` (a model whose queries are on
    /// the device runs this alone; the GPU benchmark times it).
    pub fn step_on_device(
        &self,
        kv: &DeviceKv,
        index: Option<&DeviceIndex>,
        step: &DecodeStep,
        scratch: &mut DecodeScratch,
    ) -> Result<(), KernelError> {
        let (heads, d, g) = (kv.heads(), kv.d(), step.group);
        if scratch.query_values != heads * g * d || step.current() >= kv.len() {
            return Err(KernelError::Shape(format!(
                "{} query values uploaded for {heads} x {g} heads of dimension {d}; current token {} of {} \
                 stored",
                scratch.query_values,
                step.current(),
                kv.len()
            )));
        }
        self.prepare_lists(index, step, heads, scratch)?;
        self.attend(kv, step, scratch)
    }

    /// Sizes the id buffers of a step and writes its lists (or their lengths, dense).
    pub(super) fn prepare_lists(
        &self,
        index: Option<&DeviceIndex>,
        step: &DecodeStep,
        heads: usize,
        scratch: &mut DecodeScratch,
    ) -> Result<(), KernelError> {
        let (lists, attended) = (step.lists(heads), step.attended());
        at_least(self, &mut scratch.n_ids, lists)?;
        scratch.has_ids = step.selected.is_some();
        if scratch.has_ids {
            at_least(self, &mut scratch.ids, lists * attended)?;
        }
        (scratch.lists, scratch.attended) = (lists, attended);
        scratch.read_slots = false;
        self.step_ids(index, step, heads, lists, scratch)
    }

    /// The attention of the last [`decode_step`](Self::decode_step) again, over the id
    /// lists and queries it left in `scratch`: the attention kernels alone, as the GPU
    /// benchmark times them.
    pub fn attend(
        &self,
        kv: &DeviceKv,
        step: &DecodeStep,
        scratch: &mut DecodeScratch,
    ) -> Result<(), KernelError> {
        self.attend_rows(kv.rows(), step, scratch)
    }

    /// [`attend`](Self::attend) over any KV rows.
    pub(super) fn attend_rows(
        &self,
        kv: KvRows<'_>,
        step: &DecodeStep,
        scratch: &mut DecodeScratch,
    ) -> Result<(), KernelError> {
        let (heads, d, g) = (kv.heads, kv.d, step.group);
        let (lists, attended) = (step.lists(heads), step.attended());
        if (lists, attended) != (scratch.lists, scratch.attended) {
            return Err(KernelError::Shape(format!(
                "a step of {lists} lists of {attended} ids over buffers of {} lists of {}",
                scratch.lists, scratch.attended
            )));
        }
        // Sparse steps under PerQueryHead: one list per query head, each read alone.
        let (work_heads, rows, heads_per_kv) = if lists == heads { (heads, g, 1) } else { (lists, 1, g) };
        if !ATTENTION_SHAPES.contains(&(rows, d)) {
            return Err(KernelError::Shape(format!(
                "group {rows} x d {d}: instantiated are {ATTENTION_SHAPES:?}"
            )));
        }
        let target_blocks = BLOCKS_PER_SM * self.multiprocessors;
        let chunks = target_blocks.div_ceil(work_heads).clamp(1, attended.div_ceil(MIN_CHUNK).max(1));
        let chunk_len = attended.div_ceil(chunks);
        let has_ids = scratch.has_ids;
        self.attention_into(
            kv,
            heads_per_kv,
            work_heads,
            rows,
            has_ids,
            attended,
            chunk_len,
            step.scale,
            scratch,
        )
    }

    /// Writes the id lists of a step (or only their lengths, for a dense step).
    fn step_ids(
        &self,
        index: Option<&DeviceIndex>,
        step: &DecodeStep,
        heads: usize,
        lists: usize,
        scratch: &mut DecodeScratch,
    ) -> Result<(), KernelError> {
        let s = &self.stream;
        let (sink, clustered_end, chosen) = step.clustered();
        if chosen > clustered_end - sink {
            return Err(KernelError::Shape(format!(
                "{chosen} ids chosen from a clustered region of {} tokens",
                clustered_end - sink
            )));
        }
        let rank = scratch.has_ids && chosen < clustered_end - sink;
        let stride = int("ids per list", scratch.attended)?;
        if rank {
            let index = index.ok_or_else(|| KernelError::Shape("a ranked step without an index".into()))?;
            if index.heads() != heads || index.tokens() != clustered_end - sink {
                return Err(KernelError::Shape(format!(
                    "an index of {} heads, {} tokens for a clustered region of {} tokens",
                    index.heads(),
                    index.tokens(),
                    clustered_end - sink
                )));
            }
            let rows = if step.per_kv_head { step.group } else { 1 };
            let selection = Selection { rows, lists, chosen, stride: scratch.attended, offset: sink };
            self.launch_select(index, &scratch.queries, &selection, &mut scratch.ids, &mut scratch.ranking)?;
        }
        let f = self.function("kv", "step_ids")?;
        let fill = i32::from(!rank);
        let (sink_i, chosen_i, end_i, current_i) = (
            int("sink", sink)?,
            int("chosen", chosen)?,
            int("clustered end", clustered_end)?,
            int("current", step.current())?,
        );
        let null = 0u64;
        let mut l = s.launch_builder(&f);
        if scratch.has_ids {
            l.arg(&mut scratch.ids);
        } else {
            l.arg(&null);
        }
        l.arg(&stride)
            .arg(&sink_i)
            .arg(&chosen_i)
            .arg(&fill)
            .arg(&end_i)
            .arg(&current_i)
            .arg(&mut scratch.n_ids);
        // SAFETY: the arguments match `step_ids`; one block per list of `stride` ids, each
        // holding sink + chosen + tail + 1 = `attended` ids; ids null for a dense step.
        #[allow(unsafe_code)]
        unsafe { l.launch(grid(lists, 1, 256, 0)) }.map_err(driver)?;
        Ok(())
    }

    /// ClusterKV's selection: list `i` sums its `rows` query rows, ranks the clusters of KV
    /// head `i / (lists / heads)` (any number) and writes `chosen` ids, the last cluster cut,
    /// from position `offset` of its `stride` ids in `ids`. Up to `SELECT_TILE` clusters one
    /// launch ranks and takes; more are sorted in runs of `SELECT_TILE`, ranked across the
    /// runs and taken by two more launches, through `ranking`.
    pub(super) fn launch_select(
        &self,
        index: &DeviceIndex,
        queries: &CudaSlice<f32>,
        selection: &Selection,
        ids: &mut CudaSlice<u32>,
        ranking: &mut RankScratch,
    ) -> Result<(), KernelError> {
        let Selection { rows, lists, chosen, stride, offset } = *selection;
        let (k, n, d, heads) = (index.clusters(), index.tokens(), index.d(), index.heads());
        let runs = k.div_ceil(SELECT_TILE);
        if d > MAX_D
            || chosen > n
            || !lists.is_multiple_of(heads)
            || lists > MAX_GRID_Y
            || runs > MAX_GRID_Y
            || offset + chosen > stride
            || queries.len() < lists * rows * d
            || ids.len() < lists * stride
        {
            return Err(KernelError::Shape(format!(
                "{lists} selections of {chosen} ids from {heads} heads of {k} clusters over {n} tokens"
            )));
        }
        if chosen == 0 {
            return Ok(());
        }
        if runs > 1 {
            at_least(self, &mut ranking.keys, lists * k)?;
            at_least(self, &mut ranking.order, lists * k)?;
        }
        let per_head = int("selections per head", lists / heads)?;
        let (rows_i, d_i, k_i, chosen_i) =
            (int("rows", rows)?, int("d", d)?, int("clusters", k)?, int("chosen", chosen)?);
        let (stride_i, offset_i) = (int("ids per list", stride)?, int("offset", offset)?);
        let (c_stride, m_stride, i_stride) = ((k * d) as i64, n as i64, k as i64);
        let s = &self.stream;
        let select = self.function("select", "clusterkv_select")?;
        let mut l = s.launch_builder(&select);
        l.arg(queries).arg(&rows_i).arg(&d_i).arg(&index.centroids).arg(&c_stride).arg(&per_head);
        l.arg(&index.sizes).arg(&index.offsets).arg(&index.members).arg(&m_stride).arg(&i_stride);
        l.arg(&k_i).arg(&chosen_i).arg(&mut *ids).arg(&stride_i).arg(&offset_i).arg(&mut ranking.keys);
        // SAFETY: the arguments match `clusterkv_select` in order and type; block (list,
        // run) of SELECT_THREADS threads sorts at most SELECT_TILE clusters in its shared
        // arrays, and d <= 256 fits its shared query; the queries and every list's room from
        // `offset` were checked above; an index's offsets and sizes stay inside its members
        // (checked when it was uploaded, or built by k-means); with several runs the keys
        // hold lists * k values (sized above), with one they are not read.
        #[allow(unsafe_code)]
        unsafe { l.launch(grid(lists, runs, SELECT_THREADS, 0)) }.map_err(driver)?;
        if runs == 1 {
            return Ok(());
        }
        let rank = self.function("select", "clusterkv_select_rank")?;
        let mut l = s.launch_builder(&rank);
        l.arg(&ranking.keys).arg(&k_i).arg(&mut ranking.order);
        // SAFETY: the arguments match `clusterkv_select_rank`; a thread per cluster of each
        // of the `lists` rows of k sorted keys (written by the launch above), each writing its
        // rank, below k, in its row of `order` (lists * k values).
        #[allow(unsafe_code)]
        unsafe { l.launch(grid(k.div_ceil(RANK_THREADS as usize), lists, RANK_THREADS, 0)) }
            .map_err(driver)?;
        let take = self.function("select", "clusterkv_select_take")?;
        let mut l = s.launch_builder(&take);
        l.arg(&ranking.order).arg(&mut ranking.keys).arg(&per_head);
        l.arg(&index.sizes).arg(&index.offsets).arg(&index.members).arg(&m_stride).arg(&i_stride);
        l.arg(&k_i).arg(&chosen_i).arg(ids).arg(&stride_i).arg(&offset_i);
        // SAFETY: the arguments match `clusterkv_select_take`; one block of SELECT_THREADS
        // threads per list; `order` holds a permutation of the k clusters per list (the rank
        // launch above), the keys' rows take the k ranked sizes (u32, half a row); the ids
        // and the index as checked for the first launch.
        #[allow(unsafe_code)]
        unsafe { l.launch(grid(lists, 1, SELECT_THREADS, 0)) }.map_err(driver)?;
        Ok(())
    }

    /// Attention of `work_heads` heads of `rows` query rows each (head h reads KV head
    /// `h / heads_per_kv`) over their id lists in `scratch` (`attended` apart; rows
    /// `0..n_ids[h]` without ids), in chunks of `chunk_len`, merged into `scratch.out`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_into(
        &self,
        kv: KvRows<'_>,
        heads_per_kv: usize,
        work_heads: usize,
        rows: usize,
        has_ids: bool,
        attended: usize,
        chunk_len: usize,
        scale: f32,
        scratch: &mut DecodeScratch,
    ) -> Result<(), KernelError> {
        let d = kv.d;
        let chunk_len = chunk_len.max(1);
        let chunks = attended.div_ceil(chunk_len).max(1);
        at_least(self, &mut scratch.part_out, work_heads * rows * chunks * d)?;
        at_least(self, &mut scratch.part_max, work_heads * rows * chunks)?;
        at_least(self, &mut scratch.part_sum, work_heads * rows * chunks)?;
        at_least(self, &mut scratch.out, work_heads * rows * d)?;
        let s = &self.stream;
        let chunk = self.function("attention", &format!("attention_chunk_g{rows}_d{d}"))?;
        let merge = self.function("attention", &format!("attention_merge_d{d}"))?;
        let (head_stride, heads_per_kv) = (kv.head_stride as i64, int("heads per KV head", heads_per_kv)?);
        let (ids_stride, chunk_len_i, chunks_i) =
            (int("ids", attended)?, int("chunk", chunk_len)?, int("chunks", chunks)?);
        let null = 0u64;
        let mut l = s.launch_builder(&chunk);
        l.arg(kv.keys).arg(kv.values).arg(&head_stride).arg(&heads_per_kv).arg(&scratch.queries);
        if has_ids && scratch.read_slots {
            l.arg(&scratch.slot_ids);
        } else if has_ids {
            l.arg(&scratch.ids);
        } else {
            l.arg(&null);
        }
        l.arg(&ids_stride).arg(&scratch.n_ids).arg(&chunk_len_i).arg(&scale);
        l.arg(&mut scratch.part_out).arg(&mut scratch.part_max).arg(&mut scratch.part_sum);
        // SAFETY: the arguments match `attention_chunk_g{rows}_d{d}` in order and type;
        // n_ids holds one length per work head, each at most `attended` and every id below
        // the KV's rows (lists of ranges and index members); the part buffers hold
        // work_heads * rows * chunks rows.
        #[allow(unsafe_code)]
        unsafe { l.launch(grid(chunks, work_heads, ATTENTION_THREADS, 0)) }.map_err(driver)?;
        let mut l = s.launch_builder(&merge);
        l.arg(&scratch.part_out)
            .arg(&scratch.part_max)
            .arg(&scratch.part_sum)
            .arg(&chunks_i)
            .arg(&mut scratch.out);
        // SAFETY: the arguments match `attention_merge_d{d}`; work_heads * rows rows of
        // `chunks` parts.
        #[allow(unsafe_code)]
        unsafe { l.launch(grid(work_heads * rows, 1, d as u32, 0)) }.map_err(driver)?;
        Ok(())
    }

    /// Copies the output of the last step, `[Hq, d]`, into `out`.
    pub fn read_output(&self, scratch: &DecodeScratch, out: &mut [f32]) -> Result<(), KernelError> {
        if out.len() > scratch.out.len() {
            return Err(KernelError::Shape(format!("{} outputs asked of {}", out.len(), scratch.out.len())));
        }
        self.stream.memcpy_dtoh(&scratch.out.slice(..out.len()), out).map_err(driver)
    }

    /// Copies the id lists of the last (sparse) step into `lists`, one per list, each in
    /// the order the attention read them: sink, chosen (in rank order), tail, current.
    pub fn read_ids(&self, scratch: &DecodeScratch, lists: &mut [Vec<u32>]) -> Result<(), KernelError> {
        if !scratch.has_ids || lists.len() != scratch.lists {
            return Err(KernelError::Shape(format!(
                "{} lists asked of a step with {}",
                lists.len(),
                if scratch.has_ids { scratch.lists } else { 0 }
            )));
        }
        let flat =
            self.stream.clone_dtoh(&scratch.ids.slice(..scratch.lists * scratch.attended)).map_err(driver)?;
        for (list, ids) in lists.iter_mut().zip(flat.chunks_exact(scratch.attended)) {
            list.clear();
            list.extend_from_slice(ids);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(selected: Option<usize>, per_kv_head: bool) -> DecodeStep {
        // Sink 16, clustered [16, 900), tail [900, 1000), the current token 1000.
        let regions = Regions::new(16, 900, 1000).unwrap();
        DecodeStep { group: 4, per_kv_head, regions, selected, scale: 1.0 }
    }

    #[test]
    fn lists_and_ids_of_a_step() {
        let dense = step(None, false);
        assert_eq!((dense.lists(8), dense.attended(), dense.clustered()), (8, 1001, (0, 0, 0)));
        assert_eq!(step(Some(300), true).lists(8), 8);
        assert_eq!(step(Some(300), false).lists(8), 32);
        assert_eq!(step(Some(300), false).attended(), 16 + 300 + 100 + 1);
        assert_eq!(step(Some(300), false).clustered(), (16, 900, 300));
        // Early in a sequence (t < s) the sink is cut and nothing is clustered.
        let early = DecodeStep { regions: Regions::new(16, 16, 5).unwrap(), ..step(Some(0), true) };
        assert_eq!(early.attended(), 6);
    }
}
