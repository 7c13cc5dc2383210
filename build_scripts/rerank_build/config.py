"""The reranker's configuration: the real checkpoint's ``config.json`` keys and our presets."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rerank_contract.names import MODEL_ID

ARCHITECTURE = "LlamaBidirectionalForSequenceClassification"
MODEL_TYPE = "llama_bidirec"
DEFAULT_MODEL_ID = MODEL_ID

# Llama 3.2 RoPE settings, kept by every preset so random checkpoints exercise the llama3 scaling.
LLAMA3_ROPE_SCALING: dict[str, Any] = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclass(frozen=True)
class RerankerConfig:
    """What the forward pass needs; parsed from, and written as, an HF ``config.json``."""

    hidden_size: int = 2048
    num_hidden_layers: int = 16
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    intermediate_size: int = 8192
    head_dim: int = 64
    vocab_size: int = 128256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: dict[str, Any] | None = field(default_factory=lambda: dict(LLAMA3_ROPE_SCALING))
    max_position_embeddings: int = 131072
    bos_token_id: int = 128000
    eos_token_id: int = 128001
    pooling: str = "avg"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.pooling != "avg":
            raise NotImplementedError(f"pooling {self.pooling!r} is not supported (the model uses 'avg')")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RerankerConfig":
        """Parse an HF config dict; newer transformers store rope values under ``rope_parameters``."""
        if data.get("hidden_act", "silu") != "silu":
            raise NotImplementedError(f"hidden_act {data['hidden_act']!r} is not supported")
        if data.get("attention_bias") or data.get("mlp_bias"):
            raise NotImplementedError("attention or MLP biases are not part of this architecture")
        rope = data.get("rope_scaling") or data.get("rope_parameters")
        theta = data.get("rope_theta")
        if rope is not None:
            rope = dict(rope)
            theta = rope.pop("rope_theta", theta)
            rope_type = rope.get("rope_type", rope.get("type"))
            if rope_type in (None, "default"):
                rope = None
            elif rope_type != "llama3":
                raise NotImplementedError(f"rope_type {rope_type!r} is not supported")
        heads = int(data["num_attention_heads"])
        hidden = int(data["hidden_size"])
        eos = data.get("eos_token_id", cls.eos_token_id)
        return cls(
            hidden_size=hidden,
            num_hidden_layers=int(data["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(data.get("num_key_value_heads", heads)),
            intermediate_size=int(data["intermediate_size"]),
            head_dim=int(data.get("head_dim") or hidden // heads),
            vocab_size=int(data["vocab_size"]),
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-5)),
            rope_theta=float(theta if theta is not None else 10000.0),
            rope_scaling=rope,
            max_position_embeddings=int(data.get("max_position_embeddings", 131072)),
            bos_token_id=int(data.get("bos_token_id", cls.bos_token_id)),
            eos_token_id=int(eos[0] if isinstance(eos, list) else eos),
            pooling=str(data.get("pooling", "avg")),
            temperature=float(data.get("temperature", 1.0)),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "RerankerConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        return cls.from_dict(json.loads(path.read_text()))

    def to_hf_dict(self, torch_dtype: str = "bfloat16") -> dict[str, Any]:
        """The real checkpoint's ``config.json`` layout (no ``auto_map``: we need no remote code)."""
        return {
            "architectures": [ARCHITECTURE],
            "model_type": MODEL_TYPE,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "mlp_bias": False,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_labels": 1,
            "pooling": self.pooling,
            "pretraining_tp": 1,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": self.rope_scaling,
            "rope_theta": self.rope_theta,
            "temperature": self.temperature,
            "tie_word_embeddings": False,
            "torch_dtype": torch_dtype,
            "use_cache": False,
            "vocab_size": self.vocab_size,
        }

    def num_parameters(self) -> int:
        """Parameter count: embeddings, layers, final norm and the 1-output head."""
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        q = self.num_attention_heads * self.head_dim
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h
        return self.vocab_size * h + self.num_hidden_layers * per_layer + h + h

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, RerankerConfig] = {
    "tiny": RerankerConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, head_dim=16,
    ),
    "small": RerankerConfig(
        hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
        intermediate_size=1536, head_dim=64,
    ),
    "full": RerankerConfig(),
}


def preset(name: str) -> RerankerConfig:
    try:
        return replace(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}") from None

