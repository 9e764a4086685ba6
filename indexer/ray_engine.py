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
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from indexer.decode import Decoded, Unit, decode_unit
from indexer.engine import Embedded, Report, Work, progress, progress_label, stage
from indexer.metadata import ImageMetadata
from indexer.sources import Skipped
from indexer.staging import Staging
from retrieval.errors import TusouError
from retrieval.models.model import EmbeddingModel
from retrieval.ocr.engine import OcrResult
from retrieval.store.model_ref import ModelRef, OtherWeights

if TYPE_CHECKING:
    from ray.data import Dataset

INSTALL = "pip install 'tusou[ray]'"
START = "start one with `ray start --head` and pass the address it prints as --ray-address"
IMAGES_PER_TASK = 256
"""Files read by one decode task (a tar shard is always one task: it is read in one pass)."""
CONNECT_TIMEOUT = 10
"""Seconds to wait for the cluster's head to accept a connection."""
RECORD_COLUMNS = ("path", "sha256", "width", "height", "error", "size", "mtime_ns", "metadata", "text", "read_only")
"""Decoded's fields, in its order, each a column of plain values: `error` "" for none, `metadata` as JSON
text of its known fields, `text` as OcrResult's JSON ("" when not read) (through Ray Data a missing value
comes back as NaN, and a column missing in every row of a batch as a column of float NaNs)."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    """A running cluster (`ray start --head` prints its address; `auto` finds one on this node).
    None: RAY_ADDRESS if set, else a Ray instance on this machine alone, for trying it out."""
    gpus_per_worker: float | None = None
    """GPUs each actor holds; None: 1 when the cluster has GPUs (unless --device cpu), else 0 (the actor embeds on 1 CPU)."""


def require_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # noqa: F401  (the extra, not just the core)
    except ImportError:
        raise TusouError(f"--engine ray needs Ray Data, which is not installed here: {INSTALL}") from None
    return ray


@dataclass(frozen=True)
class RayEngine:
    """Embedding on the cluster `options` names (indexer.engine.Engine): the driver's model is loaded
    again by each actor, on `device` in `precision`, and checked to be the same weights."""

    options: RayOptions
    workers: int | None = None
    """Embedding actors; None: one per `gpus_per_worker` GPUs, or one per CPU on a cluster without GPUs."""
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    checkpoint_every: int = 1024
    progress: bool = True
    report: Report | None = None

    @contextmanager
    def session(self) -> Iterator[None]:
        """Connected to the cluster for the length of a build.

        Ray's own messages (a node lost, say) go to stderr, as stdout is the build summary's;
        the connection made here is closed here.
        """
        ray = require_ray()
        owned = not ray.is_initialized()
        if owned:
            _connect(ray, self.options)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # tusou shows one bar of its own, in images
        context.enable_auto_log_stats = False
        with redirect_stdout(sys.stderr):
            try:
                yield
            finally:
                if owned:
                    ray.shutdown()  # flushes what Ray still has to say: to stderr too

    def embed(self, model: EmbeddingModel, ref: ModelRef, work: Work, staging: Staging) -> list[Skipped]:
        ray = require_ray()
        if not work.units:
            return []
        gpus, starting, workers = _actors(ray.cluster_resources(), self.options, self.workers, self.device)
        dataset = self._dataset(ray, model, ref, work, gpus, starting, workers)
        desc = progress_label(f"embedding on ray ({workers} actor{'s' * (workers > 1)}{f', {gpus:g} GPU each' if gpus else ''})", work)
        try:
            with progress(work.images, desc, self.progress, self.report) as bar:
                batches = dataset.iter_batches(batch_size=None, batch_format="numpy")
                return stage(map(_embedded, batches), work, staging, self.checkpoint_every, bar)
        except ray.exceptions.RayError as exc:
            raise TusouError(
                f"the Ray build stopped ({_reason(exc)}); what was embedded is staged: run the same command again to go on"
            ) from None

    def _dataset(
        self, ray: ModuleType, model: EmbeddingModel, ref: ModelRef, work: Work, gpus: float, starting: int, workers: int
    ) -> Dataset:
        """The pipeline: decode tasks over the units, then the pool of embedding actors."""
        pixel_shape = tuple(model.preprocess(Image.new("RGB", (model.image_size, model.image_size))).shape)
        items = [{"unit": json.dumps(asdict(unit))} for unit in work.units]
        blocks = _tasks(len(work.units), work.images or len(work.units), workers, self.checkpoint_every)
        decode_options = {
            "preprocess": model.preprocess, "min_size": model.image_size, "shape": pixel_shape, "batch_size": self.batch_size,
            "ocr": 1 if work.ocr else None,  # a decode task holds one CPU: onnxruntime on one thread
        }
        return (
            ray.data.from_items(items, override_num_blocks=blocks)
            .map_batches(_decode_units, batch_size=None, fn_kwargs=decode_options)
            .map_batches(
                _Embedder,
                fn_constructor_args=(ref, self.device, self.precision),
                batch_size=self.batch_size,
                compute=ray.data.ActorPoolStrategy(min_size=starting, max_size=workers),
                num_gpus=gpus,
                num_cpus=0 if gpus else 1,
            )
        )


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


def _embedded(batch: dict[str, np.ndarray]) -> Embedded:
    """A batch as the actors return it: the records' columns, one vector per row (zeros where unreadable)."""
    records = [_from_row(row) for row in zip(*(batch[key].tolist() for key in RECORD_COLUMNS))]
    ok = (batch["error"] == "") & ~batch["read_only"]
    return Embedded(
        [item for item in records if not (item.error or item.read_only)], batch["vector"][ok],
        [item for item in records if item.error], [item for item in records if item.read_only],
    )


def _from_row(row: tuple) -> Decoded:
    """A Decoded from its values of RECORD_COLUMNS (metadata, text and read_only the last)."""
    *fields, metadata, text, read_only = row
    return Decoded(*fields, metadata=ImageMetadata(**json.loads(metadata)), text=OcrResult.from_json(text) if text else None, read_only=bool(read_only))


def _actors(resources: dict, options: RayOptions, workers: int | None, device: str) -> tuple[float, int, int]:
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
    wanted = workers or fit
    return gpus, min(fit, wanted), wanted


def _tasks(units: int, images: int, workers: int, checkpoint_every: int) -> int:
    """How many decode tasks to split the units into: a task's images reach the driver when it ends,
    so it is at most a checkpoint's worth (a lost task costs no more than a checkpoint), and there are
    enough for every actor to have one waiting."""
    return min(units, max(2 * workers, math.ceil(images / min(IMAGES_PER_TASK, checkpoint_every))))


def _decode_units(
    batch: dict[str, np.ndarray], preprocess: Callable, min_size: int, shape: tuple[int, ...], batch_size: int, ocr: int | None
) -> Iterator[dict[str, np.ndarray]]:
    """A decode task: its units' images in batches (an unreadable one keeps its row, zero pixels and a reason;
    one read for its text alone, zero pixels), their text read when `ocr` is not None, as the local workers do."""
    rows: list[tuple[Decoded, torch.Tensor | None]] = []
    for encoded in batch["unit"]:
        fields = json.loads(encoded)
        members, skip = fields.pop("members"), fields.pop("skip")
        unit = Unit(**fields, members=None if members is None else tuple(members), skip=tuple(skip))
        rows += decode_unit(unit, preprocess, min_size, ocr)
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
    items = [item for item, _ in rows]
    columns = {key: np.array([getattr(item, key) for item in items]) for key in RECORD_COLUMNS[:-3] if key != "error"}
    metadata = [json.dumps({key: value for key, value in asdict(item.metadata).items() if value is not None}) for item in items]
    return columns | {
        "error": np.array([item.error or "" for item in items]), "metadata": np.array(metadata), "pixels": pixels,
        "text": np.array([item.text.to_json() if item.text else "" for item in items]),
        "read_only": np.array([item.read_only for item in items], dtype=bool),
    }


class _Embedder:
    """An actor of the pool: the driver's model, loaded on this node, checked to be the same weights."""

    def __init__(self, ref: ModelRef, device: str, precision: str):
        try:
            self.model = ref.load(device, precision)
        except OtherWeights as exc:
            raise TusouError(
                f"{socket.gethostname()} loaded other weights of {ref.name} (fingerprint {exc.loaded}) than the "
                f"driver ({exc.recorded}): give every node the same weights"
            ) from None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = (batch["error"] == "") & ~batch["read_only"]
        vectors = np.zeros((len(ok), self.model.dim), np.float32)
        if ok.any():
            vectors[ok] = self.model.encode_pixels(torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        return {key: batch[key] for key in RECORD_COLUMNS} | {"vector": vectors}


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
