"""Pixels: decoding and encoding image files, their metadata, and the masking methods.

Pure functions over numpy arrays and bytes; knows nothing of storage, models or Prefect.
"""
