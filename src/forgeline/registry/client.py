"""Reading the model registry: where versions live and how a reference resolves.

``NAME@alias`` / ``NAME/VERSION`` references, the store opened without silently creating an empty
one, the champion and challenger aliases, and look-ups of earlier registrations. Serving, the bench,
drift and the register stage all resolve models through here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from forgeline.errors import RegistryError
from forgeline.settings import require_reachable, sqlite_file

CHAMPION = "champion"
"""Alias of the version that serves."""
CHALLENGER = "challenger"
"""Alias of the newest version the gate did not promote."""
PREVIOUS = "previous"
"""Alias of the champion the current one replaced: what a rollback serves (``forgeline serve -m NAME@previous``)."""
CACHE_KEY_TAG = "forgeline.cache_key"
"""Model-version tag: the stage-cache key of the run that registered it (unchanged re-runs reuse it)."""
COMPLETE_TAG = "forgeline.complete"
"""Model-version tag: "false" right after the version is created, "true" once every tag, the gate
decision and the model card are written, and before any alias moves to it. A version cut off in
between (a killed run, a lost server) is never reused, and no alias points at it."""


BUNDLE_DIGEST_TAG = "forgeline.bundle_sha256"
"""Model-version tag: sha256 over every file of the logged model (:func:`tree_digest`: the ONNX variants,
tokenizer, metadata, the model's code file (``python_model.pkl`` in versions before models-from-code),
``MLmodel``, the shipped ``code/``), written at registration
and checked before MLflow loads any of them (serving, the gate, reuse by cache key). A tag lives in the
tracking store, not the artifact store, so a writer of the artifact store alone cannot replace a file and
its checksum together (docs/faults.md, "Trust boundary")."""
DAMAGED_TAG = "forgeline.damaged"
"""Model-version tag: why a version failed its digest check; such a version is never reused."""
_DOWNLOAD_ONLY = {"registered_model_meta"}
"""Written by MLflow into every download of a ``models:/`` URI, not part of the logged model."""


BUNDLE_FILES_TAG = "forgeline.bundle_files"
"""Model-version tag: {relative path: first 16 hex digits of its sha256} of every file, so that a failed
check names the files that changed (left out when it would not fit MLflow's 5,000-character tag value)."""


def tree_manifest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below ``folder``."""
    from forgeline.inference.contract import file_sha256

    return {p.relative_to(folder).as_posix(): file_sha256(str(p))
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in _DOWNLOAD_ONLY}


def tree_digest(folder: Path, manifest: dict[str, str] | None = None) -> str:
    """sha256 over the relative path and sha256 of every file below ``folder``."""
    digest = hashlib.sha256()
    for rel, sha in (manifest if manifest is not None else tree_manifest(folder)).items():
        digest.update(f"{rel}\0{sha}\n".encode())
    return digest.hexdigest()


def bundle_tags(folder: Path) -> dict[str, str]:
    """The tags :func:`download_verified` checks, for the logged model in ``folder``."""
    import json

    manifest = tree_manifest(folder)
    files = json.dumps({rel: sha[:16] for rel, sha in manifest.items()}, separators=(",", ":"))
    return {BUNDLE_DIGEST_TAG: tree_digest(folder, manifest)} | ({BUNDLE_FILES_TAG: files} if len(files) <= 5000 else {})


def _differences(recorded: str | None, manifest: dict[str, str]) -> str:
    import json

    try:
        before = json.loads(recorded) if recorded else None
    except ValueError:
        before = None
    if not isinstance(before, dict):
        return "a file of the model, its metadata, pickle or code"
    now = {rel: sha[:16] for rel, sha in manifest.items()}
    said = [f"{rel} changed" for rel in now if rel in before and before[rel] != now[rel]]
    said += [f"{rel} added" for rel in now if rel not in before] + [f"{rel} missing" for rel in before if rel not in now]
    return ", ".join(said[:5]) + (f" and {len(said) - 5} more" if len(said) > 5 else "") or "the file list"


def download_verified(client: MlflowClient, name: str, version: str, dst: Path) -> Path:
    """The version's files, downloaded into ``dst`` and checked against its ``BUNDLE_DIGEST_TAG`` before
    anything in them is loaded (the model's code file runs at load time, as older versions'
    ``python_model.pkl`` was unpickled: replacing it, with the alias moved, made a server run the replaced
    code). Versions registered before the tag are not checked."""
    import mlflow.artifacts

    tags = client.get_model_version(name, version).tags or {}
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(dst),
                                                     tracking_uri=client.tracking_uri,
                                                     registry_uri=getattr(client, "_registry_uri", None)))  # no public getter
    expected = tags.get(BUNDLE_DIGEST_TAG)
    if expected is not None:
        manifest = tree_manifest(local)
        if tree_digest(local, manifest) != expected:
            from forgeline.inference.contract import ArtifactIntegrityError

            raise ArtifactIntegrityError(
                f"{_differences(tags.get(BUNDLE_FILES_TAG), manifest)}: the files of {name} v{version} do not match "
                "the digest recorded at registration (corrupted or replaced in the artifact store); nothing of it was "
                "loaded. Re-register the model (run the pipeline again) or serve another version")
    return local


def mark_damaged(client: MlflowClient, name: str, version: str, error: Exception) -> str:
    """Tag a version whose files failed their digest (``DAMAGED_TAG``: never reused, named by
    ``forgeline doctor``); returns the reason as tagged."""
    why = str(error)[:500]
    client.set_model_version_tag(name, str(version), DAMAGED_TAG, why)
    return why


def is_complete(tags: dict[str, str] | None) -> bool:
    """Whether a version finished registering. Versions from before ``COMPLETE_TAG`` count as complete
    when they carry the gate decision, which was written last then."""
    tags = tags or {}
    state = tags.get(COMPLETE_TAG)
    return state == "true" if state is not None else "gate.decision" in tags


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@alias`` → (name, alias, None); ``NAME/3`` → (name, None, "3")."""
    ref = ref.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in ref:
        name, version = ref.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise ValueError(f"model reference {ref!r}: use NAME@alias (e.g. my-model@champion) or NAME/VERSION")


def open_registry(uri: str):
    """An MlflowClient on ``uri``. A SQLite store must already exist: MLflow would otherwise create an
    empty one, and a typo in the path would read as "no such model"."""
    require_reachable(uri)
    db = sqlite_file(uri)
    if db is not None and not os.path.exists(db):
        raise RegistryError(f"no MLflow store at {uri}: {db} does not exist. Pass --tracking-uri (or set "
                            "MLFLOW_TRACKING_URI) to the store `forgeline run` wrote, e.g. sqlite:///.forgeline/mlflow.db")
    return MlflowClient(uri, uri)


def resolve_version(client, uri: str, name: str, alias: str | None, version: str | None):
    """The registered ModelVersion for ``NAME@alias`` / ``NAME/VERSION``, or a RegistryError that
    says what the store does hold (models, versions, aliases)."""
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        try:
            names = sorted(m.name for m in client.search_registered_models(max_results=50))
        except MlflowException:
            names = []
        held = f"registered models there: {names}" if names else "it holds no registered model (run `forgeline run` first)"
        raise RegistryError(f"no registered model {name!r} in {uri}; {held}. "
                            "Pass --tracking-uri or set MLFLOW_TRACKING_URI for another store") from None
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException:
        if alias is not None:
            aliases = sorted(getattr(registered, "aliases", {}) or {})
            raise RegistryError(f"model {name!r} has no alias @{alias} in {uri}; its aliases: "
                                f"{['@' + a for a in aliases] or 'none'}. Use one of them or NAME/VERSION") from None
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise RegistryError(f"model {name!r} has no version {version} in {uri}; its versions: {versions}") from None


def current_champion(client: MlflowClient, name: str, metric: str = "macro_f1"):
    """The champion version and its stored test value of ``metric`` (the gate's), as a ``ChampionInfo``."""
    from forgeline.registry.gate import ChampionInfo

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    raw = (mv.tags or {}).get(f"metric.test_{metric}")
    return ChampionInfo(version=str(mv.version), value=float(raw) if raw not in (None, "") else None)


def load_verified(client: MlflowClient, name: str, version: str, model_config: dict[str, Any]):
    """The version's model implementation, loaded through MLflow from files that passed
    :func:`download_verified`. They are downloaded into a temporary folder removed afterwards: MLflow's own
    download folder was never removed (about 150 MB a version, each hot swap), and once loaded the sessions
    and the tokenizer are in memory."""
    import tempfile

    import mlflow.pyfunc

    with tempfile.TemporaryDirectory(prefix="forgeline-model-") as tmp:
        local = download_verified(client, name, version, Path(tmp))
        return mlflow.pyfunc.load_model(str(local), model_config=model_config).unwrap_python_model()


def find_registered(client: MlflowClient, name: str, cache_key: str, verify: bool = True) -> str | None:
    """The newest complete version of ``name`` that an identical earlier run registered (same cache key)
    and whose files still match their digest, if any. A version whose files do not (a cached file that
    was a hard link to it corrupted, say) is tagged ``DAMAGED_TAG`` and passed over, so the run registers
    anew instead of reusing it."""
    import logging
    import tempfile

    from forgeline.inference.contract import ArtifactIntegrityError

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for mv in sorted(versions, key=lambda v: -int(v.version)):
        tags = mv.tags or {}
        if tags.get(CACHE_KEY_TAG) != cache_key or not is_complete(tags) or DAMAGED_TAG in tags:
            continue
        if verify and BUNDLE_DIGEST_TAG in tags:
            try:
                with tempfile.TemporaryDirectory(prefix="forgeline-verify-") as tmp:
                    download_verified(client, name, str(mv.version), Path(tmp))
            except ArtifactIntegrityError as e:  # not a lost server or disk: those propagate to the stage's retry
                logging.getLogger("forgeline").warning(
                    "%s v%s has this run's cache key but cannot be reused (%s); registering anew",
                    name, mv.version, str(e)[:300])
                mark_damaged(client, name, str(mv.version), e)
                continue
        return str(mv.version)
    return None


def inside(location: str, workdir: Path) -> bool | None:
    """Whether an artifact location is a folder inside ``workdir`` (None: not a local folder, e.g. a
    tracking server's). gc and doctor delete local files only inside their own workdir: after
    ``cp -a wdA wdB`` the store in wdB still named wdA's folders, and gc in wdB deleted wdA's files."""
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    if not is_local_uri(location, is_tracking_or_registry_uri=False):
        return None
    return Path(local_file_uri_to_path(location)).resolve().is_relative_to(workdir.resolve())


def delete_location(location: str, workdir: Path | None) -> bool:
    """Delete the artifacts at ``location``; False (nothing deleted) when it is a local folder outside
    ``workdir`` (:func:`inside`)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if workdir is not None and inside(location, workdir) is False:
        return False
    get_artifact_repository(location).delete_artifacts()
    return True


def logged_model_id(mv) -> str | None:
    """The logged model behind a version: ``model_id``, which a SQLite store leaves empty, else the
    ``models:/m-...`` source."""
    if mv.model_id:
        return mv.model_id
    source = mv.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def delete_artifacts(client: MlflowClient, mv, workdir: Path | None = None) -> bool:
    """The version's logged-model files; False (nothing deleted) when they are a local folder outside
    ``workdir``."""
    model_id = logged_model_id(mv)
    if model_id is None:
        return True
    if not delete_location(client.get_logged_model(model_id).artifact_location, workdir):
        return False
    client.delete_logged_model(model_id)
    return True
