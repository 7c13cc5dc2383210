"""ONNX export of the reranker: the graph TensorRT builds from and ONNX Runtime serves on CPU.

Contract (shared by ONNX, TensorRT and the Triton configs):
- inputs ``input_ids`` and ``attention_mask``: int32 [batch, seq], left-padded, dynamic axes;
- output ``logits``: fp32 [batch, 1] (raw logit; the head's division by temperature included).
Legacy TorchScript exporter, opset 17, explicit bidirectional mask. The fp32 export (ONNX Runtime and
OpenVINO on CPU) traces the eager reference attention; fp16 and bf16 (TensorRT's sources) trace the
same attention in the form TensorRT fuses (``attn_impl="tensorrt"``: scale, mask and softmax in the
activation dtype, grouped K/V heads never copied; see :meth:`reference.Attention.tensorrt_form`).
The graph guards itself (:class:`EngineGraph`), because a TensorRT engine has no Python layer in
front of it: ids are clamped into ``[0, vocab)``, the mask is read as ``mask > 0``, and a row whose
mask is all zeros scores :data:`EMPTY_ROW_LOGIT`. None of this changes a well-formed row's score.
``fp16`` keeps RMSNorm, pooling and the head in fp32. Models over 2 GB are written
with ONNX external data (``model.onnx.data``) beside ``model.onnx``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from rerank_contract.prompt import EOS_ID

from .checkpoint import load_reranker, resolve_checkpoint
from .reference import Reranker
from .tokenizer_files import copy_tokenizer_files

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
ONNX_INT_DTYPE = torch.int32
OPSET = 17
EXTERNAL_DATA_FILE = "model.onnx.data"
#: fp32 for ONNX Runtime on CPU; fp16 / bf16 for strongly typed TensorRT builds (ONNX Runtime's CPU
#: provider runs fp16 through inserted casts, but has no bf16 kernels).
EXPORT_DTYPES = ("fp32", "fp16", "bf16")
#: The attention each dtype traces: fp32 stays the reference's eager form (its CPU runtimes fuse that
#: pattern already); the TensorRT sources use the form TensorRT fuses into one attention kernel.
EXPORT_ATTENTION = {"fp32": "eager", "fp16": "tensorrt", "bf16": "tensorrt"}
PROTOBUF_LIMIT = 2 * 1024**3
#: The logit of a row with no token to attend to: float32's lowest finite value. It is never a
#: plausible score, sorts last, and stays valid JSON (NaN and -inf do not).
EMPTY_ROW_LOGIT = float(torch.finfo(torch.float32).min)


class EngineGraph(Reranker):
    """The exported computation: :class:`Reranker` behind guards against what a direct call may send.

    Out-of-range ids would make TensorRT's Gather read outside the embedding table (undefined
    behaviour) and ONNX Runtime's fail; mask values other than 0/1 gave NaN; an all-zero mask gave
    a plausible 0.0. Min/Max (not Clip) because TensorRT runs them on INT32. It shares the model's
    modules, so the graph's weights keep the checkpoint's names.
    """

    def __init__(self, model: Reranker) -> None:
        torch.nn.Module.__init__(self)
        self.config = model.config
        self.model = model.model
        self.score = model.score
        self.register_buffer("first_id", torch.tensor(0, dtype=ONNX_INT_DTYPE), persistent=False)
        self.register_buffer("last_id", torch.tensor(model.config.vocab_size - 1, dtype=ONNX_INT_DTYPE),
                             persistent=False)
        self.register_buffer("empty_logit", torch.tensor(EMPTY_ROW_LOGIT), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids = torch.maximum(torch.minimum(input_ids, self.last_id), self.first_id)
        mask = (attention_mask > 0).to(attention_mask.dtype)
        logits = super().forward(ids, mask)
        empty = mask.to(torch.float32).sum(dim=1, keepdim=True) == 0
        return torch.where(empty, self.empty_logit, logits)


def _dummy_inputs(batch: int = 2, seq: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((batch, seq), EOS_ID, dtype=ONNX_INT_DTYPE)
    ids[:, -seq // 2:] = torch.arange(100, 100 + seq // 2, dtype=ONNX_INT_DTYPE)
    mask = torch.zeros((batch, seq), dtype=ONNX_INT_DTYPE)
    mask[:, -seq // 2:] = 1
    return ids, mask


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(checkpoint: str | Path, out_dir: str | Path, dtype: str = "fp32",
                external_data: bool | None = None) -> Path:
    """Export ``checkpoint`` to ``out_dir/model.onnx`` (+ tokenizer files); returns the path.

    ``external_data`` None: only when the weights approach protobuf's 2 GB limit.
    """
    import onnx

    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"ONNX export supports {', '.join(EXPORT_DTYPES)}, not {dtype!r}")
    ckpt_dir = resolve_checkpoint(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = load_reranker(ckpt_dir, dtype=dtype, attn_impl=EXPORT_ATTENTION[dtype])
    big = external_data if external_data is not None else (
        model.config.num_parameters() * (4 if dtype == "fp32" else 2) > PROTOBUF_LIMIT * 0.9)
    logger.info("external data: %s", "yes" if big else "no")
    onnx_path = out / "model.onnx"
    for stale in (onnx_path, out / EXTERNAL_DATA_FILE):
        stale.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        logger.info("tracing %s model (%s) to ONNX", dtype, ckpt_dir)
        with torch.no_grad():
            torch.onnx.export(
                EngineGraph(model),
                _dummy_inputs(),
                str(tmp_path),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "seq"},
                    "attention_mask": {0: "batch", 1: "seq"},
                    OUTPUT_NAME: {0: "batch"},
                },
                do_constant_folding=False,
            )
        del model
        # Re-save in a known layout: one file, or one external data file for > 2 GB models.
        proto = onnx.load(str(tmp_path), load_external_data=True)
        proto.doc_string = f"llama-3.2-nv-rerankqa-1b-v2 reranker ({dtype}) exported by rerank-build"
        if big:
            onnx.save_model(proto, str(onnx_path), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=EXTERNAL_DATA_FILE, size_threshold=1024)
        else:
            onnx.save_model(proto, str(onnx_path))
        del proto
    onnx.checker.check_model(str(onnx_path), full_check=False)
    copy_tokenizer_files(ckpt_dir, out)
    shutil.copy2(ckpt_dir / "config.json", out / "config.json")
    meta = {
        "dtype": dtype,
        "opset": OPSET,
        "attention": EXPORT_ATTENTION[dtype],
        "inputs": {name: "int32 [batch, seq]" for name in INPUT_NAMES},
        "outputs": {OUTPUT_NAME: "float32 [batch, 1]"},
        "external_data": EXTERNAL_DATA_FILE if big else None,
        "checkpoint": str(ckpt_dir),
        "onnx_sha256": file_sha256(onnx_path),
        "export_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "export_meta.json").write_text(json.dumps(meta, indent=2))
    size = onnx_path.stat().st_size + ((out / EXTERNAL_DATA_FILE).stat().st_size if big else 0)
    logger.info("wrote %s (%.1f MB) in %.1fs", onnx_path, size / 1e6, meta["export_seconds"])
    return onnx_path


def onnx_size_bytes(onnx_path: str | Path) -> int:
    """Bytes of ``model.onnx`` plus its external data file, if any."""
    path = Path(onnx_path)
    data = path.with_name(EXTERNAL_DATA_FILE)
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def ort_session(onnx_path: str | Path, threads: int = 0):  # -> onnxruntime.InferenceSession
    """A CPU ONNX Runtime session (``threads`` = 0: ONNX Runtime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(os.fspath(onnx_path), options, providers=["CPUExecutionProvider"])


#: Where exports made for an assembly are kept (``$RERANK_BUILD_CACHE``, default ``build/cache``), one
#: folder per (checkpoint, dtype, export code): a repository links its ONNX from there.
CACHE_ENV = "RERANK_BUILD_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path("build") / "cache") / "onnx"


def _export_key(ckpt_dir: Path, dtype: str) -> str:
    """What the export depends on: the checkpoint's files (path, size, mtime), the dtype, and the code
    that traces the model (this module and the reference model)."""
    digest = hashlib.sha256(f"{dtype}|{OPSET}|{ckpt_dir.resolve()}".encode())
    for path in sorted(p for p in ckpt_dir.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"|{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for module in (Path(__file__), Path(__file__).with_name("reference.py")):
        digest.update(module.read_bytes())
    return f"{ckpt_dir.name}-{dtype}-{digest.hexdigest()[:16]}"


def cached_export(checkpoint: str | Path, dtype: str = "fp32") -> Path:
    """``model.onnx`` of ``checkpoint``, exported once into the cache (:func:`cache_root`) and reused.

    The export is written to a temporary folder beside its place and renamed into it, so the cache never
    holds a half-written export, and two builds racing for the same export both end with a whole one."""
    ckpt_dir = resolve_checkpoint(checkpoint)
    final = cache_root() / _export_key(ckpt_dir, dtype)
    if (final / "model.onnx").is_file():
        logger.info("ONNX (%s) from the cache: %s", dtype, final)
        return final / "model.onnx"
    final.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        logger.info("exporting %s ONNX from %s into the cache", dtype, ckpt_dir)
        export_onnx(ckpt_dir, building, dtype=dtype)
        try:
            building.rename(final)
        except OSError:  # another build placed the same export first: keep that one
            if not (final / "model.onnx").is_file():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final / "model.onnx"
