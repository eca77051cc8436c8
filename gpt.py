"""
A character-level GPT that learns to count: the model, its training loop, evaluation and generation.

    python gpt.py                                 # train it to count, then check everything
    python gpt.py --n_layer=4 --learning_rate=1e-3  # any setting below as --key=value (see --help)
    python gpt.py --mode=sample --prompt=41,42,   # continue a prompt with the saved out/ckpt.pt
    python gpt.py --mode=eval                     # every exact check of the saved model
    python gpt.py --mode=attention --prompt=909998,909999,  # what each head looks at

Beside it: data.py, the task (the text, the tokenizer, the batches, the counting check);
checks.py, the exact checks and the report a run ends with; settings.py, the --key=value
settings, the device, and what keeps a run safe (checkpoints, the out_dir lock, signals);
attention.py, the attention view.
"""
import copy
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from attention import show_attention
from checks import Checks, all_right, eval_line, evaluate, note_past_the_text, report
from data import StepSampler, Tokenizer, encode_prompt, get_batch, load_data
from settings import (SafeRun, check_compile, fail, finite, load_weights, lock_out_dir, parse_args,
                      pick_device, pick_dtype, progress_so_far, resume_training, run_safely)

# -----------------------------------------------------------------------------
# default settings; each can be overridden on the command line as --key=value
# data
max_num = 1_000_000        # the text is ",0,1,2,...,max_num-1,"
# model
n_layer = 2
n_head = 4
n_embd = 48                # 48 rather than 64: a fifth faster a step (LOG.md has the screens)
block_size = 32            # context length in characters
dropout = 0.0
place_dropout = 0.5        # share of training windows shown without places from the right
place_shift = 3            # raise a training window's places by up to this: see shift_places
shift_share = 0.5          # share of training windows whose places are raised
label_smoothing = 0.1      # the loss aims at about 0.9, not 1, for the right token: see GPTConfig
# training
batch_size = 64
window_alpha = 0.3         # 1 = uniform windows, as in the tutorial; lower = rare steps more often
max_iters = 2000           # length of the cosine schedule
learning_rate = 3e-3
min_lr = 0.0               # the cosine decay ends here
warmup_iters = 100
weight_decay = 0.5         # strong, to prefer the one rule that counts every number over shortcuts
ema_decay = 0.99           # evaluate, sample and save a moving average of the weights (0 = raw)
grad_clip = 1.0            # clip the gradient norm at this (0 = off)
eval_interval = 250        # evaluate (loss and exact counting checks) every this many steps
eval_iters = 20            # batches per loss estimate
stop_at_100 = False        # True: stop once every check of the text is right (past it: later)
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


# ------------------------------------------------------------------------------------------
# The model

@dataclass
class GPTConfig:
    block_size: int = 32
    vocab_size: int = 11
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 48
    dropout: float = 0.0
    place_dropout: float = 0.5  # training windows that lose their places from the right
    place_shift: int = 3        # training windows' places raised by 0..place_shift
    shift_share: float = 0.5    # the share of training windows raised
    # a loss that aims at 0.91 for the right token (and 0.009 for each other) is lowest at a
    # finite logit gap, so it never fades to 0: every number keeps being pulled to that gap
    label_smoothing: float = 0.1
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


def shift_places(left, right, most, share):
    """Training only: raise the places of a share of the windows by a random 0..most, one draw
    per window for the places from the left and from the right alike, so that the places of a
    number longer than any in the text (7th from the left, 8th from the right) are trained on the
    text's own numbers (McLeish et al. 2024). The first digit (left 1), the ones and the digit past
    them (right 2 and 1) keep theirs: n+1 is longer than n when n is all 9s, and that is read
    between where n begins and where its ones are. (B, T) each -> (B, T) each."""
    B = left.size(0)
    shifted = (torch.rand(B, 1, device=left.device) < share).long()                  # (B, 1)
    k = torch.randint(0, most + 1, (B, 1), device=left.device) * shifted             # (B, 1)
    left = torch.where(left >= 2, left + k, left)
    right = torch.where(right >= 3, right + k, right)
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
        places = config.block_size + config.place_shift  # the most a shifted place reaches
        self.wpl = nn.Embedding(places, config.n_embd)      # place from the left -> vector
        self.wpr = nn.Embedding(places + 1, config.n_embd)  # place from the right -> vector
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
        """idx (B, T) token ids -> logits (B, T, vocab_size), and the mean label-smoothed
        cross-entropy loss against targets (B, T) if given, over the targets that are not -1.
        cache: a KVCache (generation); weights: a list that receives each layer's attention
        weights (B, n_head, T, T_all)."""
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
            if self.training:  # a prompt's first number has no places from the right, so its digits
                # are found by the place from the left: some windows practise that on every number
                right = right * (torch.rand(B, 1, device=idx.device) >= self.config.place_dropout)
                left, right = shift_places(left, right, self.config.place_shift,
                                           self.config.shift_share)
        x = self.wte(idx) + self.wpe(pos) + self.wpl(left) + self.wpr(right)  # (B, T, C)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, cache, weights)                                   # (B, T, C)
        logits = self.lm_head(self.ln_f(x))                                # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T),
                                   ignore_index=-1, label_smoothing=self.config.label_smoothing)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0, use_cache=True):
        """Append max_new_tokens tokens to idx (B, T), one at a time, each chosen by
        sample_next_token from the model's prediction for the next token. When the context
        outgrows block_size, only its newest block_size // 2 tokens are kept, from their first
        comma on (in a batch, the first place where every row has one), so that the window begins
        at a number as a prompt's does: one that begins inside a number hides where it starts.
        Dropping half at once lets the key/value cache serve the next steps; cached and uncached
        see the same context, so they give the same tokens."""
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
# Training

def sync(device_type):
    """GPU work is queued: wait for it before reading the clock."""
    if device_type == "cuda":
        torch.cuda.synchronize()
    elif device_type == "mps":
        torch.mps.synchronize()


def build_model(cfg, ckpt, device):
    """The model and its averaged copy, from scratch or with the checkpoint's weights."""
    model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=Tokenizer().vocab_size,
                          n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                          dropout=cfg.dropout, place_dropout=cfg.place_dropout,
                          label_smoothing=cfg.label_smoothing, place_shift=cfg.place_shift,
                          shift_share=cfg.shift_share)).to(device)
    # with ema_decay > 0 a moving average of the trained weights, which smooths away their
    # step-to-step noise; with 0 a copy of them
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    if ckpt is not None:
        load_weights(model, ema, ckpt, cfg.out_dir)
    return model, ema


def sample(model, cfg, device, ctx):
    """Go on from --prompt: what a user of the trained model sees."""
    note_past_the_text(cfg)
    with ctx:
        out = model.generate(encode_prompt(cfg.prompt)[None].to(device), cfg.max_new_tokens,
                             temperature=cfg.temperature, top_k=cfg.top_k)
    print(Tokenizer().decode(out[0, 1:]))  # without the comma in front


def main(argv):
    """Train a GPT to count (or, with --mode, use the saved one). Returns a summary for bench.py."""
    cfg, ckpt = parse_args(argv, DEFAULTS, __file__)
    device = pick_device(cfg.device)
    device_type = device.split(":")[0]
    ptdtype = pick_dtype(cfg.dtype, device)
    # autocast runs the matmuls in ptdtype; the weights and the optimizer stay float32
    ctx = torch.autocast(device_type, dtype=ptdtype) if ptdtype != torch.float32 else nullcontext()
    if device_type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"  # TF32 for float32 matmuls (Ampere+)
    if cfg.compile:
        check_compile(device)
    if cfg.mode == "train":
        lock_out_dir(cfg.out_dir)
    torch.manual_seed(cfg.seed)

    # the model, and the moving average of its weights that we evaluate, sample from and save
    model, ema = build_model(cfg, ckpt, device)
    print(f"device {device} ({str(ptdtype).removeprefix('torch.')}), "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, {cfg.n_layer} layers x "
          f"{cfg.n_head} heads x {cfg.n_embd} wide, block_size {cfg.block_size}")
    if cfg.mode == "sample":
        return sample(ema, cfg, device, ctx)
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
    return train(model, ema, ckpt, train_data, val_data, sampler, checks, cfg, ctx, ptdtype)


def train(model, ema, ckpt, train_data, val_data, sampler, checks, cfg, ctx, ptdtype):
    """The training loop: from step 0, or from where the checkpoint left off, until every check
    is right (stop_at_100), max_iters or max_seconds; then the report. ctx: autocast to ptdtype
    (or nothing, for float32)."""
    device_type = train_data.device.type
    # the optimizer, a gradient scaler that keeps float16 gradients in range (off otherwise),
    # and where training starts: step 0, or the checkpoint's step with its random state
    optimizer = configure_optimizer(model, cfg, device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16)
    iter_num = resume_training(ckpt, optimizer, cfg, device_type) if ckpt is not None else 0
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
    interval_start, interval_iter = time.perf_counter(), iter_num  # since the last evaluation
    # saves checkpoints atomically, and turns Ctrl-C and other signals into "save and stop"
    with SafeRun(cfg, ckpt, DEFAULTS, __file__) as run:
        while True:
            elapsed = train_time + time.perf_counter() - interval_start
            out_of_steps = iter_num >= cfg.max_iters
            out_of_time = cfg.max_seconds > 0 and elapsed >= cfg.max_seconds
            evaluated = False

            # once in a while, at the end, and when asked to stop: check the loss, evaluate, save
            if iter_num % cfg.eval_interval == 0 or out_of_steps or out_of_time or run.signum:
                sync(device_type)
                interval = time.perf_counter() - interval_start
                train_time += interval
                if not finite(last_loss, model, ema):
                    stop = "diverged"  # the checkpoint on disk keeps the last finite weights
                elif run.signum:
                    stop = "interrupted"
                else:
                    t_eval = time.perf_counter()
                    losses = estimate_loss(ema, {"train": train_data, "val": val_data}, cfg, ctx)
                    # the dear checks only decide when to stop: without stop_at_100 they wait
                    # for the report, which runs every check on the final weights
                    dear = cfg.stop_at_100 and first_all is None
                    r = {"loss": losses, **evaluate(ema, checks, ctx, dear=dear)}
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
                if stop != "diverged" and not run.save(
                        model, ema, optimizer, iter_num,
                        progress_so_far(train_time, first_100, first_all)):
                    stop = stop or "save failed"
                interval_start, interval_iter = time.perf_counter(), iter_num

            # when to stop: every reason, in one place
            if stop is None:
                if run.signum and run.saved == iter_num:  # it came while evaluating: saved
                    stop = "interrupted"
                elif evaluated and cfg.stop_at_100 and first_all == iter_num:
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
            x, y = get_batch(train_data, cfg.batch_size, cfg.block_size, train_data.device,
                             sampler=sampler)
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
    run.exit_if_unfinished(stop, iter_num)  # diverged, interrupted, a failed save: say why
    print(f"stopped at step {iter_num} ({stop}): {train_time:.1f}s of training, "
          f"{eval_time:.1f}s of evaluation")
    with run.reporting():  # Ctrl-C here: the model is saved, say so
        r = report(ema, checks, r, cfg, ctx)
    tokens = (iter_num - first_iter) * cfg.batch_size * cfg.block_size
    return {"iters": iter_num, "train_time": train_time, "eval_time": eval_time,
            "counts": r["counts"], "first_100": first_100, "first_all": first_all,
            "correct": r["held-out"].correct, "total": r["held-out"].total,
            "tokens_per_s": tokens / max(train_time, 1e-9)}


if __name__ == "__main__":
    result = run_safely(main, sys.argv[1:])  # out of memory, Ctrl-C, | head: one line each
    if result is not None and not result["counts"]:
        sys.exit(3)  # the model does not count every number: scripts and CI should notice
