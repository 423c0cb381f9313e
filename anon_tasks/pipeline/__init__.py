"""The engine that turns image references into masked outputs: stages, batching, caches.

Composes storage, imaging and detection for one shard of images; no Prefect import. The
``Anonymizer`` facade is the library's one-image entry over the same pieces.
"""
