"""u3 packing: known answers for both layouts, round trips, and bit-exactness against OpenVINO itself."""

import numpy as np
import openvino as ov
import pytest

from openvino_ext import u3


@pytest.mark.parametrize("layout", u3.LAYOUTS)
def test_known_answer(layout):
    assert u3.pack(np.arange(8), layout).tobytes() == u3.KNOWN_ANSWERS[layout]
    assert u3.unpack(np.frombuffer(u3.KNOWN_ANSWERS[layout], np.uint8), 8, layout).tolist() == list(range(8))


def test_known_answer_more_vectors():
    # split: all-7 -> FF FF FF; value 4 only in bit 2.
    assert u3.pack([7] * 8, "split").tobytes() == b"\xff\xff\xff"
    assert u3.pack([4, 0, 0, 0, 0, 0, 0, 0], "split").tobytes() == b"\x00\x00\x80"
    assert u3.pack([4, 0, 0, 0, 0, 0, 0, 0], "tight").tobytes() == b"\x04\x00\x00"
    # tight: one value -> one byte; three values -> 9 bits -> two bytes.
    assert u3.pack([5], "tight").tobytes() == b"\x05"
    assert u3.pack([1, 2, 3], "tight").tobytes() == bytes([1 | 2 << 3 | (3 & 3) << 6, 3 >> 2])


@pytest.mark.parametrize("layout", u3.LAYOUTS)
@pytest.mark.parametrize("count", [0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4097])
def test_roundtrip(layout, count):
    v = np.random.default_rng(count).integers(0, 8, count, dtype=np.uint8)
    packed = u3.pack(v, layout)
    assert packed.dtype == np.uint8 and packed.size == u3.packed_size(count, layout)
    np.testing.assert_array_equal(u3.unpack(packed, count, layout), v)


@pytest.mark.parametrize("count", [1, 8, 13, 1027])
def test_convert_layout(count):
    v = np.random.default_rng(1).integers(0, 8, count)
    tight = u3.convert_layout(u3.pack(v, "split"), count, "split", "tight")
    np.testing.assert_array_equal(tight, u3.pack(v, "tight"))


def test_layout_detected_matches_openvino():
    const = ov.op.Constant(ov.Type.u3, ov.Shape([8]), list(range(8)))
    assert bytes(u3.constant_bytes(const)[:3]) == u3.KNOWN_ANSWERS[u3.LAYOUT]
    assert u3.detect_layout() == u3.LAYOUT


@pytest.mark.parametrize("count", [1, 3, 7, 8, 9, 31, 100, 257, 4099])
def test_pack_matches_openvino_constant(count):
    """Our packer produces exactly the bytes OpenVINO's own u3 Constant holds (installed layout)."""
    v = np.random.default_rng(count + 7).integers(0, 8, count)
    const = ov.op.Constant(ov.Type.u3, ov.Shape([count]), v.tolist())
    raw = u3.constant_bytes(const)
    n = u3.packed_size(count)
    np.testing.assert_array_equal(raw[:n], u3.pack(v))
    np.testing.assert_array_equal(u3.unpack(raw, count), v)


@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 3, 33), (4, 16, 8)])
def test_constant_convert_on_cpu(shape):
    """u3.constant -> Convert(f32) evaluated by the OpenVINO CPU plugin gives back the values bit-exactly."""
    v = np.random.default_rng(sum(shape)).integers(0, 8, shape)
    param = ov.opset13.parameter([1], ov.Type.f32)
    out = ov.opset13.add(ov.opset13.convert(u3.constant(v), ov.Type.f32), param)
    compiled = ov.Core().compile_model(ov.Model([out], [param]), "CPU")
    np.testing.assert_array_equal(compiled(np.zeros(1, np.float32))[0], v.astype(np.float32))


def test_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        u3.pack([0, 8])
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        u3.pack([-1])
    with pytest.raises(TypeError):
        u3.pack([0.5])
    with pytest.raises(ValueError, match="layout"):
        u3.pack([1], "packed")
    with pytest.raises(ValueError, match="bytes"):
        u3.unpack(np.zeros(2, np.uint8), 8, "split")
