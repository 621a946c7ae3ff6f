#!/usr/bin/env python3
"""Independent checks of ONNX files written by `simclr export`, with the `onnx` and
`onnxruntime` Python packages (pip install onnx onnxruntime==1.31.1).

    python3 scripts/check_onnx.py encoder.onnx [more.onnx ...]
        onnx.checker.check_model(full_check=True) on each file, and the weights against the
        metadata's weights_sha256; prints opset, IR version, node counts by type, inputs,
        outputs and metadata.
    python3 scripts/check_onnx.py encoder.onnx --input x.npy --expect h.npy [--tolerance 1e-4]
        also runs x.npy (float32 NCHW) through Python's onnxruntime and compares the first
        output (or --output NAME) with h.npy (e.g. the output of `simclr embed`).

Exits non-zero on the first failure, naming the file.
"""
import argparse
import collections
import hashlib
import json
import struct
import sys

import numpy as np
import onnx


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--input", help="float32 .npy of preprocessed NCHW images")
    p.add_argument("--expect", help=".npy the first output must match")
    p.add_argument("--output", help="the output --expect holds (default: the first)")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--json", action="store_true", help="one JSON line per model")
    args = p.parse_args()
    for path in args.models:
        model = onnx.load(path)
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:  # the checker's own exception types vary by version
            print(f"{path}: onnx.checker failed: {e}", file=sys.stderr)
            return 1
        ops = collections.Counter(n.op_type for n in model.graph.node)
        shape = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        info = {
            "file": path,
            "ir_version": model.ir_version,
            "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0],
            "ops": dict(sorted(ops.items())),
            "inputs": {i.name: shape(i) for i in model.graph.input},
            "outputs": {o.name: shape(o) for o in model.graph.output},
            "metadata": {m.key: m.value for m in model.metadata_props},
        }
        recorded = info["metadata"].get("weights_sha256")
        if recorded is not None:
            h = hashlib.sha256()
            for t in model.graph.initializer:
                h.update(t.name.encode() + b"\0" + struct.pack(f"<{len(t.dims)}q", *t.dims) + t.raw_data)
            if h.hexdigest() != recorded:
                print(f"{path}: weights hash to {h.hexdigest()}, metadata weights_sha256 says {recorded}", file=sys.stderr)
                return 1
            info["weights_sha256_verified"] = True
        if args.json:
            print(json.dumps(info))
        else:
            print(f"{path}: checker ok (full_check), IR {info['ir_version']}, opset {info['opset']}")
            print(f"  ops {info['ops']}")
            print(f"  inputs {info['inputs']} outputs {info['outputs']}")
            for k, v in info["metadata"].items():
                print(f"  {k} = {v}")
        if args.input:
            import onnxruntime as ort

            x = np.load(args.input)
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            name = args.output or session.get_outputs()[0].name
            y = session.run([name], {session.get_inputs()[0].name: x})[0]
            if args.expect:
                expect = np.load(args.expect)
                if expect.shape != y.shape:
                    print(f"{path}: onnxruntime gave {y.shape}, expected {expect.shape}", file=sys.stderr)
                    return 1
                diff = float(np.max(np.abs(expect - y))) if y.size else 0.0
                print(f"  python onnxruntime vs {args.expect}: max |diff| {diff:.2e}")
                if not diff <= args.tolerance:
                    print(f"{path}: difference {diff:.2e} above {args.tolerance:g}", file=sys.stderr)
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
