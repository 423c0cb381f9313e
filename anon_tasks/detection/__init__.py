"""Finding faces: the CenterFace model file, its runtime sessions, devices, and the detector.

Takes RGB arrays and returns faces; knows nothing of files, datasets or Prefect.
"""
