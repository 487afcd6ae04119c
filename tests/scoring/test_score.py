"""`forgeline score`: every row of a folder of mixed files scored once, bad rows rejected with their
reason, a killed job resumed without a row twice, another model version refused, the MLflow run and
the traffic log written. Real files, a real SQLite MLflow store, real processes for the kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient
import pytest

from forgeline.errors import ConfigError, DataLoadError, DiskFullError
from forgeline.scoring.flow import score, score_config
from tests.conftest import run_if, sentiment_rows
from tests.scoring.conftest import BAD, mixed_inputs

ROOT = Path(__file__).resolve().parents[2]


def config(uri: str, inputs: Path, out: Path, *sets: str, model: str = "m/1"):
    return score_config({"model": model, "input": str(inputs), "output": str(out), "tracking_uri": uri},
                        ["max_text_chars=200", "part_rows=5", "key_column=id", f"tracking.workdir={out.parent / 'work'}",
                         *sets])


def read_scores(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values(["source", "row"]).reset_index(drop=True)


def expected_rows(texts: dict[str, list]) -> tuple[set, dict]:
    good, bad = set(), {}
    for source, values in texts.items():
        for row, t in enumerate(values):
            reason = "null_text" if t is None else "not_text" if not isinstance(t, str) else BAD.get(t)
            if reason:
                bad[(source, row)] = reason
            else:
                good.add((source, row))
    return good, bad


def test_a_folder_of_mixed_files_is_scored_once_with_the_task_columns(tmp_path, scoring_registry, trained):
    uri, client = scoring_registry
    texts = mixed_inputs(tmp_path / "in")
    out = tmp_path / "out"
    summary = score(config(uri, tmp_path / "in", out, "log_sample=1.0"))

    good, bad = expected_rows(texts)
    scores = read_scores(out)
    assert set(zip(scores.source, scores.row)) == good and len(scores) == len(good)  # every good row, once
    labels = trained[2].labels
    assert list(scores.columns) == ["source", "row", "id", "label", "confidence", "probabilities",
                                    *[f"proba_{lab}" for lab in labels], "model", "version", "variant"]
    assert set(scores.model) == {"m"} and set(scores.version) == {"1"}
    assert scores.id.tolist() == [f"{s.split('/')[-1][0]}{r}" for s, r in zip(scores.source, scores.row)]  # the key column, row by row

    # the same answers as the registered pyfunc gives for those texts
    import mlflow.pyfunc

    by_key = {(s, r): t for s, values in texts.items() for r, t in enumerate(values)}
    direct = mlflow.pyfunc.load_model("models:/m/1").predict(pd.DataFrame({"text": [by_key[k] for k in zip(scores.source, scores.row)]}))
    assert scores.label.tolist() == direct.label.tolist()
    assert (scores.confidence - direct.confidence).abs().max() < 1e-5

    rejected = pd.read_parquet(out / "_rejected")
    assert {(s, r): why for s, r, why in zip(rejected.source, rejected.row, rejected.reason)} == bad
    assert summary.rows == len(good) + len(bad) and summary.rejected == len(bad) and summary.scored == len(good)

    run = client.get_run(summary.run_id)  # one MLflow run: the version as its input, counts, distribution
    assert run.data.params["model"] == "models:/m/1" and run.info.status == "FINISHED"
    assert run.data.metrics["rows_scored"] == len(good) and run.data.metrics["rows_rejected"] == len(bad)
    assert run.data.metrics["rejected.empty_text"] == 2 and run.data.metrics["rejected.not_text"] == 1
    shares = {lab: run.data.metrics[f"prediction.{lab}"] for lab in labels}
    assert abs(sum(shares.values()) - 1) < 1e-9
    assert client.get_experiment(run.info.experiment_id).name == "forgeline-scoring"
    # a version registered without the compress stage's record of validation predictions: said, not guessed
    assert not summary.drift["checked"] and "recorded no validation predictions" in summary.drift["why"]

    from forgeline.serving.traffic import read_traffic

    traffic = read_traffic(tmp_path / "work" / "traffic")  # log_sample=1.0: every scored row, for `drift --traffic`
    assert sorted(traffic.texts) == sorted(by_key[k] for k in good)
    assert (out / "_SUCCESS").exists()


def test_another_model_version_is_refused_for_an_existing_output_unless_restarted(tmp_path, scoring_registry):
    uri, _ = scoring_registry
    mixed_inputs(tmp_path / "in")
    out = tmp_path / "out"
    score(config(uri, tmp_path / "in", out, model="m/1"))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ConfigError, match=r"version: 1 → 2.*--restart"):
        score(config(uri, tmp_path / "in", out, model="m/2"))
    assert sorted(p.name for p in out.iterdir()) == before  # nothing touched
    score(config(uri, tmp_path / "in", out, "restart=true", model="m/2"))
    assert set(read_scores(out).version) == {"2"}

    with pytest.raises(ConfigError, match="overlap"):  # the scores would be read as input next time
        score(config(uri, tmp_path / "in", tmp_path / "in" / "scores"))
    assert not (tmp_path / "in" / "scores").exists()

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.xlsx").write_text("a user's file")
    with pytest.raises(ConfigError, match="not empty"):
        score(config(uri, tmp_path / "in", tmp_path / "mine"))
    assert (tmp_path / "mine" / "report.xlsx").read_text() == "a user's file"


def _job(uri: str, inputs: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    code = ("import sys; from forgeline.scoring.flow import score, score_config; "
            "score(score_config({'model': 'm/1', 'input': sys.argv[1], 'output': sys.argv[2], 'tracking_uri': sys.argv[3]}, "
            "['part_rows=10', 'max_text_chars=200', 'log_sample=0', 'tracking.workdir=' + sys.argv[2] + '-work']))")
    # SIGINT as in a terminal: pytest-xdist's workers ignore it, and a child would inherit that
    return subprocess.Popen([sys.executable, "-c", code, str(inputs), str(out), uri], cwd=ROOT,
                            env=os.environ | (env or {}), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def big_input(folder: Path, n: int = 2400) -> Path:
    folder.mkdir(parents=True)
    rows = pd.concat([sentiment_rows(60, seed=s) for s in range(n // 120 + 1)])["text"].tolist()[:n]
    pd.DataFrame({"text": rows[: n // 2]}).to_csv(folder / "one.csv", index=False)
    pd.DataFrame({"text": rows[n // 2 :]}).to_parquet(folder / "two.parquet")
    return folder


@pytest.mark.e2e
def test_sigkill_mid_job_then_rerun_scores_each_row_exactly_once(tmp_path, scoring_registry):
    uri, _ = scoring_registry
    inputs = big_input(tmp_path / "in")
    reference = tmp_path / "reference"
    assert _job(uri, inputs, reference).wait(300) == 0
    want = read_scores(reference)
    assert len(want) == 2400

    out = tmp_path / "out"
    # 1: killed between a part's rename and its record (the scores are there, not recorded as finished)
    proc = _job(uri, inputs, out, {"FORGELINE_FAILPOINT": "score.renamed:kill"})
    assert proc.wait(300) == -signal.SIGKILL
    assert len(list(out.glob("part-*.parquet"))) == 1 and not list((out / "_manifest").glob("part-*.json"))
    # 2 and 3: Ctrl-C, then SIGKILL, from outside once some parts are finished
    # (each part pauses 50 ms after its rename, so the job is still mid-way whatever the machine's load)
    for finished, sig in ((4, signal.SIGINT), (20, signal.SIGKILL)):
        proc = _job(uri, inputs, out, {"FORGELINE_FAILPOINT": "score.renamed:sleep", "FORGELINE_FAILPOINT_SLEEP_S": "0.05"})
        deadline = time.time() + 300
        while len(list((out / "_manifest").glob("part-*.json"))) < finished and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(sig)
        assert proc.wait(60) != 0
    done = len(list((out / "_manifest").glob("part-*.json")))
    assert 20 <= done < 240, done  # killed mid-job
    client = MlflowClient(uri, uri)
    scoring = client.get_experiment_by_name("forgeline-scoring").experiment_id
    # the probe: a SIGKILLed job's run stayed RUNNING for good, and doctor said "owner unknown"; each job's
    # start marks the ones before it whose process is gone
    (last,) = client.search_runs([scoring], "attributes.status = 'RUNNING'")
    assert _job(uri, inputs, out).wait(300) == 0
    statuses = [r.info.status for r in client.search_runs([scoring], order_by=["attributes.start_time ASC"])]
    assert statuses == ["FINISHED", "KILLED", "KILLED", "KILLED", "FINISHED"], statuses  # reference, 3 stopped, rerun
    assert "stale" in client.get_run(last.info.run_id).data.tags["forgeline.error"]

    got = read_scores(out)
    assert len(got) == 2400 and not got.duplicated(["source", "row"]).any()
    pd.testing.assert_frame_equal(got, want)  # the same rows and answers as an uninterrupted job
    assert not list(out.rglob(".tmp-*"))


def test_a_full_disk_stops_the_job_with_a_message_and_the_rerun_finishes(tmp_path, scoring_registry, monkeypatch):
    uri, _ = scoring_registry
    texts = mixed_inputs(tmp_path / "in")
    out = tmp_path / "out"
    monkeypatch.setenv("FORGELINE_FAILPOINT", "score.write:enospc")
    with pytest.raises(DiskFullError, match="run the same command again"):
        score(config(uri, tmp_path / "in", out))
    monkeypatch.delenv("FORGELINE_FAILPOINT")
    summary = score(config(uri, tmp_path / "in", out))
    good, _ = expected_rows(texts)
    assert len(read_scores(out)) == len(good) == summary.scored


@pytest.mark.parametrize("name,content,message", [
    ("bad.csv", 'text,id\n"fine",1\n"also fine",2\nbroken,3,4,5\n', r"bad.csv: not a well-formed CSV: Expected 2 fields in line 4"),
    ("bad.jsonl", '{"text": "fine"}\n{"text": "fine too"}\n{"text": oops}\n', r"bad.jsonl:3: not a JSON object"),
    ("cols.csv", "body,label\nhello,1\n", r"cols.csv: no column 'text' in its header \(columns: \['body', 'label'\]\)"),
    ("bad.parquet", "PAR1 not really", r"bad.parquet: not a readable Parquet file"),
])
def test_a_malformed_input_file_is_one_message_naming_the_file_and_line(tmp_path, scoring_registry, name, content, message):
    uri, _ = scoring_registry
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_text(content)
    with pytest.raises(DataLoadError, match=message):
        score(score_config({"model": "m/1", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                            "tracking_uri": uri}, [f"tracking.workdir={tmp_path / 'work'}"]))


@pytest.mark.e2e
def test_the_cli_scores_through_the_flow_and_refuses_bad_input_with_exit_2(tmp_path, scoring_registry):
    uri, client = scoring_registry
    mixed_inputs(tmp_path / "in")
    env = os.environ | {"FORGELINE_WORKDIR": str(tmp_path / "work")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "forgeline.cli", "score", "-m", "m/1", "--tracking-uri", uri,
                               *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    done = cli("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--set", "max_text_chars=200", "--set", "key_column=id")
    assert done.returncode == 0, done.stderr
    assert "scored 40 of 46 rows with m v1" in done.stdout and "6 rejected" in done.stdout
    for args, message in [(("-i", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o2")), "does not exist"),
                          (("-i", str(tmp_path / "in"), "-o", str(tmp_path / "o3"), "--set", "part_row=5"), "part_row"),
                          (("-i", str(tmp_path / "in"), "-o", str(tmp_path / "o4"), "--set", "variant=studnt"), "did you mean 'student'"),
                          (("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--set", "max_text_chars=100"),
                           "--restart")]:
        bad = cli(*args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)
        assert "Traceback" not in bad.stderr


def test_a_glob_over_an_fsspec_filesystem_is_read_and_written_through_fsspec(tmp_path, scoring_registry):
    """``memory://`` stands in for ``s3://``: the same fsspec calls (glob, info, open, mv), no local path."""
    import fsspec

    uri, _ = scoring_registry
    fs = fsspec.filesystem("memory")
    texts = sentiment_rows(10, seed=5)["text"].tolist()
    for name, chunk in (("x/2026-01.csv", texts[:8]), ("x/2026-02.csv", texts[8:]), ("x/notes.csv.bak", ["skip"])):
        with fs.open(f"/bucket/{name}", "wb") as fh:
            fh.write(pd.DataFrame({"text": chunk}).to_csv(index=False).encode())
    summary = score(score_config({"model": "m/1", "input": "memory://bucket/x/2026-*.csv", "output": "memory://bucket/scores",
                                  "tracking_uri": uri}, [f"tracking.workdir={tmp_path / 'work'}", "part_rows=3"]))
    parts = sorted(fs.glob("/bucket/scores/part-*.parquet"))
    got = pd.concat([pd.read_parquet(fs.open(p, "rb")) for p in parts])
    assert summary.rows == 20 and len(got) == 20 and sorted(set(got.source)) == ["2026-01.csv", "2026-02.csv"]
    assert len(parts) == 3 + 4 and fs.exists("/bucket/scores/_SUCCESS") and fs.exists("/bucket/scores/_manifest/job.json")
    fs.rm("/bucket", recursive=True)


def test_parts_share_one_schema_even_when_a_part_is_all_rejected(tmp_path, scoring_registry):
    uri, _ = scoring_registry
    (tmp_path / "in").mkdir()
    rows = [{"id": i, "text": t} for i, t in enumerate(sentiment_rows(2, seed=1)["text"].tolist())]  # 4 good rows
    rows += [{"id": 10 + i, "text": ""} for i in range(5)]  # then 5 empty texts: one part of nothing but rejects
    pd.DataFrame(rows).to_json(tmp_path / "in" / "ids.jsonl", orient="records", lines=True)
    score(config(uri, tmp_path / "in", tmp_path / "out", "part_rows=4"))
    import pyarrow.parquet as pq

    schemas = {str(pq.read_schema(p)) for p in (tmp_path / "out").glob("part-*.parquet")}
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 3 and len(schemas) == 1
    scores = read_scores(tmp_path / "out")
    assert scores.id.tolist() == ["0", "1", "2", "3"]  # integer keys, written as text in every part
    assert pd.read_parquet(tmp_path / "out" / "_rejected").id.tolist() == [str(i) for i in range(10, 15)]


@run_if(ort_cuda=True)
def test_a_job_on_cuda_gives_the_cpu_jobs_labels(tmp_path, scoring_registry):
    """The CUDA path of batch scoring: CUDA EP replayed as CUDA graphs (the pyfunc's), the same rows and labels."""
    uri, _ = scoring_registry
    inputs = big_input(tmp_path / "in", n=600)
    cpu = score(config(uri, inputs, tmp_path / "cpu", "device=cpu", "part_rows=200", "key_column=null"))
    cuda = score(config(uri, inputs, tmp_path / "cuda", "device=cuda", "part_rows=200", "key_column=null"))
    assert cuda.device == "cuda" and cpu.device == "cpu"
    a, b = read_scores(tmp_path / "cpu"), read_scores(tmp_path / "cuda")
    assert a[["source", "row"]].equals(b[["source", "row"]])
    assert (a.label == b.label).mean() >= 0.99 and (a.confidence - b.confidence).abs().max() < 2e-2
