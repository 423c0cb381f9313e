"""Invariant 13 through a real flow run: a refused secret is never repeated in logs or errors."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anon_tasks.flows import anonymize_dataset

pytestmark = pytest.mark.usefixtures("prefect_api")

SECRET_NAMES = ["aws_secret_access_key", "secret", "token", "accountKey", "sas-token", "password"]


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(SECRET_NAMES),
    value=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+", min_size=24),
)
def test_a_refused_secret_appears_in_no_log_line_or_error(
    tmp_path_factory, caplog, name: str, value: str
) -> None:
    root = tmp_path_factory.mktemp("secret")
    (root / "raw").mkdir()
    caplog.clear()
    refusal = pytest.raises(Exception, match=r"credentials|invalid")
    with caplog.at_level(logging.DEBUG), refusal as refused:
        anonymize_dataset(
            str(root / "raw"), str(root / "out"), run={"storage_options": {name: value}}
        )
    assert value not in str(refused.value)
    assert value not in repr(refused.value)
    for record in caplog.records:
        assert value not in record.getMessage()
    assert not (root / "out").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["s3://AKIAIOSFODNN7EXAMPLE:Hunter2SecretPw@bucket/raw", "s3://bucket/out"],
        ["s3://bucket/raw", "s3://k:Hunter2SecretPw@bucket/raw/out"],
        ["{src}", "{dst}", "--result-storage", "s3://AKIAIOSFODNN7EXAMPLE:Hunter2SecretPw@b/c"],
        ["{src}", "{dst}", "--caption-note", "AKIAIOSFODNN7EXAMPLE Hunter2SecretPw"],
    ],
)
def test_credentials_in_urls_are_refused_and_never_repeated(tmp_path, capsys, args) -> None:
    from anon_tasks import cli

    (tmp_path / "raw").mkdir()
    filled = [a.format(src=tmp_path / "raw", dst=tmp_path / "out") for a in args]
    assert cli.main([*filled, "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert "Hunter2SecretPw" not in captured.err + captured.out
    assert "AKIAIOSFODNN7EXAMPLE" not in captured.err + captured.out
    assert not (tmp_path / "out").exists()
