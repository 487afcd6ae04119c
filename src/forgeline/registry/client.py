"""Reading the model registry: where versions live and how a reference resolves.

``NAME@alias`` / ``NAME/VERSION`` references, the store opened without silently creating an empty
one, the champion and challenger aliases, and look-ups of earlier registrations. Serving, the bench,
drift and the register stage all resolve models through here.
"""

from __future__ import annotations

import os

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from forgeline.errors import RegistryError
from forgeline.registry.gate import ChampionInfo
from forgeline.settings import require_reachable, sqlite_file

CHAMPION = "champion"
"""Alias of the version that serves."""
CHALLENGER = "challenger"
"""Alias of the newest version the gate did not promote."""
CACHE_KEY_TAG = "forgeline.cache_key"
"""Model-version tag: the stage-cache key of the run that registered it (unchanged re-runs reuse it)."""
COMPLETE_TAG = "forgeline.complete"
"""Model-version tag: "false" right after the version is created, "true" once every tag, the gate
decision and the model card are written, and before any alias moves to it. A version cut off in
between (a killed run, a lost server) is never reused, and no alias points at it."""


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


def current_champion(client: MlflowClient, name: str) -> ChampionInfo | None:
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    raw = (mv.tags or {}).get("metric.test_macro_f1")
    return ChampionInfo(version=str(mv.version), macro_f1=float(raw) if raw not in (None, "") else None)


def find_registered(client: MlflowClient, name: str, cache_key: str) -> str | None:
    """The complete version of ``name`` that an identical earlier run registered (same cache key), if any."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for mv in versions:
        if (mv.tags or {}).get(CACHE_KEY_TAG) == cache_key and is_complete(mv.tags):
            return str(mv.version)
    return None
