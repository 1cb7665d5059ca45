"""Terms as hospitals write them, made comparable: normalization, Chinese segmentation, abbreviations.

- `norm(text)`: NFKC (full-width to half-width), lower case, drug strengths and packaging ("(0.5g)", "300IU/3ml",
  "100ug*200揿") removed, punctuation to spaces.
- `tokens(text)`: words; Chinese runs are segmented with jieba, using the shipped medical terms as its user
  dictionary (dict/zh_en.txt), so "血糖(空腹)" gives 血糖 / 空腹.
- `english(text)`: the English words a term stands for, from the shipped dictionaries: lab and clinical
  abbreviations (dict/abbreviations.txt: "GLU-F" -> "fasting glucose") and Chinese medical terms
  (dict/zh_en.txt: 血糖 -> glucose, 空腹 -> fasting). Salt and dosage-form words of Chinese drug names are dropped.
"""
from __future__ import annotations

import io
import logging
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

DICT = Path(__file__).with_name("dict")
CJK = re.compile(r"[\u3400-\u9fff]")
_STRENGTH = re.compile(
    r"[(（\[]?\s*\d+(?:\.\d+)?\s*(?:mg|g|ug|μg|µg|mcg|ml|l|iu|u|万u|万iu|axaiu|%|揿|片|粒|支|mmol)"
    r"(?:\s*[/*×x]\s*\d*(?:\.\d+)?\s*(?:mg|g|ug|ml|l|揿|片|粒|支|iu|u|dose)?)*\s*[)）\]]?", re.I)
_PUNCT = re.compile(r"[\s()（）\[\]{}<>,，、;；:：/\\|_\-—–.。·'\"“”‘’!！?？*+=#%％~`^&@$]+")
STOP = {"in", "or", "by", "of", "the", "and", "a", "an", "to", "with", "without", "for", "on", "at", "per", "unspecified",
        "nos", "other"}
# Chinese drug-name parts that are salts, release forms or dosage forms, not the ingredient.
ZH_DRUG_NOISE = ["注射用", "盐酸", "硫酸氢", "硫酸", "苯磺酸", "马来酸", "酒石酸", "富马酸", "醋酸", "枸橼酸", "磷酸", "丙酸",
                 "钠", "钾", "钙", "控释片", "缓释片", "缓释胶囊", "肠溶片", "肠溶胶囊", "分散片", "滴丸", "颗粒",
                 "吸入气雾剂", "气雾剂", "注射液", "胶囊", "片", "缓释", "肠溶"]


def _read(name: str) -> list[tuple[str, str]]:
    rows = []
    for line in (DICT / name).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        k, _, v = line.partition("\t")
        rows.append((k.strip(), v.strip()))
    return rows


@lru_cache(maxsize=1)
def abbreviations() -> dict[str, str]:
    return {k.lower(): v for k, v in _read("abbreviations.txt")}


@lru_cache(maxsize=1)
def zh_terms() -> dict[str, str]:
    return dict(_read("zh_en.txt"))


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    tok = jieba.Tokenizer()
    words = "\n".join(f"{k} 200000" for k in zh_terms() if k and " " not in k)
    tok.load_userdict(io.StringIO(words))
    return tok


def has_cjk(text: str | None) -> bool:
    return bool(text) and bool(CJK.search(text))


def strip_strength(text: str) -> str:
    return _STRENGTH.sub(" ", text)


@lru_cache(maxsize=100_000)
def norm(text: str | None) -> str:
    if not text:
        return ""
    s = unicodedata.normalize("NFKC", text).lower()
    s = strip_strength(s)
    s = _PUNCT.sub(" ", s)
    return " ".join(s.split())


def segment(text: str) -> list[str]:
    """jieba segmentation of a Chinese run (medical terms whole)."""
    return [w for w in _jieba().lcut(text) if w.strip()]


@lru_cache(maxsize=100_000)
def tokens(text: str | None) -> tuple[str, ...]:
    """Words of a normalized term; Chinese runs segmented; English stop words dropped."""
    out = []
    for part in norm(text).split():
        if has_cjk(part):
            out.extend(w.lower() for w in segment(part) if w.strip())
        elif part not in STOP:
            out.append(part)
    return tuple(out)


def _zh_english(run: str, drug: bool) -> list[str]:
    terms = zh_terms()
    if drug:
        for noise in ZH_DRUG_NOISE:
            stripped = run.replace(noise, "")
            if stripped and stripped != run and (stripped in terms or noise in ("注射用",)):
                run = stripped
    if run in terms:
        return terms[run].split()
    words = []
    for w in segment(run):
        if w in terms:
            words.extend(terms[w].split())
        elif drug and w in ZH_DRUG_NOISE:
            continue
        elif len(w) > 1:  # unknown word: try its longest known pieces
            i = 0
            unknown = ""
            while i < len(w):
                for j in range(len(w), i, -1):
                    if w[i:j] in terms:
                        words.extend(terms[w[i:j]].split())
                        i = j
                        break
                else:
                    unknown += w[i]
                    i += 1
            if unknown:
                words.append(unknown)  # untranslated meaning still counts: it must lower the match
        elif has_cjk(w):
            words.append(w)
    return words


def _greedy(s: str):
    """Split text into (piece, translation or None): the longest dictionary term at each Chinese position."""
    terms, longest = zh_terms(), _longest()
    i, start, n = 0, 0, len(s)
    while i < n:
        hit = None
        if has_cjk(s[i]) or (i + 1 < n and has_cjk(s[i + 1])):
            for j in range(min(n, i + longest), i, -1):
                if s[i:j] in terms and has_cjk(s[i:j]) and (has_cjk(s[i]) or i == start or not s[i - 1].isalnum()):
                    hit = j
                    break
        if hit:
            if start < i:
                yield s[start:i], None
            yield s[i:hit], terms[s[i:hit]]
            i = start = hit
        else:
            i += 1
    if start < n:
        yield s[start:], None


@lru_cache(maxsize=1)
def _longest() -> int:
    return max(len(k) for k in zh_terms())


@lru_cache(maxsize=100_000)
def english(text: str | None, drug: bool = False) -> tuple[str, ...]:
    """English words a term stands for (abbreviations and Chinese terms translated; others kept)."""
    if not text:
        return ()
    ab = abbreviations()
    raw = unicodedata.normalize("NFKC", text).strip()
    whole = raw.lower()
    if whole in ab:
        return tuple(w for w in ab[whole].split() if w not in STOP)
    # Chinese terms (longest first, also those with Latin letters like "C反应蛋白") are translated from the raw
    # text, so "血糖(空腹)" keeps its parts; unknown Chinese runs are segmented; the rest goes word by word
    s = strip_strength(raw)
    if drug:  # salts and dosage forms are not the ingredient ("注射用头孢曲松钠" is ceftriaxone, not sodium)
        for noise in ZH_DRUG_NOISE:
            s = s.replace(noise, " ")
    out = []
    for piece, known in _greedy(s):
        if known is not None:
            out.extend(known.split())
        elif has_cjk(piece):
            out.extend(_zh_english(piece, drug))
        else:
            for w in re.split(r"[\s,;:/()\[\]（）]+", piece.lower()):
                if not w:
                    continue
                if w in ab:
                    out.extend(ab[w].split())
                elif w.strip("-.") in ab:
                    out.extend(ab[w.strip("-.")].split())
                else:
                    out.extend(p for p in re.split(r"[-.]", w) if p)
    return tuple(w for w in out if w and w not in STOP)
