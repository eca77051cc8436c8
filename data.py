"""
The task shared by bigram.py and gpt.py: the text ",0,1,2,...,999999,", each digit and comma a
token, each number between two commas; the Tokenizer, the train/val split, get_batch and
StepSampler; the exact checks and the report a run ends with; the --key=value settings.
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
    """Characters <-> token ids."""

    def __init__(self, vocab=VOCAB):
        self.vocab, self.vocab_size = vocab, len(vocab)
        self.table = bytes(vocab.find(chr(b)) % 256 for b in range(256))  # 255: not in vocab

    def encode(self, string):
        """str -> 1-D tensor of token ids, as bytes (11 symbols fit one), each mapped in C by a
        256-entry table (bytes.translate): a million numbers in a fraction of a second."""
        ids = bytearray(string.encode("ascii", errors="replace").translate(self.table))
        if 255 in ids:
            raise ValueError(f"{string[ids.index(255)]!r} is not in the vocabulary {self.vocab!r}")
        return torch.frombuffer(ids, dtype=torch.uint8) if ids else torch.zeros(0).byte()

    def decode(self, ids):
        """list[int] or tensor of ids -> str"""
        return "".join(self.vocab[i] for i in torch.as_tensor(ids).tolist())


def load_data(max_num=1_000_000, val_frac=0.1):
    """The text ',0,1,...,max_num-1,' as token ids, split as the tutorial does: the last val_frac
    of the characters is validation. Returns (tokenizer, train_data, val_data)."""
    tok = Tokenizer()
    # a million numbers at a time: one Python string of ten million numbers takes GBs
    data = torch.cat([tok.encode(",")]
                     + [tok.encode(counting_text(min(lo + 10**6, max_num), lo))
                        for lo in range(0, max_num, 10**6)])
    n_val = int(len(data) * val_frac)
    return tok, data[:-n_val], data[-n_val:]


def get_batch(data, batch_size, block_size, device, generator=None, sampler=None):
    """Random windows: x is block_size tokens, y the token after each (-1: not scored). They start
    uniformly at random, or where `sampler` (a StepSampler) puts them, drawn on the CPU: a seed
    gives the same batches on every device."""
    ix = (sampler(batch_size, generator) if sampler is not None
          else torch.randint(len(data) - block_size, (batch_size,), generator=generator))
    ix = ix.pin_memory() if data.is_cuda else ix  # from pinned memory the CPU need not wait
    offsets = torch.arange(block_size, device=data.device)
    pos = ix.to(data.device, non_blocking=data.is_cuda)[:, None] + offsets            # (B, T)
    x, y = data[pos].to(device, torch.long), data[pos + 1].to(device, torch.long)  # (B, T) each
    # nothing in the window says what its first whole number is (the number before it is cut
    # off), so its digits, its comma and the part-number before it are not scored: target -1
    y[(x == COMMA).cumsum(dim=1) < 2] = -1
    return x, y


def encode_prompt(text):
    """A prompt as the text has it, after a comma that says a number begins: 1-D token ids."""
    return Tokenizer().encode("," + text.removeprefix(",")).long()


def trailing(data, ends, length, token):
    """How many times `token` ends each number (of length[i] digits, before comma ends[i])."""
    count, run = torch.zeros_like(length), torch.ones_like(length, dtype=torch.bool)
    for k in range(1, int(length.max()) + 1):
        run &= (k <= length) & (data[ends - k] == token)
        count += run
    return count


class StepSampler:
    """Window starts that show the rare steps n -> n+1 (9999 -> 10000 comes once in ten thousand)
    far more often than the text does. Each window shows a step of a *kind* (n's digits, 9s and
    trailing 9s, whether n is the first of its length, n+1's trailing 9s) drawn with probability
    proportional to the kind's count**alpha (1: the text's mix, 0: every kind alike; XLM-R
    balances languages so, with 0.3): the comma before n to n+1's first digit; half then move on
    to the next comma, to begin at a number as a prompt does."""

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


class CountingEval:
    """Exact counting accuracy: for every number in `data` whose predecessor is whole in it, does
    greedy decoding, given the text before it, write exactly its digits and then ','?

    Greedy decoding gets a number right if and only if at each of its positions the argmax, given
    the *true* text so far, is the true next token (if every pick is right, the text it sees is
    the true text). So one teacher-forced pass scores many numbers at once. Each window starts at
    the comma before a number p and scores numbers after p. Tiled (the default), the windows
    follow one another, each scoring the next `per_window` numbers: every number once. With
    every_start, a window at every p scores what follows `p,` to its end (p+1 to p+4, the last in
    part, for six digits): all the windows generation ever shows the model; a number is right only
    if every window that writes it writes it right."""

    def __init__(self, data, block_size, every_start=False):
        self.data = data
        self.commas = (data == COMMA).nonzero().squeeze(1)  # number i: commas[i]..commas[i+1]
        self.n = n = len(self.commas) - 1                    # whole numbers in data
        self.length = (self.commas[1:] - self.commas[:-1] - 1).cpu()
        self.per_window = block_size // (int(self.length.max()) + 1) - 1  # after the first
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

    def batches(self, batch_size, first=0, step=1, label=""):
        """Batches first, first+step, ... of the windows, (B, T) each: the input positions pos, the
        number each target pos+1 is in, and whether the window scores it. label: progress, 10 s."""
        offsets, t0, shown = torch.arange(self.T, device=self.padded.device), time.perf_counter(), 0
        for i in range(first * batch_size, len(self.ws), step * batch_size):
            pos = self.ws[i:i + batch_size, None] + offsets
            number = torch.searchsorted(self.commas, pos + 1) - 1
            yield pos, number, (number >= self.first[i:i + batch_size, None]) \
                & (number <= self.last[i:i + batch_size, None])
            if label and time.perf_counter() - t0 - shown >= 10:  # never silent for long
                shown = time.perf_counter() - t0
                print(f"{label}: {i / len(self.ws):.0%} ({shown:.0f}s)", flush=True)

    def score(self, model, batch_size, k, streams, wrong, amp, label, stop):
        """Batches k, k+streams, ... (one thread's share): wrong[j] counts the wrong picks in number
        j; returns each batch's smallest margin, and never waits for the device. amp: the caller's
        autocast dtype, which a thread does not inherit; stop: stop once not empty."""
        margins, device = [], self.padded.device.type
        with torch.inference_mode(), torch.autocast(device, amp or torch.bfloat16, amp is not None):
            for pos, number, scored in self.batches(batch_size, k, streams, label):  # (B, T) each
                if stop:
                    break
                x, y = self.padded[pos].long(), self.padded[pos + 1].long()    # (B, T) each
                logits = model(x)[0].float()                                   # (B, T, V)
                # the margin: the right token's logit minus the best wrong one's
                right = logits.gather(-1, y[..., None]).squeeze(-1)
                best_wrong = logits.scatter(-1, y[..., None], float("-inf")).max(-1).values
                margins.append((right - best_wrong).masked_fill(~scored, float("inf")).min())
                bad = scored & (logits.argmax(dim=-1) != y)                    # (B, T)
                wrong.index_add_(0, number.flatten(), bad.flatten().int())  # [number[bad]] += 1
        return margins

    def __call__(self, model, batch_size=0, label=""):
        """Score every number; model(x) returns (logits (B, T, V), _). On a CPU, one stream of
        batches per core (at most 4: more would wait for Python's lock): a batch's small operations
        gain little from being split over cores (2 streams of 1 thread: 1.7x faster than 1 of 2)."""
        device, threads = self.padded.device.type, torch.get_num_threads()
        batch_size = batch_size or (128 if device == "cpu" else 4096)  # 32, 64, 256 slower here
        streams = min(threads, 4) if device == "cpu" else 1
        amp = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        wrong = torch.zeros(streams, self.n + 1, dtype=torch.int32, device=self.padded.device)
        was_training, stop = model.training, []
        model.eval()
        torch.set_num_threads(threads // streams)
        try:
            with ThreadPoolExecutor(streams) as pool:
                work = [pool.submit(self.score, model, batch_size, k, streams, wrong[k], amp,
                                    "" if k else label, stop) for k in range(streams)]
                try:
                    margins = [m for w in work for m in w.result()]
                except KeyboardInterrupt:  # Ctrl-C: the other streams end at their next batch
                    stop.append(True)
                    raise
        finally:
            torch.set_num_threads(threads)
            model.train(was_training)
        wrong = wrong.sum(0)[:self.n].cpu()
        failures = [f"{self.number(k - 1)} -> {self.number(k)}" for k in wrong.nonzero()[:5, 0]]
        return CountingResult(wrong[1:] == 0, self.carries[1:self.n], self.length[1:self.n],
                              failures, float(torch.stack(margins).min()))


def percent(correct, total, decimals=3):
    """correct/total in percent, 100% only when nothing is wrong (not 999,997 of 999,999)."""
    p = 100 * correct / total
    return f"{min(p, 100 - 10 ** -decimals) if correct < total else p:.{decimals}f}%"


class CountingResult:
    """Which numbers were right (ok), their carries (trailing zeros) and lengths, the first wrong
    ones, and the margin: the smallest right logit - best wrong one, > 0 when all are right."""

    def __init__(self, ok, carries, length, failures, margin):
        self.ok, self.carries, self.length, self.failures = ok, carries, length, failures[:5]
        self.margin, self.total, self.correct = margin, len(ok), int(ok.sum())
        self.accuracy = self.correct / self.total

    def summary(self):
        lines = [f"counting accuracy {percent(self.correct, self.total)} "
                 f"({self.correct}/{self.total}), margin {self.margin:.2f}"]
        for name, cls in (("carry (trailing zeros)", self.carries), ("digits", self.length)):
            total = torch.bincount(cls).tolist()
            right = torch.bincount(cls[self.ok], minlength=len(total)).tolist()
            lines.append(f"  by {name}: " + ", ".join(f"{k}: {percent(c, t, 2)} of {t}"
                                                      for k, (c, t) in enumerate(zip(right, total))
                                                      if t))
        return "\n".join(lines + [f"  wrong: {f}" for f in self.failures])


def count_on(model, starts, shown, count, ctx):
    """Greedy counting, a stream per start s (one batch): shown the `shown` numbers from s on (all
    as long), it must write the `count` after them. Returns the first error, or None."""
    idx = torch.stack([encode_prompt(",".join(map(str, range(s, s + shown))) + ",")
                       for s in starts]).to(next(model.parameters()).device)     # (S, T)
    wanted = [[str(n) for n in range(s + shown, s + shown + count)] for s in starts]
    with ctx:
        out = model.generate(idx, max(len(",".join(w)) + 1 for w in wanted), temperature=0.0)
    for row, w in zip(out[:, idx.size(1):], wanted):
        got = Tokenizer().decode(row).split(",")
        i = next((i for i, n in enumerate(w) if got[i] != n), None)
        if i is not None:
            return f"number #{i + 1} from {w[0]} on should be {w[i]}, got {got[i]!r}"


def sample(model, cfg, ctx):
    """Go on from --prompt, as --temperature and --top_k say: the text, with the prompt."""
    idx = encode_prompt(cfg.prompt)[None].to(next(model.parameters()).device)
    with ctx:
        return Tokenizer().decode(model.generate(idx, cfg.max_new_tokens, cfg.temperature,
                                                 cfg.top_k)[0])


def report(model, r, held_out, train_data, val_data, cfg, ctx):
    """Every check of the final weights (r: the last evaluation's, which stand): held-out, the
    whole text from every start, the count from "0," and the long count, greedy streams far past
    the window; then a sample. Returns the names of the checks that went wrong."""
    checks = {"held-out": held_out}
    if cfg.full_check:
        checks["whole text"] = CountingEval(torch.cat([train_data, val_data]), cfg.block_size,
                                            every_start=True)
    for name, check in checks.items():
        t, took = time.perf_counter(), ""
        if name not in r:
            with ctx:
                r[name] = check(model, label=name)  # a long one shows its progress
            took = f" ({time.perf_counter() - t:.1f}s)"
        print(f"{name}{took}: {r[name].summary()}")
    r["from 0"] = count_on(model, [0], 1, min(1000, cfg.max_num - 1), ctx)
    print(f"counting from 0, to {min(1000, cfg.max_num - 1)}: {r['from 0'] or 'no error'}")
    # streams from held-out numbers of the text's longest length (as long: one batch), spread out
    m, first = cfg.max_num, max(cfg.max_num - held_out.n, 10 ** (len(str(cfg.max_num - 1)) - 1))
    per_stream = min(cfg.long_count // cfg.streams, m - first - 3)
    if per_stream > 0:
        starts = [first + i * (m - first - 3 - per_stream) // max(cfg.streams - 1, 1)
                  for i in range(cfg.streams)]
        r["long count"] = count_on(model, starts, 3, per_stream, ctx)
        print(f"long count: {cfg.streams} streams of {per_stream:,} numbers on from held-out "
              f"numbers: {r['long count'] or 'no error'}")
    print(f"prompt {cfg.prompt!r} -> {sample(model, cfg, ctx)[1:]!r}")
    wrong = [k for k in checks if r[k].accuracy < 1] + [k for k in ("from 0", "long count")
                                                        if r.get(k)]
    margins = ", ".join(f"{k} {r[k].margin:.2f}" for k in checks)
    if wrong:
        print(f"error: the model does not count every number ({', '.join(wrong)} wrong; margin "
              f"{margins}); try another --seed or a longer run (--max_iters)", file=sys.stderr)
    else:
        print(f"it counts: every check right, margin {margins}")
    return wrong


# Settings: each script's defaults are plain variables at its top, between two '# ----' lines ----
def fail(message, code=2):
    """One line that names the problem and the fix, and the exit code (2: bad input)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_settings(argv, defaults, path):
    """defaults with argv's --key=value overrides, as the defaults' types: the settings (s.n_layer)
    and the keys given. --help prints the settings block of the script at `path`."""
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
         (("n_layer", "n_head", "n_embd", "batch_size", "eval_interval", "eval_iters", "streams"),
          lambda v: v >= 1, "at least 1"),
         (("max_iters", "warmup_iters", "max_new_tokens", "long_count", "top_k", "min_lr",
           "weight_decay", "grad_clip", "place_shift"), lambda v: v >= 0, "0 or more"),
         (("dropout", "place_dropout", "label_smoothing", "ema_decay"), lambda v: 0 <= v < 1,
          "in [0, 1)"),
         (("seed",), lambda v: 0 <= v < 2**63, "from 0 to 2**63-1"),
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
    """The rules and what must go together: a bad setting is one line, exit 2, before any work."""
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
