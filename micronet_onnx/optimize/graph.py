"""The graph as the pass sees it: who produces and who reads each tensor, and which tensors are
constants.

A tensor's readers are counted in every nested graph too (an ``If``/``Loop`` body reading an outer
name is a reader the pass cannot rewire), and a graph output counts as a reader of its own. An
initializer that is also a graph input is *not* a constant: onnxruntime lets a caller override it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node given as a tensor (``value``), else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return numpy_helper.to_array(a.t)
    return None


def _subgraph_inputs(node: onnx.NodeProto) -> Iterator[str]:
    """Every tensor name read inside the nested graphs of ``node`` (outer-scope reads among them)."""
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for n in g.node:
                yield from (i for i in n.input if i)
                yield from _subgraph_inputs(n)
            yield from (o.name for o in g.output)


def constants_of(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers (not also graph inputs) and ``Constant`` node values, by name."""
    inputs = {vi.name for vi in graph.input}
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in inputs}
    for n in graph.node:
        v = constant_node_value(n)
        if v is not None:
            out[n.output[0]] = v
    return out


NodeIO = tuple[list[str], list[str], list[str]]
"""A node's inputs, outputs and the names its nested graphs read (what `Uses` is built from)."""


def node_io(node: onnx.NodeProto) -> NodeIO:
    return list(node.input), list(node.output), list(_subgraph_inputs(node)) if node.attribute else []


class Uses:
    """Readers of each tensor over a list of nodes (nested graphs and graph outputs included), given
    as `NodeIO` triples in graph order."""

    def __init__(self, nodes: Iterable[NodeIO], graph_outputs: Iterable[str]) -> None:
        self.count: Counter[str] = Counter()
        self.readers: dict[str, list[int]] = {}
        self.producer: dict[str, int] = {}
        self.outputs = set(graph_outputs)
        for idx, io in enumerate(nodes):
            self.add(idx, io)
        for name in self.outputs:
            self.count[name] += 1

    def add(self, idx: int, io: NodeIO) -> None:
        """Count the node at ``idx`` (its reads, nested reads and outputs)."""
        inputs, outputs, nested = io
        for name in inputs:
            if name:
                self.count[name] += 1
                self.readers.setdefault(name, []).append(idx)
        for name in nested:
            self.count[name] += 1  # a reader that cannot be rewired
        for name in outputs:
            if name:
                self.producer[name] = idx

    def remove(self, idx: int, io: NodeIO) -> None:
        """Undo `add` of the node at ``idx`` (so a fusion updates the index, not rebuilds it)."""
        inputs, outputs, nested = io
        for name in inputs:
            if name:
                self.count[name] -= 1
                self.readers[name].remove(idx)
        for name in nested:
            self.count[name] -= 1
        for name in outputs:
            if name and self.producer.get(name) == idx:
                del self.producer[name]

    def sole_reader(self, name: str) -> int | None:
        """The index of the one node reading ``name`` once, when nothing else reads it (no other
        node, no nested graph, not a graph output); else None."""
        if self.count[name] != 1 or name in self.outputs:
            return None
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 else None

    def why_not_sole(self, name: str) -> str:
        """Why `sole_reader` is None for ``name`` (for the report)."""
        if name in self.outputs:
            return f"{name!r} is a graph output"
        return f"{name!r} has {self.count[name]} readers"
