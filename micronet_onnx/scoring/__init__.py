"""Storage, operations and MicroNet score of an ONNX file, straight from the graph (docs/scoring.md)."""
