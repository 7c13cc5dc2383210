"""OpenVINO on the CPU for the engine step, and the precision it computes in.

Precisions (the engine's ``precision`` parameter, resolved by model.py):
- ``f32``: every op in fp32; the fp32 reference's scores to ~1e-6.
- ``bf16``: the linear layers in bf16, the rest in fp32. The linear layers are the matmuls with
  constant weights (q, k, v, o, gate, up, down): most of the model's FLOPs. RMSNorm, RoPE, the
  attention with its softmax, the residual stream, the masked mean pooling and the score head (the one
  matmul with a single output column) stay fp32. Only the MLP's inside stays bf16 between its linear
  layers (SiLU(gate) x up, as vLLM computes it), since nothing there needs fp32 and every conversion
  costs a pass over memory. Only on CPUs that compute bf16 natively (AVX512-BF16 or AMX).

Why not OpenVINO's own bf16 (``INFERENCE_PRECISION_HINT: bf16``): it lowers every op to bf16, norms,
softmax and pooling included, and on the small preset its mean error was 5x vLLM's bf16
(docs/cpu_engine.md). Its per-node precision controls (``disable_fp16_compression`` and successors)
are C++ attributes the Python API cannot set, and are read for f16 only. Here the graph states its
own precisions instead: ``Convert`` to bf16 before each linear layer and back to f32 where fp32 ops
read its output, compiled with the f32 hint, which leaves every op as the graph types it. On a CPU
with bf16 the plugin keeps those types and folds the weights' Converts into bf16 constants.

The attention stays fp32 because OpenVINO's CPU attention kernel rounds the scores to bf16 before
the softmax when its inputs are bf16 (measured, docs/cpu_engine.md): that would be a softmax on
bf16 inputs.
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ("f32", "bf16")
# OpenVINO keeps prepared kernels per input shape, 5,000 shapes by default; our runs come in thousands
# of (rows, width) shapes, so its memory rose for the whole 10-minute soak (engine +12 %). A bound of a
# few hundred shapes keeps the shapes that repeat; measured on the small preset, 600 random runs of up to
# 4,096 tokens took the same time with 300 as with 5,000 (docs/cpu_engine.md, "Memory").
DEFAULT_SHAPE_CACHE = 500
#: Veltkamp's splitter for float32 -> 8 significant bits (bf16): 2**(24 - 8) + 1.
SPLITTER = 65537.0
#: Ops an MLP's bf16 inside may pass through: SiLU (Sigmoid x gate, or Swish) and the gating product.
MLP_INSIDE = ("Sigmoid", "Swish", "Multiply")


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


def round_to_bf16(output):
    """``output`` rounded to the nearest bf16 value, still in fp32: ``g - (g - x)`` with ``g = x * SPLITTER``
    (Veltkamp's split: round-to-nearest in fp32 arithmetic; activations are far below the 5e33 where
    ``x * SPLITTER`` would overflow). Needed because OpenVINO 2026.4's Convert to bf16 on a
    dynamic-shape tensor rounds only half of the values that round-to-nearest rounds up (it truncates
    the rest), a bias that doubled the mean error over the layers; a value already on the bf16 grid
    converts exactly, whatever the Convert does."""
    from openvino import opset13 as ops

    scaled = ops.multiply(output, ops.constant(np.float32(SPLITTER)))
    return ops.subtract(scaled, ops.subtract(scaled, output)).output(0)


def _mlp_inside(layer, layers: set) -> bool:
    """True when ``layer``'s output reaches only other linear layers, through SiLU and products of
    linear layers' outputs (an MLP's gate or up projection): then it may stay bf16 in between."""
    seen, todo = set(), [layer]
    while todo:
        node = todo.pop()
        for port in node.output(0).get_target_inputs():
            consumer = port.get_node()
            name = consumer.get_friendly_name()
            if name in layers or name in seen:
                continue
            if consumer.get_type_name() not in MLP_INSIDE:
                return False
            for source in (p.get_source_output().get_node() for p in consumer.inputs()):
                if source.get_friendly_name() not in layers and source.get_friendly_name() not in seen \
                        and source is not node and source.get_type_name() not in MLP_INSIDE:
                    return False
            seen.add(name)
            todo.append(consumer)
    return True


def linear_layers_in_bf16(model) -> int:
    """Rewrite ``model`` in place: its linear layers compute in bf16 (see the module's docstring);
    returns how many were rewritten (0 would mean the graph is not the one we export).

    Each activation a linear layer reads is rounded once and converted once, shared by the layers
    that read it (q, k and v read the same norm, gate and up another); an MLP's inside is bf16
    already. Outputs that fp32 ops read (q, k, v for RoPE and the attention; o and down for the
    residual stream) are converted back, exactly."""
    from openvino import opset13 as ops

    layers = linear_layers(model)
    names = {op.get_friendly_name() for op in layers}
    inside = {op.get_friendly_name() for op in layers if _mlp_inside(op, names)}
    converted = {}
    for op in layers:
        for k, port in enumerate(op.inputs()):
            source = port.get_source_output()
            node = source.get_node()
            if node.get_friendly_name() in inside or (node.get_type_name() in MLP_INSIDE and k == 0
                                                      and _reads_inside(node, inside)):
                continue  # bf16 already (the MLP's product)
            key = (node.get_friendly_name(), source.get_index())
            if key not in converted:
                # Weights (input 1) are constants, folded at compile time, exactly.
                converted[key] = ops.convert(source if k == 1 else round_to_bf16(source), "bf16").output(0)
            port.replace_source_output(converted[key])
        if op.get_friendly_name() not in inside:
            consumers = list(op.output(0).get_target_inputs())
            back = ops.convert(op.output(0), "f32")
            for consumer in consumers:
                consumer.replace_source_output(back.output(0))
    model.validate_nodes_and_infer_types()
    return len(layers)


def _reads_inside(node, inside: set) -> bool:
    """True when an MLP op computes from MLP-inside layers' outputs only (so it is bf16 too)."""
    for port in node.inputs():
        source = port.get_source_output().get_node()
        if source.get_friendly_name() not in inside and not (source.get_type_name() in MLP_INSIDE
                                                              and _reads_inside(source, inside)):
            return False
    return True


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
