"""Ranked standard-concept suggestions for a source code, each with a score (0..1) and its evidence.

Evidence, strongest first:
- **code**: the code is in a known vocabulary (declared by its code system, or found by its value) and is or
  maps to a standard concept; ICD-10 clinical-extension codes (`E11.900x001`) fall back to the longest WHO
  ICD-10 / ICD-10-CM / ICD-10-CN prefix that exists (`E11.900` -> `E11.90` -> `E11.9` -> `E11`).
- **accepted**: another source's code with the same name or mnemonic was accepted for that concept before.
- **term**: the normalized source term equals a concept name or synonym (Chinese or English), or is similar to
  one: rapidfuzz token similarity, weighted by how rare each word is, on Chinese text segmented by jieba and on
  the English words the shipped dictionaries give (abbreviations, Chinese medical terms). LOINC-style names are
  split into what is measured and where/how, so "GLU" is glucose (in serum, the default specimen) rather than
  the longest name that contains glucose. Names of non-standard concepts (e.g. ICD-10-CM) count through their
  'Maps to'.
- **unit spelling** (gaps of kind unit): `units.parse` reads the unit as hospitals write it ("×10⁹/L", "u/l",
  "μmol/L") as the UCUM unit it means, whose concept is suggested at 0.95.
- **unit / value**: the source's unit must fit the concept's kind of quantity (mmol/L suits glucose, not HbA1c)
  and its median value should be plausible for it (units.Units.fits).
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

from rapidfuzz import fuzz, process

from medlake.mapping import store, text
from medlake.mapping import units as units_mod

DOMAINS = {"lab": ("Measurement",), "measurement": ("Measurement",), "vital": ("Measurement",),
           "drug": ("Drug",), "vaccine": ("Drug",), "diagnosis": ("Condition", "Observation"),
           "condition": ("Condition", "Observation"), "procedure": ("Procedure",), "allergy": ("Observation",),
           "observation": ("Observation",), "unit": ("Unit",)}
PROPERTY_KINDS = {"mass/volume": ("mass_c", "subst_c"), "moles/volume": ("subst_c", "mass_c"),
                  "#/volume": ("num_c",), "enzymatic activity/volume": ("cat_c", "arb_c"),
                  "units/volume": ("arb_c", "cat_c"), "volume fraction": ("fraction",),
                  "entitic volume": ("entitic_vol",), "mass fraction": ("fraction",), "time": ("time",),
                  "volume rate/area": ("gfr",), "pressure": ("pressure",)}
SPECIMENS = {"serum", "plasma", "blood", "urine", "capillary", "arterial", "venous", "csf", "stool", "cerebrospinal"}
_MNEMONIC = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9#%+/().\-]{1,16}$")
_LOCAL_ID = re.compile(r"^[A-Za-z]{0,3}-?\d{3,}$")   # Y100119, XY086689, L0016, SS0103: ids, not words
ICD_FALLBACK = ("ICD10", "ICD10CM", "ICD10CN")


@dataclass
class Suggestion:
    concept_id: int
    concept_name: str
    vocabulary_id: str
    domain_id: str
    score: float
    evidence: list[str] = field(default_factory=list)


@dataclass
class Gap:
    """What is known about a source code (gaps.Code has these attributes)."""
    code_system: str | None
    code: str
    kind: str
    display: str | None = None
    unit: str | None = None
    value_median: float | None = None


@dataclass
class _Entry:
    concept_id: int       # the standard concept suggested
    text: str             # the name or synonym, as written
    via: str              # "name", "synonym (zh)", "ICD10CM E11.9 name" ...
    comp: tuple           # tokens of what is measured (whole name for non-LOINC)
    ctx: tuple            # tokens of property / specimen / method (LOINC)
    cjk: bool


def is_mnemonic(code: str | None) -> bool:
    """A code that is a word-like abbreviation ("GLU-F", "ALT"), not a number or a running id."""
    return bool(code) and bool(_MNEMONIC.match(code)) and not _LOCAL_ID.match(code) and not code[0].isdigit()


def split_name(name: str) -> tuple[tuple, tuple]:
    """LOINC-style 'Component [Property] in System by Method' -> (component tokens, context tokens)."""
    m = re.match(r"^(.*?)\s*\[([^\]]*)\]\s*(.*)$", name)
    if m:
        comp, ctx = m.group(1), m.group(2) + " " + m.group(3)
    else:
        parts = re.split(r"\s+(?:in|of|by)\s+", name, maxsplit=1)
        comp, ctx = parts[0], parts[1] if len(parts) > 1 else ""
    return text.tokens(comp), text.tokens(ctx)


class Index:
    """The candidate concepts of a vocabulary, by domain, with their names and synonyms."""

    def __init__(self, concepts: list[dict], synonyms: list[dict], maps: list[dict], unit_knowledge=None):
        self.concepts = {int(c["concept_id"]): c for c in concepts if c.get("standard_concept") == "S"}
        self.units = unit_knowledge or units_mod.Units.from_rows(concepts)
        self.entries: dict[str, list[_Entry]] = defaultdict(list)     # domain -> entries
        self.exact: dict[tuple, set] = defaultdict(set)                # (domain, norm text) -> entry indexes
        self.code_index: dict[tuple, list] = defaultdict(list)         # (vocabulary, code) -> [(id, target)]
        by_id = {int(c["concept_id"]): c for c in concepts}
        target_of = defaultdict(list)
        for m in maps:
            t = int(m["concept_id_2"])
            if t in self.concepts:
                target_of[int(m["concept_id_1"])].append(t)
        for c in concepts:
            cid = int(c["concept_id"])
            targets = [cid] if cid in self.concepts else target_of.get(cid, [])
            self.code_index[(c["vocabulary_id"], c["concept_code"])].extend((cid, t) for t in targets)
            for t in targets:
                via = "name" if t == cid else f"{c['vocabulary_id']} {c['concept_code']} name"
                self._add(self.concepts[t]["domain_id"], t, c["concept_name"], via,
                          loinc=c["vocabulary_id"] == "LOINC")
        for s in synonyms:
            cid = int(s["concept_id"])
            if cid not in self.concepts:
                continue
            lang = "zh" if text.has_cjk(s["concept_synonym_name"]) else "en"
            self._add(self.concepts[cid]["domain_id"], cid, s["concept_synonym_name"], f"synonym ({lang})",
                      loinc=by_id[cid]["vocabulary_id"] == "LOINC" and lang == "en")
        self.idf = {}
        for dom, entries in self.entries.items():
            df = defaultdict(int)
            for e in entries:
                for t in set(e.comp + e.ctx):
                    df[t] += 1
            n = len(entries)
            self.idf[dom] = {t: math.log(1 + n / k) for t, k in df.items()}
            self.idf[dom]["__default__"] = math.log(1 + n)
        self._choices = {dom: [text.norm(e.text) for e in entries] for dom, entries in self.entries.items()}

    def _add(self, domain, cid, name, via, loinc):
        if not name:
            return
        comp, ctx = split_name(name) if loinc else (text.tokens(name), ())
        e = _Entry(cid, name, via, comp, ctx, text.has_cjk(name))
        self.exact[(domain, text.norm(name))].add(len(self.entries[domain]))
        self.entries[domain].append(e)

    @classmethod
    def from_engine(cls, engine, kinds=("lab", "drug", "diagnosis", "procedure", "vaccine", "allergy")) -> "Index":
        store.require_cdm(engine)
        domains = sorted({d for k in kinds for d in DOMAINS.get(k, ())} | {"Unit"})
        marks = ", ".join("?" for _ in domains)
        cols = "c.concept_id, c.concept_name, c.domain_id, c.vocabulary_id, c.concept_class_id, c.standard_concept, " \
               "c.concept_code"
        concepts = engine.query(f"SELECT {cols} FROM concept c WHERE c.domain_id IN ({marks}) "
                                "AND c.invalid_reason IS NULL", domains).to_pylist()
        synonyms = engine.query(
            "SELECT s.concept_id, s.concept_synonym_name, s.language_concept_id FROM concept_synonym s "
            f"JOIN concept c ON c.concept_id = s.concept_id WHERE c.standard_concept = 'S' AND c.domain_id IN ({marks})",
            domains).to_pylist()
        maps = engine.query(
            "SELECT r.concept_id_1, r.concept_id_2 FROM concept_relationship r JOIN concept c ON "
            "c.concept_id = r.concept_id_1 WHERE r.relationship_id = 'Maps to' AND r.invalid_reason IS NULL "
            f"AND c.domain_id IN ({marks}) AND (c.standard_concept IS NULL OR c.standard_concept <> 'S')",
            domains).to_pylist()
        return cls(concepts, synonyms, maps)

    # -- scoring ----------------------------------------------------------------------------------------------------
    def _w(self, dom: str, tok: str) -> float:
        idf = self.idf.get(dom, {})
        return idf.get(tok, idf.get("__default__", 1.0))

    @staticmethod
    def _tok_sim(a: str, b: str) -> float:
        if a == b:
            return 1.0
        if len(a) <= 3 or len(b) <= 3 or a.isdigit() or b.isdigit():
            return 0.0
        r = fuzz.ratio(a, b) / 100
        return r if r >= 0.85 else 0.0

    def token_score(self, dom: str, q: tuple, e: _Entry) -> float:
        """How well query words and a name's words cover each other (rare words weigh more), 0..1."""
        if not q or not e.comp:
            return 0.0
        allc = e.comp + e.ctx
        qw = [self._w(dom, t) for t in q]
        qm = [max((self._tok_sim(t, c) for c in allc), default=0.0) for t in q]
        cw = [self._w(dom, t) for t in e.comp]
        cm = [max((self._tok_sim(t, x) for x in q), default=0.0) for t in e.comp]
        q_cov = sum(w * m for w, m in zip(qw, qm)) / sum(qw)
        c_cov = sum(w * m for w, m in zip(cw, cm)) / sum(cw)
        score = min(0.5 * q_cov + 0.5 * c_cov, 1.0)
        if e.ctx and not (set(q) & SPECIMENS) and ("serum" in e.ctx or "plasma" in e.ctx):
            score += 0.01  # no specimen named: serum/plasma is the default of a chemistry LIS
        return score

    def _candidates(self, dom: str, queries: list[str], limit: int = 60) -> set[int]:
        choices = self._choices.get(dom, [])
        if len(choices) <= 3 * limit:
            return set(range(len(choices)))
        found = set()
        for q in queries:
            if q:
                for _, _, i in process.extract(q, choices, scorer=fuzz.token_set_ratio, limit=limit):
                    found.add(i)
        return found

    def text_scores(self, gap: Gap) -> dict[int, tuple[float, str]]:
        """{standard concept id: (term score, evidence)} from the source's display and mnemonic code."""
        out: dict[int, tuple[float, str]] = {}
        drug = gap.kind in ("drug", "vaccine")
        terms = [t for t in (gap.display, gap.code if is_mnemonic(gap.code) else None) if t]
        for dom in DOMAINS.get(gap.kind, ()):
            entries = self.entries.get(dom, [])
            if not entries:
                continue

            def put(cid, s, why):
                if s > out.get(cid, (0.0, ""))[0]:
                    out[cid] = (s, why)

            for term in terms:
                n = text.norm(term)
                for i in self.exact.get((dom, n), ()):
                    e = entries[i]
                    put(e.concept_id, 0.95, f"term '{term}' = {e.via} '{e.text}'")
                en = text.english(term, drug=drug)
                zh = text.tokens(term) if text.has_cjk(term) else ()
                cand = self._candidates(dom, [n, " ".join(en)])
                for i in cand:
                    e = entries[i]
                    if e.cjk:
                        if not zh:
                            continue
                        s = max(self.token_score(dom, zh, e), fuzz.ratio(n, text.norm(e.text)) / 100 * 0.95)
                        q = "".join(zh)
                    else:
                        if not en:
                            continue
                        s = self.token_score(dom, en, e)
                        q = " ".join(en)
                    if s >= 0.3:
                        put(e.concept_id, 0.9 * s, f"term '{term}' ~ {e.via} '{e.text}' ({min(s, 1.0):.2f}"
                                                   + (f" via '{q}'" if q != n else "") + ")")
        return out

    def code_scores(self, gap: Gap) -> dict[int, tuple[float, str]]:
        out: dict[int, tuple[float, str]] = {}
        if not gap.code:
            return out
        declared = store.vocabulary_of(gap.code_system)
        vocabs = [declared] if declared else []
        code = gap.code.strip()
        for v in vocabs:
            for src, t in self.code_index.get((v, code), ()):
                out[t] = (1.0, f"code {code} in {v}" + ("" if src == t else " maps to it"))
        if not out and gap.kind == "unit":  # a unit as written ("×10⁹/L", "mg/dl"): the UCUM unit it means
            ucum = units_mod.parse(code)
            cid = self.units.unit_concept(ucum)
            if cid in self.concepts:
                out[cid] = (0.95, f"unit '{code}' is UCUM {ucum}" + ("" if ucum in self.units.unit_ids else
                                                                    f", equal to {self.concepts[cid]['concept_code']}"))
        if not out and (declared in ICD_FALLBACK or re.match(r"^[A-Z]\d\d(\.\w+)?", code)):
            for prefix in _icd_prefixes(code):
                for v in ICD_FALLBACK:
                    for src, t in self.code_index.get((v, prefix), ()):
                        if t not in out:
                            out[t] = (0.85, f"code {code} falls back to {v} {prefix}, which maps to it")
                if out:
                    break
        if not out and not declared:  # a local system that reuses a standard code: a hint, never decisive
            for v in ("LOINC", "RxNorm", "SNOMED", "CVX"):
                for src, t in self.code_index.get((v, code), ()):
                    out.setdefault(t, (0.6, f"code {code} also exists in {v}"))
        return out

    def unit_fit(self, concept_id: int, gap: Gap) -> str:
        if gap.kind not in ("lab", "measurement", "vital") or not gap.unit:
            return "unknown"
        fit = self.units.fits(concept_id, gap.unit, gap.value_median)
        if fit != "unknown":
            return fit
        c = self.concepts.get(concept_id)
        m = re.search(r"\[([^\]]+)\]", c["concept_name"]) if c else None
        kinds = PROPERTY_KINDS.get(m.group(1).lower()) if m else None
        u = units_mod.parse(gap.unit)
        if kinds and u:
            return "fits" if units_mod.kind(u) in kinds else "impossible"
        return "unknown"


def _icd_prefixes(code: str) -> list[str]:
    """E11.900x001 -> E11.900, E11.90, E11.9, E11 (longest first, down to the 3-character category)."""
    c = code.strip()
    m = re.match(r"^[A-Za-z]\d\d(?:\.[0-9A-Za-z]*)?", c)
    if not m:
        return []
    b = m.group(0).rstrip(".")
    out = []
    for i in range(len(b), 2, -1):
        p = b[:i].rstrip(".")
        if p != c and p not in out:
            out.append(p)
    return out


class Suggester:
    """Suggestions for gaps from an Index, plus the site's accepted mappings (learned from reviews)."""

    def __init__(self, index: Index, accepted: list[dict] | None = None):
        self.index = index
        self.prior: dict[tuple, tuple[int, str]] = {}   # (kind, norm text) -> (concept id, evidence)
        for a in accepted or ():
            if not a.get("target_concept_id"):
                continue
            for t in (a.get("source_code_description"), a.get("source_code") if is_mnemonic(a.get("source_code"))
                      else None):
                if t:
                    self.prior[(a.get("kind") or "", text.norm(t))] = (
                        int(a["target_concept_id"]),
                        f"accepted for {a.get('source_vocabulary_id')} {a.get('source_code')} '{t}'")

    def suggest(self, gap: Gap, top: int = 5, exclude: set | None = None, use_code: bool = True) -> list[Suggestion]:
        idx = self.index
        signals: dict[int, list[tuple[float, str]]] = defaultdict(list)
        if use_code:
            for cid, sv in idx.code_scores(gap).items():
                signals[cid].append(sv)
        for t in (gap.display, gap.code if is_mnemonic(gap.code) else None):
            if t:
                hit = self.prior.get((gap.kind, text.norm(t))) or self.prior.get(("", text.norm(t)))
                if hit and hit[0] in idx.concepts:
                    signals[hit[0]].append((0.96, hit[1]))
        for cid, sv in idx.text_scores(gap).items():
            signals[cid].append(sv)
        out = []
        domains = DOMAINS.get(gap.kind, ())
        for cid, sig in signals.items():
            if exclude and cid in exclude:
                continue
            c = idx.concepts.get(cid)
            if c is None or (domains and c["domain_id"] not in domains and not any(s >= 1.0 for s, _ in sig)):
                continue
            sig.sort(reverse=True)
            score = sig[0][0]
            if len([s for s, _ in sig if s >= 0.8]) >= 2:
                score += 0.02
            evidence = [w for _, w in sig]
            fit = idx.unit_fit(cid, gap)
            if fit == "impossible":
                score *= 0.5
                evidence.append(f"unit '{gap.unit}' is impossible for it")
            elif fit == "implausible":
                score *= 0.8
                evidence.append(f"median {gap.value_median:g} {gap.unit} is implausible for it")
            elif fit == "typical":
                score += 0.03
                evidence.append(f"unit '{gap.unit}' and median {gap.value_median:g} are typical for it")
            elif fit == "fits":
                score += 0.01
                evidence.append(f"unit '{gap.unit}' fits it")
            out.append(Suggestion(cid, c["concept_name"], c["vocabulary_id"], c["domain_id"],
                                  round(min(score, 1.0), 4), evidence))
        out.sort(key=lambda s: (-s.score, s.concept_id))
        return out[:top]


def accepted_mappings(engine) -> list[dict]:
    """The site's current accepted mappings (latest decision per code), with their kind when known."""
    store.ensure(engine)
    rows = engine.query(
        "SELECT d.source_vocabulary_id, d.source_code, d.source_code_description, d.decision, d.target_concept_id, "
        "d.decided_at, g.kind FROM mapping_decision d LEFT JOIN mapping_gap g ON g.source_vocabulary_id = "
        "d.source_vocabulary_id AND g.code = d.source_code").to_pylist()
    latest: dict[tuple, dict] = {}
    for r in rows:
        k = (r["source_vocabulary_id"], r["source_code"])
        if k not in latest or (r["decided_at"] or 0) >= (latest[k]["decided_at"] or 0):
            latest[k] = r
    return [r for r in latest.values() if r["decision"] == "accepted"]


def refresh(engine, codes=None, top: int = 5, index: Index | None = None, progress=None) -> dict[str, list]:
    """Suggestions for every gap in `mapping_gap` (or the given gaps.Code list), written to mapping_suggestion."""
    from medlake.mapping import gaps as gaps_mod

    store.ensure(engine)
    if codes is None:
        codes = [c for c in gaps_mod.refresh(engine) if c.status == "gap"]
    index = index or Index.from_engine(engine)
    sug = Suggester(index, accepted_mappings(engine))
    rejected = rejections(engine)
    rows, result = [], {}
    for i, c in enumerate(codes):
        g = Gap(c.code_system, c.code, c.kind, c.display, c.unit, c.value_median)
        ss = sug.suggest(g, top=top, exclude=rejected.get((store.source_vocabulary_id(c.code_system), c.code)))
        result[c.gap_id] = ss
        for rank, s in enumerate(ss, 1):
            rows.append({"gap_id": c.gap_id, "rank": rank, "concept_id": s.concept_id, "concept_name": s.concept_name,
                         "vocabulary_id": s.vocabulary_id, "domain_id": s.domain_id, "score": s.score,
                         "evidence": " | ".join(s.evidence)})
        if progress:
            progress(i + 1, len(codes))
    store.replace_rows(engine, "mapping_suggestion", rows)
    return result


def rejections(engine) -> dict[tuple, set]:
    """Concepts a reviewer rejected per code: {(source_vocabulary_id, code): {concept ids}}."""
    store.ensure(engine)
    out: dict[tuple, set] = defaultdict(set)
    for r in engine.query("SELECT source_vocabulary_id, source_code, target_concept_id FROM mapping_decision "
                          "WHERE decision = 'rejected'").to_pylist():
        out[(r["source_vocabulary_id"], r["source_code"])].add(r["target_concept_id"])
    return out
