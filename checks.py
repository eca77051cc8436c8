"""
The exact checks of a model trained by gpt.py, and the report a run ends with.

Every check is greedy counting, scored number by number: every held-out number, the whole text
from every start (every prompt `k,`), the count from "0," to 1,000, the numbers past the text,
and the long count, which generates far past the context window. gpt.py runs the cheap ones at
each evaluation (evaluate) and all of them at the end (report).
"""
import re
import sys
import time

import torch

from data import CountingEval, SpansEval, Tokenizer, beyond_spans, encode_prompt, percent


@torch.no_grad()
def count_on(model, prompts, wanted, ctx, use_cache=True):
    """Greedy counting, many streams at once (one batch row each): stream i is prompted with
    the numbers prompts[i] (all prompts the same number of characters) and should write the
    numbers wanted[i]. Returns each stream's first error (None where it is right) and the
    tokens generated per second."""
    device = next(model.parameters()).device
    idx = torch.stack([encode_prompt(",".join(p) + ",") for p in prompts]).to(device)  # (S, T)
    want = [",".join(w) + "," for w in wanted]
    t = time.perf_counter()
    with ctx:
        out = model.generate(idx, max(map(len, want)), temperature=0.0, use_cache=use_cache)
    out = out[:, idx.size(1):].cpu()  # waits for the device
    tokens_per_s = out.numel() / (time.perf_counter() - t)
    tok, errors = Tokenizer(), []
    for row, w in zip(out, wanted):
        got = tok.decode(row).split(",")
        i = next((i for i, n in enumerate(w) if got[i] != n), None)
        errors.append(None if i is None else f"number #{i + 1} should be {w[i]}, got {got[i]!r}")
    return errors, tokens_per_s


class Checks:
    """The exact checks of one model, built once: every held-out number (from the text before
    it in its window); the whole text from every start, as the prompt `k,` shows it and on to
    the end of its window (k+1, k+2, k+3 and the first digits of k+4 for six digits); the count
    from "0," to 1,000; beyond the text: numbers past max_num-1, which the model never saw
    (beyond_spans); and the long count: greedy streams from held-out numbers, and one from the
    text's end on past it, each far past the context window."""

    def __init__(self, train_data, val_data, cfg):
        self.held_out = ev = CountingEval(val_data, cfg.block_size)
        whole = torch.cat([train_data, val_data])
        self.whole_text = CountingEval(whole, cfg.block_size, every_start=True) \
            if cfg.full_check else None
        self.from_zero = [str(n) for n in range(1, min(1000, cfg.max_num - 1) + 1)]
        # the streams start at held-out numbers of the longest length, so their prompts match;
        # each is 3 prompt numbers, then per_stream to write
        first = int((ev.length == ev.length.max()).nonzero()[0])
        per_stream = min(cfg.long_count // cfg.streams, ev.n - first - 3)
        room = ev.n - first - 3 - per_stream
        starts = [first + i * room // max(cfg.streams - 1, 1) for i in range(cfg.streams)]
        self.long = [([ev.number(k) for k in range(s, s + 3)],
                      [ev.number(k) for k in range(s + 3, s + 3 + per_stream)])
                     for s in starts] if per_stream > 0 else []
        # past the text: numbers the model never saw, and a stream that counts on into them
        self.beyond = self.stretch = None
        self.long_beyond = []
        spans, stretch = beyond_spans(cfg.max_num)
        if cfg.full_check and cfg.block_size >= 2 * len(str(stretch[1])) + 2:
            self.beyond = SpansEval(spans, cfg.block_size, val_data.device)
            self.stretch = SpansEval([stretch], cfg.block_size, val_data.device)
            m = cfg.max_num
            self.long_beyond = [([str(n) for n in range(m - 3, m)],
                                 [str(n) for n in range(m, m + per_stream)])] * (per_stream > 0)


@torch.no_grad()
def evaluate(model, checks, ctx, dear=True):
    """The exact checks, from the cheapest to the dearest, each only once the ones before it are
    all right: every held-out number (seconds), then, while dear, the count from 0, (about a
    second) and every step of the whole text (about ten held-out checks' worth). Training that
    stops at the first all-right evaluation asks for the dear checks until they have all been
    right once; the final report runs every check again."""
    r = {}
    with ctx:
        r["held-out"] = checks.held_out(model)
    if checks.whole_text and r["held-out"].accuracy == 1 and dear:
        r["from 0,"] = count_on(model, [["0"]], [checks.from_zero], ctx)[0][0]
        if r["from 0,"] is None:
            with ctx:  # only "all right?" matters here: the first wrong number ends the check
                r["whole text"] = checks.whole_text(model, stop_at_wrong=True)
    return r


def all_right(r, checks):
    """Whether an evaluation found every check it ran right, and ran every check there is."""
    names = ["held-out"] + ["whole text"] * bool(checks.whole_text)
    return all(name in r and r[name].accuracy == 1 for name in names)


def eval_line(iter_num, r, ms_per_step, train_time, eval_seconds):
    """One evaluation's results, on one line."""
    held_out = percent(r["held-out"].correct, r["held-out"].total)
    line = (f"step {iter_num:5d} | loss train {r['loss']['train']:.4f} val {r['loss']['val']:.4f} "
            f"| held-out counting {held_out:>8} margin {r['held-out'].margin:5.2f} | ")
    if "from 0," in r:
        line += f"from 0, {'wrong' if r['from 0,'] else 'no error'} | "
    if "whole text" in r:
        whole = r["whole text"]
        line += "whole text 0 wrong | " if whole.accuracy == 1 else \
            f"whole text wrong: {whole.failures[0]} | "
    return line + f"{ms_per_step:.1f} ms/step | train {train_time:.1f}s, eval {eval_seconds:.1f}s"


def note_past_the_text(cfg):
    """Sample mode: a prompt, or the count it asks for, that goes past the text gets a note on
    stderr, since the model never saw those numbers."""
    last = re.findall(r"\d+", cfg.prompt)[-1]
    if (len(last) > len(str(cfg.max_num))
            or int(last) + cfg.max_new_tokens // (len(last) + 1) >= cfg.max_num):
        print(f"note: the model was trained on the numbers 0 to {cfg.max_num - 1:,}; past "
              f"them it counts as far as the beyond-the-text check of --mode=eval shows",
              file=sys.stderr)


def report(model, checks, r, cfg, ctx):
    """Every check, in full (what the last evaluation, with the same weights, did not finish
    is run now), then the model at work: a carry, the long count and the prompt."""
    for name, check in (("held-out", checks.held_out), ("whole text", checks.whole_text),
                        ("beyond the text", checks.beyond)):
        took = ""
        if check is not None and (name not in r or r[name].total < check.n - 1):  # not run in full
            t = time.perf_counter()
            with ctx:
                r[name] = check(model)
            took = f" ({time.perf_counter() - t:.1f}s)"
        if name in r:
            print(f"{name}{took}: {r[name].summary()}")
        if name == "whole text" and name in r:
            print(f"  from every start: {len(check.ws):,} prompts k, each written on to the end of "
                  f"its window, {check.scores:,} numbers in all")
        if name == "beyond the text" and name in r:
            print(f"  past the text, never seen in training: {cfg.max_num:,} to "
                  f"{check.spans[0][1] - 1:,} from every start (and from the prompts before "
                  f"{cfg.max_num:,} that reach them), and the numbers around each of "
                  f"{len(check.spans) - 1} later carries into the top digits, to {check.last:,}")
    if checks.stretch:
        with ctx:
            r["stretch"] = checks.stretch(model)
        a, b = checks.stretch.spans[0]
        right = "right" if r["stretch"].accuracy == 1 else "wrong"
        print(f"stretch, {b - 4:,} -> {b - 3:,}: {right} (numbers {a + 1:,}..{b - 1:,} from "
              f"every start, margin {r['stretch'].margin:.2f})")
    if checks.whole_text:
        if "from 0," not in r:
            r["from 0,"] = count_on(model, [["0"]], [checks.from_zero], ctx)[0][0]
        print(f"counting from 0, to {checks.from_zero[-1]}: {r['from 0,'] or 'no error'}")
    ev = checks.held_out
    k = int(ev.carries[1:].argmax()) + 1  # the held-out number with the longest carry
    first = max(0, min(k - 2, ev.n - 6))  # two numbers before it, three after, where there are
    shown = [ev.number(j) for j in range(first, min(first + 6, ev.n))]
    idx = encode_prompt(",".join(shown[:2]) + ",")[None].to(ev.data.device)
    with ctx:
        out = model.generate(idx, len(",".join(shown[2:])), temperature=0.0)
    print(f"sample: {','.join(shown[:2])}, -> {Tokenizer().decode(out[0, idx.size(1):])!r}")
    if checks.long:
        errors, tokens_per_s = count_on(model, *zip(*checks.long), ctx)
        wrong = [e for e in errors if e]
        streams, per_stream = len(errors), len(checks.long[0][1])
        print(f"long count: {streams} streams of {per_stream:,} numbers on from held-out numbers, "
              f"{streams * per_stream:,} in all: "
              + (f"{len(wrong)} streams wrong, first: {wrong[0]}" if wrong else "no error")
              + f" ({tokens_per_s:,.0f} tokens/s)")
        r["long count"] = next(iter(wrong), None)
    if checks.long_beyond:
        error = count_on(model, *zip(*checks.long_beyond), ctx)[0][0]
        prompt, wanted = checks.long_beyond[0]
        print(f"long count past the text: {','.join(prompt)}, on for {len(wanted):,} numbers: "
              f"{error or 'no error'}")
    idx = encode_prompt(cfg.prompt)[None].to(ev.data.device)
    with ctx:
        out = model.generate(idx, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k)
    print(f"prompt {cfg.prompt!r} -> {Tokenizer().decode(out[0, 1:])!r}")
    # the verdict, on the numbers of the text (what lies beyond it is measured, not promised)
    wrong = [name for name in ("held-out", "whole text") if name in r and r[name].accuracy < 1]
    wrong += [name.rstrip(",") for name in ("from 0,", "long count") if r.get(name)]
    r["counts"] = not wrong
    margins = ", ".join(f"{name} {r[name].margin:.2f}" for name in ("held-out", "whole text")
                        if name in r)
    if wrong:
        print(f"error: the model did not learn to count every number ({', '.join(wrong)} wrong; "
              f"margin {margins}); try another --seed or a longer run (--max_iters)",
              file=sys.stderr)
    else:
        print(f"it counts: every check right, margin {margins} (the right token's logit over "
              f"the best wrong one's, at the closest call)")
    return r
