"""Red team: bad input of every kind a user can give `mnx` (issue 18).

Each case asserts the contract of the CLI's error boundary: exit status 2, exactly one stderr line
starting with ``mnx: error:``, no traceback, no signal, and no file the user had is changed (hashed
before and after). Most cases run in-process through `cli.app.main` (a traceback would surface as a
test error; stderr is captured at the file-descriptor level, so onnxruntime's own log lines count);
the ones whose point is the process (a signal, the library's log) run in child processes, in
parallel. A bounded fuzz loop feeds byte and field mutations of a real export to the scorer and to
onnxruntime with our library, in a child process.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from micronet_onnx.fileio import atomic_writer, file_hash

# ---- the files a user has ------------------------------------------------------------------------


def _tc(m: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.op_type == "TernaryConv")


def _attr(n: onnx.NodeProto, name: str) -> onnx.AttributeProto:
    return next(a for a in n.attribute if a.name == name)


def _float_ws(m):
    a = _attr(_tc(m), "weight_shape")
    v = list(a.ints)
    a.ClearField("ints")
    a.type = onnx.AttributeProto.FLOATS
    a.floats.extend(map(float, v))


def _float_group(m):
    a = _attr(_tc(m), "group")
    a.type, a.f = onnx.AttributeProto.FLOAT, 1.0
    a.ClearField("i")


def _string_ws(m):
    a = _attr(_tc(m), "weight_shape")
    a.ClearField("ints")
    a.type, a.s = onnx.AttributeProto.STRING, b"3,3"


def _mask_graph_input(m):
    name = _tc(m).input[1]
    init = next(i for i in m.graph.initializer if i.name == name)
    m.graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))


def _set_micronet_opset(version):
    def f(m):
        for o in m.opset_import:
            if o.domain == "micronet":
                o.version = version
    return f


def _drop_micronet_import(m):
    keep = [o for o in m.opset_import if o.domain != "micronet"]
    del m.opset_import[:]
    m.opset_import.extend(keep)


def _in_if(m):
    n = _tc(m)
    idx = list(m.graph.node).index(n)
    out = helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None)
    branches = [helper.make_graph([copy.deepcopy(n)], name, [], [out]) for name in ("then", "else")]
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    m.graph.node.remove(n)
    m.graph.node.insert(idx, helper.make_node("If", ["cond"], [n.output[0]], then_branch=branches[0],
                                              else_branch=branches[1], name="if0"))


def _set(field, value):
    def f(m):
        setattr(m, field, value)
    return f


def _two_outputs(m):
    _tc(m).output.append("extra")


def _f64_input(m):
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE


MUTATIONS = {
    "float_weight_shape": _float_ws, "float_group": _float_group, "string_weight_shape": _string_ws,
    "two_outputs": _two_outputs, "float64_x": _f64_input, "mask_graph_input": _mask_graph_input,
    "ir99": _set("ir_version", 99), "ir0": _set("ir_version", 0), "no_import": _drop_micronet_import,
    "opset4": _set_micronet_opset(4), "opset99": _set_micronet_opset(99), "in_if": _in_if,
}
# what the scorer refuses, and what the runtime refuses (an If body runs fine: only scoring refuses it)
RUNTIME_ACCEPTS = {"in_if"}


def _checkpoint_dict(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _resumable(tiny_pt: Path, out: Path, **changes) -> None:
    """A checkpoint with a training state (phase fp, epoch 0 of 1) built from the tiny model's."""
    from micronet_onnx.training.checkpoint import Checkpoint, RngState
    from micronet_onnx.training.config import TrainConfig

    ck = Checkpoint.load(tiny_pt)
    full = Checkpoint(model_config=ck.model_config, state_dict=ck.state_dict,
                      train_config=TrainConfig(model="micronet", depth=0.15, width=0.5, epochs=1),
                      best={"val_acc": 0.0, "epoch": 0}, phase="fp", phase_epoch=0,
                      rng=RngState(cpu=torch.get_rng_state(), data=torch.Generator().get_state()))
    raw = full.to_dict()
    for key, value in changes.items():
        if key.startswith("config."):
            raw["config"][key.split(".", 1)[1]] = value
        elif value is _MISSING:
            del raw[key]
        else:
            raw[key] = value
    torch.save(raw, out)


_MISSING = object()

CHECKPOINT_FIELDS = {  # name: (changes, the field the message must name)
    "version_none": ({"version": None}, "version"),
    "version_list": ({"version": [1]}, "version"),
    "model_config_missing": ({"model_config": _MISSING}, "model_config"),
    "billion_classes": ({"model_config": {"num_classes": 10**9, "depth": 0.15, "width": 0.5}}, "num_classes"),
    "rng_not_tensor": ({"rng": {"torch": [1, 2], "data": torch.zeros(3)}}, "rng.torch"),
    "optimizer_state_list": ({"optimizer": {"state": [], "param_groups": []}}, "optimizer.state"),
    "metrics_rows": ({"metrics": [1, 2]}, "metrics[0]"),
    "scheduler_list": ({"scheduler": [1]}, "scheduler"),
    "phase_epoch_negative": ({"phase_epoch": -5}, "phase_epoch"),
    "phase_unknown": ({"phase": "warmup"}, "phase"),
    "state_dict_not_tensors": ({"state_dict": {"w": 1.0}}, "state_dict"),
}
RESUME_CONFIGS = {  # saved config entries that --resume must refuse before training
    "lr_nan": ({"config.lr": float("nan")}, "--lr"),
    "momentum_inf": ({"config.momentum": float("inf")}, "--momentum"),
    "lambda_gain_nan": ({"config.ec2t": {"lambda_gain": float("nan")}}, "--lambda-gain"),
    "config_missing": ({"config": None}, "config"),
}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a tiny ternary checkpoint, its export, every mutated file and bad checkpoint."""
    from micronet_onnx.export import export_checkpoint
    from tests.helpers.models import save_checkpoint, tiny_model

    d = tmp_path_factory.mktemp("redteam")
    save_checkpoint(tiny_model(ternary=True), d / "t.pt", ternary=True)
    export_checkpoint(d / "t.pt", d / "t.onnx", ternary=True, check=False)
    base = onnx.load(d / "t.onnx")
    for name, mutate in MUTATIONS.items():
        m = copy.deepcopy(base)
        mutate(m)
        (d / f"{name}.onnx").write_bytes(m.SerializeToString())
    raw = (d / "t.onnx").read_bytes()
    (d / "truncated.onnx").write_bytes(raw[: len(raw) // 2])
    (d / "empty.onnx").write_bytes(b"")
    (d / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    for name, (changes, _) in {**CHECKPOINT_FIELDS, **RESUME_CONFIGS}.items():
        _resumable(d / "t.pt", d / f"ck_{name}.pt", **changes)
    _resumable(d / "t.pt", d / "ck_ok.pt")
    (d / "user.txt").write_bytes(b"the user's own file")
    return d


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: file_hash(p) for p in sorted(folder.iterdir()) if p.is_file()}


def _assert_one_error_line(code: int, stderr: str, expect: str = "") -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("mnx: error:"), stderr
    assert expect in lines[0], stderr


def _run_main(args: list[str], capfd) -> tuple[int, str]:
    """`mnx ARGS` in this process: (exit status, stderr); anything escaping main fails the test."""
    from micronet_onnx.cli.app import main

    capfd.readouterr()
    saved = sys.argv
    sys.argv = ["mnx", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved
    return code, capfd.readouterr().err


# ---- CLI arguments -------------------------------------------------------------------------------

T = "{d}/t.onnx"
CLI_CASES = {
    "train_lr_nan": (["train", "-o", "{d}/n.pt", "--lr", "nan"], "--lr must be a finite"),
    "train_momentum_inf": (["train", "-o", "{d}/n.pt", "--momentum", "inf"], "--momentum must be a finite"),
    "train_wd_nan": (["train", "-o", "{d}/n.pt", "--weight-decay", "nan"], "--weight-decay"),
    "train_lambda_nan": (["train", "-o", "{d}/n.pt", "--lambda-gain", "nan"], "--lambda-gain"),
    "train_lr_weights_nan": (["train", "-o", "{d}/n.pt", "--lr-weights", "nan"], "--lr-weights"),
    "train_lr_centroids_inf": (["train", "-o", "{d}/n.pt", "--lr-centroids", "inf"], "--lr-centroids"),
    "train_lr_other_ninf": (["train", "-o", "{d}/n.pt", "--lr-other", "-inf"], "lr_other"),
    "train_centroid_init_nan": (["train", "-o", "{d}/n.pt", "--centroid-init", "nan"], "centroid init"),
    "train_dropout_nan": (["train", "-o", "{d}/n.pt", "--dropout", "nan"], "--dropout"),
    "train_val_fraction": (["train", "-o", "{d}/n.pt", "--val-fraction", "0.9999"], "val fraction"),
    "train_huge_model": (["train", "-o", "{d}/n.pt", "--model", "micronet", "--depth", "20", "--width", "20"],
                         "parameters"),
    "train_depth_nan": (["train", "-o", "{d}/n.pt", "--model", "micronet", "--depth", "nan"], "--depth"),
    "train_batch_huge": (["train", "-o", "{d}/n.pt", "--batch-size", "1000000000"], "batch size"),
    "train_epochs_huge": (["train", "-o", "{d}/n.pt", "--epochs", "1000000000000"], "epoch counts"),
    "train_unwritable": (["train", "-o", "/proc/no/such/x.pt"], "cannot write"),
    "train_init_is_output": (["train", "--ternary", "--init", "{d}/user.txt", "-o", "{d}/user.txt", "--force"],
                             "also an input"),
    "train_over_user_file": (["train", "-o", "{d}/user.txt"], "exists"),
    "train_bad_int": (["train", "-o", "{d}/n.pt", "--epochs", "many"], "Invalid value for '--epochs'"),
    "unknown_option": (["score", T, "--bogus"], "No such option"),
    "export_probe_huge": (["export", "--ternary", "{d}/t.pt", "-o", "{d}/o.onnx", "--probe-batch", "1000000000"],
                          "--probe-batch"),
    "export_over_input": (["export", "--ternary", "{d}/t.pt", "-o", "{d}/t.pt", "--force"], "also an input"),
    "export_over_user_file": (["export", "--ternary", "{d}/t.pt", "-o", "{d}/user.txt"], "exists"),
    "eval_threads_huge": (["eval", T, "--threads", "100000"], "threads must be in"),
    "eval_batch_huge": (["eval", T, "--batch-size", "10000000"], "batch size"),
    "eval_limit_negative": (["eval", T, "--limit", "-1"], "limit must be positive"),
    "eval_dev_zero": (["eval", "/dev/zero"], "not a regular file"),
    "eval_dev_null": (["eval", "/dev/null"], "not a readable ONNX model"),
    "bench_batch_huge": (["bench", T, "--batch", "10000000", "--threads", "1", "--repeats", "1"], "batch size"),
    "bench_threads_huge": (["bench", T, "--batch", "1", "--threads", "100000", "--repeats", "1"], "threads"),
    "bench_out_dir_user_file": (["bench", "--random", "micronet-c100", "--sparsity", "0.9", "--out-dir", "{d}/od",
                                 "--batch", "1", "--threads", "1", "--repeats", "1"], "is not a model"),
    "bench_out_dir_is_file": (["bench", "--random", "micronet-c100", "--out-dir", "{d}/user.txt"], "not a directory"),
    "bench_ec2t_tpu": (["bench-ec2t", "--device", "tpu"], "--device"),
    "bench_ec2t_batch_huge": (["bench-ec2t", "--batch-size", "100000000"], "--batch-size"),
    "bench_ec2t_classes_huge": (["bench-ec2t", "--classes", "1000000000"], "num_classes"),
    "bench_ec2t_depth_huge": (["bench-ec2t", "--depth", "20", "--width", "20"], "parameters"),
    "score_channels": (["score", T, "--input-shape", "1,4,32,32"], "fixes it at 3"),
    "score_hw": (["score", T, "--input-shape", "1,3,64,64"], "fixes it at 32"),
    "score_absurd": (["score", T, "--input-shape", "1000000000,3,32,32"], "above the bound"),
    "score_not_ints": (["score", T, "--input-shape", "1,3,a,32"], "comma-separated integers"),
    "score_bits_zero": (["score", T, "--mult-bits", "0"], "mult_bits"),
}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_cli_argument(work, name, capfd):
    args, expect = CLI_CASES[name]
    od = work / "od"
    od.mkdir(exist_ok=True)
    (od / "micronet-c100-sp90-seed0.onnx").write_bytes(b"the user's model, not a cached one")
    before = _hashes(work) | {"od": file_hash(od / "micronet-c100-sp90-seed0.onnx")}
    code, err = _run_main([a.format(d=work) for a in args], capfd)
    _assert_one_error_line(code, err, expect)
    assert _hashes(work) | {"od": file_hash(od / "micronet-c100-sp90-seed0.onnx")} == before
    assert not (work / "n.pt").exists() and not (work / "o.onnx").exists()


def test_bad_kernel_environment(work, capfd, monkeypatch):
    for var, value in (("MICRONET_TERNARY_KERNEL", "bogus"), ("MICRONET_TERNARY_ISA", "avx9000")):
        with monkeypatch.context() as mp:
            mp.setenv(var, value)
            code, err = _run_main(["eval", str(work / "t.onnx"), "--limit", "8"], capfd)
            _assert_one_error_line(code, err, var)


# ---- mutated files -------------------------------------------------------------------------------

BAD_FILES = sorted([*MUTATIONS, "truncated", "empty", "random"])


@pytest.mark.parametrize("name", BAD_FILES)
def test_score_refuses_mutated_file(work, name, capfd):
    before = _hashes(work)
    code, err = _run_main(["score", str(work / f"{name}.onnx")], capfd)
    _assert_one_error_line(code, err)
    assert _hashes(work) == before


@pytest.mark.parametrize("name", [n for n in BAD_FILES if n not in RUNTIME_ACCEPTS])
def test_eval_refuses_mutated_file(work, name, capfd):
    before = _hashes(work)
    code, err = _run_main(["eval", str(work / f"{name}.onnx"), "--limit", "8"], capfd)
    _assert_one_error_line(code, err)
    assert _hashes(work) == before


def test_library_rejections_in_child_processes(work):
    """Through `python -m micronet_onnx` (the real entry point): files the custom-op library rejects
    inside onnxruntime (whose own log would add lines) give one line and status 2, never a signal."""
    jobs = [["eval", str(work / f"{n}.onnx"), "--limit", "8"] for n in ("float_group", "mask_graph_input")]
    jobs += [["bench", str(work / f"{n}.onnx"), "--batch", "1", "--threads", "1", "--repeats", "1"]
             for n in ("float_weight_shape", "truncated")]
    before = _hashes(work)

    def run(args):
        return args, subprocess.run([sys.executable, "-m", "micronet_onnx", *args], capture_output=True,
                                    text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        for args, r in pool.map(run, jobs):
            assert r.returncode >= 0, (args, r.returncode)  # no signal
            _assert_one_error_line(r.returncode, r.stderr)
    assert _hashes(work) == before


# ---- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CHECKPOINT_FIELDS))
def test_malformed_checkpoint_field(work, name, capfd):
    field = CHECKPOINT_FIELDS[name][1]
    before = _hashes(work)
    code, err = _run_main(["export", "--ternary", str(work / f"ck_{name}.pt"), "-o", str(work / "o.onnx")], capfd)
    _assert_one_error_line(code, err, field)
    assert _hashes(work) == before and not (work / "o.onnx").exists()


@pytest.mark.parametrize("name", sorted(RESUME_CONFIGS))
def test_resume_refuses_bad_saved_config(work, name, capfd):
    expect = RESUME_CONFIGS[name][1]
    before = _hashes(work)
    code, err = _run_main(["train", "-o", str(work / f"ck_{name}.pt"), "--resume"], capfd)
    _assert_one_error_line(code, err, expect)
    assert _hashes(work) == before


def test_interrupted_save_leaves_no_stale_temporaries(tmp_path):
    """A writer killed mid-save leaves ``.<name>.<pid>.*.tmp``; the next save of that target removes
    it, keeps a live writer's temporary and every other file, and replaces the target atomically."""
    target = tmp_path / "run.pt"
    target.write_bytes(b"old")
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os
        from micronet_onnx.fileio import atomic_writer
        with atomic_writer({str(target)!r}) as f:
            f.write(b"half")
            f.flush()
            os._exit(9)  # killed mid-write: no cleanup runs
    """)], timeout=120)
    assert child.returncode == 9
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".run.pt.")]
    assert len(stale) == 1 and target.read_bytes() == b"old"
    live = tmp_path / f".run.pt.{os.getppid()}.live.tmp"  # a running process's (our parent's) temporary
    other = tmp_path / ".other.pt.999999999.x.tmp"
    live.write_bytes(b"")
    other.write_bytes(b"")
    with atomic_writer(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run.pt", live.name, other.name])


# ---- bounded fuzz loop ---------------------------------------------------------------------------

FUZZ_CHILD = textwrap.dedent("""
    import json, random, sys
    import numpy as np, onnx
    from micronet_onnx.cli.errors import classify
    from micronet_onnx.runtime.session import create_session, set_log_severity
    from micronet_onnx.scoring import score_model

    set_log_severity(4)
    base_path, out, cases, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    raw = open(base_path, "rb").read()
    base = onnx.load_model_from_string(raw)
    rng = random.Random(seed)

    def field_mutation(m):
        nodes = [n for n in m.graph.node if n.op_type == "TernaryConv"]
        n = rng.choice(nodes)
        kind = rng.randrange(5)
        if kind == 0 and n.attribute:
            a = rng.choice(list(n.attribute))
            if a.ints:
                a.ints[rng.randrange(len(a.ints))] = rng.choice([0, -1, 2, 7, 1 << 20, 1 << 40])
            elif a.type == onnx.AttributeProto.INT:
                a.i = rng.choice([0, -1, 3, 1 << 30])
            else:
                a.s = rng.choice([b"Sigmoid", b"", b"relu"])
        elif kind == 1:
            del n.input[rng.randrange(1, len(n.input))]
        elif kind == 2:
            names = set(n.input[1:])
            t = rng.choice([t for t in m.graph.initializer if t.name in names])
            if t.dims:
                t.dims[0] = rng.choice([0, 1, t.dims[0] + 1, 1 << 20])
        elif kind == 3:
            names = set(n.input[1:])
            t = rng.choice([t for t in m.graph.initializer if t.name in names])
            t.data_type = rng.choice([1, 2, 3, 7, 10, 11])
        else:
            n.input[rng.randrange(len(n.input))] = rng.choice(["", "input", "nowhere"])
        return m.SerializeToString()

    def byte_mutation():
        b = bytearray(raw)
        kind = rng.randrange(3)
        if kind == 0:
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif kind == 1:
            b = b[: rng.randrange(len(b))]
        else:
            i = rng.randrange(len(b))
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        return bytes(b)

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with open(out, "w") as log:
        for i in range(cases):
            data = byte_mutation() if i % 2 else field_mutation(onnx.load_model_from_string(raw))
            path = f"{out}.{i}.onnx"
            open(path, "wb").write(data)
            row = {"case": i}
            for what, fn in (("score", lambda: score_model(path)),
                             ("run", lambda: create_session(path, threads=1).run(None, {"input": x}))):
                try:
                    fn()
                    row[what] = [0, ""]
                except BaseException as e:  # noqa: BLE001 - the CLI boundary's classification is the test
                    row[what] = list(classify(e))
            log.write(json.dumps(row) + "\\n")
            log.flush()
""")


def test_fuzz_mutations_of_a_real_export(work, tmp_path):
    """60 byte/field mutations (fixed seeds, two child processes): the scorer and onnxruntime with our
    library either accept a file or refuse it as an input error (status 2, one line); never an
    internal error, never a signal."""
    def run(seed):
        out = tmp_path / f"fuzz{seed}.jsonl"
        r = subprocess.run([sys.executable, "-c", FUZZ_CHILD, str(work / "t.onnx"), str(out), "30", str(seed)],
                           capture_output=True, text=True, timeout=300)
        return seed, r, out

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, (1, 2)))
    for seed, r, out in results:
        assert r.returncode == 0, (seed, r.returncode, r.stderr[-2000:])  # no signal, nothing escaped
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 30
        for row in rows:
            for what in ("score", "run"):
                code, message = row[what]
                assert code in (0, 2), (seed, row)
                assert "\n" not in message, (seed, row)


@pytest.mark.parametrize("preset,classes,depth,width", [
    ("micronet-c100", 100, None, None), ("baseline", 10, None, None), ("micronet", 10, 0.15, 0.5)])
def test_parameter_estimate_matches_the_built_model(preset, classes, depth, width):
    """The size bound is checked on an estimate computed without building the model: it must agree."""
    from micronet_onnx.model import MicroNet, preset_config
    from micronet_onnx.training.config import parameter_count

    cfg = preset_config(preset, classes, depth, width)
    built = sum(p.numel() for p in MicroNet(cfg).parameters())
    assert abs(parameter_count(cfg) - built) <= 0.01 * built
