"""Checkpoints: load the real one (directory or HF hub id) and write random-weight ones.

A checkpoint directory has the real model's layout: ``config.json``, ``model.safetensors`` (or
shards with ``model.safetensors.index.json``) holding ``model.*`` backbone weights and a root-level
``score.weight``, and the tokenizer files. Generated checkpoints are self-contained the same way.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from rerank_contract.prompt import PairEncoder, left_pad, load_tokenizer

from .config import RerankerConfig, preset
from .reference import Reranker, llama3_inv_freq
from .textgen import FIXED_CASES
from .tokenizer_files import write_tokenizer

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Keys a checkpoint may carry that the forward pass does not use.
IGNORED_KEYS = ("model.rotary_emb.inv_freq", "lm_head.weight")
def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A local checkpoint directory, downloading an HF hub id when the machine can reach the hub."""
    path = Path(checkpoint)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"checkpoint {checkpoint} is not a directory")
    if str(checkpoint).count("/") != 1 or str(checkpoint).startswith((".", "/")):
        raise FileNotFoundError(f"checkpoint directory {checkpoint} does not exist")
    from huggingface_hub import snapshot_download

    logger.info("downloading %s from the Hugging Face hub", checkpoint)
    return Path(snapshot_download(
        str(checkpoint), allow_patterns=["*.json", "*.safetensors", "tokenizer*"],
    ))


def read_state_dict(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of its shards."""
    from safetensors.torch import load_file

    index = ckpt_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (ckpt_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{ckpt_dir} holds no model.safetensors (nor an index of shards)")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(ckpt_dir / name)))
    return state


def load_reranker(
    checkpoint: str | Path,
    dtype: str = "fp32",
    device: str = "cpu",
    attn_impl: str = "eager",
) -> Reranker:
    """Build :class:`Reranker` from a checkpoint directory or hub id, weights cast to ``dtype``."""
    ckpt_dir = resolve_checkpoint(checkpoint)
    config = RerankerConfig.from_file(ckpt_dir)
    with torch.device("meta"):
        model = Reranker(config, attn_impl=attn_impl)  # type: ignore[arg-type]
    state = {k: v for k, v in read_state_dict(ckpt_dir).items() if k not in IGNORED_KEYS}
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {ckpt_dir} does not match the architecture: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if state["score.weight"].shape != (1, config.hidden_size):
        raise ValueError(f"score.weight must be [1, {config.hidden_size}], got {list(state['score.weight'].shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    # Non-persistent buffers are not in the state dict: rebuild them off the meta device.
    model.model.inv_freq = llama3_inv_freq(config)
    model.eval()
    if dtype != "fp32":
        model.cast(DTYPES[dtype])
    return model.to(device)


def init_weights(model: Reranker, generator: torch.Generator) -> None:
    """Weights that keep activations O(1) so that scores spread (0.02 init hides bugs)."""
    from tqdm import tqdm

    for name, param in tqdm(list(model.named_parameters()), desc="init weights", unit="tensor", leave=False):
        if name.endswith("embed_tokens.weight"):
            param.data.normal_(0.0, 1.0, generator=generator)
        elif "norm" in name:
            # Not all ones, so that a norm weight that is dropped or misplaced changes the scores.
            param.data.normal_(1.0, 0.2, generator=generator)
        elif name == "score.weight":
            param.data.normal_(0.0, 1.0, generator=generator)
        else:
            fan_in = param.shape[1]
            param.data.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)


@torch.no_grad()
def _calibrate_score(model: Reranker, ckpt_dir: Path, target_std: float) -> None:
    """Point the head away from the pooled vectors' common direction and scale it to a spread."""
    encoder = PairEncoder(load_tokenizer(str(ckpt_dir)))
    rows = [ids for case in FIXED_CASES for ids in encoder.encode(case.query, case.passages)]
    batch = left_pad(rows)
    pooled = model.pooled(torch.from_numpy(batch.input_ids).long(), torch.from_numpy(batch.attention_mask))
    w = model.score.weight.data[0].float()
    mean = pooled.mean(0)
    w = w - (w @ mean) / (mean @ mean) * mean
    logits = pooled @ w
    w = w * (target_std / logits.std().clamp(min=1e-12))
    model.score.weight.data[0] = w.to(model.score.weight.dtype)


def write_random_checkpoint(
    preset_name: str,
    out_dir: str | Path,
    seed: int = 0,
    dtype: str = "bf16",
    target_std: float = 4.0,
) -> Path:
    """Write a random-weight checkpoint of the real architecture (config, safetensors, tokenizer)."""
    from safetensors.torch import save_file

    config = preset(preset_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out)
    generator = torch.Generator().manual_seed(seed)
    model = Reranker(config)
    logger.info("initialising %s (%.1fM parameters, seed %d)", preset_name, config.num_parameters() / 1e6, seed)
    init_weights(model, generator)
    # Round to the storage dtype first, so the calibrated model is the one that gets saved.
    for param in model.parameters():
        param.data = param.data.to(DTYPES[dtype]).float()
    _calibrate_score(model, out, target_std)
    state = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    hf_config = config.to_hf_dict(torch_dtype={"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype])
    hf_config["rerank_preset"] = {"name": preset_name, "seed": seed}
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    logger.info("wrote %s checkpoint to %s", preset_name, out)
    return out

