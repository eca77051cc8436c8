"""
The baseline: a bigram language model, which predicts the next character from the current
one alone. It learns the little that one character tells (after ',' comes a digit, never
'0'), and shows why counting needs a model that looks further back: that is gpt.py.

    python bigram.py                  # train, then print the losses, a sample and what it learned
    python bigram.py --max_iters=500  # any setting below, as --key=value (--help lists them)
"""
import os
import sys
import time

import torch
import torch.nn as nn
from torch.nn import functional as F

from data import (CountingEval, check_settings, fail, get_batch, load_data, parse_settings,
                  pick_device)

# -----------------------------------------------------------------------------
# default settings; each can be overridden on the command line as --key=value
max_num = 1_000_000   # the text is ",0,1,2,...,max_num-1,"
batch_size = 32
block_size = 16       # a bigram looks at one character; get_batch scores what follows a 2nd comma
max_iters = 3000
eval_interval = 500
eval_iters = 50
learning_rate = 1e-2
seed = 1337
device = "auto"       # auto = cuda, else mps, else cpu
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if not k.startswith("_") and type(v) in (int, float, bool, str)}


class BigramLanguageModel(nn.Module):

    def __init__(self, vocab_size):
        super().__init__()
        # row i of the table holds the logits (unnormalised log-probabilities) of the token after i
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx, targets=None):
        logits = self.token_embedding_table(idx)  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        # targets of -1 (the window's first number, see get_batch) are not scored
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens):
        """Append max_new_tokens tokens to idx (B, T), each sampled from the last token's row."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -1:])                                   # (B, 1, vocab_size)
            probs = F.softmax(logits[:, -1, :], dim=-1)                     # (B, vocab_size)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)  # (B, T+1)
        return idx


@torch.no_grad()
def estimate_loss(model, splits, cfg, dev):
    model.eval()
    out = {name: torch.stack([model(*get_batch(data, cfg.batch_size, cfg.block_size, dev))[1]
                              for _ in range(cfg.eval_iters)]).mean().item()
           for name, data in splits.items()}
    model.train()
    return out


def main(argv):
    cfg, _ = parse_settings(argv, DEFAULTS, __file__)
    check_settings(cfg, DEFAULTS)  # data.RULES, for the settings bigram.py has
    dev = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    tok, train_data, val_data = load_data(cfg.max_num)
    if len(val_data) < cfg.block_size + 2:
        fail(f"--max_num={cfg.max_num} leaves {len(val_data)} validation tokens, fewer than a "
             f"window of --block_size={cfg.block_size}; raise --max_num")
    train_data, val_data = train_data.to(dev), val_data.to(dev)
    print(f"data ready in {time.perf_counter() - t0:.2f}s: "
          f"{len(train_data):,} train / {len(val_data):,} val tokens")
    model = BigramLanguageModel(tok.vocab_size).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    t0 = time.perf_counter()
    for it in range(cfg.max_iters + 1):
        if it % cfg.eval_interval == 0 or it == cfg.max_iters:
            losses = estimate_loss(model, {"train": train_data, "val": val_data}, cfg, dev)
            print(f"step {it:5d} | loss train {losses['train']:.4f} val {losses['val']:.4f}",
                  flush=True)
        if it == cfg.max_iters:
            break
        x, y = get_batch(train_data, cfg.batch_size, cfg.block_size, dev)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(f"trained {cfg.max_iters} steps in {time.perf_counter() - t0:.1f}s")

    # what one character tells: the learned distribution of the character after ','
    probs = F.softmax(model.token_embedding_table.weight[int(tok.encode(",")[0])], dim=-1)
    print("after ',': " + "  ".join(f"{ch!r} {p:.3f}" for ch, p in zip(tok.vocab, probs.tolist())))
    idx = tok.encode(",0,")[None].long().to(dev)  # the text, and every prompt, has a comma
    print(f"sample: {tok.decode(model.generate(idx, 60)[0, 1:])!r}")
    # ...and what it does not: the same exact counting check that gpt.py passes
    print(CountingEval(val_data, cfg.block_size)(model).summary())


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C: a bigram trains in seconds, so nothing is saved
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader of the output stopped early (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
