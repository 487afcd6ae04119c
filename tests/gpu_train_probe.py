"""Manual GPU probe (not CI): where the time of a b256 s128 MiniLM training step goes.

Needs only PyTorch and transformers (random MiniLM-shaped weights), no project dependencies:
    python3 tests/gpu_train_probe.py                  # sdpa kernels, eager/compiled, with/without mask, profiles
    python3 tests/gpu_train_probe.py v2               # + bf16 weights with an fp32 master copy
    python3 tests/gpu_train_probe.py autotune         # max-autotune (slow to compile: minutes)
    python3 tests/gpu_train_probe.py v3               # model.dropout=0 / train.freeze_embeddings, alone and with v2
Results: $OUT/train_probe.json; docs/benchmarks.md § issue 3 has the numbers."""
import os, sys, time, json
import torch
from transformers import BertConfig, BertForSequenceClassification

torch.backends.cuda.matmul.allow_tf32 = True
dev = os.environ.get("PROBE_DEV", "cuda")
B, S = (256, 128) if dev == "cuda" else (4, 16)
cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536, max_position_embeddings=512, num_labels=3)
out = {}

def attn_micro():
    from torch.nn.attention import sdpa_kernel, SDPBackend
    import torch.nn.functional as F
    q = torch.randn(B, 12, S, 32, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn_like(q, requires_grad=True); v = torch.randn_like(q, requires_grad=True)
    m = torch.ones(B, 1, S, S, device=dev, dtype=torch.bool)
    g = torch.randn_like(q)
    res = {}
    for name, be, mask in [("flash", SDPBackend.FLASH_ATTENTION, None), ("cudnn", SDPBackend.CUDNN_ATTENTION, None),
                           ("efficient", SDPBackend.EFFICIENT_ATTENTION, None), ("efficient_mask", SDPBackend.EFFICIENT_ATTENTION, m),
                           ("cudnn_mask", SDPBackend.CUDNN_ATTENTION, m)]:
        try:
            with sdpa_kernel([be]):
                def f():
                    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1)
                    o.backward(g)
                for _ in range(3): f()
                (torch.cuda.synchronize() if dev == "cuda" else None); t = time.perf_counter()
                for _ in range(20): f()
                (torch.cuda.synchronize() if dev == "cuda" else None)
                res[name] = round((time.perf_counter() - t) / 20 * 1000, 3)
        except Exception as e:
            res[name] = f"{type(e).__name__}: {str(e)[:100]}"
    return res

def run(name, mask_none, mode="reduce-overhead", steps=50, profile=False, master=False, attn_drop=None,
        drop=None, freeze_emb=False):
    import copy
    torch.manual_seed(0)
    c = BertConfig(**cfg.to_dict())
    if attn_drop is not None: c.attention_probs_dropout_prob = attn_drop
    if drop is not None:  # what model.dropout sets
        c.hidden_dropout_prob = c.attention_probs_dropout_prob = c.classifier_dropout = drop
    model = BertForSequenceClassification(c)
    if freeze_emb:  # what train.freeze_embeddings does
        model.get_input_embeddings().weight.requires_grad_(False)
    model = model.to(dev).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5, fused=(dev == "cuda"))
    work = model
    if master:
        work = copy.deepcopy(model).to(torch.bfloat16).train()
        mp = [p for p in model.parameters() if p.requires_grad]
        hp = [h for p, h in zip(model.parameters(), work.parameters()) if p.requires_grad]
        for p in mp: p.grad = torch.zeros_like(p)
    fwd = torch.compile(work, mode=mode, dynamic=False) if mode else work
    ids = torch.randint(1000, 30000, (B, S), device=dev)
    mask = None if mask_none else torch.ones(B, S, dtype=torch.long, device=dev)
    y = torch.randint(0, 3, (B,), device=dev)
    def step():
        if mode and "reduce" in mode or mode == "max-autotune":
            torch.compiler.cudagraph_mark_step_begin()
        from contextlib import nullcontext
        with (nullcontext() if master else torch.autocast("cuda", dtype=torch.bfloat16)):
            logits = fwd(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        if master:
            torch._foreach_copy_([p.grad for p in mp], [h.grad for h in hp])
            for h in hp: h.grad = None
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step(); opt.zero_grad(set_to_none=not master)
        if master:
            with torch.no_grad(): torch._foreach_copy_(hp, mp)
    t0 = time.perf_counter()
    for _ in range(5): step()
    (torch.cuda.synchronize() if dev == "cuda" else None); warm = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(steps): step()
    (torch.cuda.synchronize() if dev == "cuda" else None); sec = (time.perf_counter() - t) / steps
    r = {"step_ms": round(sec * 1000, 2), "samples_per_s": round(B / sec), "warm_s": round(warm, 1)}
    if profile:
        from torch.profiler import profile as prof, ProfilerActivity
        with prof(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(5): step()
            (torch.cuda.synchronize() if dev == "cuda" else None)
        ka = p.key_averages()
        rows = sorted(ka, key=lambda e: -e.device_time_total)[:25]
        tot = sum(e.device_time_total for e in ka if e.device_time_total) 
        r["profile_total_ms_per_step"] = round(tot / 5 / 1000, 2)
        r["top"] = [(e.key[:90], round(e.device_time_total / 5 / 1000, 3), e.count // 5) for e in rows]
    out[name] = r
    print(name, json.dumps(r, indent=None), flush=True)

which = sys.argv[1:] or ["micro", "eager", "base", "nomask", "prof"]
if "micro" in which:
    out["attn_micro_fwd_bwd_ms"] = attn_micro(); print(out["attn_micro_fwd_bwd_ms"], flush=True)
if "eager" in which: run("eager_mask", False, mode=None)
if "base" in which: run("compiled_mask", False)
if "nomask" in which: run("compiled_nomask", True)
if "prof" in which:
    run("default_mask_profile", False, mode="default", steps=20, profile=True)
    run("default_nomask_profile", True, mode="default", steps=20, profile=True)
if "v2" in which:
    run("compiled_mask", False)
    run("bf16master_mask", False, master=True)
    run("bf16master_mask_attndrop0", False, master=True, attn_drop=0.0)
    run("bf16master_profile", False, mode="default", steps=20, profile=True, master=True)
if "v3" in which:
    run("compiled_mask", False)
    run("drop0", False, drop=0.0)
    run("freeze_emb", False, freeze_emb=True)
    run("drop0_freeze_emb", False, drop=0.0, freeze_emb=True)
    run("bf16master_drop0_freeze_emb", False, master=True, drop=0.0, freeze_emb=True)
    run("bf16master_drop0_freeze_emb_profile", False, mode="default", steps=20, profile=True, master=True,
        drop=0.0, freeze_emb=True)
if "cpucheck" in which:
    run("cpu_master", False, mode=None, steps=2, master=True)
    run("cpu_master_drop0_freeze", False, mode=None, steps=2, master=True, drop=0.0, freeze_emb=True)
if "autotune" in which:
    run("bf16master_autotune", False, mode="max-autotune", master=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "train_probe.json"), "w"), indent=1)
