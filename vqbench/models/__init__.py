"""Encoders and decoders around the quantizer, one file per family (image.py, ...)."""
