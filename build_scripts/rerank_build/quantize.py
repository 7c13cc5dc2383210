"""FP8 post-training quantization of the fp16 ONNX: Q/DQ only where TensorRT runs FP8 GEMMs.

The fp16 export keeps RMSNorm, pooling and the score head in fp32 on purpose. A generic quantizer
(ModelOpt's ``quantize_mode="fp8"`` with ``high_precision_dtype="fp16"``) rewrote those islands into
fp16 (34 ``Cast`` nodes became 4) and gave NaN for every pair on tiny. This module changes nothing but
the inputs of the seven linear projections of each decoder layer (q/k/v/o, gate/up/down): each gets
``QuantizeLinear -> DequantizeLinear`` to FLOAT8E4M3FN. TensorRT fuses each Q/DQ pair into an FP8 GEMM;
ONNX Runtime runs the same graph on CPU (its QuantizeLinear/DequantizeLinear have FP8 kernels), which
is how the accuracy is measured without a GPU. Attention's two batched matmuls and the head stay as
they are.

What TensorRT needs to *store* the weights in FP8 (TensorRT developer guide, "Working with Quantized
Types" > "Explicit Quantization" > "Quantized Weights": high-precision weights are quantized at build
time with the IQuantizeLayer's scale and the quantized weights are stored in the plan; the Q layer's
scale must be a build-time constant, per-channel quantization is for weights only, NvInfer.h
``IQuantizeLayer``):

- the weight quantizer reads the initializer itself. The export's linear weights are ``[out, in]``
  behind a ``Transpose``; here the transpose is folded into a new ``[in, out]`` initializer
  (``<name>_transposed``), so ``Q(initializer) -> DQ -> MatMul`` is a constant subgraph that
  TensorRT folds into FP8 weights, not a fake quantization of fp16 weights at run time;
- weight scales are per output channel (axis 1 of ``[in, out]``; TensorRT 10.6 added per-channel
  scaling for FP8 GEMMs on Hopper, 10.7 on Ada, per the release notes), activations per tensor;
  scales are fp16 like the tensors they scale (a strongly typed network requires it; so does ONNX's
  opset 19 QuantizeLinear), ``amax / 448`` rounded up so that ``amax`` stays inside the FP8 range;
- the model declares ONNX IR version 9, the first with the FLOAT8 types (opset 19 needs it).

Calibration (``amax`` of each activation) covers short pairs and long rows (2k to 8k tokens): a long
row's activations are not a short row's. It runs our PyTorch reference with the ONNX's own weights
(the initializers keep the checkpoint's names) and memory-efficient attention, because ONNX Runtime
would materialise 8k x 8k attention scores per head, which a CPU host cannot hold for the full model.
The graph moves from opset 17 to 19 (FP8 Q/DQ needs 19) with ONNX's version converter.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .export_onnx import EXTERNAL_DATA_FILE, PROTOBUF_LIMIT

logger = logging.getLogger(__name__)

#: Largest finite FLOAT8E4M3FN value: a tensor's amax maps onto it.
FP8_E4M3_MAX = 448.0
FP8_OPSET = 19
#: ONNX IR version 9 introduced the FLOAT8 element types (and goes with opset 19).
FP8_IR_VERSION = 9
#: Linear projections of a decoder layer (their weights' names end in "<name>.weight").
LINEAR_WEIGHTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AMAX_FLOOR = 1e-4  # a channel or tensor of zeros still gets a usable scale
#: The [in, out] weight's output-channel axis, the one per-channel scales run along.
WEIGHT_AXIS = 1
#: Calibration: short pairs of at most this many tokens, plus one row of each long length.
SHORT_TOKENS = 256
LONG_ROW_TOKENS = (2048, 4096, 8192)


class QuantizeError(RuntimeError):
    """The graph is not one this quantizer knows (not our fp16 export, or no linear layer found)."""


@dataclass(frozen=True)
class Site:
    """One linear MatMul: its activation input, and the fp16 ``[out, in]`` weight behind a Transpose."""

    node: str
    activation: str
    transpose: str  # the Transpose node that turns the initializer into the MatMul's [in, out] input
    initializer: str  # the fp16 weight initializer, e.g. model.layers.0.self_attn.q_proj.weight

    @property
    def module(self) -> str:
        """The reference model's nn.Linear holding this weight (model.layers.0.self_attn.q_proj)."""
        return self.initializer.rsplit(".", 1)[0]

    @property
    def transposed(self) -> str:
        return f"{self.initializer}_transposed"


def linear_sites(model: Any) -> list[Site]:
    """Every MatMul whose second input is ``Transpose(fp16 projection weight)``, as the export writes it."""
    import onnx

    fp16 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    produced_by = {out: node for node in model.graph.node for out in node.output}
    sites = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        source = produced_by.get(node.input[1])
        if source is None or source.op_type != "Transpose" or source.input[0] not in fp16:
            continue
        weight = source.input[0]
        if weight.rsplit(".", 2)[-2] in LINEAR_WEIGHTS:
            sites.append(Site(node.name, node.input[0], source.name, weight))
    return sites


def calibration_feeds(tokenizer_dir: str | Path, n_pairs: int = 64, seq: int = SHORT_TOKENS, seed: int = 0,
                      batch: int = 16, long_rows: tuple[int, ...] = LONG_ROW_TOKENS) -> list[dict[str, np.ndarray]]:
    """Seeded multilingual pairs (the parity tool's generator): ``n_pairs`` short ones left-padded to
    ``seq`` in batches of ``batch``, then one unpadded row of exactly each length in ``long_rows``."""
    from rerank_contract.prompt import PairEncoder, left_pad, load_tokenizer

    from .textgen import random_cases

    tokenizer = load_tokenizer(str(tokenizer_dir))
    encoder = PairEncoder(tokenizer, max_length=seq)
    rows = []
    for case in random_cases(seed, n_cases=n_pairs, passages_per_case=(1, 1), passage_words=(20, 160)):
        rows += encoder.encode(case.query, case.passages, "END")
    padded = left_pad(rows[:n_pairs], length=seq)
    feeds = [{"input_ids": padded.input_ids[k:k + batch], "attention_mask": padded.attention_mask[k:k + batch]}
             for k in range(0, n_pairs, batch)]
    for k, length in enumerate(long_rows):
        # At least one token per word, so `length` words always fill the row; END truncation cuts it.
        case = random_cases(seed + 1 + k, n_cases=1, passages_per_case=(1, 1), passage_words=(length, length))[0]
        row = PairEncoder(tokenizer, max_length=length).encode(case.query, case.passages, "END")[0]
        long = left_pad([row])
        feeds.append({"input_ids": long.input_ids, "attention_mask": long.attention_mask})
    return feeds


def reference_from_onnx(model: Any, model_dir: Path) -> Any:
    """Our PyTorch reference (fp32 math, memory-efficient attention) holding the ONNX's own weights.

    The export keeps the checkpoint's parameter names, so the initializers are the state dict; fp16
    weights are widened exactly, so the activations are the fp16 graph's up to its roundings.
    ``model_dir`` holds ``config.json`` and any external data.
    """
    import torch
    from onnx import numpy_helper

    from .config import RerankerConfig
    from .reference import Reranker, llama3_inv_freq

    config = RerankerConfig.from_file(model_dir / "config.json")
    with torch.device("meta"):
        reference = Reranker(config, attn_impl="sdpa")
    wanted = set(reference.state_dict())
    state = {i.name: torch.from_numpy(numpy_helper.to_array(i, base_dir=str(model_dir)).astype(np.float32))
             for i in model.graph.initializer if i.name in wanted}
    if set(state) != wanted:
        raise QuantizeError(f"the ONNX lacks the reference's weights {sorted(wanted - set(state))[:3]}: "
                            "is it this project's export?")
    reference.load_state_dict(state, assign=True)
    reference.model.inv_freq = llama3_inv_freq(config)
    return reference.eval()


def calibration_amax(reference: Any, sites: list[Site], feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """max |x| of each site's activation (keyed by its ONNX tensor name) over the calibration feeds,
    read at the input of the reference's matching nn.Linear (q/k/v share one input, gate/up another)."""
    import torch
    from tqdm import tqdm

    per_module: dict[str, float] = {}
    hooks = []
    for name in {s.module for s in sites}:
        def record(_module: Any, args: tuple[Any, ...], name: str = name) -> None:
            per_module[name] = max(per_module.get(name, 0.0), float(args[0].abs().max()))
        hooks.append(reference.get_submodule(name).register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            for feed in tqdm(feeds, desc="fp8 calibration", unit="batch", leave=False):
                reference(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]))
    finally:
        for hook in hooks:
            hook.remove()
    amax: dict[str, float] = {}
    for site in sites:
        amax[site.activation] = max(amax.get(site.activation, 0.0), per_module[site.module])
    return amax


def fp16_scale(amax: np.ndarray | float) -> np.ndarray:
    """``amax / 448`` as fp16, rounded up where fp16 rounds down (x / scale must stay within 448)."""
    exact = np.maximum(np.asarray(amax, dtype=np.float64), AMAX_FLOOR) / FP8_E4M3_MAX
    scale = exact.astype(np.float16)
    low = scale.astype(np.float64) < exact
    return np.where(low, np.nextafter(scale, np.float16(np.inf)), scale).astype(np.float16)


def insert_qdq(model: Any, sites: list[Site], activation_amax: dict[str, float], per_channel: bool = True) -> int:
    """Rewrite the graph in place; returns how many Q/DQ nodes it inserted.

    Each site's ``Transpose(W)`` becomes an ``[in, out]`` initializer ``W_transposed`` read directly by
    its weight Q (per output channel); each activation gets one per-tensor Q/DQ pair, shared by the
    MatMuls that read it. The ``[out, in]`` initializers and their Transposes go.
    """
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    new_inits: list[Any] = []
    zero_points: dict[tuple[int, ...], str] = {}

    def zero_point(shape: tuple[int, ...]) -> str:
        # opset 19: the zero point's type picks FLOAT8E4M3FN and its shape must equal the scale's
        if shape not in zero_points:
            name = "fp8_zero_point" + "".join(f"_{d}" for d in shape)
            new_inits.append(helper.make_tensor(name, onnx.TensorProto.FLOAT8E4M3FN, list(shape),
                                                [0] * int(np.prod(shape, dtype=np.int64))))
            zero_points[shape] = name
        return zero_points[shape]

    def qdq(tensor: str, scale: np.ndarray, base: str, axis: int | None) -> tuple[list[Any], str]:
        scale_name, zero = f"{base}_fp8_scale", zero_point(tuple(scale.shape))
        new_inits.append(numpy_helper.from_array(scale, scale_name))
        quantized, dequantized = f"{base}_fp8_q", f"{base}_fp8_dq"
        nodes = [helper.make_node("QuantizeLinear", [tensor, scale_name, zero], [quantized],
                                  name=f"{base}_QuantizeLinear"),
                 helper.make_node("DequantizeLinear", [quantized, scale_name, zero], [dequantized],
                                  name=f"{base}_DequantizeLinear")]
        if axis is not None:
            for node in nodes:
                node.attribute.append(helper.make_attribute("axis", axis))
        return nodes, dequantized

    made: dict[str, str] = {}  # activation -> its DQ output
    before: dict[str, list[Any]] = {}  # nodes inserted right before the first MatMul that needs them
    weight_of: dict[str, str] = {}  # MatMul -> its weight DQ output
    for site in sites:
        nodes = before.setdefault(site.node, [])
        if site.activation not in made:
            base = site.activation.strip("/").replace("/", "_")
            pair, made[site.activation] = qdq(site.activation, fp16_scale(activation_amax[site.activation]),
                                              base, None)
            nodes += pair
        weight = numpy_helper.to_array(inits[site.initializer])  # [out, in], fp16
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), site.transposed))
        if per_channel:
            channel_amax = np.abs(weight.astype(np.float32)).max(axis=1)
            pair, weight_of[site.node] = qdq(site.transposed, fp16_scale(channel_amax), site.transposed, WEIGHT_AXIS)
        else:
            tensor_amax = float(np.abs(weight.astype(np.float32)).max())
            pair, weight_of[site.node] = qdq(site.transposed, fp16_scale(tensor_amax), site.transposed, None)
        nodes += pair
    transposes = {s.transpose for s in sites}
    ordered = []
    for node in model.graph.node:
        if node.name in transposes:
            continue
        ordered += before.get(node.name, [])
        if node.name in weight_of:
            node.input[0] = made[node.input[0]]
            node.input[1] = weight_of[node.name]
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    dropped = {s.initializer for s in sites}
    if any(name in dropped for node in model.graph.node for name in node.input):
        raise QuantizeError("a projection weight has consumers besides its Transpose; refusing to drop it")
    kept = [i for i in model.graph.initializer if i.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + new_inits)
    return 2 * (len(made) + len(sites))


def quantize_fp8(onnx_path: str | Path, out_dir: str | Path, feeds: list[dict[str, np.ndarray]],
                 per_channel: bool = True) -> Path:
    """Write ``out_dir/model.onnx`` (FP8 Q/DQ at the linear layers) and ``quantize_meta.json``.

    ``per_channel`` False: one scale per weight tensor (for TensorRT before 10.6 on Hopper, 10.7 on Ada).
    """
    import onnx
    from onnx import numpy_helper, version_converter
    from onnx.external_data_helper import load_external_data_for_model

    src = Path(onnx_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = onnx.load(str(src), load_external_data=False)  # the weights are read when needed
    if not any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        raise QuantizeError(f"{src} has no fp16 weights: quantize the fp16 export (export-onnx --dtype fp16)")
    sites = linear_sites(model)
    if not sites:
        raise QuantizeError(f"{src}: no linear projection found (is it this project's export?)")
    lengths = sorted({int(f["attention_mask"].sum(axis=1).max()) for f in feeds})
    logger.info("calibrating %d activations on %d batches (rows of %s tokens)",
                len({s.activation for s in sites}), len(feeds), lengths)
    activation_amax = calibration_amax(reference_from_onnx(model, src.parent), sites, feeds)
    # The converter serializes the model, which protobuf caps at 2 GB: convert before the weights load.
    model = version_converter.convert_version(model, FP8_OPSET)
    load_external_data_for_model(model, str(src.parent))
    inits = {i.name: i for i in model.graph.initializer}
    weight_amax = {s.initializer: float(np.abs(numpy_helper.to_array(inits[s.initializer]).astype(np.float32)).max())
                   for s in sites}
    pairs = insert_qdq(model, sites, activation_amax, per_channel)
    model.ir_version = max(model.ir_version, FP8_IR_VERSION)
    target = out / "model.onnx"
    (out / EXTERNAL_DATA_FILE).unlink(missing_ok=True)
    if (src.with_name(EXTERNAL_DATA_FILE).exists()
            or sum(i.ByteSize() for i in model.graph.initializer) > PROTOBUF_LIMIT * 0.9):
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=EXTERNAL_DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(model, str(target))
    del model
    onnx.checker.check_model(str(target))
    meta = {
        "precision": "fp8",
        "format": "FLOAT8E4M3FN Q/DQ on [in, out] weight initializers and on activations; fp16 scales "
                  "amax / 448, rounded up",
        "weight_scales": "per output channel (axis 1)" if per_channel else "per tensor",
        "activation_scales": "per tensor",
        "source": str(src), "opset": FP8_OPSET, "ir_version": FP8_IR_VERSION, "linear_layers": len(sites),
        "qdq_nodes": pairs, "calibration_batches": len(feeds),
        "calibration_rows": sum(len(f["input_ids"]) for f in feeds), "calibration_max_row_tokens": lengths,
        "activation_amax": activation_amax, "weight_amax": weight_amax,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "quantize_meta.json").write_text(json.dumps(meta, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        if (src.parent / name).exists():
            shutil.copy2(src.parent / name, out / name)
    logger.info("wrote %s: %d linear layers, %d Q/DQ nodes, %.1fs", target, len(sites), pairs, meta["seconds"])
    return target
