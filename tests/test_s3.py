"""S3 datasets against a real HTTP S3 endpoint on 127.0.0.1 (moto's server mode)."""

from __future__ import annotations

import io
import json
import logging
import socket
import time

import numpy as np
import pytest
from PIL import Image

from anon_tasks.core.settings import AnonymizeMethod, DetectionSettings, MaskSettings, RunSettings

pytestmark = pytest.mark.usefixtures("prefect_api")

BUCKET = "datasets"
SECRET = "s3cr3t-never-logged"
NAMES = [
    "raw/astronaut.png",
    "raw/people/anna maría/foto 1.jpg",
    "raw/people/zoë/портрет.webp",
    "raw/deep/a/b/c/face.jpg",
    "raw/large/noise_face.png",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoEndpoint:
    """moto's threaded S3 server on a fixed loopback port, which tests may stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="module")
def moto_endpoint():
    endpoint = MotoEndpoint()
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture
def s3_endpoint(moto_endpoint) -> str:
    return moto_endpoint.url


def emptied_endpoint(endpoint: str, monkeypatch, secret: str = SECRET):
    """The moto endpoint emptied, AWS credentials in the environment only (the AWS chain), and
    a fresh s3fs filesystem on it."""
    import urllib.request

    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    return s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """An empty bucket on the endpoint; credentials from the environment (the AWS chain)."""
    fs = emptied_endpoint(s3_endpoint, monkeypatch)
    fs.mkdir(BUCKET)
    return fs


def put_dataset(fs, astronaut_rgb) -> None:
    def encoded(image: np.ndarray, fmt: str) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=fmt)
        return buffer.getvalue()

    large = np.random.default_rng(0).integers(0, 256, (1600, 1600, 3), dtype=np.uint8)
    large[300:812, 300:812] = astronaut_rgb  # a face inside 7 MB of incompressible noise
    contents = {
        NAMES[0]: encoded(astronaut_rgb, "PNG"),
        NAMES[1]: encoded(np.roll(astronaut_rgb, 90, axis=1), "JPEG"),
        NAMES[2]: encoded(np.roll(astronaut_rgb, 40, axis=0), "WEBP"),
        NAMES[3]: encoded(astronaut_rgb[::-1].copy(), "JPEG"),
        NAMES[4]: encoded(large, "PNG"),
        "raw/astronaut.txt": b"an astronaut",
    }
    for key, content in contents.items():
        fs.pipe(f"{BUCKET}/{key}", content)


def run_flow(source: str, dest: str, **run_values):
    from anon_tasks.flows import anonymize_dataset

    return anonymize_dataset(
        source,
        dest,
        DetectionSettings(device="cpu"),
        run=RunSettings(shard_size=2, caption_note="faces are blurred", **run_values),
    )


def test_s3_source_and_dest_with_endpoint_option(s3, s3_endpoint, astronaut_rgb) -> None:
    put_dataset(s3, astronaut_rgb)
    options = {"endpoint_url": s3_endpoint}
    summary = run_flow(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/anon", storage_options=options)
    assert summary.images_total == summary.images_written == 5
    assert summary.images_failed == 0
    assert summary.faces_found >= 5
    s3.invalidate_cache()
    for name in NAMES:
        key = f"{BUCKET}/anon/{name.removeprefix('raw/')}"
        assert s3.exists(key), key
        assert s3.info(key)["size"] > 0
    assert s3.cat(f"{BUCKET}/anon/astronaut.txt") == b"an astronaut, faces are blurred"
    rows = [
        json.loads(line)
        for line in s3.cat(f"{BUCKET}/anon/_anonymize/manifest.jsonl").decode().splitlines()
    ]
    assert {row["source"] for row in rows} == {n.removeprefix("raw/") for n in NAMES}
    assert all(row["source_fingerprint"].startswith("etag:") for row in rows)
    masked = np.asarray(Image.open(io.BytesIO(s3.cat(f"{BUCKET}/anon/astronaut.png"))))
    assert np.abs(masked[90:150, 200:250].astype(int) - astronaut_rgb[90:150, 200:250]).mean() > 5
    assert summary.review == f"s3://{BUCKET}/anon/_anonymize/review/index.html"
    page = s3.cat(f"{BUCKET}/anon/_anonymize/review/index.html").decode()
    assert page.count("<figure") == summary.images_written
    (sheet,) = s3.glob(f"{BUCKET}/anon/_anonymize/review/sheet-0001-*.png")
    assert s3.info(sheet)["size"] > 0

    again = run_flow(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/anon", storage_options=options)
    assert again.images_read == 0  # ETags and the manifest say everything is up to date
    assert again.images_inferred == 0
    assert again.images_unchanged == 5


def test_endpoint_from_the_aws_environment(s3, s3_endpoint, astronaut_rgb, monkeypatch) -> None:
    put_dataset(s3, astronaut_rgb)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    summary = run_flow(f"s3://{BUCKET}/raw/people", f"s3://{BUCKET}/out")
    assert summary.images_written == 2
    s3.invalidate_cache()
    assert s3.exists(f"{BUCKET}/out/anna maría/foto 1.jpg")


def test_credentials_block_and_no_secret_anywhere(
    s3, s3_endpoint, astronaut_rgb, monkeypatch, caplog
) -> None:
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    put_dataset(s3, astronaut_rgb)
    AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=s3_endpoint),
    ).save("anon-test-s3", overwrite=True)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)  # only the block knows the credentials now
    caplog.set_level(logging.DEBUG)
    summary = run_flow(
        f"s3://{BUCKET}/raw",
        f"s3://{BUCKET}/anon",
        credentials_block="aws-credentials/anon-test-s3",
    )
    assert summary.images_written == 5
    assert SECRET not in caplog.text
    assert SECRET not in summary.model_dump_json()
    manifest = s3.cat(f"{BUCKET}/anon/_anonymize/manifest.jsonl").decode()
    assert SECRET not in manifest
    assert SECRET not in s3.cat(f"{BUCKET}/anon/_anonymize/summary.json").decode()


def test_secrets_are_refused_as_plain_parameters() -> None:
    with pytest.raises(ValueError, match="credentials_block"):
        RunSettings(storage_options={"secret": SECRET})


def test_listing_is_paged(s3, s3_endpoint) -> None:
    from anon_tasks.core.records import ImageRef
    from anon_tasks.datasets.listing import scan_dataset

    for index in range(2350):  # three pages of list_objects_v2
        s3.pipe(f"{BUCKET}/many/{index:05d}.jpg", b"x")
    scanned = scan_dataset(f"s3://{BUCKET}/many", {"endpoint_url": s3_endpoint})
    listed = (entry for entry in scanned if isinstance(entry, ImageRef))
    first = next(listed)  # a generator: the first page is enough to start
    assert first.relative_path == "00000.jpg"
    assert sum(1 for _ in listed) == 2349


def test_endpoint_outage_fails_clearly_and_a_rerun_finishes(
    s3, s3_endpoint, moto_endpoint, astronaut_rgb
) -> None:
    import threading

    import s3fs

    for index in range(10):
        buffer = io.BytesIO()
        Image.fromarray(np.roll(astronaut_rgb, 45 * index, axis=1)).save(buffer, format="PNG")
        s3.pipe(f"{BUCKET}/raw/img{index:02d}.png", buffer.getvalue())
    options = {"endpoint_url": s3_endpoint}
    watcher_fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)

    def stop_after_first_output() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            watcher_fs.invalidate_cache()
            if watcher_fs.exists(f"{BUCKET}/anon/img00.png") or any(
                key.endswith(".png") for key in watcher_fs.find(f"{BUCKET}/anon")
            ):
                break
            time.sleep(0.05)
        moto_endpoint.stop()

    watcher = threading.Thread(target=stop_after_first_output)
    watcher.start()
    try:
        with pytest.raises(Exception, match=r"(?i)connect|endpoint|could not") as caught:
            run_flow(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/anon", storage_options=options)
    finally:
        watcher.join(timeout=150)
        moto_endpoint.start()  # the endpoint comes back, with what it stored
    assert "127.0.0.1" in str(caught.value) or "connect" in str(caught.value).lower()

    s3.invalidate_cache()
    for key in s3.find(f"{BUCKET}/anon"):
        assert s3.info(key)["size"] > 0, key  # never a partial or empty object
    again = run_flow(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/anon", storage_options=options)
    assert again.images_written + again.images_unchanged == 10
    run_flow(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/clean", storage_options=options)
    s3.invalidate_cache()
    for index in range(10):
        name = f"img{index:02d}.png"
        assert s3.cat(f"{BUCKET}/anon/{name}") == s3.cat(f"{BUCKET}/clean/{name}")


def test_result_storage_on_s3(s3, s3_endpoint, astronaut_rgb) -> None:
    put_dataset(s3, astronaut_rgb)
    options = {"endpoint_url": s3_endpoint}
    cache = f"s3://{BUCKET}/cache/anon"
    first = run_flow(
        f"s3://{BUCKET}/raw", f"s3://{BUCKET}/anon", storage_options=options, result_storage=cache
    )
    assert first.images_inferred == 5
    s3.invalidate_cache()
    stored = s3.find(f"{BUCKET}/cache/anon")
    assert any("anon-detect-shard-" in key for key in stored)
    # One record per shard, none per image: manifest rows name the shard record instead.
    assert all("anon-detect-shard-" in key for key in stored if "anon-detect-" in key)
    from anon_tasks.flows import anonymize_dataset

    again = anonymize_dataset(
        f"s3://{BUCKET}/raw",
        f"s3://{BUCKET}/anon",
        DetectionSettings(device="cpu"),
        MaskSettings(method=AnonymizeMethod.SOLID),  # another method: masks again, no model
        run=RunSettings(
            shard_size=2,
            caption_note="faces are blurred",
            storage_options=options,
            result_storage=cache,
        ),
    )
    assert again.images_inferred == 0
    assert again.images_written == 5


def test_scan_classifies_objects_from_the_listing(s3, s3_endpoint) -> None:
    from anon_tasks.core.records import ImageRef
    from anon_tasks.datasets.listing import scan_dataset

    jpeg_head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200)
    objects = {
        "a.jpg": b"1",
        "a.k/x.png": b"1",  # between a.jpg and its caption in key order
        "a.txt": b"a caption",
        "IMG_0001": jpeg_head,
        "IMG_0001.txt": b"a caption",
        "notes.dat": b"plain text",
        "empty": b"",
        ".cache/a.jpg": b"1",
        ".cache/b.jpg": b"1",
        "sub/.DS_Store": b"1",
    }
    for key, content in objects.items():
        s3.pipe(f"{BUCKET}/scan/{key}", content)
    entries = list(scan_dataset(f"s3://{BUCKET}/scan", {"endpoint_url": s3_endpoint}))
    images = {e.relative_path: e for e in entries if isinstance(e, ImageRef)}
    skipped = {e.relative_path: e.reason for e in entries if not isinstance(e, ImageRef)}
    assert sorted(images) == ["IMG_0001", "a.jpg", "a.k/x.png"]
    assert [s.relative_path for s in images["a.jpg"].sidecars] == ["a.txt"]
    assert [s.relative_path for s in images["IMG_0001"].sidecars] == ["IMG_0001.txt"]
    assert images["IMG_0001"].fingerprint.startswith("etag:")
    assert skipped == {
        ".cache": "hidden folder, not descended",
        "empty": "not an image (empty file)",
        "notes.dat": "not an image (text)",
        "sub/.DS_Store": "hidden file",
    }


def _s3_manifest(fs, prefix: str) -> dict[str, dict]:
    fs.invalidate_cache()
    lines = fs.cat(f"{prefix}/_anonymize/manifest.jsonl").decode().splitlines()
    return {row["source"]: row for row in map(json.loads, lines)}


def test_invariants_hold_on_s3(s3, s3_endpoint, astronaut_rgb) -> None:
    """Sidecar image data stripped, gone sources removed, method none writes nothing, and
    s3a:// is the same bucket as s3:// for the overlap check: on an object store too."""
    import base64

    from anon_tasks.core.errors import ConfigurationError
    from anon_tasks.core.settings import AnonymizeMethod, MaskSettings
    from anon_tasks.flows import anonymize_dataset

    def png(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()

    small = astronaut_rgb[::2, ::2].copy()
    labelme = {
        "shapes": [{"label": "face", "points": [[1, 2], [3, 4]]}],
        "imageData": base64.b64encode(png(small)).decode(),
        "caption": "an astronaut",
    }
    s3.pipe(f"{BUCKET}/raw/a.png", png(small))
    s3.pipe(f"{BUCKET}/raw/a.json", json.dumps(labelme).encode())
    s3.pipe(f"{BUCKET}/raw/b.png", png(np.roll(small, 50, axis=1)))
    options = {"endpoint_url": s3_endpoint}
    summary = run_flow(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/anon", storage_options=options)
    assert summary.images_written == 2
    s3.invalidate_cache()
    sidecar = json.loads(s3.cat(f"{BUCKET}/anon/a.json"))
    assert sidecar["shapes"] == labelme["shapes"]
    assert not sidecar.get("imageData")
    assert labelme["imageData"][:200] not in s3.cat(f"{BUCKET}/anon/a.json").decode()

    s3.rm(f"{BUCKET}/raw/b.png")  # consent withdrawn
    before = s3.cat(f"{BUCKET}/anon/a.png")
    detect_only = anonymize_dataset(
        f"s3a://{BUCKET}/raw",
        f"s3a://{BUCKET}/anon",
        DetectionSettings(device="cpu"),
        MaskSettings(method=AnonymizeMethod.NONE),
        run=RunSettings(storage_options=options),
    )
    assert detect_only.faces_found == 1
    s3.invalidate_cache()
    assert s3.exists(f"{BUCKET}/anon/b.png")  # none never touches dest, not even to remove
    assert s3.cat(f"{BUCKET}/anon/a.png") == before

    summary = run_flow(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/anon", storage_options=options)
    assert summary.images_removed == 1
    s3.invalidate_cache()
    assert not s3.exists(f"{BUCKET}/anon/b.png")
    assert _s3_manifest(s3, f"{BUCKET}/anon")["b.png"]["status"] == "removed"

    for source, dest in [
        (f"s3://{BUCKET}/raw", f"s3a://{BUCKET}/raw/out"),
        (f"s3a://{BUCKET}/raw", f"s3://{BUCKET}"),
    ]:
        with pytest.raises(ConfigurationError):
            anonymize_dataset(source, dest, run=RunSettings(storage_options=options))


def test_object_store_mistakes_are_refused_before_any_work(s3, s3_endpoint, astronaut_rgb) -> None:
    """A typo must not read as an empty source (that would remove every output), and a result
    storage block that stores inside the source is refused like a URL would be."""
    from prefect.filesystems import RemoteFileSystem

    from anon_tasks.core.errors import ConfigurationError
    from anon_tasks.flows import anonymize_dataset

    options = {"endpoint_url": s3_endpoint}
    buffer = io.BytesIO()
    Image.fromarray(astronaut_rgb[::2, ::2].copy()).save(buffer, format="PNG")
    s3.pipe(f"{BUCKET}/raw/a.png", buffer.getvalue())
    s3.pipe(f"{BUCKET}/raw/marker.jpg/", buffer.getvalue())  # a folder marker holding bytes
    run = RunSettings(storage_options=options)
    cases = [
        (f"s3://{BUCKET}/typo", f"s3://{BUCKET}/out", "source"),  # no objects under it
        (f"s3://{BUCKET}/raw/a.png", f"s3://{BUCKET}/out", "source"),  # one object
        ("s3://no-such-bucket/raw", f"s3://{BUCKET}/out", "source"),
        (f"s3://{BUCKET}/raw", "s3://no-such-bucket/out", "dest"),
    ]
    for source, dest, field in cases:
        with pytest.raises(ConfigurationError) as refused:
            anonymize_dataset(source, dest, DetectionSettings(device="cpu"), run=run)
        assert refused.value.field == field, (source, dest)
    RemoteFileSystem(basepath=f"s3://{BUCKET}/raw/cache", settings=options).save(
        "cache-in-source", overwrite=True
    )
    with pytest.raises(ConfigurationError) as refused:
        anonymize_dataset(
            f"s3://{BUCKET}/raw",
            f"s3://{BUCKET}/out",
            DetectionSettings(device="cpu"),
            run=run.model_copy(update={"result_storage": "remote-file-system/cache-in-source"}),
        )
    assert refused.value.field == "result_storage"
    s3.invalidate_cache()
    assert not s3.exists(f"{BUCKET}/raw/cache")

    s3.pipe(f"{BUCKET}/out/_anonymize/manifest.jsonl", b"\xff\xfe not a manifest\n")
    summary = run_flow(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/out", storage_options=options)
    assert summary.images_written == 1  # a bad manifest is not trusted, and stops nothing
    rows = _s3_manifest(s3, f"{BUCKET}/out")
    assert rows["marker.jpg/"]["status"] == "skipped"
    assert summary.images_skipped == 1


def test_objects_added_between_runs_of_one_process_are_read(s3, s3_endpoint, astronaut_rgb) -> None:
    """A long-lived worker runs flow after flow: no listing cached by one run hides, or fakes
    the loss of, an object in the next."""
    buffer = io.BytesIO()
    Image.fromarray(astronaut_rgb[::2, ::2].copy()).save(buffer, format="PNG")
    options = {"endpoint_url": s3_endpoint}
    s3.pipe(f"{BUCKET}/raw/a.png", buffer.getvalue())
    first = run_flow(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/anon", storage_options=options)
    assert first.images_written == 1
    s3.pipe(f"{BUCKET}/raw/b.png", buffer.getvalue())
    second = run_flow(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/anon", storage_options=options)
    assert (second.images_written, second.images_unchanged, second.images_failed) == (1, 1, 0)
