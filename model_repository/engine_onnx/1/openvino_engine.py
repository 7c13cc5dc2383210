"""OpenVINO on the CPU for the engine step, and the precision it computes in.

Precisions (the engine's ``precision`` parameter, resolved by model.py):
- ``f32``: every op in fp32; the fp32 reference's scores to ~1e-6.
- ``bf16``: the linear layers in bf16, everything else in fp32. The linear layers are the matmuls
  with constant weights (q, k, v, o, gate, up, down): most of the model's FLOPs. RMSNorm, RoPE, the
  attention with its softmax, the residual stream, the masked mean pooling and the score head (the
  one matmul with a single output column) stay fp32. Only on CPUs that compute bf16 natively.

Why not OpenVINO's own bf16 (``INFERENCE_PRECISION_HINT: bf16``): it lowers every op to bf16, norms,
softmax, RoPE angles and pooling included, and its logits moved 2-3x as far from the reference as
vLLM's bf16 does (docs/cpu_engine.md); per-node "keep fp32" marks set from Python did not change it.
Here the graph states its own precisions instead: ``Convert`` to bf16 before each linear layer's two
inputs and back to f32 after it, compiled with the f32 hint, which leaves every op as the graph types
it. On a CPU with AVX512-BF16 or AMX the plugin keeps those bf16 types (elsewhere it would turn them
back into f32) and folds the weights' Converts into bf16 constants at compile time.
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ("f32", "bf16")
# OpenVINO keeps prepared kernels per input shape, 5,000 shapes by default; our runs come in thousands
# of (rows, width) shapes, so its memory rose for the whole 10-minute soak (engine +12 %). A bound of a
# few hundred shapes keeps the shapes that repeat; measured on the small preset, 600 random runs of up to
# 4,096 tokens took the same time with 300 as with 5,000 (docs/cpu_engine.md, "Memory").
DEFAULT_SHAPE_CACHE = 500


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX, as OpenVINO sees it: where bf16 runs natively (elsewhere it would emulate)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _weight_source(node):
    """The Constant a matmul input is computed from through layout-only ops, else None."""
    while node.get_type_name() in ("Transpose", "Convert", "Reshape", "Unsqueeze", "Squeeze"):
        node = node.input(0).get_source_output().get_node()
    return node if node.get_type_name() == "Constant" else None


def linear_layers(model) -> list:
    """The model's linear layers: fp32 MatMuls whose second input is a constant weight, less the score
    head (a single output column, [hidden, 1]), which stays fp32 like the pooling before it."""
    import openvino as ov

    found = []
    for op in model.get_ordered_ops():
        if (op.get_type_name() != "MatMul" or op.get_output_element_type(0) != ov.Type.f32
                or _weight_source(op.input(1).get_source_output().get_node()) is None):
            continue
        out = op.get_output_partial_shape(0)
        last = out[out.rank.get_length() - 1]
        if last.is_static and last.get_length() == 1:
            continue
        found.append(op)
    return found


def linear_layers_in_bf16(model) -> int:
    """Rewrite ``model`` in place so that its linear layers compute in bf16 and hand fp32 on;
    returns how many were rewritten (0 would mean the graph is not the one we export).

    One Convert per activation, shared by the layers that read it (q, k and v read the same norm,
    gate and up another): the producer, an RMSNorm or the SiLU product, computes in fp32 and the plugin
    may fold the Convert into it, so the activation is rounded once, as it is stored."""
    from openvino import opset13 as ops

    layers = linear_layers(model)
    converted = {}
    for op in layers:
        for port in op.inputs():
            source = port.get_source_output()
            key = (source.get_node().get_friendly_name(), source.get_index())
            if key not in converted:
                converted[key] = ops.convert(source, "bf16").output(0)
            port.replace_source_output(converted[key])
        consumers = list(op.output(0).get_target_inputs())
        back = ops.convert(op.output(0), "f32")
        for consumer in consumers:
            consumer.replace_source_output(back.output(0))
    model.validate_nodes_and_infer_types()
    return len(layers)


def openvino_runner(path, threads, precision, shape_cache):
    """Compile ``path`` for the CPU in ``precision`` (f32 or bf16, see above); returns
    ``run(ids, mask) -> logits`` [rows, 1] fp32. ``shape_cache``: OpenVINO's per-shape kernel cache,
    in input shapes (0: OpenVINO's default)."""
    import openvino as ov

    if precision not in PRECISIONS:
        raise ValueError(f"OpenVINO precision must be one of {PRECISIONS}, got {precision!r}")
    core = ov.Core()
    model = core.read_model(path)
    if precision == "bf16" and linear_layers_in_bf16(model) == 0:
        raise ValueError(f"{path}: no linear layers found to run in bf16")
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if shape_cache:
        config["CPU_RUNTIME_CACHE_CAPACITY"] = str(shape_cache)
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = core.compile_model(model, "CPU", config)
    output = compiled.output("logits")
    return lambda ids, mask: np.asarray(compiled({"input_ids": ids, "attention_mask": mask})[output], np.float32)
