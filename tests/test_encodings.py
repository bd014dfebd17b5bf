"""The assignment encodings of format version 3 (micronet_onnx/format/encodings/): round trips, the
sizes against the entropy bound, the cheapest choice, and every rejection of a malformed stream by
the Python node model (the C++ library's side: tests/test_encodings_runtime.py)."""

from __future__ import annotations

import numpy as np
import pytest

from micronet_onnx.format import encodings
from micronet_onnx.format import spec as tf
from micronet_onnx.format.encodings.bits import pack_fields
from micronet_onnx.format.node import TernaryConvNode, read_encoding
from tests.helpers.nodes import random_node

STREAMED = ("rows", "entropy")


def _codes(shape, sparsity, seed=0, p_pos=0.5) -> np.ndarray:
    r = np.random.default_rng(seed).random(shape)
    nz = r >= sparsity
    pos = np.random.default_rng(seed + 1).random(shape) < p_pos
    return np.where(nz, np.where(pos, 1, -1), 0).astype(np.int8)


SHAPES = [((4, 3, 3, 3), 0.5), ((1, 1, 1, 1), 0.0), ((1, 1, 1, 1), 1.0), ((7, 5, 3, 1), 0.9), ((16, 16, 3, 3), 0.0),
          ((16, 16, 3, 3), 1.0), ((32, 32, 3, 3), 0.9), ((3, 200, 3, 3), 0.995), ((64, 1, 1, 1), 0.3)]


@pytest.mark.parametrize("name", tf.ENCODINGS)
@pytest.mark.parametrize(("shape", "sparsity"), SHAPES)
def test_round_trip(name, shape, sparsity):
    codes = _codes(shape, sparsity, seed=len(shape) + int(100 * sparsity))
    first, second = encodings.encode(name, codes)
    assert first.dtype == np.uint8 and first.ndim == 1
    assert (second is None) == (name != "masks")
    back = encodings.decode(name, first, second, shape)
    assert back.dtype == np.int8 and back.shape == shape
    np.testing.assert_array_equal(back, codes)


def test_skewed_signs_and_one_symbol_layers():
    for codes in (_codes((8, 8, 3, 3), 0.7, p_pos=0.97), np.ones((3, 4, 3, 3), np.int8),
                  -np.ones((3, 4, 3, 3), np.int8), np.zeros((2, 2, 1, 1), np.int8)):
        for name in STREAMED:
            np.testing.assert_array_equal(encodings.decode(name, *encodings.encode(name, codes), codes.shape), codes)


def test_entropy_is_within_a_few_bytes_of_the_bound_and_rows_below_masks_when_sparse():
    codes = _codes((64, 64, 3, 3), 0.9, seed=5)
    bound = encodings.entropy_bound_bits(codes)
    sizes = {n: 8 * encodings.stored_bytes(encodings.encode(n, codes)) for n in tf.ENCODINGS}
    header = 8 * (tf.ENTROPY_HEADER_BYTES + tf.ENTROPY_STATE_BYTES)
    assert bound <= sizes["entropy"] <= bound * 1.002 + header + 8
    assert sizes["entropy"] < sizes["rows"] < sizes["masks"]
    assert sizes["rows"] <= 1.05 * bound
    name, arrays = encodings.cheapest(codes)
    assert name == "entropy" and encodings.stored_bytes(arrays) == sizes["entropy"] // 8
    dense = _codes((8, 8, 3, 3), 0.0, seed=6)  # no zeros: the masks' 2 bits per weight are hard to beat
    assert encodings.cheapest(dense, ("masks", "rows"))[0] == "masks"
    assert encodings.cheapest(codes, ("masks",))[0] == "masks"


def test_entropy_bound_is_n_times_h():
    codes = np.array([0, 0, 1, -1], np.int8)
    assert encodings.entropy_bound_bits(codes) == pytest.approx(4 * 1.5)
    assert encodings.entropy_bound_bits(np.zeros(9, np.int8)) == 0.0


def test_registry_names_and_values():
    assert tuple(encodings.REGISTRY) == tf.ENCODINGS == ("masks", "rows", "entropy")
    assert [encodings.value_of(n) for n in tf.ENCODINGS] == [0, 1, 2]
    assert [encodings.name_of(v) for v in range(3)] == list(tf.ENCODINGS)
    with pytest.raises(tf.FormatError, match="not one of 0..2"):
        encodings.name_of(3)
    with pytest.raises(tf.FormatError, match="unknown encoding"):
        encodings.encode("zip", np.zeros(1, np.int8))


# -- rejections (the node model) --------------------------------------------------------------

SHAPE = (6, 5, 3, 3)


def _stream(name: str) -> np.ndarray:
    return encodings.encode(name, _codes(SHAPE, 0.8, seed=9))[0]


def _bad(name, stream, match):
    with pytest.raises(tf.FormatError, match=match):
        encodings.decode(name, np.asarray(stream, np.uint8), None, SHAPE)


def test_rows_rejections():
    s = _stream("rows")
    _bad("rows", s[:1], "no header")
    _bad("rows", s[:-1], "truncated")
    _bad("rows", np.concatenate([s, [0]]), "bytes after its last field")
    _bad("rows", np.concatenate([[57], s[1:]]), "header out of range")
    _bad("rows", np.concatenate([s[:1], [58], s[2:]]), "header out of range")
    count = np.concatenate([[s[0], 8], np.full(4, 0xFF, np.uint8)])  # first row counts 255 > 45
    _bad("rows", count, "counts 255 non-zeros in a row of 45")
    gap = np.concatenate([[0, 1], pack_fields([1, 60], [1, 61], [False, True])[0]])  # k 0: a gap of 60
    _bad("rows", gap, "gap longer than the row")
    col = np.concatenate([[5, 1], pack_fields([1, 1, 31, 1], [1, 2, 5, 1], [False, True, False, False])[0]])
    _bad("rows", col, "column past its end")  # k 5: gap 32 + 31 = 63 in a row of 45
    padded = s.copy()
    r = encodings.rows
    _, gaps, _, counts = r._layout(r.decode(s, None, SHAPE))
    used = counts.size * int(s[1]) + int((gaps >> int(s[0])).sum()) + gaps.size * (int(s[0]) + 2)
    if used % 8:
        padded[-1] |= np.uint8(0x80)
        _bad("rows", padded, "padding")
    with pytest.raises(tf.FormatError, match="sign.* must be absent"):
        encodings.decode("rows", s, np.zeros(1, np.uint8), SHAPE)
    with pytest.raises(tf.FormatError, match="1-D uint8"):
        encodings.decode("rows", s.astype(np.int8), None, SHAPE)


def test_entropy_rejections():
    s = _stream("entropy")
    _bad("entropy", s[:7], "no header")
    _bad("entropy", s[:-1], "truncated|corrupt")
    _bad("entropy", np.concatenate([s, [7]]), "corrupt")
    _bad("entropy", np.concatenate([[0xFF, 0xFF], s[2:]]), "frequencies 65535")
    _bad("entropy", np.concatenate([s[:4], [0, 0, 0, 1], s[8:]]), "initial state out of range")
    _bad("entropy", np.concatenate([s[:4], [0x80, 0, 0, 0], s[8:]]), "initial state out of range")
    with pytest.raises(tf.FormatError, match="more than 2147483648 weights"):
        encodings.decode("entropy", s, None, (1 << 24, 1 << 8, 1, 1))


def test_fuzzed_streams_decode_or_fail_in_one_line():
    rng = np.random.default_rng(0)
    for name in STREAMED:
        s = _stream(name)
        accepted = 0
        for _ in range(300):
            m = _mutate(rng, s)
            try:
                codes = encodings.decode(name, m, None, SHAPE)
            except tf.FormatError as e:
                assert "\n" not in str(e) and str(e)
                continue
            accepted += 1
            assert codes.shape == SHAPE and np.isin(codes, (-1, 0, 1)).all()
            # an accepted stream is a valid encoding: re-encoding the codes gives a stream of that encoding
            np.testing.assert_array_equal(encodings.decode(name, *encodings.encode(name, codes), SHAPE), codes)
        assert accepted < 300


def _mutate(rng: np.random.Generator, s: np.ndarray) -> np.ndarray:
    """One random truncation, extension, bit flip or byte overwrite of ``s``."""
    m = s.copy()
    kind = rng.integers(4)
    if kind == 0:
        return m[: rng.integers(m.size)]
    if kind == 1:
        return np.concatenate([m, rng.integers(0, 256, rng.integers(1, 4), dtype=np.uint8)])
    if kind == 2:
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(m.size * 8)
            m[i // 8] ^= np.uint8(1 << (i % 8))
        return m
    m[rng.integers(m.size)] = rng.integers(256)
    return m


# -- the node model ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", tf.ENCODINGS)
def test_node_round_trip_in_every_encoding(name):
    h = random_node(np.random.default_rng(3), 5, 4, (3, 3), pads=(1, 1, 1, 1), sparsity=0.7, affine=True)
    node = TernaryConvNode.from_tensors(h.attrs, *h.input_arrays(), name="tc", x="X", output="Y")
    node.choose_encoding(name)
    assert node.encoding == name and node.version == tf.OPSET_VERSION == 3
    proto, inits = node.to_onnx()
    assert read_encoding(proto, 3) == name
    consts = {t.name: __import__("onnx").numpy_helper.to_array(t) for t in inits}
    names = list(proto.input)
    if name == "masks":
        assert names[1] == "tc.mask" and names[2] == "tc.sign"
    else:
        assert names[1] == "tc.stream" and names[2] == ""
    back = TernaryConvNode.from_onnx(proto, consts, 3)
    assert back.encoding == name
    np.testing.assert_array_equal(back.codes, node.codes)
    again, inits2 = back.to_onnx()
    assert again.SerializeToString() == proto.SerializeToString()
    assert [t.SerializeToString() for t in inits2] == [t.SerializeToString() for t in inits]
    assert back.stored_assignment_bytes() == sum(consts[n].nbytes for n in names[1:3] if n)


def test_auto_picks_the_smallest_and_older_versions_store_masks():
    h = random_node(np.random.default_rng(4), 16, 16, (3, 3), sparsity=0.9)
    node = TernaryConvNode.from_tensors(h.attrs, *h.input_arrays())
    sizes = {}
    for name in tf.ENCODINGS:
        sizes[name] = node.choose_encoding(name).stored_assignment_bytes()
    assert sizes[node.choose_encoding("auto").encoding] == min(sizes.values())
    v2 = TernaryConvNode.from_tensors(h.attrs, *h.input_arrays(), version=2)
    assert v2.choose_encoding("auto").encoding == "masks"
    proto, _ = v2.to_onnx()
    assert tf.ATTR_ENCODING not in {a.name for a in proto.attribute}
    v2.encoding = "rows"
    with pytest.raises(tf.FormatError, match="encoding rows came with micronet opset 3"):
        v2.validate()


def test_encoding_attribute_rules():
    h = random_node(np.random.default_rng(5), 4, 3, (3, 3), sparsity=0.6)
    node = TernaryConvNode.from_tensors(h.attrs, *h.input_arrays(), name="tc", x="X", output="Y")
    node.choose_encoding("entropy")
    proto, inits = node.to_onnx()
    consts = {t.name: __import__("onnx").numpy_helper.to_array(t) for t in inits}
    with pytest.raises(tf.FormatError, match="attribute encoding came with micronet opset 3"):
        TernaryConvNode.from_onnx(proto, consts, 2)
    for a in proto.attribute:
        if a.name == tf.ATTR_ENCODING:
            a.i = 7
    with pytest.raises(tf.FormatError, match="encoding = 7 is not one of"):
        TernaryConvNode.from_onnx(proto, consts, 3)
    for a in proto.attribute:
        if a.name == tf.ATTR_ENCODING:
            a.i = 0  # masks, but input 2 is absent
    with pytest.raises(tf.FormatError, match=r"input 2 \(sign\) is required"):
        TernaryConvNode.from_onnx(proto, consts, 3)
    for a in proto.attribute:
        if a.name == tf.ATTR_ENCODING:
            a.i = 1  # rows reading an entropy stream
    with pytest.raises(tf.FormatError, match="rows stream"):
        TernaryConvNode.from_onnx(proto, consts, 3)
    del proto.input[1:]
    proto.input.extend(["", "", "tc.centroids"])
    with pytest.raises(tf.FormatError, match=r"input 1 \(stream\) is required"):
        TernaryConvNode.from_onnx(proto, consts, 3)
