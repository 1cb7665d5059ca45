"""The simulated hospital: multi-system, messy, bilingual synthetic data with ground truth.

`simulate(out, patients=..., hospitals=..., seed=...)` writes DIR/<hospital>/<system>/..., DIR/sources.toml and
DIR/ground_truth/*.jsonl (see docs/simulate.md). Same seed, same bytes; one person at a time is held in
memory, so memory does not grow with the number of patients.
"""
from __future__ import annotations

import datetime as dt
import random
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from medlake.simulate import care
from medlake.simulate.people import full_name, make_person
from medlake.simulate.sinks import Truth
from medlake.simulate.writers import VISIT_CONCEPT, Hospital

__all__ = ["simulate", "Summary"]


@dataclass
class Summary:
    out: Path
    patients: int
    hospitals: int
    files: int = 0
    messages: int = 0       # HL7 v2 messages (incl. duplicates)
    resources: int = 0      # FHIR resources (bundled or NDJSON lines)
    rows: int = 0           # pharmacy CSV rows
    facts: int = 0
    bytes: int = 0          # output size (written, or counted and discarded)
    discarded: bool = False
    defects: dict = field(default_factory=dict)


def _visit_fact(person: dict, enc: care.Encounter) -> dict:
    return {"person": person["person"], "kind": "visit", "date": enc.start.date().isoformat(),
            "concept_id": VISIT_CONCEPT[enc.cls], "value_as_number": None, "unit_concept_id": None}


def _corrections(person: dict, enc: care.Encounter, h: Hospital, reg, visit: str, crng: random.Random,
                 rate: float, truth: Truth) -> None:
    """At `rate` per visit, a clerk's error the HIS takes back, before the stay's own messages: an admission or
    registration to a visit number that never was, cancelled (A11); or (half of an inpatient stay's) an admission
    with a wrong admit time (a day early), cancelled and sent again by the stay's own A01. Not defects: a correct
    pipeline keeps no trace of them."""
    r = crng.random()
    if r >= rate:
        return
    event = "A01" if enc.cls == "IP" else "A04"
    before = enc.start - dt.timedelta(minutes=10)
    if r < rate / 2 or enc.cls != "IP":
        wrong, kind, e = f"{h.H}V{h.next('visit'):08d}", "cancelled_visit", enc
    else:
        wrong, kind, e = visit, "cancelled_admit_time", replace(enc, start=enc.start - dt.timedelta(days=1))
    ids = [h.adt(event, reg, e, wrong, before, crng, correction=True),
           h.adt("A11", reg, e, wrong, before + dt.timedelta(minutes=5), crng, correction=True)]
    truth.row("corrections", {"kind": kind, "hospital": h.id, "person": person["person"], "mrn": reg.mrn,
                              "visit": wrong, "start": enc.start.isoformat(), "message_ids": ids})
    if wrong != visit:
        h.sent.pop(wrong)  # a visit that never was: no stay


def _retracted_death(person: dict, enc: care.Encounter, h: Hospital, reg, visit: str, crng: random.Random,
                     rate: float, truth: Truth) -> None:
    """At `rate` per inpatient stay the person survives, a death recorded in error after it (an A08 with
    PID-29/30), taken back by the next A08 (PID-29 `""`, PID-30 `N`)."""
    if enc.cls != "IP" or enc.died or crng.random() >= rate:
        return
    sent = enc.end + dt.timedelta(minutes=30)
    ids = [h.adt("A08", reg, enc, visit, sent, crng, death=enc.end + dt.timedelta(minutes=20), correction=True),
           h.adt("A08", reg, enc, visit, sent + dt.timedelta(hours=2), crng, correction=True, alive=True)]
    truth.row("corrections", {"kind": "retracted_death", "hospital": h.id, "person": person["person"],
                              "mrn": reg.mrn, "visit": visit, "start": enc.start.isoformat(), "message_ids": ids})


ICU_SHARE = 0.25  # inpatient stays that begin in intensive care and move to a ward (A02)


def _units(enc: care.Encounter, crng: random.Random) -> list[tuple[str, dt.datetime, dt.datetime]]:
    """An inpatient stay's units, (unit key, from, to): the ward, or intensive care first and then the ward from a
    whole minute between a fifth and half of the stay."""
    if crng.random() >= ICU_SHARE:
        return [("IP", enc.start, enc.end)]
    move = (enc.start + (enc.end - enc.start) * crng.uniform(0.2, 0.5)).replace(second=0, microsecond=0)
    return [("ICU", enc.start, move), ("IP", move, enc.end)]


def _transfers(units, reg, enc: care.Encounter, h: Hospital, visit: str, crng: random.Random) -> None:
    for unit, start, _ in units[1:]:
        h.adt("A02", reg, enc, visit, start, crng, unit=unit)


def _taken_back_moves(person: dict, units, reg, enc: care.Encounter, h: Hospital, visit: str,
                      crng: random.Random, rate: float, truth: Truth) -> None:
    """At `rate` each, per inpatient stay: a transfer in error to the cardiac unit, cancelled (A02, A12), at 60 % of
    the stay; a discharge too early (at 80 %), cancelled (A03, A13) — the stay's own A03 comes at its end."""
    span, last = enc.end - enc.start, units[-1][0]
    for kind, share, moves in (("cancelled_transfer", 0.6, (("A02", "CCU", None, 0), ("A12", last, None, 5))),
                               ("cancelled_discharge", 0.8, (("A03", last, True, 0), ("A13", last, None, 10)))):
        if crng.random() >= rate:
            continue
        t = (enc.start + span * share).replace(second=0, microsecond=0)
        ids = [h.adt(event, reg, replace(enc, end=t) if early else enc, visit, t + dt.timedelta(minutes=m), crng,
                     correction=True, unit=unit) for event, unit, early, m in moves]
        truth.row("corrections", {"kind": kind, "hospital": h.id, "person": person["person"], "mrn": reg.mrn,
                                  "visit": visit, "start": enc.start.isoformat(), "message_ids": ids})


def _emr_corrections(person: dict, visits: list, regs: dict, hosp: list[Hospital], crng: random.Random,
                     rate: float, truth: Truth) -> None:
    """At `rate` each, after the HIS's (drawn after them, so those stay as they were): per visit, an Encounter the
    EMR opened in error for a visit number that never was and took back (entered-in-error); per patient record in
    an EMR that syncs by batches, when the person lives, a death recorded in error (deceasedDateTime) and taken back
    by the next version (deceasedBoolean false), and a result sent with a slipped decimal and amended. Not defects: a
    correct pipeline keeps no trace of them."""
    for enc, reg in visits:
        if crng.random() < rate:
            h = hosp[enc.hospital]
            visit, eid = h.encounter_in_error(reg, enc)
            truth.row("corrections", {"kind": "encounter_entered_in_error", "hospital": h.id,
                                      "person": person["person"], "mrn": reg.mrn, "visit": visit,
                                      "start": enc.start.isoformat(), "message_ids": [eid]})
    for idx in sorted(regs):
        h = hosp[idx]
        for reg in regs[idx]:
            if h.fhir_mode != "bundle":
                continue
            if not person["death_date"] and crng.random() < rate:
                last = max(enc.end for enc, r in visits if r is reg)
                reg.dead_in_error = last + dt.timedelta(days=1)
                truth.row("corrections", {"kind": "deceased_in_error", "hospital": h.id, "person": person["person"],
                                          "mrn": reg.mrn, "visit": None, "start": reg.dead_in_error.isoformat(),
                                          "message_ids": [reg.patient_id]})
            results = [i for i, (res, facts, defects) in enumerate(reg.resources)
                       if "valueQuantity" in res and facts and not defects]
            if results and crng.random() < rate:
                i = crng.choice(results)
                res = reg.resources[i][0]
                h.amended(reg, i)
                truth.row("corrections", {"kind": "amended_result", "hospital": h.id, "person": person["person"],
                                          "mrn": reg.mrn, "visit": None, "start": res["effectiveDateTime"][:19],
                                          "message_ids": [res["id"]]})


def _write_person(person: dict, encs: list, hosp: list[Hospital], rate: float, rng: random.Random,
                  truth: Truth, crng: random.Random, correction_rate: float) -> None:
    regs: dict[int, list] = {}
    merged: set = set()
    second: set = set()  # hospitals where the person came back (the one chance of a duplicate registration)
    death_enc = next((e for e in encs if e.died), None)
    visits = []  # (encounter, the patient record it was registered under)
    for enc in encs:
        h = hosp[enc.hospital]
        lst = regs.get(enc.hospital)
        if lst is None:
            lst = regs[enc.hospital] = [h.registration(person, True, rng)]
            reg = lst[0]
        elif len(lst) == 1 and enc.hospital not in second and (second.add(enc.hospital) or rng.random() < rate * 2):
            dup = h.registration(person, False, rng)
            dup.defects.insert(0, ("duplicate_identity", "PID-3",
                                   f"MRN {dup.mrn} is the same person as MRN {lst[0].mrn}"))
            lst.append(dup)
            reg = dup
        elif len(lst) == 2 and enc.hospital not in merged and rng.random() < 0.5:
            reg = lst[1]
        else:
            reg = lst[0]
        visit = f"{h.H}V{h.next('visit'):08d}"
        visits.append((enc, reg))
        death = enc.end if enc.died else None
        vfact = [_visit_fact(person, enc)]
        _corrections(person, enc, h, reg, visit, crng, correction_rate, truth)
        if enc.cls == "IP":
            dfact = [{"person": person["person"], "kind": "death", "date": enc.end.date().isoformat(),
                      "concept_id": 0, "value_as_number": None, "unit_concept_id": None}] if death else []
            units = _units(enc, crng)
            first = units[0][0]
            if rng.random() < rate * 2:
                h.adt("A03", reg, enc, visit, enc.end, rng, dfact, death=death,
                      defects=[("out_of_order", 0, None, "discharge (A03) sent before its admission (A01)", None)])
                h.adt("A01", reg, enc, visit, enc.start, rng, vfact, unit=first)
                _transfers(units, reg, enc, h, visit, crng)
            else:
                h.adt("A01", reg, enc, visit, enc.start, rng, vfact, unit=first)
                _transfers(units, reg, enc, h, visit, crng)
                _taken_back_moves(person, units, reg, enc, h, visit, crng, correction_rate, truth)
                h.adt("A03", reg, enc, visit, enc.end, rng, dfact, death=death)
        else:
            h.adt("A04", reg, enc, visit, enc.start, rng, vfact)
            if enc.cls == "ER":
                h.adt("A03", reg, enc, visit, enc.end, rng)
        if rng.random() < 0.04:
            h.adt("A08", reg, enc, visit, enc.end, rng)
        _retracted_death(person, enc, h, reg, visit, crng, correction_rate, truth)
        sent = h.sent.pop(visit, [])
        stretches = units if enc.cls == "IP" else [("ER", enc.start, enc.end)] if enc.cls == "ER" else None
        if stretches:
            truth.row("stays", {"hospital": h.id, "person": person["person"], "visit": visit, "class": enc.cls,
                                "start": enc.start.isoformat(), "end": enc.end.isoformat(),
                                "units": [[h.units[u], a.isoformat(), b.isoformat()] for u, a, b in stretches],
                                "message_ids": sent})
        if enc.labs:
            h.oru(reg, enc, visit, rng)
        h.fhir_encounter(reg, enc, visit, rng, person, stretches)
        when = enc.end + dt.timedelta(minutes=5 + rng.randrange(55))
        for key, days in enc.meds:
            h.dispense(reg, enc, visit, key, days, rng, when)
        if enc.meds and rng.random() < rate:
            h.dispense(reg, enc, visit, None, 7, rng, when)
        if reg is not lst[0] and enc.hospital not in merged and rng.random() < 0.5:
            merged.add(enc.hospital)
            h.adt("A40", lst[0], enc, visit, enc.end + dt.timedelta(days=1), rng, merge=reg.mrn)
    if person["death_date"]:
        if death_enc is not None:
            for reg in regs[death_enc.hospital]:
                reg.deceased = death_enc.end
        elif person["home"] in regs:
            reg = regs[person["home"]][0]
            reg.deceased = dt.datetime.combine(person["death_date"], dt.time(12))
            person["death_source"] = (hosp[person["home"]].id, reg.patient_id)
    _emr_corrections(person, visits, regs, hosp, crng, correction_rate, truth)
    for idx in sorted(regs):
        h = hosp[idx]
        for i, reg in enumerate(regs[idx]):
            person_allergies = person["allergies"] if i == 0 else ()
            h.flush_emr(reg, dict(person, allergies=person_allergies), rng)
            for system in ("his", "lis", "emr", "pharmacy"):
                if system not in reg.systems:
                    continue
                ids = [("patient_resource", reg.patient_id), ("mrn", reg.mrn)] if system == "emr" else [("mrn", reg.mrn)]
                for id_type, sid in ids:
                    truth.row("identities", {"hospital": h.id, "system": system, "id_type": id_type,
                                             "source_id": sid, "person": person["person"]})
    a = person["address"]
    truth.row("persons", {
        "person": person["person"], "locale": person["locale"], "name": full_name(person),
        "family": person["family"], "given": person["given"],
        "pinyin": f"{person['family_pinyin']} {person['given_pinyin']}", "sex": person["sex"],
        "birth_date": person["birth_date"].isoformat(),
        "death_date": person["death_date"].isoformat() if person["death_date"] else None,
        "id_number": person.get("id_number"), "passport": person.get("passport"), "phone": person["phone"],
        "address": a, "insurance": person["insurance"], "allergies": person["allergies"],
        "hospitals": [hosp[i].id for i in sorted(regs)]})


def simulate(out: Path | str, patients: int = 1000, hospitals: int = 3, seed: int = 42,
             start: dt.date = dt.date(2015, 1, 1), end: dt.date = dt.date(2025, 12, 31), defect_rate: float = 0.02,
             correction_rate: float = 0.02, progress: Optional[Callable[[int, int], None]] = None,
             discard: bool = False) -> Summary:
    """Write a simulated hospital group to `out` (emptied first).

    discard=True does all the work (generation, every writer and encoder, the ground truth) but keeps no bytes:
    each file only counts what is written to it (Summary.bytes), and `out` is not touched. For measuring runs
    larger than the disk."""
    out = Path(out)
    if patients < 1 or hospitals < 1:
        raise ValueError("--patients and --hospitals must be at least 1")
    if not 0 <= defect_rate <= 0.2:
        raise ValueError("--defect-rate must be between 0 and 0.2")
    if not 0 <= correction_rate <= 0.5:
        raise ValueError("--correction-rate must be between 0 and 0.5")
    if end <= start:
        raise ValueError(f"--end {end} must be after --start {start}")
    if not discard:
        if out.exists():
            if not out.is_dir() or (any(out.iterdir()) and not (out / "sources.toml").exists()):
                raise ValueError(f"{out} exists and is not a simulate output folder; choose an empty or new --out")
            shutil.rmtree(out)
        out.mkdir(parents=True)
    truth = Truth(out, discard)
    hosp = [Hospital(i, out, truth, defect_rate, seed, end) for i in range(hospitals)]
    truth.write_file(out / "sources.toml", (
        f"# Site source configuration for this simulated output (medlake simulate --seed {seed}).\n"
        "# Paths are relative to this file.\n\n" + "\n".join(h.source_config() for h in hosp)).encode("utf-8"))
    for i in range(patients):
        rng = random.Random(seed * 1_000_003 + i)
        person = make_person(f"P{i + 1:07d}", rng, start)
        encs = care.plan(person, start, end, hospitals, rng)
        person["allergies"] = care.allergies(rng)
        _write_person(person, encs, hosp, defect_rate, rng, truth, random.Random(f"{seed}|{i}|corrections"),
                      correction_rate)
        if progress and (i + 1) % 200 == 0:
            progress(i + 1, patients)
    stamp = f"{end.isoformat()}T23:59:59+08:00"
    for h in hosp:
        h.close(stamp)
    truth.close()
    if progress:
        progress(patients, patients)
    s = Summary(out, patients, hospitals, files=sum(h.files() for h in hosp) + 1 + 6,
                messages=sum(h.his.records + h.lis.records for h in hosp),
                resources=truth_resources(hosp),
                rows=sum(h.pharmacy.records for h in hosp), facts=truth.n_facts,
                defects=dict(sorted(truth.defects_by_class.items())), discarded=discard)
    s.bytes = truth.discarded if discard else sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return s


def truth_resources(hosp) -> int:
    n = 0
    for h in hosp:
        if h.fhir_mode == "bulk":
            n += sum(s.records for s in h.bulk.values())
        else:
            n += h.res_count
    return n
