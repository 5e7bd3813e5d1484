"""Embedded data files (see mnist5k/README.md for provenance and licence)."""
