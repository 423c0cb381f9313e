"""Secrets are refused as parameters, and no error ever repeats one."""

from __future__ import annotations

import base64
import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from anon_tasks.core.errors import ConfigurationError
from anon_tasks.core.secrets import looks_like_secret_name, looks_like_secret_value
from anon_tasks.core.settings import (
    DetectionSettings,
    RunSettings,
    build_settings,
    configuration_error,
)

#: Words of credential names across clouds and fsspec backends.
SECRET_WORDS = [
    "secret",
    "token",
    "password",
    "passwd",
    "pwd",
    "pass",
    "key",
    "access_key",
    "account_key",
    "sas_token",
    "sas",
    "api_key",
    "apikey",
    "credential",
    "credentials",
    "auth",
    "authorization",
    "session",
    "signature",
    "sig",
    "private",
    "private_key",
    "client_secret",
    "connection_string",
    "bearer",
    "cookie",
    "refresh_token",
    "hmac",
]
#: Words found beside them in real option names.
OTHER_WORDS = ["aws", "azure", "gcs", "s3", "storage", "client", "user", "my", "id", "value", "x"]
#: Ordinary fsspec / s3fs options that must stay accepted.
ORDINARY = [
    "endpoint_url",
    "profile",
    "region_name",
    "anon",
    "use_ssl",
    "requester_pays",
    "version_aware",
    "default_block_size",
    "skip_instance_cache",
    "use_listings_cache",
    "listings_expiry_time",
    "max_concurrency",
    "cache_regions",
    "account_name",
    "default_cache_type",
    "fixed_upload_size",
    "asynchronous",
    "project",
]


class FlowParameters(BaseModel):
    """An outer model that shows inputs in its errors, as a Prefect flow's parameters do."""

    run: RunSettings


def styled(words: list[str], separator: str, style: str) -> str:
    parts = [part for word in words for part in word.split("_")]
    if style == "camel":
        return parts[0].lower() + "".join(part.capitalize() for part in parts[1:])
    if style == "pascal":
        return "".join(part.capitalize() for part in parts)
    name = separator.join(parts)
    return {"upper": name.upper(), "lower": name.lower(), "as is": name}[style]


secret_names = st.builds(
    lambda before, word, after, separator, style: styled([*before, word, *after], separator, style),
    st.lists(st.sampled_from(OTHER_WORDS), max_size=2),
    st.sampled_from(SECRET_WORDS),
    st.lists(st.sampled_from(OTHER_WORDS), max_size=2),
    st.sampled_from(["_", "-", ".", " "]),
    st.sampled_from(["camel", "pascal", "upper", "lower", "as is"]),
)
#: Secret values that cannot turn up in a message by chance.
secret_values = st.text(
    alphabet=string.ascii_letters + string.digits + "+/=!#%&*~^", min_size=12, max_size=64
)


def every_error_text(values: dict[str, object]) -> str:
    """Everything an error about ``values`` can say: pydantic's own text and errors list,
    through an outer model that shows inputs, ``configuration_error`` and ``build_settings``,
    and a Prefect flow's parameter error."""
    texts: list[str] = []
    with pytest.raises(ValidationError) as direct:
        RunSettings(**values)
    texts += [str(direct.value), repr(direct.value), repr(direct.value.errors())]
    texts.append(str(configuration_error(direct.value, RunSettings)))
    with pytest.raises(ValidationError) as nested:
        FlowParameters(run=values)
    texts += [str(nested.value), repr(nested.value.errors())]
    texts.append(str(configuration_error(nested.value, FlowParameters)))
    with pytest.raises(ConfigurationError) as built:
        build_settings(RunSettings, **values)
    texts.append(str(built.value))
    from prefect.exceptions import ParameterTypeError

    texts.append(str(ParameterTypeError.from_validation_error(nested.value)))
    return "\n".join(texts)


@settings(max_examples=60, deadline=None)
@given(name=secret_names)
def test_credential_names_are_refused_in_any_case_and_style(name) -> None:
    assert looks_like_secret_name(name), name
    with pytest.raises(ValidationError, match="credentials_block"):
        RunSettings(storage_options={name: "value"})


@pytest.mark.parametrize(
    "name",
    [
        "accessKeyId",
        "AWS_SECRET_ACCESS_KEY",
        "aws.secret",
        "aws_session_token",
        "SASToken",
        "x-amz-security-token",
        "AccountKey",
        "clientSecret",
        "AZURE_STORAGE_CONNECTION_STRING",
        "oauth2_refresh",
        "Cookie",
        "ｓｅｃｒｅｔ",  # fullwidth letters
    ],
)
def test_well_known_credential_names_are_refused(name) -> None:
    assert looks_like_secret_name(name)


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_option_names_are_accepted(name) -> None:
    assert not looks_like_secret_name(name)
    assert RunSettings(storage_options={name: True}).storage_options == {name: True}


@settings(max_examples=50, deadline=None)
@given(
    value=secret_values,
    name=secret_names,
    case=st.sampled_from(
        ["secret name", "wrong type", "unknown field", "not a mapping", "nested list"]
    ),
)
def test_no_error_text_ever_repeats_a_secret_value(value, name, case) -> None:
    values = {
        "secret name": {"storage_options": {"endpoint_url": "http://minio:9000", name: value}},
        "wrong type": {"storage_options": {"endpoint_url": [value]}},
        "unknown field": {"shard_size": 4, name: value},
        "not a mapping": {"storage_options": f"{name}={value}"},
        "nested list": {"storage_options": {"profile": {"inner": value}}},
    }[case]
    assert value not in every_error_text(values)


def test_a_prefect_flow_refuses_a_secret_parameter_without_repeating_it() -> None:
    from prefect import flow
    from prefect.exceptions import ParameterTypeError

    @flow
    def takes_settings(run: RunSettings) -> None:  # pragma: no cover - never run
        return None

    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    for run in (
        {"storage_options": {"aws_secret_access_key": secret}},
        {"storage_options": {"endpoint_url": secret}},
        {"sessionToken": secret},
    ):
        with pytest.raises(ParameterTypeError) as caught:
            takes_settings.validate_parameters({"run": run})
        assert secret not in str(caught.value)


@settings(max_examples=40, deadline=None)
@given(
    prefix=st.sampled_from(["AKIA", "ASIA"]),
    body=st.text(alphabet=string.ascii_uppercase + string.digits, min_size=16, max_size=16),
    name=st.sampled_from(ORDINARY),
)
def test_an_aws_access_key_id_is_refused_under_any_name(prefix, body, name) -> None:
    key_id = prefix + body
    assert looks_like_secret_value(key_id)
    text = every_error_text({"storage_options": {name: key_id}})
    assert key_id not in text
    assert name in text  # the message names the option


def test_random_keys_are_refused_and_ordinary_values_accepted() -> None:
    """Value detection is a heuristic: nearly every random 40-character key (an AWS secret key)
    and every known token shape is caught; paths, endpoints and names are not."""
    alphabet = string.ascii_letters + string.digits + "+/"
    keys = ["".join(random.Random(seed).choices(alphabet, k=40)) for seed in range(2000)]
    caught = sum(looks_like_secret_value(key) for key in keys)
    assert caught >= 0.995 * len(keys)
    azure_account_key = base64.b64encode(random.Random(1).randbytes(64)).decode()
    for value in [
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        azure_account_key,
        "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=abc",
        "sv=2022-11-02&ss=b&sig=abcdef",
        "https://user:hunter2@minio.internal:9000",
        "-----BEGIN RSA PRIVATE KEY-----",
        "ghp_" + "a1B2" * 9,
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "0123456789abcdef0123456789abcdef",
    ]:
        assert looks_like_secret_value(value), value
    for value in [
        "http://minio:9000",
        "https://s3.eu-central-1.amazonaws.com",
        "eu-west-1",
        "datasets",
        "/mnt/Data2024/ProjectImages/Faces_v2/raw",
        "/home/ubuntu/.cache/fsspec/anon-tasks-2024",
        "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "ProjectAlphaDatasets2024Version11Final",
        "12345678901234567890123456789012345",
    ]:
        assert not looks_like_secret_value(value), value
        assert RunSettings(storage_options={"endpoint_url": value})


def test_harmless_values_are_still_echoed_and_whole_model_errors_are_not() -> None:
    with pytest.raises(ConfigurationError, match=r"^shard_size=0 is invalid"):
        build_settings(RunSettings, shard_size=0)
    with pytest.raises(ConfigurationError, match=r"^device='gpu' is invalid"):
        build_settings(DetectionSettings, device="gpu")
    with pytest.raises(ConfigurationError) as caught:
        build_settings(
            RunSettings,
            partition_index=3,
            partition_count=2,
            storage_options={"endpoint_url": "http://internal-minio:9000"},
        )
    assert "partition_index=3 must be below partition_count=2" in str(caught.value)
    assert "internal-minio" not in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        build_settings(RunSettings, storage_options={"endpoint_url": ["http://internal:1"]})
    assert caught.value.field.startswith("storage_options.endpoint_url")
    assert "internal" not in str(caught.value)
