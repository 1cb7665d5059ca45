import pytest

from medlake.sources import config


def write(tmp_path, text):
    (tmp_path / "h2" / "pharmacy").mkdir(parents=True, exist_ok=True)
    p = tmp_path / "sources.toml"
    p.write_text(text, encoding="utf-8")
    return p


GOOD = """
[[source]]
name = "h2-pharmacy"
kind = "csv"
hospital = "h2"
system = "pharmacy"
path = "h2/pharmacy"
encoding = "gbk"
[source.columns]
record_id = "发药单号"
patient_id = "病人ID"
drug_code = "药品编码"
dispensed_at = "发药时间"
quantity = "数量"
[source.formats]
dispensed_at = "%Y/%m/%d %H:%M"
[source.code_systems]
drug_code = "urn:medlake:h2:pharmacy"

[[source]]
name = "h2-his"
kind = "hl7v2"
hospital = "h2"
system = "his"
mllp_port = 2575
"""


def test_a_good_config_is_read_with_paths_relative_to_the_file(tmp_path):
    srcs = config.load(write(tmp_path, GOOD))
    pharmacy, his = srcs
    assert pharmacy.name == "h2-pharmacy" and pharmacy.kind == "csv" and pharmacy.encoding == "gbk"
    assert pharmacy.path == (tmp_path / "h2" / "pharmacy").resolve()
    assert pharmacy.columns["patient_id"] == "病人ID"
    assert pharmacy.formats == {"dispensed_at": "%Y/%m/%d %H:%M"}
    assert pharmacy.code_systems == {"drug_code": "urn:medlake:h2:pharmacy"}
    assert his.path is None and his.mllp_port == 2575
    assert config.Source.from_dict(pharmacy.as_dict()) == pharmacy


def test_every_error_names_file_key_and_reason_before_anything_runs(tmp_path):
    p = write(tmp_path, """
[[source]]
name = "a"
kind = "hl7"
path = "h2/pharmacy"

[[source]]
name = "a"
kind = "csv"
system = "pharmacy"
path = "nowhere"
encoding = "utf-16"
delimiter = ";;"
[source.columns]
record_id = "id"
colour = "c"
[source.formats]
record_id = "%Y"
""")
    with pytest.raises(config.SourceConfigError) as e:
        config.load(p)
    msg = str(e.value)
    where1, where2 = f"{p}: [[source]] #1 (a)", f"{p}: [[source]] #2 (a)"
    assert f"{where1} key `kind`: 'hl7' is not one of hl7v2, fhir, csv" in msg
    assert f"{where2} key `name`: 'a' is already used by source #1" in msg
    assert f"{where2} key `path`: {(tmp_path / 'nowhere').resolve()} does not exist" in msg
    assert f"{where2} key `encoding`: 'utf-16' is not line-oriented" in msg
    assert f"{where2} key `delimiter`: ';;' must be one character" in msg
    assert f"{where2} key `columns.colour`: not a pharmacy staging field" in msg
    assert f"{where2} key `columns.patient_id`: required for a pharmacy source" in msg
    assert f"{where2} key `formats.record_id`: record_id is a string field" in msg


def test_mllp_ports_are_for_hl7_sources_one_source_each(tmp_path):
    p = write(tmp_path, """
[[source]]
name = "adt"
kind = "hl7v2"
mllp_port = 2575

[[source]]
name = "lab"
kind = "hl7v2"
mllp_port = 2575

[[source]]
name = "emr"
kind = "fhir"
mllp_port = 2576
""")
    with pytest.raises(config.SourceConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert f"{p}: [[source]] #2 (lab) key `mllp_port`: port 2575 is already that of source 'adt'" in msg
    assert f"{p}: [[source]] #3 (emr) key `mllp_port`: MLLP carries HL7 v2: a fhir source takes a `path`" in msg
    assert "#1 (adt)" not in msg


def test_toml_syntax_and_unknown_keys(tmp_path):
    with pytest.raises(config.SourceConfigError, match=r"sources.toml: not valid TOML"):
        config.load(write(tmp_path, "[[source]\nname = 1"))
    with pytest.raises(config.SourceConfigError, match=r"#1 \(x\) key `port`: unknown key"):
        config.load(write(tmp_path, '[[source]]\nname = "x"\nkind = "fhir"\npath = "h2"\nport = 1\n'))
    with pytest.raises(config.SourceConfigError, match=r"key `path`: give a file-drop folder"):
        config.load(write(tmp_path, '[[source]]\nname = "x"\nkind = "fhir"\n'))
    with pytest.raises(config.SourceConfigError, match=r"key `encoding`: 'klingon' is not a known encoding"):
        config.load(write(tmp_path, GOOD.replace('"gbk"', '"klingon"')))


def test_values_of_the_wrong_toml_type_are_config_errors(tmp_path):
    with pytest.raises(config.SourceConfigError, match=r"key `system`: \['pharmacy'\] has no csv staging fields"):
        config.load(write(tmp_path, GOOD.replace('system = "pharmacy"', 'system = ["pharmacy"]')))
    with pytest.raises(config.SourceConfigError, match=r"key `system`: missing: a csv source names what its rows are "
                                                       r"\(one of pharmacy"):  # (it said "None has no csv …")
        config.load(write(tmp_path, GOOD.replace('system = "pharmacy"', '')))
    with pytest.raises(config.SourceConfigError, match=r"key `skip_rows`: must be a whole number"):
        config.load(write(tmp_path, GOOD.replace('encoding = "gbk"', 'encoding = "gbk"\nskip_rows = true')))


def test_the_sites_names_for_its_cdm_source_come_from_medlake_toml(tmp_path):
    """`[site] name`, `abbreviation`, … name the CDM in cdm_source (what DQD's viewer and ARES show); a value that
    is not text is a mistake named by its key."""
    from medlake import config as medlake_config

    p = tmp_path / "medlake.toml"
    p.write_text('[site]\nname = "St Elsewhere General"\nabbreviation = "STE"\nholder = ""\ndata_dir = "d"\n')
    assert medlake_config.load(p).cdm_source == {"cdm_source_name": "St Elsewhere General",
                                                 "cdm_source_abbreviation": "STE"}
    p.write_text("[site]\nabbreviation = 7\n")
    with pytest.raises(medlake_config.ConfigError, match="site.abbreviation must be a string"):
        medlake_config.load(p)
