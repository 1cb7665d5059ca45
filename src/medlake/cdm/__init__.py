"""Model layer: the OMOP CDM from its spec CSVs, DDL, vocabulary loading."""
from medlake.cdm.model import CDM, DEFAULT_VERSION, VERSIONS, Field, Table, load

__all__ = ["CDM", "DEFAULT_VERSION", "VERSIONS", "Field", "Table", "load"]
