"""Stands in for compressai when ``CADC_HIDE_COMPRESSAI=1`` (see ``tests/compressai_hiding.py``): importing it fails."""

raise ImportError("compressai is hidden in this test run (CADC_HIDE_COMPRESSAI=1)")
