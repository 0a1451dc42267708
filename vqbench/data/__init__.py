"""Data: downloadable sources (sources.py), image sets (images.py), the `vqbench data` commands (cli.py)."""
