"""Trained MEND editors on disk: a cache entry per model fingerprint and training settings
(``$EDITSCALE_HOME/mend/FINGERPRINT-KEY``) or a directory of the user's (``editscale mend train --out``), each
with its weights and manifest; finding the one to use, loading, saving."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editscale.errors import ConfigError
from editscale.methods.mend.hparams import MendHparams
from editscale.methods.mend.network import MendNetwork

if TYPE_CHECKING:
    from editscale.methods.context import EditContext

MANIFEST_FILE = "editscale_mend.json"  # a trained editor's manifest (editscale.cache_entries lists them)
WEIGHTS_FILE = "mend.safetensors"


def editor_root() -> Path:
    from editscale.cache import cache_root

    return cache_root() / "mend"


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(path) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_editor(ctx: EditContext, hp: MendHparams, digest: str | None = None) -> Path:
    """The trained editor to use: ``hp.editor``, else the newest complete one in the cache for the model's
    fingerprint whose layers and matrices are ``hp``'s (with ``digest``: the one whose weights have that
    sha256). A one-line ``ConfigError`` when there is none."""
    from editscale.cache import entry_damage

    if hp.editor is not None:
        path = Path(hp.editor).expanduser()
        if read_manifest(path) is None:
            raise ConfigError(f"MEND editor {path} has no {MANIFEST_FILE}: not a trained editor (editscale mend "
                              "train --out writes one)")
        return path
    found = []
    root = editor_root()
    for path in sorted(root.glob(f"{ctx.fingerprint}-*")) if root.is_dir() else []:
        manifest = read_manifest(path)
        if (path.is_dir() and manifest is not None and not entry_damage(path)
                and [manifest["hparams"][k] for k in ("layers", "matrices")] == [hp.layers, hp.matrices]):
            found.append((manifest.get("created", ""), path))
    if digest is not None:
        found = [(when, path) for when, path in found if weights_sha256(path) == digest]
        if not found:
            raise ConfigError(f"the MEND editor this run started with (weights sha256 {digest[:12]}...) is no longer "
                              f"in {root}; resume with it (hparams editor: DIR) or start the run again")
    if not found:
        where = ctx.model_dir if ctx.model_dir is not None else "MODEL"
        raise ConfigError(f"no trained MEND editor for this model (fingerprint {ctx.fingerprint}, layers "
                          f"{hp.layers}, matrices {hp.matrices}); train one first: editscale mend train --model "
                          f"{where} --data RECORDS")
    return max(found)[1]


def weights_sha256(path: Path) -> str:
    """The sha256 of an editor's weights file (from its files manifest when it has one)."""
    from editscale.cache import read_files_manifest, sha256_file

    files = (read_files_manifest(path) or {}).get("files", {})
    return files[WEIGHTS_FILE]["sha256"] if WEIGHTS_FILE in files else sha256_file(Path(path) / WEIGHTS_FILE)


def load_editor(path: Path, fingerprint: str | None = None) -> tuple[MendNetwork, dict[str, Any]]:
    """A trained editor and its manifest; with ``fingerprint``, refused unless trained for that model."""
    from safetensors.torch import load_file

    manifest = read_manifest(path)
    if manifest is None:
        raise ConfigError(f"MEND editor {path} has no readable {MANIFEST_FILE}")
    if fingerprint is not None and manifest["fingerprint"] != fingerprint:
        raise ConfigError(f"MEND editor {path} was trained for another model (fingerprint "
                          f"{manifest['fingerprint']}, this model {fingerprint}); train one for it")
    net = MendNetwork(manifest["params"], MendHparams.validated(manifest["hparams"]))
    net.load_state_dict(load_file(str(Path(path) / WEIGHTS_FILE)))
    return net, {**manifest, "path": str(path), "weights_sha256": weights_sha256(path)}


def save_editor(directory: Path, net: MendNetwork, manifest: dict[str, Any]) -> None:
    """The editor's weights, then its manifest (the files manifest is the caller's: ``build_dir``)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()},
              str(Path(directory) / WEIGHTS_FILE))
    (Path(directory) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


def training_key(hp: MendHparams, data: dict[str, Any]) -> str:
    blob = json.dumps({"hparams": hp.to_dict(), "data": data}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def store_editor(net: MendNetwork, manifest: dict[str, Any], key: str, out: Path | None = None) -> Path:
    """Store a trained editor: the cache entry ``FINGERPRINT-KEY`` (files manifest written last, in place of
    an older one of the same key), or ``out`` (outside the cache). Returns its directory."""
    from editscale.cache import build_dir, write_files_manifest

    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_editor(out, net, manifest)
        write_files_manifest(out)
        return out
    path = editor_root() / f"{manifest['fingerprint']}-{key}"
    build_dir(path, lambda tmp: save_editor(tmp, net, manifest), lambda p: False, force=True)
    return path
