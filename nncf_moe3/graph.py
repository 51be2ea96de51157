"""Finding compressible weights in an ``ov.Model`` and the MoE structure around them.

A *weight target* is a MatMul whose input 1 is a float Constant (optionally through one Convert) — 2-D
``[N, K]`` (dense layers) or 3-D ``[E, N, K]`` (routed experts in the tiled MoE form) — or an embedding Gather
whose data input is a float Constant. For 3-D experts we also locate, by walking the graph:

* the per-token input ``x[T, K]`` when the expert input is ``Tile(x)`` (gate / up projections), so calibration
  statistics do not have to capture the ``[E, T, K]`` tiled tensor;
* the routing tensor ``r[E, T, 1]`` that multiplies the expert outputs before ``ReduceSum(axis 0)``: a token
  is routed to expert e iff ``r[e, t] != 0``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger("nncf_moe3")

FLOAT_TYPES = ("f32", "f16", "bf16")


@dataclass
class WeightTarget:
    name: str  # friendly name of the weight Constant
    op: object  # consumer MatMul / Gather node
    port: int  # consumer input port holding the weight
    const: object  # the float Constant node
    convert: object | None  # Convert between Constant and consumer (f16 -> f32 IRs), if any
    shape: tuple  # constant shape as stored
    transpose_b: bool = True  # MatMul weight layout [.., N, K] (True) or [.., K, N] (False)
    kind: str = "matmul"  # "matmul" | "embedding"
    role: str = "other"
    act_source: object | None = None  # ov.Output whose value is the per-token input activation
    act_tiled: bool = False  # act_source is x[T, K] shared by all experts (Tile removed)
    routing: object | None = None  # ov.Output of the routing tensor r[E, T(,1)] for experts
    extra: dict = field(default_factory=dict)

    @property
    def is_expert(self) -> bool:
        return len(self.shape) == 3

    @property
    def nk_shape(self) -> tuple:
        """Shape in [.., N, K] orientation (reduction axis last)."""
        if self.kind == "embedding":
            return self.shape
        if self.transpose_b:
            return self.shape
        return (*self.shape[:-2], self.shape[-1], self.shape[-2])


def _src(node, port=0):
    return node.input(port).get_source_output().get_node()


def _float_const(node):
    """(Constant, Convert|None) if ``node`` is a float Constant or Convert(float Constant)."""
    t = node.get_type_name()
    if t == "Constant" and node.get_element_type().get_type_name() in FLOAT_TYPES:
        return node, None
    if t == "Convert":
        c = _src(node)
        if c.get_type_name() == "Constant" and c.get_element_type().get_type_name() in FLOAT_TYPES:
            return c, node
    return None, None


def _consumers(output):
    return [inp.get_node() for inp in output.get_target_inputs()]


def _find_routing(matmul, max_depth: int = 12):
    """Routing tensor multiplied into the expert outputs before ReduceSum over experts (BFS downstream)."""
    frontier = [(matmul, 0)]
    visited = set()
    while frontier:
        node, depth = frontier.pop(0)
        if id(node) in visited or depth > max_depth:
            continue
        visited.add(id(node))
        for cons in _consumers(node.output(0)):
            if cons.get_type_name() == "ReduceSum":
                mul = node
                if mul.get_type_name() != "Multiply":
                    continue
                for port in (0, 1):
                    other = mul.input(port).get_source_output()
                    if id(other.get_node()) not in visited:
                        return other
            frontier.append((cons, depth + 1))
    return None


def _tiled_input(matmul):
    """x[T, K] when the MatMul's input 0 is Reshape(Tile(x)) (possibly with Reshapes around the Tile)."""
    node = _src(matmul, 0)
    for _ in range(4):
        t = node.get_type_name()
        if t == "Tile":
            src = node.input(0).get_source_output()
            return src
        if t in ("Reshape", "Unsqueeze", "Squeeze", "Convert"):
            node = _src(node, 0)
            continue
        break
    return None


def find_weight_targets(model, include_embeddings: bool = True) -> list[WeightTarget]:
    """All weight targets of ``model`` in topological order (see module docstring)."""
    from nncf_moe3.ir_stats import role_of

    targets, seen = [], set()
    for op in model.get_ordered_ops():
        t = op.get_type_name()
        if t == "MatMul":
            const, conv = _float_const(_src(op, 1))
            if const is None or len(const.get_shape()) not in (2, 3):
                continue
            if id(const) in seen:
                continue
            attrs = op.get_attributes()
            tb = bool(attrs.get("transpose_b", False))
            if attrs.get("transpose_a", False):
                continue
            seen.add(id(const))
            shape = tuple(const.get_shape())
            name = const.get_friendly_name()
            wt = WeightTarget(name, op, 1, const, conv, shape, tb, "matmul", role_of(name, shape),
                              act_source=op.input(0).get_source_output())
            if len(shape) == 3:
                tiled = _tiled_input(op)
                if tiled is not None:
                    wt.act_source, wt.act_tiled = tiled, True
                wt.routing = _find_routing(op)
                if wt.routing is None:
                    logger.info("No routing tensor found for expert weight %s: all tokens count for every expert", name)
            targets.append(wt)
        elif t == "Gather" and include_embeddings:
            const, conv = _float_const(_src(op, 0))
            if const is None or len(const.get_shape()) != 2 or id(const) in seen:
                continue
            axis = _src(op, 2)
            if axis.get_type_name() != "Constant" or int(np.asarray(axis.get_data()).ravel()[0]) != 0:
                continue
            seen.add(id(const))
            name = const.get_friendly_name()
            targets.append(WeightTarget(name, op, 0, const, conv, tuple(const.get_shape()), True, "embedding",
                                        "embedding"))
    return targets


def make_names_unique(model) -> None:
    """Give every node a unique friendly name (needed to find nodes again in a cloned model)."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        n = op.get_friendly_name()
        if n in counts:
            counts[n] += 1
            op.set_friendly_name(f"{n}_{counts[n]}")
        else:
            counts[n] = 0
