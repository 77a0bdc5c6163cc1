"""Helpers shared by the test packages (imported as ``helpers.<module>``)."""
