#!/usr/bin/env python3
"""Golden vectors for MXFP8 quantization, from an independent implementation.

Element rounding (float -> FP8 E4M3, round to nearest even, saturating) and the E8M0 scale
encoding come from ml_dtypes (PyPI); the scale rules are computed here in exact arithmetic
(Python's float64 frexp), straight from their definitions:
  rceil: the smallest power of two >= amax / 448
  ocp:   2^(floor(log2 amax) - 8)   (OCP MX v1.0; elements then clamp to ±448)
Output: tests/data/mxfp8_golden.json with f32 input bits (all bf16-representable, so the same
vectors test f32 and bf16 inputs) and the expected element and scale bytes for both rules.

    pip install numpy ml_dtypes && python3 tests/data/make_mxfp8_golden.py
"""
import json
import math
import os

import ml_dtypes
import numpy as np

BLOCK = 32
E4M3_MAX = 448.0


def bf16_values(v):
    return np.asarray(v, dtype=np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def adversarial_blocks(rng):
    blocks = []
    def block(values):
        b = np.zeros(BLOCK, dtype=np.float32)
        b[: len(values)] = values
        rng.shuffle(b)
        blocks.append(bf16_values(b))
    for k in (-20, -3, 0, 5, 60):
        s = 2.0 ** k
        block(np.concatenate([[448 * s], rng.normal(0, 100 * s, BLOCK - 1)]))       # amax exactly 448·2^k
        block(np.concatenate([[-448 * s * 1.0078125], rng.normal(0, 50 * s, 7)]))   # just above (next bf16)
        block(np.concatenate([[448 * s * 0.99609375], rng.normal(0, 50 * s, 7)]))   # just below
        block(np.concatenate([[300 * s], [-299 * s], rng.normal(0, s, 30)]))        # mixed signs
    block([])                                                    # all zero
    block([3.0])                                                 # a single nonzero element
    block([-1e-30])
    block(rng.normal(0, 1e-39, BLOCK))                          # f32 subnormals (bf16-representable)
    block(np.concatenate([[2.0 ** -133], rng.normal(0, 2.0 ** -135, 10)]))
    block(rng.normal(0, 1e37, BLOCK))                           # huge values
    block([3.0e38, -1.0])
    block(np.concatenate([[500.0], rng.normal(0, 100, 31)]))    # ocp saturates, rceil does not
    block(rng.uniform(-1, 1, BLOCK) * 2.0 ** -6)                # e4m3 subnormal range at unit scale
    return blocks


def scale_exponent(amax, rule):
    if amax == 0:
        return -127
    m, e = math.frexp(float(amax))  # amax = m·2^e, m in [0.5, 1): floor(log2 amax) = e - 1
    floor_log2 = e - 1
    if rule == "ocp":
        x = floor_log2 - 8
    else:
        r = float(amax) / E4M3_MAX  # exact enough: a 24-bit amax over 448 is never within 2^-53 of a power of two
        rm, re = math.frexp(r)
        x = re - 1 if rm == 0.5 else re
    return max(-127, min(127, x))


def quantize(block, rule):
    amax = float(np.max(np.abs(block)))
    x = scale_exponent(amax, rule)
    scale_byte = np.float32(2.0 ** x).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    scaled = np.clip(block.astype(np.float64) * 2.0 ** -x, -E4M3_MAX, E4M3_MAX)
    elems = scaled.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    return int(scale_byte), elems


def main():
    rng = np.random.default_rng(20261123)
    blocks = adversarial_blocks(rng)
    while len(blocks) < 96:  # ordinary blocks of many magnitudes
        blocks.append(bf16_values(rng.normal(0, 10.0 ** rng.uniform(-6, 6), BLOCK)))
    rows = np.concatenate(blocks).reshape(-1, 4 * BLOCK)  # K = 128
    out = {"k": rows.shape[1], "input_f32_bits": rows.view(np.uint32).ravel().tolist()}
    for rule in ("rceil", "ocp"):
        scales, elems = [], []
        for b in rows.reshape(-1, BLOCK):
            s, e = quantize(b, rule)
            scales.append(s)
            elems.extend(int(v) for v in e)
        out[rule] = {"scales": scales, "elems": elems}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mxfp8_golden.json")
    with open(path, "w") as f:
        json.dump(out, f)
    print(f"wrote {path}: {rows.shape[0]} rows x {rows.shape[1]}")


if __name__ == "__main__":
    main()
