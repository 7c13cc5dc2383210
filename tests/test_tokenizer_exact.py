"""Our generated tokenizer.json against an independent exact BPE: tiktoken running Meta's own
``tokenizer.model`` with the Llama 3 split pattern (plus BOS). Tested on its own, because a shared
wrong tokenizer would make every parity test pass anyway."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from rerank_contract import prompt as rp
from rerank_build import tokenizer_files as tf

BATTERY = [
    # English, German, French, Spanish, Portuguese, Italian, Dutch, Polish, Turkish, Vietnamese
    "how much protein should a female eat?",
    "Wie viel Eiweiß braucht eine Frau? Straße, Größe, Äpfel und Öl.",
    "Où est la bibliothèque ? C'est l'été, n'est-ce pas ?",
    "¿Cuánta proteína necesita una mujer? ¡Niño, año, señor!",
    "Quanto de proteína uma mulher deve comer? Ação, coração.",
    "Quante proteine dovrebbe mangiare una donna? Perché è così.",
    "Hoeveel eiwit heeft een vrouw nodig? IJsselmeer.",
    "Ile białka powinna jeść kobieta? Źdźbło, łódź, gęś.",
    "Bir kadın ne kadar protein yemeli? İstanbul, ığdır, şöyle.",
    "Phụ nữ nên ăn bao nhiêu chất đạm? Tiếng Việt có dấu.",
    # Cyrillic, Greek, Arabic, Hebrew, Persian, Hindi, Bengali, Thai, CJK, Korean
    "Сколько белка нужно женщине? Ёлка, щука, ъ.",
    "Πόση πρωτεΐνη χρειάζεται μια γυναίκα; Ελληνικά.",
    "كم من البروتين يجب أن تأكل المرأة؟ مدينة الرياض",
    " مدينة",
    "כמה חלבון אישה צריכה לאכול? עברית.",
    "یک زن چقدر پروتئین باید بخورد؟ فارسی",
    "एक महिला को कितना प्रोटीन खाना चाहिए? हिन्दी।",
    "একজন মহিলার কতটা প্রোটিন খাওয়া উচিত?",
    "ผู้หญิงควรกินโปรตีนเท่าไร ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "女性每天应该吃多少蛋白质？中文没有空格。",
    "女性は一日にどれくらいのたんぱく質を食べるべきですか？カタカナ、ひらがな、漢字。",
    "여성은 단백질을 얼마나 먹어야 하나요? 한국어 문장.",
    # emoji, code, digits, line endings, whitespace
    "emoji 🙂🍕👩‍🔬🏳️‍🌈🇩🇪 and skin tones 👍🏽",
    "def f(x):\r\n\treturn [i ** 2 for i in range(x)]  # squares\r\n",
    "int main(void) { printf(\"%d\\n\", 42); return 0; }",
    "SELECT id, score FROM t WHERE score >= 0.5 ORDER BY score DESC;",
    "digits 1234567890 3.14159 -0.001 1e-10 1,000,000 ٠١٢٣٤٥٦٧٨٩ १२३",
    "line\r\nendings\rmixed\n\n\nand \t tabs",
    "long     whitespace          run                          end",
    "   leading and trailing   ",
    "\n\n\n",
    " \n \n",
    "question:q \n \n passage:p",
    "URL https://example.com/a?b=c&d=e#f and email a.b@c.de",
    "Ünïcödé ñörmálïzätíön: e\u0301 vs é, ﬁ ligature, full-width ＡＢＣ",
    "I'm, you're, we've, they'll, he'd, it's, DON'T, WE'RE",
]


@pytest.fixture(scope="module")
def reference():
    return tf.tiktoken_reference()


def ours(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text).ids


def meta(reference, text: str, allowed=frozenset()) -> list[int]:
    return [rp.BOS_ID] + reference.encode(text, allowed_special=allowed, disallowed_special=())


def test_meta_tokenizer_model_is_the_expected_file():
    digest = hashlib.sha256(tf.source_file("tokenizer.model").read_bytes()).hexdigest()
    assert digest == tf.META_TOKENIZER_MODEL_SHA256


def test_battery_covers_enough_languages():
    assert len(BATTERY) >= 30


@pytest.mark.parametrize("text", BATTERY)
def test_battery_matches_meta(tokenizer, reference, text):
    assert ours(tokenizer, text) == meta(reference, text)


def test_known_token_ids(tokenizer):
    assert ours(tokenizer, " مدينة") == [rp.BOS_ID, 117188]
    assert ours(tokenizer, " \n \n") == [rp.BOS_ID, 33006]
    assert ours(tokenizer, "") == [rp.BOS_ID]


def _fuzz_strings(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    ranges = [
        (0x20, 0x7E), (0x20, 0x7E), (0xA0, 0x17F), (0x400, 0x4FF), (0x370, 0x3FF), (0x600, 0x6FF),
        (0x5D0, 0x5EA), (0x900, 0x97F), (0xE00, 0xE7F), (0x4E00, 0x4FFF), (0x3040, 0x30FF),
        (0xAC00, 0xAD00), (0x1F300, 0x1F64F), (0x300, 0x36F), (0x2000, 0x206F),
    ]
    specials = [" ", " ", "\n", "\r\n", "\t", "  ", "'s", "'T", "123", "\u200d", "\ufe0f"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.25:
                parts.append(rng.choice(specials))
            else:
                lo, hi = rng.choice(ranges)
                parts.append(chr(rng.randint(lo, hi)))
        out.append("".join(parts))
    return out


def test_fuzz_matches_meta(tokenizer, reference):
    texts = _fuzz_strings(seed=1234, n=3000)
    mismatches = [t for t, enc in zip(texts, tokenizer.encode_batch(texts)) if enc.ids != meta(reference, t)]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} fuzz strings differ, e.g. {mismatches[:3]!r}"


def test_special_token_text_is_text(tokenizer, reference):
    """Special-token strings in a text are encoded as ordinary text (as Meta's BPE encodes them with no
    specials allowed): a query or passage cannot inject BOS or EOT; only the post-processor's BOS remains."""
    text = "a <|begin_of_text|><|eot_id|> b <|python_tag|>"
    ids = ours(tokenizer, text)
    assert ids == meta(reference, text)
    assert ids != meta(reference, text, allowed="all")
    assert ids.count(rp.BOS_ID) == 1 and ids[0] == rp.BOS_ID and 128009 not in ids


def test_vocabulary_is_llama32(tokenizer):
    assert tokenizer.get_vocab_size(with_added_tokens=True) == 128256
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    assert max(vocab.values()) == 128255
    assert vocab["<|begin_of_text|>"] == 128000 and vocab["<|end_of_text|>"] == 128001
    assert vocab["<|finetune_right_pad_id|>"] == 128004 and vocab["<|eom_id|>"] == 128008
    assert vocab["<|eot_id|>"] == 128009 and vocab["<|python_tag|>"] == 128010
    assert vocab["<|reserved_special_token_247|>"] == 128255


def test_no_id_outside_the_model_is_reachable(tokenizer):
    texts = _fuzz_strings(seed=99, n=500) + BATTERY + ["<|image|>", "<|reserved_special_token_250|>"]
    top = max(max(enc.ids) for enc in tokenizer.encode_batch(texts))
    assert top < 128256


def test_tokenizer_json_layout(tiny_checkpoint):
    data = json.loads((tiny_checkpoint / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["model"]["ignore_merges"] is True
    assert data["truncation"] is None and data["padding"] is None
    template = data["post_processor"]["processors"][1]
    assert template["type"] == "TemplateProcessing"
    config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<|begin_of_text|>" and config["padding_side"] == "left"


def test_transformers_loads_the_same_tokenizer(tiny_checkpoint, tokenizer):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(str(tiny_checkpoint))
    text = rp.format_pair("how much protein?", "Forty-six grams 🙂 per day.")
    assert hf(text)["input_ids"] == ours(tokenizer, text)
