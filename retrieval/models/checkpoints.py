"""Reading weights files without ever unpickling code, and saying in one line why one did not load.

Every family loader reads its weights through here. A `.bin`/`.pt` file is a pickle that can
run code; torch's weights-only unpickler refuses that, but open_clip retries without it and
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns off an implicit default. So tusou reads safetensors, or
passes weights_only=True explicitly and never retries.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import safetensors.torch
import torch
import transformers
from transformers import PreTrainedModel

from retrieval.errors import TusouError

SAFETENSORS_FIX = "re-save it as .safetensors (safetensors.torch.save_file(state_dict, PATH)) from a source you trust"
DIRECTORY_FIX = "use a directory with model.safetensors instead (model.save_pretrained(DIR) writes one) from a source you trust"


def first_line(error: BaseException) -> str:
    """An exception's first line, or its type when it has no message: an error for the user is one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def refused_by_unpickler(error: BaseException) -> bool:
    """Whether torch's weights-only unpickler refused a pickle that wants more than tensors (a global,
    a call, an object), or one crafted to make it fail otherwise: how open_clip's unsafe retry is reached.

    A truncated file or one that is no pickle at all is not this, but damage.
    """
    if isinstance(error, pickle.UnpicklingError):
        return re.search(r"GLOBAL|global|reduce|Can only|persistent_load", str(error)) is not None
    if not isinstance(error, (TypeError, AttributeError, ValueError)):
        return False
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename.endswith("_weights_only_unpickler.py"):
            return True
        frame = frame.tb_next
    return False


def damage(error: BaseException) -> str:
    """Why an intact-looking weights file did not load, in a few words (never torch's advice to
    retry with weights_only=False)."""
    if isinstance(error, EOFError):
        return "the file is empty or cut short"
    if isinstance(error, pickle.UnpicklingError):
        return "not a torch checkpoint"
    return first_line(error).split(". ")[0]


def unsafe_pickle(what: str, path: Path, error: BaseException, fix: str = SAFETENSORS_FIX) -> TusouError:
    """The one line for a weights file that torch's weights-only unpickler refused."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    inside = f"it would import {found.group(1)}, not only tensors" if found else "its pickle does not rebuild plain tensors"
    return TusouError(f"{what} {path} cannot be loaded safely ({inside}; tusou never unpickles code): {fix}")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an open_clip checkpoint, never unpickling anything but tensors.

    tusou reads the file itself instead of handing the path to open_clip: open_clip 3.3's
    `load_state_dict` retries `torch.load` *without* weights_only when the safe load raises
    TypeError, and with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set that retry unpickles anything
    (a crafted file runs code). Here: safetensors, or torch.load(weights_only=True), no retry.
    """
    try:
        if path.suffix == ".safetensors":
            checkpoint = safetensors.torch.load_file(path)
        else:
            # mmap: a zip checkpoint's tensors are mapped, not copied (ViT-L is 1.7 GB)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 - truncated, not a checkpoint, a crafted pickle: all one line
        if refused_by_unpickler(exc):
            raise unsafe_pickle("image weights", path, exc) from None
        raise TusouError(f"cannot load image weights {path}: {damage(exc)}") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise TusouError(f"cannot load image weights {path}: not a state dict of tensors (expected an open_clip checkpoint)")
    if all(str(key).startswith("module.") for key in checkpoint):  # saved from DistributedDataParallel
        checkpoint = {key[len("module.") :]: value for key, value in checkpoint.items()}
    return checkpoint


def load_pretrained(directory: Path, architecture: str, **options: object) -> PreTrainedModel:
    """A transformers model (`architecture`, built with `options`) from a directory: model.safetensors when there is one, else
    pytorch_model.bin through torch.load(weights_only=True).

    weights_only is transformers' default, passed here anyway: an implicit default is what
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns off, and a refused file must be one line, not a traceback.
    """
    try:
        with quiet_transformers():
            return getattr(transformers, architecture).from_pretrained(str(directory), weights_only=True, **options)
    except Exception as exc:  # noqa: BLE001 - a refused pickle, missing, truncated or mismatched weights: one line
        if refused_by_unpickler(exc):
            pickled = directory / "pytorch_model.bin"
            raise unsafe_pickle("text weights", pickled if pickled.is_file() else directory, exc, DIRECTORY_FIX) from None
        raise TusouError(f"cannot load text weights from {directory}: {first_line(exc)}") from None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Without transformers' progress bars ("Loading weights", "Writing model shards"): each takes a
    second, and what a command prints is tusou's."""
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if bar:
            transformers.utils.logging.enable_progress_bar()
