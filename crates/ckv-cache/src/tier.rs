//! The device tier of one (sequence, layer, KV head), simulated in host memory: slots
//! holding the KV rows of the attended set. Each step the new selection is compared with
//! what the tier holds: rows attended in the last `reuse` steps stay, missing rows are
//! fetched from the host tier into the slots of rows no longer needed, and the attention
//! reads the slots. The policy and its traffic figures are what a GPU tier does with
//! copies from host memory.

use ckv_core::Element;

use crate::{CacheError, HeadKv};

/// A token or slot that is not there.
const NONE: u32 = u32::MAX;

/// Offload settings of a decode pipeline: the device tier keeps what the last `reuse`
/// steps attended; the host tier may be capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadParams {
    reuse: usize,
    host_capacity: Option<usize>,
}

impl Default for OffloadParams {
    /// Reuse over the last step only; no host cap.
    fn default() -> Self {
        Self { reuse: 1, host_capacity: None }
    }
}

impl OffloadParams {
    /// Reuse over the last `reuse` steps (at least 1).
    pub fn new(reuse: usize) -> Result<Self, CacheError> {
        if reuse == 0 {
            return Err(CacheError::from(ckv_core::ParamError::new("reuse", "0", "at least 1 step")));
        }
        Ok(Self { reuse, host_capacity: None })
    }

    /// Caps the host KV of the pipeline's sequences at `bytes`.
    pub fn host_capacity(mut self, bytes: usize) -> Self {
        self.host_capacity = Some(bytes);
        self
    }

    /// Steps whose attended rows the device tier keeps.
    pub fn reuse(&self) -> usize {
        self.reuse
    }

    /// The host cap in bytes, if any.
    pub fn host_capacity_bytes(&self) -> Option<usize> {
        self.host_capacity
    }
}

/// Traffic of a device tier. The first step fills an empty tier; it is counted apart
/// (`cold_bytes`) and the rest are the steady state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Steps after the first.
    pub steps: u64,
    /// Rows those steps attended, the current token aside (it is written on the device).
    pub attended: u64,
    /// Of those, rows the tier already held.
    pub hits: u64,
    /// Bytes fetched from the host by those steps.
    pub bytes_fetched: u64,
    /// Bytes those steps would fetch without the tier: every attended row, every step.
    pub bytes_no_cache: u64,
    /// Bytes the first step fetched.
    pub cold_bytes: u64,
}

impl TierStats {
    /// Attended rows found in the tier, over all attended rows (1 with none).
    pub fn hit_rate(&self) -> f64 {
        if self.attended == 0 { 1.0 } else { self.hits as f64 / self.attended as f64 }
    }

    /// Bytes fetched per step (steady state).
    pub fn bytes_per_step(&self) -> f64 {
        self.bytes_fetched as f64 / self.steps.max(1) as f64
    }

    /// Bytes per step without the tier.
    pub fn bytes_per_step_no_cache(&self) -> f64 {
        self.bytes_no_cache as f64 / self.steps.max(1) as f64
    }

    /// The sum of two tiers' figures (heads of a layer).
    pub fn merged(self, other: TierStats) -> TierStats {
        TierStats {
            steps: self.steps.max(other.steps),
            attended: self.attended + other.attended,
            hits: self.hits + other.hits,
            bytes_fetched: self.bytes_fetched + other.bytes_fetched,
            bytes_no_cache: self.bytes_no_cache + other.bytes_no_cache,
            cold_bytes: self.cold_bytes + other.cold_bytes,
        }
    }
}

/// The device tier of one (sequence, layer, KV head): slots of KV rows, reused across
/// steps, filled from a [`HeadKv`].
#[derive(Debug, Clone)]
pub struct DeviceTier<E> {
    d: usize,
    reuse: u64,
    keys: Vec<E>,
    values: Vec<E>,
    /// Token -> slot (NONE when not held).
    slot_of: Vec<u32>,
    /// Slot -> token (NONE when free).
    token_of: Vec<u32>,
    /// Slot -> the last step that attended its row.
    last_used: Vec<u64>,
    free: Vec<u32>,
    /// Tokens this step attends that the tier lacks.
    missing: Vec<u32>,
    /// The step's id lists as slots.
    slots: Vec<Vec<u32>>,
    step: u64,
    stats: TierStats,
}

impl<E: Element> DeviceTier<E> {
    /// An empty tier for rows of dimension `d` that keeps the rows of the last `reuse`
    /// steps.
    pub fn new(d: usize, params: &OffloadParams) -> Result<Self, CacheError> {
        if d == 0 {
            return Err(CacheError::Param(ckv_core::ParamError::zero_dim()));
        }
        Ok(Self {
            d,
            reuse: params.reuse as u64,
            keys: Vec::new(),
            values: Vec::new(),
            slot_of: Vec::new(),
            token_of: Vec::new(),
            last_used: Vec::new(),
            free: Vec::new(),
            missing: Vec::new(),
            slots: Vec::new(),
            step: 0,
            stats: TierStats::default(),
        })
    }

    /// One decode step attending to `lists` (token ids; one per selection, the current
    /// token `current` among them, its row already in `host`): rows attended in the last
    /// `reuse` steps stay, missing rows are copied from `host` into freed slots, and
    /// [`slot_lists`](Self::slot_lists) then holds `lists` as slots, in the same order.
    pub fn step(&mut self, host: &HeadKv<E>, lists: &[Vec<u32>], current: u32) -> Result<(), CacheError> {
        let len = host.len();
        if host.d() != self.d {
            return Err(CacheError::from(ckv_core::ParamError::new(
                "host head dimension",
                host.d().to_string(),
                "the tier's",
            )));
        }
        if let Some(&id) = lists.iter().flatten().chain([&current]).find(|&&id| id as usize >= len) {
            return Err(CacheError::TokenOutOfRange { id, len });
        }
        self.step += 1;
        let step = self.step;
        if self.slot_of.len() < len {
            self.slot_of.resize(len, NONE);
        }
        // Mark the rows the tier holds; list what it lacks (each token once).
        let (mut attended, mut hits) = (0u64, 0u64);
        self.missing.clear();
        for &id in lists.iter().flatten() {
            match self.slot_of[id as usize] {
                NONE => {
                    self.slot_of[id as usize] = NONE - 1;
                    self.missing.push(id);
                }
                pending if pending == NONE - 1 => {}
                slot if self.last_used[slot as usize] == step => {}
                slot => {
                    self.last_used[slot as usize] = step;
                    if id != current {
                        attended += 1;
                        hits += 1;
                    }
                }
            }
        }
        // Free the rows no step of the last `reuse` attended.
        for slot in 0..self.token_of.len() {
            let token = self.token_of[slot];
            if token != NONE && step - self.last_used[slot] >= self.reuse {
                self.slot_of[token as usize] = NONE;
                self.token_of[slot] = NONE;
                self.free.push(slot as u32);
            }
        }
        // Fetch the missing rows into free slots (new slots when none is free).
        let d = self.d;
        let mut fetched = 0u64;
        for &id in &self.missing {
            let slot = match self.free.pop() {
                Some(slot) => slot,
                None => {
                    self.token_of.push(NONE);
                    self.last_used.push(0);
                    self.keys.resize(self.token_of.len() * d, E::default());
                    self.values.resize(self.token_of.len() * d, E::default());
                    (self.token_of.len() - 1) as u32
                }
            };
            let (from, to) = (id as usize * d, slot as usize * d);
            self.keys[to..to + d].copy_from_slice(&host.keys()[from..from + d]);
            self.values[to..to + d].copy_from_slice(&host.values()[from..from + d]);
            self.slot_of[id as usize] = slot;
            self.token_of[slot as usize] = id;
            self.last_used[slot as usize] = step;
            if id != current {
                attended += 1;
                fetched += 1;
            }
        }
        let row_bytes = (2 * d * size_of::<E>()) as u64;
        if step == 1 {
            self.stats.cold_bytes += fetched * row_bytes;
        } else {
            self.stats.steps += 1;
            self.stats.attended += attended;
            self.stats.hits += hits;
            self.stats.bytes_fetched += fetched * row_bytes;
            self.stats.bytes_no_cache += attended * row_bytes;
        }
        self.slots.resize_with(lists.len(), Vec::new);
        for (slots, ids) in self.slots.iter_mut().zip(lists) {
            slots.clear();
            slots.extend(ids.iter().map(|&id| self.slot_of[id as usize]));
        }
        Ok(())
    }

    /// The last step's id lists as slots of [`keys`](Self::keys) and
    /// [`values`](Self::values).
    pub fn slot_lists(&self) -> &[Vec<u32>] {
        &self.slots
    }

    /// Key rows of every slot, `[slots, d]`.
    pub fn keys(&self) -> &[E] {
        &self.keys
    }

    /// Value rows of every slot, `[slots, d]`.
    pub fn values(&self) -> &[E] {
        &self.values
    }

    /// The tokens the tier holds, ascending.
    pub fn resident(&self) -> Vec<u32> {
        let mut tokens: Vec<u32> = self.token_of.iter().copied().filter(|&t| t != NONE).collect();
        tokens.sort_unstable();
        tokens
    }

    /// Traffic so far.
    pub fn stats(&self) -> TierStats {
        self.stats
    }
}
