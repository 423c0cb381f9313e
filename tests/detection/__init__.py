"""Unit tests of anon_tasks.detection: the model file, sessions, devices, boxes and the detector."""
