"""Register the ONNX bundle as an MLflow pyfunc model version and run the champion gate.

Every new version gets alias ``challenger`` and tags (data fingerprint, config hash, git commit,
metrics, variants). ``champion`` moves to it only when the gate passes (``registry.gate``): parity ok,
the task's primary metric not worse than the current champion's on the same rows by more than the
tolerance and at least ``registry.min_gain_over_chance`` beyond the trivial baseline, and no slice
worse by more than ``registry.max_slice_drop``. The decision and its reason are written to the version's tags, the
run's tags and ``gate.json`` in the run; the model card (``registry.card``) becomes the version's
description. The bundle metadata records the sha256 of every file, checked at each load.

Registration is all or nothing: the version is created tagged ``forgeline.complete=false``, gets its
tags, gate decision and card, then ``true``, and only then an alias. A failure in between deletes
the version (or, when the server is gone, leaves it marked incomplete: never reused, never aliased).

Two runs with the same cache key at once (two machines on one tracking server; on a SQLite store
the register lock already serializes them) both create a version; the one with the higher number
sees the lower one (``earlier_peer``), waits for it to finish, deletes its own and reuses that one,
so one key keeps one version.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from forgeline.config.schema import RegistryConfig
from forgeline.errors import RegistryError
from forgeline.inference.tasks import TASK_KEY, OutputSpec
from forgeline.tasks import Task, get_task
from forgeline.inference.contract import CHECKSUMS_KEY, META_FILE, file_sha256
from forgeline.registry.client import (CACHE_KEY_TAG, CHALLENGER, CHAMPION, COMPLETE_TAG, DAMAGED_TAG, PREVIOUS, bundle_tags,
                                       current_champion, download_verified, is_complete,
                                       load_verified, mark_damaged)
from forgeline.registry.card import CardContext, model_card
from forgeline.registry.compare import PairedComparison, compare_outputs, metric_ci, slice_rows
from forgeline.registry.gate import ChampionInfo, GateDecision, GateEvidence, GatePolicy, decide
from forgeline.settings import failpoint


@dataclass
class Registration:
    name: str
    version: str
    model_uri: str
    aliases: list[str]
    decision: GateDecision

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PACKAGE_DIR = Path(__file__).resolve().parent.parent
SHIPPED = ("inference",)
"""The forgeline subpackages a registered model carries as its code: the torch-free runtime only."""


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode != 0 or not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PACKAGE_DIR,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


MODEL_CODE_FILE = "forgeline_model.py"
MODEL_CODE = (
    '"""The registered model (MLflow models-from-code): the ONNX bundle served by forgeline\'s torch-free pyfunc."""\n'
    "from mlflow.models import set_model\n\n"
    "from forgeline.inference.pyfunc import OnnxTextClassifier\n\n"
    "set_model(OnnxTextClassifier())\n"
)
"""What MLflow runs to build a registered model at load time; ``forgeline`` comes from the model's own
``code/`` folder where it is not installed."""


def stage_model_code(dst: Path, spec: OutputSpec | None = None) -> list[str]:
    """What ``code_paths`` copies into the model: ``dst/forgeline`` holding ``__init__.py`` and the SHIPPED
    subpackages, and for a task declared outside forgeline the module of its ``OutputSpec`` class (its
    file alone, under empty packages of its dotted name: it must import with ``forgeline.inference`` only).
    MLflow puts the model's ``code/`` folder first on ``sys.path`` at load time, so a process without
    forgeline installed imports ``forgeline.inference`` (and that module) from the model itself."""
    import shutil
    import sys

    pkg = dst / "forgeline"
    pkg.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PACKAGE_DIR / "__init__.py", pkg / "__init__.py")
    for name in SHIPPED:
        shutil.copytree(PACKAGE_DIR / name, pkg / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    paths = [str(pkg)]
    module = (spec.to_meta() if spec is not None else {}).get("module")
    if module:
        *packages, name = module.split(".")
        folder = dst / "task"
        for part in packages:
            folder = folder / part
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "__init__.py").touch()
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(str(sys.modules[module].__file__), folder / f"{name}.py")
        paths.append(str(dst / "task" / (packages[0] if packages else f"{name}.py")))
    return paths


def bundle_artifacts(bundle: dict[str, Path], meta: dict[str, Any]) -> dict[str, str]:
    """The pyfunc's artifacts: the bundle's files plus its metadata file, written beside them."""
    meta_path = next(iter(bundle.values())).parent / META_FILE
    meta = meta | {CHECKSUMS_KEY: {k: file_sha256(str(v)) for k, v in bundle.items()}}  # verified at every load
    meta_path.write_text(json.dumps(meta, indent=2))
    return {k: str(v) for k, v in bundle.items()} | {"meta": str(meta_path)}


def load_bundle(artifacts: dict[str, str]):
    """The bundle as the registered model will run it on CPU (variant "auto": INT8 when bundled)."""
    from types import SimpleNamespace

    from forgeline.inference.pyfunc import OnnxTextClassifier

    model = OnnxTextClassifier()
    model.load_context(SimpleNamespace(artifacts=artifacts, model_config={"device": "cpu"}))
    return model


def load_version(name: str, version: str):
    """A registered version's model, loaded on CPU with the variant it serves there, after its files
    passed the digest recorded at registration."""
    import mlflow

    from forgeline.inference.contract import ArtifactIntegrityError

    client = MlflowClient(mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    try:
        return load_verified(client, name, version, {"device": "cpu"})
    except ArtifactIntegrityError as e:  # marked, so no later run reuses it and `forgeline doctor` names it
        with contextlib.suppress(MlflowException):
            mark_damaged(client, name, version, e)
        raise


@dataclass
class EvalRows:
    """This run's test split, which the new version and the champion are both scored on."""

    texts: list[str]
    labels: list[Any]
    """The targets: labels, tuples of labels or numbers, as the task's ``y`` takes them."""
    slices: dict[str, list[Any]] | None = None
    """Values of the user's ``data.slice_columns``, row by row."""
    pairs: list[str] | None = None
    """Second texts of a pair task."""
    classical: Any = None
    """The run's classical baseline's outputs on these rows (an array in the task's form), if it has one."""
    classical_spec: dict[str, Any] | None = None
    """Its ``OutputSpec`` metadata (its own decision settings)."""
    classical_name: str = ""


@dataclass
class Scored:
    paired: PairedComparison | None = None
    problem: str | None = None
    """Why the champion could not be scored on these rows."""
    slices: list[dict[str, Any]] | None = None
    metric_ci: tuple[float, float] | None = None
    """Bootstrap interval of the new version's own primary metric on these rows."""
    baseline: tuple[float, str] | None = None
    """The trivial baseline's primary metric on these rows, and what that baseline is."""
    served: dict[str, float] | None = None
    """The new version's metrics on these rows as it serves on the CPU (its default variant there): what
    the card's headline, the ``metric.*`` tags and the gate use."""
    classical: PairedComparison | None = None
    """The new version against the run's classical baseline on these rows (the baseline as "champion")."""
    classical_name: str = ""


def _task_of(candidate: Any) -> Task[Any]:
    """The task of a loaded bundle (its ``OutputSpec``'s), with its default options."""
    return get_task(candidate.spec.task)


def score_against_champion(name: str, champion: ChampionInfo | None, candidate: Any, rows: EvalRows | None,
                           task: Task) -> Scored:
    """Both models on the same rows (this run's test split): the paired comparison of the task's primary
    metric and the slice table, or why the champion could not be scored. Without a champion the slice
    table has the new version only."""
    spec = candidate.spec
    if rows is None:  # some baselines need no rows (single-label's chance, 1/K); the others are left out
        return Scored(baseline=task.prior_baseline(spec))
    y = task.y(rows.labels, spec)
    ours = candidate.predict_proba(list(rows.texts), rows.pairs)
    ci = metric_ci(task, spec, y, ours)
    baseline = task.baseline(y, spec)
    served = {f"test_{k}": float(v) for k, v in task.metrics(y, ours, spec).items()}
    classical = None
    if rows.classical is not None and rows.classical_spec:
        ours_decided, shared = spec.decided(ours)  # each model's own decision settings, then one spec for both
        theirs_decided, _ = OutputSpec.from_meta({TASK_KEY: rows.classical_spec}).decided(rows.classical)
        classical = compare_outputs(task, shared, y, ours_decided, theirs_decided)
    classical_name = rows.classical_name if classical else ""

    def alone(problem: str | None = None) -> Scored:
        return Scored(problem=problem, slices=slice_rows(task, spec, y, ours, None, rows.texts, rows.slices),
                      metric_ci=ci, baseline=baseline, served=served, classical=classical, classical_name=classical_name)

    if champion is None:
        return alone()
    try:
        reference = load_version(name, champion.version)
    except Exception as e:  # noqa: BLE001 - a deleted artifact, an incompatible version: said in the decision
        return alone(f"it could not be loaded: {type(e).__name__}: {str(e)[:300]}")
    theirs_spec = reference.spec
    problem = spec.champion_problem(theirs_spec)
    if problem:
        return alone(problem)
    theirs, _ = theirs_spec.decided(reference.predict_proba(list(rows.texts), rows.pairs))
    theirs = spec.aligned(theirs_spec, theirs)  # the champion's columns in this version's label order
    ours_decided, shared = spec.decided(ours)  # each model's own thresholds, then one spec for both
    return Scored(paired=compare_outputs(task, shared, y, ours_decided, theirs), metric_ci=ci, baseline=baseline,
                  slices=slice_rows(task, shared, y, ours_decided, theirs, rows.texts, rows.slices), served=served,
                  classical=classical, classical_name=classical_name)


def gate_evidence(value: float, parity_ok: bool, champion: ChampionInfo | None, scored: Scored) -> GateEvidence:
    baseline, what = scored.baseline if scored.baseline else (None, "chance")
    return GateEvidence(value=value, parity_ok=parity_ok, champion=champion, baseline=baseline, baseline_what=what,
                        paired=scored.paired, champion_problem=scored.problem, slices=scored.slices,
                        classical=scored.classical, classical_name=scored.classical_name)


def log_pyfunc(run_id: str, artifacts: dict[str, str], probe: Any, meta: dict[str, Any], registered_name: str,
               input_example: list[str], creation_tags: dict[str, str] | None = None) -> tuple[str, str]:
    """Log the ONNX bundle as a pyfunc model in ``run_id`` and register it; returns (model_uri, version).
    ``probe``: the bundle loaded (``load_bundle``), for the signature.

    The version is created already tagged ``COMPLETE_TAG=false`` (one request): tagging it in a second
    call left a window in which a lost server kept an untagged version that ``forgeline doctor`` did not
    recognise as half-registered (seen once in CI's fault test)."""
    import mlflow
    import mlflow.pyfunc
    import onnxruntime
    import pandas as pd
    import tokenizers
    from mlflow.models import infer_signature

    example = pd.DataFrame({"text": input_example})
    if probe.spec.pairs:  # a pair model's example shows both columns (the texts, each paired with the next)
        example["text_pair"] = input_example[1:] + input_example[:1]
    signature = infer_signature(example, probe.predict(None, example))
    # log_model needs an active run; leaving ``with mlflow.start_run(...)`` would end the pipeline's run
    # FINISHED while it is still registering (a run killed here then showed FINISHED), so it is ended
    # RUNNING: the pipeline sets the final status.
    mlflow.start_run(run_id=run_id)
    try:
        with tempfile.TemporaryDirectory(prefix="forgeline-code-") as code:
            # models-from-code: the model is this file, run at load time, not a cloudpickle of an instance
            # (no python_model.pkl: nothing of a registered model is unpickled, and MLflow has nothing to
            # warn about)
            model_file = Path(code) / MODEL_CODE_FILE
            model_file.write_text(MODEL_CODE)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(model_file),
                artifacts=artifacts,
                code_paths=stage_model_code(Path(code), probe.spec),
                pip_requirements=[f"onnxruntime>={onnxruntime.__version__.split('+')[0]}", f"tokenizers=={tokenizers.__version__}",
                                  "numpy", "pandas", f"mlflow=={mlflow.__version__}"],
                signature=signature,
                input_example=example,
                # batch_size "auto": 256 on CUDA (one captured graph per request up to 256 texts), 64 on CPU
                model_config={"variant": "auto", "device": "auto", "batch_size": "auto"},
                metadata={"labels": meta["labels"], "variants": meta["variants"], "task": probe.spec.task,
                          "pairs": probe.spec.pairs},
            )
        said = io.StringIO()
        # MLflow prints "Successfully registered model ... / Created version ..." on stderr, where a
        # successful run writes nothing; said once in the log instead
        with contextlib.redirect_stderr(said):
            registered = mlflow.register_model(info.model_uri, registered_name,
                                               tags={COMPLETE_TAG: "false", **(creation_tags or {})})
        for line in said.getvalue().splitlines():
            logging.getLogger("forgeline").info("mlflow: %s", line)
    finally:
        mlflow.end_run(status="RUNNING")
    return info.model_uri, str(registered.version)


def register_and_gate(client: MlflowClient, run_id: str, cfg: RegistryConfig, bundle: dict[str, Path],
                      meta: dict[str, Any], metrics: dict[str, float], tags: dict[str, str], parity_ok: bool,
                      input_example: list[str], eval_rows: EvalRows | None = None,
                      card: CardContext | None = None) -> Registration:
    """``eval_rows``: this run's test split; the champion and the new version are both scored on it
    and compared with paired tests and per slice (``registry.compare``). The task is the bundle's
    (``meta["task"]``)."""
    name = cfg.model_name
    artifacts = bundle_artifacts(bundle, meta)
    candidate = load_bundle(artifacts)
    task = _task_of(candidate)
    policy = GatePolicy.of(cfg, task)
    champion = current_champion(client, name, policy.metric.name)
    scored = score_against_champion(name, champion, candidate, eval_rows, task)
    key = tags.get(CACHE_KEY_TAG)
    try:
        model_uri, version = log_pyfunc(run_id, artifacts, candidate, meta, name, input_example,
                                        {CACHE_KEY_TAG: key} if key else None)
    except MlflowException as e:
        raise RegistryError(f"registering {name} failed: {e}") from e
    try:
        earlier = earlier_peer(client, name, key, version) if key else None
        if earlier is not None:
            client.delete_model_version(name, version)
            logging.getLogger("forgeline").warning(
                "another run with the same cache key registered %s v%s first; v%s was deleted and v%s is reused",
                name, earlier, version, earlier)
            return reuse_registration(client, run_id, cfg, earlier, len(meta["labels"]), eval_rows)
        failpoint("register.created")
        with tempfile.TemporaryDirectory(prefix="forgeline-digest-") as tmp:  # checked before every load
            tags = tags | bundle_tags(download_verified(client, name, version, Path(tmp)))
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, str(v))
        # what the version serves, where its test rows were scored (a student INT8's headline read the teacher's
        # PyTorch number, 2.9 pt above what it served, beside an interval of the served one); the teacher's beside
        teacher, metrics = metrics, (scored.served or metrics)
        for key, value in metrics.items():
            client.set_model_version_tag(name, version, f"metric.{key}", f"{value:.6f}")
        if scored.served:
            for key, value in teacher.items():
                client.set_model_version_tag(name, version, f"metric.teacher.{key}", f"{value:.6f}")
        decision = decide(policy, gate_evidence(metrics[f"test_{policy.metric.name}"], parity_ok, champion, scored))
        aliases = [CHAMPION] if decision.promote else [CHALLENGER]
        gate_tags = {"gate.decision": "promoted" if decision.promote else "kept_challenger", "gate.reason": decision.reason}
        gate_tags |= comparison_tags(decision)
        for k, v in gate_tags.items():
            client.set_model_version_tag(name, version, k, v)
            client.set_tag(run_id, k, v)
        failpoint("register.tagged")
        client.set_tag(run_id, "registered_model", f"{name}/{version}")
        client.log_dict(run_id, asdict(decision) | {"version": version, "aliases": aliases}, "gate.json")
        text = model_card(name, version, run_id, decision, metrics, list(meta["labels"]),
                          tags.get("data_fingerprint", "?"), card or CardContext(), scored.metric_ci, candidate.spec,
                          served=getattr(candidate, "variant", None) if scored.served else None)
        client.log_text(run_id, text, "model_card.md")
        client.update_model_version(name, version, description=fit_description(text, run_id))
        client.set_model_version_tag(name, version, COMPLETE_TAG, "true")
    except BaseException as e:  # also Ctrl-C and SIGTERM: never leave a half-registered version behind
        discard_version(client, name, version, e)
        if isinstance(e, MlflowException):
            raise RegistryError(f"registering {name} v{version} failed: {e}") from e
        raise
    # aliases last, on a complete version; if this fails, the retry finds the version by its cache key
    # and the gate, run again there, sets them (never delete a version an alias may already point at)
    if decision.promote:
        promote(client, name, version, drop_challenger=True)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
    return Registration(name=name, version=version, model_uri=f"models:/{name}/{version}", aliases=aliases, decision=decision)


def promote(client: MlflowClient, name: str, version: str, drop_challenger: bool) -> None:
    """``version`` becomes the champion; the one it replaces keeps ``previous`` (it was left with no alias:
    a rollback had to find it by its tags) unless its files were found damaged, and the challenger alias
    goes when asked."""
    try:
        old = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # the first champion
        old = None
    client.set_registered_model_alias(name, CHAMPION, version)
    if old is not None and str(old.version) != str(version) and DAMAGED_TAG not in (old.tags or {}):
        client.set_registered_model_alias(name, PREVIOUS, str(old.version))
    if drop_challenger:
        with contextlib.suppress(MlflowException):  # no challenger alias yet
            client.delete_registered_model_alias(name, CHALLENGER)


PEER_WAIT_S = 120.0
"""How long a run waits for an earlier version of its cache key to finish registering."""
PEER_FRESH_S = 600.0
"""An unfinished version older than this, or one whose run is no longer RUNNING, is a leftover of a
killed run (``forgeline doctor`` removes it), not a registration in progress: nobody waits for it."""


def earlier_peer(client: MlflowClient, name: str, key: str, version: str, wait_s: float = PEER_WAIT_S) -> str | None:
    """The lowest-numbered complete version below ``version`` with cache key ``key``, waiting for one
    that is still registering; None when there is none (this version stays). A version tagged
    ``DAMAGED_TAG`` is no peer: the run that found it damaged registers this one to replace it (reusing
    it made every later run fail on its files, or keep a champion that cannot load)."""
    deadline = time.monotonic() + wait_s
    while True:
        peers = [mv for mv in client.search_model_versions(f"name='{name}'")
                 if int(mv.version) < int(version) and (mv.tags or {}).get(CACHE_KEY_TAG) == key
                 and DAMAGED_TAG not in (mv.tags or {})]
        done = sorted(int(mv.version) for mv in peers if is_complete(mv.tags))
        if done:
            return str(done[0])
        now_ms = time.time() * 1000
        pending = [mv for mv in peers if (mv.tags or {}).get(COMPLETE_TAG) == "false"
                   and now_ms - (mv.creation_timestamp or 0) < PEER_FRESH_S * 1000 and _running(client, mv.run_id)]
        if not pending or time.monotonic() > deadline:
            return None
        time.sleep(1.0)


def _running(client: MlflowClient, run_id: str | None) -> bool:
    """Whether the run that created a version may still be registering it: a run this store already
    marked KILLED or FAILED (``forgeline`` marks runs whose process is gone when it starts) is not."""
    if not run_id:
        return False
    try:
        return client.get_run(run_id).info.status == "RUNNING"
    except MlflowException:
        return False


def discard_version(client: MlflowClient, name: str, version: str, error: BaseException) -> None:
    """Delete a version whose registration did not finish. When even that fails (the server is gone),
    its ``forgeline.complete=false`` tag keeps it out of reuse and no alias points at it."""
    import logging

    log = logging.getLogger("forgeline")
    try:
        client.delete_model_version(name, version)
        log.warning("registration of %s v%s did not finish (%s: %s); the version was deleted", name, version,
                    type(error).__name__, error)
    except Exception as e:  # noqa: BLE001 - the original error is what the run reports
        log.warning("registration of %s v%s did not finish (%s) and the version could not be deleted (%s): it stays "
                    "tagged %s=false, is never reused and no alias points at it; delete it in the MLflow UI",
                    name, version, error, e, COMPLETE_TAG)


DESCRIPTION_LIMIT = 5000
"""MLflow's model_versions.description column is VARCHAR(5000) (enforced by PostgreSQL and MySQL)."""


def fit_description(card: str, run_id: str) -> str:
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    note = f"\n\n… (cut to fit; the whole card is `model_card.md` in run `{run_id}`)\n"
    return card[: DESCRIPTION_LIMIT - len(note)].rsplit("\n", 1)[0] + note


def comparison_tags(decision: GateDecision) -> dict[str, str]:
    """The same-data comparison as version and run tags, for reviewers and searches."""
    tags = {"gate.champion_problem": decision.champion_problem} if decision.champion_problem else {}
    c = decision.comparison
    if c:
        m = c.get("metric", "macro_f1")
        tags |= {"gate.same_data_rows": str(c["n"]), f"gate.champion_{m}_same_data": f"{c['champion_value']:.6f}",
                 f"gate.{m}_diff": f"{c['diff']:+.6f}", f"gate.{m}_diff_ci": f"[{c['ci_low']:+.6f}, {c['ci_high']:+.6f}]"}
        if c.get("mcnemar_p") is not None:
            tags["gate.mcnemar_p"] = f"{c['mcnemar_p']:.4g}"
    return tags


def reuse_registration(client: MlflowClient, run_id: str, cfg: RegistryConfig, version: str,
                       n_labels: int, eval_rows: EvalRows | None = None) -> Registration:
    """An unchanged re-run: no new version. The gate runs again on that version with the current registry
    settings (they are not part of the cache key), so a version kept as challenger under the old settings
    is promoted when the new ones let it through; a champion stays as it is."""
    name = cfg.model_name
    mv = client.get_model_version(name, version)
    aliases = list(mv.aliases or [])
    tags = mv.tags or {}
    same = f"same data, pipeline settings and code as registered version {version}; nothing registered"
    decision = GateDecision(promote=False, reason=same, candidate_value=float("nan"))
    word = "unchanged"
    if CHAMPION not in aliases:
        model = load_version(name, version)
        task = _task_of(model)
        policy = GatePolicy.of(cfg, task)
        candidate = float(tags.get(f"metric.test_{policy.metric.name}", "nan"))
        champion = current_champion(client, name, policy.metric.name)
        scored = score_against_champion(name, champion, model, eval_rows, task)
        gate = decide(policy, gate_evidence(candidate, tags.get("parity_ok") == "True", champion, scored))
        if gate.promote:
            promote(client, name, version, drop_challenger=CHALLENGER in aliases)
            aliases = [a for a in aliases if a != CHALLENGER] + [CHAMPION]
            gate.reason = f"{same}; the gate, run again with the current registry settings, promoted it: {gate.reason}"
            word = "promoted"
            for k, v in {"gate.decision": "promoted", "gate.reason": gate.reason, **comparison_tags(gate)}.items():
                client.set_model_version_tag(name, version, k, v)
            card = f"**Promoted on a later unchanged run:** {gate.reason}\n\n{mv.description or ''}"
            client.update_model_version(name, version, description=fit_description(card, run_id))
        else:
            gate.reason = f"{same}; still not champion: {gate.reason}"
        decision = gate
    client.set_tag(run_id, "gate.decision", word)
    client.set_tag(run_id, "gate.reason", decision.reason)
    client.set_tag(run_id, "registered_model", f"{name}/{version}")
    client.log_dict(run_id, asdict(decision) | {"version": version, "aliases": aliases}, "gate.json")
    return Registration(name=name, version=version, model_uri=f"models:/{name}/{version}", aliases=aliases,
                        decision=decision)
