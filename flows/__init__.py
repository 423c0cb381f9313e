"""Prefect flows of anon-tasks, installed as ``anon_tasks.flows``."""

from anon_tasks.flows.anonymize_dataset import anonymize_dataset

__all__ = ["anonymize_dataset"]
