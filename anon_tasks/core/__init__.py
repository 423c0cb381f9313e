"""The bottom layer: values every other layer shares, with no I/O and no third-party runtimes.

Errors, settings models, records that cross stages, face values, file-format facts, the package
version and a bounded parallel map. Nothing here imports another ``anon_tasks`` layer.
"""
