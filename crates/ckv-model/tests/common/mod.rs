//! Helpers shared by the test files: GGUF files written in memory (tiny random Llama models
//! among them), temporary files, the default assets (`cargo xtask fetch`), and comparisons.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A metadata value to write.
pub enum Val {
    U8(u8),
    I32(i32),
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(&'static str),
    Strs(Vec<&'static str>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
    U64(u64),
    F64(f64),
}

/// Appends a GGUF string: its length (`u64`), then its bytes.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Appends a GGUF metadata value: its type code, then its payload.
pub fn put_val(out: &mut Vec<u8>, v: &Val) {
    match v {
        Val::U8(x) => out.extend(0u32.to_le_bytes().into_iter().chain([*x])),
        Val::U32(x) => out.extend(4u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Val::I32(x) => out.extend(5u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Val::F32(x) => out.extend(6u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Val::Bool(x) => out.extend(7u32.to_le_bytes().into_iter().chain([*x as u8])),
        Val::Str(s) => {
            out.extend(8u32.to_le_bytes());
            put_str(out, s);
        }
        Val::Strs(items) => {
            out.extend(9u32.to_le_bytes().into_iter().chain(8u32.to_le_bytes()));
            out.extend((items.len() as u64).to_le_bytes());
            for s in items {
                put_str(out, s);
            }
        }
        Val::F32s(items) => {
            out.extend(9u32.to_le_bytes().into_iter().chain(6u32.to_le_bytes()));
            out.extend((items.len() as u64).to_le_bytes());
            out.extend(items.iter().flat_map(|x| x.to_le_bytes()));
        }
        Val::I32s(items) => {
            out.extend(9u32.to_le_bytes().into_iter().chain(5u32.to_le_bytes()));
            out.extend((items.len() as u64).to_le_bytes());
            out.extend(items.iter().flat_map(|x| x.to_le_bytes()));
        }
        Val::U64(x) => out.extend(10u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Val::F64(x) => out.extend(12u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
    }
}

/// A tensor to write: name, dims (fastest first), GGML type code, data bytes.
pub type Tensor = (&'static str, Vec<u64>, u32, Vec<u8>);

/// The bytes of a GGUF v3 file.
pub fn gguf_bytes(metadata: &[(&str, Val)], tensors: &[Tensor], alignment: usize) -> Vec<u8> {
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

/// A new file in the temporary folder holding `bytes`, removed when the result is dropped.
pub fn temp_file(bytes: &[u8]) -> TempFile {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ckv-model-test-{}-{n}.gguf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    TempFile(path)
}

/// A file removed when dropped.
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The default asset `file` (in `assets/`), or the file the environment variable `var`
/// names; `None` when it does not exist.
pub fn asset(var: &str, file: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets").join(file));
    path.exists().then_some(path)
}

/// The default model of DESIGN section 7 (`CKV_MODEL` overrides it), if it is there.
pub fn default_model_path() -> Option<PathBuf> {
    asset("CKV_MODEL", "SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The default text of DESIGN section 7 (`CKV_TEXT` overrides it), if it is there.
pub fn default_text_path() -> Option<PathBuf> {
    asset("CKV_TEXT", "moby-dick.txt")
}

/// The model of the GGUF `bytes`, loaded from a temporary file (removed again at once: the
/// model keeps its mapping).
pub fn load_model(bytes: &[u8]) -> ckv_model::Model {
    let file = temp_file(bytes);
    ckv_model::Model::load(file.path()).unwrap()
}

/// `|got - want| / |want|` (Euclidean norms): the relative error of `got` against the
/// reference `want`.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "compared slices differ in length");
    let diff: f64 = got.iter().zip(want).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    diff / want.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
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
/// random payloads, f16 scales and minimums chosen to keep values of that size.
pub fn random_blocks(code: u32, elements: usize, size: f32, rng: &mut Rng) -> Vec<u8> {
    let half = |x: f32| half::f16::from_f32(x).to_le_bytes();
    let small = |rng: &mut Rng| (0.5 + rng.unit()) * size;
    match code {
        0 => (0..elements).flat_map(|_| ((rng.unit() - 0.5) * 0.1 * size).to_le_bytes()).collect(),
        1 => (0..elements).flat_map(|_| half((rng.unit() - 0.5) * 0.1 * size)).collect(),
        _ => {
            // (elements, bytes, [(offset of an f16 field, its typical value)]) per block.
            let (per_block, bytes, fields): (usize, usize, &[(usize, f32)]) = match code {
                2 => (32, 18, &[(0, 0.006)]),
                3 => (32, 20, &[(0, 0.006), (2, -0.045)]),
                6 => (32, 22, &[(0, 0.003)]),
                7 => (32, 24, &[(0, 0.003), (2, -0.045)]),
                8 => (32, 34, &[(0, 0.0004)]),
                12 => (256, 144, &[(0, 0.0002), (2, 0.0002)]),
                13 => (256, 176, &[(0, 0.0001), (2, 0.0002)]),
                14 => (256, 210, &[(208, 0.00002)]),
                other => panic!("no random blocks of type {other}"),
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
    }
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
    let leaked: Vec<Tensor> = tensors
        .into_iter()
        .map(|(name, dims, code, mut data)| {
            edit(&name, &mut data);
            (&*Box::leak(name.into_boxed_str()), dims, code, data)
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
    gguf_bytes(&metadata, &leaked, 32)
}

/// The GGUF `bytes` with every tensor dequantized to F32: the same model in floats.
pub fn as_f32(bytes: &[u8]) -> Vec<u8> {
    let file = temp_file(bytes);
    let gguf = ckv_model::GgufFile::open(file.path()).unwrap();
    let metadata: Vec<(&str, Val)> = [
        ("general.architecture", Val::Str("llama")),
        ("llama.block_count", Val::U32(gguf.get_u32("llama.block_count").unwrap())),
        ("llama.embedding_length", Val::U32(gguf.get_u32("llama.embedding_length").unwrap())),
        ("llama.feed_forward_length", Val::U32(gguf.get_u32("llama.feed_forward_length").unwrap())),
        ("llama.attention.head_count", Val::U32(gguf.get_u32("llama.attention.head_count").unwrap())),
        ("llama.attention.head_count_kv", Val::U32(gguf.get_u32("llama.attention.head_count_kv").unwrap())),
        ("llama.context_length", Val::U32(gguf.get_u32("llama.context_length").unwrap())),
        ("llama.attention.layer_norm_rms_epsilon", Val::F32(1e-5)),
        ("llama.rope.freq_base", Val::F32(10000.0)),
        ("llama.vocab_size", Val::U32(gguf.get_u32("llama.vocab_size").unwrap())),
    ]
    .into_iter()
    .collect();
    let tensors: Vec<Tensor> = gguf
        .tensors()
        .iter()
        .map(|t| {
            let values = gguf.dequantize(&t.name).unwrap();
            let name: &'static str = Box::leak(t.name.clone().into_boxed_str());
            (name, t.dims.clone(), 0, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    gguf_bytes(&metadata, &tensors, 32)
}
