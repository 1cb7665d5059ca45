"""medlake: a hospital data center on the OMOP CDM."""
__version__ = "0.1.0"
