"""The supermask update of a bundle: what a device that has the architecture needs to rebuild the model.

For a run trained as a supermask (transfer's `supermask.enabled`), the bundle gets, beside its usual models:
- `supermask.npz`: the update (edgeppt.supermask: seed, per masked layer its scale, packed mask bits and the
  generations of the kept weights), compressed;
- `supermask.onnx`: the float32 graph with the masked layers' weights left out (external data that
  `runner.py materialize` writes), everything else (normalisation, biases, head) inline;
- `supermask_format.py`: edgeppt.supermask itself (numpy only), which the runner imports to materialise;
- `supermask.base.npz`, when the mask was trained over a base model (the PP weights, C's) rather than seeded
  weights: what the device must already hold; it is not part of the update's size.
Export materialises the update exactly as the device will, checks the weights equal the trained model's bit
for bit and the materialised graph's logits equal PyTorch's, and records the sizes beside model.onnx's.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edgeppt import supermask as fmt
from edgeppt.errors import EdgepptError
from edgeppt.runs import atomic_write_bytes

from .onnx_export import LoadedRun, check_parity, export_onnx, parity

UPDATE_FILE, TEMPLATE_FILE, FORMAT_FILE = "supermask.npz", "supermask.onnx", "supermask_format.py"
BASE_FILE, WEIGHTS_FILE = "supermask.base.npz", "supermask.weights.bin"


def update_arrays(run: LoadedRun) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    record = run.checkpoint["supermask"]
    arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else np.array(v) for k, v in record["update"].items()}
    base = {k: v.numpy() for k, v in record["base"].items()} if record.get("base") else None
    return arrays, base


def weights_blob(weights: dict[str, np.ndarray], names: list[str]) -> bytes:
    """The masked layers' weights, float32 little-endian, in the update's order: the external data file."""
    return b"".join(np.ascontiguousarray(weights[n], dtype="<f4").tobytes() for n in names)


def write_supermask(run: LoadedRun, root: Path, reference: np.ndarray, test_x: np.ndarray,
                    dynamic_batch: bool) -> dict[str, Any]:
    arrays, base = update_arrays(run)
    names = [str(n) for n in arrays["names"]]
    weights = fmt.unpack(arrays, base)
    state = run.model.state_dict()
    for n in names:  # the update must rebuild exactly what was trained
        if n not in state or not np.array_equal(weights[n], state[n].numpy()):
            raise EdgepptError(f"the supermask update does not rebuild layer {n} of the trained model")
    with tempfile.TemporaryDirectory() as tmp:
        plain = export_onnx(run.model, Path(tmp) / "plain.onnx", run.input_shape, dynamic_batch, optimize=False)
        proto = onnx.load(str(plain))
    for item in [*proto.graph.node, *proto.graph.initializer, *proto.graph.input, *proto.graph.output]:
        del item.metadata_props[:]  # the exporter's stack traces: most of an unoptimised graph's bytes
    del proto.graph.value_info[:]
    inits = {t.name: t for t in proto.graph.initializer}
    missing = [n for n in names if n not in inits]
    if missing:
        raise EdgepptError(f"the exported graph lacks the masked weights {missing[:3]}")
    offset, layout = 0, []
    for n in names:
        t, length = inits[n], int(weights[n].size) * 4
        t.ClearField("raw_data")
        del t.float_data[:]
        del t.external_data[:]
        for key, value in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        t.data_location = onnx.TensorProto.EXTERNAL
        layout.append([n, offset, length])
        offset += length
    blob = weights_blob(weights, names)
    atomic_write_bytes(root / TEMPLATE_FILE, proto.SerializeToString())
    atomic_write_bytes(root / UPDATE_FILE, fmt.to_npz(arrays))
    shutil.copyfile(fmt.__file__, root / FORMAT_FILE)
    if base is not None:
        atomic_write_bytes(root / BASE_FILE, fmt.to_npz(base))
    # Materialise as the device will (the weights beside the template), run it, then take the weights away again.
    (root / WEIGHTS_FILE).write_bytes(blob)
    try:
        par = parity(reference, root / TEMPLATE_FILE, test_x)
    finally:
        (root / WEIGHTS_FILE).unlink()
    check_parity(par, "the materialised supermask model")
    sizes = {f: (root / f).stat().st_size for f in (UPDATE_FILE, TEMPLATE_FILE)}
    masked = sum(int(weights[n].size) for n in names)
    return {"update": UPDATE_FILE, "template": TEMPLATE_FILE, "format_module": FORMAT_FILE,
            "base": BASE_FILE if base is not None else None, "weights_file": WEIGHTS_FILE, "layout": layout,
            "weights_sha256": hashlib.sha256(blob).hexdigest(), "masked_weights": masked,
            "update_bytes": sizes[UPDATE_FILE], "template_bytes": sizes[TEMPLATE_FILE],
            "over_the_air_bytes": sizes[UPDATE_FILE] + sizes[TEMPLATE_FILE], "parity": par}
