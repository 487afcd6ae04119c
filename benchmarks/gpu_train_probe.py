"""Manual GPU probe (not CI): where the time of a b256 s128 MiniLM training step goes.

Needs only PyTorch and transformers (random MiniLM-shaped weights), no project dependencies:
    python3 benchmarks/gpu_train_probe.py                  # sdpa kernels, eager/compiled, with/without mask, profiles
    python3 benchmarks/gpu_train_probe.py v2               # + bf16 weights with an fp32 master copy
    python3 benchmarks/gpu_train_probe.py autotune         # max-autotune (slow to compile: minutes)
    python3 benchmarks/gpu_train_probe.py v3               # model.dropout=0 / train.freeze_embeddings, alone and with v2
    python3 benchmarks/gpu_train_probe.py attn             # forgeline/training/kernels/short_attention.py: errors against float32, kernel times
    python3 benchmarks/gpu_train_probe.py fused qkv        # whole steps: fused attention, bf16 master weights, one q/k/v GEMM
    python3 benchmarks/gpu_train_probe.py final            # errors, eager first-use compiles, the shipped step
Results: $OUT/train_probe.json; docs/benchmarks.md has the numbers."""
import os, sys, time, json
sys.path[0] = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")  # forgeline without installing it
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

def eager_widths():
    """Eager training over every width a non-compiled run pads to (multiples of 8): the first pass
    includes the fused kernels' Triton compiles, the second does not."""
    from forgeline.training.kernels import short_attention
    import copy
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**cfg.to_dict()))
    assert short_attention.enable(model)
    model = model.to(dev).train()
    work = copy.deepcopy(model).to(torch.bfloat16).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    res = {}
    for rnd in ("first_pass_s", "second_pass_s"):
        torch.cuda.synchronize(); t = time.perf_counter()
        for w in range(8, S + 1, 8):
            ids = torch.randint(1000, 30000, (B, w), device=dev)
            am = torch.ones(B, w, dtype=torch.long, device=dev); am[::2, w // 2:] = 0
            work(input_ids=ids, attention_mask=am).logits.float().sum().backward()
            for p_, h in zip(model.parameters(), work.parameters()):
                p_.grad = h.grad.float(); h.grad = None
            opt.step(); opt.zero_grad()
        torch.cuda.synchronize(); res[rnd] = round(time.perf_counter() - t, 2)
    print("eager_widths", res, flush=True)
    return res


def fused_attn(timings=True):
    """forgeline/training/kernels/short_attention.py on this GPU: errors against float32 PyTorch, kernel times per launch
    shape against cuDNN (b256 s128, dropout 0.1, padding mask), and a whole model against sdpa."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel, SDPBackend
    import triton.testing
    sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "training"))
    from attention_reference import dropped_probs, reference_grads
    from forgeline.training.kernels import short_attention as sa
    res, scale = {}, 32 ** -0.5
    rel = lambda a, b: round(((a.float() - b).norm() / b.norm()).item(), 5)
    for S_, p in ((128, 0.0), (128, 0.1), (96, 0.1), (40, 0.0), (64, 0.3)):
        torch.manual_seed(S_)
        mk = lambda: torch.randn(8, S_, 12, 32, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        q, k, v = mk(), mk(), mk()
        mask = torch.ones(8, S_, dtype=torch.bool, device=dev); mask[::2, S_ * 2 // 3:] = False
        bias, seed = sa.key_padding_bias(mask), torch.tensor([11], device=dev)
        o, lse = sa.attention_fwd(q, k, v, bias, seed, p, scale)
        do = torch.randn_like(o)
        dq, dk, dv = sa.attention_bwd(do, q, k, v, o, lse, bias, seed, p, scale)
        P = dropped_probs(q, k, bias, seed, p, scale)
        ro, rq, rk, rv = reference_grads(q, k, v, bias, scale, p, P, do)
        r = {"o": rel(o, ro), "dq": rel(dq.transpose(1, 2), rq), "dk": rel(dk.transpose(1, 2), rk),
             "dv": rel(dv.transpose(1, 2), rv)}
        # yardstick: PyTorch's own bf16 sdpa against the same float32 math (no dropout)
        if p == 0:
            r["sdpa_bf16_o"] = rel(F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], scale=scale).transpose(1, 2), ro)
        else:
            valid = mask[:, None, None, :].expand_as(P)
            r["kept_fraction"] = round(((P > 0) & valid).sum().item() / valid.sum().item(), 4)
        res[f"S{S_}_p{p}"] = r
        print(f"S{S_}_p{p}", r, flush=True)
    if not timings:
        return res
    # kernel times at the training shape
    q, k, v = (torch.randn(B, S, 12, 32, device=dev, dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    mask = torch.ones(B, S, dtype=torch.bool, device=dev)
    bias, seed = sa.key_padding_bias(mask), torch.tensor([3], device=dev)
    o, lse = sa.attention_fwd(q, k, v, bias, seed, 0.1, scale)
    do = torch.randn_like(o)
    t = {}
    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
    m4 = mask[:, None, None, :]
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        t["cudnn_mask_fwd"] = triton.testing.do_bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m4, dropout_p=0.1, scale=scale))
        def fb():
            F.scaled_dot_product_attention(qg, kg, vg, attn_mask=m4, dropout_p=0.1, scale=scale).backward(do.transpose(1, 2))
        t["cudnn_mask_fwd_bwd"] = triton.testing.do_bench(fb)
    for bm, w in ((64, 4),):
        t[f"fused_fwd_bm{bm}_w{w}"] = triton.testing.do_bench(lambda: sa.attention_fwd(q, k, v, bias, seed, 0.1, scale, bm, w))
    t["fused_fwd_nodrop_bm64_w4"] = triton.testing.do_bench(lambda: sa.attention_fwd(q, k, v, bias, seed, 0.0, scale, 64, 4))
    for bm, w in ((16, 4), (32, 2)):
        try:
            t[f"fused_bwd_bm{bm}_w{w}"] = triton.testing.do_bench(lambda: sa.attention_bwd(do, q, k, v, o, lse, bias, seed, 0.1, scale, bm, w))
        except Exception as e:
            t[f"fused_bwd_bm{bm}_w{w}"] = f"{type(e).__name__}: {str(e)[:120]}"
    t["fused_bwd_nodrop_bm16_w4"] = triton.testing.do_bench(lambda: sa.attention_bwd(do, q, k, v, o, lse, bias, seed, 0.0, scale, 16, 4))
    rounds = sa.PHILOX_ROUNDS
    sa.PHILOX_ROUNDS = 7
    t["fused_fwd_philox7"] = triton.testing.do_bench(lambda: sa.attention_fwd(q, k, v, bias, seed, 0.1, scale))
    t["fused_bwd_philox7"] = triton.testing.do_bench(lambda: sa.attention_bwd(do, q, k, v, o, lse, bias, seed, 0.1, scale))
    sa.PHILOX_ROUNDS = rounds
    res["kernel_ms_b256_s128"] = {k_: (round(v_, 4) if isinstance(v_, float) else v_) for k_, v_ in t.items()}
    print(res["kernel_ms_b256_s128"], flush=True)
    # a whole model: fused against sdpa, eval logits and training grads (dropout 0)
    torch.manual_seed(0)
    c = BertConfig(**cfg.to_dict()); c.hidden_dropout_prob = c.attention_probs_dropout_prob = 0.0
    import copy
    ref_m = BertForSequenceClassification(c).to(dev)
    fused_m = BertForSequenceClassification(copy.deepcopy(c)).to(dev); fused_m.load_state_dict(ref_m.state_dict())
    assert sa.enable(fused_m)
    ids = torch.randint(1000, 30000, (32, S), device=dev)
    am = torch.ones(32, S, dtype=torch.long, device=dev); am[::3, 70:] = 0
    outs = []
    for m_ in (ref_m, fused_m):
        m_.train(); m_.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lg = m_(input_ids=ids, attention_mask=am).logits
        lg.float().sum().backward()
        outs.append((lg.float(), torch.cat([p_.grad.flatten() for p_ in m_.parameters() if p_.grad is not None])))
    res["model_fused_qkv_vs_sdpa"] = {"logits_rel": rel(outs[1][0], outs[0][0]), "grads_rel": rel(outs[1][1], outs[0][1])}
    print(res["model_fused_qkv_vs_sdpa"], flush=True)
    return res


def run(name, mask_none, mode="reduce-overhead", steps=50, profile=False, master=False, attn_drop=None,
        drop=None, freeze_emb=False, fused=False, qkv=True, cdt=False):
    import copy
    torch.manual_seed(0)
    c = BertConfig(**cfg.to_dict())
    if attn_drop is not None: c.attention_probs_dropout_prob = attn_drop
    if drop is not None:  # what model.dropout sets
        c.hidden_dropout_prob = c.attention_probs_dropout_prob = c.classifier_dropout = drop
    model = BertForSequenceClassification(c)
    if fused:  # what train.attention=fused does
        from forgeline.training.kernels import short_attention
        assert short_attention.enable(model, fuse_qkv=qkv)
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
    import torch._inductor.config as icfg
    icfg.coordinate_descent_tuning = cdt
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
if "attn" in which:
    out["fused_attention"] = fused_attn()
if "fused" in which:
    run("compiled_mask", False)
    run("fused_attention", False, fused=True, qkv=False)
    run("fused_attention_freeze_emb", False, fused=True, qkv=False, freeze_emb=True)
    run("fused_attention_bf16master", False, fused=True, qkv=False, master=True)
    run("fused_attention_bf16master_freeze_emb", False, fused=True, qkv=False, master=True, freeze_emb=True)
    run("fused_attention_bf16master_profile", False, mode="default", steps=20, profile=True, fused=True, qkv=False, master=True)
if "qkv" in which:
    run("fused_attention_bf16master", False, fused=True, qkv=False, master=True)
    run("fused_qkv_bf16master", False, fused=True, master=True)
    run("fused_qkv_bf16master_freeze_emb", False, fused=True, master=True, freeze_emb=True)
    run("fused_qkv_bf16master_coordinate_descent", False, fused=True, master=True, cdt=True)
    run("fused_qkv_bf16master_profile", False, mode="default", steps=20, profile=True, fused=True, master=True)
if "final" in which:
    out["fused_attention"] = fused_attn(timings=False)
    out["eager_widths"] = eager_widths()
    run("fused_qkv_bf16master", False, fused=True, master=True)
if "cpucheck" in which:
    run("cpu_master", False, mode=None, steps=2, master=True)
    run("cpu_master_drop0_freeze", False, mode=None, steps=2, master=True, drop=0.0, freeze_emb=True)
if "autotune" in which:
    run("bf16master_autotune", False, mode="max-autotune", master=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "train_probe.json"), "w"), indent=1)
