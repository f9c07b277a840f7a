"""``--weights hf:ORG/NAME[/FILE]``: a weights file from the local Hugging Face cache, or the Hub.

The cache is the hub's own (``HF_HUB_CACHE``, else ``HF_HOME/hub``; read when called, so a
job script may set it late) and is looked up with huggingface_hub's ``try_to_load_from_cache``:
``models--ORG--NAME/refs/main`` names the snapshot, ``snapshots/<rev>/<file>`` is the file. With
``HF_HUB_OFFLINE=1``, or without a network, nothing is downloaded; gated models download with the
user's ``HF_TOKEN`` once access was granted on the model page.
"""

from __future__ import annotations

import os
from pathlib import Path

from brcatool.errors import InputError, OfflineError

PREFIX = "hf:"


def cache_dir() -> Path:
    """The hub cache folder as huggingface_hub resolves it, from the environment of now."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"),
                                              "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def parse(weights: str) -> tuple[str, str | None]:
    """``hf:ORG/NAME[/FILE]`` -> (repo id, file or None)."""
    parts = weights[len(PREFIX):].strip("/").split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise InputError(f"--weights {weights!r} is not hf:ORG/NAME or hf:ORG/NAME/FILE",
                         fix="e.g. --weights hf:MahmoodLab/UNI")
    return f"{parts[0]}/{parts[1]}", parts[2] if len(parts) == 3 else None


def _hint(repo: str, file: str, cache: Path) -> str:
    return (f"on a machine with network run `hf download {repo} {file}` (after requesting access on "
            f"https://huggingface.co/{repo} and setting HF_TOKEN), then copy "
            f"{cache / ('models--' + repo.replace('/', '--'))} here (HF_HOME={cache.parent}), "
            f"or pass --weights PATH to the file")


def resolve(repo: str, files: tuple[str, ...]) -> tuple[Path, str]:
    """(local path, file name) of the first of ``files`` in the cache, else downloaded if we may."""
    import huggingface_hub as hub
    from huggingface_hub import errors

    cache = cache_dir()
    for name in files:
        found = hub.try_to_load_from_cache(repo, name, cache_dir=cache)
        if isinstance(found, str):
            return Path(found), name
    first = files[0]
    if offline():
        raise OfflineError(f"{repo}: {first} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
                           path=cache, fix=_hint(repo, first, cache))
    for name in files:
        try:
            return Path(hub.hf_hub_download(repo, name, cache_dir=cache)), name
        except errors.GatedRepoError:
            raise InputError(f"{repo} is gated and this account has no access (HF_TOKEN "
                             f"{'set' if os.environ.get('HF_TOKEN') else 'not set'})",
                             fix=f"request access on https://huggingface.co/{repo}, then export "
                             "HF_TOKEN=<read token>") from None
        except errors.RepositoryNotFoundError:
            raise InputError(f"no Hugging Face repository {repo!r} (or it is gated and HF_TOKEN is not set)",
                             fix=f"check the name; for a gated model request access on "
                             f"https://huggingface.co/{repo} and export HF_TOKEN") from None
        except errors.LocalEntryNotFoundError:  # (an EntryNotFoundError too) no network, not cached
            raise OfflineError(f"{repo}: {first} is not in the Hugging Face cache and the Hub cannot be "
                               "reached", path=cache, fix=_hint(repo, first, cache)) from None
        except errors.EntryNotFoundError:
            continue  # this repository publishes another of the file names
        except Exception as exc:  # noqa: BLE001 - no network, proxy, timeouts: all mean offline
            raise OfflineError(f"{repo}: {first} is not in the Hugging Face cache and could not be "
                               f"downloaded ({type(exc).__name__})", path=cache,
                               fix=_hint(repo, first, cache)) from None
    raise InputError(f"{repo} has none of {', '.join(files)}",
                     fix=f"name the file: --weights hf:{repo}/<file>")
