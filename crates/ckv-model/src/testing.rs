//! GGUF files written in memory for tests, fuzz seeds and examples: metadata of every type,
//! tensors of every GGML type, and tiny random Llama models.
//!
//! Nothing here checks what it writes: a writer for tests may describe a corrupt file (a
//! tensor whose data is short, an alignment that is not a power of two) on purpose.
//!
//! ```
//! use ckv_model::GgufFile;
//! use ckv_model::testing::{Val, gguf_bytes};
//!
//! let bytes = gguf_bytes(&[("general.name", Val::Str("tiny"))], &[("t", vec![2], 0, vec![0; 8])], 32);
//! let gguf = GgufFile::from_bytes(bytes)?;
//! assert_eq!(gguf.get_str("general.name")?, "tiny");
//! assert_eq!(gguf.dequantize("t")?, [0.0, 0.0]);
//! # Ok::<(), ckv_model::GgufError>(())
//! ```

/// A metadata value to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `int32`.
    I32(i32),
    /// `uint32`.
    U32(u32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// `string`.
    Str(&'a str),
    /// `array` of strings.
    Strs(Vec<&'a str>),
    /// `array` of `float32`.
    F32s(Vec<f32>),
    /// `array` of `int32`.
    I32s(Vec<i32>),
    /// `array` of any values, written with the type code of the first (`uint8` when empty):
    /// nested arrays, or, with items of mixed types, a corrupt array.
    Array(Vec<Val<'a>>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl Val<'_> {
    /// Its GGUF metadata type code.
    pub fn code(&self) -> u32 {
        match self {
            Val::U8(_) => 0,
            Val::I8(_) => 1,
            Val::U16(_) => 2,
            Val::I16(_) => 3,
            Val::U32(_) => 4,
            Val::I32(_) => 5,
            Val::F32(_) => 6,
            Val::Bool(_) => 7,
            Val::Str(_) => 8,
            Val::Strs(_) | Val::F32s(_) | Val::I32s(_) | Val::Array(_) => 9,
            Val::U64(_) => 10,
            Val::I64(_) => 11,
            Val::F64(_) => 12,
        }
    }
}

/// Appends a GGUF string: its length (`u64`), then its bytes.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Appends a GGUF metadata value: its type code, then its payload.
pub fn put_val(out: &mut Vec<u8>, v: &Val<'_>) {
    out.extend(v.code().to_le_bytes());
    put_payload(out, v);
}

/// Appends the payload of `v` (an array's item type, length and items; a scalar's bytes).
fn put_payload(out: &mut Vec<u8>, v: &Val<'_>) {
    let array = |out: &mut Vec<u8>, item_code: u32, len: usize| {
        out.extend(item_code.to_le_bytes());
        out.extend((len as u64).to_le_bytes());
    };
    match v {
        Val::U8(x) => out.push(*x),
        Val::I8(x) => out.extend(x.to_le_bytes()),
        Val::U16(x) => out.extend(x.to_le_bytes()),
        Val::I16(x) => out.extend(x.to_le_bytes()),
        Val::U32(x) => out.extend(x.to_le_bytes()),
        Val::I32(x) => out.extend(x.to_le_bytes()),
        Val::F32(x) => out.extend(x.to_le_bytes()),
        Val::Bool(x) => out.push(u8::from(*x)),
        Val::Str(s) => put_str(out, s),
        Val::Strs(items) => {
            array(out, 8, items.len());
            items.iter().for_each(|s| put_str(out, s));
        }
        Val::F32s(items) => {
            array(out, 6, items.len());
            out.extend(items.iter().flat_map(|x| x.to_le_bytes()));
        }
        Val::I32s(items) => {
            array(out, 5, items.len());
            out.extend(items.iter().flat_map(|x| x.to_le_bytes()));
        }
        Val::Array(items) => {
            array(out, items.first().map_or(0, Val::code), items.len());
            items.iter().for_each(|item| put_payload(out, item));
        }
        Val::U64(x) => out.extend(x.to_le_bytes()),
        Val::I64(x) => out.extend(x.to_le_bytes()),
        Val::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// A tensor to write: name, dims (fastest first), GGML type code, data bytes.
pub type Tensor<'a> = (&'a str, Vec<u64>, u32, Vec<u8>);

/// The bytes of a GGUF v3 file: the header, `metadata` in order, the infos of `tensors`, and
/// their data, each tensor's start a multiple of `alignment` (which the metadata should
/// state as `general.alignment` unless it is 32, the default).
pub fn gguf_bytes(metadata: &[(&str, Val<'_>)], tensors: &[Tensor<'_>], alignment: usize) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, v) in metadata {
        put_str(&mut out, key);
        put_val(&mut out, v);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for (name, dims, code, data) in tensors {
        put_str(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(code.to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = (offset + data.len()).div_ceil(alignment) * alignment;
    }
    out.resize(out.len().div_ceil(alignment) * alignment, 0);
    let start = out.len();
    for ((_, _, _, data), off) in tensors.iter().zip(offsets) {
        out.resize(start + off, 0);
        out.extend(data);
    }
    out
}

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A random value in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Hidden size, FFN size, query heads, KV heads, layers and vocabulary of a model.
pub type Dims = (usize, usize, usize, usize, usize, usize);

/// The dims of [`tiny_model`]: every row whole super-blocks of 256.
pub const TINY: Dims = (256, 512, 4, 2, 2, 300);

/// Random blocks of GGML type `code` holding `elements` values of about ±0.05 times `size`:
/// random payloads, f16 scales and minimums chosen to keep values of that size. A type this
/// crate does not dequantize gets no bytes (its size is unknown, as the reader sees it);
/// `elements` beyond whole blocks get none either.
pub fn random_blocks(code: u32, elements: usize, size: f32, rng: &mut Rng) -> Vec<u8> {
    let half = |x: f32| half::f16::from_f32(x).to_le_bytes();
    let small = |rng: &mut Rng| (0.5 + rng.unit()) * size;
    let mut float = || (rng.unit() - 0.5) * 0.1 * size;
    // (elements, bytes, [(offset of an f16 field, its typical value)]) per block.
    let (per_block, bytes, fields): (usize, usize, &[(usize, f32)]) = match code {
        0 => return (0..elements).flat_map(|_| float().to_le_bytes()).collect(),
        1 => return (0..elements).flat_map(|_| half(float())).collect(),
        30 => return (0..elements).flat_map(|_| half::bf16::from_f32(float()).to_le_bytes()).collect(),
        2 => (32, 18, &[(0, 0.006)]),
        3 => (32, 20, &[(0, 0.006), (2, -0.045)]),
        6 => (32, 22, &[(0, 0.003)]),
        7 => (32, 24, &[(0, 0.003), (2, -0.045)]),
        8 => (32, 34, &[(0, 0.0004)]),
        12 => (256, 144, &[(0, 0.0002), (2, 0.0002)]),
        13 => (256, 176, &[(0, 0.0001), (2, 0.0002)]),
        14 => (256, 210, &[(208, 0.00002)]),
        _ => return Vec::new(),
    };
    let mut out: Vec<u8> = (0..elements / per_block * bytes).map(|_| rng.next() as u8).collect();
    for block in out.chunks_exact_mut(bytes) {
        for &(at, typical) in fields {
            block[at..at + 2].copy_from_slice(&half(typical * small(rng)));
        }
        // Sub-scales of one size, as trained weights have (not 0 next to 63): Q4_K and
        // Q5_K's 6-bit scales and minimums in 48..=63 (both high bits set), Q6_K's
        // 8-bit scales of magnitude 64..=127.
        match code {
            12 | 13 => block[4..12].iter_mut().for_each(|b| *b |= 0xF0),
            14 => block[192..208].iter_mut().for_each(|b| *b = (*b as i8 | 64) as u8),
            _ => {}
        }
    }
    out
}

/// A Llama GGUF of [`TINY`] dims with random weights, the type of each matrix chosen by
/// `code_of(name)` (norms are F32); tied embeddings unless `code_of("output.weight")` is
/// not `None`. The embeddings are ten times the size of the other weights, so that each
/// position's residual stream stays far from zero (the final norm would amplify noise).
pub fn tiny_model(code_of: impl Fn(&str) -> Option<u32>, seed: u64) -> Vec<u8> {
    model_with(TINY, code_of, seed)
}

/// [`tiny_model`] of any dims.
pub fn model_with(dims: Dims, code_of: impl Fn(&str) -> Option<u32>, seed: u64) -> Vec<u8> {
    model_edited(dims, code_of, seed, |_, _| {})
}

/// [`model_with`], with each tensor's bytes passed through `edit(name, data)` before they are
/// written (e.g. zeroed: all-zero blocks of every GGML type hold zeros).
pub fn model_edited(
    dims: Dims,
    code_of: impl Fn(&str) -> Option<u32>,
    seed: u64,
    edit: impl Fn(&str, &mut [u8]),
) -> Vec<u8> {
    let (h, ffn, heads, kv_heads, layers, vocab) = dims;
    let kv = kv_heads * h / heads;
    let mut rng = Rng(seed | 1);
    let mut tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)> = Vec::new();
    let mut matrix = |name: String, inp: usize, out: usize, rng: &mut Rng| {
        let code = code_of(&name).unwrap_or(0);
        let size = if name == "token_embd.weight" { 10.0 } else { 1.0 };
        let data = random_blocks(code, inp * out, size, rng);
        tensors.push((name, vec![inp as u64, out as u64], code, data));
    };
    matrix("token_embd.weight".into(), h, vocab, &mut rng);
    if code_of("output.weight").is_some() {
        matrix("output.weight".into(), h, vocab, &mut rng);
    }
    for l in 0..layers {
        for (name, inp, out) in [
            ("attn_q", h, h),
            ("attn_k", h, kv),
            ("attn_v", h, kv),
            ("attn_output", h, h),
            ("ffn_gate", h, ffn),
            ("ffn_up", h, ffn),
            ("ffn_down", ffn, h),
        ] {
            matrix(format!("blk.{l}.{name}.weight"), inp, out, &mut rng);
        }
    }
    let mut norms = vec!["output_norm.weight".to_owned()];
    for l in 0..layers {
        norms.push(format!("blk.{l}.attn_norm.weight"));
        norms.push(format!("blk.{l}.ffn_norm.weight"));
    }
    for name in norms {
        let data = (0..h).flat_map(|_| (0.8 + 0.4 * rng.unit()).to_le_bytes()).collect();
        tensors.push((name, vec![h as u64], 0, data));
    }
    let borrowed: Vec<Tensor<'_>> = tensors
        .iter_mut()
        .map(|(name, dims, code, data)| {
            edit(name, data);
            (name.as_str(), std::mem::take(dims), *code, std::mem::take(data))
        })
        .collect();
    let metadata = [
        ("general.architecture", Val::Str("llama")),
        ("llama.block_count", Val::U32(layers as u32)),
        ("llama.embedding_length", Val::U32(h as u32)),
        ("llama.feed_forward_length", Val::U32(ffn as u32)),
        ("llama.attention.head_count", Val::U32(heads as u32)),
        ("llama.attention.head_count_kv", Val::U32(kv_heads as u32)),
        ("llama.context_length", Val::U32(512)),
        ("llama.attention.layer_norm_rms_epsilon", Val::F32(1e-5)),
        ("llama.rope.freq_base", Val::F32(10000.0)),
        ("llama.vocab_size", Val::U32(vocab as u32)),
    ];
    gguf_bytes(&metadata, &borrowed, 32)
}
