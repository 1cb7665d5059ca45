from medlake.cdm import model


def test_v54_has_every_table_and_field_of_the_spec():
    cdm = model.load("5.4")
    assert len(cdm.tables) == 39 and cdm.field_count == 432
    assert {t.schema for t in cdm.tables} == {"CDM", "VOCAB", "RESULTS"}
    assert len(cdm.by_schema("CDM")) == 27 and len(cdm.by_schema("VOCAB")) == 10


def test_v53_is_read_the_same_way():
    cdm = model.load("5.3")
    assert len(cdm.tables) == 37 and cdm.field_count == 396
    assert "episode" not in cdm.table_names and "attribute_definition" in cdm.table_names


def test_fields_carry_types_keys_and_nullability():
    person = model.load("5.4").table("person")
    assert person.primary_key == ["person_id"]
    pid = person.field("person_id")
    assert (pid.kind, pid.required) == ("bigint", True)
    g = person.field("gender_concept_id")
    assert (g.kind, g.fk_table, g.fk_field, g.fk_domain) == ("integer", "concept", "concept_id", "Gender")
    assert person.field("person_source_value").length == 50
    assert person.field("birth_datetime").kind == "datetime"
    assert model.load("5.4").table("measurement").field("value_as_number").kind == "float"
    # the spec's quirks are read, not hand-patched: `"offset"` and `Integer`
    note_nlp = model.load("5.4").table("note_nlp")
    assert "offset" in note_nlp.field_names
    assert model.load("5.4").table("visit_occurrence").field("visit_type_concept_id").kind == "integer"


def test_identifiers_are_64_bit_and_concepts_32_bit():
    cdm = model.load("5.4")
    kinds = {(t.name, f.name): f.kind for t in cdm.tables for f in t.fields}
    assert kinds[("fact_relationship", "fact_id_1")] == "bigint"
    assert kinds[("visit_occurrence", "preceding_visit_occurrence_id")] == "bigint"
    assert kinds[("concept", "concept_id")] == "integer"
    assert kinds[("concept_relationship", "concept_id_2")] == "integer"
    assert kinds[("drug_exposure", "days_supply")] == "integer"
