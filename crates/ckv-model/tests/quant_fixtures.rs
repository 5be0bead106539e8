//! Checks `ckv_model::dequantize` against values from an implementation we did not write:
//! the numpy code of the `gguf` Python package (`gguf.quants.dequantize`, gguf 0.19.0).
//!
//! `tests/data/quants/make_fixtures.py` (fixed seed) wrote, per GGML type, `<type>.bin`, the raw
//! GGUF blocks (random payloads, f16 scales drawn tiny / subnormal, ordinary, large, negative and
//! zero), and `<type>.f32`, what gguf dequantizes them to, little-endian f32. Every value must
//! match bit for bit; the GGUF code and block geometry of each type are checked against gguf's
//! `GGMLQuantizationType` and `GGML_QUANT_SIZES` too.
//!
//! Why bitwise: gguf computes in f32 (f16 scales widened with `astype(np.float32)`, the integer
//! quants cast to f32), in ggml's order (`d * q`, `d * q + m`, `(d * sc) * q - dmin * m`, `(d *
//! sc) * q`). Every product there is exact in f32: an f16 significand has 11 bits and the integer
//! factors together stay below 2^12 (K-quant 6-bit scale times 5-bit quant, Q6_K's int8 scale
//! times its 6-bit signed quant), so a product has at most 23 significant bits, far above f32's
//! subnormals. The only rounding is the one add or subtract of the minimum (Q4_1, Q5_1, Q4_K,
//! Q5_K; it rounds a quarter to a third of those values here), and any association of the
//! products, a fused multiply-add, or computing in f64 and narrowing, rounds that one exact
//! value the same way. So a correct implementation matches exactly whatever its order; only a
//! differently arranged formula could flip the sign of a zero (`0 * -3` is `-0`, as here), which
//! the bitwise comparison checks too.

use ckv_model::{GgmlType, dequantize};

/// One type's fixture, with what gguf says about the type.
struct Fixture {
    dtype: GgmlType,
    /// The GGUF code (gguf's `GGMLQuantizationType`).
    code: u32,
    /// `(elements per block, bytes per block)` (gguf's `GGML_QUANT_SIZES`).
    block: (usize, usize),
    /// The raw blocks.
    bin: &'static [u8],
    /// The expected values, little-endian f32.
    expected: &'static [u8],
}

macro_rules! fixture {
    ($dtype:ident, $code:expr, $block:expr, $file:literal) => {
        Fixture {
            dtype: GgmlType::$dtype,
            code: $code,
            block: $block,
            bin: include_bytes!(concat!("data/quants/", $file, ".bin")),
            expected: include_bytes!(concat!("data/quants/", $file, ".f32")),
        }
    };
}

fn check(f: Fixture) {
    assert_eq!(GgmlType::from_code(f.code), f.dtype, "GGUF code {}", f.code);
    assert_eq!(f.dtype.block(), Some(f.block), "block geometry of {}", f.dtype);
    let expected: Vec<f32> =
        f.expected.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let (per_block, block_bytes) = f.block;
    assert_eq!(expected.len() % per_block, 0, "fixture of {}: whole blocks", f.dtype);
    assert_eq!(f.bin.len(), expected.len() / per_block * block_bytes, "fixture of {}: sizes", f.dtype);

    let mut out = vec![f32::NAN; expected.len()];
    assert!(dequantize(f.dtype, f.bin, &mut out), "{} is dequantizable", f.dtype);
    let wrong: Vec<String> = out
        .iter()
        .zip(&expected)
        .enumerate()
        .filter(|(_, (got, want))| got.to_bits() != want.to_bits())
        .map(|(i, (got, want))| {
            let (g, w) = (got.to_bits(), want.to_bits());
            format!("[{i}] (block {}): got {got:e} ({g:#010x}), gguf {want:e} ({w:#010x})", i / per_block)
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{}: {} of {} values differ from gguf's, first: {:#?}",
        f.dtype,
        wrong.len(),
        out.len(),
        &wrong[..wrong.len().min(8)]
    );
}

#[test]
fn bf16() {
    check(fixture!(BF16, 30, (1, 2), "bf16"));
}

#[test]
fn f16() {
    check(fixture!(F16, 1, (1, 2), "f16"));
}

#[test]
fn q4_0() {
    check(fixture!(Q4_0, 2, (32, 18), "q4_0"));
}

#[test]
fn q4_1() {
    check(fixture!(Q4_1, 3, (32, 20), "q4_1"));
}

#[test]
fn q5_0() {
    check(fixture!(Q5_0, 6, (32, 22), "q5_0"));
}

#[test]
fn q5_1() {
    check(fixture!(Q5_1, 7, (32, 24), "q5_1"));
}

#[test]
fn q8_0() {
    check(fixture!(Q8_0, 8, (32, 34), "q8_0"));
}

#[test]
fn q4_k() {
    check(fixture!(Q4_K, 12, (256, 144), "q4_k"));
}

#[test]
fn q5_k() {
    check(fixture!(Q5_K, 13, (256, 176), "q5_k"));
}

#[test]
fn q6_k() {
    check(fixture!(Q6_K, 14, (256, 210), "q6_k"));
}
