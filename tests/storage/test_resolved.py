"""The run's resolved storage options: shown without values, never serialised."""

from __future__ import annotations

import copy
import pickle

import pytest

from anon_tasks.storage.resolved import NO_OPTIONS, ResolvedStorage

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_repr_names_the_options_and_hides_their_values() -> None:
    storage = ResolvedStorage({"key": "AKIAEXAMPLE", "secret": SECRET, "endpoint_url": "http://x"})
    shown = f"{storage!r} {storage} {[storage]}"
    assert SECRET not in shown
    assert "AKIAEXAMPLE" not in shown
    assert "endpoint_url, key, secret" in shown
    assert repr(NO_OPTIONS) == "ResolvedStorage(options=<none>)"


@pytest.mark.parametrize("serialise", [pickle.dumps, copy.deepcopy, copy.copy])
def test_it_refuses_to_be_serialised(serialise) -> None:
    with pytest.raises(TypeError, match="never serialised"):
        serialise(ResolvedStorage({"secret": SECRET}))


def test_options_cannot_be_changed_after_resolution() -> None:
    given = {"endpoint_url": "http://a"}
    storage = ResolvedStorage(given)
    given["endpoint_url"] = "http://b"
    assert storage.options["endpoint_url"] == "http://a"
    with pytest.raises(TypeError):
        storage.options["endpoint_url"] = "http://c"  # type: ignore[index]
