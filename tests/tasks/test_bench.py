from tasks.bench import bench_engines, bench_training, make_inputs, ort_engine, table, torch_engine


def test_engines_run_on_identical_inputs_and_report(trained, exported):
    cfg, _, result = trained
    engines = {"torch": torch_engine(result.model, "cpu", False), "ort": ort_engine(exported, "cpu", io_binding=False)}
    rows = bench_engines(engines, [(1, 16), (4, 16)], warmup=1, iters=3)
    assert [(r["engine"], r["batch"]) for r in rows] == [("torch", 1), ("torch", 4), ("ort", 1), ("ort", 4)]
    assert all(r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and "error" not in r for r in rows)
    assert "| torch | 4 | 16 |" in table(rows)
    x = make_inputs(2, 8)
    assert x.input_ids.shape == (2, 8) and (x.input_ids[:, 0] == 101).all() and x.mask.all()


def test_a_failing_engine_is_reported_not_fatal():
    def broken(x):
        def call():
            raise RuntimeError("no kernel")
        return call

    rows = bench_engines({"broken": (broken, lambda: None)}, [(1, 8)], warmup=1, iters=1)
    assert "no kernel" in rows[0]["error"]


def test_training_throughput(trained):
    cfg, _, result = trained
    out = bench_training(cfg.model, result.labels, batch=4, seq=16, steps=2, device="cpu")
    assert out["samples_per_s"] > 0 and out["tokens_per_s"] == round(out["samples_per_s"] * 16, 1) or out["tokens_per_s"] > 0
