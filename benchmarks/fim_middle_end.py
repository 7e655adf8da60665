"""Does a fill-in-the-middle model know where a middle ends? FIM fill judges a candidate by
log P(candidate + <|endoftext|> | context), so the separator must be likely right after the true middle
and unlikely one token before or after it. On held-out text (data/corpus/valid), for each case
(a prefix of 20-119 tokens, a middle of 2-5 tokens, the rest as suffix) this prints the mean of

  middle    log P(middle token | context), per token: SPM order, PSM order, and the prefix alone
  end       log P(separator) after the complete middle, one token short of it, and one token past it

    python benchmarks/fim_middle_end.py [--model default-fim] [--checkpoint RUN/best.pt] [--n 60]

--checkpoint reads the weights of a training run (best.pt or checkpoint.pt) into the model's shape, to
follow a run while it trains. A model that places the end by the text shows `complete` well above
`short` and `long`; one that only learned how often middles end shows the three alike.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
import torch.nn.functional as F

import clozelm


def log_probs(model, seq: list[int]) -> torch.Tensor:
    """[len(seq), vocab] log P(next token) at each position."""
    with torch.no_grad():
        return F.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default-fim")
    p.add_argument("--checkpoint", help="a training run's best.pt or checkpoint.pt with the same shape")
    p.add_argument("--n", type=int, default=60, help="cases")
    p.add_argument("--valid", default="data/corpus/valid")
    args = p.parse_args()
    valid = Path(args.valid)
    if not valid.is_dir():
        raise SystemExit(f"{valid} missing: run python scripts/build_corpus.py first")
    torch.set_num_threads(2)
    model = clozelm.load(args.model)
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)["model"]
        dtype = next(model.parameters()).dtype
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    model.eval().float()
    tok = model.tokenizer
    pre, suf, mid = (tok.special_tokens[f"<|fim_{n}|>"] for n in ("prefix", "suffix", "middle"))
    eot = tok.eos_id
    ids = tok.encode("\n\n".join(f.read_text(encoding="utf-8") for f in sorted(valid.glob("*.txt"))))
    rng = random.Random(0)
    middle = {"SPM": [], "PSM": [], "prefix alone": []}
    end = {"complete": [], "short": [], "long": []}
    while len(end["complete"]) < args.n:
        start = rng.randrange(0, len(ids) - 150)
        window = ids[start:start + 150]
        if eot in window:
            continue
        a = rng.randrange(20, 120)
        b = a + rng.randrange(2, 6)
        P, M, S = window[:a], window[a:b], window[b:]
        orders = {"SPM": [pre, suf, *S, mid, *P], "PSM": [pre, *P, suf, *S, mid], "prefix alone": P}
        for name, ctx in orders.items():
            lp = log_probs(model, ctx + M)
            middle[name].append(sum(lp[len(ctx) - 1 + i, t].item() for i, t in enumerate(M)) / len(M))
        lp = log_probs(model, orders["SPM"] + M + S[:1])
        last = len(orders["SPM"]) - 1 + len(M)  # position that predicts what follows the complete middle
        end["complete"].append(lp[last, eot].item())
        end["short"].append(lp[last - 1, eot].item())
        end["long"].append(lp[last + 1, eot].item())
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"{args.model}{' + ' + args.checkpoint if args.checkpoint else ''}, {args.n} held-out cases")
    print("middle, nats per token: " + ", ".join(f"{k} {mean(v):.2f}" for k, v in middle.items()))
    print("log P(separator) after the middle: " + ", ".join(f"{k} {mean(v):.2f}" for k, v in end.items()))


if __name__ == "__main__":
    main()
