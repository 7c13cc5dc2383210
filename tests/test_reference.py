"""The reference model, and faithfulness tests that catch the known silent bugs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rerank_contract import prompt as rp
from rerank_build.checkpoint import load_reranker, read_state_dict
from rerank_build.config import RerankerConfig
from rerank_build.textgen import FIXED_CASES


def logits(model, rows, pad_id=rp.EOS_ID) -> np.ndarray:
    batch = rp.left_pad(rows, pad_id=pad_id)
    with torch.no_grad():
        out = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
    assert out.shape == (len(rows), 1) and out.dtype == torch.float32
    return out[:, 0].numpy()


@pytest.fixture(scope="module")
def case_rows(encoder):
    case = FIXED_CASES[0]
    return encoder.encode(case.query, case.passages)


def test_matches_transformers_llama_with_explicit_4d_mask(tiny_checkpoint, tiny_model, encoder):
    """Independent check of our math (RoPE llama3 scaling, GQA, RMSNorm) against transformers."""
    from transformers import LlamaConfig, LlamaModel

    cfg = RerankerConfig.from_file(tiny_checkpoint).to_hf_dict()
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "pooling", "temperature")}
    hf_config = LlamaConfig(**cfg)
    hf_config._attn_implementation = "eager"
    hf = LlamaModel(hf_config).eval()
    state = {k[len("model."):]: v.float() for k, v in read_state_dict(tiny_checkpoint).items() if k.startswith("model.")}
    hf.load_state_dict(state, strict=True)
    rows = [r for case in FIXED_CASES[:4] for r in encoder.encode(case.query, case.passages)]
    batch = rp.left_pad(rows)
    ids, mask = torch.from_numpy(batch.input_ids).long(), torch.from_numpy(batch.attention_mask)
    additive = ((1 - mask.float()) * torch.finfo(torch.float32).min)[:, None, None, :]
    additive = additive.expand(-1, 1, ids.shape[1], -1)
    with torch.no_grad():
        hidden = hf(input_ids=ids, attention_mask=additive).last_hidden_state
        m = mask.float().unsqueeze(-1)
        expected = ((hidden * m).sum(1) / m.sum(1)) @ tiny_model.score.weight.float().T
    np.testing.assert_allclose(logits(tiny_model, rows), expected[:, 0].numpy(), atol=2e-5)


def test_attention_is_bidirectional(tiny_model, encoder):
    """Changing the LAST token must change what the FIRST token sees (a causal model would not)."""
    row = encoder.encode("which way should i go?", ["two roads diverged in a yellow wood"])[0]
    other = row[:-1] + [row[-1] + 1]
    with torch.no_grad():
        h1 = tiny_model.model(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.int32))
        h2 = tiny_model.model(torch.tensor([other]), torch.ones(1, len(row), dtype=torch.int32))
    assert (h1[0, 0] - h2[0, 0]).abs().max() > 1e-3


def test_a_causal_model_would_fail_parity(tiny_model, case_rows):
    """Our parity tolerance is far below the difference a silently causal model makes."""
    batch = rp.left_pad(case_rows)
    ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    bidirectional = logits(tiny_model, case_rows)
    original = torch.finfo(torch.float32).min
    t = ids.shape[1]
    causal = torch.triu(torch.full((t, t), original), diagonal=1)

    def causal_forward(module, args):
        h, cos, sin, pad = args
        return h, cos, sin, pad + causal

    hooks = [layer.register_forward_pre_hook(causal_forward) for layer in tiny_model.model.layers]
    try:
        with torch.no_grad():
            causal_logits = tiny_model(ids, mask)[:, 0].numpy()
    finally:
        for hook in hooks:
            hook.remove()
    assert np.abs(causal_logits - bidirectional).max() > 1e-2


def test_left_padded_batch_equals_unpadded_singles(tiny_model, encoder):
    rows = [r for case in FIXED_CASES for r in encoder.encode(case.query, case.passages)]
    batched = logits(tiny_model, rows)
    singles = np.array([logits(tiny_model, [r])[0] for r in rows])
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_pad_id_does_not_change_scores(tiny_model, case_rows):
    np.testing.assert_allclose(logits(tiny_model, case_rows, pad_id=rp.EOS_ID),
                               logits(tiny_model, case_rows, pad_id=5), atol=1e-6)


def test_missing_bos_changes_scores(tiny_model, case_rows):
    without = [r[1:] for r in case_rows]
    assert np.abs(logits(tiny_model, case_rows) - logits(tiny_model, without)).min() > 1e-3


def test_literal_backslash_n_changes_scores(tiny_model, tokenizer):
    real = tokenizer.encode(rp.format_pair("which way?", "two roads diverged")).ids
    literal = tokenizer.encode("question:which way? \\n \\n passage:two roads diverged").ids
    assert abs(logits(tiny_model, [real])[0] - logits(tiny_model, [literal])[0]) > 1e-3


def test_right_truncation_keeps_query_left_would_not(tiny_model, tokenizer):
    enc = rp.PairEncoder(tokenizer, max_length=24)
    passage = "the quick brown fox jumps over the lazy dog " * 10
    right = enc.encode("query words here", [passage], "END")[0]
    full = rp.PairEncoder(tokenizer).encode("query words here", [passage])[0]
    left = [rp.BOS_ID] + full[-23:]  # what a left-truncating implementation would feed
    assert right[:6] == full[:6]
    assert abs(logits(tiny_model, [right])[0] - logits(tiny_model, [left])[0]) > 1e-3


def test_mean_pooling_includes_bos_and_ignores_pads(tiny_model, case_rows):
    row = case_rows[0]
    ids = torch.tensor([[7, 7] + row])
    mask = torch.tensor([[0, 0] + [1] * len(row)])
    with torch.no_grad():
        hidden = tiny_model.model(ids, mask)
        expected = hidden[0, 2:].mean(0)
        pooled = tiny_model.pooled(ids, mask)[0]
    torch.testing.assert_close(pooled, expected)


def test_temperature_divides_the_logit(tiny_checkpoint, tmp_path, case_rows):
    import shutil

    hot = tmp_path / "hot"
    shutil.copytree(tiny_checkpoint, hot)
    cfg = json.loads((hot / "config.json").read_text())
    cfg["temperature"] = 2.0
    (hot / "config.json").write_text(json.dumps(cfg))
    base = logits(load_reranker(tiny_checkpoint), case_rows)
    np.testing.assert_allclose(logits(load_reranker(hot), case_rows), base / 2.0, rtol=1e-6)


def test_random_scores_spread(tiny_model, encoder):
    rows = [r for case in FIXED_CASES for r in encoder.encode(case.query, case.passages)]
    values = logits(tiny_model, rows)
    assert values.std() > 1.0, "random weights must not give near-identical scores"


def test_sdpa_and_eager_agree(tiny_checkpoint, case_rows):
    eager = logits(load_reranker(tiny_checkpoint, attn_impl="eager"), case_rows)
    sdpa = logits(load_reranker(tiny_checkpoint, attn_impl="sdpa"), case_rows)
    np.testing.assert_allclose(eager, sdpa, atol=1e-4)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_tensorrt_form_equals_eager(kv_heads, encoder):
    """The attention the fp16/bf16 exports trace (scale on Q, mask and softmax in the activation dtype,
    grouped query heads stacked along the rows instead of K/V copied) is the eager reference's math:
    in fp32 they agree to rounding, on left-padded batches, for 2 and 4 query heads per K/V head
    (the full model has 4)."""
    from dataclasses import replace

    from rerank_build.checkpoint import init_weights
    from rerank_build.config import preset
    from rerank_build.reference import Reranker

    config = replace(preset("tiny"), num_attention_heads=4, num_key_value_heads=kv_heads)
    eager = Reranker(config, attn_impl="eager").eval()
    init_weights(eager, torch.Generator().manual_seed(1))
    fused = Reranker(config, attn_impl="tensorrt").eval()
    fused.load_state_dict(eager.state_dict())
    rows = [r for case in FIXED_CASES[:6] for r in encoder.encode(case.query, case.passages)]
    assert len({len(r) for r in rows}) > 1, "rows of several lengths, so the batch is padded"
    expected = logits(eager, rows)
    np.testing.assert_allclose(logits(fused, rows), expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("dtype,atol", [("bf16", 0.5), ("fp16", 0.05)])
def test_reduced_precision_on_cpu(tiny_checkpoint, case_rows, dtype, atol):
    reference = logits(load_reranker(tiny_checkpoint), case_rows)
    reduced = load_reranker(tiny_checkpoint, dtype=dtype)
    assert reduced.score.weight.dtype == torch.float32
    assert reduced.model.norm.weight.dtype == torch.float32
    np.testing.assert_allclose(logits(reduced, case_rows), reference, atol=atol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_cuda(tiny_checkpoint, case_rows, dtype):
    reference = logits(load_reranker(tiny_checkpoint), case_rows)
    model = load_reranker(tiny_checkpoint, dtype=dtype, device="cuda")
    batch = rp.left_pad(case_rows)
    with torch.no_grad():
        out = model(torch.from_numpy(batch.input_ids).cuda(), torch.from_numpy(batch.attention_mask).cuda())
    np.testing.assert_allclose(out[:, 0].cpu().numpy(), reference, atol=1e-3 if dtype == "fp32" else 0.5)
