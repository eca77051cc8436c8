"""
A character-level GPT that learns to count: model, training loop, evaluation and generation.

    python gpt.py                                        # train until it counts, then show it
    python gpt.py --n_layer=4 --learning_rate=3e-3       # any setting below, as --key=value
    python gpt.py --mode=sample --prompt=41,42,          # continue a prompt with out/ckpt.pt

The task, the tokenizer, the batches and the counting evaluation live in data.py.
"""
import copy
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from data import (CountingEval, StepSampler, Tokenizer, fail, get_batch, load_data, parse_settings, percent,
                  pick_device)

# -----------------------------------------------------------------------------
# default settings; each can be overridden on the command line as --key=value
# data
max_num = 1_000_000        # the text is "0,1,2,...,max_num-1"
# model
n_layer = 2
n_head = 4                 # 4 heads of 16 channels; 8 of 8 took fewer steps to every check right, but
                           # more steps to 100% held-out (README)
n_embd = 64
block_size = 32            # context length in characters
dropout = 0.0              # 0.1 made steps 60% slower and did not reach 100% sooner (README)
# training
batch_size = 64
window_alpha = 0.3         # 1 = training windows uniform over the text, as in the tutorial; below 1 the
                           # rare steps (carries, short numbers) are shown more often: data.StepSampler
max_iters = 4000           # the cosine schedule's length; stop_at_100 usually ends training far sooner
learning_rate = 3e-3
min_lr = 0.0               # cosine decay ends here
warmup_iters = 100
weight_decay = 0.5         # strong decay: at 0.1 one seed in three drifted off 100% held-out and never
                           # got every check right at once; at 0.5 all three did (README)
ema_decay = 0.99           # evaluate, sample and save a moving average of the weights, which smooths
                           # away their step-to-step noise (0 = the raw weights)
grad_clip = 1.0            # clip the gradient norm at this (0 = off)
eval_interval = 250        # evaluate (losses + exhaustive counting accuracy) every this many steps
eval_iters = 20            # batches per loss estimate
stop_at_100 = True         # stop once every held-out number (and, with full_check, every step of the
                           # whole text) is counted right
max_seconds = 0.0          # stop after this much training time, evaluation not counted (0 = no limit)
# system
device = "auto"            # auto = cuda, else mps, else cpu
compile = False            # torch.compile the model
seed = 1337
out_dir = "out"            # the checkpoint goes to out_dir/ckpt.pt
init_from = "scratch"      # scratch or resume (continue from out_dir/ckpt.pt)
# after training, or with --mode=sample
mode = "train"             # train, or sample (load the checkpoint and continue --prompt)
prompt = "0,"
max_new_tokens = 100
temperature = 0.0          # 0 = greedy (always the most likely token)
top_k = 0                  # sample only from the k most likely tokens (0 = all)
long_count = 10_000        # after training, count this many numbers on from a held-out prompt
full_check = True          # also count on from "0," to 1000 and check every n -> n+1 of the whole text: at
                           # the end, and when held-out reaches 100% (the whole text if the count is right)
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and type(v) in (int, float, bool, str)}
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size")  # what a checkpoint fixes


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


class CausalSelfAttention(nn.Module):
    """Every position looks back at all earlier positions (never ahead) and takes a weighted
    average of what they offer. n_head heads do this in parallel, each on n_embd/n_head channels."""

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # query, key, value for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)      # mixes the heads' outputs
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout = config.n_head, config.dropout

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)                           # each (B, T, C)
        # split the channels into heads: (B, T, C) -> (B, n_head, T, head_size)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # generation: keep this step's keys/values, reuse the earlier ones
            if cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v                                  # (B, n_head, T_all, hs)
        # The attention itself, in one fused kernel (flash attention on GPU):
        #   att = q @ k.transpose(-2, -1) / sqrt(head_size)   (B, n_head, T, T_all) affinities
        #   att = att.masked_fill(future positions, -inf)     causal: no peeking ahead
        #   att = softmax(att, dim=-1); y = att @ v          (B, n_head, T, head_size)
        # A single new query (cached generation) may look at every key, so no mask is needed there.
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

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token -> vector
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # position -> vector
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)  # vector -> next-token logits
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale down the layers that add to the residual
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, caches=None):
        """idx (B, T) token ids -> logits (B, T, vocab_size), and the mean cross-entropy loss
        against targets (B, T) if given. caches: one dict per layer, used by generate."""
        B, T = idx.shape
        start = caches[0]["k"].shape[2] if caches and caches[0] else 0  # tokens already cached
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size={self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)           # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))                       # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches is not None else None)       # (B, T, C)
        logits = self.lm_head(self.ln_f(x))                                # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True):
        """Append max_new_tokens tokens to idx (B, T), one at a time, each drawn from the model's
        prediction for the next token (temperature 0 = greedy: always the most likely).

        The model sees the whole text while it fits in block_size. When it would not, the oldest
        tokens are dropped and only the newest block_size // 2 kept. Dropping half at once
        (rather than one token per step) lets the key/value cache serve the next block_size // 2
        steps, and both paths, cached and uncached, see exactly the same context, so they give
        the same tokens."""
        keep = self.config.block_size // 2
        context, caches, new_tokens = idx, None, []  # context (B, <= block_size): what the model sees
        for _ in range(max_new_tokens):
            if context.shape[1] > self.config.block_size:
                context, caches = context[:, -keep:], None  # overflow: keep the newest half
            if not use_cache:
                logits, _ = self(context)                     # recompute the whole context
            elif caches is None:
                caches = [{} for _ in self.blocks]
                logits, _ = self(context, caches=caches)      # fill the cache with the context
            else:
                logits, _ = self(context[:, -1:], caches=caches)  # only the newest token
            logits = logits[:, -1, :]                                          # (B, vocab_size)
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)                 # (B, 1)
            else:
                logits = logits / temperature
                if top_k:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)  # (B, 1)
            context = torch.cat((context, idx_next), dim=1)
            new_tokens.append(idx_next)
        return torch.cat([idx] + new_tokens, dim=1)


# ------------------------------------------------------------------------------------------
# Settings and checkpoints

def parse_args(argv):
    """The defaults above with the command line's --key=value overrides, checked for sense."""
    c, given = parse_settings(argv, DEFAULTS)
    problems = [
        (c.n_layer >= 1 and c.n_head >= 1 and c.n_embd >= 1, "n_layer, n_head and n_embd must be at least 1"),
        (c.n_embd % max(c.n_head, 1) == 0, f"--n_embd={c.n_embd} is not divisible by --n_head={c.n_head}; "
                                           f"pick n_embd as a multiple of n_head"),
        (c.block_size >= 2, f"--block_size={c.block_size} is too small; use at least 2 (default {block_size})"),
        (c.batch_size >= 1 and c.eval_iters >= 1 and c.eval_interval >= 1,
         "batch_size, eval_iters and eval_interval must be at least 1"),
        (min(c.max_iters, c.max_seconds, c.warmup_iters, c.max_new_tokens, c.long_count, c.top_k) >= 0,
         "max_iters, max_seconds, warmup_iters, max_new_tokens, long_count and top_k cannot be negative"),
        (0 < c.learning_rate < math.inf, f"--learning_rate={c.learning_rate} must be positive, e.g. {learning_rate}"),
        (0 <= c.min_lr <= c.learning_rate, f"--min_lr={c.min_lr} must be between 0 and --learning_rate"),
        (0 <= c.weight_decay < math.inf and 0 <= c.grad_clip < math.inf and 0 <= c.temperature < math.inf,
         "weight_decay, grad_clip and temperature cannot be negative"),
        (0 <= c.dropout < 1, f"--dropout={c.dropout} must be in [0, 1)"),
        (0 <= c.window_alpha <= 1, f"--window_alpha={c.window_alpha} must be in [0, 1] (1 = uniform windows)"),
        (c.mode in ("train", "sample"), f"--mode={c.mode} is not train or sample"),
        (c.init_from in ("scratch", "resume"), f"--init_from={c.init_from} is not scratch or resume"),
        (c.prompt != "", "--prompt is empty; give text to continue, e.g. --prompt=41,42,"),
    ]
    for ok, message in problems:
        if not ok:
            fail(message)
    try:
        Tokenizer().encode(c.prompt)
    except ValueError as e:
        fail(f"--prompt={c.prompt!r}: {e}")
    return c, given


def save_checkpoint(path, model, ema, optimizer, iter_num, cfg):
    """Write to a temporary file, then rename it over the old checkpoint: the rename is atomic,
    so a crash or Ctrl-C mid-write leaves the previous checkpoint intact. "model" holds the
    averaged weights (what sampling uses), "train_model" the raw ones (what training resumes)."""
    ckpt = {
        "model": ema.state_dict(),
        "train_model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_config": asdict(model.config),
        "vocab": Tokenizer().vocab,
        "iter_num": iter_num,
        "settings": {k: getattr(cfg, k) for k in DEFAULTS},
        "rng": torch.get_rng_state(),  # so a resumed run draws the same batches as an unbroken one
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.empty(0),
    }
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, device, cfg, given):
    """Load a checkpoint safely (weights_only: no pickled code runs). Model settings come from
    the checkpoint; one given on the command line that disagrees with it is an error."""
    if not os.path.exists(path):
        fail(f"no checkpoint at {path}; train one first with: python gpt.py (or point --out_dir at one)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        missing = {"model", "train_model", "optimizer", "model_config", "vocab", "iter_num", "rng"} - ckpt.keys()
        if missing:
            raise KeyError(f"missing {sorted(missing)}")
        model_config = GPTConfig(**ckpt["model_config"])
    except Exception as e:
        fail(f"cannot read checkpoint {path} ({type(e).__name__}): it is corrupt or truncated; "
             f"delete it and train again with: python gpt.py")
    if ckpt["vocab"] != Tokenizer().vocab:
        fail(f"checkpoint {path} has vocabulary {ckpt['vocab']!r}, not {Tokenizer().vocab!r}; train a new one")
    for key in MODEL_KEYS:
        if key in given and getattr(cfg, key) != getattr(model_config, key):
            fail(f"checkpoint {path} has {key}={getattr(model_config, key)} but --{key}={getattr(cfg, key)} "
                 f"was asked; drop --{key}, or train a new model with --init_from=scratch")
        setattr(cfg, key, getattr(model_config, key))
    return ckpt


def get_lr(it, cfg):
    """Linear warmup, then cosine decay from learning_rate to min_lr at max_iters."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


@torch.no_grad()
def estimate_loss(model, splits, cfg, ctx):
    """Mean loss over eval_iters batches per split. The batches come from a generator of their
    own, reseeded each time: every estimate sees the same batches, and training's stream of
    random numbers is untouched (so a resumed run matches an unbroken one)."""
    was_training = model.training
    model.eval()
    out = {}
    for name, data in splits.items():
        gen = torch.Generator(device=data.device).manual_seed(cfg.seed)
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
# Training, evaluation, generation

def main(argv):
    cfg, given = parse_args(argv)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    device_type = "cuda" if device.startswith("cuda") else device
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+ GPUs; no-op elsewhere
    torch.backends.cudnn.allow_tf32 = True
    # bf16 autocast on CUDA: matmuls in bfloat16, weights and optimizer in float32
    ctx = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device_type == "cuda" else nullcontext()
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    ckpt = load_checkpoint(ckpt_path, device, cfg, given) if cfg.mode == "sample" or cfg.init_from == "resume" else None

    tok = Tokenizer()
    model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tok.vocab_size, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout)).to(device)
    # The weights we evaluate, sample from and save: with ema_decay > 0 an exponential moving
    # average of the trained ones, which smooths away their step-to-step noise; with 0 a copy.
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    if ckpt is not None:
        try:
            ema.load_state_dict(ckpt["model"])
            model.load_state_dict(ckpt["train_model"])
        except RuntimeError as e:
            fail(f"checkpoint {ckpt_path} does not fit the model ({str(e).splitlines()[0]}); train a new one")
    print(f"device {device}, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{cfg.n_layer} layers x {cfg.n_head} heads x {cfg.n_embd} wide, block_size {cfg.block_size}")

    if cfg.mode == "sample":
        idx = torch.tensor([tok.encode(cfg.prompt)], device=device)
        with ctx:
            out = ema.generate(idx, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None)
        print(tok.decode(out[0]))
        return

    t0 = time.perf_counter()
    tok, train_data, val_data = load_data(cfg.max_num)
    if len(val_data) <= cfg.block_size + 1:
        fail(f"--max_num={cfg.max_num} gives a validation split of {len(val_data)} tokens, too short for "
             f"one window of block_size+1={cfg.block_size + 1}; raise --max_num or lower --block_size")
    train_data, val_data = train_data.to(device), val_data.to(device)  # all of it lives on the device
    sampler = StepSampler(train_data, cfg.block_size, cfg.window_alpha) if cfg.window_alpha < 1 else None
    try:
        held_out = CountingEval(val_data, cfg.block_size)
        # every n -> n+1 of the whole text, the training part (and its small numbers) included
        whole_text = CountingEval(torch.cat([train_data, val_data]), cfg.block_size, starts_at_number=True) \
            if cfg.full_check else None
    except ValueError as e:
        fail(f"{e} (--max_num={cfg.max_num}, --block_size={cfg.block_size})")
    from_zero = [str(n) for n in range(1, min(1000, cfg.max_num - 1) + 1)]  # "0," -> 1 .. 1000
    print(f"data ready in {time.perf_counter() - t0:.2f}s: {len(train_data):,} train / {len(val_data):,} val "
          f"tokens, {len(held_out.numbers) - 1:,} held-out numbers to count")

    # AdamW, with weight decay on the matrices and embeddings only (not biases or LayerNorm gains);
    # fused into a single kernel on CUDA
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=cfg.learning_rate, betas=(0.9, 0.99), fused=device_type == "cuda")
    iter_num = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        iter_num = ckpt["iter_num"]
        torch.set_rng_state(ckpt["rng"].cpu())
        if device_type == "cuda" and len(ckpt["cuda_rng"]):
            torch.cuda.set_rng_state(ckpt["cuda_rng"].cpu())
        print(f"resuming from {ckpt_path} at step {iter_num}")
    train_model = torch.compile(model) if cfg.compile else model

    stop_requested = False

    def on_ctrl_c(signum, frame):  # let the current step finish, then save and stop
        nonlocal stop_requested
        stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    previous_handler = signal.signal(signal.SIGINT, on_ctrl_c)
    train_time, eval_time, last_loss, first_iter, first_100 = 0.0, 0.0, None, iter_num, None
    interval_start, interval_iter = time.perf_counter(), iter_num
    try:
        while True:
            out_of_time = cfg.max_seconds > 0 and train_time + time.perf_counter() - interval_start >= cfg.max_seconds
            at_eval = iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters or out_of_time
            if at_eval or stop_requested:
                if device_type == "cuda":
                    torch.cuda.synchronize()  # GPU work is queued: wait for it before reading the clock
                interval = time.perf_counter() - interval_start
                train_time += interval
                if last_loss is not None and not math.isfinite(last_loss.item()):
                    print(f"error: the loss became {last_loss.item()} by step {iter_num}: training diverged; "
                          f"lower --learning_rate or raise --warmup_iters. {ckpt_path} was not overwritten.",
                          file=sys.stderr)
                    sys.exit(1)
            if stop_requested:
                save_checkpoint(ckpt_path, model, ema, optimizer, iter_num, cfg)
                print(f"interrupted at step {iter_num}; saved {ckpt_path}. Resume with: "
                      f"python gpt.py --init_from=resume {' '.join(argv)}".rstrip())
                sys.exit(130)
            if at_eval:
                t_eval = time.perf_counter()
                losses = estimate_loss(ema, {"train": train_data, "val": val_data}, cfg, ctx)
                with ctx:
                    result = held_out(ema)
                # once held-out is all right: count from 0, (a second), and if that is right too,
                # check every step of the whole text (as long as ten held-out checks)
                zero = count_check(ema, ["0"], from_zero, device, ctx) \
                    if whole_text and result.accuracy == 1.0 else None
                whole = None
                if zero and zero["first_wrong"] is None:
                    with ctx:
                        whole = whole_text(ema)
                eval_time += time.perf_counter() - t_eval
                steps = iter_num - interval_iter
                print(f"step {iter_num:5d} | loss train {losses['train']:.4f} val {losses['val']:.4f} | "
                      f"held-out counting {percent(result.correct, result.total):>8} | "
                      + (f"from 0, {'no error' if zero['first_wrong'] is None else 'wrong'} | " if zero else "")
                      + (f"whole text {whole.total - whole.correct} wrong | " if whole else "")
                      + f"{1000 * interval / steps if steps else 0:.1f} ms/step | "
                      f"train {train_time:.1f}s, eval {time.perf_counter() - t_eval:.1f}s", flush=True)
                save_checkpoint(ckpt_path, model, ema, optimizer, iter_num, cfg)
                if result.accuracy == 1.0 and first_100 is None:
                    first_100 = (iter_num, train_time)
                    print(f"every held-out number counted right after {iter_num} steps, {train_time:.1f}s of training")
                if cfg.stop_at_100 and result.accuracy == 1.0 and (not whole_text or (whole and whole.accuracy == 1.0)):
                    if whole_text:
                        print(f"and from 0, to {from_zero[-1]}, and every step of the whole text, "
                              f"after {iter_num} steps, {train_time:.1f}s of training")
                    break
                if iter_num >= cfg.max_iters or out_of_time:
                    break
                interval_start, interval_iter = time.perf_counter(), iter_num
            lr = get_lr(iter_num, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(train_data, cfg.batch_size, cfg.block_size, device, sampler=sampler)
            with ctx:
                _, loss = train_model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.lerp_(p, 1.0 - cfg.ema_decay)  # e = decay * e + (1 - decay) * p
            last_loss = loss.detach()  # checked at each evaluation (reading it every step would stall a GPU)
            iter_num += 1
    finally:
        signal.signal(signal.SIGINT, previous_handler)

    print(result.summary())
    if whole_text:  # check what the last evaluation did not (the weights have not changed since)
        if zero is None:
            zero = count_check(ema, ["0"], from_zero, device, ctx)
        if whole is None:
            with ctx:
                whole = whole_text(ema)
        print("whole text: " + whole.summary())
        print(f"counting from 0, to {from_zero[-1]}: {first_error(zero)}")
    # a sample: the prompt just before the hardest held-out carry
    k = int(held_out.carries[1:].argmax()) + 1
    show = count_check(ema, held_out.numbers[k - 2:k], held_out.numbers[k:k + 4], device, ctx)
    print(f"sample: {','.join(held_out.numbers[k - 2:k])}, -> {show['text']!r}")
    # counting on, greedily, far past the context window
    n = min(cfg.long_count, len(held_out.numbers) - 3)
    if n > 0:
        lc = count_check(ema, held_out.numbers[:3], held_out.numbers[3:3 + n], device, ctx)
        print(f"long count: {n:,} numbers on from {held_out.numbers[2]}: {first_error(lc)} "
              f"({lc['tokens_per_s']:,.0f} tokens/s)")
    idx = torch.tensor([tok.encode(cfg.prompt)], device=device)
    with ctx:
        out = ema.generate(idx, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None)
    print(f"prompt {cfg.prompt!r} -> {tok.decode(out[0])!r}")
    return {"iters": iter_num, "train_time": train_time, "eval_time": eval_time, "accuracy": result.accuracy,
            "correct": result.correct, "total": result.total, "first_100": first_100,
            "tokens_per_s": (iter_num - first_iter) * cfg.batch_size * cfg.block_size / max(train_time, 1e-9)}


def count_check(model, prompt_numbers, wanted, device, ctx, use_cache=True):
    """Prompt with numbers, continue greedily for as many tokens as the wanted numbers take,
    and find the first number that differs."""
    tok = Tokenizer()
    want_text = ",".join(wanted)
    idx = torch.tensor([tok.encode(",".join(prompt_numbers) + ",")], device=device)
    t = time.perf_counter()
    with ctx:
        out = model.generate(idx, len(want_text), temperature=0.0, use_cache=use_cache)
    elapsed = time.perf_counter() - t
    text = tok.decode(out[0, idx.shape[1]:])
    got = text.split(",")
    first_wrong = next((i for i, w in enumerate(wanted) if i >= len(got) or got[i] != w), None)
    return {"text": text, "first_wrong": first_wrong, "tokens_per_s": len(want_text) / elapsed,
            "wanted": wanted[first_wrong] if first_wrong is not None else None,
            "got": got[first_wrong] if first_wrong is not None and first_wrong < len(got) else None}


def first_error(check):
    """count_check's verdict in words."""
    if check["first_wrong"] is None:
        return "no error"
    return f"first wrong number is #{check['first_wrong'] + 1}: wanted {check['wanted']}, got {check['got']!r}"


if __name__ == "__main__":
    main(sys.argv[1:])
