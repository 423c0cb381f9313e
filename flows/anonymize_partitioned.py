"""The ``anonymize-partitioned`` flow: fan a big dataset out to workers as child flow runs.

The dataset is split into ``partitions`` by a hash of each image's path; each partition runs as
a flow run of an ``anonymize-dataset`` deployment (by default the GPU one), so any number of
workers on any number of machines share the work through their work pool. The parent waits,
retries a partition whose run crashed, then merges the partitions' manifests into
``_anonymize/manifest.jsonl`` and their summaries into its own. Rerunning the parent redoes only
what is missing: each child skips images whose outputs are up to date.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from anon_tasks.core.errors import AnonTasksError
from anon_tasks.core.records import ManifestRow, RunSummary
from anon_tasks.core.settings import DetectionSettings, MaskSettings, OutputSettings, RunSettings
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.datasets.manifest import read_manifest, summary_url, write_manifest
from anon_tasks.orchestration.credentials import resolve_storage
from anon_tasks.orchestration.preflight import check_paths
from anon_tasks.orchestration.reporting import finish_state, publish
from anon_tasks.orchestration.review_task import write_review_page
from anon_tasks.storage.reads import read_bytes
from anon_tasks.storage.resolved import ResolvedStorage

__all__ = ["DEFAULT_DEPLOYMENT", "PartitionFailedError", "anonymize_partitioned"]

#: The deployment child runs are created from: ``<flow name>/<deployment name>``.
DEFAULT_DEPLOYMENT = "anonymize-dataset/gpu"


class PartitionFailedError(AnonTasksError):
    """A partition's flow run did not complete."""


@task(name="run-partition", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def run_partition(
    deployment: str,
    parameters: dict[str, Any],
    timeout_seconds: float | None = None,
    poll_seconds: float = 2.0,
) -> str:
    """Run one partition as a flow run of ``deployment`` and wait for it to finish.

    Args:
        deployment: ``<flow name>/<deployment name>`` of an anonymize-dataset deployment.
        parameters: The child run's parameters (JSON-compatible).
        timeout_seconds: Give up waiting after this long (None: wait for as long as it runs).
        poll_seconds: How often to ask the API whether the child has finished.

    Returns:
        The child flow run's id.

    Raises:
        PartitionFailedError: The child run ended in any state but Completed (then the task
            retries once, which reruns only what the failed run left undone).
    """
    flow_run = run_deployment(
        name=deployment,
        parameters=parameters,
        timeout=timeout_seconds,
        poll_interval=poll_seconds,
        as_subflow=True,
    )
    state = flow_run.state
    if state is None or not state.is_completed():
        raise PartitionFailedError(
            f"partition run {flow_run.name} ({flow_run.id}) ended "
            f"{state.type.value if state else 'without a state'}: {state.message if state else ''}"
        )
    get_run_logger().info("partition run %s completed", flow_run.name)
    return str(flow_run.id)


def _merge(
    dest: str, count: int, finished: list[int], storage: ResolvedStorage
) -> tuple[list[ManifestRow], list[RunSummary]]:
    rows: list[ManifestRow] = []
    summaries: list[RunSummary] = []
    for index in finished:
        rows.extend(read_manifest(dest, (index, count), storage.options).values())
        content = read_bytes(summary_url(dest, (index, count)), storage.options)
        summaries.append(RunSummary.model_validate_json(content))
    return rows, summaries


@flow(
    name="anonymize-partitioned",
    description="Split a dataset into partitions and anonymise them as child runs on workers.",
    validate_parameters=True,
)
def anonymize_partitioned(
    source: str,
    dest: str,
    partitions: int = 4,
    deployment: str = DEFAULT_DEPLOYMENT,
    detection: DetectionSettings = DetectionSettings(),  # noqa: B008 (frozen: safe to share)
    masking: MaskSettings = MaskSettings(),  # noqa: B008
    output: OutputSettings = OutputSettings(),  # noqa: B008
    run: RunSettings = RunSettings(),  # noqa: B008
    timeout_seconds: float | None = None,
) -> RunSummary | State:
    """Anonymise ``source`` into ``dest`` as ``partitions`` child runs of ``deployment``.

    Args:
        source: Folder or fsspec URL of the dataset, readable by every worker.
        dest: Folder or fsspec URL for the outputs, writable by every worker.
        partitions: How many child runs to split the dataset into (1 to 1000).
        deployment: The anonymize-dataset deployment the children run as.
        detection: Passed to every child.
        masking: Passed to every child.
        output: Passed to every child.
        run: Passed to every child (with its partition set); its allow_failures applies to the
            merged result.
        timeout_seconds: How long to wait for one child run (None: no limit).

    Returns:
        The merged summary; Failed when a partition failed twice or images failed (unless
        allowed).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    if not 1 <= partitions <= 1000:
        raise ValueError("partitions must be between 1 and 1000")
    storage = resolve_storage(run)
    check_paths(source, dest, run, storage)
    futures = []
    with ThreadPoolTaskRunner(max_workers=partitions) as runner:
        for index in range(partitions):
            child_run = run.model_copy(
                update={
                    "partition_index": index,
                    "partition_count": partitions,
                    "allow_failures": True,  # image failures are judged once, on the merge
                }
            )
            parameters = {
                "source": source,
                "dest": dest,
                "detection": detection.model_dump(mode="json"),
                "masking": masking.model_dump(mode="json"),
                "output": output.model_dump(mode="json"),
                "run": child_run.model_dump(mode="json"),
            }
            futures.append(
                runner.submit(
                    run_partition,
                    {
                        "deployment": deployment,
                        "parameters": parameters,
                        "timeout_seconds": timeout_seconds,
                    },
                )
            )
        finished, failed_partitions = [], []
        for index, future in enumerate(futures):
            future.wait()
            if future.state.is_completed():
                finished.append(index)
            else:
                failed_partitions.append(index)
                logger.error("partition %d/%d failed: %s", index, partitions, future.state.message)

    rows, summaries = _merge(dest, partitions, finished, storage)
    manifest = write_manifest(dest, rows, None, storage.options, protected_root=source)
    render = RenderSpec.from_settings(detection, masking, output, run)
    review = write_review_page(quote(rows), source, dest, render, storage)
    failed_images = tuple(sorted(image for s in summaries for image in s.failed_images))
    summary = RunSummary(
        source=source,
        dest=dest,
        images_total=sum(s.images_total for s in summaries),
        images_written=sum(s.images_written for s in summaries),
        images_unchanged=sum(s.images_unchanged for s in summaries),
        images_failed=sum(s.images_failed for s in summaries),
        images_skipped=sum(s.images_skipped for s in summaries),
        images_removed=sum(s.images_removed for s in summaries),
        images_inferred=sum(s.images_inferred for s in summaries),
        images_read=sum(s.images_read for s in summaries),
        faces_found=sum(s.faces_found for s in summaries),
        shards=sum(s.shards for s in summaries),
        seconds=round(time.perf_counter() - started, 3),
        failed_images=failed_images,
        manifest=manifest,
        devices=tuple(sorted({device for s in summaries for device in s.devices})),
        backends=tuple(sorted({backend for s in summaries for backend in s.backends})),
        review=review,
    )
    # The merged summary.json, the dataset's artifacts (the keys of an unpartitioned run's:
    # one history per dataset) and the completion event.
    publish(summary, render, storage)
    logger.info(
        "%d partition(s) merged: %d written, %d unchanged, %d failed; devices %s",
        len(finished),
        summary.images_written,
        summary.images_unchanged,
        summary.images_failed,
        ", ".join(summary.devices) or "none",
    )
    if failed_partitions:
        return Failed(
            message=f"partition(s) {failed_partitions} of {partitions} failed; rerun to finish",
            data=summary,
        )
    return finish_state(summary, run.allow_failures)
