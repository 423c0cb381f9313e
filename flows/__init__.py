"""Prefect flows of anon-tasks, installed as ``anon_tasks.flows``."""

from anon_tasks.flows.anonymize_dataset import anonymize_dataset
from anon_tasks.flows.anonymize_partitioned import anonymize_partitioned

__all__ = ["anonymize_dataset", "anonymize_partitioned"]
