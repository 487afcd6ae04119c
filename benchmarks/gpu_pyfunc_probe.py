"""Manual GPU probe (not CI): the pyfunc model path against the harness engines, per width.

Run from the repository root with onnxruntime-gpu installed:
    python3 benchmarks/gpu_pyfunc_probe.py
PROBE_QUICK=1: only b64/b256 against both harness engines, pyfunc path with max batch 256 and 64.
Results: $OUT/pyfunc_probe*.json; docs/benchmarks.md has the numbers."""
import json, os, sys, time, tempfile
from pathlib import Path
sys.path[0] = str(Path(__file__).resolve().parents[1] / "src")  # forgeline without installing it
import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification

from forgeline.config.schema import ExportConfig
from forgeline.export.onnx import export_onnx
from forgeline.export.compress import convert_fp16
import onnxruntime as ort
from forgeline.inference.runtime import CudaGraphRunner, pad_rows, predict_proba_graphs, CUDA_EP, CPU_EP

class Tok:
    pad_token_id = 0
    def __call__(self, texts, truncation=True, max_length=128):
        return {"input_ids": [[101] + [1000 + i for i in range(len(t.split()))] + [102] for t in texts]}

tmp = Path(tempfile.mkdtemp())
cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, num_labels=3)
model = BertForSequenceClassification(cfg).eval()
fp32 = export_onnx(model, Tok(), ["a", "b", "c"], tmp / "model.onnx", ExportConfig(), 128)
fp16 = convert_fp16(fp32, tmp / "model.fp16.onnx")
print("exported", flush=True)

rng = np.random.default_rng(0)
lens = np.clip(rng.gamma(3.0, 11.0, size=256).astype(int) + 4, 4, 62); lens[0] = 62
rows = [[101] + list(map(int, rng.integers(1000, 30000, size=n - 2))) + [102] for n in lens]
print("mean len", lens.mean(), flush=True)

def p50(fn, iters=200, warm=20):
    for _ in range(warm): fn()
    ts = []
    for _ in range(iters):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return round(float(np.percentile(ts, 50)) * 1000, 3), round(float(np.percentile(ts, 99)) * 1000, 3)

def runner_with(opts_fn=None, cuda_opts=None):
    r = CudaGraphRunner(fp16, 3)
    if opts_fn or cuda_opts:
        so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL; so.log_severity_level = 3
        if opts_fn: opts_fn(so)
        r.session = ort.InferenceSession(str(fp16), sess_options=so, providers=[(CUDA_EP, {"enable_cuda_graph": "1", **(cuda_opts or {})}), CPU_EP])
    return r

res = {}
if os.environ.get("PROBE_QUICK"):
    from forgeline.inference.runtime import create_session, run_logits
    r = CudaGraphRunner(fp16, 3); plain = create_session(fp16, device="cuda")
    for b in (256, 64):
        ids, mask = pad_rows(rows[:b], (b, 62), 0)
        res[f"b{b}"] = {"harness_graph_w62": p50(lambda: r(ids, mask)), "harness_iobinding_w62": p50(lambda: run_logits(plain, ids, mask, io_binding=True)),
                        "pyfunc_path_max_batch_256": p50(lambda: predict_proba_graphs(r, rows[:b], 0, 256, 128)),
                        "pyfunc_path_max_batch_64": p50(lambda: predict_proba_graphs(r, rows[:b], 0, 64, 128))}
        print(b, res[f"b{b}"], flush=True)
    json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "pyfunc_probe_quick.json"), "w"), indent=1)
    sys.exit(0)
def quiet(so):
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
variants = {"default": runner_with(), "threads1_nospin": runner_with(quiet)}
for k, v in {"flash": "1", "efficient": "2", "trt_fused": "4", "cudnn": "8", "math": "16"}.items():
    try:
        variants["sdpa_" + k] = runner_with(cuda_opts={"sdpa_kernel": v})
    except Exception as e:
        res["sdpa_" + k] = str(e)[:200]
for name, r in variants.items():
    row = {}
    for w in (62, 64, 48, 80, 96, 128):
        try:
            ids, mask = pad_rows(rows, (256, w), 0) if w >= 62 else pad_rows([x[:w] for x in rows], (256, w), 0)
            row[f"harness_w{w}"] = p50(lambda: r(ids, mask))
        except Exception as e:
            row[f"harness_w{w}"] = str(e)[:200]
    res[name] = row
    print(name, row, flush=True)
# the pyfunc model path on the default and the quiet runner, and host-only costs
for name in ("default", "threads1_nospin"):
    r = variants[name]
    res[name]["pyfunc_path_b256"] = p50(lambda: predict_proba_graphs(r, rows, 0, 256, 128))
    res[name]["pyfunc_path_b64"] = p50(lambda: predict_proba_graphs(r, rows[:64], 0, 256, 128))
    ids, mask = pad_rows(rows[:64], (64, 62), 0)
    res[name]["harness_b64_w62"] = p50(lambda: r(ids, mask))
    print(name, res[name], flush=True)
res["host_pad_rows_b256"] = p50(lambda: pad_rows(rows, (256, 64), 0))
print(json.dumps(res, indent=1))
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "pyfunc_probe.json"), "w"), indent=1)
