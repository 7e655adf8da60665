"""Package a trained model as an embedded default: bf16 safetensors (each file <= 32 MB), tokenizer files
and a model card, in src/clozelm/defaults/NAME/.

    python scripts/export_default.py MODEL_DIR NAME --stats stats.json [--corpus data/corpus] [--run RUN_DIR]

stats.json holds what the card reports: objective, tokens_seen, steps, seconds, val_loss, trainer, notes.
With --run (the `clozelm train` run that made MODEL_DIR) the card's validation loss is measured again on the
weights as shipped (bf16, loaded as clozelm.load does) over the run's whole held-out split, in fp32.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import clozelm
from clozelm.training.data import TokenData
from clozelm.training.objectives import make_objective
from clozelm.training import TrainConfig
from clozelm.training.loop import held_out_sums

DEFAULTS = Path(__file__).resolve().parents[1] / "src" / "clozelm" / "defaults"
MAX_FILE_BYTES = 32 * 1024 * 1024


def model_card(name: str, model, stats: dict, manifest: dict) -> str:
    cfg = model.config
    rows = []
    for info in manifest.get("sources", {}).values():
        origin = info["origin"]
        rows.append(f"| {info['name']} ({info['train']['words']:,} words) | {origin['registry']} `{origin['package']}` "
                    f"{origin['version']} | {info['licence']} |")
    val = stats["val_loss"]
    held_out = f"; {stats['val_source']}, {stats['val_tokens']:,} tokens" if "val_source" in stats else ""
    return f"""# clozelm `{name}`

A small {'causal (GPT-2 architecture)' if cfg.causal else 'bidirectional (BERT architecture, masked LM)'} model
trained from scratch by clozelm with the `{stats['objective']}` objective, shipped inside the package so that
everything works offline.

| | |
|---|---|
| architecture | {cfg.n_layer} layers x {cfg.n_embd} wide, {cfg.n_head} heads, {cfg.n_positions} positions, {'pre-LN causal' if cfg.pre_ln else 'post-LN bidirectional'}, {cfg.activation} |
| parameters | {model.num_parameters():,} (stored in bf16) |
| tokenizer | byte-level BPE, {model.tokenizer.vocab_size} tokens, trained by clozelm on the same corpus; special tokens {', '.join(sorted(model.tokenizer.special_tokens))} |
| tokens seen | {stats['tokens_seen']:,} ({stats['steps']} optimizer steps) |
| training time | {stats['seconds'] / 60:.0f} min on {stats.get('hardware', '2 CPU cores (bf16 autocast)')} |
| validation loss | {val:.3f} nats/token ({'masked tokens only' if not cfg.causal else 'next token'}{held_out}) |
| validation perplexity | {math.exp(val):.1f} |
| trainer | {stats.get('trainer', 'clozelm train')} |

## Data
Public-domain English text only, rebuilt from the package registries by `scripts/build_corpus.py`; about 2 % of
the documents of each source (every 50th) are held out as the validation split and never trained on.

| source | from | licence |
|---|---|---|
{chr(10).join(rows)}

## Notes
{stats.get('notes', '')}
"""


def shipped_held_out_loss(model, run_dir: Path) -> tuple[float, int]:
    """(mean loss per labelled token, labelled tokens) of `model` over every held-out window of the run."""
    settings = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    cfg = TrainConfig.from_dict(settings["train"])
    data = TokenData.open(run_dir / "tokens" / settings["data_key"])
    objective = make_objective(cfg.objective, model.tokenizer, model.config.vocab_size, cfg.fim_rate, cfg.spm_rate,
                               cfg.mask_rate)
    windows = data.valid.windows(cfg.seq_len + objective.extra_tokens, cfg.seq_len)
    loss, tokens = held_out_sums(model.network, objective, windows, range(len(windows)), cfg.batch_size, "fp32",
                                 torch.device("cpu")).tolist()
    return loss / tokens, int(tokens)


def recipe(run_dir: Path) -> str:
    """How the run trained, from its run.json: batch, schedule, optimizer, passes over the data."""
    settings = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    t = settings["train"]
    meta = json.loads((run_dir / "tokens" / settings["data_key"] / "meta.json").read_text(encoding="utf-8"))
    train_tokens = sum(shard["tokens"] for shard in meta["train"])
    seen = t["steps"] * t["batch_size"] * t["grad_accum"] * t["world_size"] * t["seq_len"]
    return (f"Training: {t['steps']} steps x {t['batch_size'] * t['grad_accum'] * t['world_size']} sequences x "
            f"{t['seq_len']} tokens, {t['precision']} autocast; AdamW (betas {t['beta1']}/{t['beta2']}, weight decay "
            f"{t['weight_decay']}), peak lr {t['lr']:g} after {t['warmup']} warm-up steps, cosine to "
            f"{t['lr'] * t['min_lr_ratio']:g}; gradient clip {t['grad_clip']}; seed {t['seed']}. The training split "
            f"holds {train_tokens:,} tokens, so the run made {seen / train_tokens:.1f} passes over it; the shipped "
            f"weights are those with the lowest held-out loss.")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("name")
    p.add_argument("--stats", required=True)
    p.add_argument("--corpus", default="data/corpus")
    p.add_argument("--defaults-dir", default=str(DEFAULTS), help="where packaged defaults live (default: the package's)")
    p.add_argument("--run", help="the training run: re-measure validation loss on the shipped weights")
    args = p.parse_args()
    model = clozelm.load(args.model_dir)
    stats = json.loads(Path(args.stats).read_text())
    manifest_path = Path(args.corpus) / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    out = Path(args.defaults_dir) / args.name
    model.to(torch.bfloat16)
    model.save_pretrained(out, overwrite=True)
    for f in out.iterdir():
        if f.stat().st_size > MAX_FILE_BYTES:
            raise SystemExit(f"{f} is {f.stat().st_size / 2**20:.1f} MB, over the 32 MB limit")
    if args.run:
        shipped = clozelm.load(out)  # what users get: bf16 weights, upcast to fp32
        stats["val_loss"], stats["val_tokens"] = shipped_held_out_loss(shipped, Path(args.run))
        stats["val_source"] = "weights as shipped (bf16), fp32 compute, the whole held-out split"
        stats["notes"] = (stats.get("notes", "") + "\n" + recipe(Path(args.run))).strip()
    (out / "MODEL_CARD.md").write_text(model_card(args.name, model, stats, manifest), encoding="utf-8")
    print(f"wrote {out}: " + ", ".join(f"{f.name} {f.stat().st_size / 2**20:.1f} MB" for f in sorted(out.iterdir())))


if __name__ == "__main__":
    main()
