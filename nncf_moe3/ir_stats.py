"""Storage statistics of an OpenVINO model: bits per weight (scales and zero points included) by tensor role.

Every weight is the constant subgraph feeding input 1 of a MatMul (or input 0 of an embedding Gather):
``Constant -> Convert -> [Subtract zp] -> Multiply scale -> [Reshape] -> [Convert]`` or a codebook ``Gather``.
All Constants in that subgraph are counted with their stored element width (u3 = 3 bits, f16 = 16 ...),
so bits/weight includes scales, zero points and codebooks; a scalar zero point shared by a tensor is counted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

_PASS_THROUGH = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Gather", "Unsqueeze", "Squeeze", "Add",
                 "Concat", "VariadicSplit", "Split", "Slice", "StridedSlice"}

_SHAPE_PORTS = {"Reshape": (1,), "Transpose": (1,), "Gather": (2,), "Unsqueeze": (1,), "Squeeze": (1,),
                "Slice": (1, 2, 3, 4), "StridedSlice": (1, 2, 3), "VariadicSplit": (1, 2), "Split": (1,)}


@dataclass
class WeightInfo:
    name: str
    shape: tuple
    role: str
    stored_bits: int
    elements: int
    dtypes: list = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        return self.stored_bits / max(1, self.elements)


def element_bits(ov_type) -> int:
    return int(ov_type.bitwidth)


def role_of(name: str, shape: tuple) -> str:
    """Coarse tensor role from the constant name and rank (3-D weights are routed experts)."""
    n = name.lower()
    if len(shape) == 3 or "experts" in n:
        if "down" in n or "w2" in n:
            return "expert_down"
        return "expert_gate_up"
    if "shared_expert_gate" in n:
        return "shared_expert_gate"
    if "shared_expert" in n:
        return "shared_expert"
    if "lm_head" in n:
        return "lm_head"
    if "embed" in n:
        return "embedding"
    if ".gate." in n or n.endswith(".gate.weight") or "router" in n or "mlp.gate" in n:
        return "router"
    if "attn" in n or "attention" in n:
        return "attention"
    return "other"


def _weight_constants(node, limit: int = 16) -> list:
    """Constants reachable upward from ``node`` through decompression ops (bounded depth)."""
    found = []
    stack = [(node, 0)]
    while stack:
        cur, depth = stack.pop()
        if cur.get_type_name() == "Constant":
            found.append(cur)
            continue
        if cur.get_type_name() not in _PASS_THROUGH or depth > limit:
            return []  # not a pure constant subgraph (depends on activations)
        for port, inp in enumerate(cur.inputs()):
            if port in _SHAPE_PORTS.get(cur.get_type_name(), ()):
                continue  # shape / axis / permutation operands are not weight storage
            stack.append((inp.get_source_output().get_node(), depth + 1))
    return found


def _main_constant(consts):
    return max(consts, key=lambda c: int(np.prod(list(c.get_shape()) or [1])))


def collect_weights(model) -> list[WeightInfo]:
    """One :class:`WeightInfo` per weight tensor feeding a MatMul (input 1) or embedding Gather (input 0)."""
    infos, seen = [], set()
    for op in model.get_ordered_ops():
        t = op.get_type_name()
        if t == "MatMul":
            port = 1
        elif t == "Gather" and op.input(0).get_partial_shape().is_static and len(op.input(0).get_shape()) == 2:
            port = 0
        else:
            continue
        src = op.input(port).get_source_output().get_node()
        consts = _weight_constants(src)
        if not consts:
            continue
        main = _main_constant(consts)
        if t == "Gather" and port == 0 and main.get_element_type().bitwidth <= 8 and len(main.get_shape()) <= 1:
            continue  # a codebook lookup inside a decompression subgraph, counted by its consumer
        key = main.get_friendly_name()
        if key in seen:
            continue
        seen.add(key)
        out_shape = tuple(op.input(port).get_shape()) if op.input(port).get_partial_shape().is_static else ()
        elements = int(np.prod(out_shape)) if out_shape else int(np.prod(list(main.get_shape())))
        stored = sum(int(np.prod(list(c.get_shape()) or [1])) * element_bits(c.get_element_type()) for c in consts)
        name = key
        infos.append(WeightInfo(name=name, shape=out_shape, role=role_of(name, out_shape), stored_bits=stored,
                                elements=elements, dtypes=sorted({str(c.get_element_type()) for c in consts})))
    return infos


def bits_summary(model) -> dict:
    """``{"all": bpw, "experts": bpw, <role>: bpw, ...}`` for an ``ov.Model`` (or an IR path)."""
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        import openvino as ov

        model = ov.Core().read_model(str(model))
    by_role = defaultdict(lambda: [0, 0])
    for w in collect_weights(model):
        by_role[w.role][0] += w.stored_bits
        by_role[w.role][1] += w.elements
    out = {}
    tot = [0, 0]
    exp = [0, 0]
    for role, (bits, n) in by_role.items():
        out[role] = bits / n
        tot[0] += bits
        tot[1] += n
        if role.startswith("expert"):
            exp[0] += bits
            exp[1] += n
    out["all"] = tot[0] / max(1, tot[1])
    out["experts"] = exp[0] / exp[1] if exp[1] else float("nan")
    out["weights"] = tot[1]
    return out
