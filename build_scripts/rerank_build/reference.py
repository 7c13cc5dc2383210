"""Our reference implementation of llama-3.2-nv-rerankqa-1b-v2 in plain PyTorch.

Written out rather than borrowed from ``transformers`` so that nothing can make it causal behind
our back (transformers >= 4.53 ignores the upstream override that disabled the causal mask). The
module and parameter names equal the real checkpoint's (``model.layers.{i}.self_attn.q_proj``...,
``score.weight``), so its safetensors load without renaming and without ``trust_remote_code``.

Forward pass: embeddings -> pre-norm Llama layers with **bidirectional** attention (only a
key-padding mask) -> final RMSNorm -> masked mean over the attention mask (BOS included) ->
``score`` (no bias) / temperature. RMSNorm, pooling and the head run in fp32 whatever the activation
dtype, which is also what the fp16 ONNX export keeps. The eager attention (the reference) computes
its softmax in fp32 too; ``attn_impl="tensorrt"`` is the same attention written in the form
TensorRT fuses, which the fp16/bf16 exports use (see :meth:`Attention.tensorrt_form`).
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from .config import RerankerConfig

logger = logging.getLogger(__name__)

#: eager: the reference (softmax in fp32); sdpa: PyTorch's fused kernel (GPU reference); tensorrt:
#: eager rewritten in the pattern TensorRT fuses into one attention kernel (fp16/bf16 exports).
AttnImpl = Literal["eager", "sdpa", "tensorrt"]


def llama3_inv_freq(config: RerankerConfig) -> torch.Tensor:
    """RoPE inverse frequencies with Llama 3's frequency-dependent scaling (fp32)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = config.rope_scaling
    if not scaling:
        return inv_freq.float()
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_ctx = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen, high_freq_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, smoothed, scaled).float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (weight included), cast back to the activation dtype."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * xf).to(out_dtype or x.dtype)


class Attention(nn.Module):
    def __init__(self, config: RerankerConfig, attn_impl: AttnImpl) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.attn_impl = attn_impl
        h, q, kv = config.hidden_size, self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.q_proj = nn.Linear(h, q, bias=False)
        self.k_proj = nn.Linear(h, kv, bias=False)
        self.v_proj = nn.Linear(h, kv, bias=False)
        self.o_proj = nn.Linear(q, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.attn_impl == "tensorrt":
            out = self.tensorrt_form(q, k, v, mask)
        else:
            groups = self.heads // self.kv_heads
            if groups > 1:
                k = k.repeat_interleave(groups, dim=1)
                v = v.repeat_interleave(groups, dim=1)
            if self.attn_impl == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), is_causal=False)
            else:
                scores = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(self.head_dim))
                probs = torch.softmax(scores.float() + mask, dim=-1).to(v.dtype)
                out = torch.matmul(probs, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))

    def tensorrt_form(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The eager attention, written as the graph TensorRT fuses into one attention kernel.

        TensorRT's developer guide, "Fused Attention" (Working with Transformers; primitive-layer
        method: MatrixMultiply -> mask -> SoftMax -> MatrixMultiply) asks for the scale to be applied
        to Q (or K) before the first batched matmul, and describes the add mask as an offset of Q·Kᵀ;
        its operator reference ("Attention") requires a float mask of the same type as Q, K and V. So,
        unlike the eager form, nothing between Q·Kᵀ and ·V leaves the activation dtype (no Cast to
        fp32): the fused kernels accumulate and take the softmax in fp32 themselves. ``mask`` must
        already be in that dtype (:class:`Backbone` builds it so).

        Grouped-query heads: query heads ``h = kv * groups + g`` share K/V head ``kv`` (what
        ``repeat_interleave`` expresses). Instead of copying K and V ``groups`` times, the ``groups``
        query heads of one K/V head are stacked along the query rows: Q [B, N_kv, groups*T, H]
        against K, V [B, N_kv, T, H] is an ordinary attention with S_q = groups*T and S_kv = T, and
        each query row still takes its softmax over its own T keys, so the result is exact.
        """
        b, d = q.shape[0], self.head_dim
        q = (q * (1.0 / math.sqrt(d))).reshape(b, self.kv_heads, -1, d)
        probs = torch.softmax(torch.matmul(q, k.transpose(2, 3)) + mask, dim=-1)
        return torch.matmul(probs, v).reshape(b, self.heads, -1, d)


class MLP(nn.Module):
    def __init__(self, config: RerankerConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: RerankerConfig, attn_impl: AttnImpl) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, attn_impl)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class Backbone(nn.Module):
    """Llama-3.2 decoder stack without lm_head (the checkpoint's ``model.*`` weights)."""

    def __init__(self, config: RerankerConfig, attn_impl: AttnImpl) -> None:
        super().__init__()
        self.attn_impl = attn_impl
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, attn_impl) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.register_buffer("inv_freq", llama3_inv_freq(config), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states in fp32, [B, T, H]."""
        h = self.embed_tokens(input_ids)
        t = input_ids.shape[1]
        # Positions are arange(T) over the padded row, as upstream; RoPE is relative, pads masked.
        pos = torch.arange(t, device=input_ids.device, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(h.dtype), emb.sin().to(h.dtype)
        # Explicit 4D additive key-padding mask [B, 1, 1, T]: bidirectional, no causal term. The eager
        # reference adds it in fp32; TensorRT's form adds it in the activation dtype, so its masked
        # value is that dtype's lowest finite number (-65504 in fp16), which the dtype represents.
        keep = attention_mask.to(torch.float32)[:, None, None, :]
        if self.attn_impl == "tensorrt":
            mask = ((1.0 - keep) * torch.finfo(h.dtype).min).to(h.dtype)
        else:
            mask = (1.0 - keep) * torch.finfo(torch.float32).min
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return self.norm(h, out_dtype=torch.float32)


class Reranker(nn.Module):
    """Cross-encoder: one raw logit per (query, passage) row."""

    def __init__(self, config: RerankerConfig, attn_impl: AttnImpl = "eager") -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config, attn_impl)
        self.score = nn.Linear(config.hidden_size, 1, bias=False)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of the final hidden states over the attention mask, fp32 [B, H]."""
        hidden = self.model(input_ids, attention_mask)
        m = attention_mask.to(torch.float32).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits, fp32 [B, 1]."""
        pooled = self.pooled(input_ids, attention_mask)
        return F.linear(pooled, self.score.weight.float()) / self.config.temperature

    def cast(self, dtype: torch.dtype) -> "Reranker":
        """Cast matmul weights to ``dtype``; norms and the head stay fp32 (as the fp16 export)."""
        inv_freq = self.model.inv_freq.clone()
        self.to(dtype)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.float()
        self.score.float()
        self.model.inv_freq = inv_freq
        return self
