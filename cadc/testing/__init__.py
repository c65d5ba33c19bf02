"""Test and demo helpers: seeded tiny random SD-Turbo/BLIP models and an LDM single-file writer.

Used by ``tiny-random`` sources and by the test suite; nothing here downloads anything.
"""
