"""Test fixtures that ship with savlens: tiny random-init models of the real Hugging Face classes, built in
memory from each family's own config class, with word-level tokenizers and the stock processors.

They are what savlens's own contract tests run on (every family in :data:`savlens.testing.tiny.FAMILIES`),
and what a user can use to try the API offline. Nothing here is needed at run time.
"""
