"""Seeded multilingual text: fixed reranking cases and random queries/passages.

Shared by the parity tool, the tests, checkpoint calibration and the load-test workload, so that
"multilingual" means the same scripts everywhere (Latin, Cyrillic, Greek, Arabic, Hebrew,
Devanagari, Thai, CJK, Hangul, emoji, code and digits).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Short word lists per script; random text mixes them so token lengths and shapes vary a lot.
WORDS: dict[str, list[str]] = {
    "en": "the protein women need daily grams health study shows energy river mountain road yellow wood travel morning "
          "search engine ranking model passage query answer question document science history music city".split(),
    "de": "der die das Wasser Straße Gesundheit täglich Eiweiß Frauen brauchen Berg Fluss Morgen Antwort Frage".split(),
    "fr": "le la les santé protéines femmes besoin quotidien montagne rivière chemin réponse question été où".split(),
    "es": "el la los salud proteína mujeres necesitan diario montaña río camino respuesta pregunta niño año".split(),
    "ru": "здоровье белок женщины нужно ежедневно гора река дорога ответ вопрос утро город музыка".split(),
    "el": "υγεία πρωτεΐνη γυναίκες καθημερινά βουνό ποτάμι δρόμος απάντηση ερώτηση πόλη".split(),
    "ar": "الصحة البروتين النساء يحتاجون يوميا جبل نهر طريق جواب سؤال مدينة".split(),
    "he": "בריאות חלבון נשים צריכות יומי הר נהר דרך תשובה שאלה עיר".split(),
    "hi": "स्वास्थ्य प्रोटीन महिलाओं को रोज़ाना पहाड़ नदी रास्ता उत्तर प्रश्न शहर".split(),
    "th": "สุขภาพ โปรตีน ผู้หญิง ต้องการ ทุกวัน ภูเขา แม่น้ำ ถนน คำตอบ คำถาม เมือง".split(),
    "zh": "健康 蛋白质 女性 每天 需要 山 河 路 答案 问题 城市 音乐".split(),
    "ja": "健康 たんぱく質 女性 毎日 必要 山 川 道 答え 質問 都市 音楽".split(),
    "ko": "건강 단백질 여성 매일 필요 산 강 길 대답 질문 도시 음악".split(),
    "vi": "sức khỏe chất đạm phụ nữ cần hằng ngày núi sông đường trả lời câu hỏi".split(),
    "misc": ["🙂", "🍕", "👩‍🔬", "2024", "3.14159", "1,000,000", "x_i", "f(x)", "#include", "=>", "a+b", "\t", "\r\n"],
}
LANGS = tuple(WORDS)


@dataclass(frozen=True)
class Case:
    """One query with its passages."""

    query: str
    passages: tuple[str, ...]


FIXED_CASES: tuple[Case, ...] = (
    Case("how much protein should a female eat?", (
        "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per "
        "day. But, as you can see from this chart, you'll need to increase that if you're expecting or training "
        "for a marathon. Check out the chart below to see how much protein you should be eating each day.",
        "Definition of summit for English Language Learners. : 1 the highest point of a mountain : the top of a "
        "mountain. : 2 the highest level. : 3 a meeting or series of meetings between the leaders of two or more "
        "governments.",
        "Calorie intake should not fall below 1,200 a day in women or 1,500 a day in men, except under the "
        "supervision of a health professional.",
    )),
    Case("which way should i go?", (
        "two roads diverged in a yellow wood, and sorry i could not travel both",
        "and be one traveler, long i stood and looked down one as far as i could",
        "to where it bent in the undergrowth;",
        "then took the other, as just as fair,",
    )),
    Case("Wie viel Eiweiß braucht eine Frau pro Tag?", (
        "Frauen benötigen im Durchschnitt etwa 46 Gramm Eiweiß pro Tag.",
        "Der Gipfel ist der höchste Punkt eines Berges.",
    )),
    Case("¿Cuánta proteína necesita una mujer?", ("Una mujer adulta necesita unos 46 gramos de proteína al día.", "El río Ebro es el más caudaloso de España.")),
    Case("Сколько белка нужно женщине?", ("Женщинам нужно около 46 граммов белка в день.", "Эверест — самая высокая гора мира.")),
    Case("كم من البروتين تحتاج المرأة؟", ("تحتاج المرأة إلى حوالي 46 غرامًا من البروتين يوميًا.", "نهر النيل هو أطول نهر في العالم.")),
    Case("ผู้หญิงควรกินโปรตีนเท่าไร", ("ผู้หญิงต้องการโปรตีนประมาณ 46 กรัมต่อวัน", "ภูเขาเอเวอเรสต์สูงที่สุดในโลก")),
    Case("女性每天需要多少蛋白质？", ("成年女性每天大约需要46克蛋白质。", "珠穆朗玛峰是世界最高的山峰。")),
    Case("女性は一日にどれくらいのたんぱく質が必要？", ("成人女性は一日約46グラムのたんぱく質が必要です。", "富士山は日本で一番高い山です。")),
    Case("여성은 하루에 단백질이 얼마나 필요한가요?", ("성인 여성은 하루에 약 46그램의 단백질이 필요합니다.", "한강은 서울을 가로지른다.")),
    Case("महिला को कितना प्रोटीन चाहिए?", ("एक वयस्क महिला को प्रतिदिन लगभग 46 ग्राम प्रोटीन चाहिए।", "गंगा भारत की सबसे लंबी नदी है।")),
    Case("כמה חלבון אישה צריכה?", ("אישה בוגרת צריכה כ-46 גרם חלבון ביום.", "הכנרת היא אגם מים מתוקים.")),
    Case("how do I sort a list in python? 🐍", (
        "def sort_by_len(items):\r\n    return sorted(items, key=len)  # stable, O(n log n)\r\n",
        "SELECT * FROM passages WHERE score > 0.5 ORDER BY score DESC;",
        "     lots   of\t\twhitespace      and 1234567890 digits     ",
        "🍕🍕🍕 pizza emoji party 🎉",
    )),
)


def random_text(rng: random.Random, n_words: int, langs: tuple[str, ...] | None = None) -> str:
    """``n_words`` words drawn from one or two scripts, mostly space-separated."""
    pool = langs or tuple(rng.sample(LANGS, k=rng.choice((1, 1, 2))))
    words = [rng.choice(WORDS[rng.choice(pool)]) for _ in range(max(1, n_words))]
    joiner = "" if all(lang in ("zh", "ja", "th") for lang in pool) and rng.random() < 0.5 else " "
    return joiner.join(words)


def random_cases(seed: int, n_cases: int, passages_per_case: tuple[int, int] = (2, 12),
                 passage_words: tuple[int, int] = (1, 120)) -> list[Case]:
    """Seeded random queries, each with passages of widely mixed lengths."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n_cases):
        query = random_text(rng, rng.randint(2, 20))
        n = rng.randint(*passages_per_case)
        passages = tuple(random_text(rng, rng.randint(*passage_words)) for _ in range(n))
        cases.append(Case(query, passages))
    return cases
