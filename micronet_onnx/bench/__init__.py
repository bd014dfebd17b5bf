"""Inference benchmarks: our library against the dense twin in stock onnxruntime (docs/runtime.md).

Everything here returns plain data; ``mnx bench`` renders it (`micronet_onnx.cli.bench_view`) or
prints it as JSON. Modules:

- `twin`: `dense_twin(model)`, the graph pass that replaces each ``micronet::TernaryConv`` by its
  standard-ONNX lowering (runnable in stock onnxruntime, the same function up to float32 rounding).
- `synthetic`: random ternary models (`random_ternary_micronet`, `make_random_ternary_model`,
  `single_layer_model`) for benchmarks without a trained model.
- `harness`: interleaved timing (`interleaved_times`), the two session factories, `kernel_env`.
- `machine`: CPU, onnxruntime version and how busy the machine was (`machine_info`, `busy_cpus`).
- `kernel_choice`: the kernel the library picks per node, as data.
- `whole_model`: `bench_model` (one file) and `bench_random` (random models, cached by `cache`).
- `layers`: `bench_layers`, single nodes over MicroNet's conv shapes and several sparsities.
- `peers` (contestants), `peer_data` (images), `quantize` (the int8 QDQ file), `peer_files`, `peer_bench`:
  `bench_peers` / `bench_peers_random`, ours against onnxruntime fp32 / int8 and OpenVINO (`mnx bench --peers`).
"""

from micronet_onnx.bench.harness import KERNEL_ENV, SETTLE_SECONDS, interleaved_times, kernel_env
from micronet_onnx.bench.kernel_choice import kernel_choice
from micronet_onnx.bench.layers import LAYER_SPARSITIES, MICRONET_LAYERS, bench_layers
from micronet_onnx.bench.machine import BUSY_CPUS, busy_cpus, machine_info
from micronet_onnx.bench.peer_bench import PEER_SETTLE_SECONDS, bench_peers, bench_peers_random
from micronet_onnx.bench.peers import contestants, openvino_status
from micronet_onnx.bench.synthetic import make_random_ternary_model, random_ternary_micronet, single_layer_model
from micronet_onnx.bench.twin import dense_twin
from micronet_onnx.bench.whole_model import bench_model, bench_random

__all__ = [
    "BUSY_CPUS", "KERNEL_ENV", "LAYER_SPARSITIES", "MICRONET_LAYERS", "PEER_SETTLE_SECONDS", "SETTLE_SECONDS",
    "bench_layers", "bench_model", "bench_peers", "bench_peers_random", "bench_random", "busy_cpus", "contestants",
    "dense_twin", "interleaved_times", "kernel_choice", "kernel_env", "machine_info", "make_random_ternary_model",
    "openvino_status", "random_ternary_micronet", "single_layer_model",
]
