"""Synthetic people: names (Chinese with pinyin, English), resident ID numbers (GB 11643), phones, addresses,
insurance numbers. Small own tables: faster than Faker and deterministic for a given random.Random."""
from __future__ import annotations

import datetime as dt
import random

# (character, pinyin)
SURNAMES = [("王", "Wang"), ("李", "Li"), ("张", "Zhang"), ("刘", "Liu"), ("陈", "Chen"), ("杨", "Yang"),
            ("黄", "Huang"), ("赵", "Zhao"), ("吴", "Wu"), ("周", "Zhou"), ("徐", "Xu"), ("孙", "Sun"),
            ("马", "Ma"), ("朱", "Zhu"), ("胡", "Hu"), ("郭", "Guo"), ("何", "He"), ("高", "Gao"), ("林", "Lin"),
            ("罗", "Luo"), ("郑", "Zheng"), ("梁", "Liang"), ("谢", "Xie"), ("宋", "Song"), ("唐", "Tang"),
            ("许", "Xu"), ("韩", "Han"), ("冯", "Feng"), ("邓", "Deng"), ("曹", "Cao"), ("欧阳", "Ouyang")]
GIVEN_M = [("伟", "Wei"), ("强", "Qiang"), ("磊", "Lei"), ("军", "Jun"), ("勇", "Yong"), ("杰", "Jie"),
           ("涛", "Tao"), ("明", "Ming"), ("超", "Chao"), ("刚", "Gang"), ("平", "Ping"), ("辉", "Hui"),
           ("鹏", "Peng"), ("华", "Hua"), ("建国", "Jianguo"), ("志强", "Zhiqiang"), ("海", "Hai"), ("波", "Bo"),
           ("浩然", "Haoran"), ("子轩", "Zixuan"), ("宇", "Yu"), ("斌", "Bin"), ("俊", "Jun"), ("国栋", "Guodong")]
GIVEN_F = [("芳", "Fang"), ("娜", "Na"), ("敏", "Min"), ("静", "Jing"), ("丽", "Li"), ("艳", "Yan"), ("娟", "Juan"),
           ("霞", "Xia"), ("秀英", "Xiuying"), ("桂英", "Guiying"), ("玲", "Ling"), ("婷", "Ting"), ("雪", "Xue"),
           ("慧", "Hui"), ("洁", "Jie"), ("红梅", "Hongmei"), ("晶", "Jing"), ("欣怡", "Xinyi"), ("梓涵", "Zihan"),
           ("雨欣", "Yuxin"), ("琳", "Lin"), ("萍", "Ping"), ("佳", "Jia"), ("淑珍", "Shuzhen")]
EN_LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Anderson", "Taylor",
           "Thomas", "Moore", "Martin", "Jackson", "Thompson", "White", "Harris", "Clark", "Lewis", "Robinson",
           "Walker", "Young", "Allen", "King", "Wright", "Scott", "Green", "Baker", "Adams", "Nelson", "Hill",
           "Campbell", "Mitchell", "Roberts", "Carter", "Phillips", "Evans", "Turner", "Parker", "Collins"]
EN_FIRST_M = ["James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas", "Charles",
              "Daniel", "Matthew", "Anthony", "Mark", "Steven", "Paul", "Andrew", "Joshua", "Kevin", "Brian",
              "George", "Edward", "Ronald", "Timothy"]
EN_FIRST_F = ["Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
              "Karen", "Nancy", "Lisa", "Margaret", "Betty", "Sandra", "Ashley", "Emily", "Donna", "Michelle",
              "Carol", "Amanda", "Melissa", "Deborah", "Laura"]
# (6-digit administrative division code, province/city, district, streets)
REGIONS = [
    ("110101", "北京市", "东城区", ("东直门内大街", "和平里北街", "安定门外大街")),
    ("110105", "北京市", "朝阳区", ("建国路", "朝阳北路", "望京街")),
    ("310104", "上海市", "徐汇区", ("漕溪北路", "肇嘉浜路", "龙华中路")),
    ("310115", "上海市", "浦东新区", ("世纪大道", "张杨路", "锦绣路")),
    ("440106", "广东省广州市", "天河区", ("天河路", "体育西路", "黄埔大道")),
    ("330106", "浙江省杭州市", "西湖区", ("文三路", "天目山路", "古墩路")),
    ("510107", "四川省成都市", "武侯区", ("人民南路", "科华北路", "武侯祠大街")),
    ("420106", "湖北省武汉市", "武昌区", ("中南路", "解放路", "友谊大道")),
    ("320102", "江苏省南京市", "玄武区", ("中山路", "北京东路", "珠江路")),
    ("370102", "山东省济南市", "历下区", ("泉城路", "经十路", "解放路")),
]
EN_STREETS = ["Oak Street", "Maple Avenue", "Cedar Road", "Park Lane", "Hill Street", "Church Road", "Elm Drive",
              "Lake View", "King's Road", "Station Road"]
EN_CITIES = [("Springfield", "IL", "62701"), ("Riverton", "WY", "82501"), ("Fairview", "TX", "75069"),
             ("Georgetown", "KY", "40324"), ("Salem", "OR", "97301")]

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def check_digit(first17: str) -> str:
    """GB 11643-1999 check character of an 18-character resident ID number."""
    return "10X98765432"[sum(int(c) * w for c, w in zip(first17, WEIGHTS)) % 11]


def valid_id_number(s: str) -> bool:
    return len(s) == 18 and s[:17].isdigit() and check_digit(s[:17]) == s[17].upper()


def id_number(region: str, birth: dt.date, sex: str, rng: random.Random) -> str:
    seq = rng.randrange(0, 50) * 2 + (1 if sex == "M" else 0)  # 17th digit: odd for men, even for women
    body = f"{region}{birth:%Y%m%d}{rng.randrange(0, 10)}{seq:02d}"
    return body + check_digit(body)


def make_person(key: str, rng: random.Random, start: dt.date) -> dict:
    """One true person. Ages spread 0–95 at `start`, weighted towards adults."""
    sex = "M" if rng.random() < 0.49 else "F"
    age_days = int(min(95.0, max(0.0, rng.gauss(46, 20))) * 365.25) + rng.randrange(365)
    birth = start - dt.timedelta(days=age_days)
    zh = rng.random() < 0.85
    p = {"person": key, "locale": "zh_CN" if zh else "en", "sex": sex, "birth_date": birth}
    if zh:
        fam, fam_py = rng.choice(SURNAMES)
        given, given_py = rng.choice(GIVEN_M if sex == "M" else GIVEN_F)
        if rng.random() < 0.3 and len(given) == 1:
            g2, g2_py = rng.choice(GIVEN_M if sex == "M" else GIVEN_F)
            if len(g2) == 1:
                given, given_py = given + g2, given_py + g2_py.lower()
        region, prov, district, streets = rng.choice(REGIONS)
        p.update(family=fam, given=given, family_pinyin=fam_py, given_pinyin=given_py,
                 id_number=id_number(region, birth, sex, rng),
                 phone=f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}",
                 address={"line": f"{rng.choice(streets)}{rng.randrange(1, 300)}号{rng.randrange(1, 30)}栋"
                                  f"{rng.randrange(1, 30)}0{rng.randrange(1, 5)}室",
                          "city": prov, "district": district, "postal": region[:2] + "0000", "country": "CN"},
                 insurance=f"{region[:4]}{rng.randrange(10**8):08d}")
    else:
        last = rng.choice(EN_LAST)
        first = rng.choice(EN_FIRST_M if sex == "M" else EN_FIRST_F)
        city, state, zipc = rng.choice(EN_CITIES)
        p.update(family=last, given=first, family_pinyin=last, given_pinyin=first, id_number=None,
                 passport=f"E{rng.randrange(10**8):08d}",
                 phone=f"+1-555-{rng.randrange(100, 1000)}-{rng.randrange(10**4):04d}",
                 address={"line": f"{rng.randrange(1, 999)} {rng.choice(EN_STREETS)}", "city": city, "district": state,
                          "postal": zipc, "country": "US"},
                 insurance=f"INS{rng.randrange(10**9):09d}")
    return p


def full_name(p: dict) -> str:
    return p["family"] + p["given"] if p["locale"] == "zh_CN" else f"{p['given']} {p['family']}"


def typo(name: str, rng: random.Random) -> str:
    """A plausible keying error: a swapped, doubled, dropped or replaced character (never the same name)."""
    zh_similar = {"伟": "玮", "芳": "方", "静": "靜", "丽": "莉", "明": "铭", "杰": "洁", "军": "君", "华": "桦",
                  "敏": "民", "娜": "那", "涛": "滔", "磊": "垒", "强": "墙", "玲": "铃", "婷": "亭", "霞": "侠"}
    for _ in range(5):
        i = rng.randrange(len(name))
        ch = name[i]
        if ch in zh_similar:
            out = name[:i] + zh_similar[ch] + name[i + 1:]
        elif ch.isascii() and ch.isalpha() and len(name) > 2:
            op = rng.randrange(3)
            if op == 0 and i + 1 < len(name):
                out = name[:i] + name[i + 1] + name[i] + name[i + 2:]
            elif op == 1:
                out = name[:i] + ch + name[i:]
            else:
                out = name[:i] + name[i + 1:]
        else:
            continue
        if out != name and out:
            return out
    return name + ("e" if name[-1:].isascii() else "儿")
