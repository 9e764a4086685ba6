"""What a build is asked to do, checked once: `BuildPlan`, which `indexer.build.build_index` runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from indexer.engine import Engine, LocalEngine, Report
from indexer.ray_engine import RayEngine, RayOptions
from indexer.sources import SourceFile
from retrieval.errors import TusouError
from retrieval.models.model import EmbeddingModel
from retrieval.models.registry import DEFAULT_MODEL, check_builder, resolve_model
from retrieval.ocr.engine import require_ocr
from retrieval.store.catalog import Catalog
from retrieval.store.model_ref import ModelRef


@dataclass(frozen=True)
class Layout:
    """The FAISS index asked for: a type (or `auto`) within a memory budget. An index keeps the one
    it was last built with in its catalog's settings; its segments are built as it says."""

    requested: str
    max_memory: int | None


@dataclass(frozen=True)
class BuildPlan:
    """A build: the images under `paths` into the index at `out`. Its values are checked when it is
    made, so a mistake is one line before any model loads; `out` is checked by the build itself,
    against the disk as it is then."""

    paths: Sequence[str | Path]
    out: Path
    model_name: str | None = None
    """A registry entry; None: the one the index was built with (DEFAULT_MODEL for a new index)."""
    model: EmbeddingModel | None = None
    """A model loaded already (float32, as `load_model` returns it), instead of loading `model_name`."""
    text_weights: str | Path | None = None
    """Local weights instead of the entry's own; None: the ones the index was built with, if any."""
    image_weights: str | Path | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    """Local: decoding processes (None: min(4, cores); 0: decode in this one). Ray: embedding actors
    (None: as many as the cluster fits)."""
    checkpoint_every: int = 1024
    """Images embedded between saves to the staging: the most a killed build loses."""
    index_type: str | None = None
    """None: keep the index's type (`auto` for a new one), so an `auto` index changes type as it grows."""
    max_index_memory: int | None = None
    progress: bool = True
    report: Report | None = None
    """Told (images embedded, images to embed or None) as each batch is staged, beside the bar or
    without it: the server's watcher shows a build's progress with it (ui.watch)."""
    hold: Callable[[list[SourceFile]], set[str]] | None = None
    """Given the files the build would embed (new or changed), the paths to leave as the index has
    them this time: files still being written (ui.watch). None: none."""
    empty_ok: bool = False
    """An update that finds no image empties the index instead of failing (a watched folder whose
    images were all deleted); a mistyped PATH of `tusou index` stays an error."""
    ray: RayOptions | None = None
    """Embed on a Ray cluster (indexer.ray_engine) instead of in this process; the rest is the same."""
    ocr: bool | None = None
    """Read the text in the images (`--ocr`), or stop reading it (`--no-ocr`); None: as the index was
    built (a new index: no). The index remembers it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        for flag, value in (("--batch-size", self.batch_size), ("--checkpoint-every", self.checkpoint_every)):
            if value < 1:
                raise TusouError(f"{flag} must be at least 1")
        if self.ray is not None and self.workers is not None and self.workers < 1:
            raise TusouError("--workers must be at least 1 with --engine ray")
        if self.model is not None:
            check_builder(self.model.name, self.model.entry)
        elif self.model_name is not None:
            check_builder(self.model_name, resolve_model(self.model_name).entry)

    def engine(self) -> Engine:
        """The engine this plan embeds with, chosen here once."""
        if self.ray is None:
            return LocalEngine(self.batch_size, self.workers, self.checkpoint_every, self.progress, self.report)
        return RayEngine(self.ray, self.workers, self.device, self.precision, self.batch_size, self.checkpoint_every, self.progress, self.report)

    def model_ref(self, built: ModelRef | None) -> ModelRef:
        """The model to load: as asked, else as the index was built (with its weights), else the default."""
        return ModelRef(
            self.model_name or (built.name if built else DEFAULT_MODEL),
            text_weights=_text(self.text_weights) or (built.text_weights if built else None),
            image_weights=_text(self.image_weights) or (built.image_weights if built else None),
        )

    def reads_text(self, catalog: Catalog | None) -> bool:
        """Whether this build reads text: as asked, else as the index remembers; checked to be installed."""
        ocr = self.ocr if self.ocr is not None else bool(catalog and catalog.setting("ocr", False))
        if ocr:
            require_ocr()
        return ocr

    def layout(self, built: Layout | None) -> Layout:
        """The index type and memory budget: as asked, else as the index was built."""
        return Layout(self.index_type or (built.requested if built else "auto"), self.max_index_memory or (built.max_memory if built else None))


def _text(path: str | Path | None) -> str | None:
    return str(path) if path else None
