"""Settings: the seed's defaults are the contract; bad values name the field and the range."""

from __future__ import annotations

import pytest

from anon_tasks.core.errors import ConfigurationError
from anon_tasks.core.settings import (
    AnonymizeMethod,
    DetectionSettings,
    MaskSettings,
    OutputSettings,
    build_settings,
)


def test_defaults_are_the_seed_contract() -> None:
    assert DetectionSettings().threshold == 0.4
    masking = MaskSettings()
    assert masking.method is AnonymizeMethod.BLUR
    assert masking.mask_scale == 1.0
    assert masking.ellipse is True
    assert masking.mosaic_size == 20
    assert OutputSettings().jpeg_quality == 95
    assert OutputSettings().keep_metadata is False


@pytest.mark.parametrize(
    ("model", "values", "field", "allowed"),
    [
        (DetectionSettings, {"threshold": 1.5}, "threshold", "<= 1.0"),
        (DetectionSettings, {"threshold": -0.1}, "threshold", ">= 0.0"),
        (DetectionSettings, {"device": "gpu"}, "device", "cuda:N"),
        (MaskSettings, {"mask_scale": 0}, "mask_scale", "> 0.0"),
        (MaskSettings, {"mosaic_size": 0}, "mosaic_size", ">= 1"),
        (MaskSettings, {"method": "pixelate"}, "method", "one of blur, solid, mosaic, none"),
        (OutputSettings, {"jpeg_quality": 101}, "jpeg_quality", "<= 100"),
        (OutputSettings, {"max_pixels": 0}, "max_pixels", ">= 1"),
    ],
)
def test_bad_values_name_field_and_range(model, values, field, allowed) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_settings(model, **values)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}=")
    assert allowed in str(caught.value)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="tresh"):
        build_settings(MaskSettings, tresh=0.3)


def test_settings_are_frozen() -> None:
    settings = MaskSettings()
    with pytest.raises(ValueError, match="frozen"):
        settings.mask_scale = 2.0  # type: ignore[misc]


def test_method_accepts_its_value_and_shows_in_the_schema() -> None:
    assert MaskSettings(method="mosaic").method is AnonymizeMethod.MOSAIC
    schema = MaskSettings.model_json_schema()
    assert schema["$defs"]["AnonymizeMethod"]["enum"] == ["blur", "solid", "mosaic", "none"]
    assert all(field.get("description") for field in schema["properties"].values())
