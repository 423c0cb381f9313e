"""GPU check: is CUDA really used, do its detections match the CPU's, and how fast is it.

Usage (on a host with an NVIDIA GPU and ``anon-tasks[cuda]`` installed)::

    python benchmarks/gpu_check.py [--device cuda:0] [--json results.json]

Prints the execution provider the session really got; the largest box and score differences
between CUDA and CPU detections on the same images; the model's images/s at batch sizes 1, 8
and 32 for 1024x768 and 1920x1080 images, through ``detect_batch`` (resize and stack on the CPU,
inference, decoding) and for the model alone (host input and output, then input and outputs
bound on the device); and end-to-end images/s of the library pipeline the flow's tasks run
(JPEG files read and decoded on a thread pool, same-size batches detected, blurred, encoded and
written on a thread pool) over ``--images`` files of 1024x768 and of the dev set's mix of
heights, in the layouts ``--variants`` names: each stage alone, one process, one process with a
1 ms GIL switch interval, or N pipeline processes sharing the GPU (as N flow runs of one
``anonymize-workers --limit N`` worker would). Exits 1 when CUDA is not used or detections
differ beyond tolerance.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anon_tasks.core.settings import DetectionSettings
from anon_tasks.detection.detector import CenterFaceDetector

logger = logging.getLogger("gpu_check")

SIZES = ((1024, 768), (1920, 1080))
BATCHES = (1, 8, 32)
BOX_TOLERANCE_PX = 2.0
SCORE_TOLERANCE = 0.02
#: Faces compared between the CPU and the GPU score above this.
THRESHOLD = 0.4

#: The flow's default pixel limit (OutputSettings.max_pixels).
MAX_PX = 200_000_000


def faces_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Real faces at several scales: scikit-image's astronaut tiled and resized."""
    from skimage import data

    astronaut = data.astronaut()
    rng = np.random.default_rng(seed)
    tiles = np.concatenate(
        [np.concatenate([np.roll(astronaut, int(rng.integers(0, 200)), axis=1)] * 3, axis=1)] * 2,
        axis=0,
    )
    return np.ascontiguousarray(cv2.resize(tiles, (width, height), interpolation=cv2.INTER_AREA))


def compare(cpu: CenterFaceDetector, gpu: CenterFaceDetector) -> dict[str, float]:
    worst_box = worst_score = 0.0
    count_mismatches = faces = 0
    for width, height in SIZES:
        for seed in range(4):
            rgb = faces_image(width, height, seed)
            on_cpu, on_gpu = cpu.detect(rgb).above(THRESHOLD), gpu.detect(rgb).above(THRESHOLD)
            faces += len(on_cpu)
            if len(on_cpu) != len(on_gpu):
                count_mismatches += 1
                continue
            if len(on_cpu):
                distance = np.abs(on_cpu.xyxy[:, None] - on_gpu.xyxy[None]).max(axis=2)
                nearest = distance.argmin(axis=1)
                worst_box = max(worst_box, float(distance.min(axis=1).max()))
                worst_score = max(
                    worst_score, float(np.abs(on_cpu.scores - on_gpu.scores[nearest]).max())
                )
    return {
        "faces_compared": faces,
        "count_mismatches": count_mismatches,
        "max_box_diff_px": worst_box,
        "max_score_diff": worst_score,
    }


def model_throughput(detector: CenterFaceDetector, seconds: float) -> list[dict[str, object]]:
    """Images/s of ``detect_batch``: resize and stack on the CPU, model run, decode."""
    rows = []
    # On a CPU (a dry run of this script), batches only cost memory: one image at a time.
    batches = BATCHES if detector.batch_size > 1 else (1,)
    for width, height in SIZES:
        rgb = faces_image(width, height)
        for batch in batches:
            images = [rgb] * batch
            for _ in range(3):
                detector.detect_batch(images)
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                detector.detect_batch(images)
                runs += 1
            elapsed = time.perf_counter() - started
            rows.append(
                {
                    "size": f"{width}x{height}",
                    "batch": batch,
                    "images_per_s": round(runs * batch / elapsed, 1),
                    "ms_per_batch": round(1000 * elapsed / runs, 2),
                }
            )
            print(f"  {width}x{height} batch {batch:2d}: {rows[-1]['images_per_s']:8.1f} img/s")
    return rows


#: Input shapes (N, H, W) of the planning probe, and the cuDNN options it compares.
PLANNING_SHAPES = ((1, 768, 1024), (2, 768, 1024), (1, 576, 1024))
PLANNING_OPTIONS = {
    "heuristic": {"cudnn_conv_algo_search": "HEURISTIC"},
    "default": {"cudnn_conv_algo_search": "DEFAULT"},
    "heuristic_nhwc": {"cudnn_conv_algo_search": "HEURISTIC", "prefer_nhwc": "1"},
}


def shape_planning(device_id: int) -> list[dict[str, object]]:
    """Seconds of the first and the second run of new input shapes on a fresh CUDA session, per
    cuDNN algorithm-search option: what each new shape costs before it runs at speed."""
    import onnxruntime as ort

    from anon_tasks.detection.model import load_model_file, prepare_for_inference
    from anon_tasks.detection.runtime import _session_options

    model_bytes = prepare_for_inference(load_model_file(DetectionSettings().model_path).content)
    rows = []
    for label, options in PLANNING_OPTIONS.items():
        session = ort.InferenceSession(
            model_bytes,
            sess_options=_session_options(1),
            providers=[("CUDAExecutionProvider", {"device_id": device_id, **options})],
        )
        name = session.get_inputs()[0].name
        for count, height, width in PLANNING_SHAPES:
            pixels = {name: np.zeros((count, height, width, 3), np.uint8)}
            timings = []
            for _ in range(2):
                started = time.perf_counter()
                session.run(None, pixels)
                timings.append(time.perf_counter() - started)
            rows.append(
                {
                    "options": label,
                    "shape": [count, height, width],
                    "first_run_s": round(timings[0], 3),
                    "second_run_ms": round(1000 * timings[1], 2),
                }
            )
            print(f"  planning {rows[-1]}", flush=True)
    return rows


def model_only(detector: CenterFaceDetector, seconds: float) -> list[dict[str, object]]:
    """Images/s of the model alone: host batch in and out, then I/O binding on the device."""
    import onnxruntime as ort

    from anon_tasks.detection.centerface import network_batch, network_size_wh

    session = detector._session
    rows = []
    for width, height in SIZES:
        size = network_size_wh(width, height)
        for batch in BATCHES:
            pixels = network_batch([faces_image(width, height)] * batch, size)
            binding = session.session.io_binding()
            on_device = ort.OrtValue.ortvalue_from_numpy(pixels, "cuda", session.device_id or 0)
            binding.bind_ortvalue_input(session.input_name, on_device)
            for name in session.output_names:
                binding.bind_output(name, "cuda", session.device_id or 0)
            row: dict[str, object] = {"size": f"{width}x{height}", "batch": batch}
            for label, call in (
                ("host_io", lambda p=pixels: session.run(p)),
                ("device_io", lambda b=binding: session.session.run_with_iobinding(b)),
            ):
                for _ in range(3):
                    call()
                runs, started = 0, time.perf_counter()
                while time.perf_counter() - started < seconds:
                    call()
                    runs += 1
                row[f"{label}_images_per_s"] = round(
                    runs * batch / (time.perf_counter() - started), 1
                )
            rows.append(row)
            print(f"  model only {row}")
    return rows


def write_dataset(folder: Path, count: int, shapes: list[tuple[int, int]]) -> list[str]:
    """``count`` JPEGs of real faces, 1,024 px wide, cycling through ``shapes``."""
    folder.mkdir(parents=True, exist_ok=True)
    encoded = {}
    names = []
    for index in range(count):
        width, height = shapes[index % len(shapes)]
        key = (width, height, index % 7)
        if key not in encoded:
            bgr = cv2.cvtColor(faces_image(width, height, index % 7), cv2.COLOR_RGB2BGR)
            encoded[key] = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        name = f"img{index:05d}.jpg"
        (folder / name).write_bytes(encoded[key])
        names.append(name)
    return names


def _warm_anonymizer(device: str, source: Path, names: list[str]) -> Any:
    """An anonymizer on ``device`` whose session has run (CUDA initialised, kernels chosen)."""
    from anon_tasks.pipeline.anonymizer import Anonymizer
    from anon_tasks.pipeline.stages import detect_images

    anonymizer = Anonymizer(detection=DetectionSettings(device=device))
    list(detect_images(anonymizer.detector, str(source), _refs(names[:8]), {}, max_pixels=MAX_PX))
    return anonymizer


def _refs(names: list[str]) -> list[Any]:
    from anon_tasks.core.records import ImageRef

    return [ImageRef(relative_path=name, size_bytes=0, fingerprint=name) for name in names]


def _run_pipeline(anonymizer: Any, source: Path, names: list[str], dest: Path) -> int:
    """The library pipeline the flow's tasks use over ``names``; returns the faces masked."""
    from anon_tasks.core.concurrency import ordered_map, pipeline_threads
    from anon_tasks.core.faces import faces_above
    from anon_tasks.pipeline.stages import detect_images
    from anon_tasks.storage.writes import write_bytes_atomic

    threads = pipeline_threads()

    def finish(pair: tuple[Any, Any]) -> int:
        fetched, faces = pair
        if isinstance(faces, Exception):
            raise faces
        shown = faces_above(faces, 0.4)
        masked = anonymizer.mask(fetched.decoded, shown)
        write_bytes_atomic(str(dest / fetched.image.relative_path), anonymizer.encode(masked))
        return len(shown)

    stream = detect_images(anonymizer.detector, str(source), _refs(names), {}, max_pixels=MAX_PX)
    return sum(ordered_map(finish, stream, threads=threads, ahead=2 * threads))


def end_to_end(
    device: str, source: Path, names: list[str], dest: Path, *, switch_interval_s: float | None
) -> dict[str, object]:
    """Images/s of the library pipeline in this process: read and decode on a thread pool,
    detect (same-size batches), mask and encode on a thread pool, write."""
    from anon_tasks.core.concurrency import pipeline_threads

    anonymizer = _warm_anonymizer(device, source, names)
    before = sys.getswitchinterval()
    if switch_interval_s is not None:
        sys.setswitchinterval(switch_interval_s)
    try:
        started = time.perf_counter()
        faces_found = _run_pipeline(anonymizer, source, names, dest)
        elapsed = time.perf_counter() - started
    finally:
        sys.setswitchinterval(before)
    return {
        "images": len(names),
        "images_per_s": round(len(names) / elapsed, 1),
        "seconds": round(elapsed, 2),
        "faces": faces_found,
        "batch_size": anonymizer.detector.batch_size,
        "threads_per_stage": pipeline_threads(),
        "switch_interval_s": sys.getswitchinterval()
        if switch_interval_s is None
        else switch_interval_s,
    }


def _pipeline_process(
    device: str,
    source: Path,
    names: list[str],
    dest: Path,
    cores: list[int] | None,
    barrier: Any,
    results: Any,
) -> None:
    """One of several pipelines sharing the GPU (as several flow runs of one worker would)."""
    if cores:
        os.sched_setaffinity(0, cores)
    anonymizer = _warm_anonymizer(device, source, names)
    barrier.wait()
    faces = _run_pipeline(anonymizer, source, names, dest)
    results.put((time.monotonic(), faces))


def end_to_end_processes(
    device: str, source: Path, names: list[str], dest: Path, *, processes: int, pinned: bool
) -> dict[str, object]:
    """Images/s of ``processes`` pipeline processes on one GPU, each on its share of the files
    (``pinned``: each on its own share of the cores), timed from a common start after warm-up."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    results = context.Queue()
    cores = sorted(os.sched_getaffinity(0))
    per_process = max(1, len(cores) // processes)
    children = []
    for index in range(processes):
        share = cores[index * per_process : (index + 1) * per_process] if pinned else None
        child = context.Process(
            target=_pipeline_process,
            args=(device, source, names[index::processes], dest, share, barrier, results),
        )
        child.start()
        children.append(child)
    barrier.wait(timeout=300)
    started = time.monotonic()
    finished = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join(timeout=60)
    elapsed = max(end for end, _ in finished) - started
    return {
        "images": len(names),
        "images_per_s": round(len(names) / elapsed, 1),
        "seconds": round(elapsed, 2),
        "faces": sum(faces for _, faces in finished),
        "processes": processes,
        "pinned": pinned,
    }


def stage_rates(device: str, source: Path, names: list[str]) -> dict[str, object]:
    """Images/s of each stage alone, in this process: read and decode on the stage's threads;
    detection of decoded images (batches, decoding of outputs, Face values); mask, encode and
    write on the stage's threads."""
    from anon_tasks.core.concurrency import ordered_map, pipeline_threads
    from anon_tasks.core.faces import faces_above
    from anon_tasks.pipeline.finding import find_faces_batched
    from anon_tasks.pipeline.stages import fetch_and_decode

    anonymizer = _warm_anonymizer(device, source, names)
    threads = pipeline_threads()
    refs = _refs(names)
    started = time.perf_counter()
    for _ in ordered_map(
        lambda ref: fetch_and_decode(str(source), ref, {}, max_pixels=MAX_PX),
        refs,
        threads=threads,
        ahead=2 * threads,
    ):
        pass
    decode_s = time.perf_counter() - started
    sample = [
        fetch_and_decode(str(source), ref, {}, max_pixels=MAX_PX).decoded for ref in refs[:256]
    ]
    batch = anonymizer.detector.batch_size
    started, detected, cpu_started = time.perf_counter(), 0, time.thread_time()
    found: list[Any] = []
    while detected < len(names):
        for start in range(0, len(sample), batch):
            found.extend(find_faces_batched(anonymizer.detector, sample[start : start + batch]))
        detected += len(sample)
    detect_s = time.perf_counter() - started
    detect_cpu_s = time.thread_time() - cpu_started
    pairs = list(zip(sample, found[: len(sample)], strict=True))
    dest = source.parent / f"{source.name}-stage-out"
    dest.mkdir(parents=True, exist_ok=True)

    def finish(index: int) -> None:
        image, faces = pairs[index % len(pairs)]
        masked = anonymizer.mask(image, faces_above(faces, 0.4))
        (dest / f"{index:05d}.jpg").write_bytes(anonymizer.encode(masked))

    started = time.perf_counter()
    for _ in ordered_map(finish, range(len(names)), threads=threads, ahead=2 * threads):
        pass
    finish_s = time.perf_counter() - started
    return {
        "read_decode_images_per_s": round(len(names) / decode_s, 1),
        "detect_images_per_s": round(detected / detect_s, 1),
        "detect_caller_cpu_ms_per_image": round(1000 * detect_cpu_s / detected, 2),
        "mask_encode_write_images_per_s": round(len(names) / finish_s, 1),
        "threads_per_stage": threads,
    }


def run_variant(
    variant: str, device: str, source: Path, names: list[str], dest: Path
) -> dict[str, object]:
    """One end-to-end layout (see ``--variants``)."""
    if variant == "stages":
        return stage_rates(device, source, names)
    if variant == "threads":
        return end_to_end(device, source, names, dest, switch_interval_s=None)
    if variant == "threads-switch1ms":
        return end_to_end(device, source, names, dest, switch_interval_s=0.001)
    if variant.startswith("processes-"):
        count, _, pinned = variant.removeprefix("processes-").partition("-")
        return end_to_end_processes(
            device, source, names, dest, processes=int(count), pinned=pinned == "pinned"
        )
    raise SystemExit(f"unknown variant {variant!r}")


#: Network sizes of the WIDER dev set's most common shapes (1,024 px wide), in proportion.
DEV_SHAPES = [(1024, 683)] * 6 + [(1024, 768)] * 5 + [(1024, 576)] * 2 + [(1024, 1536)] * 1
#: All 41 network heights of the WIDER dev set's 293 images (1,024 px wide), with their counts:
#: what a real dataset's mix of sizes costs in CUDA planning (24 canvases at the 64 px grid).
DEV_SET_HEIGHTS = {
    320: 1, 352: 1, 384: 3, 416: 2, 448: 3, 480: 1, 512: 6, 544: 1, 576: 24, 608: 10, 640: 8,
    672: 12, 704: 59, 736: 11, 768: 54, 800: 7, 832: 11, 864: 4, 896: 6, 928: 1, 960: 1,
    1024: 6, 1056: 2, 1088: 1, 1120: 1, 1152: 2, 1184: 5, 1248: 1, 1280: 1, 1312: 2, 1344: 2,
    1376: 10, 1408: 4, 1440: 2, 1472: 2, 1504: 2, 1536: 12, 1568: 9, 1632: 1, 1792: 1, 1824: 1,
}  # fmt: skip


def dev_set_shapes() -> list[tuple[int, int]]:
    """The dev set's 293 sizes in a fixed shuffled order (sizes arrive mixed, as in a folder)."""
    shapes = [(1024, height) for height, count in DEV_SET_HEIGHTS.items() for _ in range(count)]
    order = np.random.default_rng(0).permutation(len(shapes))
    return [shapes[index] for index in order]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per configuration")
    parser.add_argument("--images", type=int, default=2048, help="end-to-end dataset size")
    parser.add_argument("--work", type=Path, default=Path("/tmp/anon-gpu-check"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--sections",
        default="compare,model,model-only,planning,end-to-end",
        help="comma-separated subset of compare, model, model-only, planning, end-to-end",
    )
    parser.add_argument("--batches", default="8", help="end-to-end batch sizes")
    parser.add_argument(
        "--shapes",
        default="dev_shapes,1024x768",
        help="end-to-end datasets: dev_shapes (the dev set's 4 commonest sizes), dev_set (all "
        "41 of its network sizes, in proportion), 1024x768",
    )
    parser.add_argument(
        "--variants",
        default="stages,threads,threads-switch1ms,processes-2,processes-4,processes-4-pinned",
        help="end-to-end layouts: stages (each stage alone), threads (one process), "
        "threads-switch1ms (GIL switch interval 1 ms), processes-N[-pinned] (N pipelines)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import onnxruntime

    from anon_tasks.detection import detector as detector_module

    report: dict[str, object] = {
        "onnxruntime": onnxruntime.__version__,
        "available_providers": onnxruntime.get_available_providers(),
        "cpu_count": os.cpu_count(),
    }

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    gpu = CenterFaceDetector(DetectionSettings(device=args.device, threshold=THRESHOLD))
    cpu = CenterFaceDetector(DetectionSettings(device="cpu", threshold=THRESHOLD))
    providers = gpu._session.session.get_providers()
    report["session_providers"] = providers
    print(f"session providers: {providers}")
    sections = set(args.sections.split(","))
    report["cpu_vs_gpu"] = compare(cpu, gpu)
    print(f"cpu vs gpu: {report['cpu_vs_gpu']}")
    save()
    if "model" in sections:
        print("model throughput (resize and stack, inference, decode):")
        report["model"] = model_throughput(gpu, args.seconds)
        save()
    if "model-only" in sections and providers[0] == "CUDAExecutionProvider":
        try:
            report["model_only"] = model_only(gpu, args.seconds / 2)
        except Exception as exc:  # a figure missing must not lose the others
            logger.exception("model-only timing failed")
            report["model_only"] = f"failed: {exc!r}"
        save()
    if "planning" in sections and providers[0] == "CUDAExecutionProvider":
        try:
            report["shape_planning"] = shape_planning(gpu._session.device_id or 0)
        except Exception as exc:  # a figure missing must not lose the others
            logger.exception("planning probe failed")
            report["shape_planning"] = f"failed: {exc!r}"
        save()
    shapes_by_label = {
        "dev_shapes": DEV_SHAPES,
        "dev_set": dev_set_shapes(),
        "1024x768": [(1024, 768)],
    }
    for label in args.shapes.split(",") if "end-to-end" in sections else ():
        source = args.work / f"src-{label}"
        names = write_dataset(source, args.images, shapes_by_label[label])
        for variant in args.variants.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                detector_module.CUDA_BATCH_SIZE = batch
                key = f"end_to_end_{label}_{variant}_batch{batch}"
                dest = args.work / f"out-{label}-{variant}-{batch}"
                dest.mkdir(parents=True, exist_ok=True)
                try:
                    result = run_variant(variant, args.device, source, names, dest)
                except Exception as exc:  # a figure missing must not lose the others
                    logger.exception("end-to-end run failed")
                    result = {"failed": repr(exc)}
                report[key] = result
                print(f"{key}: {result}", flush=True)
                save()
                if variant == "stages":
                    break  # one batch size tells
    agree = report["cpu_vs_gpu"]
    ok = (
        providers[0] == "CUDAExecutionProvider"
        and agree["count_mismatches"] == 0
        and agree["max_box_diff_px"] <= BOX_TOLERANCE_PX
        and agree["max_score_diff"] <= SCORE_TOLERANCE
    )
    report["passed"] = ok
    save()
    print("GPU CHECK " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
