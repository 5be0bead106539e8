//! Offload on the GPU: the host tier in pinned host memory mapped into the GPU's address
//! space ([`PinnedKv`]), the device tier's slots and bookkeeping on the device
//! ([`GpuTier`]), and a decode step whose swap (which rows stay, which are fetched, into
//! which slots) runs on the GPU (`tier.cu`), reading missing rows straight from host
//! memory, before the attention reads the slots.

use cudarc::driver::{CudaSlice, PinnedHostSlice, PushKernelArg, sys};
use half::f16;

use super::decode::KvRows;
use super::{Gpu, driver, grid, int};
use ckv_cache::TierStats;
use ckv_core::Regions;

use crate::{DecodeScratch, DecodeStep, DeviceIndex, KernelError};

/// A slot or token that is not there (`tier.cu`'s NONE).
const NONE: u32 = u32::MAX;

/// Threads of a `tier_step` block.
const TIER_THREADS: u32 = 1024;

/// Counters per head in a tier's `stats` (`tier.cu`).
const STATS: usize = 5;

/// The `reuse` a tier's kernel compares, from the pipeline's: at least 1 step; any reuse
/// beyond u32's range keeps every row as u32::MAX does (the step counter is a u32).
fn kernel_reuse(reuse: usize) -> Result<u32, KernelError> {
    if reuse == 0 {
        return Err(KernelError::Shape("reuse 0: a tier keeps the rows of at least 1 step".into()));
    }
    Ok(u32::try_from(reuse).unwrap_or(u32::MAX))
}

/// Slots per head that hold the union of the last `reuse` steps' `lists` lists of
/// `attended` ids among `tokens` tokens: the product, or every token when fewer (a huge
/// `reuse` saturates rather than wraps).
fn tier_slots(reuse: u32, lists: usize, attended: usize, tokens: usize) -> usize {
    (reuse as usize).saturating_mul(lists).saturating_mul(attended).min(tokens)
}

/// The first head whose counters (`[heads, STATS]`) count rows no slot could hold, as
/// [`KernelError::TierFull`].
fn check_held(stats: &[u64]) -> Result<(), KernelError> {
    match stats.chunks_exact(STATS).enumerate().find(|(_, c)| c[3] > 0) {
        Some((head, c)) => Err(KernelError::TierFull { head, rows: c[3] }),
        None => Ok(()),
    }
}

/// The host tier of one sequence: f16 keys and values of every KV head, `[heads, capacity,
/// d]`, in pinned host memory the GPU reads directly.
pub struct PinnedKv {
    keys: PinnedHostSlice<f16>,
    values: PinnedHostSlice<f16>,
    /// Their addresses in the GPU's address space.
    keys_ptr: u64,
    values_ptr: u64,
    heads: usize,
    d: usize,
    capacity: usize,
    len: usize,
}

impl PinnedKv {
    /// KV heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Head dimension.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Tokens stored per head.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends rows to every head: per head its keys and values `[n, d]`, the same `n`
    /// for every head; the capacity doubles when short.
    fn write(&mut self, gpu: &Gpu, rows: &[(&[f16], &[f16])]) -> Result<(), KernelError> {
        let d = self.d;
        let n = rows.first().map_or(0, |(k, _)| k.len() / d);
        if rows.len() != self.heads || rows.iter().any(|(k, v)| k.len() != n * d || v.len() != n * d) {
            return Err(KernelError::Shape(format!(
                "{} heads of rows for {} heads of dimension {d}",
                rows.len(),
                self.heads
            )));
        }
        if self.len + n > self.capacity {
            gpu.grow_pinned(self, (self.len + n).max(2 * self.capacity))?;
        }
        let (len, capacity) = (self.len, self.capacity);
        let keys = self.keys.as_mut_slice().map_err(driver)?;
        for (h, (k, _)) in rows.iter().enumerate() {
            keys[(h * capacity + len) * d..(h * capacity + len + n) * d].copy_from_slice(k);
        }
        let values = self.values.as_mut_slice().map_err(driver)?;
        for (h, (_, v)) in rows.iter().enumerate() {
            values[(h * capacity + len) * d..(h * capacity + len + n) * d].copy_from_slice(v);
        }
        self.len += n;
        Ok(())
    }
}

/// The device tier of one sequence on the GPU: per KV head, `slots` rows and the
/// bookkeeping of `tier.cu`; traffic counters per head.
pub struct GpuTier {
    keys: CudaSlice<f16>,
    values: CudaSlice<f16>,
    slot_of: CudaSlice<u32>,
    token_of: CudaSlice<u32>,
    last_used: CudaSlice<u32>,
    missing: CudaSlice<u32>,
    free: CudaSlice<u32>,
    stats: CudaSlice<u64>,
    heads: usize,
    d: usize,
    slots: usize,
    tokens: usize,
    reuse: u32,
    step: u32,
}

impl GpuTier {
    fn rows(&self) -> KvRows<'_> {
        KvRows {
            keys: &self.keys,
            values: &self.values,
            heads: self.heads,
            d: self.d,
            head_stride: self.slots * self.d,
        }
    }
}

/// `[heads, per]` of `NONE`, with the first `old` of each head's row copied from `from`
/// (`[heads, old]`).
fn none_grown(
    gpu: &Gpu,
    from: &CudaSlice<u32>,
    heads: usize,
    old: usize,
    per: usize,
) -> Result<CudaSlice<u32>, KernelError> {
    let s = &gpu.stream;
    let mut to = s.clone_htod(&vec![NONE; heads * per]).map_err(driver)?;
    for h in (0..heads).filter(|_| old > 0) {
        s.memcpy_dtod(&from.slice(h * old..(h + 1) * old), &mut to.slice_mut(h * per..h * per + old))
            .map_err(driver)?;
    }
    Ok(to)
}

impl Gpu {
    /// An empty host tier of `heads` heads of dimension `d` (even), room for `capacity`
    /// tokens, in pinned host memory mapped into the GPU.
    pub fn pinned_kv(&self, heads: usize, d: usize, capacity: usize) -> Result<PinnedKv, KernelError> {
        if heads == 0 || d == 0 || !d.is_multiple_of(2) {
            return Err(KernelError::Shape(format!("{heads} KV heads of dimension {d} (even, at least 2)")));
        }
        let capacity = capacity.max(1);
        let (keys, keys_ptr) = self.mapped(heads * capacity * d)?;
        let (values, values_ptr) = self.mapped(heads * capacity * d)?;
        Ok(PinnedKv { keys, values, keys_ptr, values_ptr, heads, d, capacity, len: 0 })
    }

    /// `len` zeroed f16 of pinned, mapped host memory and their device address.
    fn mapped(&self, len: usize) -> Result<(PinnedHostSlice<f16>, u64), KernelError> {
        // SAFETY: page-locked host memory, zeroed before any read; DEVICEMAP maps it into
        // the GPU's address space and cuMemHostGetDevicePointer gives that address, valid
        // while the allocation lives (it lives in the same PinnedKv as the address).
        #[allow(unsafe_code)]
        unsafe {
            let mut slice = self
                .ctx
                .alloc_pinned_with_flags::<f16>(len.max(1), sys::CU_MEMHOSTALLOC_DEVICEMAP)
                .map_err(driver)?;
            slice.as_mut_slice().map_err(driver)?.fill(f16::ZERO);
            let mut device = 0;
            let host = slice.as_mut_ptr().map_err(driver)?;
            sys::cuMemHostGetDevicePointer_v2(&mut device, host.cast(), 0).result().map_err(driver)?;
            Ok((slice, device))
        }
    }

    /// Moves a host tier to `capacity` tokens.
    fn grow_pinned(&self, kv: &mut PinnedKv, capacity: usize) -> Result<(), KernelError> {
        let mut grown = self.pinned_kv(kv.heads, kv.d, capacity)?;
        let (d, old) = (kv.d, kv.capacity);
        for (from, to) in [(&kv.keys, &mut grown.keys), (&kv.values, &mut grown.values)] {
            let (from, to) = (from.as_slice().map_err(driver)?, to.as_mut_slice().map_err(driver)?);
            for h in 0..kv.heads {
                to[h * capacity * d..(h * capacity + kv.len) * d]
                    .copy_from_slice(&from[h * old * d..(h * old + kv.len) * d]);
            }
        }
        grown.len = kv.len;
        *kv = grown;
        Ok(())
    }

    /// Appends rows to a host tier: per head its keys and values `[n, d]` f16.
    pub fn extend_pinned(&self, kv: &mut PinnedKv, rows: &[(&[f16], &[f16])]) -> Result<(), KernelError> {
        kv.write(self, rows)
    }

    /// Appends one token (`[heads, d]` f32 rows, rounded to f16) to a host tier.
    pub fn append_pinned(&self, kv: &mut PinnedKv, key: &[f32], value: &[f32]) -> Result<(), KernelError> {
        let (heads, d) = (kv.heads, kv.d);
        if key.len() != heads * d || value.len() != heads * d {
            return Err(KernelError::Shape(format!(
                "new K/V of {} and {} values for {heads} heads of {d}",
                key.len(),
                value.len()
            )));
        }
        let (k, v): (Vec<f16>, Vec<f16>) =
            key.iter().zip(value).map(|(&k, &v)| (f16::from_f32(k), f16::from_f32(v))).unzip();
        let rows: Vec<(&[f16], &[f16])> =
            (0..heads).map(|h| (&k[h * d..(h + 1) * d], &v[h * d..(h + 1) * d])).collect();
        kv.write(self, &rows)
    }

    /// An empty device tier for `heads` heads of dimension `d` that keeps the rows of the
    /// last `reuse` steps (at least 1; any `reuse` beyond u32's range keeps every row).
    pub fn tier(&self, heads: usize, d: usize, reuse: usize) -> Result<GpuTier, KernelError> {
        let reuse = kernel_reuse(reuse)?;
        let s = &self.stream;
        Ok(GpuTier {
            keys: s.alloc_zeros(heads * d).map_err(driver)?,
            values: s.alloc_zeros(heads * d).map_err(driver)?,
            slot_of: s.clone_htod(&vec![NONE; heads]).map_err(driver)?,
            token_of: s.clone_htod(&vec![NONE; heads]).map_err(driver)?,
            last_used: s.alloc_zeros(heads).map_err(driver)?,
            missing: s.alloc_zeros(heads).map_err(driver)?,
            free: s.alloc_zeros(heads).map_err(driver)?,
            stats: s.alloc_zeros(heads * STATS).map_err(driver)?,
            heads,
            d,
            slots: 1,
            tokens: 1,
            reuse,
            step: 0,
        })
    }

    /// Grows a tier to at least `slots` slots and `tokens` tokens per head, keeping what
    /// it holds where it is.
    fn reserve_tier(&self, tier: &mut GpuTier, slots: usize, tokens: usize) -> Result<(), KernelError> {
        let s = &self.stream;
        let (heads, d) = (tier.heads, tier.d);
        if tokens > tier.tokens {
            let tokens = tokens.max(2 * tier.tokens);
            tier.slot_of = none_grown(self, &tier.slot_of, heads, tier.tokens, tokens)?;
            tier.tokens = tokens;
        }
        if slots > tier.slots {
            let (old, slots) = (tier.slots, slots.max(2 * tier.slots));
            let mut keys = s.alloc_zeros::<f16>(heads * slots * d).map_err(driver)?;
            let mut values = s.alloc_zeros::<f16>(heads * slots * d).map_err(driver)?;
            let mut last_used = s.alloc_zeros::<u32>(heads * slots).map_err(driver)?;
            for h in 0..heads {
                let (from, to) = (h * old * d..(h + 1) * old * d, h * slots * d..(h * slots + old) * d);
                s.memcpy_dtod(&tier.keys.slice(from.clone()), &mut keys.slice_mut(to.clone()))
                    .map_err(driver)?;
                s.memcpy_dtod(&tier.values.slice(from), &mut values.slice_mut(to)).map_err(driver)?;
                s.memcpy_dtod(
                    &tier.last_used.slice(h * old..(h + 1) * old),
                    &mut last_used.slice_mut(h * slots..h * slots + old),
                )
                .map_err(driver)?;
            }
            tier.token_of = none_grown(self, &tier.token_of, heads, old, slots)?;
            (tier.keys, tier.values, tier.last_used) = (keys, values, last_used);
            tier.missing = s.alloc_zeros(heads * slots).map_err(driver)?;
            tier.free = s.alloc_zeros(heads * slots).map_err(driver)?;
            tier.slots = slots;
        }
        Ok(())
    }

    /// One decode step with offload: the current token is the last row of `host`. The id
    /// lists are made as [`decode_step`](Self::decode_step) makes them (a dense step lists
    /// every token); the tier keeps the rows of the last `reuse` steps, fetches what it
    /// lacks from `host` and the attention reads its slots. Outputs are those of the same
    /// step without offload: the same rows in the same order. The tier is sized so that
    /// every step's rows fit; [`tier_stats`](Self::tier_stats) reports
    /// [`KernelError::TierFull`] should a step ever have found more missing rows than free
    /// slots (checked there, not per step, to keep a host sync off the decode path).
    pub fn decode_step_offloaded(
        &self,
        host: &PinnedKv,
        tier: &mut GpuTier,
        index: Option<&DeviceIndex>,
        step: &DecodeStep,
        queries: &[f32],
        scratch: &mut DecodeScratch,
    ) -> Result<(), KernelError> {
        let heads = host.heads;
        if tier.heads != heads || tier.d != host.d || step.current() + 1 != host.len {
            return Err(KernelError::Shape(format!(
                "a tier of {} heads of {} over a host tier of {heads} heads of {} holding {} tokens, current {}",
                tier.heads,
                tier.d,
                host.d,
                host.len,
                step.current()
            )));
        }
        let step = match step.selected {
            // Every token as one list per KV head, all of it tail: the dense step's rows,
            // order and chunks.
            None => DecodeStep {
                regions: Regions::new(0, 0, step.regions.current())
                    .map_err(|e| KernelError::Shape(e.to_string()))?,
                selected: Some(0),
                per_kv_head: true,
                ..*step
            },
            Some(_) => *step,
        };
        self.upload_queries_for(heads, host.d, &step, queries, scratch)?;
        self.prepare_lists(index, &step, heads, scratch)?;
        // The union of the last `reuse` steps' lists never exceeds this.
        let slots = tier_slots(tier.reuse, step.lists(heads) / heads, step.attended(), host.len);
        self.swap(host, tier, &step, scratch, slots)?;
        self.attend_rows(tier.rows(), &step, scratch)
    }

    /// The tier's swap of a step whose lists are in `scratch`, with at least `slots` slots
    /// per head: `tier_step` marks, frees, fetches and writes the lists as slots.
    fn swap(
        &self,
        host: &PinnedKv,
        tier: &mut GpuTier,
        step: &DecodeStep,
        scratch: &mut DecodeScratch,
        slots: usize,
    ) -> Result<(), KernelError> {
        let heads = host.heads;
        self.reserve_tier(tier, slots, host.len)?;
        tier.step += 1;
        let f = self.function("tier", "tier_step")?;
        let (lists_i, stride_i, slots_i, d_i, tokens_i) = (
            int("lists", step.lists(heads) / heads)?,
            int("ids per list", scratch.attended)?,
            int("slots", tier.slots)?,
            int("d", tier.d)?,
            int("tokens", tier.tokens)?,
        );
        let host_stride = (host.capacity * host.d) as i64;
        let current = step.regions.current();
        super::decode::at_least(self, &mut scratch.slot_ids, step.lists(heads) * scratch.attended)?;
        scratch.read_slots = true;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&scratch.ids).arg(&mut scratch.slot_ids).arg(&scratch.n_ids).arg(&lists_i).arg(&stride_i);
        l.arg(&host.keys_ptr).arg(&host.values_ptr).arg(&host_stride);
        l.arg(&mut tier.keys).arg(&mut tier.values).arg(&slots_i).arg(&d_i);
        l.arg(&mut tier.slot_of).arg(&tokens_i).arg(&mut tier.token_of).arg(&mut tier.last_used);
        l.arg(&mut tier.missing)
            .arg(&mut tier.free)
            .arg(&tier.step)
            .arg(&tier.reuse)
            .arg(&current)
            .arg(&mut tier.stats);
        // SAFETY: the arguments match `tier_step` in order and type; one block per KV head;
        // every listed id is below host.len <= tier.tokens and host.capacity (the lists
        // were made for this step); the kernel lists and places at most `tier.slots` rows
        // per head whatever the lists hold (the rest are counted, not stored);
        // host_keys/values are the device addresses of the mapped pinned allocations,
        // alive in `host`; d is even.
        #[allow(unsafe_code)]
        unsafe { l.launch(grid(heads, 1, TIER_THREADS, 0)) }.map_err(driver)?;
        Ok(())
    }

    /// The traffic of every head of a tier so far, counted as the CPU tier counts it with
    /// K and V rows of `row_bytes` bytes; [`KernelError::TierFull`] if a step ever ran out
    /// of slots.
    pub fn tier_stats(&self, tier: &GpuTier, row_bytes: u64) -> Result<Vec<TierStats>, KernelError> {
        let raw = self.stream.clone_dtoh(&tier.stats).map_err(driver)?;
        check_held(&raw)?;
        Ok(raw
            .chunks_exact(STATS)
            .map(|c| TierStats {
                steps: u64::from(tier.step.saturating_sub(1)),
                attended: c[0],
                hits: c[1],
                bytes_fetched: c[2] * row_bytes,
                bytes_no_cache: c[0] * row_bytes,
                cold_bytes: c[4] * row_bytes,
            })
            .collect())
    }

    /// The tokens head `head` of a tier holds, ascending.
    pub fn tier_resident(&self, tier: &GpuTier, head: usize) -> Result<Vec<u32>, KernelError> {
        if head >= tier.heads {
            return Err(KernelError::Shape(format!("head {head} of {}", tier.heads)));
        }
        let slots = self
            .stream
            .clone_dtoh(&tier.token_of.slice(head * tier.slots..(head + 1) * tier.slots))
            .map_err(driver)?;
        let mut tokens: Vec<u32> = slots.into_iter().filter(|&t| t != NONE).collect();
        tokens.sort_unstable();
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reuse beyond u32 keeps everything rather than being refused; 0 is refused by name.
    #[test]
    fn reuse_beyond_u32_keeps_everything() {
        assert_eq!(kernel_reuse(3).unwrap(), 3);
        assert_eq!(kernel_reuse(usize::MAX).unwrap(), u32::MAX);
        let err = kernel_reuse(0).unwrap_err();
        assert!(matches!(&err, KernelError::Shape(m) if m.starts_with("reuse 0")), "{err}");
    }

    /// The slots of a huge reuse are every token, not a wrapped product.
    #[test]
    fn huge_reuse_sizes_the_tier_to_every_token() {
        assert_eq!(tier_slots(2, 4, 100, 10_000), 800);
        assert_eq!(tier_slots(u32::MAX, 8, usize::MAX / 2, 5000), 5000);
        assert_eq!(tier_slots(u32::MAX, 0, 100, 5000), 0);
    }

    /// Rows no slot could hold fail a step, naming the first head and its count.
    #[test]
    fn unheld_rows_are_reported() {
        assert!(check_held(&[4, 2, 2, 0, 7, 1, 1, 0, 0, 3]).is_ok());
        let err = check_held(&[4, 2, 2, 0, 7, 1, 1, 0, 5, 3, 0, 0, 0, 1, 0]).unwrap_err();
        assert!(matches!(err, KernelError::TierFull { head: 1, rows: 5 }), "{err}");
    }

    /// More missing rows than slots (which `decode_step_offloaded`'s sizing rules out; the
    /// swap is given too few here): the tier holds what fits, leaves the rest unheld (not
    /// pending), the lists read slots in range, and the step's check names the head. Runs
    /// on a GPU (`cargo xtask gpu-check`); without one it says so and passes.
    #[test]
    fn more_missing_rows_than_slots_are_left_unheld_and_reported() {
        let gpu = match Gpu::open(0, &crate::default_include_dirs()) {
            Ok(gpu) => gpu,
            Err(KernelError::NoGpu(why)) => return eprintln!("skipped: {why}"),
            Err(e) => panic!("a GPU is present but the kernels do not load: {e}"),
        };
        let (d, tokens, slots) = (2, 8, 3);
        let rows: Vec<f16> = (0..tokens * d).map(|i| f16::from_f32(i as f32)).collect();
        let mut host = gpu.pinned_kv(1, d, tokens).unwrap();
        gpu.extend_pinned(&mut host, &[(&rows, &rows)]).unwrap();
        let mut tier = gpu.tier(1, d, 1).unwrap();
        // Every token in one list, all of it tail, as a dense step's list is made.
        let regions = Regions::new(0, 0, tokens as u32 - 1).unwrap();
        let step = DecodeStep { group: 1, per_kv_head: true, regions, selected: Some(0), scale: 1.0 };
        let mut scratch = gpu.scratch().unwrap();
        gpu.upload_queries_for(1, d, &step, &[0.0; 2], &mut scratch).unwrap();
        gpu.prepare_lists(None, &step, 1, &mut scratch).unwrap();
        gpu.swap(&host, &mut tier, &step, &mut scratch, slots).unwrap();
        assert_eq!(tier.slots, slots);
        let stats = gpu.stream.clone_dtoh(&tier.stats).unwrap();
        let err = check_held(&stats).unwrap_err();
        assert!(matches!(err, KernelError::TierFull { head: 0, rows: 5 }), "{err}");
        assert_eq!(gpu.tier_resident(&tier, 0).unwrap().len(), slots);
        let slot_of = gpu.stream.clone_dtoh(&tier.slot_of).unwrap();
        assert_eq!(slot_of.iter().filter(|&&s| s != NONE).count(), slots, "{slot_of:?}");
        assert!(slot_of.iter().all(|&s| s == NONE || (s as usize) < slots), "{slot_of:?}");
        let slot_ids = gpu.stream.clone_dtoh(&scratch.slot_ids).unwrap();
        assert!(slot_ids[..tokens].iter().all(|&s| (s as usize) < slots), "{slot_ids:?}");
    }
}
