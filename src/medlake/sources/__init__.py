"""Sources: parsers and listeners for what hospital systems send (HL7 v2 + MLLP, FHIR R4, CSV exports).

Each source module turns raw bytes into staging rows (`STAGING_SCHEMAS`, rows per staging table) and never
touches the store itself; `medlake.landing.ingest` lands, stages and quarantines.
"""
