"""Tests of anon_tasks.imaging, one file per module."""
