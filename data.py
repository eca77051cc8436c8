"""
The task shared by bigram.py and gpt.py: a character-level model that learns to count.

The text is "0,1,2,...,999999": every digit and the comma is one token. This file builds
the text, the Tokenizer, the train/val split, get_batch (random training windows), StepSampler
(which windows: the rare steps far more often than the text has them), and the counting
evaluation, which checks every held-out number exactly.

    python data.py            # prints the text, the vocabulary, the split and how long it takes
"""
import bisect
import sys
import time
from types import SimpleNamespace

import torch

VOCAB = ",0123456789"  # ',' -> 0, '0' -> 1, ..., '9' -> 10 (the tutorial's mapping)


def counting_text(max_num):
    """The numbers 0 .. max_num-1 joined by commas: '0,1,2,...'."""
    return ",".join(map(str, range(max_num)))


class Tokenizer:
    """Characters <-> integer token ids. Encoding uses a 256-entry byte lookup table, so the
    whole 6.9M-character text is encoded in one tensor operation instead of a Python loop."""

    def __init__(self, vocab=VOCAB):
        self.vocab = vocab
        self.stoi = {ch: i for i, ch in enumerate(vocab)}
        self.itos = {i: ch for i, ch in enumerate(vocab)}
        self.byte_to_id = torch.full((256,), -1, dtype=torch.long)  # -1 marks "not in vocab"
        self.byte_to_id[list(vocab.encode("ascii"))] = torch.arange(len(vocab))
        self.id_to_byte = torch.tensor(list(vocab.encode("ascii")), dtype=torch.uint8)

    @property
    def vocab_size(self):
        return len(self.vocab)

    def encode_tensor(self, string):
        """str -> 1-D LongTensor of token ids. Raises ValueError on a character not in the vocab."""
        raw = bytearray(string.encode("ascii", errors="replace"))  # non-ASCII -> '?', caught below
        if not raw:
            return torch.empty(0, dtype=torch.long)
        ids = self.byte_to_id.index_select(0, torch.frombuffer(raw, dtype=torch.uint8).long())
        if (ids < 0).any():
            bad = next(ch for ch in string if ch not in self.stoi)
            raise ValueError(f"character {bad!r} is not in the vocabulary {self.vocab!r}; "
                             f"use only these characters")
        return ids

    def encode(self, string):
        """str -> list[int]"""
        return self.encode_tensor(string).tolist()

    def decode(self, ids):
        """list[int] or tensor of ids -> str"""
        ids = torch.as_tensor(ids, dtype=torch.long).cpu()
        return self.id_to_byte[ids].numpy().tobytes().decode("ascii")


def load_data(max_num=1_000_000, val_frac=0.1):
    """Build the text and split it as the tutorial does: the last val_frac of the characters
    is validation, the rest is training. Returns (tokenizer, train_data, val_data)."""
    tok = Tokenizer()
    data = tok.encode_tensor(counting_text(max_num))
    n_val = int(len(data) * val_frac)
    return tok, data[:-n_val], data[-n_val:]


def get_batch(data, batch_size, block_size, device, generator=None, sampler=None):
    """A batch of random windows: x is block_size tokens, y is the same window shifted by one,
    so y[b, t] is the token that follows x[b, :t+1]. Windows start uniformly at random, or
    where `sampler` (a StepSampler) puts them. Indexing builds the whole batch in one
    operation, on the device where data already lives."""
    if sampler is None:
        ix = torch.randint(len(data) - block_size, (batch_size,), device=data.device, generator=generator)
    else:
        ix = sampler(batch_size, generator)
    window = data[ix[:, None] + torch.arange(block_size + 1, device=data.device)]  # (B, T+1)
    x, y = window[:, :-1].clone(), window[:, 1:].clone()  # two tensors: editing y never touches x
    return x.to(device), y.to(device)


class StepSampler:
    """Window starts that show the rare steps n -> n+1 far more often than the text does.

    Uniform windows show what the text is mostly made of: 6-digit numbers with no carry. The
    rare steps are the hard ones: 9999 -> 10000 changes five digits but happens once per ten
    thousand numbers, 99 -> 100 (a new length) happens once in the whole text, and the numbers
    0..99 fill only the first 290 of its 6.9M characters. So each window is centred on a step
    n -> n+1 drawn by its *kind* (digits of n, trailing 9s of n): a kind that holds a share p of
    all the steps is drawn with probability proportional to p**alpha. alpha=1 keeps the text's
    own mix; alpha=0 draws every kind equally often, so the single step 9 -> 10 would get as many
    windows as the training split's 721,429 carry-free 6-digit steps together; in between, the
    rare kinds are boosted without starving the common ones. (Multilingual language models
    balance their languages the same way: XLM-R samples them with alpha=0.3.) Within a kind the
    step is uniform, and the window sits at a random offset that still shows the comma before n
    and the comma after n+1. `data` must start at the first digit of a number (the training split does)."""

    def __init__(self, data, block_size, alpha=0.3):
        self.data, self.block_size = data, block_size
        dev = data.device
        commas = (data == 0).nonzero().squeeze(1)
        start = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), commas[:-1] + 1])  # start[i]: n_i
        end = commas                                                      # end[i]: the comma after n_i
        length = end - start
        nines = torch.zeros_like(length)  # trailing 9s of each number
        run = torch.ones_like(length, dtype=torch.bool)
        for k in range(1, int(length.max()) + 1):
            run &= (k <= length) & (data[(end - k).clamp(min=0)] == 10)  # token 10 is '9'
            nines += run
        n, n_end = start[:-1], end[1:]        # a step: number n_i (from start[i]) and n_i + 1 (to end[i+1])
        kind = (length * 16 + nines)[:-1]     # (digits, trailing 9s) of n, one id per kind
        count = torch.bincount(kind)[kind].double()  # how many steps share each step's kind
        weight = count ** (alpha - 1)         # so a kind's total weight is count**alpha
        self.cdf = (torch.cumsum(weight, 0) / weight.sum()).float()
        self.lo = (n_end - block_size).clamp(min=0)                       # window must reach n+1's comma
        self.hi = (n - 1).clamp(min=0).maximum(self.lo)                   # and show the comma before n

    def __call__(self, batch_size, generator=None):
        dev = self.data.device
        step = torch.searchsorted(self.cdf, torch.rand(batch_size, device=dev, generator=generator))
        step = step.clamp(max=len(self.cdf) - 1)
        lo, hi = self.lo[step], self.hi[step]
        ix = lo + (torch.rand(batch_size, device=dev, generator=generator) * (hi - lo + 1)).long()
        return ix.clamp(max=len(self.data) - self.block_size - 1)


class CountingEval:
    """Exhaustive counting accuracy: for every number whose predecessor is complete in `data`,
    does greedy decoding, given the text before it, produce exactly its digits and then ','?

    Greedy decoding gets a number right if and only if, at each of the number's positions, the
    argmax given the *true* text so far is the true next token (if every pick is right, the text
    it sees is the true text). So one teacher-forced forward pass scores many numbers at once,
    with no sampling loop. Each window starts at the comma before a predecessor (or at the
    text's start), so the model sees the whole previous number and knows where it begins, and
    holds as many following numbers as fit in block_size; each number is scored in exactly one.

    starts_at_number: True when data[0] is the first digit of a number (the whole text);
    False for a slice such as the validation split, whose first number may be cut off."""

    def __init__(self, data, block_size, starts_at_number=False):
        self.data, self.block_size = data, block_size
        text = Tokenizer().decode(data)
        commas = (data == 0).nonzero().squeeze(1).tolist()
        starts = ([0] if starts_at_number else []) + [c + 1 for c in commas]
        numbers = text.split(",")[0 if starts_at_number else 1:]
        if numbers and numbers[-1] == "":  # text ended with a comma: no number after it
            starts, numbers = starts[:-1], numbers[:-1]
        if len(numbers) < 2:
            raise ValueError(f"only {len(numbers)} complete number(s) in the data: nothing to score")
        n = len(numbers)
        # last[k]: position of number k's last target token (its comma, or its last digit at the end)
        last = [s + len(num) for s, num in zip(starts, numbers)]
        last[-1] = min(last[-1], len(data) - 1)
        # Greedy cover: a window opens just before number p and scores p+1 .. k, the last that fits.
        ws, first, final, p = [], [], [], 0
        while p < n - 1:
            w = max(starts[p] - 1, 0)
            k = bisect.bisect_right(last, w + block_size) - 1
            if k <= p:
                raise ValueError(f"block_size={block_size} cannot hold a number and its successor "
                                 f"(,{numbers[p]},{numbers[p + 1]},); use a larger block_size")
            ws.append(w), first.append(p + 1), final.append(k)
            p = k
        dev = data.device
        self.ws, self.first, self.final = (torch.tensor(v, device=dev) for v in (ws, first, final))
        # number_at[i]: index of the number that text position i belongs to (a comma belongs to
        # the number before it); -1 past the end, where windows are padded.
        pad = block_size + 1
        self.number_at = torch.full((len(data) + pad,), -1, dtype=torch.long, device=dev)
        self.number_at[starts[0]:len(data)] = torch.searchsorted(
            torch.tensor(starts, device=dev), torch.arange(starts[0], len(data), device=dev), right=True) - 1
        self.padded = torch.cat([data, torch.zeros(pad, dtype=data.dtype, device=dev)])
        self.numbers = numbers
        self.lengths = torch.tensor([len(s) for s in numbers])
        self.carries = torch.tensor([len(s) - len(s.rstrip("0")) for s in numbers])  # trailing zeros
        self.starts, self.last = starts, last

    def context(self, k):
        """The tokens the metric shows the model before number k: its window, up to number k."""
        w = bisect.bisect_left(self.final.tolist(), k)
        return self.data[int(self.ws[w]):self.starts[k]]

    @torch.no_grad()
    def __call__(self, model, batch_size=512, max_failures=5):
        """Score every number. model(x) must return (logits, loss) with logits of shape (B, T, V)."""
        was_training = model.training
        model.eval()
        dev, T = self.padded.device, self.block_size
        wrong = torch.zeros(len(self.numbers), dtype=torch.bool, device=dev)
        picked = torch.zeros(len(self.padded), dtype=torch.long, device=dev)  # argmax per position
        offsets = torch.arange(T, device=dev)
        for i in range(0, len(self.ws), batch_size):
            pos = self.ws[i:i + batch_size, None] + offsets               # (B, T) input positions
            x, y = self.padded[pos], self.padded[pos + 1]                  # (B, T), (B, T)
            number = self.number_at[pos + 1]                               # (B, T) whose token y is
            scored = (number >= self.first[i:i + batch_size, None]) & (number <= self.final[i:i + batch_size, None])
            logits, _ = model(x)                                           # (B, T, V)
            pred = logits.argmax(dim=-1)                                   # (B, T)
            wrong[number[scored & (pred != y)]] = True
            picked[pos[scored] + 1] = pred[scored]
        model.train(was_training)
        return CountingResult(self, wrong[1:].cpu(), picked.cpu(), max_failures)


def percent(correct, total, decimals=3):
    """correct/total as a percentage that reads 100% only when nothing is wrong: 999,997 of
    999,999 is 99.9998%, which plain rounding would print as 100.000%; this prints 99.999%."""
    p = 100 * correct / total
    if correct < total:
        p = min(p, 100 - 10 ** -decimals)
    return f"{p:.{decimals}f}%"


class CountingResult:
    """Accuracy overall, per carry class (trailing zeros of the target) and per digit length."""

    def __init__(self, ev, wrong, picked, max_failures):
        ok = ~wrong  # for numbers 1 .. n-1: number 0 of the data has no predecessor to count from
        self.ok = ok
        self.total, self.correct = len(ok), int(ok.sum())
        self.accuracy = self.correct / self.total
        self.by_carry = {int(c): (int(ok[ev.carries[1:] == c].sum()), int((ev.carries[1:] == c).sum()))
                         for c in ev.carries[1:].unique()}
        self.by_length = {int(n): (int(ok[ev.lengths[1:] == n].sum()), int((ev.lengths[1:] == n).sum()))
                          for n in ev.lengths[1:].unique()}
        tok = Tokenizer()
        self.failures = [f"{ev.numbers[k]} -> {ev.numbers[k + 1]}, argmax gave "
                         f"{tok.decode(picked[ev.starts[k + 1]:ev.last[k + 1] + 1])!r}"
                         for k in wrong.nonzero().squeeze(1)[:max_failures].tolist()]

    def summary(self):
        lines = [f"counting accuracy {percent(self.correct, self.total)} ({self.correct}/{self.total})"]
        for name, table in (("carry (trailing zeros)", self.by_carry), ("digits", self.by_length)):
            lines.append(f"  by {name}: " + ", ".join(f"{k}: {percent(c, t, 2)} of {t}"
                                                      for k, (c, t) in sorted(table.items())))
        lines += [f"  wrong: {f}" for f in self.failures]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Command-line settings and the device, shared by bigram.py and gpt.py

def fail(message):
    """Bad input: one line that names the problem and the fix, exit code 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def pick_device(name="auto"):
    """auto: CUDA if present, else Apple's MPS, else the CPU."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def parse_settings(argv, defaults):
    """Apply --key=value overrides to a script's defaults, each converted to its default's type.
    Returns the settings (read as s.n_layer) and the set of keys given on the command line."""
    settings, given = dict(defaults), set()
    for arg in argv:
        key, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not eq:
            fail(f"cannot read {arg!r}: write settings as --key=value, e.g. --max_iters=2000")
        if key not in defaults:
            fail(f"unknown setting --{key}; valid settings: {' '.join('--' + k for k in defaults)}")
        kind = type(defaults[key])
        try:
            if kind is bool:
                settings[key] = {"true": True, "1": True, "false": False, "0": False}[value.lower()]
            else:
                settings[key] = kind(value)
        except (KeyError, ValueError):
            fail(f"--{key}={value} is not a valid {kind.__name__}; e.g. --{key}={defaults[key]}")
        given.add(key)
    return SimpleNamespace(**settings), given


if __name__ == "__main__":
    t0 = time.perf_counter()
    tok, train_data, val_data = load_data()
    elapsed = time.perf_counter() - t0
    print(f"text + tokens ready in {elapsed:.2f}s: {len(train_data) + len(val_data):,} tokens, "
          f"vocab {tok.vocab!r} (size {tok.vocab_size})")
    print(f"train {len(train_data):,} tokens, starts {tok.decode(train_data[:24])!r}")
    print(f"val   {len(val_data):,} tokens, starts {tok.decode(val_data[:24])!r}, "
          f"ends {tok.decode(val_data[-20:])!r}")
    ev = CountingEval(val_data, block_size=32)
    print(f"held-out numbers to count: {len(ev.numbers) - 1:,} ({ev.numbers[1]} .. {ev.numbers[-1]}), "
          f"in {len(ev.ws):,} windows of 32 tokens")
