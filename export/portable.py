"""The portable export's ternary conv: INT2 codes, looked up into ``{-w_n, 0, w_p}`` by standard ops.

A portable file holds only default-domain ops, so any ONNX runtime loads it without our library. Each
ternary conv is written as (``name`` = the module's name, ``[...]`` only where a channel map is needed)::

    name.codes   INT2 [Ms, Ns, kH, kW]        the stored codes of the TernaryConv export (channels.py's plan)
    Cast(to=INT64)                            int2 -> gather indices
    [Pad(name.pad) -> Gather(name.out_index, axis=0) -> Gather(name.in_index, axis=1)]
                                              back to [M, N, kH, kW]; dead rows / dropped inputs read the
                                              padded zero code
    Gather(name.centroids = [0, w_p, -w_n])   code 0 -> 0, +1 -> w_p, -1 -> the last entry (-w_n)
    Mul(Cast(name.scale.fp16 [M, 1, 1, 1]))   the folded BN scale (float16 in every export: exact)
    Conv(x, name.weight, Cast(name.bias.fp16)) the folded BN bias (+ Relu)

and a block's pre-activation BatchNorm (bn1) as ``Mul(name.scale) -> Add(name.shift)``, its folded
float32 affine: the arithmetic of the TernaryConv file's ``in_scale`` / ``in_bias``, in half the bytes
of a BatchNormalization.

Why a Gather and not DequantizeLinear: ``DequantizeLinear(codes, s)`` is ``codes * s``, one scale for
both signs, so the asymmetric ``{-w_n, 0, w_p}`` needs two of them and a Max/Min (or two masks); and
onnxruntime deliberately does not constant-fold DequantizeLinear (it keeps it for its QDQ fusions), so
the weights would be re-dequantized at every run. A Gather on a 3-entry table (negative indices count
from the end, so the int2 code is the index as it is, no ``+1``) is one op, exact, and onnxruntime
folds the whole chain at load into a plain Conv weight. Every value is exact in float32: the table
holds the float16 centroids, and a float16 x float16 product (22 significant bits) is exact, so the
weights are bit for bit the dense export's (``decode(codes, centroids16) * scale16``).

The packing (`pack_int2`) follows the ONNX standard for 2-bit types: four values per byte, the first
in the least significant bits, in ``raw_data``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from micronet_onnx.export import channels as ch
from micronet_onnx.export.folding import TernaryParts

INT2_PER_BYTE = 4


def pack_int2(codes: np.ndarray) -> bytes:
    """``codes`` (values in -2..1, any shape, row-major) as the standard's INT2 raw bytes: four per
    byte, element ``4k + j`` in bits ``2j..2j+1`` (two's complement), the last byte zero-padded."""
    flat = np.asarray(codes, dtype=np.int8).ravel()
    if flat.size and (flat.min() < -2 or flat.max() > 1):
        raise ValueError("INT2 holds values -2..1 only")
    pad = (-flat.size) % INT2_PER_BYTE
    bits = (np.concatenate([flat, np.zeros(pad, np.int8)]).astype(np.uint8) & 0x3).reshape(-1, INT2_PER_BYTE)
    return (bits[:, 0] | bits[:, 1] << 2 | bits[:, 2] << 4 | bits[:, 3] << 6).astype(np.uint8).tobytes()


def int2_constant(name: str, codes: np.ndarray) -> gs.Constant:
    """A gs constant whose proto is an INT2 initializer in raw data (gs would widen numpy to int8)."""
    proto = onnx.helper.make_tensor(name, onnx.TensorProto.INT2, list(codes.shape), pack_int2(codes), raw=True)
    return gs.Constant(name, LazyValues(proto))


def centroid_table(centroids16: np.ndarray) -> np.ndarray:
    """``[0, w_p, -w_n]`` float32 from the float16 ``[-w_n, w_p]``: indexed by the code itself."""
    neg, pos = (float(v) for v in np.asarray(centroids16, dtype=np.float16))
    return np.array([0.0, pos, neg], dtype=np.float32)


def index_maps(plan: ch.ChannelPlan) -> tuple[np.ndarray, np.ndarray]:
    """int32 [M] and [N]: position of each output row / input channel in the padded stored codes
    (the pad row/column, a zero code, for the ones not stored)."""
    out_index = np.full(plan.num_outputs, len(plan.out_rows), dtype=np.int32)
    out_index[plan.out_rows] = np.arange(len(plan.out_rows), dtype=np.int32)
    out_index[plan.dead_rows] = len(plan.out_rows)
    in_index = np.full(plan.num_inputs, len(plan.in_channels), dtype=np.int32)
    in_index[plan.in_channels] = np.arange(len(plan.in_channels), dtype=np.int32)
    return out_index, in_index


def ternary_weight(b, name: str, parts: TernaryParts, plan: ch.ChannelPlan) -> tuple[gs.Variable, list[gs.Constant]]:
    """Add the constant chain that yields the conv's float32 weight [M, N/g, kH, kW] to builder ``b``
    (`export.graph._Builder`). Returns the weight and the chain's constants (for the layer report)."""
    m = plan.num_outputs
    codes = int2_constant(f"{name}.codes", plan.stored_codes.astype(np.int8))
    consts: list[gs.Constant] = [codes]
    idx = _chain(b, "Cast", f"{name}.idx", [codes], to=onnx.TensorProto.INT64)
    out_map, in_map = plan.needs_out_map, plan.needs_in_map  # in_map only with group == 1 (the plan's rule)
    if out_map or in_map:
        pads = b.const(f"{name}.pad", np.array([0, 0, 0, 0, int(out_map), int(in_map), 0, 0], dtype=np.int64))
        idx = _chain(b, "Pad", f"{name}.idx.pad", [idx, pads])
        consts.append(pads)
        out_index, in_index = index_maps(plan)
        if out_map:
            oi = b.const(f"{name}.out_index", out_index)
            idx = _chain(b, "Gather", f"{name}.idx.rows", [idx, oi], axis=0)
            consts.append(oi)
        if in_map:
            ii = b.const(f"{name}.in_index", in_index)
            idx = _chain(b, "Gather", f"{name}.idx.cols", [idx, ii], axis=1)
            consts.append(ii)
    table = b.const(f"{name}.centroids", centroid_table(parts.centroids))
    ternary = _chain(b, "Gather", f"{name}.lut", [table, idx], axis=0)
    scale = fp16_param(b, f"{name}.scale", parts.scale.reshape(m, 1, 1, 1))
    weight = _chain(b, "Mul", f"{name}.weight", [ternary, scale])
    return weight, [*consts, table, scale.inputs[0].inputs[0]]


def fp16_param(b, name: str, values16: np.ndarray) -> gs.Variable:
    """The float16 values ``values16`` (the folded BN scale or bias, float16 in every export) as a
    float16 initializer ``name.fp16`` and a Cast to float32: exact, and 2 bytes an element instead of 4
    (about 30 KB less in a paper-scale C100 file, Cast nodes included)."""
    stored = b.const(name, np.asarray(values16, dtype=np.float16))
    return _chain(b, "Cast", f"{name}32", [stored], to=onnx.TensorProto.FLOAT)


def _chain(b, op: str, out_name: str, inputs: list, **attrs) -> gs.Variable:
    """One node of the constant chain: unnamed, its output ``out_name`` without a value_info (shape
    inference derives it; the chain is folded at load), which keeps about 35 KB out of a C100 file."""
    out = gs.Variable(out_name)
    b.nodes.append(gs.Node(op, attrs=attrs, inputs=inputs, outputs=[out]))
    return out
