"""The compiled TernaryConv rejects malformed nodes with errors that name the node, never crashes.

Malformed models run in one child process (a crash there fails the test instead of killing pytest).
A randomized part mutates valid nodes and checks that the library accepts exactly what the numpy
reference accepts, with the same values. Also: the C++ format header mirrors ternary_format.py.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from micronet_onnx.format import spec as tf
from micronet_onnx.format.reference_op import ternary_conv
from micronet_onnx.runtime import session as runtime
from tests.helpers.nodes import ANY_NCHW, Node, make_model, random_node

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "runtime_ops" / "ternary_conv" / "ternary_format.h"

# ---------------------------------------------------------------------------------------------
# the C++ header mirrors ternary_format.py


def _parse_value(text: str):
    text = text.strip()
    if text.startswith("{"):
        return [_parse_value(v) for v in re.findall(r'"[^"]*"|[^,{}\s][^,{}]*', text[1:-1])]
    if text.startswith('"'):
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    shift = re.fullmatch(r"int64_t\{(\d+)\}\s*<<\s*(\d+)", text)
    if shift:
        return int(shift.group(1)) << int(shift.group(2))
    return int(text)


def parse_header(path: Path = HEADER) -> dict:
    consts = {}
    pattern = re.compile(r"^\s*constexpr\s+[\w:\s\*]+?\s(k\w+)(\[\w*\])?\s*=\s*(.+?);")
    for line in path.read_text().splitlines():
        m = pattern.match(line)
        if m:
            consts[m.group(1)] = _parse_value(m.group(3))
    return consts


def _cpp_name(py_name: str) -> str:
    return "k" + "".join(part.capitalize() for part in py_name.split("_"))


def test_header_mirrors_ternary_format():
    header = parse_header()
    checked = 0
    for name in dir(tf):
        if not name.isupper() or name.startswith("_"):
            continue
        value = getattr(tf, name)
        cpp = _cpp_name(name)
        assert cpp in header, f"ternary_format.{name} has no counterpart {cpp} in {HEADER.name}"
        if isinstance(value, type) and issubclass(value, np.generic):
            value = helper.np_dtype_to_tensor_dtype(np.dtype(value))
        elif isinstance(value, tuple):
            value = list(value)
        assert header[cpp] == value, f"{cpp} = {header[cpp]!r} but ternary_format.{name} = {value!r}"
        checked += 1
    assert checked >= 25
    # C++-only constants, checked against the behaviour of the Python module
    assert header["kFloatDtype"] == TensorProto.FLOAT
    assert tf.pack_ternary(np.array([1, -1]), -1.0, 1.0).centroids.shape == (header["kNumCentroids"],)
    assert header["kOpsetVersion"] in tf.SUPPORTED_OPSET_VERSIONS
    limit = header["kMaxAttributeValue"]
    tf.ConvAttrs(weight_shape=(1, 1, 1, 1), strides=(limit, 1)).validate()
    with pytest.raises(tf.FormatError):
        tf.ConvAttrs(weight_shape=(1, 1, 1, 1), strides=(limit + 1, 1)).validate()


# ---------------------------------------------------------------------------------------------
# finding and loading the library


def test_missing_library_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.LIBRARY_ENV, raising=False)
    monkeypatch.setattr(runtime, "_candidates", lambda: [tmp_path / "nope" / runtime.LIBRARY_NAME])
    with pytest.raises(runtime.OpsLibraryError, match="make lib"):
        runtime.ops_library_path()
    monkeypatch.setenv(runtime.LIBRARY_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(runtime.OpsLibraryError, match=runtime.LIBRARY_ENV):
        runtime.ops_library_path()


def test_unloadable_library_raises_ops_library_error(monkeypatch, tmp_path):
    bogus = tmp_path / "libbogus.so"
    bogus.write_bytes(b"not a shared library")
    monkeypatch.setenv(runtime.LIBRARY_ENV, str(bogus))
    assert runtime.ops_library_path() == str(bogus.resolve())
    with pytest.raises(runtime.OpsLibraryError, match="make lib"):
        runtime.create_session(_plain_node().model().SerializeToString())
    assert issubclass(runtime.OpsLibraryError, RuntimeError)


def test_env_var_and_session_kwargs(ops_library, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setenv(runtime.LIBRARY_ENV, ops_library)
    assert runtime.ops_library_path() == str(Path(ops_library).resolve())
    node = random_node(np.random.default_rng(0), 3, 2, (1, 1))
    session = runtime.create_session(
        node.model().SerializeToString(),
        threads=1,
        graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        providers=["CPUExecutionProvider"],
    )
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(TypeError, match="no_such_option"):
        runtime.create_session(node.model().SerializeToString(), no_such_option=1)


@pytest.mark.parametrize("version", [0, 4])
def test_unsupported_format_version_is_rejected(ops_library, tmp_path, version):
    model = _plain_node().model()
    model.opset_import[1].version = version
    path = tmp_path / f"v{version}.onnx"
    onnx.save(model, path)
    for source in (model.SerializeToString(), path):
        with pytest.raises(tf.FormatError, match=f"micronet opset {version}"):
            runtime.create_session(source)


@pytest.mark.parametrize("version", [1, 2])
def test_supported_format_versions_pass_the_check(version):
    model = _plain_node().model(opset=version)
    runtime.check_format_version(model.SerializeToString())  # no exception
    v2 = random_node(np.random.default_rng(0), 4, 3, (3, 3), in_affine=True, residual=True).model(opset=2)
    runtime.check_format_version(v2.SerializeToString())


@pytest.mark.parametrize("extra", ["in_scale", "in_bias", "residual", "empty_names"])
def test_version_1_model_with_version_2_inputs_is_rejected(tmp_path, extra):
    """A node in a model importing micronet opset 1 may have at most 8 inputs: one clear error, before
    onnxruntime sees the model (so without the library, too)."""
    node = random_node(np.random.default_rng(3), 4, 3, (3, 3), pads=(1, 1, 1, 1), in_scale=extra == "in_scale",
                       in_bias=extra == "in_bias", residual=extra == "residual")
    names, inits = node.wire("X")
    if extra == "empty_names":
        names += [""] * (tf.MAX_INPUTS - len(names))
    model = make_model(names, inits, node.attrs.to_onnx(), node_name="old_tc", graph_inputs=node.graph_inputs(),
                       opset=1)
    assert len(model.graph.node[0].input) > tf.MAX_INPUTS_V1
    path = tmp_path / "v1.onnx"
    onnx.save(model, path)
    for source in (model.SerializeToString(), path):
        with pytest.raises(tf.FormatError, match="old_tc") as err:
            runtime.check_format_version(source)
        message = str(err.value)
        assert "\n" not in message and "opset 1" in message and f"at most {tf.MAX_INPUTS_V1}" in message
    # the same node is valid in a version-2 model
    runtime.check_format_version(make_model(names, inits, node.attrs.to_onnx(), graph_inputs=node.graph_inputs(),
                                            opset=2).SerializeToString())


def test_create_session_rejects_version_1_model_with_version_2_inputs(ops_library):
    node = random_node(np.random.default_rng(4), 4, 3, (3, 3), in_affine=True)
    names, inits = node.wire("X")
    model = make_model(names, inits, node.attrs.to_onnx(), node_name="old_tc", opset=1)
    with pytest.raises(tf.FormatError, match="old_tc.*opset 1"):
        runtime.create_session(model.SerializeToString())


# ---------------------------------------------------------------------------------------------
# malformed nodes, run in a child process

CHILD = r"""
import pickle, sys
from micronet_onnx.runtime.session import create_session

cases_path, results_path = sys.argv[1], sys.argv[2]
with open(cases_path, "rb") as f:
    cases = pickle.load(f)
with open(results_path, "wb") as out:
    for case in cases:
        print("case:", case["name"], file=sys.stderr, flush=True)
        res = {"name": case["name"], "stage": "ok", "error": None, "y": None}
        try:
            session = create_session(case["model"], threads=case.get("threads", 1))
        except Exception as exc:
            res.update(stage="create", error=f"{type(exc).__name__}: {exc}")
        else:
            if case.get("x") is not None:
                try:
                    res["y"] = session.run(None, {"X": case["x"], **case.get("feeds", {})})[0]
                except Exception as exc:
                    res.update(stage="run", error=f"{type(exc).__name__}: {exc}")
        pickle.dump(res, out)
        out.flush()
print("done", file=sys.stderr, flush=True)
"""


def run_in_child(cases: list[dict], ops_library: str, tmp_path: Path) -> dict[str, dict]:
    cases_path, results_path = tmp_path / "cases.pkl", tmp_path / "results.pkl"
    cases_path.write_bytes(pickle.dumps(cases))
    env = dict(os.environ, MICRONET_OPS_LIBRARY=ops_library, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(cases_path), str(results_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    results = {}
    if results_path.exists():
        with results_path.open("rb") as f:
            while True:
                try:
                    res = pickle.load(f)
                except EOFError:
                    break
                results[res["name"]] = res
    if proc.returncode != 0 or len(results) != len(cases):
        started = [line for line in proc.stderr.splitlines() if line.startswith("case:")]
        pytest.fail(
            f"child process died (exit {proc.returncode}) after {len(results)} of {len(cases)} cases; "
            f"last started: {started[-1] if started else None}\n{proc.stderr[-3000:]}"
        )
    return results


def _sign_padded_node(seed: int = 0) -> Node:
    """A node with scale, bias, both channel maps, and numel and nnz not multiples of 8."""
    rng = np.random.default_rng(seed)
    while True:
        node = random_node(
            rng, 4, 3, (3, 3), pads=(1, 1, 1, 1), m_out=6, x_channels=5, affine=True, relu=True
        )
        if node.packed.nnz % 8 and node.packed.numel % 8:
            return node


def _plain_node(seed: int = 1) -> Node:
    return random_node(np.random.default_rng(seed), 4, 3, (3, 3), pads=(1, 1, 1, 1))


def _v2_node(seed: int = 2) -> Node:
    """A format-version-2 node: every optional input, including in_scale / in_bias and a residual."""
    rng = np.random.default_rng(seed)
    return random_node(rng, 4, 3, (3, 3), pads=(1, 1, 1, 1), m_out=6, x_channels=5, affine=True, relu=True,
                       in_affine=True, residual=True)


def _variant(
    name: str,
    base: Node,
    *,
    inits: dict | None = None,
    drop: tuple[str, ...] = (),
    attrs: dict | None = None,
    remove_attrs: tuple[str, ...] = (),
    rename: dict | None = None,
    graph_inputs: tuple[str, ...] = (),
    x: np.ndarray | None = None,
    x_elem_type: int = TensorProto.FLOAT,
    x_shape: list | None = ANY_NCHW,
    feeds: dict | None = None,
    residual_type: tuple | None = None,
    opset: int = tf.OPSET_VERSION,
) -> dict:
    names, initializers = base.wire("X")
    initializers.update(inits or {})
    for key in drop:
        names = ["" if n == key else n for n in names]
        initializers.pop(key, None)
    for old, new in (rename or {}).items():
        names = [new if n == old else n for n in names]
    node_attrs = {**base.attrs.to_onnx(), **(attrs or {})}
    for key in remove_attrs:
        node_attrs.pop(key, None)
    extra = {**base.graph_inputs(), **{k: initializers.pop(k) for k in graph_inputs}}
    if residual_type is not None:
        extra[base.residual_name] = residual_type
    model = make_model(
        names,
        initializers,
        node_attrs,
        node_name=f"bad_{name}",
        x_elem_type=x_elem_type,
        x_shape=x_shape,
        graph_inputs=extra,
        opset=opset,
    )
    if feeds is None and x is not None and base.residual_seed is not None:
        feeds = {base.residual_name: base.residual_for(x)}
    return {"name": name, "model": model.SerializeToString(), "x": x, "feeds": feeds or {}}


def malformed_cases() -> list[tuple[dict, str, str]]:
    """(case, expected stage: create|run, keyword the message must hold)."""
    b = _sign_padded_node()
    p = _plain_node()
    mask, sign = b.packed.mask, b.packed.sign
    x_b = np.zeros((1, 5, 6, 6), np.float32)
    x_p = np.zeros((1, 3, 6, 6), np.float32)
    padded_mask = mask.copy()
    padded_mask[-1] |= 0x80
    padded_sign = sign.copy()
    padded_sign[-1] |= 0x80
    f16 = np.float16
    c = []

    def add(stage, keyword, name, base=b, x=x_b, **kw):
        c.append((_variant(name, base, x=x, **kw), stage, keyword))

    add("create", "mask", "mask_truncated", inits={"mask": mask[:-1]})
    add("create", "mask", "mask_oversized", inits={"mask": np.append(mask, np.uint8(0))})
    add("create", "mask", "mask_empty", inits={"mask": mask[:0]})
    add("create", "sign", "sign_truncated", inits={"sign": sign[:-1]})
    add("create", "sign", "sign_oversized", inits={"sign": np.append(sign, np.uint8(0))})
    add("create", "mask", "mask_padding_bits", inits={"mask": padded_mask})
    add("create", "sign", "sign_padding_bits", inits={"sign": padded_sign})
    add("create", "mask", "mask_int8", inits={"mask": mask.view(np.int8)})
    add("create", "mask", "mask_rank2", inits={"mask": mask.reshape(1, -1)})
    add("create", "sign", "sign_int8", inits={"sign": sign.view(np.int8)})
    add("create", "sign", "sign_float32", inits={"sign": sign.astype(np.float32)})
    add(
        "create", "centroids", "centroids_float32", inits={"centroids": b.packed.centroids.astype(np.float32)}
    )
    add("create", "centroids", "centroids_len3", inits={"centroids": np.array([-1, 1, 2], f16)})
    add("create", "centroids", "centroids_2d", inits={"centroids": np.array([[-1, 1]], f16)})
    add("create", "scale", "scale_float32", inits={"scale": b.scale.astype(np.float32)})
    add("create", "scale", "scale_short", inits={"scale": b.scale[:-1]})
    add("create", "bias", "bias_float64", inits={"bias": b.bias.astype(np.float64)})
    add("create", "bias", "bias_long", inits={"bias": np.append(b.bias, f16(0))})
    add("create", "in_channels", "in_channels_int64", inits={"in_channels": b.in_channels.astype(np.int64)})
    add(
        "create",
        "out_channels",
        "out_channels_int64",
        inits={"out_channels": b.out_channels.astype(np.int64)},
    )
    add(
        "create",
        "out_channels",
        "out_channels_uint32",
        inits={"out_channels": b.out_channels.view(np.uint32)},
    )
    bad = b.in_channels.copy()
    bad[1] = -1
    add("create", "in_channels", "in_channels_negative", inits={"in_channels": bad})
    bad = b.in_channels.copy()
    bad[1] = bad[0]
    add("create", "in_channels", "in_channels_repeated", inits={"in_channels": bad})
    add("create", "in_channels", "in_channels_short", inits={"in_channels": b.in_channels[:-1]})
    bad = b.out_channels.copy()
    bad[0] = 6
    add("create", "out_channels", "out_channels_out_of_range", inits={"out_channels": bad})
    bad = b.out_channels.copy()
    bad[0] = -3
    add("create", "out_channels", "out_channels_negative", inits={"out_channels": bad})
    bad = b.out_channels.copy()
    bad[1] = bad[2]
    add("create", "out_channels", "out_channels_repeated", inits={"out_channels": bad})
    add("create", "weight_shape", "weight_shape_missing", remove_attrs=("weight_shape",))
    add("create", "weight_shape", "weight_shape_rank3", attrs={"weight_shape": [4, 3, 9]})
    add("create", "weight_shape", "weight_shape_zero", attrs={"weight_shape": [4, 3, 3, 0]})
    add("create", "weight_shape", "weight_shape_negative", attrs={"weight_shape": [4, 3, -3, -3]})
    add("create", "mask", "weight_shape_inconsistent", attrs={"weight_shape": [4, 3, 3, 2]})
    add("create", "weight_shape", "weight_shape_huge", base=p, x=x_p, attrs={"weight_shape": [1 << 24] * 4})
    add("create", "weight_shape", "weight_shape_over_limit", attrs={"weight_shape": [4, 3, 3, (1 << 24) + 1]})
    add("create", "list of ints", "weight_shape_floats", attrs={"weight_shape": [4.0, 3.0, 3.0, 3.0]})
    add("create", "strides", "strides_zero", attrs={"strides": [0, 1]})
    add("create", "strides", "strides_rank3", attrs={"strides": [1, 1, 1]})
    add("create", "list of ints", "strides_int", attrs={"strides": 1})
    add("create", "list of ints", "strides_floats", attrs={"strides": [1.0, 1.0]})
    add(
        "create",
        "strides",
        "strides_empty",
        attrs={"strides": helper.make_attribute("strides", [], attr_type=onnx.AttributeProto.INTS)},
    )
    add("create", "pads", "pads_negative", attrs={"pads": [1, -1, 1, 1]})
    add("create", "pads", "pads_rank2", attrs={"pads": [1, 1]})
    add("create", "dilations", "dilations_zero", attrs={"dilations": [1, 0]})
    add("create", "dilations", "dilations_huge", attrs={"dilations": [1 << 40, 1]})
    add("create", "group", "group_zero", attrs={"group": 0})
    add("create", "group", "group_not_dividing", attrs={"group": 3})
    add("create", "group", "group_ints", attrs={"group": [1]})
    add("create", "in_channels", "in_channels_with_group2", attrs={"group": 2})
    add("create", "activation", "activation_unknown", attrs={"activation": "Sigmoid"})
    add("create", "activation", "activation_int", attrs={"activation": 1})
    add("create", "num_output_channels", "num_output_channels_small", attrs={"num_output_channels": 3})
    add("create", "num_output_channels", "num_output_channels_zero", attrs={"num_output_channels": 0})
    add("create", "out_channels", "m_out_without_out_channels", drop=("out_channels",))
    add("create", "mask", "mask_not_constant", graph_inputs=("mask",))
    add("create", "scale", "scale_not_constant", graph_inputs=("scale",))
    add("create", "out_channels", "out_channels_not_constant", graph_inputs=("out_channels",))
    add("create", "sign", "sign_empty_name", rename={"sign": ""})
    add("create", "X", "x_double", x=x_b.astype(np.float64), x_elem_type=TensorProto.DOUBLE)
    # run time
    add("run", "channels", "x_wrong_channels", base=p, x=np.zeros((1, 4, 6, 6), np.float32))
    add(
        "run",
        "in_channels",
        "in_channels_beyond_x",
        x=np.zeros((1, int(b.in_channels.max()), 6, 6), np.float32),
    )
    add("run", "rank", "x_rank3", base=p, x=np.zeros((3, 6, 6), np.float32), x_shape=None)
    add("run", "rank", "x_rank5", base=p, x=np.zeros((1, 3, 6, 6, 1), np.float32), x_shape=None)
    add("run", "output", "output_empty", base=p, x=x_p[:, :, :1, :1], attrs={"pads": [0, 0, 0, 0]})
    add("run", "output", "output_empty_dilated", base=p, x=x_p, attrs={"dilations": [4, 1]})
    # format version 2: in_scale / in_bias (constants, float32 [N_stored]) and residual (float32, Y's shape)
    v = _v2_node()
    x_v = np.zeros((2, 5, 6, 6), np.float32)
    r_v = np.zeros((2, 6, 6, 6), np.float32)

    def add_v2(stage, keyword, name, **kw):
        c.append((_variant(name, v, x=x_v, **kw), stage, keyword))

    add_v2("create", "in_scale", "in_scale_float16", inits={"in_scale": v.in_scale.astype(f16)})
    add_v2("create", "in_scale", "in_scale_short", inits={"in_scale": v.in_scale[:-1]})
    add_v2("create", "in_scale", "in_scale_rank2", inits={"in_scale": v.in_scale.reshape(1, -1)})
    add_v2("create", "in_bias", "in_bias_float64", inits={"in_bias": v.in_bias.astype(np.float64)})
    add_v2("create", "in_bias", "in_bias_long", inits={"in_bias": np.append(v.in_bias, np.float32(0))})
    add_v2("create", "in_scale", "in_scale_not_constant", graph_inputs=("in_scale",),
           feeds={"in_scale": v.in_scale, "residual": r_v})
    add_v2("create", "in_bias", "in_bias_not_constant", graph_inputs=("in_bias",),
           feeds={"in_bias": v.in_bias, "residual": r_v})
    add_v2("create", "inputs", "v1_model_with_v2_inputs", opset=1)
    add_v2("run", "residual", "residual_wrong_channels", feeds={"residual": np.zeros((2, 4, 6, 6), np.float32)})
    add_v2("run", "residual", "residual_wrong_batch", feeds={"residual": r_v[:1]})
    add_v2("run", "residual", "residual_wrong_hw", feeds={"residual": np.zeros((2, 6, 6, 5), np.float32)})
    add_v2("run", "residual", "residual_rank3", feeds={"residual": np.zeros((2, 6, 36), np.float32)},
           residual_type=(np.dtype(np.float32), None))
    # a float64 residual: onnxruntime's type check at session creation, or the kernel's at run time
    add_v2("create|run", "residual", "residual_double", feeds={"residual": r_v.astype(np.float64)},
           residual_type=(np.dtype(np.float64), ["B", "M", "OH", "OW"]))
    return c


def test_malformed_nodes_fail_with_the_node_name(ops_library, tmp_path):
    cases = malformed_cases()
    results = run_in_child([case for case, _, _ in cases], ops_library, tmp_path)
    problems = []
    for case, stage, keyword in cases:
        res = results[case["name"]]
        node = f"bad_{case['name']}"
        if res["stage"] not in stage.split("|"):
            problems.append(f"{case['name']}: expected a {stage} error, got {res['stage']}: {res['error']}")
        elif node not in res["error"] or keyword.lower() not in res["error"].lower():
            problems.append(f"{case['name']}: message lacks {node!r} or {keyword!r}: {res['error']}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# randomized: the library accepts exactly what the numpy reference accepts


def _mutate(rng: np.random.Generator, base: Node, x: np.ndarray):
    """A randomly corrupted copy of (constant node inputs, attributes, x, residual); the residual is the
    one that fits the uncorrupted node and x (None without one)."""
    arrays = dict(zip(tf.INPUT_NAMES[1 : tf.IN_RESIDUAL], base.input_arrays(), strict=True))
    attrs = base.attrs.to_onnx()
    m_out = base.attrs.m_out
    residual = base.residual_for(x)
    for _ in range(int(rng.integers(1, 3))):
        kind = rng.choice(
            [
                "mask_bits", "sign_bits", "mask_len", "sign_len", "weight_shape", "strides", "pads",
                "dilations", "group", "in_map", "out_map", "m_out", "activation", "x_channels", "x_hw",
                "centroids", "scale_len", "in_affine_len", "in_affine_dtype", "residual_shape",
            ]
        )  # fmt: skip
        if kind in ("mask_bits", "sign_bits"):
            key = kind.split("_")[0]
            arr = arrays[key].copy()
            if arr.size:
                for _ in range(int(rng.integers(1, 4))):
                    i = int(rng.integers(arr.size * 8))
                    arr[i // 8] ^= np.uint8(1 << (i % 8))
            arrays[key] = arr
        elif kind in ("mask_len", "sign_len"):
            key = kind.split("_")[0]
            arr = arrays[key]
            arrays[key] = arr[:-1] if rng.random() < 0.5 else np.append(arr, np.uint8(rng.integers(256)))
        elif kind == "weight_shape":
            ws = list(attrs["weight_shape"])
            ws[int(rng.integers(4))] += int(rng.choice([-1, 1]))
            attrs["weight_shape"] = ws
        elif kind == "strides":
            attrs["strides"] = [int(v) for v in rng.integers(0, 4, 2)]
        elif kind == "pads":
            attrs["pads"] = [int(v) for v in rng.integers(-1, 3, 4)]
        elif kind == "dilations":
            attrs["dilations"] = [int(v) for v in rng.integers(0, 3, 2)]
        elif kind == "group":
            attrs["group"] = int(rng.integers(0, 4))
        elif kind == "in_map":
            n = int(attrs["weight_shape"][1]) + int(rng.integers(-1, 2))
            arrays["in_channels"] = rng.integers(-1, x.shape[1] + 1, max(n, 0)).astype(np.int32)
        elif kind == "out_map":
            n = int(attrs["weight_shape"][0]) + int(rng.integers(-1, 2))
            arrays["out_channels"] = rng.integers(-1, m_out + 1, max(n, 0)).astype(np.int32)
        elif kind == "m_out":
            attrs["num_output_channels"] = int(attrs["weight_shape"][0]) + int(rng.choice([-1, 1, 3]))
        elif kind == "activation":
            attrs["activation"] = str(rng.choice(["", "Relu", "relu", "Tanh"]))
        elif kind == "x_channels":
            x = np.zeros((x.shape[0], x.shape[1] + int(rng.choice([-1, 1])), *x.shape[2:]), np.float32) + 0.5
        elif kind == "x_hw":
            x = rng.standard_normal((*x.shape[:2], *rng.integers(1, 5, 2))).astype(np.float32)
        elif kind == "centroids":
            arrays["centroids"] = rng.standard_normal(int(rng.choice([1, 3]))).astype(np.float16)
        elif kind == "scale_len" and arrays["scale"] is not None:
            arrays["scale"] = np.append(arrays["scale"], np.float16(1.0))
        elif kind == "in_affine_len":
            key = str(rng.choice(["in_scale", "in_bias"]))
            if arrays[key] is not None:
                arrays[key] = arrays[key][:-1] if rng.random() < 0.5 else np.append(arrays[key], np.float32(1.0))
        elif kind == "in_affine_dtype":
            key = str(rng.choice(["in_scale", "in_bias"]))
            if arrays[key] is not None:
                arrays[key] = arrays[key].astype(rng.choice([np.float16, np.float64]))
        elif kind == "residual_shape" and residual is not None:
            shape = list(residual.shape)
            shape[int(rng.integers(4))] += int(rng.choice([-1, 1]))
            residual = rng.standard_normal([max(d, 0) for d in shape]).astype(np.float32)
    return arrays, attrs, x, residual


def _reference_outcome(arrays: dict, attrs: dict, x: np.ndarray, residual: np.ndarray | None):
    try:
        conv_attrs = tf.ConvAttrs.from_onnx(attrs)
        return ternary_conv(x, *arrays.values(), residual=residual, attrs=conv_attrs)
    except Exception as exc:  # the reference rejects it
        return exc


def test_random_corruptions_match_reference_acceptance(ops_library, tmp_path):
    rng = np.random.default_rng(2024)
    bases = [
        _sign_padded_node(3),
        _plain_node(4),
        random_node(rng, 6, 2, (3, 3), group=2, pads=(1, 1, 1, 1)),
        _v2_node(5),
    ]
    cases, expected = [], {}
    for i in range(320):
        base = copy.deepcopy(bases[i % len(bases)])
        n_stored = base.attrs.weight_shape[1] * base.attrs.group
        c = n_stored if base.in_channels is None else int(base.in_channels.max()) + 1
        x0 = rng.standard_normal((2, c, 5, 5)).astype(np.float32)
        arrays, attrs, x, residual = _mutate(rng, base, x0)
        names = ["X"] + [k if v is not None else "" for k, v in arrays.items()] + [base.residual_name]
        while names[-1] == "":
            names.pop()
        inits = {k: v for k, v in arrays.items() if v is not None}
        name = f"fuzz_{i}"
        model = make_model(names, inits, attrs, node_name=name, graph_inputs=base.graph_inputs())
        feeds = {} if residual is None else {base.residual_name: residual}
        cases.append({"name": name, "model": model.SerializeToString(), "x": x, "feeds": feeds, "threads": 1 + i % 2})
        expected[name] = _reference_outcome(arrays, attrs, x, residual)
    results = run_in_child(cases, ops_library, tmp_path)
    problems, accepted = [], 0
    for name, ref in expected.items():
        res = results[name]
        if isinstance(ref, Exception):
            if res["stage"] == "ok":
                problems.append(f"{name}: library accepted what the reference rejects ({ref})")
            elif name not in res["error"]:
                problems.append(f"{name}: message does not name the node: {res['error']}")
        elif res["stage"] != "ok":
            problems.append(f"{name}: library rejected what the reference accepts: {res['error']}")
        else:
            accepted += 1
            np.testing.assert_allclose(res["y"], ref, rtol=1e-4, atol=1e-4, err_msg=name)
    assert not problems, "\n".join(problems)
    assert 10 <= accepted <= len(expected) - 130  # the mutations exercise both outcomes


def test_test_models_are_valid_onnx():
    """The models these tests build pass the ONNX checker (which skips the custom domain)."""
    onnx.checker.check_model(_plain_node().model())
    onnx.checker.check_model(_sign_padded_node().model())
    onnx.checker.check_model(_v2_node().model())
