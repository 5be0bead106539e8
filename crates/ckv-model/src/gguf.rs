//! The GGUF container: header, metadata, tensor infos and tensor data, memory-mapped (or
//! held in memory).
//!
//! Every count and offset in the file is checked against the file's length before it is
//! used: a corrupt count cannot make the reader allocate more than the file could hold.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;

use std::sync::Arc;

use memmap2::Mmap;

use crate::{GgmlType, GgufError, dequantize};

const MAGIC: u32 = 0x4655_4747;
const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays in arrays the reader accepts (the metadata of real files has
/// none); the parser recurses once per level.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// `string`.
    String(String),
    /// `array` of values of one type.
    Array(Vec<GgufValue>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl GgufValue {
    /// The type's name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::F32(_) => "f32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F64(_) => "f64",
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(x) => Some(x.into()),
            GgufValue::U16(x) => Some(x.into()),
            GgufValue::U32(x) => Some(x.into()),
            GgufValue::U64(x) => Some(x),
            GgufValue::I8(x) => u64::try_from(x).ok(),
            GgufValue::I16(x) => u64::try_from(x).ok(),
            GgufValue::I32(x) => u64::try_from(x).ok(),
            GgufValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }
}

/// Where and what one tensor is.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// Its dimensions, fastest first (GGML's `ne`): a `[rows, cols]` matrix is `[cols, rows]`.
    pub dims: Vec<u64>,
    /// Its type.
    pub dtype: GgmlType,
    /// Byte range of its data in the file.
    pub data: std::ops::Range<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// The bytes of a GGUF file: a read-only mapping, or bytes in memory.
type Bytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// An open GGUF file: metadata parsed, tensors located, data memory-mapped or in memory.
pub struct GgufFile {
    map: Bytes,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("len", &self.bytes().len())
            .field("version", &self.version)
            .field("metadata", &self.metadata)
            .field("tensors", &self.tensors)
            .finish_non_exhaustive()
    }
}

/// A bounds-checked little-endian reader over the mapped bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        let truncated = || GgufError::Truncated { what, offset: self.at, needed: n, len: self.bytes.len() };
        let end = usize::try_from(n).ok().and_then(|n| self.at.checked_add(n)).ok_or_else(truncated)?;
        let out = self.bytes.get(self.at..end).ok_or_else(truncated)?;
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let b = self.take(N as u64, what)?;
        Ok(b.try_into().unwrap_or([0; N]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let offset = self.at;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 { offset })
    }

    /// The value of `value_type` at the cursor, inside `depth` arrays.
    fn value(&mut self, key: &str, value_type: u32, depth: usize) -> Result<GgufValue, GgufError> {
        const WHAT: &str = "metadata value";
        Ok(match value_type {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(WHAT)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(WHAT)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(WHAT)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(WHAT)?)),
            4 => GgufValue::U32(self.u32(WHAT)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(WHAT)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(WHAT)?)),
            7 => GgufValue::Bool(self.array::<1>(WHAT)?[0] != 0),
            8 => GgufValue::String(self.string(WHAT)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestedTooDeep { key: key.to_owned(), depth: depth + 1 });
                }
                let item_type = self.u32("array item type")?;
                let len = self.u64("array length")?;
                // Every item takes at least `min_size` bytes: a corrupt length cannot make us
                // allocate more items than the file holds.
                let remaining = (self.bytes.len() - self.at) as u64;
                let needed = len.saturating_mul(min_size(item_type));
                if needed > remaining {
                    return Err(GgufError::Truncated {
                        what: "array items",
                        offset: self.at,
                        needed,
                        len: self.bytes.len(),
                    });
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(key, item_type, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(WHAT)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(WHAT)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(WHAT)?)),
            other => return Err(GgufError::BadValueType { key: key.to_owned(), value_type: other }),
        })
    }
}

/// The fewest bytes a metadata value of type `value_type` takes (1 for an unknown type,
/// which fails as soon as it is read).
fn min_size(value_type: u32) -> u64 {
    match value_type {
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

impl GgufFile {
    /// Opens and parses `path`; tensor data stays mapped, not read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io)?;
        let map = map_file(&file).map_err(io)?;
        Self::parse(Arc::new(map))
    }

    /// Parses the GGUF file held in `bytes` (a file read into memory, or one written by
    /// [`testing::gguf_bytes`](crate::testing::gguf_bytes)).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(Arc::new(bytes))
    }

    /// The whole file.
    fn bytes(&self) -> &[u8] {
        (*self.map).as_ref()
    }

    fn parse(map: Bytes) -> Result<Self, GgufError> {
        let mut c = Cursor { bytes: (*map).as_ref(), at: 0 };
        let magic = c.u32("magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_metadata = c.u64("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_metadata {
            let key = c.string("metadata key")?;
            let value_type = c.u32("metadata value type")?;
            let value = c.value(&key, value_type, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| GgufError::WrongType {
                key: "general.alignment".into(),
                expected: "a power of two (u32)",
                found: v.type_name(),
            })?,
        };
        let mut raw = Vec::new();
        for _ in 0..n_tensors.min(c.bytes.len() as u64) {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dimension count")?;
            let dims =
                (0..n_dims.min(8)).map(|_| c.u64("tensor dimension")).collect::<Result<Vec<_>, _>>()?;
            if n_dims > 8 {
                return Err(GgufError::BadTensor {
                    name,
                    reason: format!("{n_dims} dimensions (at most 8)"),
                });
            }
            let dtype = GgmlType::from_code(c.u32("tensor type")?);
            let offset = c.u64("tensor offset")?;
            raw.push((name, dims, dtype, offset));
        }
        if (raw.len() as u64) < n_tensors {
            return Err(GgufError::Truncated {
                what: "tensor infos",
                offset: c.at,
                needed: n_tensors,
                len: c.bytes.len(),
            });
        }
        let data_start = (c.at as u64).div_ceil(alignment) * alignment;
        let file_len = c.bytes.len();
        let mut tensors = Vec::with_capacity(raw.len());
        let mut by_name = HashMap::with_capacity(raw.len());
        for (name, dims, dtype, offset) in raw {
            let data = tensor_range(&name, &dims, dtype, (data_start, offset), file_len)?;
            by_name.insert(name.clone(), tensors.len());
            tensors.push(TensorInfo { name, dims, dtype, data });
        }
        Ok(Self { map, version, metadata, tensors, by_name })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey(key.to_owned()))
    }

    fn wrong(key: &str, expected: &'static str, found: &GgufValue) -> GgufError {
        GgufError::WrongType { key: key.to_owned(), expected, found: found.type_name() }
    }

    /// The value of `key` as a `u32` (any non-negative integer type that fits).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.get(key)?;
        v.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(|| Self::wrong(key, "u32", v))
    }

    /// The value of `key` as an `f32` (f32 or f64).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        match self.get(key)? {
            GgufValue::F32(x) => Ok(*x),
            GgufValue::F64(x) => Ok(*x as f32),
            v => Err(Self::wrong(key, "f32", v)),
        }
    }

    /// The value of `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.get(key)? {
            GgufValue::String(s) => Ok(s),
            v => Err(Self::wrong(key, "string", v)),
        }
    }

    /// The value of `key` as an array.
    pub fn get_array(&self, key: &str) -> Result<&[GgufValue], GgufError> {
        match self.get(key)? {
            GgufValue::Array(items) => Ok(items),
            v => Err(Self::wrong(key, "array", v)),
        }
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::MissingTensor(name.to_owned()))
    }

    /// The raw bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        Ok(&self.bytes()[self.tensor(name)?.data.clone()])
    }

    /// The bytes of tensor `name`, sharing the file's mapping (they stay valid after the
    /// file is dropped).
    pub(crate) fn shared_bytes(&self, name: &str) -> Result<SharedBytes, GgufError> {
        Ok(SharedBytes { data: self.map.clone(), range: self.tensor(name)?.data.clone() })
    }

    /// Tensor `name` dequantized to `f32`, in GGML order (fastest dimension first).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name)?;
        let unsupported = || GgufError::UnsupportedType { name: name.to_owned(), dtype: info.dtype };
        // An unsupported type's element count is not checked against the file: refuse it
        // before allocating.
        info.dtype.block().ok_or_else(unsupported)?;
        let mut out = vec![0.0f32; info.n_elements()];
        if dequantize(info.dtype, &self.bytes()[info.data.clone()], &mut out) {
            Ok(out)
        } else {
            Err(unsupported())
        }
    }
}

/// A tensor's bytes inside a shared mapping of its file: a weight kept in its GGUF blocks.
#[derive(Clone)]
pub(crate) struct SharedBytes {
    data: Bytes,
    range: std::ops::Range<usize>,
}

impl SharedBytes {
    /// Bytes held in memory (for tests of the products).
    #[cfg(test)]
    pub(crate) fn owned(bytes: Vec<u8>) -> Self {
        let range = 0..bytes.len();
        Self { data: Arc::new(bytes), range }
    }
}

impl std::ops::Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &(*self.data).as_ref()[self.range.clone()]
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.range.len())
    }
}

/// The byte range of a tensor's data at `offset` from `data_start`, checked against its
/// shape, type and the file.
fn tensor_range(
    name: &str,
    dims: &[u64],
    dtype: GgmlType,
    (data_start, offset): (u64, u64),
    file_len: usize,
) -> Result<std::ops::Range<usize>, GgufError> {
    let bad = |reason: String| GgufError::BadTensor { name: name.to_owned(), reason };
    let start = data_start
        .checked_add(offset)
        .ok_or_else(|| bad(format!("offset {offset} runs past the end of the file ({file_len} bytes)")))?;
    let elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    // Unsupported types keep an empty range: their size is unknown, their bytes unused.
    let Some((per_block, block_bytes)) = dtype.block() else { return Ok(0..0) };
    if elements % per_block as u64 != 0 {
        return Err(bad(format!("{elements} elements are not whole blocks of {per_block} for {dtype}")));
    }
    let len = (elements / per_block as u64).saturating_mul(block_bytes as u64);
    let end = start.checked_add(len).filter(|&end| end <= file_len as u64).ok_or_else(|| {
        bad(format!(
            "data [{start}, {}) runs past the end of the file ({file_len} bytes)",
            start.saturating_add(len)
        ))
    })?;
    Ok(start as usize..end as usize)
}

/// Maps `file` read-only.
#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the map is read-only and private to this process. If another process truncates
    // or rewrites the file while it is mapped, reads may fault or see new bytes; model files
    // are not modified while in use, and every range is bounds-checked against the length
    // seen when mapping.
    unsafe { Mmap::map(file) }
}
