"""Object-store listing against a real HTTP S3 endpoint (moto's server mode): paged through
the public API of the client s3fs holds, a failed page retried on its own, S3's errors as s3fs
raises them."""

from __future__ import annotations

import pytest

from anon_tasks.core.records import SkippedEntry
from anon_tasks.datasets.entries import ListedFile
from anon_tasks.datasets.remote_listing import remote_leaves
from tests.test_s3 import MotoEndpoint, emptied_endpoint

BUCKET = "listing"


@pytest.fixture(scope="module")
def endpoint():
    server = MotoEndpoint()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def options(endpoint, monkeypatch) -> dict[str, str]:
    fs = emptied_endpoint(endpoint, monkeypatch, secret="testing")
    fs.mkdir(BUCKET)
    fs.pipe({f"{BUCKET}/p/{index:05d}.jpg": b"x" for index in range(1205)})
    fs.pipe({f"{BUCKET}/p/.hidden/a.jpg": b"x", f"{BUCKET}/p/_skip/b.jpg": b"x"})
    fs.pipe(f"{BUCKET}/p2/outside.jpg", b"x")
    return {"endpoint_url": endpoint}


def test_every_page_is_listed_without_s3fs_private_calls(options, monkeypatch) -> None:
    import s3fs

    def refused(*args, **kwargs):
        raise AssertionError("the listing calls s3fs's private _call_s3")

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", refused)
    leaves = list(remote_leaves(f"s3://{BUCKET}/p", "_skip", options))
    files = [leaf for _key, leaf in leaves if isinstance(leaf, ListedFile)]
    assert [f.relative_path for f in files] == [f"{index:05d}.jpg" for index in range(1205)]
    assert all(f.fingerprint.startswith("etag:") and f.size == 1 for f in files)
    skipped = [leaf for _key, leaf in leaves if isinstance(leaf, SkippedEntry)]
    assert [(s.relative_path, s.reason) for s in skipped] == [
        (".hidden", "hidden folder, not descended")
    ]


def test_a_page_that_fails_is_asked_again_and_the_listing_goes_on(options, monkeypatch) -> None:
    """A cut connection on the second page retries that page (same continuation token), not
    the listing from its first page."""
    from botocore.parsers import ResponseParserError

    from anon_tasks.datasets import remote_listing

    real_client = remote_listing._s3_client
    asked: list[str | None] = []

    class FlakyClient:
        def __init__(self, client) -> None:
            self.client = client

        async def list_objects_v2(self, **kwargs):
            asked.append(kwargs.get("ContinuationToken"))
            if len(asked) == 2:
                raise ResponseParserError("the connection was cut mid-page")
            return await self.client.list_objects_v2(**kwargs)

    async def flaky(fs, bucket, prefix):
        client, kwargs = await real_client(fs, bucket, prefix)
        return FlakyClient(client), kwargs

    monkeypatch.setattr(remote_listing, "_s3_client", flaky)
    leaves = list(remote_leaves(f"s3://{BUCKET}/p", "_skip", options))
    assert sum(isinstance(leaf, ListedFile) for _key, leaf in leaves) == 1205
    assert asked[0] is None  # the first page once
    assert asked[1] == asked[2] is not None  # the second page again, from its own token
    assert len(asked) == 3  # 1,207 keys: pages of 1,000 and 207, the second asked twice


def test_a_listing_left_early_stops_asking_for_pages(options) -> None:
    leaves = remote_leaves(f"s3://{BUCKET}/p", None, options)
    assert next(leaves)[0] == ".hidden/"  # "." sorts before the digits
    assert next(leaves)[0] == "00000.jpg"
    leaves.close()  # the paginator is closed on s3fs's loop; nothing hangs


def test_a_missing_bucket_is_file_not_found(options) -> None:
    with pytest.raises(FileNotFoundError):
        list(remote_leaves("s3://no-such-bucket/p", None, options))
