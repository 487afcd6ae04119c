import cProfile, pstats, sys
from pathlib import Path
from config.loader import load_config
from tasks.data import load_and_validate
from tasks.split import split_dataset
from tasks.train import train_model
cfg = load_config("default", ["train.device=cuda", "data.sample_rows=30000", "train.batch_size=256", "model.max_length=128",
                              "train.eval_batch_size=512", "train.progress_bar=false", "train.epochs=2", "train.patience=5"])
data = load_and_validate(cfg.data, Path("/tmp/prof/data"), cfg.seed)
splits = split_dataset(data.valid, cfg.split, cfg.seed)
pr = cProfile.Profile(); pr.enable()
r = train_model(splits, data.labels, cfg, Path("/tmp/prof"))
pr.disable()
print("STEP", r.step_samples_per_second, "ALL", r.samples_per_second, r.train_seconds)
pstats.Stats(pr).sort_stats("tottime").print_stats(18)
