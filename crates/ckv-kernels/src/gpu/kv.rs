//! The KV of one sequence on the device: f16 rows of every KV head, appended one token at
//! a time by the `kv_append` kernel.

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::f16;

use super::{Gpu, driver, grid, int};
use crate::KernelError;

/// Keys and values of every KV head of one sequence on the device: `[heads, capacity, d]`
/// f16, the first [`len`](Self::len) rows of each head in use. The capacity doubles when an
/// append finds it full.
pub struct DeviceKv {
    pub(super) keys: CudaSlice<f16>,
    pub(super) values: CudaSlice<f16>,
    /// The new token's f32 rows, `[2, heads, d]`, on their way to `kv_append`.
    staging: CudaSlice<f32>,
    heads: usize,
    d: usize,
    capacity: usize,
    len: usize,
}

impl DeviceKv {
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

    /// Elements from one head's rows to the next.
    pub(super) fn head_stride(&self) -> usize {
        self.capacity * self.d
    }

    /// The rows for the attention kernels.
    pub(super) fn rows(&self) -> super::decode::KvRows<'_> {
        super::decode::KvRows {
            keys: &self.keys,
            values: &self.values,
            heads: self.heads,
            d: self.d,
            head_stride: self.head_stride(),
        }
    }
}

impl Gpu {
    /// An empty device KV of `heads` heads of dimension `d`, room for `capacity` tokens.
    pub fn kv(&self, heads: usize, d: usize, capacity: usize) -> Result<DeviceKv, KernelError> {
        if heads == 0 || d == 0 {
            return Err(KernelError::Shape(format!("{heads} KV heads of dimension {d}")));
        }
        let capacity = capacity.max(1);
        let s = &self.stream;
        Ok(DeviceKv {
            keys: s.alloc_zeros(heads * capacity * d).map_err(driver)?,
            values: s.alloc_zeros(heads * capacity * d).map_err(driver)?,
            staging: s.alloc_zeros(2 * heads * d).map_err(driver)?,
            heads,
            d,
            capacity,
            len: 0,
        })
    }

    /// Replaces the contents of `kv` by `rows`: per head, its keys and values `[n, d]`, the
    /// same `n` for every head.
    pub fn upload_kv(&self, kv: &mut DeviceKv, rows: &[(&[f16], &[f16])]) -> Result<(), KernelError> {
        let d = kv.d;
        let n = rows.first().map_or(0, |(k, _)| k.len() / d);
        if rows.len() != kv.heads || rows.iter().any(|(k, v)| k.len() != n * d || v.len() != n * d) {
            return Err(KernelError::Shape(format!(
                "{} heads of KV rows for {} heads of {n} rows of dimension {d}",
                rows.len(),
                kv.heads
            )));
        }
        kv.len = 0;
        self.reserve(kv, n)?;
        let stride = kv.head_stride();
        for (h, (keys, values)) in rows.iter().enumerate().filter(|_| n > 0) {
            let at = h * stride;
            self.stream.memcpy_htod(*keys, &mut kv.keys.slice_mut(at..at + n * d)).map_err(driver)?;
            self.stream.memcpy_htod(*values, &mut kv.values.slice_mut(at..at + n * d)).map_err(driver)?;
        }
        kv.len = n;
        Ok(())
    }

    /// Appends one token to every head: `key` and `value` are `[heads, d]` f32, stored as
    /// f16 rounded to nearest.
    pub fn append_kv(&self, kv: &mut DeviceKv, key: &[f32], value: &[f32]) -> Result<(), KernelError> {
        let (heads, d) = (kv.heads, kv.d);
        if key.len() != heads * d || value.len() != heads * d {
            return Err(KernelError::Shape(format!(
                "new K/V of {} and {} values for {heads} heads of dimension {d}",
                key.len(),
                value.len()
            )));
        }
        self.reserve(kv, kv.len + 1)?;
        let s = &self.stream;
        s.memcpy_htod(key, &mut kv.staging.slice_mut(..heads * d)).map_err(driver)?;
        s.memcpy_htod(value, &mut kv.staging.slice_mut(heads * d..)).map_err(driver)?;
        let f = self.function("kv", "kv_append")?;
        let (d_i, stride, position) = (int("d", d)?, kv.head_stride() as i64, int("position", kv.len)?);
        let (key_dev, value_dev) = (kv.staging.slice(..heads * d), kv.staging.slice(heads * d..));
        let mut l = s.launch_builder(&f);
        l.arg(&key_dev).arg(&value_dev).arg(&d_i).arg(&stride).arg(&position);
        l.arg(&mut kv.keys).arg(&mut kv.values);
        // SAFETY: the arguments match `kv_append` in order and type; one block per head
        // writes row `len < capacity` of each head, inside the buffers.
        #[allow(unsafe_code)]
        unsafe { l.launch(grid(heads, 1, 128, 0)) }.map_err(driver)?;
        kv.len += 1;
        Ok(())
    }

    /// Makes room for `rows` tokens per head, doubling the capacity and copying the rows
    /// in use when it is short.
    fn reserve(&self, kv: &mut DeviceKv, rows: usize) -> Result<(), KernelError> {
        if rows <= kv.capacity {
            return Ok(());
        }
        let capacity = rows.max(2 * kv.capacity);
        let (heads, d, len) = (kv.heads, kv.d, kv.len);
        let s = &self.stream;
        let mut keys = s.alloc_zeros::<f16>(heads * capacity * d).map_err(driver)?;
        let mut values = s.alloc_zeros::<f16>(heads * capacity * d).map_err(driver)?;
        for h in (0..heads).filter(|_| len > 0) {
            let (from, to) = (h * kv.capacity * d, h * capacity * d);
            s.memcpy_dtod(&kv.keys.slice(from..from + len * d), &mut keys.slice_mut(to..to + len * d))
                .map_err(driver)?;
            s.memcpy_dtod(&kv.values.slice(from..from + len * d), &mut values.slice_mut(to..to + len * d))
                .map_err(driver)?;
        }
        (kv.keys, kv.values, kv.capacity) = (keys, values, capacity);
        Ok(())
    }

    /// Rows `[0, len)` of head `head` of `kv`, keys then values, copied to the host.
    pub fn download_kv(&self, kv: &DeviceKv, head: usize) -> Result<(Vec<f16>, Vec<f16>), KernelError> {
        if head >= kv.heads {
            return Err(KernelError::Shape(format!("head {head} of {}", kv.heads)));
        }
        let (at, n) = (head * kv.head_stride(), kv.len * kv.d);
        let s = &self.stream;
        Ok((
            s.clone_dtoh(&kv.keys.slice(at..at + n)).map_err(driver)?,
            s.clone_dtoh(&kv.values.slice(at..at + n)).map_err(driver)?,
        ))
    }
}
