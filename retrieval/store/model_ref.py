"""Which model an index's vectors came from: its name, where its weights were read, their fingerprints.

One reference serves every reader that must embed with the same weights as a build: the
query layer, an update of the index, and each node of a Ray build. Loading and checking live
here so they are written once. Nothing heavy is imported until a model is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from retrieval.errors import TusouError

if TYPE_CHECKING:
    from retrieval.models.model import EmbeddingModel

Tower = Literal["text", "image"]
TEXT: tuple[Tower, ...] = ("text",)
IMAGE: tuple[Tower, ...] = ("image",)
BOTH: tuple[Tower, ...] = ("text", "image")


class OtherWeights(TusouError):
    """Loaded weights that are not the ones a reference records; whoever checked says whose they are."""

    def __init__(self, name: str, what: str, recorded: str | None, loaded: str | None, says: str | None = None):
        self.name, self.recorded, self.loaded = name, recorded, loaded
        super().__init__(says or f"other weights of {name!r} ({what} {recorded}, these are {loaded})")


@dataclass(frozen=True)
class ModelRef:
    """The manifest's `model` entry. Per-tower fingerprints are written by builds since they were
    introduced; an older index has the combined one only, and is checked by it."""

    name: str
    fingerprint: str | None = None
    """Of both towers (EmbeddingModel.fingerprint); None: not to be checked."""
    text_weights: str | None = None
    """The local weights the towers were loaded from; None: the registry entry's own."""
    image_weights: str | None = None
    text_fingerprint: str | None = None
    image_fingerprint: str | None = None

    @classmethod
    def of(cls, model: EmbeddingModel) -> ModelRef:
        """The reference to `model`: its fingerprints are of the weights as loaded, cast or not."""
        return cls(
            name=model.name,
            fingerprint=model.fingerprint(),
            text_weights=model.sources.get("text_weights"),
            image_weights=model.sources.get("image_weights"),
            text_fingerprint=model.text_fingerprint(),
            image_fingerprint=model.image_fingerprint(),
        )

    @property
    def per_tower(self) -> bool:
        """Whether each tower can be checked alone."""
        return self.text_fingerprint is not None and self.image_fingerprint is not None

    def to_dict(self) -> dict[str, str | None]:
        """As the manifest holds it: an index without per-tower fingerprints is written back as it was read."""
        entry = asdict(self)
        for key in ("text_fingerprint", "image_fingerprint"):
            if entry[key] is None:
                del entry[key]
        return entry

    def load_weights(self, device: str = "auto") -> EmbeddingModel:
        """The model with the weights this reference names, unchecked and in float32."""
        from retrieval.models.model import load_model

        return load_model(self.name, device=device, text_weights=self.text_weights, image_weights=self.image_weights)

    def load(self, device: str = "auto", precision: str = "auto") -> EmbeddingModel:
        """Load, check every tower, then cast to `precision`: the model ready to embed."""
        model = self.load_weights(device)
        self.verify(model)
        return cast(model, precision)

    def verify(self, model: EmbeddingModel, towers: tuple[Tower, ...] = BOTH) -> None:
        """Raise OtherWeights unless `model` has the recorded weights of `towers`.

        Without per-tower fingerprints, or for both towers, the combined fingerprint is compared.
        """
        if self.fingerprint is None:
            return
        if model.entry.teacher is not None:
            self._verify_student(model, towers)
            return
        if set(towers) == set(BOTH) or not self.per_tower:
            found = model.fingerprint()
            if found != self.fingerprint:
                raise OtherWeights(self.name, "fingerprint", self.fingerprint, found)
            return
        for tower in towers:
            recorded = self.text_fingerprint if tower == "text" else self.image_fingerprint
            found = model.text_fingerprint() if tower == "text" else model.image_fingerprint()
            if found != recorded:
                raise OtherWeights(self.name, f"{tower} tower fingerprint", recorded, found)

    def _verify_student(self, model: EmbeddingModel, towers: tuple[Tower, ...]) -> None:
        """A student answers for its teacher's index: its text tower is its own, its image tower must be the
        teacher's as recorded here, checked from the student's own record at once and from the tower once built."""
        teacher = model.entry.teacher
        if teacher != self.name:
            raise OtherWeights(self.name, "model", self.name, teacher, f"model {self.name!r}, and {model.name!r} is a student of {teacher!r}")
        if not self.per_tower:
            raise OtherWeights(self.name, "model", None, None, f"model {self.name!r} by a tusou that recorded no image-tower fingerprint, "
                               "which a student is checked by: build the index again to search it with a student")
        found = model.image_fingerprint() if "image" in towers else model.teacher_image
        if found is not None and found != self.image_fingerprint:
            raise OtherWeights(self.name, "image tower fingerprint", self.image_fingerprint, found,
                               f"other image weights of {self.name!r} than those {model.name!r} was distilled beside "
                               f"(image tower fingerprint {self.image_fingerprint}, the student's {found})")


def cast(model: EmbeddingModel, precision: str) -> EmbeddingModel:
    """`model` in the dtype `precision` asks for on its device (retrieval.models.devices.compute_dtype)."""
    from retrieval.models.devices import compute_dtype

    return model.with_dtype(compute_dtype(model.device, precision, sum(p.numel() for p in model.text_model.parameters())))
