"""
A character-level GPT that learns to count: the model, its training loop, checkpoints and
generation. The task (the text, the batches, the exact checks and the report) is in data.py.

    python gpt.py                                  # train it to count, then check every number
    python gpt.py --n_layer=4 --learning_rate=1e-3 # any setting below, as --key=value (--help)
    python gpt.py --mode=sample --prompt=41,42,    # go on from a prompt with the saved model
    python gpt.py --mode=eval                      # every exact check of the saved model
"""
import copy
import math
import os
import shlex
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

from data import (CountingEval, StepSampler, check_settings, fail, get_batch, load_data,
                  parse_settings, percent, pick_device, report, sample)

# -----------------------------------------------------------------------------
# default settings; each can be overridden on the command line as --key=value
# data
max_num = 1_000_000        # the text is ",0,1,2,...,max_num-1,"
# model
n_layer = 2
n_head = 4
n_embd = 48
block_size = 32            # context length in characters
dropout = 0.0
place_dropout = 0.5        # share of training windows shown without places from the right
place_shift = 3            # raise a training window's places by up to this: see shift_places
shift_share = 0.5          # share of training windows whose places are raised
label_smoothing = 0.1      # the loss aims at 0.91, not 1, for the right token: see GPTConfig
# training
batch_size = 64
window_alpha = 0.3         # 1 = uniform windows, as in the tutorial; lower = rare steps more often
max_iters = 2000           # training steps; the cosine decay ends here
learning_rate = 3e-3
min_lr = 0.0               # the cosine decay ends here
warmup_iters = 100
weight_decay = 0.5         # strong, to prefer the one rule that counts every number over shortcuts
ema_decay = 0.99           # evaluate, sample and save a moving average of the weights (0 = raw)
grad_clip = 1.0            # clip the gradient norm at this (0 = off)
eval_interval = 500        # evaluate (the loss and the held-out counting check) every this often
eval_iters = 20            # batches per loss estimate
# system
device = "auto"            # auto = cuda, else mps, else cpu
dtype = "auto"             # auto = bfloat16 on a CUDA GPU that has it, else float32
compile = False            # torch.compile the model
seed = 1337
out_dir = "out"            # the checkpoint goes to out_dir/ckpt.pt
init_from = "scratch"      # scratch, or resume from out_dir/ckpt.pt
# checks and generation: after training, or from the saved model with --mode
mode = "train"             # train, sample (go on from --prompt), eval (every check)
prompt = "0,"              # the start of a count: whole numbers, each followed by a comma
max_new_tokens = 100
temperature = 0.0          # 0 = greedy (always the most likely token)
top_k = 0                  # sample only from the k most likely tokens (0 = all)
full_check = True          # also check the whole text from every start
long_count = 10_000        # count this many held-out numbers on, greedily, far past the window
streams = 20               # ... in this many streams at once
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if not k.startswith("_") and type(v) in (int, float, bool, str)}
OWN_KEYS = ("out_dir", "device", "dtype", "compile",  # where and how to run, and what to sample:
            "prompt", "max_new_tokens", "temperature", "top_k")  # never a checkpoint's
SIGNALS = [getattr(signal, s) for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s)]


# The model ----------------------------------------------------------------------------------------
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
    label_smoothing: float = 0.1  # aims at 0.91 for the right token: the gradient never fades
    comma: int = 0  # the token that ends a number: each digit's place is counted from it


class KVCache:
    """The keys and values of every token generated so far, per layer, so that the next token
    costs one token's work instead of the whole context's; and the tokens themselves, as a
    token's place in its number depends on those before it."""

    def __init__(self, n_layer):
        self.k, self.v, self.tokens = [None] * n_layer, [None] * n_layer, None

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
    0 where the window hides it: before its first comma and, from the right, in the number after."""
    pos = torch.arange(1, idx.size(1) + 1, device=idx.device)                  # (T,) from 1
    last = torch.where(idx == comma, pos, 0).cummax(dim=1).values  # (B, T) last comma so far
    before = torch.gather(F.pad(last[:, :-1], (2, 0)), 1, last)    # (B, T) the comma before it
    left = torch.where(last > 0, pos - last, 0)
    length = last - before - 1                                     # the number before's digits
    right = torch.where(before > 0, length - left + 2, 0).clamp(min=0)  # 0 also: 2+ digits longer
    return left, right


def shift_places(left, right, most, share):
    """Training only: raise the places of a share of the windows by a random 0..most (one draw per
    window), so that the places of numbers longer than the text's are trained on its own numbers
    (McLeish et al. 2024). The first digit (left 1), the ones and the digit past them (right 2, 1)
    keep theirs: whether n+1 is longer than n is read between them. (B, T) each -> (B, T) each."""
    B = left.size(0)
    shifted = (torch.rand(B, 1, device=left.device) < share).long()                  # (B, 1)
    k = torch.randint(0, most + 1, (B, 1), device=left.device) * shifted             # (B, 1)
    left = torch.where(left >= 2, left + k, left)
    right = torch.where(right >= 3, right + k, right)
    return left, right


class CausalSelfAttention(nn.Module):
    """Every position looks at itself and all earlier positions (never ahead) and takes a weighted
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
        places = config.block_size + config.place_shift  # rows: a left place < places, a right <=
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
        cross-entropy loss over the targets (B, T) that are not -1, if given. cache: a KVCache
        (generation); weights: a list that gets each layer's attention (B, n_head, T, T_all)."""
        B, T = idx.shape
        start = 0 if cache is None or cache.tokens is None else cache.tokens.size(1)  # cached
        assert start + T <= self.config.block_size, f"{start + T} tokens exceed block_size"
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
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T),
                                       ignore_index=-1, label_smoothing=self.config.label_smoothing)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.0, top_k=0, use_cache=True):
        """Append max_new_tokens tokens to idx (B, T), one at a time, each chosen by
        sample_next_token. When the context outgrows block_size, only its newest block_size // 2
        tokens are kept, from their first comma on (in a batch, the first place where every row
        has one): a window that begins inside a number hides where it starts. Dropping half at
        once lets the cache serve the next steps, and cached or not the model sees the same."""
        keep = max(1, self.config.block_size // 2)
        idx = idx.long()  # ids may come as bytes (Tokenizer.encode)
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


# Optimizer and learning-rate schedule -------------------------------------------------------------
def configure_optimizer(model, cfg, device_type):
    """AdamW, decaying matrices and embeddings only (not biases or LayerNorm gains), each update
    on all weights at once: fused on CUDA, foreach on a CPU (7% faster a step there, same bits)."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.99),
                             fused=device_type == "cuda", foreach=device_type == "cpu" or None)


def get_lr(it, cfg):
    """Linear warmup, then cosine decay from learning_rate to min_lr at max_iters."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # from 1 down to 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


# Settings, checkpoints and the device -------------------------------------------------------------
def get_config(argv):
    """The defaults with the command line's overrides, and the checkpoint (or None), which every
    mode but training from scratch loads (weights_only: no pickled code runs): its settings stand
    in for the defaults, but where and how to run, and what to sample."""
    cfg, given = parse_settings(argv, DEFAULTS, __file__)
    check_settings(cfg, DEFAULTS)  # the command line's, then again with the checkpoint's
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    if cfg.mode == "train" and cfg.init_from == "scratch":
        if "init_from" not in given and os.path.exists(path):  # never replace a model unasked
            fail(f"{path} holds a trained model; go on training it with --init_from=resume, "
                 f"replace it with --init_from=scratch, or pick another --out_dir")
        return cfg, None
    try:  # a missing, truncated or foreign file
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = {k: v for k, v in ckpt["settings"].items() if k in DEFAULTS}
    except Exception as e:
        fail(f"cannot read a checkpoint at {path} ({type(e).__name__}); train one with: "
             f"python gpt.py --init_from=scratch --out_dir={shlex.quote(cfg.out_dir)}")
    for key in {"n_layer", "n_head", "n_embd", "block_size", "place_shift"} & given:
        if getattr(cfg, key) != saved[key]:
            fail(f"the checkpoint in {cfg.out_dir} has {key}={saved[key]}; drop --{key}")
    own = ("mode", "init_from", *OWN_KEYS)
    vars(cfg).update({k: v for k, v in saved.items() if k not in given and k not in own})
    check_settings(cfg, DEFAULTS)
    return cfg, ckpt


def save_checkpoint(cfg, model, ema, optimizer, iter_num):
    """Atomic: a temporary file renamed over the last. "model" is the moving average, as used."""
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    tmp = f"{path}.{os.getpid()}.tmp"  # one per process: two runs never write the same file
    ckpt = {"model": ema.state_dict(), "train_model": model.state_dict(), "iter_num": iter_num,
            "optimizer": optimizer.state_dict(), "model_config": asdict(model.config),
            "settings": vars(cfg), "rng": torch.get_rng_state()}
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            os.fsync(f.fileno())  # on the disk before the rename
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk, no permission
        fail(f"cannot save {path} ({e}); the checkpoint before it is kept")
    finally:  # a failed or interrupted write leaves no temporary file
        if os.path.exists(tmp):
            os.remove(tmp)


def build_model(cfg, ckpt, device):
    """The model and the moving average of its weights, new or from the checkpoint."""
    config = {f.name: getattr(cfg, f.name) for f in fields(GPTConfig) if f.name in DEFAULTS}
    model = GPT(GPTConfig(**config)).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()  # smooths the steps' noise away
    if ckpt is not None:
        try:
            ema.load_state_dict(ckpt["model"])
            model.load_state_dict(ckpt["train_model"])
        except (KeyError, RuntimeError) as e:
            fail(f"the checkpoint in {cfg.out_dir} does not fit the model ({type(e).__name__}); "
                 f"train a new one with --init_from=scratch")
    return model, ema


def get_device(cfg):
    """The device (CUDA, else MPS, else the CPU) and the context its matmuls run in."""
    device = pick_device(cfg.device)
    device_type = torch.device(device).type
    if device_type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"  # TF32 for float32 matmuls (Ampere+)
    if cfg.dtype == "bfloat16" or cfg.dtype == "auto" and device_type == "cuda" \
            and torch.cuda.is_bf16_supported(including_emulation=False):  # weights stay float32
        return device, torch.autocast(device_type, dtype=torch.bfloat16)
    return device, nullcontext()


# Training -----------------------------------------------------------------------------------------
def main(argv):
    """Train a GPT to count (or, with --mode, use the saved one); return the checks that failed.
    Ctrl-C, SIGTERM (kill) and SIGHUP (a closed terminal) finish the step, save and stop."""
    cfg, ckpt = get_config(argv)
    device, ctx = get_device(cfg)
    torch.manual_seed(cfg.seed)
    model, ema = build_model(cfg, ckpt, device)
    print(f"device {device} ({'bfloat16' if isinstance(ctx, torch.autocast) else 'float32'}), "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, {cfg.n_layer} layers x "
          f"{cfg.n_head} heads x {cfg.n_embd} wide, block_size {cfg.block_size}")
    if cfg.mode == "sample":  # what a user of the trained model sees
        return print(sample(ema, cfg, ctx)[1:])  # without the comma in front
    t0 = time.perf_counter()  # the data, all of it on the device
    _, train_data, val_data = load_data(cfg.max_num)
    if len(val_data) < cfg.block_size + 2:
        fail(f"--max_num={cfg.max_num} is too small for a validation window; raise --max_num")
    sampler = None if cfg.window_alpha == 1 else StepSampler(train_data, cfg.block_size,
                                                             cfg.window_alpha)
    train_data, val_data = train_data.to(device), val_data.to(device)
    held_out = CountingEval(val_data, cfg.block_size)
    print(f"data ready in {time.perf_counter() - t0:.2f}s: {len(train_data):,} train / "
          f"{len(val_data):,} val tokens, {held_out.n - 1:,} held-out numbers to count")
    cfg.full_check |= cfg.mode == "eval"  # every check of a saved model
    if cfg.mode == "eval":
        return report(ema, {}, held_out, train_data, val_data, cfg, ctx)
    stop = []  # the signals heard, which the loop answers after its step: save and stop
    handlers = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in SIGNALS}
    try:
        r = train(model, ema, ckpt, train_data, val_data, sampler, held_out, cfg, ctx, stop)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    if stop:
        sys.exit(128 + stop[0])
    return report(ema, r, held_out, train_data, val_data, cfg, ctx)


def train(model, ema, ckpt, train_data, val_data, sampler, held_out, cfg, ctx, stop):
    """Train from step 0 or the checkpoint's to max_iters or a signal; the last evaluation."""
    optimizer = configure_optimizer(model, cfg, train_data.device.type)
    iter_num = 0 if ckpt is None else ckpt["iter_num"]
    if ckpt is not None:  # go on where it left off: the optimizer's state, the random stream
        optimizer.load_state_dict(ckpt["optimizer"])
        optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay  # as given now, if given
        torch.set_rng_state(ckpt["rng"])
        print(f"resuming from {cfg.out_dir} at step {iter_num}")
    train_model = torch.compile(model) if cfg.compile else model
    params, ema_params = list(model.parameters()), list(ema.parameters())
    last_loss = torch.zeros(())  # the last step's loss, read only now and then: a GPU runs ahead
    t0, t0_iter, times, r = time.perf_counter(), iter_num, [0.0, 0.0], {}  # train, eval seconds
    while True:
        # every eval_interval steps and at the end: evaluate, then save; on a signal: save only
        if iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters or stop:
            if train_data.is_cuda:
                torch.cuda.synchronize()  # the GPU's work is queued: wait for it, then time it
            times[0] += time.perf_counter() - t0
            if not stop:
                ms_per_step = 1000 * (time.perf_counter() - t0) / max(iter_num - t0_iter, 1)
                r = evaluate(ema, iter_num, ms_per_step, times, train_data, val_data, held_out, cfg,
                             ctx)
            if r is None or not math.isfinite(last_loss.item()):  # keep the last finite weights
                fail("the loss is no longer finite: training diverged, and the checkpoint keeps "
                     "the last finite weights; lower --learning_rate or raise --warmup_iters", 1)
            save_checkpoint(cfg, model, ema, optimizer, iter_num)
            t0, t0_iter = time.perf_counter(), iter_num
        if stop or iter_num >= cfg.max_iters:
            break
        # one training step: forward, backward, clip, update
        for group in optimizer.param_groups:
            group["lr"] = get_lr(iter_num, cfg)
        x, y = get_batch(train_data, cfg.batch_size, cfg.block_size, train_data.device,
                         sampler=sampler)
        with ctx:
            _, loss = train_model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():  # the moving average e = decay * e + (1 - decay) * p, in one call
            torch._foreach_lerp_(ema_params, params, 1.0 - cfg.ema_decay)
        last_loss = loss.detach()
        iter_num += 1
    print(f"stopped at step {iter_num}: {times[0]:.1f}s of training, {times[1]:.1f}s of "
          f"evaluation")
    if stop:  # the checkpoint holds every setting but where and how to run, and what to sample
        where = [f"--{k}={getattr(cfg, k)}" for k in OWN_KEYS if getattr(cfg, k) != DEFAULTS[k]]
        print(f"interrupted at step {iter_num}, saved in {cfg.out_dir}; resume with: "
              f"{shlex.join(['python', 'gpt.py', '--init_from=resume', *where])}", file=sys.stderr)
    return r


@torch.no_grad()
def evaluate(ema, iter_num, ms_per_step, times, train_data, val_data, held_out, cfg, ctx):
    """The averaged weights' loss in eval mode over eval_iters uniform batches per split (the same
    each time, from a generator of their own: training's random stream is untouched) and every
    held-out number, on one line; None if a loss is not finite."""
    t, losses = time.perf_counter(), {}
    for name, data in (("train", train_data), ("val", val_data)):
        gen = torch.Generator().manual_seed(cfg.seed)
        loss = torch.zeros(cfg.eval_iters, device=data.device)  # read once: no sync per batch
        for i in range(cfg.eval_iters):
            x, y = get_batch(data, cfg.batch_size, cfg.block_size, data.device, generator=gen)
            with ctx:
                loss[i] = ema(x, y)[1]
        losses[name] = loss.mean().item()
    if not all(math.isfinite(v) for v in losses.values()):
        return None
    with ctx:
        result = held_out(ema)
    times[1] += time.perf_counter() - t
    print(f"step {iter_num:5d} | loss train {losses['train']:.4f} val {losses['val']:.4f} | "
          f"held-out {percent(result.correct, result.total):>8} margin {result.margin:5.2f} | "
          f"{ms_per_step:.1f} ms/step, eval {time.perf_counter() - t:.1f}s", flush=True)
    return {"held-out": result}


if __name__ == "__main__":
    try:
        wrong = main(sys.argv[1:])
    except KeyboardInterrupt:  # outside the training loop, which saves first
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(3 if wrong else 0)  # 3: the model does not count every number (scripts, CI notice)
