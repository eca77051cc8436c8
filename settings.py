"""
Command-line settings, their checks, the device, and what keeps a training run safe.

Each script (bigram.py, gpt.py, bench.py) keeps its settings as plain variables between two
'# ----' lines at its top. This file turns `--key=value` arguments into those settings, checks
every script's settings by the same rules, prints that block for --help, and picks the device
and the precision.

For gpt.py it also keeps a run from being lost, each piece one call from gpt.py: the settings
reconciled with a checkpoint (parse_args), one training process per out_dir (lock_out_dir),
checkpoints loaded safely (load_checkpoint, load_weights), a resumed run put back where it was
(resume_training), and around the training loop SafeRun: checkpoints written atomically, Ctrl-C
and other signals turned into "save and stop", and a run that ends without its report told how to
go on. run_safely turns what the loop does not handle (out of memory, a second Ctrl-C) into one
line.
"""
import math
import os
import re
import shlex
import shutil
import signal
import sys
from contextlib import contextmanager
from dataclasses import asdict
from types import SimpleNamespace

import torch

from data import VAL_FRAC, Tokenizer, longest_number, text_length

# peak memory of `python gpt.py`: about 0.4 GB, plus 12.6 bytes per character of text (measured
# at max_num 1M and 10M with every check); with a margin:
BASE_MEMORY, BYTES_PER_CHAR = 2**29, 16

# (setting, rule, what it must be): each script checks the settings it has
RULES = [
    ("max_num", lambda v: v >= 10, "at least 10"),
    ("n_layer", lambda v: v >= 1, "at least 1"),
    ("n_head", lambda v: v >= 1, "at least 1"),
    ("n_embd", lambda v: v >= 1, "at least 1"),
    ("block_size", lambda v: v >= 2, "at least 2"),
    ("batch_size", lambda v: v >= 1, "at least 1"),
    ("eval_interval", lambda v: v >= 1, "at least 1"),
    ("eval_iters", lambda v: v >= 1, "at least 1"),
    ("runs", lambda v: v >= 1, "at least 1"),
    ("sweep_seeds", lambda v: v >= 1, "at least 1"),
    ("sweep_paths", lambda v: 1 <= v <= 5, "from 1 to 5"),
    ("gen_numbers", lambda v: v >= 1, "at least 1"),
    ("streams", lambda v: v >= 1, "at least 1"),
    ("max_iters", lambda v: v >= 0, "0 or more"),
    ("warmup_iters", lambda v: v >= 0, "0 or more"),
    ("max_seconds", lambda v: v >= 0, "0 or more (0 = no limit)"),
    ("max_new_tokens", lambda v: v >= 0, "0 or more"),
    ("long_count", lambda v: v >= 0, "0 or more"),
    ("top_k", lambda v: v >= 0, "0 or more (0 = all tokens)"),
    ("learning_rate", lambda v: 0 < v <= 1,
     "positive and at most 1 (larger AdamW steps only diverge)"),
    ("min_lr", lambda v: v >= 0, "0 or more"),
    ("weight_decay", lambda v: v >= 0, "0 or more"),
    ("grad_clip", lambda v: v >= 0, "0 or more (0 = off)"),
    ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("place_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("place_shift", lambda v: v >= 0, "0 or more (0 = off)"),
    ("shift_share", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1) (0 = plain cross-entropy)"),
    ("window_alpha", lambda v: 0 <= v <= 1, "in [0, 1] (1 = uniform windows)"),
    ("ema_decay", lambda v: 0 <= v < 1, "in [0, 1) (0 = no averaging)"),
    ("temperature", lambda v: v == 0 or 1e-3 <= v,
     "0 (greedy) or at least 0.001, which is as good as greedy"),
    ("seed", lambda v: 0 <= v < 2**63, "a whole number from 0 to 2**63-1"),
    ("mode", lambda v: v in ("train", "sample", "eval", "attention"),
     "train, sample, eval or attention"),
    ("init_from", lambda v: v in ("scratch", "resume"), "scratch or resume"),
    ("dtype", lambda v: v in ("auto", "float32", "bfloat16", "float16"),
     "auto, float32, bfloat16 or float16"),
]


def fail(message):
    """Bad input: one line that names the problem and the fix, exit code 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def settings_block(path):
    """The lines between the first two '# ----' lines of a script: its settings, commented."""
    lines = open(path).read().splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith("# ----")]
    return "\n".join(lines[marks[0] + 1:marks[1]])


def parse_settings(argv, defaults, path, data=True):
    """Apply --key=value overrides to a script's defaults, each converted to its default's type,
    and check them (the text and the window too, unless data=False: gpt.py checks those once a
    checkpoint's settings are merged in). Returns the settings (read as s.n_layer) and the set
    of keys given.
    -h or --help prints the settings block of the script at `path` and exits."""
    if "-h" in argv or "--help" in argv:
        print(f"usage: python {os.path.basename(path)} [--key=value ...]\n\n{settings_block(path)}")
        sys.exit(0)
    settings, given = dict(defaults), set()
    for arg in argv:
        key, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not eq:
            example = next(iter(defaults))
            fail(f"cannot read {arg!r}: write settings as --key=value, e.g. "
                 f"--{example}={defaults[example]} (--help lists them)")
        if key not in defaults:
            fail(f"unknown setting --{key}; valid settings: {' '.join('--' + k for k in defaults)}")
        if key in given:
            fail(f"--{key} is given twice; give each setting once")
        kind = type(defaults[key])
        try:
            if kind is bool:
                settings[key] = {"true": True, "1": True, "false": False, "0": False}[value.lower()]
            else:
                settings[key] = kind(value)
        except (KeyError, ValueError):
            fail(f"--{key}={value} is not a valid {kind.__name__}; e.g. --{key}={defaults[key]}")
        if kind is float and not math.isfinite(settings[key]):
            fail(f"--{key}={value} is not a finite number; e.g. --{key}={defaults[key]}")
        if key == "out_dir":  # the shell leaves the ~ of --out_dir=~/runs as it is
            settings[key] = os.path.expanduser(value)
        given.add(key)
    settings = SimpleNamespace(**settings)
    check_settings(settings, defaults, data=data)
    return settings, given


def check_settings(s, defaults, origin=None, given=(), data=True):
    """The rules above; with data, whether the validation split holds a window and a few
    numbers and a window two numbers, and whether the machine has the memory that max_num needs.
    All before any work is done. origin: where the settings not in `given` came from (a
    checkpoint), named instead of a flag."""
    for key, ok, must in RULES:
        if key in defaults and not ok(getattr(s, key)):
            if origin and key not in given:
                fail(f"{origin} has {key}={getattr(s, key)}, which must be {must}; train a new "
                     f"one")
            fail(f"--{key}={getattr(s, key)} must be {must}; the default is {defaults[key]}")
    if data and "max_num" in defaults:
        # the validation split as data.load_data makes it, from numbers of at most `longest` chars
        n_val, longest = int(text_length(s.max_num) * VAL_FRAC), longest_number(s.max_num)
        # a checkpoint's block_size is fixed: then only max_num can change
        window_fixed = origin and "block_size" not in given
        if n_val < max(s.block_size + 2, 3 * longest):
            fix = "--max_num" if window_fixed else "--max_num or lower --block_size"
            fail(f"--max_num={s.max_num} gives a validation split of {n_val} tokens, too short "
                 f"for a window of {s.block_size + 1} tokens and three whole numbers; raise {fix}")
        if s.block_size < 2 * longest:  # get_batch, too, scores only what follows a second comma
            window = (f"{origin} has block_size={s.block_size}, which" if window_fixed
                      else f"--block_size={s.block_size}")
            fix = ("a smaller --max_num" if window_fixed
                   else f"--block_size={2 * longest} or more, or a smaller --max_num")
            fail(f"{window} cannot hold two numbers of {longest - 1} digits and their commas (the "
                 f"checks need n and n+1 in one window); use {fix}")
        need = BASE_MEMORY + text_length(s.max_num) * BYTES_PER_CHAR
        have = machine_memory()
        if have and need > have:
            fail(f"--max_num={s.max_num:,} needs about {need / 2**30:,.1f} GB of memory, "
                 f"more than this machine's {have / 2**30:,.1f} GB; use a smaller --max_num")


def machine_memory():
    """Bytes of physical memory, or None where the OS does not say (Windows)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def pick_device(name="auto"):
    """auto: CUDA if present, else Apple's MPS, else the CPU. A named device must be there."""
    available = (["cpu"] + ["cuda"] * torch.cuda.is_available()
                 + ["mps"] * torch.backends.mps.is_available())
    if name == "auto":
        return "cuda" if "cuda" in available else available[-1]
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if (device is None or device.type not in available
            or (device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count())):
        fail(f"--device={name} is not on this machine; available: {', '.join(available)} "
             f"(or --device=auto)")
    return name


def pick_dtype(name, device):
    """The precision of the matmuls. auto: bfloat16 on a CUDA GPU that has it natively (compute
    capability 8.0+), float16 on an older one (trained with a gradient scaler), float32 on the
    CPU and MPS. Weights and optimizer state stay float32 whatever this says."""
    if name == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return (torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False)
                else torch.float16)
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def check_compile(device):
    """torch.compile needs a toolchain (Triton and a GPU of compute capability 7.0+, or a C++
    compiler on the CPU): try it on a tiny function first, so that a missing one is one line."""
    try:
        torch.compile(lambda x: x * 2)(torch.ones(2, device=device))
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:120]
        fail(f"--compile=True does not work on this machine ({type(e).__name__}: {reason}); "
             f"run without it")


# ------------------------------------------------------------------------------------------
# gpt.py's runs: settings with a checkpoint, the out_dir lock, checkpoints, signals

def checkpoint_path(out_dir):
    """Where the run in out_dir keeps its checkpoint."""
    return os.path.join(out_dir, "ckpt.pt")


MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size")  # a checkpoint fixes these (and seed)
# a run's own, never taken from a checkpoint: what to do, where, on which machine
RUN_KEYS = ("mode", "init_from", "out_dir", "device", "dtype", "compile")
# what to generate: sampling from a saved model starts from gpt.py's defaults, not the prompt
# that the training run's report used
GENERATE_KEYS = ("prompt", "max_new_tokens", "temperature", "top_k")


def parse_args(argv, defaults, path):
    """gpt.py's defaults (the script at `path`) with the command line's --key=value overrides,
    checked for sense. Every mode but training from scratch loads the checkpoint, whose saved
    settings then stand in for the defaults. Returns the settings and the checkpoint (or None)."""
    cfg, given = parse_settings(argv, defaults, path, data=False)
    ckpt_path = checkpoint_path(cfg.out_dir)
    if os.path.exists(ckpt_path) and not os.path.isfile(ckpt_path):
        fail(f"{ckpt_path} is not a file, so no checkpoint can be read or saved there; move it "
             f"away or pick another --out_dir")
    ckpt = None
    if cfg.mode != "train" or cfg.init_from == "resume":
        # lock first: another run must not save after we read (but a mistyped out_dir, with
        # no checkpoint in it, gets neither a directory nor a lock file)
        if cfg.mode == "train" and os.path.isfile(ckpt_path):
            lock_out_dir(cfg.out_dir)
        try:
            ckpt = load_checkpoint(ckpt_path)
        except CheckpointError as e:
            fail(str(e))
        # a resumed run goes on with the checkpoint's random stream, so its seed is fixed too
        # place_shift sizes the place embeddings, so it is fixed too
        fixed = MODEL_KEYS + ("place_shift",) + (("seed",) if cfg.mode == "train" else ())
        own = RUN_KEYS + (GENERATE_KEYS if cfg.mode != "train" else ())
        for key, value in ckpt["settings"].items():
            if key in defaults and type(value) is not type(defaults[key]):
                fail(f"checkpoint {ckpt_path} has {key}={value!r}, not a "
                     f"{type(defaults[key]).__name__}: gpt.py did not write it; train a new one")
            if key in fixed and key in given and getattr(cfg, key) != value:
                fail(f"the checkpoint in {cfg.out_dir} has {key}={value} but --{key}="
                     f"{getattr(cfg, key)} was given; drop --{key} (or train a new model with "
                     f"--init_from=scratch)")
            if key in defaults and key not in given and key not in own:
                setattr(cfg, key, value)
        # the checkpoint's settings obey the same rules
        check_settings(cfg, defaults, origin=f"checkpoint {ckpt_path}", given=given)
        if cfg.mode == "train" and cfg.max_iters < ckpt["iter_num"]:
            fail(f"the checkpoint in {cfg.out_dir} is at step {ckpt['iter_num']}, past "
                 f"--max_iters={cfg.max_iters}; give a larger --max_iters to train on (or check "
                 f"it with --mode=eval)")
    else:
        check_settings(cfg, defaults)
    if cfg.n_embd % cfg.n_head:
        fail(f"--n_embd={cfg.n_embd} is not divisible by --n_head={cfg.n_head}; "
             f"pick n_embd as a multiple of n_head")
    if cfg.min_lr > cfg.learning_rate:
        fail(f"--min_lr={cfg.min_lr} is above --learning_rate={cfg.learning_rate}; "
             f"the decay ends below where it starts")
    try:
        Tokenizer().encode(cfg.prompt)
    except ValueError as e:
        fail(f"--prompt={cfg.prompt!r}: {e}")
    number = r"(0|[1-9]\d*)"  # as the text writes it: no leading zeros
    if not re.fullmatch(rf",?({number},)*{number}?", cfg.prompt) or not cfg.prompt.strip(","):
        fail(f"--prompt={cfg.prompt!r} is not the start of a count: give whole numbers without "
             f"leading zeros, each followed by one comma, e.g. --prompt=41,42,")
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
        if isinstance(t, torch.nn.Module):
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
        "settings": dict(vars(cfg)),
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
        if not (isinstance(ckpt["model_config"], dict)
                and set(MODEL_KEYS) <= ckpt["model_config"].keys()):
            raise TypeError("model_config")
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}): it is corrupt "
                              f"or truncated; train a new one over it with: python gpt.py "
                              f"--init_from=scratch --out_dir={shlex.quote(os.path.dirname(path))}")
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
        (lambda: isinstance(ckpt["rng"], torch.Tensor) and ckpt["rng"].dtype == torch.uint8
         and ckpt["rng"].shape == torch.get_rng_state().shape, "random state"),
        (lambda: isinstance(ckpt.get("progress", {}), dict), "progress"),
    ]
    problem = next((what for ok, what in checks if not ok()), None)
    if problem:
        raise CheckpointError(f"checkpoint {path} holds {problem} that gpt.py never writes; "
                              f"train a new one (or point --out_dir at another)")
    return ckpt


def resume_training(ckpt, optimizer, cfg, device_type):
    """Put a resumed run where the checkpoint left off: the optimizer's state, and the random
    streams (the batches', and dropout's where the device has its own). Returns the step."""
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        fail(f"the checkpoint in {cfg.out_dir} holds an optimizer state that does not fit the "
             f"model ({type(e).__name__}); train a new one")
    optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay  # else the saved one wins
    torch.set_rng_state(ckpt["rng"])
    if device_type in ("cuda", "mps") and ckpt.get("device_type") == device_type:
        getattr(torch, device_type).set_rng_state(ckpt["device_rng"])
    print(f"resuming from {cfg.out_dir} at step {ckpt['iter_num']}")
    return ckpt["iter_num"]


def resume_command(cfg, defaults, path, action="--init_from=resume"):
    """The command that continues this run of the script at `path` (or, with another action,
    uses its checkpoint): the checkpoint holds every setting but where it is and the machine's
    (shell-quoted, so that an out_dir with a space survives a paste)."""
    given = [f"--{k}={getattr(cfg, k)}" for k in ("out_dir", "device", "dtype", "compile")
             if getattr(cfg, k) != defaults[k]]
    try:
        script = os.path.relpath(path)  # from where this run was started
    except ValueError:  # on Windows, when the current directory is on another drive
        script = path
    return shlex.join(["python", script, action, *given])


def load_weights(model, ema, ckpt, out_dir):
    """The checkpoint's weights into the model (raw, what training resumes) and its moving
    average (what is evaluated, sampled and saved); a model of another shape is one line."""
    try:
        ema.load_state_dict(ckpt["model"])
        model.load_state_dict(ckpt["train_model"])
    except RuntimeError as e:
        fail(f"the checkpoint in {out_dir} does not fit the model "
             f"({str(e).splitlines()[0]}); train a new one")


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


class SafeRun(StopOnSignal):
    """gpt.py's training loop, kept safe: a signal asks it to stop (signum, as StopOnSignal),
    save() writes the checkpoint atomically and remembers the step on disk or why it could not,
    exit_if_unfinished() tells a run that stops without its report why, and how to go on, and
    reporting() turns Ctrl-C during the report into one line."""

    def __init__(self, cfg, ckpt, defaults, path):
        self.cfg, self.defaults, self.path = cfg, defaults, path  # path: the script, to resume
        self.saved = ckpt["iter_num"] if ckpt is not None else None  # the step on disk
        self.error = None  # why the last save failed

    def save(self, model, ema, optimizer, iter_num, progress):
        """Save the checkpoint; False if it could not be written (the one before is kept)."""
        try:
            save_checkpoint(checkpoint_path(self.cfg.out_dir), model, ema, optimizer, iter_num,
                            self.cfg, progress)
        except SaveError as e:
            self.error = e
            return False
        self.saved = iter_num
        return True

    @contextmanager
    def reporting(self):
        """The report after training: Ctrl-C there stops it, and says the model is saved."""
        try:
            yield
        except KeyboardInterrupt:
            print(f"interrupted during the report; the model of step {self.saved} is saved in "
                  f"{checkpoint_path(self.cfg.out_dir)}, and this runs every check on it again: "
                  f"{resume_command(self.cfg, self.defaults, self.path, '--mode=eval')}",
                  file=sys.stderr)
            sys.exit(130)

    def exit_if_unfinished(self, stop, iter_num):
        """A loop that stopped without its report (stop: "diverged", "interrupted" or "save
        failed") says why and how to go on, then exits non-zero so that scripts notice.
        Otherwise it returns."""
        if stop not in ("diverged", "interrupted", "save failed"):
            return
        ckpt_path, saved = checkpoint_path(self.cfg.out_dir), self.saved
        resume = f" with: {resume_command(self.cfg, self.defaults, self.path)}"
        if stop == "diverged":
            code = 1
            message = (f"error: training diverged by step {iter_num} (the loss or the weights are "
                       f"no longer finite); lower --learning_rate or raise --warmup_iters. "
                       f"{ckpt_path} was not overwritten.")
        elif stop == "interrupted":
            code = 128 + self.signum
            message = f"interrupted at step {iter_num}; " + (
                f"saved {ckpt_path}." if self.error is None else f"error: {self.error}.")
            if saved is not None:
                message += f" Resume{f' from step {saved}' if saved != iter_num else ''}{resume}"
        else:
            code = 1
            message = f"error: {self.error}" + (f", then resume from its step {saved}{resume}"
                                                if saved is not None else "")
        try:  # on stderr, which still reaches the terminal when stdout goes through | tee
            print(message, file=sys.stderr)
        except OSError:  # the terminal is gone (SIGHUP): the checkpoint is what matters
            pass
        sys.exit(code)


def run_safely(main, argv):
    """Run gpt.py's main(argv) from the command line: what the training loop does not handle
    itself (out of memory, a second Ctrl-C, a reader that stops early) ends in one line, not a
    traceback."""
    try:
        return main(argv)
    except RuntimeError as e:  # settings too big for the machine: say so in one line
        if not (isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)):
            raise
        fail(f"out of memory ({str(e).splitlines()[0]}); use a smaller --batch_size, or a smaller "
             f"model (--n_embd, --n_layer, --block_size)")
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training: nothing more to save
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader of the output stopped early (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
