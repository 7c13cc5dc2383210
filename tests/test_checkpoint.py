"""Random-weight checkpoints and checkpoint loading."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from rerank_build.checkpoint import load_reranker, write_random_checkpoint
from rerank_build.config import ARCHITECTURE, MODEL_TYPE, PRESETS, RerankerConfig, preset


def test_full_preset_has_the_real_parameter_count():
    assert PRESETS["full"].num_parameters() == 1_235_816_448


@pytest.mark.parametrize("name,hidden,layers,heads,kv,inter", [
    ("tiny", 64, 2, 4, 2, 128), ("small", 512, 4, 8, 4, 1536), ("full", 2048, 16, 32, 8, 8192),
])
def test_presets(name, hidden, layers, heads, kv, inter):
    cfg = preset(name)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size) == (hidden, layers, heads, kv, inter)
    assert cfg.vocab_size == 128256 and cfg.rope_theta == 500000.0
    assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_scaling["factor"] == 32.0


def test_checkpoint_layout_matches_the_real_model(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["architectures"] == [ARCHITECTURE] and cfg["model_type"] == MODEL_TYPE
    assert cfg["pooling"] == "avg" and cfg["temperature"] == 1.0 and cfg["torch_dtype"] == "bfloat16"
    state = load_file(str(tiny_checkpoint / "model.safetensors"))
    assert state["score.weight"].shape == (1, 64)
    assert "model.embed_tokens.weight" in state and "model.norm.weight" in state
    assert "model.layers.1.self_attn.k_proj.weight" in state and "model.layers.0.mlp.down_proj.weight" in state
    assert all(k.startswith("model.") or k == "score.weight" for k in state)
    assert all(v.dtype == torch.bfloat16 for v in state.values())


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, tiny_checkpoint):
    again = write_random_checkpoint("tiny", tmp_path / "again", seed=0)
    other = write_random_checkpoint("tiny", tmp_path / "other", seed=1)
    a, b, c = (load_file(str(d / "model.safetensors")) for d in (tiny_checkpoint, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_config_accepts_rope_parameters_layout():
    cfg = preset("tiny").to_hf_dict()
    rope = dict(cfg.pop("rope_scaling"), rope_theta=cfg.pop("rope_theta"))
    parsed = RerankerConfig.from_dict({**cfg, "rope_parameters": rope})
    assert parsed == preset("tiny")


def test_config_rejects_unsupported_variants():
    cfg = preset("tiny").to_hf_dict()
    with pytest.raises(NotImplementedError, match="pooling"):
        RerankerConfig.from_dict({**cfg, "pooling": "cls"})
    with pytest.raises(NotImplementedError, match="hidden_act"):
        RerankerConfig.from_dict({**cfg, "hidden_act": "gelu"})


def test_missing_weight_is_a_clear_error(tmp_path, tiny_checkpoint):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    state = load_file(str(broken / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ValueError, match="missing .*up_proj"):
        load_reranker(broken)


def test_unknown_checkpoint_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reranker(tmp_path / "nope")


def test_sharded_checkpoint_loads(tmp_path, tiny_checkpoint, tiny_model):
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_checkpoint, sharded)
    state = load_file(str(sharded / "model.safetensors"))
    (sharded / "model.safetensors").unlink()
    keys = sorted(state)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(sharded / name))
        weight_map.update({k: name for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_reranker(sharded)
    for (k, v), (k2, v2) in zip(loaded.state_dict().items(), tiny_model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
