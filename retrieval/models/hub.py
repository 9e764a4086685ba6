"""Fetching weights from the Hugging Face hub, cache first, failing fast when offline.

huggingface_hub retries an unreachable host for minutes before giving up; a user without
network should instead hear at once what to do. So: look in the cache, then check the
hub answers at all, and only then download.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants

from retrieval.errors import TusouError


def hub_offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when a TCP connection to the hub endpoint opens within `timeout` seconds."""
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _missing(what: str, fix: str) -> TusouError:
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub is unreachable"
    return TusouError(f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}: {fix}")


def snapshot(repo_id: str, allow_patterns: list[str], fix: str) -> Path:
    """A local directory holding `repo_id`'s files that match `allow_patterns`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if hub_offline() or not hub_reachable():
        raise _missing(f"{repo_id}", fix)
    return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))


def file(repo_id: str, filenames: list[str], fix: str) -> Path:
    """The first of `filenames` that `repo_id` has, from the cache or downloaded."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, local_files_only=True))
        except LocalEntryNotFoundError:
            continue
    if hub_offline() or not hub_reachable():
        raise _missing(f"{repo_id} ({' or '.join(filenames)})", fix)
    errors = []
    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name))
        except Exception as exc:  # noqa: BLE001 - each alternative may be absent; report all
            errors.append(f"{name}: {exc}")
    raise TusouError(f"could not download {repo_id}: {'; '.join(errors)}")


def cached(repo_id: str, filenames: list[str], revision: str = "main") -> bool:
    """Whether any of `filenames` of `repo_id` is in the local cache (no network).

    Read from the cache's own layout (models--ORG--NAME/refs, snapshots), as huggingface_hub's
    try_to_load_from_cache does, without importing its download code: `tusou models` asks this
    of every entry and must answer at once.
    """
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    ref = folder / "refs" / revision
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    return any((folder / "snapshots" / commit / name).is_file() for name in filenames)
