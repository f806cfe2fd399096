"""The supermask update format: a network as a seed, one bit per weight and a few bytes more.

A supermask model (`edgeppt transfer --set supermask.enabled=true`) keeps the weights of its convolutions and
linear layers at values drawn from a seed (or at a base model the device already has, such as the PP weights)
and trains only which of them are used: a binary mask (edge-popup scores), while re-randomising some pruned
weights every few steps (IteRand). The layer's weight is then

    w = mask * (generation == 0 ? base : scale * sign(seed, layer, generation))

where `generation` counts how often a weight was re-drawn, and sign(...) is +-1 from a PCG64 stream keyed by
(seed, layer, generation): the same bits on any machine, with numpy alone. The base is itself
scale * sign(seed, layer, 0) for a seeded model. The update (`supermask.npz`) holds the seed, per masked layer
its scale, the packed mask bits and the generation of each kept weight; the bundle's small template graph
holds everything else (normalisation layers, biases, the head).

This file needs only numpy: it is copied into every export bundle whose model is a supermask, and the
device runner imports it to materialise the weights (`python3 runner.py materialize`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np

FORMAT = "edgeppt-supermask"
VERSION = 1


def signs(seed: int, layer: int, generation: int, n: int) -> np.ndarray:
    """n values of +-1 (float32) from the (seed, layer, generation) stream: raw PCG64 output, which numpy keeps
    stable across versions and platforms (its distributions are not promised to be)."""
    bits = np.random.PCG64(np.random.SeedSequence([seed, layer, generation])).random_raw(n)
    return np.where(bits & 1, 1.0, -1.0).astype(np.float32)


def layer_values(seed: int, layer: int, scale: float, generation: np.ndarray,
                 base: np.ndarray | None = None) -> np.ndarray:
    """The weights before masking: generation 0 is the base (seeded signs when none is given), generation g the
    g-th re-draw."""
    n = generation.size
    flat_gen = generation.reshape(-1)
    out = (scale * signs(seed, layer, 0, n)) if base is None else base.reshape(-1).astype(np.float32).copy()
    for g in np.unique(flat_gen):
        if g:
            pick = flat_gen == g
            out[pick] = scale * signs(seed, layer, int(g), n)[pick]
    return out.reshape(generation.shape)


def pack(seed: int, layers: list[dict], base: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The update's arrays (for np.savez): layers as dicts of name, scale, mask (bool array), generation
    (uint8 array, same shape). Only the kept weights' generations are stored."""
    out: dict[str, np.ndarray] = {"format": np.array(FORMAT), "version": np.array(VERSION),
                                  "seed": np.array(seed, np.int64), "names": np.array([d["name"] for d in layers]),
                                  "has_base": np.array(base is not None)}
    for j, d in enumerate(layers):
        mask = np.asarray(d["mask"], bool)
        gen = np.asarray(d["generation"], np.uint8)
        out[f"shape{j}"] = np.array(mask.shape, np.int64)
        out[f"scale{j}"] = np.array(d["scale"], np.float32)
        out[f"mask{j}"] = np.packbits(mask.reshape(-1))
        out[f"gen{j}"] = gen.reshape(-1)[mask.reshape(-1)]
    return out


def to_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The arrays as a compressed .npz file's bytes (the generations, mostly 0, compress well)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def unpack(arrays: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Layer name -> materialised float32 weights, from an update's arrays (and the base weights when the
    update was trained on a base model rather than a seed)."""
    if str(arrays["format"]) != FORMAT or int(arrays["version"]) != VERSION:
        raise ValueError(f"not an {FORMAT} version {VERSION} update")
    if bool(arrays["has_base"]) and base is None:
        raise ValueError("this update was trained on a base model: its base weights are needed")
    seed = int(arrays["seed"])
    out = {}
    for j, name in enumerate(str(n) for n in arrays["names"]):
        shape = tuple(int(v) for v in arrays[f"shape{j}"])
        n = int(np.prod(shape))
        mask = np.unpackbits(arrays[f"mask{j}"], count=n).astype(bool)
        gen = np.zeros(n, np.uint8)
        gen[mask] = arrays[f"gen{j}"]
        values = layer_values(seed, j, float(arrays[f"scale{j}"]), gen, None if base is None else base[name])
        out[name] = (values * mask).astype(np.float32).reshape(shape)
    return out
