"""OpenVINO ``u3`` packing, aware of the installed OpenVINO's bit layout.

OpenVINO changed how ``element::u3`` constants are laid out in memory (and in IR ``.bin`` files):

``"split"`` (OpenVINO <= 2026.4)
    Each 8 values -> 3 bytes. ``byte0`` holds the low 2 bits of v0..v3 (v0 in bits 7:6), ``byte1`` the low
    2 bits of v4..v7, ``byte2`` bit 2 of v0..v7 (v0 in bit 7). ``[0..7]`` -> ``1B 1B 0F``. Size ``ceil(n/8)*3``.
``"tight"`` (newer OpenVINO, PR #37430)
    LSB-first bit stream: value i occupies bits ``3i..3i+2``. ``[0..7]`` -> ``88 C6 FA``. Size ``ceil(3n/8)``.

:data:`LAYOUT` is detected at import by packing ``[0..7]`` through ``ov.op.Constant(ov.Type.u3, ...)`` and
comparing the raw bytes with both known answers. :func:`pack` / :func:`unpack` use it unless a layout is
given explicitly. An IR written by an OpenVINO with the other layout decodes to wrong values silently in
OpenVINO itself, so use :func:`convert_layout` to move packed data between layouts.
"""

from __future__ import annotations

import numpy as np

SPLIT = "split"
TIGHT = "tight"
LAYOUTS = (SPLIT, TIGHT)

#: Known answers: packing values 0..7.
KNOWN_ANSWERS = {SPLIT: bytes.fromhex("1B1B0F"), TIGHT: bytes.fromhex("88C6FA")}

_SPLIT_HI_SHIFTS = np.arange(7, -1, -1, dtype=np.uint8)


def packed_size(count: int, layout: str | None = None) -> int:
    """Number of bytes ``count`` u3 values occupy in ``layout``."""
    layout = _check_layout(layout)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return (count + 7) // 8 * 3 if layout == SPLIT else (3 * count + 7) // 8


def _check_layout(layout: str | None) -> str:
    layout = LAYOUT if layout is None else layout
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown u3 layout {layout!r}; expected one of {LAYOUTS}")
    return layout


def _check_values(values) -> np.ndarray:
    v = np.asarray(values)
    if v.size and not np.issubdtype(v.dtype, np.integer):
        raise TypeError(f"u3 values must be integers, got dtype {v.dtype}")
    v = v.ravel()
    if v.size and (v.min() < 0 or v.max() > 7):
        raise ValueError(f"u3 values must lie in [0, 7]; got range [{v.min()}, {v.max()}]")
    return v.astype(np.uint8)


def pack(values, layout: str | None = None) -> np.ndarray:
    """Pack integers in ``[0, 7]`` (any shape, flattened in C order) into u3 bytes (``uint8``, 1-D)."""
    layout = _check_layout(layout)
    v = _check_values(values)
    if layout == TIGHT:
        bits = ((v[:, None] >> np.arange(3, dtype=np.uint8)) & 1).astype(np.uint8)
        return np.packbits(bits.ravel(), bitorder="little")
    v = np.concatenate([v, np.zeros((-v.size) % 8, np.uint8)]).reshape(-1, 8)
    lo, hi = v & 3, (v >> 2) & 1
    b0 = (lo[:, 0] << 6) | (lo[:, 1] << 4) | (lo[:, 2] << 2) | lo[:, 3]
    b1 = (lo[:, 4] << 6) | (lo[:, 5] << 4) | (lo[:, 6] << 2) | lo[:, 7]
    b2 = np.bitwise_or.reduce(hi << _SPLIT_HI_SHIFTS, axis=1)
    return np.stack([b0, b1, b2], 1).astype(np.uint8).ravel()


def unpack(packed, count: int, layout: str | None = None) -> np.ndarray:
    """Unpack the first ``count`` u3 values from ``packed`` bytes; returns ``uint8`` values in ``[0, 7]``."""
    layout = _check_layout(layout)
    p = np.frombuffer(np.ascontiguousarray(packed, dtype=np.uint8).tobytes(), dtype=np.uint8)
    need = packed_size(count, layout)
    if p.size < need:
        raise ValueError(f"{count} u3 values need {need} bytes in the {layout!r} layout, got {p.size}")
    if layout == TIGHT:
        bits = np.unpackbits(p[:need], bitorder="little")[: 3 * count].reshape(count, 3)
        return (bits[:, 0] | (bits[:, 1] << 1) | (bits[:, 2] << 2)).astype(np.uint8)
    t = p[:need].reshape(-1, 3)
    lo = np.stack([(t[:, 0] >> s) & 3 for s in (6, 4, 2, 0)] + [(t[:, 1] >> s) & 3 for s in (6, 4, 2, 0)], 1)
    hi = (t[:, 2:3] >> _SPLIT_HI_SHIFTS) & 1
    return (lo | (hi << 2)).astype(np.uint8).ravel()[:count]


def convert_layout(packed, count: int, src: str, dst: str) -> np.ndarray:
    """Re-pack ``count`` u3 values from layout ``src`` to layout ``dst``."""
    return pack(unpack(packed, count, src), dst)


def constant(values, shape=None):
    """An ``ov.op.Constant`` of type u3 holding ``values`` (ints in [0, 7]) in the installed layout."""
    import openvino as ov

    v = _check_values(values)
    shape = list(np.shape(values) if shape is None else shape)
    if int(np.prod(shape)) != v.size:
        raise ValueError(f"shape {shape} does not hold {v.size} values")
    tensor = ov.Tensor(ov.Type.u3, ov.Shape(shape))
    raw = tensor.data.view(np.uint8).reshape(-1)
    raw[:] = pack(v, LAYOUT)[: raw.size]
    const = ov.op.Constant(tensor)
    return const


def constant_bytes(const) -> np.ndarray:
    """Raw bytes of an OpenVINO Constant (as stored in memory / in the IR ``.bin``)."""
    data = const.get_data() if hasattr(const, "get_data") else const.data
    return np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)


def detect_layout() -> str:
    """Pack ``[0..7]`` through ``ov.op.Constant(ov.Type.u3, ...)`` and match the bytes to a known layout."""
    import openvino as ov

    if not hasattr(ov.Type, "u3"):
        raise RuntimeError(f"OpenVINO {ov.__version__} has no u3 element type; nncf-moe3 needs OpenVINO >= 2026.0")
    const = ov.op.Constant(ov.Type.u3, ov.Shape([8]), list(range(8)))
    raw = bytes(constant_bytes(const)[:3])
    for name, answer in KNOWN_ANSWERS.items():
        if raw == answer:
            return name
    raise RuntimeError(
        f"OpenVINO {ov.__version__} packs u3 [0..7] as {raw.hex(' ')}, which matches no known layout "
        f"({ {k: v.hex(' ') for k, v in KNOWN_ANSWERS.items()} }); refusing to guess."
    )


LAYOUT: str = detect_layout()
