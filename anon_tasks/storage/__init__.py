"""Byte storage, local or remote through fsspec: locations, bounded reads, atomic writes.

Knows nothing of images, faces or Prefect; above ``core`` only.
"""
