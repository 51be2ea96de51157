"""Calibration statistics for data-aware 3-bit compression of an ``ov.Model``.

For every weight target we accumulate the input Hessian ``H = sum_t x_t x_t^T`` over calibration tokens —
for routed experts **per expert, from the tokens routed to that expert only** (``r[e, t] != 0``) — and the
number of tokens each expert received. Statistics are collected by running a clone of the model with extra
outputs on OpenVINO CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from nncf_moe3.graph import WeightTarget, make_names_unique

logger = logging.getLogger("nncf_moe3")


@dataclass
class WeightStats:
    hessian: torch.Tensor  # [B, K, K] float64 (B = experts, or 1)
    tokens: np.ndarray  # [B] tokens that contributed

    @property
    def diag(self) -> torch.Tensor:
        """Mean squared activation per input channel ``[B, K]`` (0 where no tokens)."""
        t = torch.from_numpy(np.maximum(self.tokens, 1)).to(torch.float64)[:, None]
        return torch.diagonal(self.hessian, dim1=-2, dim2=-1) / t


def _iterate(dataset, subset_size):
    items = dataset.get_inference_data() if hasattr(dataset, "get_inference_data") else dataset
    for i, item in enumerate(items):
        if subset_size is not None and i >= subset_size:
            break
        yield item


def collect_statistics(model, targets: list[WeightTarget], dataset, subset_size: int | None = 128,
                       progress: bool = True, routing_weighted: bool = True) -> dict[str, WeightStats]:
    """Run ``dataset`` (an ``nncf.Dataset`` or iterable of model inputs) through ``model`` on CPU and return
    per-target Hessians. Targets of kind "embedding" are skipped (no activation input)."""
    import openvino as ov
    from tqdm import tqdm

    make_names_unique(model)
    targets = [t for t in targets if t.kind == "matmul"]
    # Outputs to capture, deduplicated by (node name, port).
    wanted: dict[tuple[str, int], int] = {}
    for t in targets:
        for out in (t.act_source, t.routing):
            if out is not None:
                wanted.setdefault((out.get_node().get_friendly_name(), out.get_index()), len(wanted))
    clone = model.clone()
    by_name = {op.get_friendly_name(): op for op in clone.get_ops()}
    n_orig = len(clone.outputs)
    extra = [by_name[name].output(port) for (name, port) in wanted]
    clone.add_outputs(extra)
    compiled = ov.Core().compile_model(clone, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    stats: dict[str, WeightStats] = {}
    items = list(_iterate(dataset, subset_size))
    if not items:
        raise ValueError("The calibration dataset is empty")
    for item in tqdm(items, desc="calibration", disable=not progress, mininterval=2):
        request.infer(item)
        vals = [request.get_output_tensor(n_orig + i).data for i in range(len(wanted))]
        for t in targets:
            x = vals[wanted[(t.act_source.get_node().get_friendly_name(), t.act_source.get_index())]]
            k = t.nk_shape[-1]
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.float64)
            if t.is_expert:
                e = t.shape[0]
                if t.act_tiled:
                    xs = x.reshape(-1, k).unsqueeze(0).expand(e, -1, -1)
                else:
                    xs = x.reshape(e, -1, k)
                if t.routing is not None:
                    r = vals[wanted[(t.routing.get_node().get_friendly_name(), t.routing.get_index())]]
                    rw = torch.from_numpy(np.ascontiguousarray(r, dtype=np.float64).reshape(e, -1))
                    mask = rw != 0
                else:
                    rw = torch.ones(e, xs.shape[1], dtype=torch.float64)
                    mask = rw != 0
                # The expert's output is scaled by the routing weight, so its output error is too:
                # H_e = sum over routed tokens of r_t^2 x_t x_t^T (or plain routed-token Hessian).
                xm = xs * (rw[..., None] if routing_weighted else mask[..., None])
                h = xm.transpose(1, 2) @ xm
                cnt = mask.sum(1).numpy()
            else:
                xs = x.reshape(-1, k)
                h = (xs.T @ xs)[None]
                cnt = np.array([xs.shape[0]])
            if t.name in stats:
                stats[t.name].hessian += h
                stats[t.name].tokens += cnt
            else:
                stats[t.name] = WeightStats(h, cnt.astype(np.int64))
    return stats
