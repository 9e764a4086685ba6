"""Embedding on a Ray cluster (`tusou index --engine ray`), streamed by Ray Data.

    units from the scan  →  read, decode, preprocess  →  embed                →  the driver
    (files, tar shards)     CPU tasks on any node          actor pool (GPUs)       staging chunks in the index dir

On a cluster without GPUs each actor takes one CPU and Ray Data fuses the decoding into it
(the two stages ask for the same resources), so every CPU both decodes and embeds.

Only embedding moves to the cluster. The scan, the staging chunks, the commit and the FAISS
build are the local build's (indexer.build), so a Ray build writes the same index as a local
one and resumes the same way: what is staged survives a lost node or a killed driver, and a
re-run embeds only the rest. Ray is an optional extra, imported only here and only when asked for.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass
from types import ModuleType

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from indexer.decode import Decoded, Unit, decode_unit
from indexer.sources import Skipped, SourceFile
from indexer.staging import Staging
from retrieval.models.devices import compute_dtype
from retrieval.errors import TusouError
from retrieval.store.faults import kill_point
from retrieval.models.model import EmbeddingModel, load_model

INSTALL = "pip install 'tusou[ray]'"
START = "start one with `ray start --head` and pass the address it prints as --ray-address"
IMAGES_PER_TASK = 256
"""Files read by one decode task (a tar shard is always one task: it is read in one pass)."""
CONNECT_TIMEOUT = 10
"""Seconds to wait for the cluster's head to accept a connection."""
RECORD_COLUMNS = ("path", "sha256", "width", "height", "error", "size", "mtime_ns")
"""Decoded's fields, in its order."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    """A running cluster (`ray start --head` prints its address; `auto` finds one on this node).
    None: RAY_ADDRESS if set, else a Ray instance on this machine alone, for trying it out."""
    workers: int | None = None
    """Embedding actors; None: one per `gpus_per_worker` GPUs, or one per CPU on a cluster without GPUs."""
    gpus_per_worker: float | None = None
    """GPUs each actor holds; None: 1 when the cluster has GPUs (unless --device cpu), else 0 (the actor embeds on 1 CPU)."""


@dataclass(frozen=True)
class WorkerModel:
    """What an actor needs to load the driver's model on its own node, and to prove it did."""

    name: str
    text_weights: str | None
    image_weights: str | None
    fingerprint: str
    device: str
    precision: str


def require_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # noqa: F401  (the extra, not just the core)
    except ImportError:
        raise TusouError(f"--engine ray needs Ray Data, which is not installed here: {INSTALL}") from None
    return ray


@contextmanager
def ray_session(options: RayOptions | None) -> Iterator[None]:
    """Connected to the cluster for the length of a build (nothing at all for a local build).

    Joined before the scan, so a wrong address fails at once; Ray's own messages (a node lost,
    say) go to stderr, as stdout is the build summary's; the connection made here is closed here.
    """
    if options is None:
        yield
        return
    ray = require_ray()
    owned = not ray.is_initialized()
    if owned:
        _connect(ray, options)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # tusou shows one bar of its own, in images
    context.enable_auto_log_stats = False
    with redirect_stdout(sys.stderr):
        try:
            yield
        finally:
            if owned:
                ray.shutdown()  # flushes what Ray still has to say: to stderr too


def _connect(ray: ModuleType, options: RayOptions) -> None:
    if options.address:
        _check_reachable(options.address)
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # a failure reaches the user as one TusouError line
    try:
        ray.init(address=options.address, logging_level=logging.ERROR, log_to_driver=False)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError: each Ray version has its own
        where = f"at {options.address}" if options.address else "on this machine"
        raise TusouError(f"cannot reach a Ray cluster {where} ({_reason(exc)}): {START}") from None


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is one line now; ray.init would keep retrying for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # `auto`, `local`: Ray resolves these itself
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise TusouError(f"no Ray cluster answers at {address} ({exc.strerror or exc}): {START}") from None


def embed_on_ray(
    model: EmbeddingModel,
    worker_model: WorkerModel,
    units: list[Unit],
    images: int | None,
    files: dict[str, SourceFile],
    staging: Staging,
    options: RayOptions,
    batch_size: int,
    checkpoint_every: int,
    progress: bool,
) -> list[Skipped]:
    """Embed the images of `units` (`images` of them, None: not known before the shards are read)
    on the cluster into `staging`; returns the images that could not be read."""
    ray = require_ray()
    skipped: list[Skipped] = []
    if not units:
        return skipped
    gpus, starting, workers = _actors(ray.cluster_resources(), options, worker_model.device)
    pixel_shape = tuple(model.preprocess(Image.new("RGB", (model.image_size, model.image_size))).shape)
    items = [{"unit": json.dumps(asdict(unit))} for unit in units]
    dataset = (
        ray.data.from_items(items, override_num_blocks=_tasks(len(units), images or len(units), workers, checkpoint_every))
        .map_batches(
            _decode_units,
            batch_size=None,
            fn_kwargs={"preprocess": model.preprocess, "min_size": model.image_size, "shape": pixel_shape, "batch_size": batch_size},
        )
        .map_batches(
            _Embedder,
            fn_constructor_args=(worker_model,),
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=starting, max_size=workers),
            num_gpus=gpus,
            num_cpus=0 if gpus else 1,
        )
    )
    since_flush = 0
    desc = f"embedding on ray ({workers} actor{'s' * (workers > 1)}{f', {gpus:g} GPU each' if gpus else ''})"
    try:
        with tqdm(total=images, desc=desc, unit=" img", disable=not progress) as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                records = zip(*(batch[key].tolist() for key in RECORD_COLUMNS))
                for row, item in enumerate(Decoded(*record) for record in records):
                    if item.error:
                        skipped.append(Skipped(item.path, item.error))
                    else:
                        staging.add(item.record(files), batch["vector"][row])
                        since_flush += 1
                if since_flush >= checkpoint_every:
                    staging.flush()
                    since_flush = 0
                bar.update(len(batch["path"]))
                kill_point("embedded")
    except ray.exceptions.RayError as exc:
        raise TusouError(
            f"the Ray build stopped ({_reason(exc)}); what was embedded is staged: run the same command again to go on"
        ) from None
    return skipped


def _actors(resources: dict, options: RayOptions, device: str) -> tuple[float, int, int]:
    """(GPUs per actor, actors that fit the cluster now, actors wanted) for the --device asked for.

    More actors than fit can be asked for: the pool starts with those that fit and grows as an
    autoscaler adds nodes."""
    cluster_gpus, cluster_cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    gpus = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if cluster_gpus and device != "cpu" else 0.0)
    if gpus > cluster_gpus:
        raise TusouError(f"--gpus-per-worker {gpus:g}, but the Ray cluster has {cluster_gpus:g} GPUs")
    if device.startswith("cuda") and not gpus:
        raise TusouError("--device cuda, but the Ray cluster has no GPUs for the actors: use --device auto or cpu")
    fit = max(1, int(cluster_gpus // gpus) if gpus else int(cluster_cpus))
    if options.workers is not None and options.workers < 1:
        raise TusouError("--workers must be at least 1 with --engine ray")
    wanted = options.workers or fit
    return gpus, min(fit, wanted), wanted


def _tasks(units: int, images: int, workers: int, checkpoint_every: int) -> int:
    """How many decode tasks to split the units into: a task's images reach the driver when it ends,
    so it is at most a checkpoint's worth (a lost task costs no more than a checkpoint), and there are
    enough for every actor to have one waiting."""
    return min(units, max(2 * workers, math.ceil(images / min(IMAGES_PER_TASK, checkpoint_every))))


def _decode_units(
    batch: dict[str, np.ndarray], preprocess: Callable, min_size: int, shape: tuple[int, ...], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """A decode task: its units' images in batches (an unreadable one keeps its row, zero pixels and a reason)."""
    rows: list[tuple[Decoded, torch.Tensor | None]] = []
    for encoded in batch["unit"]:
        fields = json.loads(encoded)
        members, skip = fields.pop("members"), fields.pop("skip")
        unit = Unit(**fields, members=None if members is None else tuple(members), skip=tuple(skip))
        rows += decode_unit(unit, preprocess, min_size)
        while len(rows) >= batch_size:
            yield _columns(rows[:batch_size], shape)
            rows = rows[batch_size:]
    if rows:
        yield _columns(rows, shape)


def _columns(rows: list[tuple[Decoded, torch.Tensor | None]], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    pixels = np.zeros((len(rows), *shape), np.float32)
    for number, (_, image) in enumerate(rows):
        if image is not None:
            pixels[number] = image.numpy()
    columns = {key: np.array([getattr(item, key) for item, _ in rows]) for key in RECORD_COLUMNS if key != "error"}
    return columns | {"error": np.array([item.error or "" for item, _ in rows]), "pixels": pixels}


class _Embedder:
    """An actor of the pool: the driver's model, loaded on this node, checked to be the same weights."""

    def __init__(self, spec: WorkerModel):
        model = load_model(spec.name, device=spec.device, text_weights=spec.text_weights, image_weights=spec.image_weights)
        if model.fingerprint() != spec.fingerprint:
            raise TusouError(
                f"{socket.gethostname()} loaded other weights of {spec.name} (fingerprint {model.fingerprint()}) than the "
                f"driver ({spec.fingerprint}): give every node the same weights"
            )
        self.model = model.with_dtype(compute_dtype(model.device, spec.precision))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""
        vectors = np.zeros((len(ok), self.model.dim), np.float32)
        if ok.any():
            vectors[ok] = self.model.encode_pixels(torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        return {key: batch[key] for key in RECORD_COLUMNS} | {"vector": vectors}


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
