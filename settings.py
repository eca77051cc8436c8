"""
Command-line settings, their checks, and the device: shared by bigram.py, gpt.py and bench.py.

Each script keeps its settings as plain variables between two '# ----' lines at its top. This
file turns `--key=value` arguments into those settings, checks every script's settings by the
same rules, prints that block for --help, and picks the device and the precision.
"""
import math
import os
import sys
from types import SimpleNamespace

import torch

from data import VAL_FRAC, longest_number, text_length

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
    ("sweep_paths", lambda v: 1 <= v <= 4, "from 1 to 4"),
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


def parse_settings(argv, defaults, path):
    """Apply --key=value overrides to a script's defaults, each converted to its default's type,
    and check them. Returns the settings (read as s.n_layer) and the set of keys given.
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
        given.add(key)
    settings = SimpleNamespace(**settings)
    check_settings(settings, defaults)
    return settings, given


def check_settings(s, defaults, origin=None, given=()):
    """The rules above; whether the validation split holds a window and a few numbers; whether
    the machine has the memory that max_num needs. All before any work is done. origin: where
    the settings not in `given` came from (a checkpoint), named instead of a flag."""
    for key, ok, must in RULES:
        if key in defaults and not ok(getattr(s, key)):
            if origin and key not in given:
                fail(f"{origin} has {key}={getattr(s, key)}, which must be {must}; train a new "
                     f"one")
            fail(f"--{key}={getattr(s, key)} must be {must}; the default is {defaults[key]}")
    if "max_num" in defaults:
        # the validation split as data.load_data makes it, from numbers of at most `longest` chars
        n_val, longest = int(text_length(s.max_num) * VAL_FRAC), longest_number(s.max_num)
        if n_val < max(s.block_size + 2, 3 * longest):
            fail(f"--max_num={s.max_num} gives a validation split of {n_val} tokens, too short "
                 f"for a window of {s.block_size + 1} tokens and three whole numbers; "
                 f"raise --max_num or lower --block_size")
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
