"""Comparison values and keyed blocking keys for Chinese and Western identities."""
from medlake.identity.normalize import blocking_keys, comparison_values, id_check_ok, pinyin, split_full


def test_id_check_digit_and_names():
    assert id_check_ok("110101198003050016") and not id_check_ok("110101198003050013")
    assert id_check_ok("11010119800305001X") is False and not id_check_ok("12345")
    # characters Python calls digits that int() does not read (a garbled id stopped the linkage with ValueError)
    assert not id_check_ok("\U00010a40" + "10101198003050016") and not id_check_ok("1101011980030500\u00b96")
    assert comparison_values({"id_number": "\U00010a40" + "10101198003050016"})["id_valid"] is False
    assert comparison_values({"id_number": "１１０１０１１９８００３０５００１６"})["id_valid"]  # full-width: NFKC
    assert pinyin("欧阳娜娜") == "ouyangnana" and pinyin("O'Brien") == "obrien"
    assert split_full("欧阳娜娜") == ("欧阳", "娜娜") and split_full("张伟") == ("张", "伟")
    assert split_full("John Smith") == ("Smith", "John") and split_full("SMITH, John") == ("SMITH", "John")


def test_characters_pinyin_and_one_component_names_meet():
    a = comparison_values(dict(family="张", given="伟", birth_date="1980-03-05", sex="男", phone="+86 138-0000-0001"))
    b = comparison_values(dict(family="Zhang", given="Wei", birth_date="19800305", sex="M", phone="13800000001"))
    c = comparison_values(dict(family="张伟", birth_date="1980/03/05", sex="1"))  # PID-5.1 holding the whole name
    assert a["name_py"] == b["name_py"] == c["name_py"] == "zhangwei" and a["name_cjk"] == c["name_cjk"] == "张伟"
    assert b["name_cjk"] is None and a["birth_date"] == b["birth_date"] == c["birth_date"] == "1980-03-05"
    assert a["sex"] == b["sex"] == c["sex"] == "M" and a["phone"] == b["phone"]
    assert comparison_values(dict(family="Wei", given="Zhang"))["name_py_rev"] == "zhangwei"  # swapped order


def test_blocking_keys_are_keyed_hashes():
    cv = comparison_values(dict(family="张", given="伟", birth_date="1980-03-05", id_number="110101198003050016",
                                hospital="h1", mrn="M1"))
    k1, k2 = blocking_keys(b"1" * 32, cv), blocking_keys(b"2" * 32, cv)
    assert k1["id"] and k1["id"] != k2["id"] and "110101" not in k1["id"]
    assert k1["phone"] is None and k1["mrn"] == blocking_keys(b"1" * 32, dict(cv))["mrn"]
    swapped = comparison_values(dict(family="Wei", given="Zhang", birth_date="1980-03-05"))
    assert blocking_keys(b"1" * 32, swapped)["name_dob"] == k1["name_dob"]  # order-free name tokens
