"""Running exported models with onnxruntime and the compiled ``micronet`` custom-op library.

``libmicronet_ops.so`` (built from ``runtime_ops/`` by ``make lib``) implements
``micronet::TernaryConv``; see ``docs/runtime.md``. onnxruntime is imported only when a session is
created, so importing this module (and ``micronet_onnx``) stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

LIBRARY_ENV = "MICRONET_OPS_LIBRARY"
LIBRARY_NAME = "libmicronet_ops.so"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # micronet_onnx/
_BUILD_HINT = "build it with `make lib` (runs runtime_ops/build.sh) in the source checkout"

# keyword arguments of onnxruntime.InferenceSession (everything else is a SessionOptions attribute)
_SESSION_KWARGS = ("providers", "provider_options", "disabled_optimizers")


class OpsLibraryError(RuntimeError):
    """The custom-op library is missing or cannot be loaded into onnxruntime."""


def _candidates() -> list[Path]:
    return [
        _PACKAGE_DIR / "_lib" / LIBRARY_NAME,  # installed package, or `make lib` in a checkout
        _PACKAGE_DIR.parent / "runtime_ops" / "build" / LIBRARY_NAME,  # a source checkout's build folder
    ]


def ops_library_path() -> str:
    """Absolute path of ``libmicronet_ops.so``.

    Looks at ``$MICRONET_OPS_LIBRARY`` first, then the packaged ``micronet_onnx/_lib/``, then
    ``runtime_ops/build/`` of a source checkout. Raises `OpsLibraryError` when none exists.
    """
    env = os.environ.get(LIBRARY_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise OpsLibraryError(f"{LIBRARY_ENV}={env} is not a file; unset it or {_BUILD_HINT}")
        return str(path.resolve())
    for path in _candidates():
        if path.is_file():
            return str(path)
    looked = ", ".join(str(p) for p in _candidates())
    raise OpsLibraryError(
        f"the micronet custom-op library {LIBRARY_NAME} was not found (looked in {looked}); {_BUILD_HINT}"
    )


def session_options(threads: int | None = None, **options: Any) -> onnxruntime.SessionOptions:
    """`onnxruntime.SessionOptions` with the custom-op library registered.

    ``threads`` sets ``intra_op_num_threads`` (the pool TernaryConv runs on); the graph optimization
    level defaults to ``ORT_ENABLE_ALL``; every other keyword is set as a SessionOptions attribute.
    """
    import onnxruntime as ort

    library = ops_library_path()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if int(threads) < 0:
            raise ValueError(f"threads must be >= 0 (0 = onnxruntime's default), got {threads}")
        so.intra_op_num_threads = int(threads)
    for name, value in options.items():
        if not hasattr(so, name):
            raise TypeError(
                f"unknown session option {name!r}: no SessionOptions attribute nor one of {_SESSION_KWARGS}"
            )
        setattr(so, name, value)
    try:
        so.register_custom_ops_library(library)
    except Exception as exc:  # onnxruntime raises its own exception types here
        raise OpsLibraryError(
            f"cannot load {library} into onnxruntime {ort.__version__}: {exc}; {_BUILD_HINT}"
        ) from exc
    return so


def check_format_version(model: str | os.PathLike[str] | bytes) -> None:
    """Raise `FormatError` when the model imports a ``micronet`` opset this library does not read, or
    when a TernaryConv node has more inputs than its version allows (a version-1 model's nodes have at
    most 8: inputs 8..10 came with version 2).

    onnxruntime itself cannot tell the kernel which version of a custom domain a model imports (it
    resolves every version to the one registered schema), so the check is done here.
    """
    import onnx

    from micronet_onnx.format import spec as tf

    if isinstance(model, (bytes, bytearray, memoryview)):
        proto = onnx.load_model_from_string(bytes(model))
    else:
        proto = onnx.load(os.fspath(model), load_external_data=False)
    version = None
    for opset in proto.opset_import:
        if opset.domain == tf.DOMAIN:
            if opset.version not in tf.SUPPORTED_OPSET_VERSIONS:
                raise tf.FormatError(
                    f"the model imports {tf.DOMAIN} opset {opset.version}; this library reads versions "
                    f"{list(tf.SUPPORTED_OPSET_VERSIONS)}"
                )
            version = int(opset.version)
    if version is None:
        return
    for node in proto.graph.node:
        if node.domain == tf.DOMAIN and node.op_type == tf.OP_TYPE and len(node.input) > tf.max_inputs(version):
            try:
                tf.check_input_count(len(node.input), version)
            except tf.FormatError as e:
                raise tf.FormatError(f"{tf.OP_TYPE} node {node.name!r} {e} (the model imports opset {version})") \
                    from None

def create_session(
    model: str | os.PathLike[str] | bytes, threads: int | None = None, **kwargs: Any
) -> onnxruntime.InferenceSession:
    """An `onnxruntime.InferenceSession` on the CPU provider that can run ``micronet`` ops.

    ``model`` is a path or serialized model bytes. ``threads`` sets ``intra_op_num_threads`` (default:
    onnxruntime's choice, one per core). Keyword arguments ``providers``, ``provider_options`` and
    ``disabled_optimizers`` go to `onnxruntime.InferenceSession` (``providers`` defaults to
    ``["CPUExecutionProvider"]``); any other keyword is set as an attribute of
    `onnxruntime.SessionOptions`, e.g. ``graph_optimization_level``, ``inter_op_num_threads``,
    ``execution_mode``, ``log_severity_level``, ``enable_profiling``, ``optimized_model_filepath``.
    A malformed TernaryConv node fails here with an onnxruntime error naming the node; a model that
    imports an unsupported ``micronet`` opset version, or a version-1 model with a node that has
    version-2 inputs, raises `ternary_format.FormatError`.
    """
    import onnxruntime as ort

    session_kwargs = {k: kwargs.pop(k) for k in _SESSION_KWARGS if k in kwargs}
    session_kwargs.setdefault("providers", ["CPUExecutionProvider"])
    so = session_options(threads, **kwargs)
    if isinstance(model, (bytes, bytearray, memoryview)):
        source: str | bytes = bytes(model)
    else:
        source = os.fspath(model)
    check_format_version(source)
    return ort.InferenceSession(source, sess_options=so, **session_kwargs)
