"""The exceptions anon-tasks raises.

One base class and its branches (every class is here but the last, which belongs to the flow
that raises it)::

    AnonTasksError
    ├── ConfigurationError   bad settings or paths; raised before any work starts (a ValueError)
    ├── ModelError           the detector model is missing, altered or cannot run
    │   └── ProviderError    an execution provider was asked for and cannot load
    ├── ImageError           one image cannot be anonymised; the run records it and goes on
    │   ├── ImageDecodeError       corrupt, truncated or not an image at all
    │   ├── ImageTooLargeError     more pixels than the configured limit (decompression bombs)
    │   ├── UnsupportedImageError  a format or layout that cannot be written back faithfully
    │   ├── ImageEncodeError       the anonymised pixels could not be encoded
    │   ├── UnsafePathError        a path that would lead outside its root, or into the source
    │   └── UnreadableFileError    not a regular file, too large, or a read that took too long
    ├── SidecarRefusedError  a caption sidecar that is not plain text, or carries image data
    ├── DeviceBusyError      no inference device could be leased in time (a TimeoutError)
    └── PartitionFailedError a partition's flow run did not complete
                             (``anon_tasks.flows.anonymize_partitioned``)

Every ``ImageError`` carries the name of the file it is about, so a report can list failures
without the caller threading names through. Nothing here holds credentials: messages are safe
to log and to write into the manifest.
"""

from __future__ import annotations

__all__ = [
    "AnonTasksError",
    "ConfigurationError",
    "DeviceBusyError",
    "ImageDecodeError",
    "ImageEncodeError",
    "ImageError",
    "ImageTooLargeError",
    "ModelError",
    "ProviderError",
    "SidecarRefusedError",
    "UnreadableFileError",
    "UnsafePathError",
    "UnsupportedImageError",
]


class AnonTasksError(Exception):
    """Base class of every error raised on purpose by anon-tasks."""


class ConfigurationError(AnonTasksError, ValueError):
    """A setting, path or combination of them is invalid.

    Attributes:
        field: The name of the offending setting, when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ModelError(AnonTasksError):
    """The face detector model cannot be found, verified or loaded."""


class ProviderError(ModelError):
    """An ONNX Runtime execution provider was requested but cannot be used."""


class ImageError(AnonTasksError):
    """One image cannot be anonymised.

    Attributes:
        source: The file name or URL of the image, as the caller named it.
        reason: What went wrong, without the file name.
    """

    def __init__(self, reason: str, *, source: str = "<bytes>") -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ImageDecodeError(ImageError):
    """The bytes are not a decodable image (corrupt, truncated or another kind of file)."""


class ImageTooLargeError(ImageError):
    """The image declares more pixels than allowed; refused before decoding."""


class UnsupportedImageError(ImageError):
    """The image decodes but cannot be anonymised and written back in its own format."""


class ImageEncodeError(ImageError):
    """Encoding the anonymised image failed."""


class UnsafePathError(ImageError):
    """A relative path (an object key, a file name) that would lead outside its root."""


class UnreadableFileError(ImageError):
    """Not a regular file (a FIFO, device, folder or link loop), larger than the read limit,
    or a read that did not finish in time. Refused without blocking the run."""


class SidecarRefusedError(AnonTasksError):
    """A caption sidecar that cannot be copied safely: not a regular file, not text, or
    carrying image data (an embedded photo would put unmasked faces in dest).

    Attributes:
        source: The sidecar's relative path.
        reason: Why it was refused, without the path.
    """

    def __init__(self, reason: str, *, source: str = "<sidecar>") -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class DeviceBusyError(AnonTasksError, TimeoutError):
    """No inference device could be leased before the timeout (every slot of every candidate
    stayed busy). Also a ``TimeoutError``, as it was before joining this hierarchy."""
