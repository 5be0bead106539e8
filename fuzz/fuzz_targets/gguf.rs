//! Fuzz target `gguf`: any bytes through the GGUF reader (`GgufFile::from_bytes`), then every
//! metadata getter on every key, every tensor's bytes and dequantization, and the Llama
//! configuration. Nothing may panic; every tensor the reader accepts lies inside the file and
//! dequantizes to its element count, or is refused as an unsupported type.
//!
//! With `CKV_FUZZ_SEEDS=<dir>` set, the target first writes its seeds into `<dir>` (small
//! files from `ckv_model::testing`: a tiny model, one tensor of each GGML type, metadata of
//! every type); `cargo xtask fuzz` sets it to the target's corpus.

#![no_main]

use ckv_model::testing::{Dims, Rng, Tensor, Val, gguf_bytes, model_with, random_blocks};
use ckv_model::{GgmlType, GgufError, GgufFile, LlamaConfig};
use libfuzzer_sys::fuzz_target;

/// Dims of the seed model: rows of whole blocks of 32, so every 32-block type fits.
const SEED_DIMS: Dims = (32, 64, 2, 1, 1, 40);

/// The seed files, by name.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for code in [0u32, 1, 8] {
        let model = model_with(SEED_DIMS, |name| (name != "output.weight").then_some(code), u64::from(code));
        seeds.push((format!("model-{code}"), model));
    }
    let mut rng = Rng(7);
    for dtype in GgmlType::SUPPORTED.into_iter().chain([GgmlType::Other(16)]) {
        let code = dtype.code();
        let data = random_blocks(code, 256, 1.0, &mut rng);
        let tensors: [Tensor<'_>; 2] = [("t", vec![256], code, data), ("u", vec![0, 4], code, Vec::new())];
        seeds.push((format!("tensor-{code}"), gguf_bytes(&[], &tensors, 32)));
    }
    let metadata = [
        ("general.alignment", Val::U32(64)),
        ("u8", Val::U8(200)),
        ("i8", Val::I8(-3)),
        ("u16", Val::U16(60000)),
        ("i16", Val::I16(-30000)),
        ("u32", Val::U32(7)),
        ("i32", Val::I32(-7)),
        ("f32", Val::F32(0.5)),
        ("bool", Val::Bool(true)),
        ("str", Val::Str("llama")),
        ("strs", Val::Strs(vec!["a", "Ġb", "<|im_start|>"])),
        ("f32s", Val::F32s(vec![1.0, -2.0])),
        ("i32s", Val::I32s(vec![3, 1])),
        ("nested", Val::Array(vec![Val::Array(vec![Val::U64(1)]), Val::Array(vec![])])),
        ("u64", Val::U64(u64::MAX)),
        ("i64", Val::I64(i64::MIN)),
        ("f64", Val::F64(1e-5)),
    ];
    let tensors: [Tensor<'_>; 1] = [("t", vec![2, 2], 0, vec![0; 16])];
    seeds.push(("metadata".into(), gguf_bytes(&metadata, &tensors, 64)));
    let tokenizer = [
        ("tokenizer.ggml.model", Val::Str("gpt2")),
        ("tokenizer.ggml.pre", Val::Str("smollm")),
        ("tokenizer.ggml.tokens", Val::Strs(vec!["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġab", "1", "2"])),
        ("tokenizer.ggml.merges", Val::Strs(vec!["a b", "Ġ ab"])),
        ("tokenizer.ggml.token_type", Val::I32s(vec![3, 1, 1, 1, 1, 1, 1, 1])),
        ("tokenizer.ggml.bos_token_id", Val::U32(0)),
    ];
    seeds.push(("tokenizer".into(), gguf_bytes(&tokenizer, &[], 32)));
    seeds
}

/// Writes the seeds into the folder `CKV_FUZZ_SEEDS` names, if it is set.
fn write_seeds() {
    let Some(dir) = std::env::var_os("CKV_FUZZ_SEEDS") else { return };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("cannot create the seed folder");
    for (name, bytes) in seeds() {
        std::fs::write(dir.join(name), bytes).expect("cannot write a seed");
    }
}

fuzz_target!(init: write_seeds(), |data: &[u8]| {
    let len = data.len();
    let Ok(gguf) = GgufFile::from_bytes(data.to_vec()) else { return };
    assert!((2..=3).contains(&gguf.version()));
    for (key, value) in gguf.metadata() {
        // The same value, compared by address: a NaN is not equal to itself.
        assert!(gguf.get(key).is_ok_and(|found| std::ptr::eq(found, value)), "{key:?} not found");
        let _ = (gguf.get_u32(key), gguf.get_f32(key), gguf.get_str(key), gguf.get_array(key));
        let _ = value.as_u64();
    }
    for info in gguf.tensors() {
        assert!(info.data.start <= info.data.end && info.data.end <= len, "{info:?} outside {len} bytes");
        // A duplicate name maps to its last tensor.
        let found = gguf.tensor(&info.name).expect("a listed tensor is found");
        let bytes = gguf.tensor_bytes(&info.name).expect("a listed tensor has bytes");
        assert_eq!(bytes.len(), found.data.len());
        match gguf.dequantize(&info.name) {
            Ok(values) => assert_eq!(values.len(), found.n_elements()),
            Err(GgufError::UnsupportedType { dtype, .. }) => assert_eq!(dtype, found.dtype),
            Err(other) => panic!("tensor {:?}: unexpected {other}", info.name),
        }
    }
    let _ = LlamaConfig::from_gguf(&gguf);
});
