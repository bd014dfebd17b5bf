"""Running exported models with onnxruntime and the compiled ``micronet`` custom-op library.

``libmicronet_ops.so`` (built from ``runtime_ops/`` by ``make lib``) implements
``micronet::TernaryConv``; see ``docs/runtime.md``. onnxruntime is imported only when a session is
created, so importing this module (and ``micronet_onnx``) stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:  # pragma: no cover
    import onnx
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


def session_options(threads: int | None = None, *, library: bool = True, config: Mapping[str, str] | None = None,
                    **options: Any) -> onnxruntime.SessionOptions:
    """`onnxruntime.SessionOptions` for the CPU provider, with our custom-op library registered when
    ``library`` is true.

    ``threads`` sets ``intra_op_num_threads`` (the pool TernaryConv runs on); the graph optimization
    level defaults to ``ORT_ENABLE_ALL``; ``config`` entries go to ``add_session_config_entry``; every
    other keyword is set as a SessionOptions attribute.
    """
    import onnxruntime as ort

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
    for key, value in (config or {}).items():
        so.add_session_config_entry(str(key), str(value))
    if library:
        _register_library(so)
    return so


def _register_library(so: onnxruntime.SessionOptions) -> None:
    import onnxruntime as ort

    path = ops_library_path()
    try:
        so.register_custom_ops_library(path)
    except Exception as exc:  # onnxruntime raises its own exception types here
        raise OpsLibraryError(
            f"cannot load {path} into onnxruntime {ort.__version__}: {exc}; {_BUILD_HINT}"
        ) from exc


ModelSource = Union[str, "os.PathLike[str]", bytes, "onnx.ModelProto"]


def load_proto(model: ModelSource) -> onnx.ModelProto:
    """The model's protobuf without external data (what the version check and the library decision read)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray, memoryview)):
        return onnx.load_model_from_string(bytes(model))
    return onnx.load(os.fspath(model), load_external_data=False)


def check_format_version(model: ModelSource) -> int | None:
    """The ``micronet`` format version ``model`` imports (None: it imports none), after checking its IR
    version, that this package reads the format version, and that every TernaryConv node (subgraphs
    included) has the inputs its version allows.

    onnxruntime itself cannot tell the kernel which version of a custom domain a model imports (it
    resolves every version to the one registered schema), and it runs a file with IR version 0, so
    the checks that need the file's header are made here, by `format.versions` (their one owner),
    before onnxruntime sees the model.
    """
    from micronet_onnx.format import spec, versions

    proto = load_proto(model)
    versions.check_ir_version(proto)
    version = versions.micronet_version(proto)
    if version is None:
        return None
    for node, _ in versions.iter_nodes(proto.graph):
        if node.domain == spec.DOMAIN and node.op_type == spec.OP_TYPE:
            try:
                versions.check_node_header(node, version)
            except spec.FormatError as e:
                raise spec.FormatError(f"{spec.OP_TYPE} node {node.name!r} {e} (the model imports opset {version})") \
                    from None
    return version


def check_kernel_environment() -> None:
    """Refuse a ``MICRONET_TERNARY_KERNEL`` / ``_ISA`` value the library does not know, in one line and
    before a session is built (the library refuses it too, but inside onnxruntime's own log)."""
    from micronet_onnx.runtime.kernel_report import ISA_ENV, ISAS, KERNEL_ENV, KERNELS

    for name, allowed in ((KERNEL_ENV, KERNELS), (ISA_ENV, ISAS)):
        value = os.environ.get(name)
        if value not in (None, "") and value not in allowed:
            raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")


_log_severity: int | None = None


def set_log_severity(level: int | None) -> None:
    """Default ``log_severity_level`` of the sessions created from now on (None: onnxruntime's). The
    CLI sets 4 (fatal only): it reports every failure itself, in one line."""
    global _log_severity
    _log_severity = level


def needs_library(model: ModelSource) -> bool:
    """Whether running ``model`` takes our custom-op library: it imports the ``micronet`` domain."""
    return check_format_version(model) is not None


def create_session(
    model: ModelSource, threads: int | None = None, *, library: bool | None = None,
    config: Mapping[str, str] | None = None, **kwargs: Any
) -> onnxruntime.InferenceSession:
    """The one onnxruntime session factory: an `onnxruntime.InferenceSession` on the CPU provider,
    with our custom-op library registered when the model imports the ``micronet`` domain.

    ``model`` is a path, serialized model bytes or a `onnx.ModelProto`. ``threads`` sets
    ``intra_op_num_threads`` (default: onnxruntime's choice, one per core). ``library``: None (default)
    registers the library only for files that need it, so a dense file runs where the library is
    absent; True or False forces it. ``config``: session config entries. Keyword arguments
    ``providers``, ``provider_options`` and ``disabled_optimizers`` go to
    `onnxruntime.InferenceSession` (``providers`` defaults to ``["CPUExecutionProvider"]``); any other
    keyword is set as an attribute of `onnxruntime.SessionOptions`, e.g. ``graph_optimization_level``,
    ``inter_op_num_threads``, ``execution_mode``, ``log_severity_level``, ``enable_profiling``.
    A malformed TernaryConv node fails here with an onnxruntime error naming the node; a model with
    an IR version outside `versions.check_ir_version`'s range, one that imports an unsupported
    ``micronet`` opset version or uses the domain without importing it, or a version-1 model with a
    node that has version-2 inputs, raises `FormatError`; an unknown ``MICRONET_TERNARY_KERNEL`` /
    ``_ISA`` value raises ValueError.
    """
    import onnx
    import onnxruntime as ort

    session_kwargs = {k: kwargs.pop(k) for k in _SESSION_KWARGS if k in kwargs}
    session_kwargs.setdefault("providers", ["CPUExecutionProvider"])
    version = check_format_version(model)
    if library or (library is None and version is not None):
        check_kernel_environment()
    if _log_severity is not None:
        kwargs.setdefault("log_severity_level", _log_severity)
    so = session_options(threads, library=(version is not None) if library is None else library, config=config,
                         **kwargs)
    if isinstance(model, onnx.ModelProto):
        source: str | bytes = model.SerializeToString()
    elif isinstance(model, (bytes, bytearray, memoryview)):
        source = bytes(model)
    else:
        source = os.fspath(model)
    return ort.InferenceSession(source, sess_options=so, **session_kwargs)
