//! GGUF reading on small files the tests write themselves: every metadata type, every
//! supported tensor type, and corrupt, truncated or incomplete files.

mod common;

use ckv_model::{GgmlType, GgufError, GgufFile, GgufValue, MAX_ARRAY_DEPTH};
use common::{Tensor, Val, gguf_bytes, temp_file};
use half::f16;

fn open(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    GgufFile::open(temp_file(bytes).path())
}

fn half_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// One block of each quantized type, with the values it must dequantize to.
fn quantized() -> Vec<(Tensor<'static>, Vec<f32>)> {
    let mut q4_0 = half_bytes(0.5).to_vec();
    q4_0.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let want_q4_0: Vec<f32> =
        (0..32).map(|j| if j < 16 { j as f32 - 8.0 } else { 23.0 - j as f32 } * 0.5).collect();
    let mut q4_1 = half_bytes(0.25).to_vec();
    q4_1.extend(half_bytes(-1.0));
    q4_1.extend((0..16u8).map(|j| (15 - j) | (j << 4)));
    let want_q4_1: Vec<f32> =
        (0..32).map(|j| if j < 16 { 15.0 - j as f32 } else { j as f32 - 16.0 } * 0.25 - 1.0).collect();
    let mut q8_0 = half_bytes(2.0).to_vec();
    q8_0.extend((0..32).map(|j| (j as i8 * 3 - 50) as u8));
    let want_q8_0: Vec<f32> = (0..32).map(|j| (j * 3 - 50) as f32 * 2.0).collect();
    let f32s = [1.0f32, -2.5, 3.25, 0.0, 7.5, -0.125];
    let f16s = [0.5f32, -1.5, 65504.0, 0.0];
    vec![
        (("blk.0.attn_q.weight", vec![32, 1], 2, q4_0), want_q4_0),
        (("blk.0.ffn_up.weight", vec![32], 3, q4_1), want_q4_1),
        (("output_norm.weight", vec![32], 8, q8_0), want_q8_0),
        (
            ("token_embd.weight", vec![3, 2], 0, f32s.iter().flat_map(|x| x.to_le_bytes()).collect()),
            f32s.to_vec(),
        ),
        (
            ("blk.0.attn_norm.weight", vec![4], 1, f16s.iter().flat_map(|&x| half_bytes(x)).collect()),
            f16s.to_vec(),
        ),
    ]
}

fn metadata() -> Vec<(&'static str, Val<'static>)> {
    vec![
        ("general.architecture", Val::Str("llama")),
        ("llama.block_count", Val::U32(30)),
        ("llama.rope.freq_base", Val::F32(100000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Val::F64(1e-5)),
        ("tokenizer.ggml.tokens", Val::Strs(vec!["<|endoftext|>", "a", "b"])),
        ("tokenizer.ggml.scores", Val::F32s(vec![0.0, -1.0, -2.0])),
        ("tokenizer.ggml.bos_token_id", Val::U64(1)),
        ("tokenizer.ggml.add_bos_token", Val::Bool(false)),
        ("test.i32", Val::I32(-7)),
        ("test.u8", Val::U8(200)),
    ]
}

#[test]
fn reads_metadata_and_dequantizes_every_supported_type() {
    for alignment in [32usize, 64] {
        let mut meta = metadata();
        if alignment != 32 {
            meta.push(("general.alignment", Val::U32(alignment as u32)));
        }
        let cases = quantized();
        let tensors: Vec<Tensor<'_>> = cases.iter().map(|(t, _)| t.clone()).collect();
        let gguf = open(&gguf_bytes(&meta, &tensors, alignment)).unwrap();
        assert_eq!(gguf.version(), 3);
        assert_eq!(gguf.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(gguf.get_u32("llama.block_count").unwrap(), 30);
        assert_eq!(gguf.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
        assert_eq!(gguf.get_u32("test.u8").unwrap(), 200);
        assert_eq!(gguf.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
        assert_eq!(gguf.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
        assert_eq!(gguf.get("tokenizer.ggml.add_bos_token").unwrap(), &GgufValue::Bool(false));
        assert_eq!(gguf.get("test.i32").unwrap(), &GgufValue::I32(-7));
        let tokens = gguf.get_array("tokenizer.ggml.tokens").unwrap();
        assert_eq!(tokens[2], GgufValue::String("b".into()));
        assert_eq!(gguf.get_array("tokenizer.ggml.scores").unwrap()[1], GgufValue::F32(-1.0));
        assert_eq!(gguf.tensors().len(), cases.len());
        for ((name, dims, _, _), want) in &cases {
            let info = gguf.tensor(name).unwrap();
            assert_eq!(&info.dims, dims);
            assert_eq!(&gguf.dequantize(name).unwrap(), want, "{name}");
        }
        assert_eq!(gguf.tensor("blk.0.attn_q.weight").unwrap().dtype, GgmlType::Q4_0);
        assert_eq!(gguf.tensor_bytes("output_norm.weight").unwrap().len(), 34);
    }
}

#[test]
fn missing_keys_wrong_types_and_missing_tensors_are_named() {
    let gguf = open(&gguf_bytes(&metadata(), &[], 32)).unwrap();
    let err = gguf.get_u32("llama.context_length").unwrap_err();
    assert!(matches!(&err, GgufError::MissingKey(k) if k == "llama.context_length"), "{err}");
    assert!(err.to_string().contains("llama.context_length"));
    let err = gguf.get_u32("general.architecture").unwrap_err();
    assert!(matches!(err, GgufError::WrongType { expected: "u32", found: "string", .. }), "{err}");
    assert!(matches!(gguf.get_u32("test.i32"), Err(GgufError::WrongType { .. })), "negative is not a u32");
    assert!(matches!(gguf.get_str("llama.block_count"), Err(GgufError::WrongType { .. })));
    assert!(matches!(gguf.get_f32("llama.block_count"), Err(GgufError::WrongType { .. })));
    assert!(matches!(gguf.get_array("llama.block_count"), Err(GgufError::WrongType { .. })));
    assert!(
        matches!(gguf.dequantize("output.weight"), Err(GgufError::MissingTensor(n)) if n == "output.weight")
    );
}

#[test]
fn unsupported_tensor_type_is_read_but_not_dequantized() {
    // Code 16 is IQ2_XXS: the file opens; asking for its values is a clear error.
    let tensors = vec![("blk.0.ffn_down.weight", vec![256], 16u32, vec![0u8; 66])];
    let gguf = open(&gguf_bytes(&metadata(), &tensors, 32)).unwrap();
    let err = gguf.dequantize("blk.0.ffn_down.weight").unwrap_err();
    assert!(matches!(err, GgufError::UnsupportedType { dtype: GgmlType::Other(16), .. }), "{err}");
    assert!(err.to_string().contains("blk.0.ffn_down.weight") && err.to_string().contains("ggml type 16"));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let tensors: Vec<Tensor<'_>> = quantized().into_iter().map(|(t, _)| t).collect();
    let bytes = gguf_bytes(&metadata(), &tensors, 32);
    assert!(open(&bytes).is_ok());
    for cut in 0..bytes.len() {
        match open(&bytes[..cut]) {
            Err(GgufError::Truncated { .. } | GgufError::BadTensor { .. }) => {}
            other => panic!("cut at {cut} of {}: {other:?}", bytes.len()),
        }
    }
}

#[test]
fn corrupt_headers_get_clear_errors() {
    let good = gguf_bytes(&metadata(), &[], 32);
    let mut bad_magic = good.clone();
    bad_magic[..4].copy_from_slice(b"GGML");
    assert!(matches!(open(&bad_magic), Err(GgufError::BadMagic { .. })));
    let mut bad_version = good.clone();
    bad_version[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(open(&bad_version), Err(GgufError::UnsupportedVersion(9))));
    // The first metadata value type (after magic, version, counts, key "general.architecture").
    let type_at = 24 + 8 + "general.architecture".len();
    let mut bad_type = good.clone();
    bad_type[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    assert!(matches!(open(&bad_type), Err(GgufError::BadValueType { value_type: 99, .. })));
    let mut bad_utf8 = good.clone();
    bad_utf8[type_at + 12] = 0xFF;
    assert!(matches!(open(&bad_utf8), Err(GgufError::InvalidUtf8 { .. })));
    // An absurd array length cannot make the reader allocate the impossible.
    let huge = gguf_bytes(&[("tokenizer.ggml.tokens", Val::Strs(vec!["a"]))], &[], 32);
    let len_at = 24 + 8 + "tokenizer.ggml.tokens".len() + 8;
    let mut huge_bad = huge.clone();
    huge_bad[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(open(&huge_bad), Err(GgufError::Truncated { .. })));
    // A tensor whose data runs past the end of the file.
    let tensors = vec![("t", vec![1_000_000], 0u32, vec![0u8; 4])];
    let err = open(&gguf_bytes(&[], &tensors, 32)).unwrap_err();
    assert!(matches!(&err, GgufError::BadTensor { name, .. } if name == "t"), "{err}");
    let missing = GgufFile::open("/nonexistent/model.gguf").unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/model.gguf"), "{missing}");
}

/// Found by the `gguf` fuzz target: a tensor whose byte length or end overflows `u64` (the
/// product `blocks * block bytes`, the offset after the data start) is a typed error naming
/// it, not an overflow panic.
#[test]
fn overflowing_tensor_sizes_and_offsets_are_refused() {
    let huge = vec![("t", vec![1 << 62], 0u32, vec![0u8; 4])];
    let err = GgufFile::from_bytes(gguf_bytes(&[], &huge, 32)).unwrap_err();
    assert!(
        matches!(&err, GgufError::BadTensor { name, reason } if name == "t" && reason.contains("past the end")),
        "{err}"
    );
    let bytes = gguf_bytes(&[], &[("t", vec![1], 0u32, vec![0u8; 4])], 32);
    // The offset is the last field of the only tensor info, just before the data's padding.
    let at = 24 + 8 + 1 + 4 + 8 + 4;
    let mut far = bytes.clone();
    far[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = GgufFile::from_bytes(far).unwrap_err();
    assert!(
        matches!(&err, GgufError::BadTensor { reason, .. } if reason.contains(&u64::MAX.to_string())),
        "{err}"
    );
    assert_eq!(GgufFile::from_bytes(bytes).unwrap().dequantize("t").unwrap(), [0.0]);
}

/// An unsupported tensor type's element count is not bounded by the file: asking for its
/// values is refused before anything of that size is allocated.
#[test]
fn unsupported_tensor_of_huge_dims_is_refused_before_allocating() {
    let tensors = vec![("t", vec![1 << 40, 1 << 20], 16u32, Vec::new())];
    let gguf = GgufFile::from_bytes(gguf_bytes(&[], &tensors, 32)).unwrap();
    assert_eq!(gguf.tensor("t").unwrap().n_elements(), 1 << 60);
    let err = gguf.dequantize("t").unwrap_err();
    assert!(matches!(err, GgufError::UnsupportedType { dtype: GgmlType::Other(16), .. }), "{err}");
}

/// Arrays nested deeper than `MAX_ARRAY_DEPTH` are refused by name (the reader recurses once
/// per level: a deep file cannot overflow the stack), and an array whose items cannot fit the
/// rest of the file is refused before its items are allocated.
#[test]
fn deep_or_oversized_arrays_are_refused() {
    let nested = |depth: usize| (0..depth).fold(Val::U8(1), |inner, _| Val::Array(vec![inner]));
    let ok = GgufFile::from_bytes(gguf_bytes(&[("k", nested(MAX_ARRAY_DEPTH))], &[], 32)).unwrap();
    assert!(matches!(ok.get_array("k").unwrap()[0], GgufValue::Array(_)));
    let err = GgufFile::from_bytes(gguf_bytes(&[("k", nested(MAX_ARRAY_DEPTH + 1))], &[], 32)).unwrap_err();
    assert!(
        matches!(&err, GgufError::NestedTooDeep { key, depth } if key == "k" && *depth == MAX_ARRAY_DEPTH + 1),
        "{err}"
    );
    // 2^60 items of u64: the length alone would ask for exabytes.
    let mut bytes = gguf_bytes(&[("k", Val::Array(vec![Val::U64(7)]))], &[], 32);
    let len_at = 24 + 8 + 1 + 4 + 4;
    bytes[len_at..len_at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let err = GgufFile::from_bytes(bytes).unwrap_err();
    assert!(
        matches!(err, GgufError::Truncated { what: "array items", needed, .. } if needed == 1 << 63),
        "{err}"
    );
}

/// `from_bytes` reads what `open` reads: every metadata type the writer has, and the tensors.
#[test]
fn from_bytes_reads_every_metadata_type() {
    let metadata = [
        ("i8", Val::I8(-3)),
        ("u16", Val::U16(60000)),
        ("i16", Val::I16(-30000)),
        ("i64", Val::I64(i64::MIN)),
        ("nested", Val::Array(vec![Val::Array(vec![Val::U64(1)]), Val::Array(vec![])])),
    ];
    let bytes = gguf_bytes(&metadata, &quantized().into_iter().map(|(t, _)| t).collect::<Vec<_>>(), 32);
    let (in_memory, mapped) = (GgufFile::from_bytes(bytes.clone()).unwrap(), open(&bytes).unwrap());
    assert_eq!(in_memory.metadata(), mapped.metadata());
    assert_eq!(in_memory.tensors(), mapped.tensors());
    assert_eq!(in_memory.get("i8").unwrap(), &GgufValue::I8(-3));
    assert_eq!(in_memory.get_u32("u16").unwrap(), 60000);
    assert_eq!(in_memory.get("i16").unwrap(), &GgufValue::I16(-30000));
    assert_eq!(in_memory.get("i64").unwrap(), &GgufValue::I64(i64::MIN));
    let nested = in_memory.get_array("nested").unwrap();
    assert_eq!(nested, [GgufValue::Array(vec![GgufValue::U64(1)]), GgufValue::Array(vec![])]);
    for (name, want) in quantized().into_iter().map(|((name, ..), want)| (name, want)) {
        assert_eq!(in_memory.dequantize(name).unwrap(), want, "{name}");
    }
}
