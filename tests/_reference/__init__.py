"""Frozen reference material for parity tests: no savlens imports here."""
