"""Every TernaryConv kernel path of the C++ library against the numpy reference op.

The library picks a kernel per node at session creation (docs/runtime.md, "Kernels"):
``MICRONET_TERNARY_KERNEL`` (auto | sparse | dense | portable | direct) and ``MICRONET_TERNARY_ISA``
(auto | avx512 | avx2 | portable) force it, ``MICRONET_TERNARY_LOG=1`` prints the choice on stderr.
Each path here runs in the real onnxruntime over strides, paddings, odd widths, batch sizes, every
optional input and several sparsities, including the geometries that select the kernels' special
cases (lane-shifted groups, whole-row tiles, bands of several tiles, the direct fallback).
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest

from micronet_onnx.runtime.session import create_session
from tests.helpers.cpu import HAS_AVX2, HAS_AVX512
from tests.helpers.nodes import assert_close, random_node

KERNEL_ENV = "MICRONET_TERNARY_KERNEL"
ISA_ENV = "MICRONET_TERNARY_ISA"
LOG_ENV = "MICRONET_TERNARY_LOG"



# (kernel, isa) paths; an ISA the CPU lacks is skipped (the portable one runs everywhere)
PATHS = [
    ("sparse", "avx512"),
    ("sparse", "avx2"),
    ("sparse", "portable"),
    ("dense", "avx512"),
    ("dense", "avx2"),
    ("dense", "portable"),
    ("portable", "auto"),
    ("direct", "auto"),
    ("auto", "auto"),
]


def _skip_missing_isa(isa: str) -> None:
    if isa == "avx512" and not HAS_AVX512:
        pytest.skip("this CPU has no AVX-512")
    if isa == "avx2" and not HAS_AVX2:
        pytest.skip("this CPU has no AVX2")


# name -> (node factory, x shape). Sparsity 0 / 0.5 / 1, strides 1 and 2, asymmetric padding,
# dilation, odd widths, widths below / at / above a vector, batch 1 and N, every optional input.
CASES = {
    "same_32x32_c16_sp50": (
        lambda r: random_node(r, 12, 16, (3, 3), pads=(1, 1, 1, 1), sparsity=0.5, affine=True, relu=True),
        (1, 16, 32, 32),
    ),
    "same_16x16_c24_sp90_batch3": (
        lambda r: random_node(r, 20, 24, (3, 3), pads=(1, 1, 1, 1), sparsity=0.9, affine=True),
        (3, 24, 16, 16),
    ),
    "same_8x8_c40_sp50_lane_shift": (
        lambda r: random_node(r, 17, 40, (3, 3), pads=(1, 1, 1, 1), sparsity=0.5, affine=True, relu=True),
        (2, 40, 8, 8),
    ),
    "same_sparsity_0": (
        lambda r: random_node(r, 9, 7, (3, 3), pads=(1, 1, 1, 1), sparsity=0.0, bias=True),
        (2, 7, 12, 12),
    ),
    "same_sparsity_100": (
        lambda r: random_node(r, 5, 6, (3, 3), pads=(1, 1, 1, 1), sparsity=1.0, affine=True, relu=True),
        (2, 6, 9, 9),
    ),
    "odd_width_7": (lambda r: random_node(r, 6, 5, (3, 3), pads=(1, 1, 1, 1), sparsity=0.5), (2, 5, 11, 7)),
    "odd_width_33_tall": (
        lambda r: random_node(r, 4, 9, (3, 3), pads=(1, 1, 1, 1), sparsity=0.5, scale=True),
        (1, 9, 37, 33),
    ),
    "width_1": (lambda r: random_node(r, 3, 4, (3, 3), pads=(1, 1, 1, 1), sparsity=0.3), (2, 4, 10, 1)),
    "stride2_32x32": (
        lambda r: random_node(r, 16, 8, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), sparsity=0.5, affine=True,
                              relu=True),
        (2, 8, 32, 32),
    ),
    "stride2_odd_15": (
        lambda r: random_node(r, 6, 5, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), sparsity=0.5),
        (1, 5, 15, 15),
    ),
    "stride_1x2_asym_pads_dilation": (
        lambda r: random_node(r, 5, 3, (3, 3), strides=(1, 2), pads=(0, 2, 1, 0), dilations=(2, 1), sparsity=0.4),
        (2, 3, 11, 13),
    ),
    "valid_no_padding": (lambda r: random_node(r, 7, 6, (3, 3), sparsity=0.5, bias=True), (2, 6, 10, 19)),
    "kernel_5x5_same": (
        lambda r: random_node(r, 6, 10, (5, 5), pads=(2, 2, 2, 2), sparsity=0.5, affine=True),
        (1, 10, 16, 16),
    ),
    "kernel_1x1_stride2": (lambda r: random_node(r, 9, 13, (1, 1), strides=(2, 2)), (2, 13, 8, 8)),
    "maps_dead_channels_relu": (
        lambda r: random_node(r, 10, 12, (3, 3), pads=(1, 1, 1, 1), sparsity=0.8, x_channels=20, m_out=16,
                              affine=True, relu=True),
        (2, 20, 16, 16),
    ),
    "maps_bias_only_stride2": (
        lambda r: random_node(r, 5, 8, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), x_channels=11, m_out=9,
                              bias=True, relu=True),
        (1, 11, 14, 14),
    ),
    "group_2": (lambda r: random_node(r, 6, 3, (3, 3), group=2, pads=(1, 1, 1, 1), sparsity=0.3), (2, 6, 9, 9)),
    "too_large_for_scratch_falls_back": (
        lambda r: random_node(r, 3, 40, (3, 3), pads=(1, 1, 1, 1), sparsity=0.9),
        (1, 40, 3, 1500),
    ),
    # format version 2: the input affine is applied while the input rows are copied (before the zero
    # padding), the residual added before the activation, on every path
    "v2_block_conv1_32x32_sp90": (
        lambda r: random_node(r, 16, 16, (3, 3), pads=(1, 1, 1, 1), sparsity=0.9, affine=True, relu=True,
                              in_affine=True),
        (2, 16, 32, 32),
    ),
    "v2_block_conv2_residual_sp50": (
        lambda r: random_node(r, 12, 16, (3, 3), pads=(1, 1, 1, 1), sparsity=0.5, affine=True, residual=True),
        (2, 16, 16, 16),
    ),
    "v2_all_inputs_lane_shift_relu": (
        lambda r: random_node(r, 17, 40, (3, 3), pads=(1, 1, 1, 1), sparsity=0.5, affine=True, relu=True,
                              in_affine=True, residual=True),
        (2, 40, 8, 8),
    ),
    "v2_all_inputs_stride2_maps_dead_channels": (
        lambda r: random_node(r, 10, 12, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), sparsity=0.8, x_channels=20,
                              m_out=16, affine=True, relu=True, in_affine=True, residual=True),
        (3, 20, 15, 15),
    ),
    "v2_in_bias_only_asym_pads_dilation": (
        lambda r: random_node(r, 5, 3, (3, 3), strides=(1, 2), pads=(0, 2, 1, 0), dilations=(2, 1), sparsity=0.4,
                              in_bias=True),
        (2, 3, 11, 13),
    ),
    "v2_sparsity_0_in_scale_residual": (
        lambda r: random_node(r, 9, 7, (3, 3), pads=(1, 1, 1, 1), sparsity=0.0, bias=True, in_scale=True,
                              residual=True),
        (2, 7, 12, 12),
    ),
    "v2_sparsity_100_residual_relu": (
        lambda r: random_node(r, 5, 6, (3, 3), pads=(1, 1, 1, 1), sparsity=1.0, affine=True, relu=True,
                              in_affine=True, residual=True),
        (2, 6, 9, 9),
    ),
    "v2_group_2_all_inputs": (
        lambda r: random_node(r, 6, 3, (3, 3), group=2, pads=(1, 1, 1, 1), sparsity=0.3, in_affine=True,
                              residual=True, relu=True),
        (2, 6, 9, 9),
    ),
    "v2_width_1_in_affine": (
        lambda r: random_node(r, 3, 4, (3, 3), pads=(1, 1, 1, 1), sparsity=0.3, in_affine=True, residual=True),
        (2, 4, 10, 1),
    ),
    # low sparsity (once summed in complement forms, now as every other row), with maps, dead rows,
    # strides and every v2 input
    "complement_sp0_maps_dead_stride2_all_inputs": (
        lambda r: random_node(r, 10, 12, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), sparsity=0.0, x_channels=20,
                              m_out=16, affine=True, relu=True, in_affine=True, residual=True),
        (2, 20, 15, 15),
    ),
    "complement_sp20_8x8_lane_shift": (
        lambda r: random_node(r, 24, 40, (3, 3), pads=(1, 1, 1, 1), sparsity=0.2, affine=True, in_affine=True,
                              residual=True),
        (1, 40, 8, 8),
    ),
    "complement_sp30_32x32_maps": (
        lambda r: random_node(r, 16, 16, (3, 3), pads=(1, 1, 1, 1), sparsity=0.3, x_channels=19, m_out=20,
                              affine=True, relu=True),
        (2, 19, 32, 32),
    ),
    "v2_too_large_for_scratch_in_affine": (
        lambda r: random_node(r, 3, 40, (3, 3), pads=(1, 1, 1, 1), sparsity=0.9, in_affine=True, residual=True),
        (1, 40, 3, 1500),
    ),
}


@pytest.mark.parametrize("kernel,isa", PATHS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_path_matches_reference(ops_library, monkeypatch, case, kernel, isa):
    _skip_missing_isa(isa)
    monkeypatch.setenv(KERNEL_ENV, kernel)
    monkeypatch.setenv(ISA_ENV, isa)
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    factory, x_shape = CASES[case]
    node = factory(rng)
    x = rng.standard_normal(x_shape).astype(np.float32)
    model = node.model().SerializeToString()
    ref = node.reference(x)
    for threads in (1, 2):
        (y,) = create_session(model, threads=threads).run(None, node.feeds(x))
        assert y.dtype == np.float32
        assert_close(y, ref, f"{case}: kernel={kernel} isa={isa} threads={threads}")


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("kernel,isa", [("sparse", "auto"), ("dense", "auto"), ("sparse", "portable")])
def test_large_batch_and_thread_counts_agree_bitwise(ops_library, monkeypatch, kernel, isa, v2):
    """Work items depend on the geometry and batch only: 1, 2 or 3 threads give identical bits."""
    monkeypatch.setenv(KERNEL_ENV, kernel)
    monkeypatch.setenv(ISA_ENV, isa)
    rng = np.random.default_rng(5)
    node = random_node(rng, 24, 16, (3, 3), pads=(1, 1, 1, 1), sparsity=0.7, affine=True, relu=True,
                       in_affine=v2, residual=v2)
    x = rng.standard_normal((9, 16, 16, 16)).astype(np.float32)
    model = node.model().SerializeToString()
    outs = [create_session(model, threads=t).run(None, node.feeds(x))[0] for t in (1, 2, 3)]
    assert_close(outs[0], node.reference(x), f"{kernel}/{isa} batch 9")
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    feeds = {k: v[4:5] for k, v in node.feeds(x).items()}  # image 4 (and its residual) alone
    (one,) = create_session(model, threads=2).run(None, feeds)
    assert_close(one, outs[0][4:5], "batch 1 vs the same image in a batch of 9")


def test_nan_and_inf_inputs(ops_library, monkeypatch):
    """Non-finite inputs follow one rule on every kernel (docs/runtime.md, "Numerics"): a zero weight
    is no term, so a NaN or inf under it does not reach the output; under a non-zero weight it
    propagates (NaN stays NaN through the ReLU). Outputs the reference computes as finite agree; the
    full rule on every instruction set is tests/test_kernel_hardening.py."""
    rng = np.random.default_rng(9)
    node = random_node(rng, 8, 6, (3, 3), pads=(1, 1, 1, 1), sparsity=0.5, affine=True, relu=True)
    x = rng.standard_normal((1, 6, 16, 16)).astype(np.float32)
    x[0, 2, 5, 7] = np.nan
    x[0, 3, 10, 0] = np.inf
    ref = node.reference(x)
    finite = np.isfinite(ref)
    model = node.model().SerializeToString()
    outs = {}
    for kernel in ("direct", "sparse", "portable", "dense"):
        monkeypatch.setenv(KERNEL_ENV, kernel)
        (outs[kernel],) = create_session(model, threads=1).run(None, {"X": x})
        np.testing.assert_allclose(outs[kernel][finite], ref[finite], rtol=1e-4, atol=1e-4, err_msg=kernel)
    assert np.isnan(outs["direct"]).any()
    for kernel in ("sparse", "portable", "dense"):
        np.testing.assert_array_equal(np.isnan(outs[kernel]), np.isnan(outs["direct"]), err_msg=kernel)


# ---------------------------------------------------------------------------------------------
# dispatch


def _logged_choice(capfd, model: bytes) -> list[str]:
    create_session(model, threads=1)
    err = capfd.readouterr().err
    return re.findall(r"micronet: TernaryConv node 'tc': kernel=(\w+) isa=(\w+)", err)


def _logged_line(capfd, model: bytes) -> str:
    create_session(model, threads=1)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("micronet: ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("stride,sparsity,expected", [
    # unit stride: the sparse kernel below 75 % non-zeros (it adds every non-zero weight; the complement
    # forms that once made it cheaper at low sparsity were dropped, see test_no_complement_rows)
    (1, 0.0, "dense"), (1, 0.3, "sparse"), (1, 0.5, "sparse"), (1, 0.9, "sparse"), (1, 1.0, "sparse"),
    # strided: the dense kernel from an effective density of 0.4
    (2, 0.0, "dense"), (2, 0.5, "dense"), (2, 0.7, "sparse"), (2, 0.8, "sparse"), (2, 0.95, "sparse"),
])
def test_auto_dispatch_by_effective_density(ops_library, monkeypatch, capfd, stride, sparsity, expected):
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    monkeypatch.delenv(ISA_ENV, raising=False)
    monkeypatch.setenv(LOG_ENV, "1")
    node = random_node(np.random.default_rng(3), 32, 32, (3, 3), strides=(stride, stride), pads=(1, 1, 1, 1),
                       sparsity=sparsity)
    line = _logged_line(capfd, node.model().SerializeToString())
    kernel, isa = re.search(r"kernel=(\w+) isa=(\w+)", line).groups()
    assert kernel == expected, line
    assert isa == ("avx512" if HAS_AVX512 else "avx2" if HAS_AVX2 else "portable")


@pytest.mark.parametrize("size,sparsity,expected", [
    # planes of at most 64 outputs: dense from an effective density of 0.55 (33 % zeros: about 2/3)
    (8, 0.33, "dense"), (8, 0.0, "dense"), (8, 0.9, "sparse"),
    # larger planes (and planes the graph does not state): sparse up to 0.75
    (16, 0.33, "sparse"), (None, 0.33, "sparse"),
])
def test_auto_dispatch_uses_the_stated_plane_size(ops_library, monkeypatch, capfd, size, sparsity, expected):
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    monkeypatch.setenv(LOG_ENV, "1")
    node = random_node(np.random.default_rng(6), 48, 48, (3, 3), pads=(1, 1, 1, 1), sparsity=sparsity)
    model = node.model()
    if size is not None:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_value = size
        dims[3].dim_value = size
    line = _logged_line(capfd, model.SerializeToString())
    assert re.search(r"kernel=(\w+)", line).group(1) == expected, line
    assert f"plane={size * size if size else 0}" in line, line


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_no_complement_rows(ops_library, monkeypatch, capfd, sparsity):
    """Every row adds its positive and negative taps: no row is summed from its zero taps and a
    window sum (that form cancels, and its error grew with the inputs under zero weights), so the
    effective density is the non-zero share at every sparsity."""
    monkeypatch.setenv(KERNEL_ENV, "sparse")
    monkeypatch.setenv(LOG_ENV, "1")
    node = random_node(np.random.default_rng(5), 32, 32, (3, 3), pads=(1, 1, 1, 1), sparsity=sparsity)
    line = _logged_line(capfd, node.model().SerializeToString())
    density = float(re.search(r"density=([0-9.]+)", line).group(1))
    effective = float(re.search(r"effective=([0-9.]+)", line).group(1))
    rows = int(re.search(r"complement_rows=(\d+)", line).group(1))
    assert rows == 0 and effective == density, line


def test_auto_dispatch_grouped_conv_is_sparse(ops_library, monkeypatch, capfd):
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    monkeypatch.setenv(LOG_ENV, "1")
    node = random_node(np.random.default_rng(4), 8, 4, (3, 3), group=2, pads=(1, 1, 1, 1), sparsity=0.0)
    assert _logged_choice(capfd, node.model().SerializeToString())[0][0] == "sparse"


@pytest.mark.parametrize("kernel,isa,expected", [
    ("sparse", "auto", ("sparse", None)),
    ("dense", "portable", ("dense", "portable")),
    ("portable", "auto", ("sparse", "portable")),
    ("direct", "auto", ("direct", "scalar")),
])
def test_forced_choice_is_logged(ops_library, monkeypatch, capfd, kernel, isa, expected):
    monkeypatch.setenv(KERNEL_ENV, kernel)
    monkeypatch.setenv(ISA_ENV, isa)
    monkeypatch.setenv(LOG_ENV, "1")
    node = random_node(np.random.default_rng(2), 8, 8, (3, 3), pads=(1, 1, 1, 1), sparsity=0.9)
    (got,) = _logged_choice(capfd, node.model().SerializeToString())
    assert got[0] == expected[0]
    if expected[1] is not None:
        assert got[1] == expected[1]


def test_no_log_by_default(ops_library, monkeypatch, capfd):
    monkeypatch.delenv(LOG_ENV, raising=False)
    node = random_node(np.random.default_rng(2), 4, 4, (3, 3), pads=(1, 1, 1, 1))
    create_session(node.model().SerializeToString(), threads=1)
    assert "micronet:" not in capfd.readouterr().err


@pytest.mark.parametrize("name,value", [(KERNEL_ENV, "fastest"), (ISA_ENV, "sse9")])
def test_bad_environment_value_fails_session_creation(ops_library, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    node = random_node(np.random.default_rng(1), 4, 4, (3, 3), pads=(1, 1, 1, 1))
    # plain onnxruntime: the library's own check (create_session may refuse the value before it)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(ops_library)
    with pytest.raises(Exception, match=f"TernaryConv node 'tc'.*{name}='{value}'"):
        ort.InferenceSession(node.model().SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.skipif(HAS_AVX512, reason="this CPU has AVX-512")
def test_forcing_a_missing_isa_fails_cleanly(ops_library, monkeypatch):
    monkeypatch.setenv(ISA_ENV, "avx512")
    node = random_node(np.random.default_rng(1), 4, 4, (3, 3), pads=(1, 1, 1, 1))
    with pytest.raises(Exception, match="no AVX-512"):
        create_session(node.model().SerializeToString())
