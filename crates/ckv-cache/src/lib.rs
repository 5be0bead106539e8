//! KV storage tiers of ClusterKV.
//!
//! - The host tier: [`HeadKv`], the full key and value rows of one (sequence, layer, KV
//!   head), appended token by token and gathered by token ids. Nothing is ever evicted, so
//!   any token can be recalled later. A [`HostBudget`] may cap the host KV of a pipeline.
//! - The device tier: [`DeviceTier`], the working set of one (sequence, layer, KV head):
//!   slots for the attended rows, kept across steps while any of the last `reuse` steps
//!   ([`OffloadParams`]) attended them, so only the rows a step newly needs are fetched;
//!   [`TierStats`] counts hits and bytes. It lives in host memory here (the CPU path and
//!   `clusterkv cache-sim`); the GPU path runs the same policy on the device.
//!
//! ```
//! use ckv_cache::HeadKv;
//! use half::f16;
//!
//! let mut kv = HeadKv::<f16>::new(2).unwrap();
//! kv.extend(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]).unwrap();
//! kv.append(&[9.0, 10.0], &[11.0, 12.0]).unwrap();
//! assert_eq!(kv.len(), 3);
//! let (mut k, mut v) = (vec![f16::ZERO; 4], vec![f16::ZERO; 4]);
//! kv.gather(&[2, 0], &mut k, &mut v).unwrap();
//! assert_eq!(k[0].to_f32(), 9.0);
//! assert_eq!(v[3].to_f32(), 6.0);
//! ```

mod budget;
mod huge_pages;
mod tier;

use ckv_core::{Element, ValueError, check_values};

pub use budget::{HostBudget, HostReservation};
pub use tier::{DeviceTier, OffloadParams, TierStats};

/// Errors of the KV store.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CacheError {
    /// Rows of the wrong length, or values that are not finite or do not fit the storage type.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// A setting out of range, or a head dimension of 0.
    #[error(transparent)]
    Param(#[from] ckv_core::ParamError),
    /// The host tier's budget cannot take more KV.
    #[error("the host KV store is full: {needed} more bytes asked, {used} of {capacity} in use")]
    HostFull {
        /// Bytes asked for.
        needed: usize,
        /// Bytes in use.
        used: usize,
        /// The budget.
        capacity: usize,
    },
    /// A token id beyond the stored tokens.
    #[error("token id {id} is out of range: {len} tokens are stored")]
    TokenOutOfRange {
        /// The bad id.
        id: u32,
        /// Stored tokens.
        len: usize,
    },
}

/// The key and value rows `[tokens, d]` of one (sequence, layer, KV head), host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadKv<E> {
    d: usize,
    keys: Vec<E>,
    values: Vec<E>,
}

impl<E: Element> HeadKv<E> {
    /// An empty store for rows of head dimension `d`.
    pub fn new(d: usize) -> Result<Self, CacheError> {
        Self::with_capacity(d, 0)
    }

    /// An empty store with room for `tokens` rows before it reallocates. On Linux, large
    /// stores ask for transparent huge pages (sparse steps read rows all over the store).
    pub fn with_capacity(d: usize, tokens: usize) -> Result<Self, CacheError> {
        if d == 0 {
            return Err(CacheError::Param(ckv_core::ParamError::zero_dim()));
        }
        let store = Self { d, keys: Vec::with_capacity(tokens * d), values: Vec::with_capacity(tokens * d) };
        huge_pages::advise(&store.keys);
        huge_pages::advise(&store.values);
        Ok(store)
    }

    /// Head dimension.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Number of stored tokens.
    pub fn len(&self) -> usize {
        self.keys.len() / self.d
    }

    /// Whether no token is stored.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Appends one token's key and value rows (`d` values each).
    pub fn append(&mut self, key: &[f32], value: &[f32]) -> Result<(), CacheError> {
        check_values::<E>("key", key, self.d)?;
        check_values::<E>("value", value, self.d)?;
        self.push(key, value);
        Ok(())
    }

    /// Appends several tokens, `[n, d]` keys and values.
    pub fn extend(&mut self, keys: &[f32], values: &[f32]) -> Result<(), CacheError> {
        let rows = keys.len().div_ceil(self.d);
        check_values::<E>("keys", keys, rows * self.d)?;
        check_values::<E>("values", values, rows * self.d)?;
        self.push(keys, values);
        Ok(())
    }

    /// Appends every row of `other`, which must have the same head dimension.
    pub fn extend_from(&mut self, other: &HeadKv<E>) -> Result<(), CacheError> {
        if other.d != self.d {
            return Err(ValueError::Shape { what: "head dimension", expected: self.d, given: other.d }.into());
        }
        self.keys.extend_from_slice(&other.keys);
        self.values.extend_from_slice(&other.values);
        Ok(())
    }

    fn push(&mut self, keys: &[f32], values: &[f32]) {
        let (start, capacity) = (self.keys.len(), self.keys.capacity());
        self.keys.resize(start + keys.len(), E::default());
        self.values.resize(start + values.len(), E::default());
        if self.keys.capacity() != capacity {
            huge_pages::advise(&self.keys);
            huge_pages::advise(&self.values);
        }
        E::from_f32_slice(keys, &mut self.keys[start..]);
        E::from_f32_slice(values, &mut self.values[start..]);
    }

    /// All key rows, `[len, d]`.
    pub fn keys(&self) -> &[E] {
        &self.keys
    }

    /// All value rows, `[len, d]`.
    pub fn values(&self) -> &[E] {
        &self.values
    }

    /// Copies the key and value rows of `ids` (in that order) into `keys_out` and
    /// `values_out`, each `[ids.len(), d]`.
    pub fn gather(&self, ids: &[u32], keys_out: &mut [E], values_out: &mut [E]) -> Result<(), CacheError> {
        let want = ids.len() * self.d;
        for (what, out) in [("keys_out", &*keys_out), ("values_out", &*values_out)] {
            if out.len() != want {
                return Err(ValueError::Shape { what, expected: want, given: out.len() }.into());
            }
        }
        let len = self.len();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= len) {
            return Err(CacheError::TokenOutOfRange { id, len });
        }
        let d = self.d;
        for ((&id, k), v) in ids.iter().zip(keys_out.chunks_exact_mut(d)).zip(values_out.chunks_exact_mut(d))
        {
            let row = id as usize * d..(id as usize + 1) * d;
            k.copy_from_slice(&self.keys[row.clone()]);
            v.copy_from_slice(&self.values[row]);
        }
        Ok(())
    }

    /// Heap memory held by the store, in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.keys.capacity() + self.values.capacity()) * size_of::<E>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn append_extend_gather_round_trip() {
        let mut kv = HeadKv::<f32>::with_capacity(3, 4).unwrap();
        assert!(kv.is_empty());
        kv.extend(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[6.0, 7.0, 8.0, 9.0, 10.0, 11.0]).unwrap();
        kv.append(&[12.0, 13.0, 14.0], &[15.0, 16.0, 17.0]).unwrap();
        assert_eq!(kv.len(), 3);
        let (mut k, mut v) = (vec![0.0; 6], vec![0.0; 6]);
        kv.gather(&[2, 1], &mut k, &mut v).unwrap();
        assert_eq!(k, [12.0, 13.0, 14.0, 3.0, 4.0, 5.0]);
        assert_eq!(v, [15.0, 16.0, 17.0, 9.0, 10.0, 11.0]);
        assert!(kv.memory_bytes() >= 18 * 4);
    }

    #[test]
    fn f16_storage_rounds_to_half() {
        let mut kv = HeadKv::<f16>::new(1).unwrap();
        kv.append(&[1.0 / 3.0], &[2.0]).unwrap();
        assert_eq!(kv.keys()[0], f16::from_f32(1.0 / 3.0));
    }

    #[test]
    fn bad_input_gets_typed_errors() {
        assert_eq!(HeadKv::<f32>::new(0), Err(CacheError::Param(ckv_core::ParamError::zero_dim())));
        let mut kv = HeadKv::<f32>::new(2).unwrap();
        assert_eq!(
            kv.append(&[1.0], &[1.0, 2.0]),
            Err(CacheError::Value(ValueError::Shape { what: "key", expected: 2, given: 1 }))
        );
        assert_eq!(
            kv.extend(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]),
            Err(CacheError::Value(ValueError::Shape { what: "keys", expected: 4, given: 3 }))
        );
        assert!(matches!(
            kv.append(&[1.0, 2.0], &[f32::NAN, 0.0]),
            Err(CacheError::Value(ValueError::NonFinite { what: "value", index: 0, .. }))
        ));
        assert!(matches!(
            kv.append(&[f32::INFINITY, 2.0], &[0.0, 0.0]),
            Err(CacheError::Value(ValueError::NonFinite { what: "key", index: 0, .. }))
        ));
        assert!(kv.is_empty(), "a rejected append stores nothing");
        let mut half = HeadKv::<f16>::new(1).unwrap();
        assert!(matches!(
            half.append(&[1.0e5], &[0.0]),
            Err(CacheError::Value(ValueError::OutOfRange { what: "key", storage: "f16", .. }))
        ));
        half.append(&[65504.0], &[-65504.0]).unwrap();
        kv.append(&[1.0, 2.0], &[3.0, 4.0]).unwrap();
        let (mut k, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        assert_eq!(kv.gather(&[1], &mut k, &mut v), Err(CacheError::TokenOutOfRange { id: 1, len: 1 }));
        assert!(matches!(
            kv.gather(&[0], &mut k[..1], &mut v),
            Err(CacheError::Value(ValueError::Shape { .. }))
        ));
    }
}
