"""Transform: staging -> OMOP CDM (declared mappings compiled to SQL), derived tables, lineage."""
