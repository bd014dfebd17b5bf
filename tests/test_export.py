"""Tests of the ONNX exporter (export/, docs/export.md): format round trips, dead channels, parity
against PyTorch in the numpy reference op and onnxruntime, sizes, and the `mnx export` CLI."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from micronet_onnx import export as mx
from micronet_onnx.format import spec as tf
from micronet_onnx.format.node import decode_codes
from micronet_onnx.format.reference_op import reference_evaluator
from micronet_onnx.model import MicroNet
from tests.helpers.models import save_checkpoint, tiny_model

# `from micronet_onnx import export` keeps isort's first-party grouping (the package lives in export/).
ExportError, ParityError, export_model = mx.ExportError, mx.ParityError, mx.export_model
default_probe, parity_mod = mx.default_probe, mx.parity



@pytest.fixture(scope="module")
def tmodel() -> MicroNet:
    return tiny_model(ternary=True)


@pytest.fixture(scope="module")
def ternary_export(tmodel, tmp_path_factory):
    path = tmp_path_factory.mktemp("exp") / "t.onnx"
    report = export_model(tmodel, path, ternary=True, encoding="masks")  # format 3 with version 2's bytes
    return path, report


@pytest.fixture(scope="module")
def ternary_export_v1(tmodel, tmp_path_factory):
    path = tmp_path_factory.mktemp("exp") / "t1.onnx"
    report = export_model(tmodel, path, ternary=True, format_version=1)
    return path, report


@pytest.fixture(scope="module")
def dense_export(tmodel, tmp_path_factory):
    path = tmp_path_factory.mktemp("exp") / "d.onnx"
    report = export_model(tmodel, path, ternary=False)
    return path, report


def _nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def _ort(path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


# ------------------------------------------------------------------------------------------------
# Format round trips and channel plans
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 3, 3), (7, 1, 1, 1), (2, 3, 5, 1), (13,)])
@pytest.mark.parametrize("kind", ["zeros", "nonzero", "random"])
def test_pack_unpack_round_trip(shape, kind):
    rng = np.random.default_rng(sum(shape))
    if kind == "zeros":
        codes = np.zeros(shape, dtype=np.int8)
    elif kind == "nonzero":
        codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=shape)
    else:
        codes = rng.choice(np.array([-1, 0, 0, 0, 1], dtype=np.int8), size=shape)
    packed = tf.pack_ternary(codes, -0.3, 0.7)
    numel, nnz = codes.size, int((codes != 0).sum())
    assert packed.mask.dtype == np.uint8 and packed.mask.size == (numel + 7) // 8
    assert packed.sign.dtype == np.uint8 and packed.sign.size == (nnz + 7) // 8
    assert packed.nnz == nnz
    np.testing.assert_array_equal(tf.unpack_codes(packed.mask, packed.sign, shape), codes)
    w = decode_codes(tf.unpack_codes(packed.mask, packed.sign, shape), packed.centroids)
    c = np.array([-0.3, 0.7], dtype=np.float16).astype(np.float32)
    expected = np.where(codes > 0, c[1], np.where(codes < 0, c[0], 0)).astype(np.float32)
    np.testing.assert_array_equal(w, expected)


def test_plan_channels_rules():
    codes = np.zeros((4, 3, 3, 3), dtype=np.int8)
    codes[0, 1, 0, 0] = 1  # live
    codes[2, 0, 1, 1] = -1  # reads only input 0, which is zero
    codes[3, 2, 2, 2] = 1  # live
    zero_in = np.array([True, False, False])
    dead_in = np.array([True, True, False])
    plan = mx.channels.plan_channels(codes, zero_inputs=zero_in, dead_inputs=dead_in)
    assert plan.out_rows.tolist() == [0, 3] and plan.in_channels.tolist() == [1, 2]
    assert plan.dead_all_zero == [1] and plan.dead_zero_inputs == [2]
    assert plan.dropped_inputs == [0] and plan.kept_constant_inputs == [1]
    assert plan.stored_codes.shape == (2, 2, 3, 3)
    np.testing.assert_array_equal(plan.stored_codes, codes[[0, 3]][:, [1, 2]])
    # Everything dead: one all-zero row and one input stay, since weight_shape must be positive.
    plan = mx.channels.plan_channels(np.zeros((2, 2, 1, 1), np.int8), zero_inputs=np.array([True, True]))
    assert plan.out_rows.tolist() == [0] and plan.in_channels.tolist() == [0]
    assert not plan.stored_codes.any() and plan.dead_rows == [0, 1]


# ------------------------------------------------------------------------------------------------
# The ternary file
# ------------------------------------------------------------------------------------------------


def test_ternary_file_layout(ternary_export, tmodel):
    path, report = ternary_export
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == mx.IR_VERSION == 8
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets == {"": mx.ONNX_OPSET, tf.DOMAIN: tf.OPSET_VERSION} and tf.OPSET_VERSION == 3
    assert report.format_version == 3
    tern = _nodes(model, tf.OP_TYPE)
    assert len(tern) == 2 * len(tmodel.blocks()) == len(report.ternary_layers)
    assert all(n.domain == tf.DOMAIN for n in tern)
    # version 2: bn1 and the skip connection live in the TernaryConv nodes
    assert not _nodes(model, "BatchNormalization") and not _nodes(model, "Add")
    assert len(_nodes(model, "Conv")) == 1 + 2  # stem + two shortcuts
    assert [n.op_type for n in model.graph.node[-4:]] == ["Relu", "GlobalAveragePool", "Flatten", "Gemm"]
    assert not _nodes(model, "Dropout")
    acts = {n.name: onnx.helper.get_attribute_value(a)
            for n in tern for a in n.attribute if a.name == "activation"}
    assert set(acts) == {n.name for n in tern if n.name.endswith("conv1")} and set(acts.values()) == {b"Relu"}
    for n in tern:
        for i, dtype in ((tf.IN_CENTROIDS, np.float16), (tf.IN_SCALE, np.float16), (tf.IN_BIAS, np.float16)):
            assert _init(model, n.input[i]).dtype == dtype
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in model.metadata_props}
    assert model.producer_name == "micronet-onnx"
    assert meta["micronet.format_version"] == "3"
    assert float(meta["micronet.ec2t_sparsity"]) == pytest.approx(report.ec2t_sparsity)


def _blocks(model: MicroNet) -> list[tuple[str, torch.nn.Module]]:
    stages = (model.stage1, model.stage2, model.stage3)
    return [(f"stage{si}.{bi}", blk) for si, st in enumerate(stages, 1) for bi, blk in enumerate(st)]


def test_version_2_blocks_fuse_bn1_and_the_skip_connection(ternary_export, tmodel):
    """conv1 carries bn1 (folded in float64, rounded once to float32, for its stored input channels) as
    in_scale / in_bias; conv2 reads the shortcut's value (the block input or the 1x1 Conv) as residual."""
    path, report = ternary_export
    model = onnx.load(path)
    nodes = {n.name: n for n in _nodes(model, tf.OP_TYPE)}
    producer = {o: n for n in model.graph.node for o in n.output}
    layers = {la.name: la for la in report.ternary_layers}
    for name, blk in _blocks(tmodel):
        c1, c2 = nodes[f"{name}.conv1"], nodes[f"{name}.conv2"]
        assert len(c1.input) == tf.IN_IN_BIAS + 1 and len(c2.input) == tf.IN_RESIDUAL + 1
        assert not c1.input[tf.IN_IN_CHANNELS]  # conv1 reads every channel of the stream
        scale, shift = mx.folding.bn_affine(blk.bn1, name)
        in_scale, in_bias = _init(model, c1.input[tf.IN_IN_SCALE]), _init(model, c1.input[tf.IN_IN_BIAS])
        assert in_scale.dtype == in_bias.dtype == np.float32
        np.testing.assert_array_equal(in_scale, scale.astype(np.float32))
        np.testing.assert_array_equal(in_bias, shift.astype(np.float32))
        assert all(not c2.input[i] for i in (tf.IN_IN_SCALE, tf.IN_IN_BIAS))
        residual = c2.input[tf.IN_RESIDUAL]
        block_input = c1.input[tf.IN_X]
        if blk.shortcut is None:
            assert residual == block_input
        else:
            sc = producer[residual]
            assert sc.op_type == "Conv" and sc.name == f"{name}.shortcut" and sc.input[0] == block_input
        assert layers[c1.name].input_affine and not layers[c1.name].residual
        assert layers[c2.name].residual and not layers[c2.name].input_affine
        for la, node in ((layers[c1.name], c1), (layers[c2.name], c2)):  # every constant input counted
            assert la.stored_bytes == sum(_init(model, i).nbytes for i in node.input[1:] if i and i != residual)
    # the next block reads conv2's output directly; the head reads the last one
    assert producer[model.graph.node[-4].input[0]].name == "stage3.1.conv2"


def test_version_1_layout(ternary_export_v1, ternary_export, tmodel):
    path, report = ternary_export_v1
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import} == {"": mx.ONNX_OPSET, tf.DOMAIN: 1}
    assert {p.key: p.value for p in model.metadata_props}["micronet.format_version"] == "1"
    assert report.format_version == 1 and "format version 1" in report.summary()[0]
    assert len(_nodes(model, "BatchNormalization")) == len(tmodel.blocks())  # bn1
    assert len(_nodes(model, "Add")) == len(tmodel.blocks())
    tern = _nodes(model, tf.OP_TYPE)
    assert len(tern) == 2 * len(tmodel.blocks())
    assert all(len(n.input) <= tf.MAX_INPUTS_V1 for n in tern)
    assert not any(la.input_affine or la.residual for la in report.ternary_layers)
    # the same weights and channel plans as version 2, which stores bn1 as 2 instead of 4 vectors
    v2 = {la.name: la for la in ternary_export[1].ternary_layers}
    for la in report.ternary_layers:
        assert la.stored_shape == v2[la.name].stored_shape and la.nnz == v2[la.name].nnz
        extra = 2 * 4 * la.stored_shape[1] if v2[la.name].input_affine else 0
        assert v2[la.name].stored_bytes == la.stored_bytes + extra
    # bn1 of C channels: four float32 vectors in version 1, two in version 2; nothing else differs
    model_v2 = onnx.load(ternary_export[0])
    init_bytes = [sum(onnx.numpy_helper.to_array(t).nbytes for t in m.graph.initializer) for m in (model, model_v2)]
    assert init_bytes[0] - init_bytes[1] == sum((4 - 2) * 4 * blk.bn1.num_features for blk in tmodel.blocks())
    assert report.file_bytes > ternary_export[1].file_bytes


def test_value_info_shapes_match_evaluation(ternary_export):
    """Every TernaryConv output carries value_info whose shape (symbolic batch) is what it computes."""
    path, _ = ternary_export
    model = onnx.load(path)
    vi = {v.name: v for v in model.graph.value_info}
    tern_outs = [n.output[0] for n in _nodes(model, tf.OP_TYPE)]
    for name in tern_outs:
        dims = vi[name].type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and all(d.dim_value > 0 for d in dims[1:])
    model.graph.output.extend(vi[n] for n in tern_outs)
    x = default_probe(batch=2).numpy()
    outs = reference_evaluator(model).run(tern_outs, {"input": x})
    for name, y in zip(tern_outs, outs, strict=True):
        assert list(y.shape) == [2, *(d.dim_value for d in vi[name].type.tensor_type.shape.dim[1:])]


def test_dead_channel_maps_emitted(ternary_export, tmodel):
    path, report = ternary_export
    model = onnx.load(path)
    nodes = {n.name: n for n in _nodes(model, tf.OP_TYPE)}
    layers = {la.name: la for la in report.ternary_layers}
    stages = (tmodel.stage1, tmodel.stage2, tmodel.stage3)
    blocks = [(f"stage{si}.{bi}", blk) for si, st in enumerate(stages, 1) for bi, blk in enumerate(st)]
    for name, blk in blocks:
        c1, c2 = nodes[f"{name}.conv1"], nodes[f"{name}.conv2"]
        m = blk.conv1.out_channels
        # conv1: rows 0..3 dead, stored via out_channels, M_out kept.
        out1 = _init(model, c1.input[tf.IN_OUT_CHANNELS])
        assert out1.dtype == np.int32 and not set(out1.tolist()) & {0, 1, 2, 3}
        assert layers[c1.name].constant_outputs[0] == 0.0 and layers[c1.name].constant_outputs[2] > 0
        attrs = tf.ConvAttrs.from_onnx({a.name: onnx.helper.get_attribute_value(a) for a in c1.attribute})
        assert attrs.m_out == m and attrs.m_stored == len(out1)
        # conv2: inputs 0, 1 dropped (relu(bias) == 0), 2, 3 kept (non-zero constant).
        in2 = _init(model, c2.input[tf.IN_IN_CHANNELS])
        assert in2.dtype == np.int32 and {2, 3} <= set(in2.tolist()) and not {0, 1} & set(in2.tolist())
        la2 = layers[c2.name]
        assert la2.dropped_inputs == [0, 1] and la2.kept_constant_inputs == [2, 3]
        # conv2 rows 1 (all zero) and 4 (reads only dropped input 0) are not stored.
        out2 = _init(model, c2.input[tf.IN_OUT_CHANNELS]).tolist()
        assert 1 in la2.dead_outputs and 4 in la2.dead_outputs_zero_inputs and not {1, 4} & set(out2)
        assert any("dropped" in r for r in la2.reasons()) and any("kept" in r for r in la2.reasons())


@pytest.mark.parametrize("version", [1, 2])
def test_ternary_parity_against_pytorch(ternary_export, ternary_export_v1, tmodel, version):
    path, report = ternary_export if version == 2 else ternary_export_v1
    p = report.parity
    assert p is not None and p.passed and p.evaluator == "reference"
    assert p.probe_shape == [8, 3, 32, 32] and p.top1_agreement == 1.0
    assert p.max_abs_diff <= 1e-5 * max(1.0, p.logit_scale)
    # An independent run on a fresh probe: the file computes the rounded model's function.
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    y = reference_evaluator(onnx.load(path)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = mx.folding.rounded_reference(tmodel)(x).numpy()
        plain = tmodel(x).numpy()
    np.testing.assert_allclose(y, ref, atol=1e-5 * np.abs(ref).max())
    # float16 rounding moves it, within the budget of the docs.
    assert 0 < np.abs(y - plain).max() <= parity_mod.tolerance(np.abs(plain).max(), 12)


@pytest.mark.parametrize("version", [1, 2])
def test_fully_dead_layers(tmp_path, version):
    """A conv with every row dead stores one all-zero row (empty sign); its consumer drops every input
    (so in version 2 that consumer's whole output is bias + residual, which the parity check sees)."""
    model = tiny_model(ternary=True, seed=2)
    with torch.no_grad():
        blk = model.stage2[1]
        blk.conv1.codes.zero_()
        blk.bn2.running_mean.zero_()
        blk.bn2.bias.fill_(-1.0)
    report = export_model(model, tmp_path / "dead.onnx", ternary=True, format_version=version)
    assert report.parity.passed
    layers = {la.name: la for la in report.ternary_layers}
    c1, c2 = layers["stage2.1.conv1"], layers["stage2.1.conv2"]
    assert c1.stored_shape == [1, 16, 3, 3] and c1.nnz == 0 and len(c1.dead_outputs) == 16
    assert c2.dropped_inputs == list(range(16)) and c2.stored_shape[:2] == [1, 1] and c2.nnz == 0
    sign = _init(onnx.load(tmp_path / "dead.onnx"), "stage2.1.conv1.sign")
    assert sign.dtype == np.uint8 and sign.size == 0


def test_dense_and_ternary_agree(ternary_export, dense_export, tmodel):
    (tpath, _), (dpath, drep) = ternary_export, dense_export
    dense = onnx.load(dpath)
    onnx.checker.check_model(dense, full_check=True)
    assert {o.domain for o in dense.opset_import} == {""}
    assert not _nodes(dense, tf.OP_TYPE)
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in dense.graph.initializer)
    assert drep.parity.passed and drep.parity.evaluator == "onnxruntime"
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3)).numpy()
    yd = _ort(dpath, x)
    yt = reference_evaluator(onnx.load(tpath)).run(None, {"input": x})[0]
    np.testing.assert_allclose(yd, yt, atol=1e-5 * np.abs(yt).max())


def test_dense_full_precision_matches_torch(tmp_path):
    model = tiny_model(ternary=False, seed=3)
    path = tmp_path / "fp.onnx"
    with pytest.raises(ExportError, match="full precision"):
        export_model(model, tmp_path / "nope.onnx", ternary=True)
    report = export_model(model, path, ternary=False)
    assert report.parity.passed and not report.ternary_layers
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(_ort(path, x.numpy()), ref, atol=1e-4 * np.abs(ref).max())
    # Batch is symbolic: another batch size runs too.
    assert _ort(path, np.zeros((5, 3, 32, 32), np.float32)).shape == (5, 10)


def test_fp16_exports(tmodel, tmp_path):
    dense = export_model(tmodel, tmp_path / "d16.onnx", ternary=False, fp16=True)
    m = onnx.load(tmp_path / "d16.onnx")
    onnx.checker.check_model(m, full_check=True)
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    floats = [t for t in m.graph.initializer if t.data_type in float_types]
    assert floats and all(t.data_type == onnx.TensorProto.FLOAT16 for t in floats)
    assert _nodes(m, "Cast")
    x = default_probe(batch=2).numpy()
    y = _ort(tmp_path / "d16.onnx", x)  # stock onnxruntime runs it
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x)).numpy()
    assert np.abs(y - ref).max() <= dense.parity.tolerance_unrounded
    assert dense.parity.passed and dense.parity.max_abs_diff > 0  # the cost is reported, not hidden
    tern = export_model(tmodel, tmp_path / "t16.onnx", ternary=True, fp16=True)
    assert tern.parity.passed and tern.file_bytes < dense.file_bytes


@pytest.mark.parametrize("version", [1, 2])
def test_ternary_file_runs_with_custom_op_library(ternary_export, ternary_export_v1, ops_library, version):
    """The C++ kernels (runtime_ops/) agree with the reference op on an exported file, maps included."""
    from micronet_onnx.runtime import session as runtime

    path, _ = ternary_export if version == 2 else ternary_export_v1
    x = default_probe(batch=2).numpy()
    y = runtime.create_session(path, threads=1).run(None, {"input": x})[0]
    ref = reference_evaluator(onnx.load(path)).run(None, {"input": x})[0]
    np.testing.assert_allclose(y, ref, atol=1e-5 * np.abs(ref).max())


def test_ternary_file_is_small(ternary_export, dense_export):
    (tpath, trep), (dpath, drep) = ternary_export, dense_export
    assert tpath.stat().st_size == trep.file_bytes
    assert trep.dense_equivalent_bytes == drep.dense_equivalent_bytes
    assert trep.file_bytes * 5 < dpath.stat().st_size
    assert trep.stored_sparsity is not None and trep.ec2t_sparsity > 0.85


def test_export_is_deterministic(tmodel, tmp_path):
    export_model(tmodel, tmp_path / "a.onnx", ternary=True, check=False)
    export_model(tmodel, tmp_path / "b.onnx", ternary=True, check=False)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_parity_failure_writes_nothing(tmodel, tmp_path, monkeypatch):
    real = parity_mod.run_file
    def skewed(data, x, ternary):
        return 1.01 * real(data, x, ternary=ternary)

    monkeypatch.setattr(parity_mod, "run_file", skewed)
    with pytest.raises(ParityError) as err:
        export_model(tmodel, tmp_path / "bad.onnx", ternary=True)
    assert not err.value.report.passed and not (tmp_path / "bad.onnx").exists()


def test_bad_format_version_is_refused(tmodel, tmp_path):
    for bad in (0, 4, True, "2"):
        with pytest.raises(ExportError, match="format version"):
            export_model(tmodel, tmp_path / "x.onnx", ternary=True, format_version=bad, check=False)
    assert not (tmp_path / "x.onnx").exists()


def test_dense_export_is_the_same_for_both_format_versions(tmodel, dense_export, tmp_path):
    export_model(tmodel, tmp_path / "d1.onnx", ternary=False, format_version=1, check=False)
    d1, d2 = onnx.load(tmp_path / "d1.onnx"), onnx.load(dense_export[0])
    assert d1.graph == d2.graph and {o.domain for o in d1.opset_import} == {""}


def test_fp16_version_2_keeps_input_affine_float32(tmodel, tmp_path):
    report = export_model(tmodel, tmp_path / "t16.onnx", ternary=True, fp16=True)
    model = onnx.load(tmp_path / "t16.onnx")
    conv1 = [n for n in _nodes(model, tf.OP_TYPE) if n.name.endswith("conv1")]
    assert all(_init(model, n.input[tf.IN_IN_SCALE]).dtype == np.float32 for n in conv1)
    assert not any(la.endswith("bn1") for la in mx.build_graph(tmodel, ternary=True, fp16=True,
                                                                input_hw=(32, 32)).fp16_layers)
    assert report.parity.passed


def test_fp16_overflow_is_refused(tmp_path):
    model = tiny_model(ternary=True, dead=False)
    with torch.no_grad():
        model.stage1[0].bn2.running_var.fill_(1e-12)
        model.stage1[0].bn2.eps = 1e-12
    with pytest.raises(ExportError, match="float16 range"):
        mx.build_graph(model, ternary=True, fp16=False, input_hw=(32, 32))


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tmodel):
    d = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(tmodel, d / "tern.pt", ternary=True)
    save_checkpoint(tiny_model(ternary=False), d / "fp.pt", ternary=False)
    torch.save({"something": 1}, d / "foreign.pt")
    (d / "garbage.pt").write_bytes(b"not a checkpoint")
    return d


def _mnx(*args: str):
    from micronet_onnx.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_export_ternary(ckpts, tmp_path):
    out = tmp_path / "sub" / "m.onnx"
    r = _mnx("export", "--ternary", ckpts / "tern.pt", "-o", out, "--probe-batch", "2")
    assert r.exit_code == 0, r.output
    assert out.is_file() and "TernaryConv" in r.stdout and "parity" in r.stdout and "KiB" in r.stdout
    assert "format version 3" in r.stdout and "BatchNormalization" not in r.stdout
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["micronet.source_checkpoint"] == "tern.pt" and len(meta["micronet.source_sha256"]) == 64


def test_cli_export_format_version_1(ckpts, tmp_path):
    out = tmp_path / "v1.onnx"
    r = _mnx("export", "--ternary", "--format-version", "1", ckpts / "tern.pt", "-o", out, "--probe-batch", "1")
    assert r.exit_code == 0, r.output
    model = onnx.load(out)
    assert {o.domain: o.version for o in model.opset_import}[tf.DOMAIN] == 1
    assert _nodes(model, "BatchNormalization") and _nodes(model, "Add") and "format version 1" in r.stdout


@pytest.mark.parametrize("value", ["4", "0", "-1"])
def test_cli_bad_format_version_exit_2(ckpts, tmp_path, value):
    r = _mnx("export", "--ternary", "--format-version", value, ckpts / "tern.pt", "-o", tmp_path / "m.onnx")
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("mnx: error: --format-version")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_non_integer_format_version_is_a_usage_error(ckpts, tmp_path):
    r = _mnx("export", "--ternary", "--format-version", "two", ckpts / "tern.pt", "-o", tmp_path / "m.onnx")
    assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("case", ["fp-ternary", "missing", "foreign", "garbage", "out-dir", "out-under-file"])
def test_cli_user_errors_exit_2(ckpts, tmp_path, case):
    ck, out = ckpts / "tern.pt", tmp_path / "m.onnx"
    extra = ["--ternary"]
    if case == "fp-ternary":
        ck = ckpts / "fp.pt"
    elif case == "missing":
        ck = ckpts / "nope.pt"
    elif case in ("foreign", "garbage"):
        ck = ckpts / f"{case}.pt"
    elif case == "out-dir":
        out = tmp_path
    else:
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "m.onnx"
    r = _mnx("export", *extra, ck, "-o", out, "--no-check")
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert r.stderr.startswith("mnx: error:")


def test_cli_parity_failure_exit_1(ckpts, tmp_path, monkeypatch):
    monkeypatch.setattr(parity_mod, "run_file", lambda data, x, ternary: np.zeros((len(x), 10), np.float32))
    r = _mnx("export", ckpts / "fp.pt", "-o", tmp_path / "m.onnx", "--probe-batch", "1")
    assert r.exit_code == 1, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "parity check failed" in r.stderr
    assert not (tmp_path / "m.onnx").exists()
