#!/usr/bin/env python3
"""Make the GGUF dequantization fixtures checked by `crates/ckv-model/tests/quant_fixtures.rs`.

The expected values come from an implementation we did not write: the numpy code in the
`gguf` Python package (`gguf.quants.dequantize(data, qtype)`, data a uint8 array whose last
axis is whole blocks). Made with gguf 0.19.0 and numpy 2.4.6 on CPython 3.11:

    pip install gguf==0.19.0 numpy
    python3 crates/ckv-model/tests/data/quants/make_fixtures.py

It rewrites the files next to itself; the seed is fixed, so rerunning it with the same
versions reproduces them byte for byte (check with `git diff --stat`).

Format, per type (lower-case GGML name, e.g. `q4_k`):
  `<type>.bin`  the raw GGUF tensor data: ROWS rows of whole blocks, exactly as they sit in a
                GGUF file (little-endian, no header);
  `<type>.f32`  the expected dequantized values, little-endian f32, row-major (no header).
The element count is `len(<type>.f32) / 4`; the block count follows from the type.

Quant payloads (nibbles, high bits, packed 6-bit scales, int8 values) are random bytes; the
f16 scale fields (d, and dmin / m where the type has one) are drawn as finite f16 values
cycling through tiny (1e-5..1e-4, which includes f16 subnormals), ordinary (0.01..1), large
(1..100), negative and zero scales, so every type has a block with d == 0. F16 and BF16 hold
random finite values plus signed zeros, subnormals and the largest finite values.
"""

import importlib.metadata
import pathlib
import sys

import gguf
import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

SEED = 0x5EED_C0DE
ROWS = 3
OUT = pathlib.Path(__file__).resolve().parent

# Elements per row: 2 super-blocks for the K types, 2 blocks of 32 for the others, 8 floats.
ELEMENTS_PER_ROW = {
    T.BF16: 8,
    T.F16: 8,
    T.Q4_0: 64,
    T.Q4_1: 64,
    T.Q5_0: 64,
    T.Q5_1: 64,
    T.Q8_0: 64,
    T.Q4_K: 512,
    T.Q5_K: 512,
    T.Q6_K: 512,
}

# Byte offsets of the f16 scale fields inside one block (ggml's block_* structs).
SCALE_OFFSETS = {
    T.Q4_0: [0],  # d, qs[16]
    T.Q4_1: [0, 2],  # d, m, qs[16]
    T.Q5_0: [0],  # d, qh[4], qs[16]
    T.Q5_1: [0, 2],  # d, m, qh[4], qs[16]
    T.Q8_0: [0],  # d, qs[32] (int8)
    T.Q4_K: [0, 2],  # d, dmin, scales[12], qs[128]
    T.Q5_K: [0, 2],  # d, dmin, scales[12], qh[32], qs[128]
    T.Q6_K: [208],  # ql[128], qh[64], scales[16] (int8), d
}

# Scale categories, cycled over the blocks: (low, high) magnitude, drawn log-uniformly, and a sign.
CATEGORIES = [
    ("tiny", 1e-5, 1e-4, +1),
    ("ordinary", 0.01, 1.0, +1),
    ("large", 1.0, 100.0, +1),
    ("negative ordinary", 0.01, 1.0, -1),
    ("zero", 0.0, 0.0, +1),
    ("negative large", 1.0, 100.0, -1),
    ("negative tiny", 1e-5, 1e-4, -1),
]


def draw_scale(rng: np.random.Generator, category: int) -> np.float16:
    _, low, high, sign = CATEGORIES[category % len(CATEGORIES)]
    if high == 0.0:
        return np.float16(0.0)
    value = np.float16(sign * np.exp(rng.uniform(np.log(low), np.log(high))))
    assert np.isfinite(value)
    return value


def quant_blocks(rng: np.random.Generator, qtype: T) -> np.ndarray:
    """ROWS rows of random blocks of `qtype`, shape (ROWS, bytes per row), uint8."""
    per_block, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = ROWS * ELEMENTS_PER_ROW[qtype] // per_block
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for b in range(n_blocks):
        for field, offset in enumerate(SCALE_OFFSETS[qtype]):
            # The second field (dmin / m) runs two categories ahead, so a tiny d meets a large
            # minimum (the add then rounds), d == 0 a nonzero minimum and the other way round.
            scale = draw_scale(rng, b + 2 * field)
            blocks[b, offset : offset + 2] = np.frombuffer(np.array([scale], "<f2").tobytes(), np.uint8)
    return blocks.reshape(ROWS, -1)


def f16_values(rng: np.random.Generator) -> np.ndarray:
    n = ROWS * ELEMENTS_PER_ROW[T.F16]
    specials = np.array([0x0000, 0x8000, 0x0001, 0x83FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00], np.uint16)
    bits = rng.integers(0, 0x10000, size=n - len(specials), dtype=np.uint16)
    bits = np.where((bits & 0x7C00) == 0x7C00, bits & ~np.uint16(0x4000), bits)  # no inf / NaN
    return np.concatenate([specials, bits]).astype("<u2")


def bf16_values(rng: np.random.Generator) -> np.ndarray:
    n = ROWS * ELEMENTS_PER_ROW[T.BF16]
    specials = np.array([0x0000, 0x8000, 0x0001, 0x807F, 0x0080, 0x7F7F, 0xFF7F, 0x3F80], np.uint16)
    bits = rng.integers(0, 0x10000, size=n - len(specials), dtype=np.uint16)
    bits = np.where((bits & 0x7F80) == 0x7F80, bits & ~np.uint16(0x4000), bits)  # no inf / NaN
    return np.concatenate([specials, bits]).astype("<u2")


def main() -> None:
    assert sys.byteorder == "little", "gguf.quants views multi-byte fields in native byte order"
    print(f"gguf {importlib.metadata.version('gguf')}, numpy {np.__version__}")
    rng = np.random.default_rng(SEED)
    total = 0
    for qtype in ELEMENTS_PER_ROW:
        if qtype in (T.F16, T.BF16):
            values = f16_values(rng) if qtype == T.F16 else bf16_values(rng)
            data = np.frombuffer(values.tobytes(), np.uint8).reshape(ROWS, -1)
        else:
            data = quant_blocks(rng, qtype)
        expected = gguf.quants.dequantize(data, qtype)
        assert expected.dtype == np.float32
        assert expected.shape == (ROWS, ELEMENTS_PER_ROW[qtype]), expected.shape
        assert np.isfinite(expected).all(), qtype.name
        name = qtype.name.lower()
        (OUT / f"{name}.bin").write_bytes(data.tobytes())
        (OUT / f"{name}.f32").write_bytes(expected.astype("<f4").tobytes())
        size = data.nbytes + expected.nbytes
        total += size
        print(f"{name:5} code {qtype.value:2}  {expected.size:5} elements  {data.nbytes:5} + {expected.nbytes:5} bytes")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
