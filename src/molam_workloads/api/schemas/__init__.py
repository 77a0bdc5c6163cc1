"""Response and request documents of the API (money as decimal strings)."""
