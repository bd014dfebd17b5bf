"""Running ONNX files in onnxruntime on the CPU, with our custom-op library where a file needs it."""

from .session import OpsLibraryError, create_session, ops_library_path

__all__ = ["OpsLibraryError", "create_session", "ops_library_path"]
