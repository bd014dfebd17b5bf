"""The TernaryConv file format: its constants and bit layouts (`spec`), the node model that reads,
validates, decodes, writes and lowers one node (`node`), the ONNX version pins (`versions`) and the
numpy reference kernel for `onnx.reference` (`reference_op`)."""
