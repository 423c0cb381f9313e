"""Datasets as collections of files: listing, captions, manifests, keys, plans and outputs.

Works on storage locations and records; decodes no pixels and runs no model.
"""
