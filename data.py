"""
The task shared by bigram.py and gpt.py: the text ",0,1,2,...,999999,", where every digit and
the comma is a token and every number stands between two commas, the first one included (a
comma says "a number starts here"); the Tokenizer, the train/val split, get_batch, StepSampler
(the rare steps far more often than the text has them); the exact checks (CountingEval, the
numbers past the text, greedy counting, and the report a run ends with); and the --key=value
settings that every script takes.
"""
import math
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import torch

VOCAB = ",0123456789"  # ',' -> 0, '0' -> 1, ..., '9' -> 10 (the tutorial's mapping)
COMMA, ZERO, NINE = 0, 1, 10


def counting_text(stop, start=0):
    """The numbers start .. stop-1, each followed by a comma: '0,1,2,' for stop=3."""
    return "".join(f"{n}," for n in range(start, stop))


class Tokenizer:
    """Characters <-> token ids, stored as uint8 (11 symbols fit a byte). Encoding maps each byte
    through a 256-entry table in C (bytes.translate): a million numbers in a fraction of a
    second."""

    def __init__(self, vocab=VOCAB):
        self.vocab, self.vocab_size = vocab, len(vocab)
        self.table = bytes(vocab.find(chr(b)) % 256 for b in range(256))  # 255: not in vocab

    def encode_tensor(self, string):
        """str -> 1-D uint8 tensor of token ids; ValueError on a character not in the vocab."""
        ids = bytearray(string.encode("ascii", errors="replace").translate(self.table))
        if 255 in ids:
            raise ValueError(f"character {string[ids.index(255)]!r} is not in the vocabulary "
                             f"{self.vocab!r}")
        return torch.frombuffer(ids, dtype=torch.uint8) if ids else torch.zeros(0).byte()

    def encode(self, string):
        """str -> list[int]"""
        return self.encode_tensor(string).tolist()

    def decode(self, ids):
        """list[int] or tensor of ids -> str"""
        return "".join(self.vocab[i] for i in torch.as_tensor(ids).tolist())


def load_data(max_num=1_000_000, val_frac=0.1):
    """The text ',0,1,...,max_num-1,' as token ids, split as the tutorial does: the last val_frac
    of the characters is validation. Returns (tokenizer, train_data, val_data)."""
    tok = Tokenizer()
    # a million numbers at a time: one Python string of ten million numbers takes GBs
    data = torch.cat([tok.encode_tensor(",")]
                     + [tok.encode_tensor(counting_text(min(lo + 10**6, max_num), lo))
                        for lo in range(0, max_num, 10**6)])
    n_val = int(len(data) * val_frac)
    return tok, data[:-n_val], data[-n_val:]


def get_batch(data, batch_size, block_size, device, generator=None, sampler=None):
    """Random windows: x is block_size tokens, y the same window shifted by one, so y[b, t] is
    the token after x[b, :t+1], or -1 where it is not scored. Windows start uniformly at random,
    or where `sampler` (a StepSampler) puts them; the starts are drawn on the CPU, so a seed
    gives the same batches on every device."""
    if sampler is None:
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    else:
        ix = sampler(batch_size, generator)
    if data.is_cuda:  # copied from pinned memory, the starts do not make the CPU wait for the GPU
        ix = ix.pin_memory()
    offsets = torch.arange(block_size, device=data.device)
    pos = ix.to(data.device, non_blocking=data.is_cuda)[:, None] + offsets            # (B, T)
    x, y = data[pos].to(device, torch.long), data[pos + 1].to(device, torch.long)  # (B, T) each
    # nothing in the window says what its first whole number is (the number before it is cut
    # off), so its digits, its comma and the part-number before it are not scored: target -1
    y[(x == COMMA).cumsum(dim=1) < 2] = -1
    return x, y


def encode_prompt(text):
    """A prompt is the start of a count, read as the text is read: after a comma, which tells
    the model that a number begins with the prompt's first digit. (1-D tensor of token ids.)"""
    return torch.tensor(Tokenizer().encode("," + text.removeprefix(",")))


def trailing(data, ends, length, token):
    """How many times `token` ends each number (of length[i] digits, before comma ends[i])."""
    count = torch.zeros_like(length)
    run = torch.ones_like(length, dtype=torch.bool)
    for k in range(1, int(length.max()) + 1):
        run &= (k <= length) & (data[ends - k] == token)
        count += run
    return count


class StepSampler:
    """Window starts that show the rare steps n -> n+1 far more often than the text does: 9999 ->
    10000 comes once per ten thousand numbers, 99 -> 100 once. Each window is centred on a step
    drawn by its *kind* (n's digits, 9s and trailing 9s, whether n is the first of its length, the
    trailing 9s of n+1), a kind of c steps with probability proportional to c**alpha (1: the text's
    own mix, 0: every kind alike; XLM-R balances its languages so, with 0.3). The window shows the
    comma before n and the first digit of n+1; half of them then move on to the next comma, to
    begin at a number as a prompt does. The tables live on the CPU, as the random numbers do."""

    def __init__(self, data, block_size, alpha=0.3):
        data = data.cpu()
        self.commas = commas = (data == COMMA).nonzero().squeeze(1)  # number i: commas[i..i+1]
        length = commas[1:] - commas[:-1] - 1
        nines = trailing(data, commas[1:], length, NINE)
        seen = torch.cumsum(data == NINE, 0)
        all_nines = seen[commas[1:]] - seen[commas[:-1]]  # 9s anywhere in the number
        # n_i is the first number of its length (10, 100, ...): its places follow a shorter number
        first = torch.cat([torch.ones(1, dtype=torch.long), (length[1:] != length[:-1]).long()])
        kind = (first * 65536 + length * 4096 + all_nines * 256 + nines * 16)[:-1] + nines[1:]
        _, kind_of_step, count = torch.unique(kind, return_inverse=True, return_counts=True)
        self.kind_p = count.float() ** alpha / (count.float() ** alpha).sum()  # (kinds,)
        self.steps_by_kind = torch.argsort(kind_of_step, stable=True)  # each kind's steps together
        self.kind_first, self.kind_count = torch.cumsum(count, 0) - count, count
        last_start = len(data) - block_size - 1
        self.lo = (commas[1:-1] + 1 - block_size).clamp(0, last_start)  # shows n+1's first digit
        self.hi = commas[:-2].clamp(max=last_start).maximum(self.lo)  # and shows the comma before n

    def __call__(self, batch_size, generator=None):
        kind = torch.multinomial(self.kind_p, batch_size, replacement=True, generator=generator)
        within = torch.randint(1 << 62, (batch_size,), generator=generator) % self.kind_count[kind]
        step = self.steps_by_kind[self.kind_first[kind] + within]
        lo, hi = self.lo[step], self.hi[step]
        start = lo + torch.randint(1 << 62, (batch_size,), generator=generator) % (hi - lo + 1)
        # half of them begin at a number: the first comma at or after the start (hi is one)
        at_number = self.commas[torch.searchsorted(self.commas, start)].minimum(hi)
        snap = torch.randint(2, (batch_size,), generator=generator).bool()
        return torch.where(snap, at_number, start)


class Progress:
    """A long check says how far it is: one line that updates on a terminal, a line every ten
    seconds when the output goes to a file or a pipe."""

    def __init__(self, label):
        self.label, self.t0, self.shown, self.tty = label, time.perf_counter(), 0, os.isatty(1)

    def __call__(self, share):
        seconds = time.perf_counter() - self.t0
        if self.label and seconds - self.shown >= (0.5 if self.tty else 10):
            self.shown = seconds
            line = f"{self.label}: {share:.0%} ({seconds:.0f}s)"
            print("\r" + line if self.tty else line, end="" if self.tty else "\n", flush=True)
        if share == 1 and self.tty and self.shown:
            print("\r\033[K", end="", flush=True)  # clear the line for the result


class CountingEval:
    """Exact counting accuracy: for every number in `data` whose predecessor is whole in it, does
    greedy decoding, given the text before it, write exactly its digits and then ','?

    Greedy decoding gets a number right if and only if at each of its positions the argmax, given
    the *true* text so far, is the true next token (if every pick is right, the text it sees is
    the true text). So one teacher-forced pass scores many numbers at once. Each window starts at
    the comma before a number p, shows p whole, and scores numbers after p. Two layouts:
    - tiled (the default): the windows follow one another, each scoring the next `per_window`
      numbers (3 six-digit numbers in 32 tokens), so every number is scored once;
    - every_start: a window at every number p, as the prompt `p,` shows it, for block_size tokens,
      as generation from that prompt sees it before it drops context: p+1, p+2, p+3 and the first
      digits of p+4 for six digits. A number is right only if every window that writes any of it
      writes it right; these are all the windows that generation ever shows the model."""

    def __init__(self, data, block_size, every_start=False):
        self.data = data
        self.commas = (data == COMMA).nonzero().squeeze(1)  # number i: commas[i]..commas[i+1]
        self.n = n = len(self.commas) - 1                    # whole numbers in data
        if n < 2:
            raise ValueError(f"only {max(n, 0)} whole number(s) in the data: nothing to score")
        self.length = (self.commas[1:] - self.commas[:-1] - 1).cpu()
        longest = int(self.length.max()) + 1                 # a number and its comma
        self.per_window = block_size // longest - 1
        if self.per_window < 1:
            raise ValueError(f"block_size={block_size} cannot hold 2 numbers of {longest - 1} "
                             f"digits and their commas; use a larger block_size")
        # window w scores numbers first[w] .. last[w]; it starts at the comma before first[w] - 1
        self.first = torch.arange(1, n, 1 if every_start else self.per_window, device=data.device)
        self.ws = self.commas[self.first - 1]
        if every_start:  # the number of the window's last target, ws + block_size, perhaps in part
            last = torch.searchsorted(self.commas, self.ws + block_size) - 1
        else:
            last = self.first + self.per_window - 1
        self.last = last.clamp(max=n - 1)
        # the inputs: the whole window, or up to the last digit of last[w]
        self.T = block_size if every_start else int((self.commas[self.last + 1] - self.ws).max())
        self.padded = torch.cat([data, torch.zeros(self.T, dtype=data.dtype, device=data.device)])
        self.carries = trailing(data, self.commas[1:], self.length.to(data.device), ZERO).cpu()

    def number(self, k):
        """Number k of the data, as text."""
        return Tokenizer().decode(self.data[self.commas[k] + 1:self.commas[k + 1]])

    def batches(self, batch_size, first=0, step=1):
        """The windows, batch_size at a time, batches first, first+step, ...: (pos (B, T) input
        positions, number (B, T) the number whose digit or comma each target pos+1 is, scored
        (B, T) whether this window scores that target)."""
        offsets = torch.arange(self.T, device=self.padded.device)
        for i in range(first * batch_size, len(self.ws), step * batch_size):
            pos = self.ws[i:i + batch_size, None] + offsets
            number = torch.searchsorted(self.commas, pos + 1) - 1
            scored = (number >= self.first[i:i + batch_size, None]) \
                & (number <= self.last[i:i + batch_size, None])
            yield pos, number, scored

    def score(self, model, batch_size, k, streams, wrong, amp, progress, stop):
        """Batches k, k+streams, ... (one thread's share): count each wrong number in wrong[k],
        return each batch's smallest margin. It never waits for the device: what it finds is read
        at the end. amp: the caller's autocast dtype (None: off), which a thread does not inherit;
        stop: once not empty, stop."""
        margins, device = [], self.padded.device.type
        with torch.inference_mode(), torch.autocast(device, amp or torch.bfloat16, amp is not None):
            for pos, number, scored in self.batches(batch_size, k, streams):   # (B, T) each
                if stop:
                    break
                x, y = self.padded[pos].long(), self.padded[pos + 1].long()    # (B, T) each
                logits = model(x)[0].float()                                   # (B, T, V)
                # the margin: the right token's logit minus the best wrong one's
                right = logits.gather(-1, y[..., None]).squeeze(-1)
                best_wrong = logits.scatter(-1, y[..., None], float("-inf")).max(-1).values
                margins.append((right - best_wrong).masked_fill(~scored, float("inf")).min())
                bad = scored & (logits.argmax(dim=-1) != y)                    # (B, T)
                wrong[k].index_add_(0, number.flatten(), bad.flatten().int())  # [number[bad]] += 1
                if k == 0:
                    progress(len(margins) * streams * batch_size / len(self.ws))
        return margins

    def __call__(self, model, batch_size=0, max_failures=5, label=""):
        """Score every number; model(x) must return (logits (B, T, V), loss). label: show progress
        under this name. On a CPU, up to 4 streams of batches, each on its share of the cores: a
        batch's small operations gain little from being split over cores (2 cores, 2 streams of
        1 thread each: 1.7x faster than 1 of 2); more streams would wait for Python's lock."""
        device = self.padded.device.type
        batch_size = batch_size or (128 if device == "cpu" else 4096)  # 32, 64, 256 slower here
        threads = torch.get_num_threads()
        streams = min(threads, 4) if device == "cpu" else 1
        amp = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        wrong = torch.zeros(streams, self.n + 1, dtype=torch.int32, device=self.padded.device)
        shown, was_training = Progress(label), model.training
        model.eval()
        torch.set_num_threads(threads // streams)
        try:
            with ThreadPoolExecutor(streams) as pool:
                stop = []
                work = [pool.submit(self.score, model, batch_size, k, streams, wrong, amp, shown,
                                    stop) for k in range(streams)]
                try:
                    margins = [m for w in work for m in w.result()]
                except KeyboardInterrupt:  # Ctrl-C: the other streams end at their next batch
                    stop.append(True)
                    raise
        finally:
            torch.set_num_threads(threads)
        shown(1)
        wrong = wrong.sum(0)
        with torch.inference_mode():
            failures = [self.failure(model, int(k))
                        for k in wrong[:self.n].nonzero()[:max_failures]]
        model.train(was_training)
        return CountingResult(wrong[1:self.n].cpu() == 0, self.carries[1:self.n],
                              self.length[1:self.n], failures, float(torch.stack(margins).min()))

    def failure(self, model, k):
        """What the first window that writes number k wrong wrote for it."""
        start, end = int(self.commas[k]), int(self.commas[k + 1])
        for ws in self.ws[(self.first <= k) & (self.last >= k)].tolist():  # windows that score k
            pred = model(self.padded[ws:ws + self.T][None].long())[0][0].argmax(dim=-1)  # (T,)
            got = pred[start - ws:end - ws].tolist()  # position t predicts token t+1
            if got != self.data[start + 1:start + 1 + len(got)].tolist():
                return (f"{Tokenizer().decode(self.data[ws:start + 1])} -> {self.number(k)}, "
                        f"argmax gave {Tokenizer().decode(got)!r}")


def beyond_spans(max_num):
    """The numbers past a text that ends at max_num-1, as (first, stop) ranges, each counted on its
    own: from max_num on for a tenth of the next power of ten (1,000,000..1,099,999), begun ten
    numbers earlier so that windows from the text reach max_num; then a few numbers around every
    later multiple of that tenth (1,100,000, ..., 9,900,000): carries into the top digits. And
    the stretch: the step to one digit longer still (9,999,999 -> 10,000,000)."""
    unit = 10 ** len(str(max_num - 1))  # the first number one digit longer than the text's
    tenth = max(unit // 10, 1)
    spans = [(max(max_num - 10, 0), max_num + tenth)]
    first = -(-(max_num + tenth) // tenth) * tenth
    spans += [(c - 3, c + 3) for c in range(first, 10 * unit, tenth)]
    return spans, (10 * unit - 3, 10 * unit + 3)


class SpansEval:
    """CountingEval from every start over several counts (numbers the model never saw), as one."""

    def __init__(self, spans, block_size, device="cpu"):
        self.evals = [CountingEval(Tokenizer().encode_tensor("," + counting_text(stop, first))
                                   .to(device), block_size, every_start=True)
                      for first, stop in spans]

    def __call__(self, model, label=""):
        rs = [ev(model, label=label) for ev in self.evals]
        ok, carries, length = (torch.cat([getattr(r, k) for r in rs])
                               for k in ("ok", "carries", "length"))
        return CountingResult(ok, carries, length, [f for r in rs for f in r.failures],
                              min(r.margin for r in rs))


def percent(correct, total, decimals=3):
    """correct/total as a percentage that reads 100% only when nothing is wrong (999,997 of
    999,999 prints 99.999%, not the 100.000% that rounding gives)."""
    p = 100 * correct / total
    if correct < total:
        p = min(p, 100 - 10 ** -decimals)
    return f"{p:.{decimals}f}%"


class CountingResult:
    """Accuracy overall, per carry class (trailing zeros of the number) and per digit length, of
    the numbers whose ok (bool) and carries and length (int) are given."""

    def __init__(self, ok, carries, length, failures, margin):
        self.ok, self.carries, self.length = ok, carries, length
        self.failures = [f for f in failures if f][:5]
        self.margin = margin  # the smallest (right logit - best wrong logit): > 0 when all right
        self.total, self.correct = len(ok), int(ok.sum())
        self.accuracy = self.correct / self.total
        self.by_carry, self.by_length = self.by_class(carries, ok), self.by_class(length, ok)

    @staticmethod
    def by_class(cls, ok):
        """{class: (right, total)} for each class present."""
        total = torch.bincount(cls)
        right = torch.bincount(cls[ok], minlength=len(total))
        return {c: (int(right[c]), int(total[c])) for c in total.nonzero().squeeze(1).tolist()}

    def summary(self):
        lines = [f"counting accuracy {percent(self.correct, self.total)} "
                 f"({self.correct}/{self.total}), margin {self.margin:.2f}"]
        for name, table in (("carry (trailing zeros)", self.by_carry), ("digits", self.by_length)):
            lines.append(f"  by {name}: " + ", ".join(f"{k}: {percent(c, t, 2)} of {t}"
                                                      for k, (c, t) in sorted(table.items())))
        return "\n".join(lines + [f"  wrong: {f}" for f in self.failures])


@torch.no_grad()
def count_on(model, prompts, wanted, ctx):
    """Greedy counting, one stream per batch row: stream i is prompted with the numbers
    prompts[i] (all as long) and should write wanted[i]. Returns each stream's first error
    (None where it is right) and the tokens written per second."""
    idx = torch.stack([encode_prompt(",".join(p) + ",") for p in prompts])       # (S, T)
    t = time.perf_counter()
    with ctx:
        out = model.generate(idx.to(next(model.parameters()).device),
                             max(len(",".join(w)) + 1 for w in wanted), temperature=0.0)
    out = out[:, idx.size(1):].cpu()  # waits for the device
    tokens_per_s = out.numel() / (time.perf_counter() - t)
    errors = []
    for row, w in zip(out, wanted):
        got = Tokenizer().decode(row).split(",")
        i = next((i for i, n in enumerate(w) if got[i] != n), None)
        errors.append(None if i is None else f"number #{i + 1} should be {w[i]}, got {got[i]!r}")
    return errors, tokens_per_s


class Checks:
    """The exact checks of one model: every held-out number (after the text before it in its
    window); the whole text from every start, as each prompt `k,` shows it; beyond the text,
    numbers past max_num-1 that the model never saw, and 9,999,999 -> 10,000,000 (stretch); the
    count from "0," to 1,000; and the long count, greedy streams far past the window, from
    held-out numbers and from the end of the text on past it."""

    def __init__(self, train_data, val_data, cfg):
        if len(val_data) < cfg.block_size + 2:
            fail(f"--max_num={cfg.max_num} is too small for a validation window; raise --max_num")
        self.held_out = ev = CountingEval(val_data, cfg.block_size)
        self.whole_text = self.beyond = self.stretch = None
        spans, stretch = beyond_spans(cfg.max_num)
        if cfg.full_check:
            self.whole_text = CountingEval(torch.cat([train_data, val_data]), cfg.block_size,
                                           every_start=True)
            if cfg.block_size >= 2 * len(str(stretch[1])) + 2:  # 10,000,000 and one more fit
                self.beyond = SpansEval(spans, cfg.block_size, val_data.device)
                self.stretch = SpansEval([stretch], cfg.block_size, val_data.device)
        self.from_zero = [str(n) for n in range(1, min(1000, cfg.max_num - 1) + 1)]
        # each stream: 3 numbers to prompt it, then per_stream to write; from held-out numbers of
        # the longest length, so that the prompts are as long (one batch)
        first = int((ev.length == ev.length.max()).nonzero()[0])
        per_stream = min(cfg.long_count // cfg.streams, ev.n - first - 3)
        room = ev.n - first - 3 - per_stream
        numbers = Tokenizer().decode(val_data).split(",")[1 + first:]  # numbers first, ...
        starts = [i * room // max(cfg.streams - 1, 1) for i in range(cfg.streams)]
        self.long = [(numbers[s:s + 3], numbers[s + 3:s + 3 + per_stream]) for s in starts
                     if per_stream > 0]
        m = cfg.max_num  # and one stream from the end of the text on past it
        self.past = ([str(n) for n in range(m - 3, m)], [str(n) for n in range(m, m + per_stream)])


@torch.no_grad()
def sample(model, cfg, ctx):
    """Go on from --prompt, as --temperature and --top_k say: the text, with the prompt."""
    idx = encode_prompt(cfg.prompt)[None].to(next(model.parameters()).device)
    with ctx:
        return Tokenizer().decode(model.generate(idx, cfg.max_new_tokens, cfg.temperature,
                                                 cfg.top_k)[0])


def report(model, checks, r, cfg, ctx):
    """Every check on the final weights (the last evaluation's results stand), then the model at
    work. Returns the names of the checks of the text that went wrong."""
    for name, check in (("held-out", checks.held_out), ("whole text", checks.whole_text),
                        ("beyond the text", checks.beyond), ("stretch", checks.stretch)):
        t, took = time.perf_counter(), ""
        if check is not None and name not in r:
            with ctx:
                r[name] = check(model, label=name)  # a long one shows its progress
            took = f" ({time.perf_counter() - t:.1f}s)"
        if name in r:
            print(f"{name}{took}: {r[name].summary()}")
    r["from 0"] = count_on(model, [["0"]], [checks.from_zero], ctx)[0][0]
    print(f"counting from 0, to {checks.from_zero[-1]}: {r['from 0'] or 'no error'}")
    if checks.long:
        errors, tokens_per_s = count_on(model, *zip(*checks.long), ctx)
        r["long count"] = next((e for e in errors if e), None)
        print(f"long count: {len(errors)} streams of {len(checks.long[0][1]):,} numbers on from "
              f"held-out numbers: {r['long count'] or 'no error'} ({tokens_per_s:,.0f} tokens/s)")
    if checks.long and checks.beyond:
        error = count_on(model, [checks.past[0]], [checks.past[1]], ctx)[0][0]
        print(f"long count past the text, on from {','.join(checks.past[0])},: "
              f"{error or 'no error'}")
    print(f"prompt {cfg.prompt!r} -> {sample(model, cfg, ctx)[1:]!r}")
    # the verdict is on the numbers of the text: what lies beyond it is measured, not promised
    wrong = [name for name in ("held-out", "whole text") if name in r and r[name].accuracy < 1]
    wrong += [name for name in ("from 0", "long count") if r.get(name)]
    margins = ", ".join(f"{name} {r[name].margin:.2f}" for name in ("held-out", "whole text")
                        if name in r)
    if wrong:
        print(f"error: the model does not count every number ({', '.join(wrong)} wrong; margin "
              f"{margins}); try another --seed or a longer run (--max_iters)", file=sys.stderr)
    else:
        print(f"it counts: every check right, margin {margins}")
    return wrong


# -----------------------------------------------------------------------------
# settings: each script keeps its defaults as plain variables at its top, between two '# ----'
# lines; --key=value on the command line overrides one, converted to the default's type

def fail(message, code=2):
    """One line that names the problem and the fix, and the exit code (2: bad input)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_settings(argv, defaults, path):
    """defaults with argv's --key=value overrides, each converted to its default's type. Returns
    the settings (read as s.n_layer) and the set of keys given. --help prints the settings block
    of the script at `path`."""
    if "-h" in argv or "--help" in argv:
        block = open(path).read().split("\n# ----")[1].split("\n", 1)[1]
        print(f"usage: python {os.path.basename(path)} [--key=value ...]\n\n{block}")
        sys.exit(0)
    s, given = SimpleNamespace(**defaults), set()
    for arg in argv:
        key, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not eq or key not in defaults or key in given:
            fail(f"cannot read {arg!r}: give each setting once, as --key=value with a key of "
                 f"{' '.join('--' + k for k in defaults)}")
        kind = type(defaults[key])
        try:
            v = {"true": True, "false": False}[value.lower()] if kind is bool else kind(value)
            if kind is float and not math.isfinite(v):
                raise ValueError
        except (KeyError, ValueError):
            fail(f"--{key}={value} is not a valid {kind.__name__}; e.g. --{key}={defaults[key]}")
        setattr(s, key, os.path.expanduser(v) if key == "out_dir" else v)
        given.add(key)
    return s, given


# (settings, test of each value, what it must be): every script checks the settings it has
RULES = [(("max_num",), lambda v: v >= 10, "at least 10"),
         (("n_layer", "n_head", "n_embd", "batch_size", "eval_interval", "log_interval",
           "eval_iters", "streams"),
          lambda v: v >= 1, "at least 1"),
         (("max_iters", "warmup_iters", "max_new_tokens", "long_count", "top_k", "min_lr",
           "weight_decay", "grad_clip", "place_shift"), lambda v: v >= 0, "0 or more"),
         (("seed",), lambda v: 0 <= v < 2**63, "from 0 to 2**63-1"),
         (("dropout", "place_dropout", "label_smoothing", "ema_decay"), lambda v: 0 <= v < 1,
          "in [0, 1)"),
         (("shift_share", "window_alpha"), lambda v: 0 <= v <= 1, "in [0, 1]"),
         (("learning_rate",), lambda v: 0 < v <= 1, "above 0 and at most 1"),
         (("temperature",), lambda v: v == 0 or v >= 1e-3, "0 (greedy) or at least 0.001"),
         (("mode",), lambda v: v in ("train", "sample", "eval"), "train, sample or eval"),
         (("init_from",), lambda v: v in ("scratch", "resume"), "scratch or resume"),
         (("dtype",), lambda v: v in ("auto", "float32", "bfloat16"), "auto, float32 or bfloat16")]


def pick_device(name):
    """auto: CUDA if present, else Apple's MPS, else the CPU; a named device must be there."""
    device = name if name != "auto" else "cuda" if torch.cuda.is_available() \
        else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        fail(f"--device={name} is not on this machine ({type(e).__name__}); try auto")
    return device


def check_settings(s, defaults):
    """The rules, and what settings must be together: a bad one is one line, exit 2, before any
    work."""
    for keys, ok, must in RULES:
        for key in keys:
            if key in defaults and not ok(getattr(s, key)):
                fail(f"--{key}={getattr(s, key)} must be {must}; the default is {defaults[key]}")
    longest = len(str(s.max_num - 1)) + 1 if "max_num" in defaults else 0  # a number, a comma
    if "block_size" in defaults and s.block_size < 2 * longest:  # n and n+1 fill a window
        fail(f"--block_size={s.block_size} cannot hold two numbers of {longest - 1} digits; use "
             f"--block_size={2 * longest} or more, or a smaller --max_num")
    if "n_head" in defaults and s.n_embd % s.n_head:
        fail(f"--n_embd={s.n_embd} must be a multiple of --n_head={s.n_head}")
    if "prompt" in defaults and not re.fullmatch(r",?(0|[1-9]\d*)(,(0|[1-9]\d*))*,?", s.prompt):
        fail(f"--prompt={s.prompt!r} is not the start of a count: give whole numbers without "
             f"leading zeros, each followed by a comma, e.g. --prompt=41,42,")
