"""Coherent care over the years: which conditions a person has, and the encounters, results, drugs and
procedures that follow from them. Pure data (no formats); `writers` turns it into each system's dialect."""
from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field

from medlake.simulate.catalog import CONDITION, CONDITIONS, LAB, VITAL

DAY = dt.timedelta(days=1)
ALWAYS_ON = {"asthma", "migraine", "depression", "anxiety", "t1dm"}  # not age-driven
INFECTION = {"pneumonia", "uri", "bronchitis", "influenza", "covid", "uti", "appendicitis", "cellulitis",
             "sinusitis", "otitis"}


@dataclass(slots=True)
class Encounter:
    hospital: int
    cls: str                      # OP | ER | IP
    start: dt.datetime
    end: dt.datetime
    dx: list                      # condition keys addressed (first = main reason)
    labs: list = field(default_factory=list)       # (lab key, SI value)
    vitals: list = field(default_factory=list)     # (vital key, value)
    meds: list = field(default_factory=list)       # (drug key, days supply)
    procs: list = field(default_factory=list)      # procedure keys
    vaccines: list = field(default_factory=list)   # vaccine keys
    died: bool = False
    note: str = ""                # note type key, "" for none


def poisson(lam: float, rng: random.Random) -> int:
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def at(day: dt.date, rng: random.Random, lo: int = 8, hi: int = 17) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, rng.randrange(lo, hi), rng.randrange(60), rng.randrange(60))


def lab_value(key: str, abnormal: dict, rng: random.Random) -> float:
    lab = LAB[key]
    if key in abnormal:
        mean, sd = abnormal[key]
        v = rng.gauss(mean, sd)
    elif lab.lo == 0:
        v = rng.uniform(0, lab.hi * 0.8)
    else:
        v = rng.gauss((lab.lo + lab.hi) / 2, (lab.hi - lab.lo) / 5)
    v = max(v, lab.lo * 0.3 if lab.lo else 0.0)
    return round(v, lab.digits)


def plan(person: dict, start: dt.date, end: dt.date, hospitals: int, rng: random.Random) -> list[Encounter]:
    """Encounters for one person between start and end, in time order. Sets person["death_date"]."""
    birth = person["birth_date"]
    sex = person["sex"]
    age0 = (start - birth).days / 365.25
    years = (end - start).days / 365.25
    home = rng.randrange(hospitals)
    other = rng.randrange(hospitals) if hospitals > 1 and rng.random() < 0.35 else home
    episodes = []  # (date, condition key)
    chronic = []   # (onset date, condition key)
    for c in CONDITIONS:
        if c.sex and c.sex != sex:
            continue
        if c.kind in ("chronic", "cancer"):
            mid = age0 + years / 2
            if c.key in ALWAYS_ON:
                f = 1.0 if mid > 3 else 0.2
            elif c.kind == "cancer":
                f = max(0.0, (mid - 30) / 35) ** 2
            else:
                f = min(2.0, max(0.05, (mid - 18) / 35))
            if rng.random() < c.rate * f:
                onset = start + dt.timedelta(days=rng.randrange(-5 * 365, int(years * 365)))
                onset = max(onset, birth + 365 * DAY)
                chronic.append((onset, c.key))
        elif c.kind == "pregnancy":
            for _ in range(min(2, poisson(c.rate * years * 2, rng))):
                d = start + dt.timedelta(days=rng.randrange(int(years * 365)))
                if 20 <= (d - birth).days / 365.25 <= 42:
                    episodes.append((d, c.key))
        else:
            lam = c.rate * years * (1.8 if c.key in INFECTION and (age0 < 10 or age0 > 70) else 1.0)
            lo = dt.date.fromisoformat(c.since) if c.since else start
            span = (end - max(lo, start)).days
            if span <= 0:
                continue
            for _ in range(min(4, poisson(lam * span / max(1, (end - start).days), rng))):
                episodes.append((max(lo, start) + dt.timedelta(days=rng.randrange(span)), c.key))

    # background death by age
    death = None
    for y in range(int(years) + 1):
        age = age0 + y
        if age > 50 and rng.random() < 0.0004 * math.exp((age - 50) / 9.5):
            death = start + dt.timedelta(days=365 * y + rng.randrange(365))
            break
    if death and death > end:
        death = None
    if death and death < birth:
        death = None
    stop = death or end
    weight = person["weight"] = round(max(8.0, rng.gauss(64 if sex == "F" else 72, 10) *
                                          (1.3 if any(k == "obesity" for _, k in chronic) else 1.0)), 1)
    height = person["height"] = float(round(rng.gauss(160 if sex == "F" else 172, 6)))
    if age0 < 16:
        weight = person["weight"] = round(max(4.0, 3.5 + age0 * 3.2), 1)
        height = person["height"] = float(round(55 + age0 * 6.5))

    abnormal = {}
    chronic_keys = {k for _, k in chronic}
    for k in sorted(chronic_keys):  # sorted: set order changes with PYTHONHASHSEED
        for lab, mean, sd in CONDITION[k].abnormal:
            abnormal[lab] = (mean, sd)
    encs: list[Encounter] = []
    drug_of = {k: rng.choice(CONDITION[k].drugs) for k in sorted(chronic_keys) if CONDITION[k].drugs}

    def vitals(enc: Encounter, fever: bool = False):
        hyper = "htn" in active
        enc.vitals = [("sbp", round(rng.gauss(146 if hyper else 121, 13))),
                      ("dbp", round(rng.gauss(92 if hyper else 77, 8))), ("hr", round(rng.gauss(88 if fever else 75, 9)))]
        if fever or enc.cls != "OP":
            enc.vitals.append(("temp", round(rng.gauss(38.6, 0.5) if fever else rng.gauss(36.6, 0.25), 1)))
        if enc.cls != "ER" and rng.random() < 0.3:
            w = round(weight + rng.gauss(0, 1.0), 1)
            enc.vitals += [("weight", w), ("height", height), ("bmi", round(w / (height / 100) ** 2, 1))]
        if enc.cls != "OP":
            enc.vitals += [("rr", round(rng.gauss(20 if fever else 16, 2))),
                           ("spo2", min(100, round(rng.gauss(94 if fever else 97.5, 1.5))))]

    def labs(keys, extra_abnormal=()):
        ab = dict(abnormal)
        for lab, mean, sd in extra_abnormal:
            ab[lab] = (mean, sd)
        return [(k, lab_value(k, ab, rng)) for k in keys]

    # chronic follow-up visits
    active: set = set()
    if chronic:
        day = max(start, min(o for o, _ in chronic))
        while day < stop:
            active = {k for o, k in chronic if o <= day}
            if active:
                hosp = home if rng.random() < 0.85 else other
                s = at(day, rng)
                enc = Encounter(hosp, "OP", s, s + dt.timedelta(minutes=rng.randrange(10, 40)), sorted(active))
                lab_keys = []
                for k in enc.dx:
                    for lab in CONDITION[k].labs:
                        if lab not in lab_keys and rng.random() < (0.8 if lab == "hba1c" else 0.45):
                            lab_keys.append(lab)
                enc.labs = labs(lab_keys)
                vitals(enc)
                enc.meds = [(drug_of[k], rng.choice((30, 30, 60, 90))) for k in enc.dx if k in drug_of]
                if rng.random() < 0.3:
                    enc.note = "plan"
                encs.append(enc)
                # exacerbation needing a stay
                for k in enc.dx:
                    c = CONDITION[k]
                    if c.inpatient and rng.random() < c.inpatient * 0.6:
                        episodes.append((day + dt.timedelta(days=rng.randrange(1, 120)), k))
            day += dt.timedelta(days=rng.randrange(240, 720))

    # yearly check-ups and vaccines
    for y in range(int(years) + 1):
        d = start + dt.timedelta(days=365 * y + rng.randrange(365))
        if d >= stop:
            continue
        if rng.random() < 0.25:
            s = at(d, rng)
            enc = Encounter(home, "OP", s, s + dt.timedelta(minutes=30), [])
            enc.labs = labs(["wbc", "hgb", "plt", "glu_f", "alt", "cr", "chol"] +
                            (["psa"] if sex == "M" and age0 + y > 50 else []))
            vitals(enc)
            if rng.random() < 0.3:
                enc.vaccines = ["flu"]
            encs.append(enc)
        elif d.year == 2021 and rng.random() < 0.5:
            s = at(d, rng)
            encs.append(Encounter(home, "OP", s, s + dt.timedelta(minutes=15), [], vaccines=["covid"]))

    # acute episodes, pregnancies, cancers and exacerbations
    for onset, k in chronic:
        if CONDITION[k].kind == "cancer" and onset >= start:
            episodes.append((onset, k))
    for day, k in sorted(episodes):
        if day >= stop:
            continue
        c = CONDITION[k]
        active = {ck for o, ck in chronic if o <= day}
        hosp = home if rng.random() < 0.7 else other
        fever = k in INFECTION
        if c.kind == "pregnancy":
            for wk in (10, 24, 34):
                d = day + dt.timedelta(weeks=wk)
                if d < stop:
                    s = at(d, rng)
                    enc = Encounter(hosp, "OP", s, s + dt.timedelta(minutes=20), [k], labs=labs(c.labs[:2]))
                    vitals(enc)
                    if wk == 10:
                        enc.meds = [("folic_acid", 90)]
                    encs.append(enc)
            d = day + dt.timedelta(weeks=39, days=rng.randrange(-10, 10))
            if d < stop:
                s = at(d, rng, 0, 24)
                enc = Encounter(hosp, "IP", s, s + dt.timedelta(days=rng.randrange(2, 6), hours=rng.randrange(10)),
                                [k], procs=[rng.choice(c.procs)], note="discharge")
                vitals(enc)
                encs.append(enc)
            continue
        stay = rng.random() < c.inpatient
        cls = "IP" if stay else ("ER" if c.lethal or fever and rng.random() < 0.3 else "OP")
        s = at(day, rng, 0, 24) if cls != "OP" else at(day, rng)
        length = dt.timedelta(days=rng.randrange(2, 12), hours=rng.randrange(12)) if stay else \
            dt.timedelta(minutes=rng.randrange(15, 240))
        enc = Encounter(hosp, cls, s, s + length, [k] + sorted(a for a in active if a != k)[:2])
        enc.labs = labs([x for x in c.labs if rng.random() < 0.85], c.abnormal)
        if stay:
            enc.labs += labs(["wbc", "hgb", "plt", "na", "k", "cr"])
            seen = set()
            enc.labs = [x for x in enc.labs if not (x[0] in seen or seen.add(x[0]))]
        vitals(enc, fever)
        if c.drugs:
            enc.meds = [(rng.choice(c.drugs), rng.choice((3, 5, 7, 10)))]
            if stay and len(c.drugs) > 1 and rng.random() < 0.5:
                enc.meds.append((rng.choice(c.drugs), 7))
            enc.meds = list(dict(enc.meds).items())
        if c.procs:
            enc.procs = [p for p in c.procs if rng.random() < (0.9 if stay else 0.5)]
        if stay:
            enc.note = "discharge"
            if c.lethal and rng.random() < c.lethal and enc.end.date() <= stop:
                enc.died = True
                death = enc.end.date()
                stop = death
        elif cls == "ER" or rng.random() < 0.2:
            enc.note = "hp" if cls == "ER" else "plan"
        encs.append(enc)
    if death and not any(e.died for e in encs) and rng.random() < 0.5:
        # died in hospital at the end of a final stay
        s = at(death - dt.timedelta(days=rng.randrange(1, 10)), rng, 0, 24)
        if s.date() >= start:
            dx = sorted(active)[:3] or ["pneumonia"]
            enc = Encounter(home, "IP", s, dt.datetime.combine(death, dt.time(rng.randrange(24), rng.randrange(60))),
                            dx, note="discharge", died=True)
            enc.labs = labs(["wbc", "hgb", "cr", "k"])
            vitals(enc)
            encs.append(enc)
    encs = [e for e in encs if e.start.date() < stop or e.died]
    encs.sort(key=lambda e: e.start)
    # no visit may end after death
    if death:
        death_dt = max((e.end for e in encs if e.died), default=None)
        if death_dt:
            encs = [e for e in encs if e.died or e.end < death_dt]
            death = death_dt.date()
    person["death_date"] = death
    person["death_in"] = next((i for i, e in enumerate(encs) if e.died), None)
    person["home"] = home
    return encs


def allergies(rng: random.Random) -> list[str]:
    from medlake.simulate.catalog import ALLERGIES
    return [a[0] for a in ALLERGIES if rng.random() < 0.04]


assert all(v in VITAL for v in ("sbp", "dbp", "hr", "temp", "weight", "height", "bmi", "rr", "spo2"))
