"""
Counting past the text: the numbers a model trained by gpt.py never saw.

    python dev/beyond.py                  # the model in out/ckpt.pt
    python dev/beyond.py --out_dir=out2   # any of gpt.py's --key=value

The text ends at 999,999. Each count below is checked as gpt.py checks the whole text, from every
start as a prompt shows it: 1,000,000 to 1,099,999 (begun ten numbers earlier, so that windows
from the text reach it); a few numbers around every carry into the top digits (1,100,000, ...,
9,900,000); the stretch, one digit longer still (9,999,999 -> 10,000,000); then the long count,
greedily, from the end of the text on. What the text never shows (carries over six 9s, copies
within 7-digit numbers) can go wrong: it is measured, not promised, and gpt.py's verdict and exit
code depend on the text alone.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

import gpt
from data import CountingEval, CountingResult, count_on, counting_text, encode_prompt


def beyond_spans(max_num):
    """The numbers past a text that ends at max_num-1, as (first, stop) ranges, each counted on its
    own: from max_num on for a tenth of the next power of ten, begun ten numbers earlier; then a
    few numbers around every later multiple of that tenth. And the stretch, around the power of
    ten after that."""
    unit = 10 ** len(str(max_num - 1))  # the first number one digit longer than the text's
    tenth = max(unit // 10, 1)
    spans = [(max(max_num - 10, 0), max_num + tenth)]
    first = -(-(max_num + tenth) // tenth) * tenth
    spans += [(c - 3, c + 3) for c in range(first, 10 * unit, tenth)]
    return spans, (10 * unit - 3, 10 * unit + 3)


class SpansEval:
    """CountingEval from every start over several counts, as one."""

    def __init__(self, spans, block_size, device="cpu"):
        self.evals = [CountingEval(encode_prompt(counting_text(stop, first)).to(device),
                                   block_size, every_start=True) for first, stop in spans]

    def __call__(self, model, label=""):
        rs = [ev(model, label=label) for ev in self.evals]
        return CountingResult(*(torch.cat([getattr(r, k) for r in rs]) for k in
                                ("ok", "carries", "length")), sum([r.failures for r in rs], []),
                              min(r.margin for r in rs))


def main(argv):
    if "-h" in argv or "--help" in argv:
        sys.exit(print(__doc__.strip()))
    cfg, ckpt = gpt.get_config(["--mode=eval", *argv])  # the checkpoint's settings stand
    device, ctx = gpt.get_device(cfg)
    _, model = gpt.build_model(cfg, ckpt, device)  # the averaged weights, as gpt.py checks
    spans, stretch = beyond_spans(cfg.max_num)
    if cfg.block_size < 2 * len(str(stretch[1])) + 2:  # a window must hold n and n+1 whole
        return print(f"past the text: not checked, the model's block_size={cfg.block_size} cannot "
                     f"hold {stretch[1]:,} and the number before it")
    for name, check in (("beyond the text", spans), ("stretch", [stretch])):
        t = time.perf_counter()
        with ctx:
            result = SpansEval(check, cfg.block_size, device)(model, label=name)
        print(f"{name} ({time.perf_counter() - t:.1f}s): {result.summary()}")
    m, count = cfg.max_num, cfg.long_count // cfg.streams
    if count:
        error = count_on(model, [m - 3], 3, count, ctx)
        print(f"long count past the text, on from {m - 3},{m - 2},{m - 1},: {error or 'no error'}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
