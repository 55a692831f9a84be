"""The package version (its own leaf module, so the core need not import the package root)."""

__version__ = "0.1.0"
