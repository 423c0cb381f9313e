"""The package version, in the bottom layer so that keys and manifests can name it."""

__version__ = "0.1.0"
