"""Interop between mxep and the `safetensors` package (PyPI).

  st_interop.py check DIR MANIFEST   files in DIR (written by mxckpt) must load in
                                     safetensors with the names, shapes, dtypes and
                                     bytes that mxep's reader reported in MANIFEST
  st_interop.py write DIR MANIFEST   writes a sharded gpt-oss-layout checkpoint (and
                                     extra dtypes) with safetensors and the manifest
                                     mxep must then read back

MANIFEST lines: name dtype dim0,dim1,... fnv1a64-hex
"""
import json
import os
import sys

import numpy as np
import safetensors
from safetensors import TensorSpec


def fnv(data):
    h = 1469598103934665603
    # vectorised FNV would change the result; loop in chunks of python ints
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def fnv_fast(data):
    # FNV-1a over bytes is sequential; numpy cannot help, but files here are small
    return fnv(bytes(data))


def shape_str(shape):
    return ",".join(str(int(d)) for d in shape) if len(shape) else "-"


def load_dir(d):
    """All tensors of DIR through the index (if any), as safetensors sees them."""
    out = {}
    idx = os.path.join(d, "model.safetensors.index.json")
    files = []
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        files = sorted(set(wm.values()))
    else:
        files = ["model.safetensors"]
    for fn in files:
        with open(os.path.join(d, fn), "rb") as f:
            for name, t in safetensors.deserialize(f.read()):
                if name in out:
                    raise SystemExit(f"tensor {name} in two shards")
                out[name] = t
    return out


def check(d, manifest):
    got = load_dir(d)
    want = {}
    with open(manifest) as f:
        for line in f:
            name, dtype, shape, h = line.split()
            want[name] = (dtype, shape, h)
    errors = []
    if set(got) != set(want):
        errors.append(f"names differ: only in safetensors {sorted(set(got) - set(want))[:5]}, "
                      f"only in mxep {sorted(set(want) - set(got))[:5]}")
    for name in sorted(set(got) & set(want)):
        t = got[name]
        dtype, shape, h = want[name]
        if t["dtype"] != dtype:
            errors.append(f"{name}: dtype {t['dtype']} vs mxep {dtype}")
        if shape_str(t["shape"]) != shape:
            errors.append(f"{name}: shape {t['shape']} vs mxep {shape}")
        if "%016x" % fnv_fast(t["data"]) != h:
            errors.append(f"{name}: bytes differ")
    for e in errors[:20]:
        print("st_interop:", e, file=sys.stderr)
    print(f"st_interop: checked {len(got)} tensors, {len(errors)} errors")
    return 1 if errors else 0


TORCH_NAMES = {"U8": "uint8", "BF16": "bfloat16", "F32": "float32", "F16": "float16",
               "F8_E4M3": "float8_e4m3fn", "I64": "int64"}


def write(d, manifest):
    rng = np.random.default_rng(1234)
    E, H, I = 4, 64, 32
    P = "model.layers.0.mlp."
    tensors = {
        P + "router.weight": ("BF16", [E, H]),
        P + "router.bias": ("BF16", [E]),
        P + "experts.gate_up_proj_blocks": ("U8", [E, 2 * I, H // 32, 16]),
        P + "experts.gate_up_proj_scales": ("U8", [E, 2 * I, H // 32]),
        P + "experts.gate_up_proj_bias": ("BF16", [E, 2 * I]),
        P + "experts.down_proj_blocks": ("U8", [E, H, I // 32, 16]),
        P + "experts.down_proj_scales": ("U8", [E, H, I // 32]),
        P + "experts.down_proj_bias": ("BF16", [E, H]),
        "extra.f8": ("F8_E4M3", [3, 5]),
        "extra.f32": ("F32", [7]),
        "extra.f16": ("F16", [2, 2]),
        "extra.i64": ("I64", [3]),
        "extra.scalar": ("F32", []),
        "extra.empty": ("U8", [0, 4]),
    }
    size = {"U8": 1, "BF16": 2, "F32": 4, "F16": 2, "F8_E4M3": 1, "I64": 8}
    bufs = {}
    for name, (dt, shape) in tensors.items():
        n = int(np.prod(shape)) * size[dt] if shape else size[dt]
        a = rng.integers(0, 256, size=n, dtype=np.uint8)
        if name.endswith("_scales"):
            a = rng.integers(118, 130, size=n, dtype=np.uint8)
        if dt == "BF16":  # finite values
            a = a.reshape(-1, 2)
            a[:, 1] = rng.integers(0x3A, 0x40, size=a.shape[0], dtype=np.uint8)
            a = a.reshape(-1).copy()
        bufs[name] = a
    names = list(tensors)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    os.makedirs(d)
    wm = {}
    for s, group in enumerate(shards):
        fn = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        spec = {}
        for name in group:
            dt, shape = tensors[name]
            a = bufs[name]
            spec[name] = TensorSpec(dtype=TORCH_NAMES[dt], shape=list(shape), data_ptr=a.ctypes.data,
                                    data_len=a.nbytes)
            wm[name] = fn
        safetensors.serialize_file(spec, os.path.join(d, fn), {"format": "pt"})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(b.nbytes for b in bufs.values())}, "weight_map": wm}, f)
    cfg = {"model_type": "gpt_oss", "num_local_experts": E, "experts_per_token": 2, "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": 1, "swiglu_limit": 7.0,
           "quantization_config": {"quant_method": "mxfp4"}}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(manifest, "w") as f:
        for name, (dt, shape) in tensors.items():
            f.write(f"{name} {dt} {shape_str(shape)} {fnv_fast(bufs[name].tobytes()):016x}\n")
    print(f"st_interop: wrote {len(tensors)} tensors in {len(shards)} shards")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("check", "write"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(check(sys.argv[2], sys.argv[3]) if sys.argv[1] == "check" else write(sys.argv[2], sys.argv[3]))
