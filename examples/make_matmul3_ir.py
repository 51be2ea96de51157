"""Write an IR of a chain of random dense ``MatMul3`` ops (for kernel A/B timings of one codebook mode, e.g. NF3).

    python examples/make_matmul3_ir.py /tmp/dense_nf3.xml --mode nf3 --k 4096 --layers 4 --group-size 128
    python examples/ab_builds.py /tmp/dense_nf3.xml LIB:isa=avx2_int8 LIB:isa=avx2 LIB --m 128 --tokens 2

The input is a float ``[?, K]`` tensor; every op maps K -> K with random k3 codes, f16 scales and the mode's zero
point / codebook (``openvino_ext.reference.random_case``).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="path of the .xml to write")
    ap.add_argument("--mode", default="nf3", choices=["int3_sym", "int3_asym", "nf3"])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import openvino as ov
    from openvino import opset13 as ops
    from openvino.utils.node_factory import NodeFactory

    import openvino_ext
    from openvino_ext import reference as R

    factory = NodeFactory()
    factory.add_extension(str(openvino_ext.library_path(build=True)))
    rng = np.random.default_rng(args.seed)
    p = ops.parameter([-1, args.k], np.float32)
    h = p.output(0)
    for _ in range(args.layers):
        operands = R.random_case(rng, args.k, args.k, args.group_size, args.mode)
        h = factory.create("MatMul3", [h] + [ops.constant(a).output(0) for a in operands],
                           {"group_size": args.group_size, "k3_version": R.K3_VERSION}).output(0)
    ov.save_model(ov.Model([h], [p]), args.out, compress_to_fp16=False)
    print(f"{args.out}: {args.layers} x MatMul3 {args.k}x{args.k}, {args.mode}, group size {args.group_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
