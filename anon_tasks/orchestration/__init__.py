"""The Prefect layer: tasks, credentials blocks, reporting and worker tooling.

The only modules (with ``anon_tasks.flows`` above them) that import ``prefect``.
"""
