"""Landing: raw, immutable, content-addressed receipts of everything a site receives."""
from medlake.landing.store import Item, Landing, Receipt

__all__ = ["Item", "Landing", "Receipt"]
