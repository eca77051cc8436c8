"""
The task shared by bigram.py and gpt.py: a character-level model that learns to count.

The text is ",0,1,2,...,999999,": every digit and the comma is one token, and every number
stands between two commas, the first one included. That leading comma is the text's own
separator marking where the text begins: a window that starts with a comma tells the model that
a number starts right after it, and gpt.py puts one in front of every prompt for the same reason.

This file builds the text, the Tokenizer, the train/val split, get_batch (random training
windows), StepSampler (which windows: the rare steps far more often than the text has them)
and CountingEval (the exhaustive counting check, which scores every number exactly).

    python data.py               # prints the text, the vocabulary, the split and how long it takes
    python data.py --max_num=100 # the same for a shorter text (--help lists the settings)
"""
import sys
import time

import torch

# -----------------------------------------------------------------------------
# settings of `python data.py`, each can be overridden on the command line as --key=value
max_num = 1_000_000        # the text is ",0,1,2,...,max_num-1,"
block_size = 32            # the window of the held-out check
# -----------------------------------------------------------------------------

VOCAB = ",0123456789"  # ',' -> 0, '0' -> 1, ..., '9' -> 10 (the tutorial's mapping)
COMMA, ZERO, NINE = 0, 1, 10
VAL_FRAC = 0.1         # the last tenth of the text is validation


def counting_text(stop, start=0):
    """The numbers start .. stop-1, each followed by a comma: '0,1,2,' for stop=3."""
    return "".join(f"{n}," for n in range(start, stop))


def text_length(max_num):
    """Characters in the whole text ',0,1,...,max_num-1,' without building it."""
    chars, digits = 1, 1                                     # the leading comma
    while 10 ** (digits - 1) < max_num or digits == 1:
        lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), min(10 ** digits, max_num)
        chars += (hi - lo) * (digits + 1)                    # each number and its comma
        digits += 1
    return chars


def longest_number(max_num):
    """Characters of the text's longest number and its comma."""
    return len(str(max_num - 1)) + 1


class Tokenizer:
    """Characters <-> integer token ids. Encoding uses a 256-entry byte lookup table, so a
    million-number text is encoded in one tensor operation instead of a Python loop. Ids are
    stored as uint8: 11 symbols fit a byte, an eighth of the memory of int64."""

    def __init__(self, vocab=VOCAB):
        self.vocab = vocab
        self.stoi = {ch: i for i, ch in enumerate(vocab)}
        self.itos = {i: ch for i, ch in enumerate(vocab)}
        self.byte_to_id = torch.full((256,), 255, dtype=torch.uint8)  # 255 marks "not in vocab"
        self.byte_to_id[list(vocab.encode("ascii"))] = torch.arange(len(vocab), dtype=torch.uint8)
        self.id_to_byte = torch.tensor(list(vocab.encode("ascii")), dtype=torch.uint8)

    @property
    def vocab_size(self):
        return len(self.vocab)

    def encode_tensor(self, string):
        """str -> 1-D uint8 tensor of token ids; ValueError on a character not in the vocab."""
        raw = bytearray(string.encode("ascii", errors="replace"))  # non-ASCII -> '?', caught below
        if not raw:
            return torch.empty(0, dtype=torch.uint8)
        ids = self.byte_to_id[torch.frombuffer(raw, dtype=torch.uint8).long()]
        if (ids == 255).any():
            bad = next(ch for ch in string if ch not in self.stoi)
            raise ValueError(f"character {bad!r} is not in the vocabulary {self.vocab!r}; "
                             f"use only these characters")
        return ids

    def encode(self, string):
        """str -> list[int]"""
        return self.encode_tensor(string).tolist()

    def decode(self, ids):
        """list[int] or tensor of ids -> str. Raises ValueError on an id that is not a whole
        number from 0 to vocab_size-1 (indexing would otherwise wrap -1 around to '9')."""
        ids = torch.as_tensor(ids).cpu()
        if ids.numel() == 0:
            return ""
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be whole numbers, got "
                             f"{[f'{v:g}' for v in ids.flatten()[:5].tolist()]}")
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if len(bad):
            raise ValueError(f"token ids {bad.unique()[:5].tolist()} are not in "
                             f"0..{self.vocab_size - 1}")
        return bytes(self.id_to_byte[ids.long()].tolist()).decode("ascii")


def load_data(max_num=1_000_000, val_frac=VAL_FRAC):
    """Build the text and split it as the tutorial does: the last val_frac of the characters
    is validation, the rest is training. Returns (tokenizer, train_data, val_data)."""
    tok = Tokenizer()
    # encoded a million numbers at a time: one Python string of ten million numbers takes GBs
    data = torch.cat([tok.encode_tensor(",")]
                     + [tok.encode_tensor(counting_text(min(lo + 10**6, max_num), lo))
                        for lo in range(0, max_num, 10**6)])
    n_val = int(len(data) * val_frac)
    return tok, data[:-n_val], data[-n_val:]


def get_batch(data, batch_size, block_size, device, generator=None, sampler=None):
    """A batch of random windows: x is block_size tokens, y is the same window shifted by one,
    so y[b, t] is the token that follows x[b, :t+1], or -1 where it is not scored. Windows
    start uniformly at random, or where `sampler` (a StepSampler) puts them. The starts are drawn
    on the CPU, so a seed gives the same batches on every device; the windows are gathered where
    the data lives."""
    if sampler is None:
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    else:
        ix = sampler(batch_size, generator)
    pos = ix[:, None].to(data.device) + torch.arange(block_size, device=data.device)  # (B, T)
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
    """How many times `token` ends each number (the number before comma ends[i] has length[i]
    digits): trailing zeros, or trailing 9s."""
    count = torch.zeros_like(length)
    run = torch.ones_like(length, dtype=torch.bool)
    for k in range(1, int(length.max()) + 1):
        run &= (k <= length) & (data[ends - k] == token)
        count += run
    return count


class StepSampler:
    """Window starts that show the rare steps n -> n+1 far more often than the text does.

    Uniform windows show what the text is mostly made of: 6-digit numbers with no carry. The rare
    steps are the hard ones: 9999 -> 10000 changes five digits but happens once per ten thousand
    numbers, 99 -> 100 (a new length) happens once in the whole text, and the numbers 0..99 fill
    only the first 291 of its 6.9M characters. So each window is centred on a step n -> n+1 drawn by
    its *kind*: the digits of n, its 9s, its trailing 9s, whether it is the first number of its
    length, and the trailing 9s of n+1. Each of these marks a step the model must tell apart from a
    common one: 99989 -> 99990 from a new length (99999 -> 100000), 1000 -> 1001 (whose places
    follow 999's) from 1234 -> 1235, and 49998 -> 49999 from a carry by the last digit alone. A kind
    that holds a count c of the steps is drawn with probability proportional to c**alpha, then one
    of its steps uniformly. alpha=1 keeps the text's own mix; alpha=0 draws every kind equally
    often, so the single step 9 -> 10 would get as many windows as the training split's 419,903
    6-digit steps with no 9 in n or at the end of n+1 together; in between, the rare kinds are
    boosted without starving the common ones. (Multilingual language models balance their languages
    the same way: XLM-R samples them with alpha=0.3.) The window sits at a random offset that shows
    the comma before n and at least the first digit of n+1: a window may end inside n+1, as the
    window of a prompt `k,` ends inside k+4 (its first digits after a carry are written there too).
    Half the windows then move on to the next comma, so that they begin at a number, as a prompt
    does: a prompt `k,k+1,k+2,` puts the step k+2 -> k+3 at one place in the window, and the model
    must have been shown it there. `data` must start with a comma (the training split does). The
    tables live on the CPU, as the random numbers do."""

    def __init__(self, data, block_size, alpha=0.3):
        data = data.cpu()
        # number i lies between commas[i] and commas[i+1]
        self.commas = commas = (data == COMMA).nonzero().squeeze(1)
        length = commas[1:] - commas[:-1] - 1
        nines = trailing(data, commas[1:], length, NINE)
        seen = torch.cumsum(data == NINE, 0)
        all_nines = seen[commas[1:]] - seen[commas[:-1]]  # 9s anywhere in the number
        # n_i is the first number of its length (10, 100, ...): its places follow a shorter number
        first = torch.cat([torch.ones(1, dtype=torch.long), (length[1:] != length[:-1]).long()])
        # of each step n_i -> n_i+1: n_i's digits, 9s and trailing 9s, whether it is the first
        # of its length, and n_i+1's trailing 9s
        kind = (first * 65536 + length * 4096 + all_nines * 256 + nines * 16)[:-1] + nines[1:]
        _, kind_of_step, count = torch.unique(kind, return_inverse=True, return_counts=True)
        self.kind_p = count.float() ** alpha / (count.float() ** alpha).sum()  # (kinds,)
        # each kind's steps together
        self.steps_by_kind = torch.argsort(kind_of_step, stable=True)
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
    """Exhaustive counting accuracy: for every number in `data` whose predecessor is whole in it,
    does greedy decoding, given the text before it, write exactly its digits and then ','?

    Greedy decoding gets a number right if and only if, at each of the number's positions, the
    argmax given the *true* text so far is the true next token (if every pick is right, the text
    it sees is the true text). So one teacher-forced forward pass scores many numbers at once,
    with no sampling loop. Each window starts at the comma before a number p, which it shows
    whole, and scores numbers after p. Two layouts:
    - tiled (the default): the windows follow one another, each scoring the next `per_window`
      numbers (as many as block_size holds: 3 six-digit numbers in 32 tokens), so every number
      is scored once, after the numbers before it in its window;
    - every_start: a window starts at every number p, as the prompt `p,` does, and runs for
      block_size tokens, as generation from that prompt sees it before it first drops context;
      it scores every token it predicts after p: p+1, p+2, p+3 and the first three digits of
      p+4 for six digits (more numbers if shorter). So a number counts as right only if every
      window that writes any of it writes it right. Generation drops context so that its window
      again begins at a number (GPT.generate): these are all the windows it ever shows the model.
    The tables are tensors (no Python object per number), so the cost grows with the text."""

    def __init__(self, data, block_size, every_start=False):
        self.data = data
        # number i lies between commas[i] and commas[i+1]
        self.commas = (data == COMMA).nonzero().squeeze(1)
        n = len(self.commas) - 1                               # whole numbers in data
        if n < 2:
            raise ValueError(f"only {max(n, 0)} whole number(s) in the data: nothing to score")
        self.length = (self.commas[1:] - self.commas[:-1] - 1).cpu()
        longest = int(self.length.max()) + 1                   # a number and its comma
        self.per_window, self.n = block_size // longest - 1, n
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
        self.scores = int((self.last - self.first + 1).sum())  # (window, number) pairs scored
        self.padded = torch.cat([data, torch.zeros(self.T, dtype=data.dtype, device=data.device)])
        # trailing zeros
        self.carries = trailing(data, self.commas[1:], self.length.to(data.device), ZERO).cpu()

    def number(self, k):
        """Number k of the data, as text."""
        return Tokenizer().decode(self.data[self.commas[k] + 1:self.commas[k + 1]])

    def batches(self, batch_size):
        """The windows, batch_size at a time: (pos (B, T) input positions, number (B, T) the
        number whose digit or comma each target pos+1 is, scored (B, T) whether this window
        scores that target)."""
        offsets = torch.arange(self.T, device=self.padded.device)
        for i in range(0, len(self.ws), batch_size):
            pos = self.ws[i:i + batch_size, None] + offsets
            number = torch.searchsorted(self.commas, pos + 1) - 1
            scored = (number >= self.first[i:i + batch_size, None]) \
                & (number <= self.last[i:i + batch_size, None])
            yield pos, number, scored

    @torch.no_grad()
    def __call__(self, model, batch_size=512, max_failures=5, stop_at_wrong=False):
        """Score every number. model(x) must return (logits, loss) with logits of shape (B, T, V).
        stop_at_wrong: stop at the first batch with a wrong number, when only "all right?" matters;
        the result then holds the numbers scored so far."""
        was_training = model.training
        model.eval()
        wrong = torch.zeros(self.n, dtype=torch.bool, device=self.padded.device)
        failures = {}  # number -> what went wrong, for the first few wrong numbers
        margin = float("inf")
        for pos, number, scored in self.batches(batch_size):                  # (B, T) each
            x, y = self.padded[pos].long(), self.padded[pos + 1].long()        # (B, T) each
            logits, _ = model(x)                                               # (B, T, V)
            pred = logits.argmax(dim=-1)                                       # (B, T)
            # the margin: the right token's logit minus the best wrong one's
            logits = logits.float()
            right = logits.gather(-1, y[..., None]).squeeze(-1)
            best_wrong = logits.scatter(-1, y[..., None], float("-inf")).max(-1).values
            margin = min(margin, float((right - best_wrong)[scored].min()))
            bad = scored & (pred != y)                                         # (B, T)
            wrong[number[bad]] = True
            if len(failures) < max_failures and bad.any():
                for b, t in bad.nonzero().tolist():
                    if len(failures) == max_failures:
                        break
                    k = int(number[b, t])
                    if k not in failures:
                        failures[k] = self.failure(k, pos[b], pred[b])
            if stop_at_wrong and wrong.any():
                break
        model.train(was_training)
        scored_to = int(number[scored].max()) + 1  # numbers 1 .. scored_to-1 were scored
        return CountingResult(self, wrong[1:scored_to].cpu(), sorted(failures.items()), margin)

    def failure(self, k, pos, pred):
        """What one window (positions pos (T,), argmaxes pred (T,)) wrote for number k."""
        ws, start, end = int(pos[0]), int(self.commas[k]), int(self.commas[k + 1])
        tok = Tokenizer()
        return (f"{tok.decode(self.data[ws:start + 1])} -> {self.number(k)}, argmax gave "
                f"{tok.decode(pred[start - ws:end - ws])!r}")


def beyond_spans(max_num):
    """What the beyond-the-text check counts, for a text that ends at max_num-1, as (first, stop)
    ranges of numbers, each counted on its own: max_num on for a tenth of the next power of ten
    (1,000,000 .. 1,099,999 after 999,999), begun ten numbers earlier so that windows from the
    text's own numbers reach max_num; then a few numbers around every later multiple of that
    tenth below ten times it (1,100,000, 1,200,000, ..., 2,000,000, ..., 9,900,000): the carries
    into the top digits. Returns (spans, stretch): stretch is the step to one digit longer still
    (9,999,999 -> 10,000,000)."""
    unit = 10 ** len(str(max_num - 1))  # the first number one digit longer than the text's
    tenth = max(unit // 10, 1)
    spans = [(max(max_num - 10, 0), max_num + tenth)]
    first = -(-(max_num + tenth) // tenth) * tenth
    spans += [(c - 3, c + 3) for c in range(first, 10 * unit, tenth)]
    return spans, (10 * unit - 3, 10 * unit + 3)


class SpansEval:
    """CountingEval from every start over several separate counts (beyond_spans), as one
    result. The data is built here, past anything the model was trained on."""

    def __init__(self, spans, block_size, device="cpu"):
        tok = Tokenizer()
        self.evals = [CountingEval(tok.encode_tensor("," + counting_text(stop, first)).to(device),
                                   block_size, every_start=True) for first, stop in spans]
        self.spans = spans
        self.last = spans[-1][1] - 1                               # the last number it scores
        self.n = 1 + sum(ev.n - 1 for ev in self.evals)           # as CountingEval counts them

    def __call__(self, model):
        return CountingResult.combine([ev(model) for ev in self.evals])


def percent(correct, total, decimals=3):
    """correct/total as a percentage that reads 100% only when nothing is wrong: 999,997 of
    999,999 is 99.9998%, which plain rounding would print as 100.000%; this prints 99.999%."""
    p = 100 * correct / total
    if correct < total:
        p = min(p, 100 - 10 ** -decimals)
    return f"{p:.{decimals}f}%"


class CountingResult:
    """Accuracy overall, per carry class (trailing zeros of the number) and per digit length."""

    def __init__(self, ev, wrong, failures, margin=float("nan")):
        self.margin = margin  # the smallest (right logit - best wrong logit): > 0 when all right
        ok = ~wrong  # for numbers 1 .. n-1: number 0 of the data has no predecessor to count from
        self.ok = ok
        self.total, self.correct = len(ok), int(ok.sum())
        self.accuracy = self.correct / self.total
        self.by_carry = self.by_class(ev.carries[1:len(ok) + 1], ok)
        self.by_length = self.by_class(ev.length[1:len(ok) + 1], ok)
        self.failures = [message for _, message in failures]

    @classmethod
    def combine(cls, results):
        """One result for several checks, as if they were one."""
        r = cls.__new__(cls)
        r.ok = torch.cat([x.ok for x in results])
        r.total, r.correct = len(r.ok), int(r.ok.sum())
        r.accuracy = r.correct / r.total
        r.margin = min(x.margin for x in results)
        r.failures = [f for x in results for f in x.failures][:5]
        for name in ("by_carry", "by_length"):
            tables = [getattr(x, name) for x in results]
            setattr(r, name, {c: tuple(sum(t[c][i] for t in tables if c in t) for i in (0, 1))
                              for c in sorted(set().union(*tables))})
        return r

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
        lines += [f"  wrong: {f}" for f in self.failures]
        return "\n".join(lines)


if __name__ == "__main__":
    from settings import fail, parse_settings  # settings.py imports this file: only here
    cfg, _ = parse_settings(sys.argv[1:], {"max_num": max_num, "block_size": block_size},
                            __file__)
    t0 = time.perf_counter()
    tok, train_data, val_data = load_data(cfg.max_num)
    elapsed = time.perf_counter() - t0
    try:
        ev = CountingEval(val_data, cfg.block_size)
    except ValueError as e:  # the window is too short for two numbers
        fail(f"{e} (--max_num={cfg.max_num}, --block_size={cfg.block_size})")
    print(f"text + tokens ready in {elapsed:.2f}s: {len(train_data) + len(val_data):,} tokens, "
          f"vocab {tok.vocab!r} (size {tok.vocab_size})")
    print(f"train {len(train_data):,} tokens, starts {tok.decode(train_data[:24])!r}")
    print(f"val   {len(val_data):,} tokens, starts {tok.decode(val_data[:24])!r}, "
          f"ends {tok.decode(val_data[-20:])!r}")
    print(f"held-out numbers to count: {ev.n - 1:,} ({ev.number(1)} .. {ev.number(ev.n - 1)}), "
          f"in {len(ev.ws):,} windows of {ev.T} tokens")
