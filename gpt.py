"""
A character-level GPT that learns to count: the model, its training loop, evaluation and generation.

    python gpt.py                                 # train until it counts, then show it
    python gpt.py --n_layer=4 --learning_rate=1e-3  # any setting below as --key=value (see --help)
    python gpt.py --mode=sample --prompt=41,42,   # continue a prompt with the saved out/ckpt.pt
    python gpt.py --mode=eval                     # every exact check of the saved model
    python gpt.py --mode=attention --prompt=909998,909999,  # what each head looks at

The task (the text, the tokenizer, the batches, the counting check) lives in data.py; the
--key=value parsing, the setting checks and the device in settings.py.
"""
import copy
import math
import os
import re
import shlex
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from data import (CountingEval, SpansEval, StepSampler, Tokenizer, beyond_spans, get_batch,
                  load_data, longest_number, percent)
from settings import check_settings, fail, parse_settings, pick_device, pick_dtype

# -----------------------------------------------------------------------------
# default settings; each can be overridden on the command line as --key=value
# data
max_num = 1_000_000        # the text is ",0,1,2,...,max_num-1,"
# model
n_layer = 2
n_head = 4
n_embd = 64
block_size = 32            # context length in characters
dropout = 0.0
# training
batch_size = 64
window_alpha = 0.3         # 1 = uniform windows, as in the tutorial; lower = rare steps more often
max_iters = 4000           # length of the cosine schedule; stop_at_100 usually stops far sooner
learning_rate = 3e-3
min_lr = 0.0               # the cosine decay ends here
warmup_iters = 100
weight_decay = 0.5         # strong, to prefer the one rule that counts every number over shortcuts
ema_decay = 0.99           # evaluate, sample and save a moving average of the weights (0 = raw)
grad_clip = 1.0            # clip the gradient norm at this (0 = off)
eval_interval = 250        # evaluate (loss and exact counting checks) every this many steps
eval_iters = 20            # batches per loss estimate
stop_at_100 = True         # stop at the first evaluation where every check is right
max_seconds = 0.0          # stop after this much training time, not counting evaluation (0 = off)
# system
device = "auto"            # auto = cuda, else mps, else cpu
dtype = "auto"             # auto = bfloat16 where the GPU has it, else float16 on a GPU, float32
compile = False            # torch.compile the model
seed = 1337
out_dir = "out"            # the checkpoint goes to out_dir/ckpt.pt
init_from = "scratch"      # scratch, or resume from out_dir/ckpt.pt
# checks and generation: after training, or from the saved model with --mode
mode = "train"             # train, sample (go on from --prompt), eval (every check), attention
prompt = "0,"              # the start of a count: whole numbers, each followed by a comma
max_new_tokens = 100
temperature = 0.0          # 0 = greedy (always the most likely token)
top_k = 0                  # sample only from the k most likely tokens (0 = all)
full_check = True          # also check the count from 0, and every prompt k, of the whole text
long_count = 10_000        # count this many held-out numbers on, greedily, far past the window
streams = 20               # ... in this many streams at once
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if not k.startswith("_") and type(v) in (int, float, bool, str)}
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size")  # a checkpoint fixes these (and seed)
# this run's own, never taken from a checkpoint: what to do, where, on which machine
RUN_KEYS = ("mode", "init_from", "out_dir", "device", "dtype", "compile")


# ------------------------------------------------------------------------------------------
# The model

@dataclass
class GPTConfig:
    block_size: int = 32
    vocab_size: int = 11
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    comma: int = 0  # the token that ends a number: each digit's place is counted from it

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                             f"each head gets n_embd // n_head channels")


class KVCache:
    """The keys and values of every token generated so far, per layer, so that the next token
    costs one token's work instead of the whole context's. pos: how many tokens it holds."""

    def __init__(self, n_layer):
        self.k, self.v = [None] * n_layer, [None] * n_layer
        self.tokens = None  # every token so far: a token's place in its number depends on them

    @property
    def pos(self):
        return 0 if self.tokens is None else self.tokens.size(1)

    def add(self, layer, k, v):
        """Append one layer's new keys and values (B, n_head, T, head_size); return all of them."""
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


def digit_places(idx, comma):
    """Where each token stands in its number, counted both ways. (B, T) ids -> two (B, T).
    left: 1 for the first digit after a comma, 2 for the next, and so on; 0 for a comma.
    right, as the number before says (n+1 is as long as n, except after 9, 99, 999, ...):
    2 for the digit that would be the ones, 3 for the tens, and so on; 1 for a digit past the
    ones (the new digit of 99 -> 100); a comma gets the length of the number it ends, plus 2.
    0 where the window does not show it: before its first comma (both), and in the number after
    that one, whose predecessor it does not show (right)."""
    pos = torch.arange(1, idx.size(1) + 1, device=idx.device)                  # (T,) from 1
    last = torch.where(idx == comma, pos, 0).cummax(dim=1).values  # (B, T) last comma so far
    before = torch.gather(F.pad(last[:, :-1], (2, 0)), 1, last)    # (B, T) the comma before it
    left = torch.where(last > 0, pos - last, 0)
    length = last - before - 1                                     # the number before's digits
    right = torch.where(before > 0, length - left + 2, 0).clamp(min=0)  # 0 also: 2+ digits longer
    return left, right


class CausalSelfAttention(nn.Module):
    """Every position looks back at all earlier positions (never ahead) and takes a weighted
    average of what they offer. n_head heads do this in parallel, each on n_embd/n_head channels."""

    def __init__(self, config, layer):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # query, key, value for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)      # mixes the heads' outputs
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout, self.layer = config.n_head, config.dropout, layer

    def forward(self, x, cache=None, weights=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)                           # each (B, T, C)
        # split the channels into heads: (B, T, C) -> (B, n_head, T, head_size)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # generation: keep this step's keys/values, add the earlier ones
            k, v = cache.add(self.layer, k, v)                            # (B, n_head, T_all, hs)
        T_all = k.size(2)
        if weights is not None:
            # the attention written out, to keep its weights (the fused kernel does not return them)
            att = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))        # (B, n_head, T, T_all)
            future = torch.ones(T, T_all, dtype=torch.bool, device=x.device).triu(T_all - T + 1)
            att = F.softmax(att.masked_fill(future, float("-inf")), dim=-1)  # causal: no peeking
            weights.append(att)
            y = att @ v                                                  # (B, n_head, T, hs)
        else:
            # the same in one fused kernel (flash attention on a GPU). Generation feeds the cache
            # either the whole context or one new token, which may see every key: no mask then.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                   # merge heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The feed-forward part: each position thinks on its own about what attention gathered."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.relu(self.c_fc(x))))


class Block(nn.Module):
    """Communication (attention) then computation (MLP), each added to a residual stream and
    each reading a LayerNorm'ed copy of it (pre-norm), which keeps deep stacks trainable."""

    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, weights=None):
        x = x + self.attn(self.ln_1(x), cache, weights)
        x = x + self.mlp(self.ln_2(x))
        return x


def sample_next_token(logits, temperature=0.0, top_k=0):
    """(B, vocab_size) logits -> (B, 1) next tokens: the most likely one (temperature 0), or one
    drawn from the softmax at this temperature, among the top_k most likely (0 = all)."""
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature={temperature} must be 0 (greedy) or positive")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token -> vector
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # position -> vector
        self.wpl = nn.Embedding(config.block_size, config.n_embd)  # place from the left -> vector
        self.wpr = nn.Embedding(config.block_size + 1, config.n_embd)  # from the right -> vector
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)  # vector -> next-token logits
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: smaller init for what adds to the residual
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, cache=None, weights=None):
        """idx (B, T) token ids -> logits (B, T, vocab_size), and the mean cross-entropy loss
        against targets (B, T) if given. cache: a KVCache (generation); weights: a list that
        receives each layer's attention weights (B, n_head, T, T_all)."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0                     # tokens already cached
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than "
                             f"block_size={self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)           # (T,)
        if cache is not None:  # a token's place in its number depends on the tokens before it
            cache.tokens = idx if cache.tokens is None else torch.cat([cache.tokens, idx], dim=1)
            left, right = (p[:, -T:] for p in digit_places(cache.tokens, self.config.comma))
        else:
            left, right = digit_places(idx, self.config.comma)            # (B, T) each
        x = self.wte(idx) + self.wpe(pos) + self.wpl(left) + self.wpr(right)  # (B, T, C)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, cache, weights)                                   # (B, T, C)
        logits = self.lm_head(self.ln_f(x))                                # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0, use_cache=True):
        """Append max_new_tokens tokens to idx (B, T), one at a time, each chosen by
        sample_next_token from the model's prediction for the next token.

        The model sees the whole text while it fits in block_size. When it would not, the oldest
        tokens are dropped and only the newest block_size // 2 kept, from their first comma on
        (in a batch, the first place where every row has one): the window then begins at a
        number, as a prompt's does. A window that begins inside a number hides where that number
        starts; the model may be wrong there even when the whole-text check, whose windows all
        begin at a number, is right. Dropping half at once (rather than one token per step) lets
        the key/value cache serve the next steps, and both paths, cached and uncached, see exactly
        the same context, so they give the same tokens."""
        if idx.dim() != 2 or idx.size(1) == 0 or idx.is_floating_point() or idx.dtype == torch.bool:
            raise ValueError(f"idx must be token ids of shape (B, T) with T >= 1, got "
                             f"{idx.dtype} of shape {tuple(idx.shape)}")
        keep = max(1, self.config.block_size // 2)
        idx = idx.long()  # ids may come as bytes (Tokenizer.encode_tensor)
        context, cache, new_tokens = idx, None, []  # context (B, <= block_size): what it sees
        for _ in range(max_new_tokens):
            if context.size(1) > self.config.block_size:
                tail = context[:, -keep:]                         # overflow: keep the newest half
                at_number = (tail == self.config.comma).all(dim=0)   # from its first comma on
                context, cache = tail[:, int(at_number.int().argmax()):], None
            if not use_cache:
                logits, _ = self(context)                        # recompute the whole context
            elif cache is None:
                cache = KVCache(self.config.n_layer)
                logits, _ = self(context, cache=cache)           # fill the cache with the context
            else:
                logits, _ = self(context[:, -1:], cache=cache)   # only the newest token
            idx_next = sample_next_token(logits[:, -1, :], temperature, top_k)  # (B, 1)
            context = torch.cat((context, idx_next), dim=1)
            new_tokens.append(idx_next)
        return torch.cat([idx] + new_tokens, dim=1)


# ------------------------------------------------------------------------------------------
# Settings checks and checkpoints

def parse_args(argv):
    """The defaults above with the command line's --key=value overrides, checked for sense.
    Every mode but training from scratch loads the checkpoint, whose saved settings then stand
    in for the defaults. Returns the settings and the checkpoint (or None)."""
    cfg, given = parse_settings(argv, DEFAULTS, __file__)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    ckpt = None
    if cfg.mode != "train" or cfg.init_from == "resume":
        if cfg.mode == "train":  # lock first: another run must not save after we read
            lock_out_dir(cfg.out_dir)
        try:
            ckpt = load_checkpoint(ckpt_path)
        except CheckpointError as e:
            fail(str(e))
        # a resumed run goes on with the checkpoint's random stream, so its seed is fixed too
        fixed = MODEL_KEYS + (("seed",) if cfg.mode == "train" else ())
        for key, value in ckpt["settings"].items():
            if key in DEFAULTS and type(value) is not type(DEFAULTS[key]):
                fail(f"checkpoint {ckpt_path} has {key}={value!r}, not a "
                     f"{type(DEFAULTS[key]).__name__}: gpt.py did not write it; train a new one")
            if key in fixed and key in given and getattr(cfg, key) != value:
                fail(f"the checkpoint in {cfg.out_dir} has {key}={value} but --{key}="
                     f"{getattr(cfg, key)} was given; drop --{key} (or train a new model with "
                     f"--init_from=scratch)")
            if key in DEFAULTS and key not in given and key not in RUN_KEYS:
                setattr(cfg, key, value)
        # the checkpoint's settings obey the same rules
        check_settings(cfg, DEFAULTS, origin=f"checkpoint {ckpt_path}", given=given)
    if cfg.n_embd % cfg.n_head:
        fail(f"--n_embd={cfg.n_embd} is not divisible by --n_head={cfg.n_head}; "
             f"pick n_embd as a multiple of n_head")
    longest = longest_number(cfg.max_num)
    if cfg.block_size < 2 * longest:
        fail(f"--block_size={cfg.block_size} cannot hold two numbers of {longest - 1} digits and "
             f"their commas (the checks need n and n+1 in one window); use --block_size="
             f"{2 * longest} or more, or a smaller --max_num")
    if cfg.min_lr > cfg.learning_rate:
        fail(f"--min_lr={cfg.min_lr} is above --learning_rate={cfg.learning_rate}; "
             f"the decay ends below where it starts")
    try:
        Tokenizer().encode(cfg.prompt)
    except ValueError as e:
        fail(f"--prompt={cfg.prompt!r}: {e}")
    if not re.fullmatch(r",?(\d+,)*\d*", cfg.prompt) or not cfg.prompt.strip(","):
        fail(f"--prompt={cfg.prompt!r} is not the start of a count: give whole numbers, each "
             f"followed by one comma, e.g. --prompt=41,42,")
    if cfg.mode == "train" and "init_from" not in given and os.path.exists(ckpt_path):
        fail(f"{ckpt_path} holds a trained model; go on training it with --init_from=resume, "
             f"replace it with --init_from=scratch, or pick another --out_dir")
    return cfg, ckpt


LOCKS = {}  # out_dir -> the open lock file that this process holds on it


def lock_out_dir(out_dir):
    """One training process per out_dir: a second would overwrite the first one's checkpoint.
    The lock is the operating system's, so it goes away with the process, however that ends."""
    key = os.path.realpath(out_dir)
    if key in LOCKS:
        return
    try:
        os.makedirs(out_dir, exist_ok=True)
        lock = open(os.path.join(out_dir, "lock"), "w")
    except OSError as e:
        fail(f"cannot write to --out_dir={out_dir} ({e.strerror}); "
             f"pick a directory you can write to")
    try:
        if os.name == "nt":
            import msvcrt
            msvcrt.locking(lock.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fail(f"another training run is writing to --out_dir={out_dir}; "
             f"wait for it to end, or pick another --out_dir")
    LOCKS[key] = lock


def finite(*things):
    """Whether every number in these (losses, loss tensors, models' weights) is finite."""
    for t in things:
        if isinstance(t, nn.Module):
            if not all(torch.isfinite(p).all() for p in t.parameters()):
                return False
        elif t is not None and not math.isfinite(float(t)):
            return False
    return True


def save_checkpoint(path, model, ema, optimizer, iter_num, cfg, progress=None):
    """Write to a temporary file, then rename it over the old checkpoint: the rename is atomic,
    so a crash or kill mid-write leaves the previous checkpoint intact. "model" holds the
    averaged weights (what sampling uses), "train_model" the raw ones (what training resumes)."""
    if not finite(model, ema):
        raise ValueError("refusing to save weights that are not finite")
    device_type = next(model.parameters()).device.type
    ckpt = {
        "model": ema.state_dict(),
        "train_model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_config": asdict(model.config),
        "vocab": Tokenizer().vocab,
        "iter_num": iter_num,
        # training seconds so far, and when held-out and every check were first right
        "progress": progress or progress_so_far(0.0, None, None),
        "settings": {k: getattr(cfg, k) for k in DEFAULTS},
        # random states: the batches' (drawn on the CPU), and dropout's, drawn where the model is
        "rng": torch.get_rng_state(),
        "device_type": device_type,
        "device_rng": getattr(torch, device_type).get_rng_state()
                      if device_type in ("cuda", "mps") else torch.empty(0),
    }
    tmp = path + ".tmp"
    try:
        torch.save(ckpt, tmp)
        with open(tmp, "rb+") as f:  # on the disk before the rename, so a power cut keeps one
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "the write failed"
        raise SaveError(f"cannot save {path} ({reason}, {free_space(path)} free); the checkpoint "
                        f"there before is kept: free space on that disk or make it writable")
    finally:
        if os.path.isfile(tmp):
            os.remove(tmp)


def progress_so_far(train_time, first_100, first_all):
    """What a resumed run needs to report as an unbroken one would."""
    return {"train_time": train_time, "first_100": first_100, "first_all": first_all}


class SaveError(Exception):
    """A checkpoint could not be written (disk full, no permission); the old one is intact."""


def free_space(path):
    """The free space on path's disk, for an error message."""
    try:
        return f"{shutil.disk_usage(os.path.dirname(path) or '.').free / 2**20:,.0f} MB"
    except OSError:
        return "unknown"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or holds what gpt.py never writes."""


def load_checkpoint(path):
    """Load a checkpoint onto the CPU, safely (weights_only: no pickled code runs), and check
    that it holds what save_checkpoint writes, each value of the right kind. Raises
    CheckpointError with a one-line message that says what to do."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}; train one first with: python gpt.py "
                              f"(or point --out_dir at one)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        missing = {"model", "train_model", "optimizer", "model_config", "vocab", "iter_num",
                   "settings", "rng"} - ckpt.keys()
        if missing:
            raise KeyError(f"missing {sorted(missing)}")
        GPTConfig(**ckpt["model_config"])
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}): it is corrupt "
                              f"or truncated; delete it and train again with: python gpt.py")
    if ckpt["vocab"] != Tokenizer().vocab:
        raise CheckpointError(f"checkpoint {path} has vocabulary {ckpt['vocab']!r}, not "
                              f"{Tokenizer().vocab!r}; train a new one")
    # every value of the kind save_checkpoint writes (a later check only runs if those before it
    # passed, so it may rely on them)
    weights = [ckpt["model"], ckpt["train_model"]]
    settings, optimizer, iter_num = ckpt["settings"], ckpt["optimizer"], ckpt["iter_num"]
    checks = [
        (lambda: all(isinstance(w, dict) and all(isinstance(t, torch.Tensor) for t in w.values())
                     for w in weights), "weights"),
        (lambda: all(torch.isfinite(t).all() for w in weights for t in w.values()
                     if t.is_floating_point()), "weights that are not finite"),
        (lambda: isinstance(settings, dict)
         and set(MODEL_KEYS + ("max_num", "seed")) <= settings.keys(), "settings"),
        (lambda: isinstance(optimizer, dict) and {"state", "param_groups"} <= optimizer.keys(),
         "optimizer state"),
        (lambda: type(iter_num) is int and iter_num >= 0, f"iter_num={iter_num!r}"),
        (lambda: isinstance(ckpt["rng"], torch.Tensor) and ckpt["rng"].dtype == torch.uint8,
         "random state"),
        (lambda: isinstance(ckpt.get("progress", {}), dict), "progress"),
    ]
    problem = next((what for ok, what in checks if not ok()), None)
    if problem:
        raise CheckpointError(f"checkpoint {path} holds {problem} that gpt.py never writes; "
                              f"train a new one (or point --out_dir at another)")
    return ckpt


def resume_command(cfg):
    """The command that continues this run: the checkpoint holds every setting but where it is
    and the machine's (shell-quoted, so that an out_dir with a space survives a paste)."""
    given = [f"--{k}={getattr(cfg, k)}" for k in ("out_dir", "device", "dtype", "compile")
             if getattr(cfg, k) != DEFAULTS[k]]
    try:
        script = os.path.relpath(__file__)  # from where this run was started
    except ValueError:  # on Windows, when the current directory is on another drive
        script = __file__
    return shlex.join(["python", script, "--init_from=resume", *given])


class StopOnSignal:
    """Ctrl-C (SIGINT), SIGTERM (what kill, timeout, docker stop and batch schedulers send),
    SIGHUP (the terminal closed, ssh dropped) or SIGQUIT (Ctrl-\\) asks training to stop after
    the current step, save and print how to resume. A second signal, of any of these kinds,
    stops at once, as usual."""
    NAMES = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")  # those this system has (Windows: 2)

    def __enter__(self):
        self.signum = None
        self.previous = {s: signal.signal(s, self.request)
                         for s in (getattr(signal, n) for n in self.NAMES if hasattr(signal, n))}
        return self

    def request(self, signum, frame):
        self.signum = signum
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# ------------------------------------------------------------------------------------------
# Optimizer, learning-rate schedule and loss estimate

def configure_optimizer(model, cfg, device_type):
    """AdamW, with weight decay on the matrices and embeddings only (not on biases or LayerNorm
    gains), fused into one kernel on CUDA."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.99),
                             fused=device_type == "cuda")


def get_lr(it, cfg):
    """Linear warmup, then cosine decay from learning_rate to min_lr at max_iters."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # from 1 down to 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


@torch.no_grad()
def estimate_loss(model, splits, cfg, ctx):
    """Mean loss over eval_iters batches per split. The batches come from a generator of their
    own, reseeded each time: every estimate sees the same batches, and training's stream of
    random numbers is untouched (so a resumed run matches an unbroken one)."""
    was_training = model.training
    model.eval()
    out = {}
    for name, data in splits.items():
        gen = torch.Generator().manual_seed(cfg.seed)
        losses = torch.zeros(cfg.eval_iters)
        for i in range(cfg.eval_iters):
            x, y = get_batch(data, cfg.batch_size, cfg.block_size, data.device, generator=gen)
            with ctx:
                _, loss = model(x, y)
            losses[i] = loss.item()
        out[name] = losses.mean().item()
    model.train(was_training)
    return out


# ------------------------------------------------------------------------------------------
# The exact checks: held-out, whole text (every prompt), from 0, the long count

def encode_prompt(text):
    """A prompt is the start of a count, read as the text is read: after a comma, which tells
    the model that a number begins with the prompt's first digit. (1-D tensor of token ids.)"""
    return torch.tensor(Tokenizer().encode("," + text.removeprefix(",")))


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
    the end of its window (k+1, k+2, k+3 for six digits); the count from "0," to 1,000; beyond
    the text: numbers past max_num-1, which the model never saw (beyond_spans); and the long
    count: greedy streams from held-out numbers, and one from the text's end on past it, each
    far past the context window."""

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
def evaluate(model, checks, splits, cfg, ctx, dear=True):
    """The losses, then the exact checks from the cheapest to the dearest, each only once the
    ones before it are all right: every held-out number (seconds), then, while dear, the count
    from 0, (about a second) and every step of the whole text (about ten held-out checks' worth).
    Training asks for the dear checks until they have all been right once; the final report runs
    every check again."""
    r = {"loss": estimate_loss(model, splits, cfg, ctx)}
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
    wrong += [name for name in ("from 0,", "long count") if r.get(name)]
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


# ------------------------------------------------------------------------------------------
# --mode=attention: what each head looks at

SHADES = " .:-=+*#%@"  # attention weight 0 .. 1, in tenths
PARTS = ("same digit of n", "n's later digits", "n's earlier digits", "comma before n+1",
         "n+1 so far")


@torch.no_grad()
def show_attention(model, cfg, device):
    """Write the number that follows the prompt, greedily, and for each character it writes
    show where each head looks from the position that predicts it: one row per layer and head,
    one shaded character per context character (' ' for none of the weight, '@' for nearly
    all), the most-attended character named at the end. Then measure it over the held-out
    check: attention_table."""
    tok = Tokenizer()
    idx = encode_prompt(cfg.prompt)[None].to(device)
    longest = longest_number(cfg.max_num)
    if idx.size(1) + longest > cfg.block_size:
        fail(f"--prompt={cfg.prompt!r} is too long to show with the number after it in one window "
             f"of {cfg.block_size} characters; give at most {cfg.block_size - longest - 1} "
             f"characters")
    for _ in range(longest):
        weights = []
        logits, _ = model(idx, weights=weights)
        nxt = logits[:, -1:].argmax(dim=-1)                                  # (1, 1)
        text, char = tok.decode(idx[0]), tok.decode(nxt[0])
        print(f"\nwrites {char!r} after {text[1:]!r}\n{'':8}{text}")
        for layer, att in enumerate(weights):
            for head, w in enumerate(att[0, :, -1].tolist()):  # the newest position's weights
                top = max(range(len(w)), key=w.__getitem__)
                row = "".join(SHADES[min(int(p * 10), 9)] for p in w)
                print(f"L{layer + 1} H{head + 1}   {row}   {w[top]:.2f} on {text[top]!r}, "
                      f"{len(text) - top} back")
        idx = torch.cat([idx, nxt], dim=1)
        if char == ",":  # the number is written
            break
    _, _, val_data = load_data(cfg.max_num)
    held_out = CountingEval(val_data.to(device), cfg.block_size)
    table, digits, changed = attention_table(model, held_out)
    print(f"\nMean attention weight of each head while writing the {digits:,} digits of held-out "
          f"numbers n+1\n(after an n of the same length): copied digits / the {changed:,} that "
          f"change (the last, and carries)")
    print(f"{'':8}" + "".join(f"{p:>20}" for p in PARTS))
    for layer in range(table.size(0)):
        for head in range(table.size(1)):
            cells = "".join(f"{a:>13.2f} / {b:.2f}" for a, b in table[layer, head].T.tolist())
            print(f"L{layer + 1} H{head + 1}  {cells}")


@torch.no_grad()
def attention_table(model, ev, batch_size=256):
    """Where each head looks while the model writes digit i of n+1 (from the position before
    it), over every such digit in the windows of `ev` where n and n+1 have the same length: the
    mean weight on each of PARTS, for the digits copied from n and for those that change (the
    last one, and any that a carry reaches). Returns (table (n_layer, n_head, 2, len(PARTS)),
    digits, digits that change)."""
    model.eval()
    commas, dev = ev.commas, ev.padded.device
    total = torch.zeros(model.config.n_layer, model.config.n_head, 2, len(PARTS), device=dev)
    count = torch.zeros(2, device=dev)
    for pos, k, scored in ev.batches(batch_size):           # (B, T) each: the next token is k's
        weights = []
        model(ev.padded[pos].long(), weights=weights)
        k = k.clamp(1, ev.n - 1)                              # n+1 is number k, n is number k-1
        before_n, before, after = commas[k - 1], commas[k], commas[k + 1]      # (B, T) each
        same = before_n + pos - before + 1                    # n's digit in the next one's place
        valid = scored & (pos + 1 < after) & (after - before == before - before_n)  # equal lengths
        changed = (ev.padded[pos + 1] != ev.padded[same]).long()  # the last digit, or a carry's
        key = pos[:, None, :]                                 # (B, 1, T) key positions
        same, before_n, before, query = (t[..., None] for t in (same, before_n, before, pos))
        masks = [key == same, (key > same) & (key < before), (key > before_n) & (key < same),
                 key == before, (key > before) & (key <= query)]  # each (B, T, T), as PARTS
        for layer, att in enumerate(weights):                 # (B, n_head, T, T)
            for j, mask in enumerate(masks):
                mass = (att * mask[:, None]).sum(-1)          # (B, n_head, T)
                for c in (0, 1):
                    total[layer, :, c, j] += (mass * (valid & (changed == c))[:, None]).sum((0, 2))
        count += torch.bincount(changed[valid], minlength=2)
    return (total / count[:, None]).cpu(), int(count.sum()), int(count[1])


# ------------------------------------------------------------------------------------------
# Training

def sync(device_type):
    """GPU work is queued: wait for it before reading the clock."""
    if device_type == "cuda":
        torch.cuda.synchronize()
    elif device_type == "mps":
        torch.mps.synchronize()


def check_compile(device):
    """torch.compile needs a toolchain (Triton and a GPU of compute capability 7.0+, or a C++
    compiler on the CPU): try it on a tiny function first, so that a missing one is one line."""
    try:
        torch.compile(lambda x: x * 2)(torch.ones(2, device=device))
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:120]
        fail(f"--compile=True does not work on this machine ({type(e).__name__}: {reason}); "
             f"run without it")


def build_model(cfg, ckpt, device):
    """The model and its averaged copy, from scratch or with the checkpoint's weights."""
    model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=Tokenizer().vocab_size,
                          n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                          dropout=cfg.dropout)).to(device)
    # with ema_decay > 0 a moving average of the trained weights, which smooths away their
    # step-to-step noise; with 0 a copy of them
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    if ckpt is not None:
        try:
            ema.load_state_dict(ckpt["model"])
            model.load_state_dict(ckpt["train_model"])
        except RuntimeError as e:
            fail(f"the checkpoint in {cfg.out_dir} does not fit the model "
                 f"({str(e).splitlines()[0]}); train a new one")
    return model, ema


def main(argv):
    """Train a GPT to count (or, with --mode, use the saved one). Returns a summary for bench.py."""
    cfg, ckpt = parse_args(argv)
    device = pick_device(cfg.device)
    device_type = device.split(":")[0]
    ptdtype = pick_dtype(cfg.dtype, device)
    # autocast runs the matmuls in ptdtype; the weights and the optimizer stay float32
    ctx = torch.autocast(device_type, dtype=ptdtype) if ptdtype != torch.float32 else nullcontext()
    if device_type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"  # TF32 for float32 matmuls (Ampere+)
    if cfg.compile:
        check_compile(device)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    if cfg.mode == "train":
        lock_out_dir(cfg.out_dir)
    torch.manual_seed(cfg.seed)

    # the model, and the moving average of its weights that we evaluate, sample from and save
    model, ema = build_model(cfg, ckpt, device)
    print(f"device {device} ({str(ptdtype).removeprefix('torch.')}), "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, {cfg.n_layer} layers x "
          f"{cfg.n_head} heads x {cfg.n_embd} wide, block_size {cfg.block_size}")
    if cfg.mode == "sample":
        last = int(re.findall(r"\d+", cfg.prompt)[-1])  # would the count go past the text?
        if last + cfg.max_new_tokens // (len(str(last)) + 1) >= cfg.max_num:
            print(f"note: the model was trained on the numbers 0 to {cfg.max_num - 1:,}; past "
                  f"them it counts as far as the beyond-the-text check of --mode=eval shows",
                  file=sys.stderr)
        with ctx:
            out = ema.generate(encode_prompt(cfg.prompt)[None].to(device), cfg.max_new_tokens,
                               temperature=cfg.temperature, top_k=cfg.top_k)
        print(Tokenizer().decode(out[0, 1:]))  # without the comma in front
        return
    if cfg.mode == "attention":
        return show_attention(ema, cfg, device)

    # the data, all of it on the device, and the checks
    t0 = time.perf_counter()
    _, train_data, val_data = load_data(cfg.max_num)
    sampler = StepSampler(train_data, cfg.block_size, cfg.window_alpha) \
        if cfg.window_alpha < 1 else None
    train_data, val_data = train_data.to(device), val_data.to(device)
    if cfg.mode == "eval":
        cfg.full_check = True  # every check, whatever the model was trained with
    try:
        checks = Checks(train_data, val_data, cfg)
    except ValueError as e:
        fail(f"{e} (--max_num={cfg.max_num}, --block_size={cfg.block_size})")
    print(f"data ready in {time.perf_counter() - t0:.2f}s: {len(train_data):,} train / "
          f"{len(val_data):,} val tokens, {checks.held_out.n - 1:,} held-out numbers to count")
    if cfg.mode == "eval":
        return report(ema, checks, {}, cfg, ctx)

    # the optimizer, a gradient scaler that keeps float16 gradients in range (off otherwise),
    # and where training starts: step 0, or where the checkpoint left off, with its random state
    optimizer = configure_optimizer(model, cfg, device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16)
    iter_num = 0
    if ckpt is not None:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            fail(f"the checkpoint in {cfg.out_dir} holds an optimizer state that does not fit the "
                 f"model ({type(e).__name__}); train a new one")
        optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay  # else the saved one wins
        iter_num = ckpt["iter_num"]
        torch.set_rng_state(ckpt["rng"])
        if device_type in ("cuda", "mps") and ckpt.get("device_type") == device_type:
            getattr(torch, device_type).set_rng_state(ckpt["device_rng"])
        print(f"resuming from {cfg.out_dir} at step {iter_num}")
    train_model = torch.compile(model) if cfg.compile else model
    params, ema_params = list(model.parameters()), list(ema.parameters())

    # loop state (a resumed run goes on with the checkpoint's)
    so_far = ckpt.get("progress", {}) if ckpt is not None else {}
    first_iter = iter_num   # where this run started (a resumed run starts later)
    train_time = so_far.get("train_time", 0.0)  # seconds of training steps, not evaluation
    eval_time = 0.0         # seconds of evaluation
    first_100 = so_far.get("first_100")  # (step, train_time) when held-out was first all right
    first_all = so_far.get("first_all")  # the step when every check was first right
    r = {}                  # the results of the last evaluation
    last_loss = None        # the last step's loss, left on the device (read at evaluations only)
    stop = None             # why the loop ends
    saved = first_iter if ckpt is not None else None  # the step of the checkpoint on disk
    save_error = None
    interval_start, interval_iter = time.perf_counter(), iter_num  # since the last evaluation
    with StopOnSignal() as signals:
        while True:
            elapsed = train_time + time.perf_counter() - interval_start
            out_of_steps = iter_num >= cfg.max_iters
            out_of_time = cfg.max_seconds > 0 and elapsed >= cfg.max_seconds
            evaluated = False

            # once in a while, at the end, and when asked to stop: check the loss, evaluate, save
            if iter_num % cfg.eval_interval == 0 or out_of_steps or out_of_time or signals.signum:
                sync(device_type)
                interval = time.perf_counter() - interval_start
                train_time += interval
                if not finite(last_loss, model, ema):
                    stop = "diverged"
                elif signals.signum:
                    stop = "interrupted"
                else:
                    t_eval = time.perf_counter()
                    r = evaluate(ema, checks, {"train": train_data, "val": val_data}, cfg, ctx,
                                 dear=first_all is None)
                    eval_time += time.perf_counter() - t_eval
                    if not finite(*r["loss"].values()):  # finite weights can still overflow
                        stop = "diverged"
                    else:
                        evaluated = True
                        ms_per_step = 1000 * interval / max(iter_num - interval_iter, 1)
                        print(eval_line(iter_num, r, ms_per_step, train_time,
                                        time.perf_counter() - t_eval), flush=True)
                        if r["held-out"].accuracy == 1 and first_100 is None:
                            first_100 = (iter_num, train_time)
                            print(f"every held-out number counted right after {iter_num} steps, "
                                  f"{train_time:.1f}s of training")
                        if first_all is None and all_right(r, checks):
                            first_all = iter_num
                            print(f"every check right after {iter_num} steps")
                        try:
                            save_checkpoint(ckpt_path, model, ema, optimizer, iter_num, cfg,
                                            progress_so_far(train_time, first_100, first_all))
                            saved = iter_num
                        except SaveError as e:
                            stop, save_error = "save failed", e
                interval_start, interval_iter = time.perf_counter(), iter_num

            # when to stop: every reason, in one place
            if stop is None:
                if evaluated and cfg.stop_at_100 and first_all == iter_num:
                    stop = "every check right"
                elif out_of_steps:
                    stop = f"max_iters={cfg.max_iters} reached"
                elif out_of_time:
                    stop = f"max_seconds={cfg.max_seconds} reached"
            if stop:
                break

            # one training step: forward, backward, clip, update
            for group in optimizer.param_groups:
                group["lr"] = get_lr(iter_num, cfg)
            x, y = get_batch(train_data, cfg.batch_size, cfg.block_size, device, sampler=sampler)
            with ctx:
                _, loss = train_model(x, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()

            # the moving average, e = decay * e + (1 - decay) * p, for all weights in one call
            torch._foreach_lerp_(ema_params, params, 1.0 - cfg.ema_decay)

            # bookkeeping
            last_loss = loss.detach()  # read at the next evaluation: every step would stall a GPU
            iter_num += 1

    # the report: why training stopped, then every check of the averaged weights
    if stop == "diverged":
        print(f"error: training diverged by step {iter_num} (the loss or the weights are no longer "
              f"finite); lower --learning_rate or raise --warmup_iters. {ckpt_path} was not "
              f"overwritten.", file=sys.stderr)
        sys.exit(1)
    if stop == "interrupted":
        try:
            save_checkpoint(ckpt_path, model, ema, optimizer, iter_num, cfg,
                            progress_so_far(train_time, first_100, first_all))
            saved, message = iter_num, f"interrupted at step {iter_num}; saved {ckpt_path}."
        except SaveError as e:
            message = f"interrupted at step {iter_num}; error: {e}."
        if saved is not None:
            message += f" Resume{f' from step {saved}' if saved != iter_num else ''} with: " \
                       f"{resume_command(cfg)}"
        try:  # on stderr, which still reaches the terminal when stdout goes through | tee
            print(message, file=sys.stderr)
        except OSError:  # the terminal is gone (SIGHUP): the checkpoint is what matters
            pass
        sys.exit(128 + signals.signum)
    if stop == "save failed":
        print(f"error: {save_error}, then resume from its step {saved} with: "
              f"{resume_command(cfg)}" if saved is not None else f"error: {save_error}",
              file=sys.stderr)
        sys.exit(1)
    print(f"stopped at step {iter_num} ({stop}): {train_time:.1f}s of training, "
          f"{eval_time:.1f}s of evaluation")
    r = report(ema, checks, r, cfg, ctx)
    tokens = (iter_num - first_iter) * cfg.batch_size * cfg.block_size
    return {"iters": iter_num, "train_time": train_time, "eval_time": eval_time,
            "counts": r["counts"], "first_100": first_100, "first_all": first_all,
            "correct": r["held-out"].correct, "total": r["held-out"].total,
            "tokens_per_s": tokens / max(train_time, 1e-9)}


if __name__ == "__main__":
    try:
        result = main(sys.argv[1:])
        if result is not None and not result["counts"]:
            sys.exit(3)  # the model does not count every number: scripts and CI should notice
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training: nothing more to save
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader of the output stopped early (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
