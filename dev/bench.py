"""
The benchmark behind README.md's figures, on the device it runs on.

    python dev/bench.py                         # speed figures, then `python gpt.py` as a user
    python dev/bench.py --whole_command=False   # the speed figures alone (under a minute)
    python dev/bench.py --sweep=True            # instead: seeds 1-8 on each floating-point path,
    python dev/bench.py --sweep=True --sweep_tiny=True   # hours on 2 cores; or the tiny settings

Each speed figure is also in model GFLOP/s and as a share of the peak measured here (a large
matmul in the dtype the model computes in). The machine may be shared: compare the figures of
one bench run with each other, not with another machine's.
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch

import gpt
from data import CountingEval, StepSampler, encode_prompt, fail, get_batch, load_data
from data import parse_settings

# -----------------------------------------------------------------------------
device = "auto"          # auto = cuda, else mps, else cpu
steps = 50               # training steps timed, after 5 that warm up
reps = 10                # matmuls timed for the peak (the best counts)
check_numbers = 100_000  # held-out numbers in the timed exact check (1M's val split has 98,411)
gen_numbers = 300        # numbers each stream writes in the generation figures
streams = 64             # streams of the batched generation, against one stream
whole_command = True     # also time `python gpt.py` as a user runs it (minutes on a CPU)
whole_args = ""          # gpt.py settings for that run, e.g. "--max_iters=500"
sweep = False            # instead: seeds 1..sweep_seeds on each floating-point path, in parallel
sweep_seeds = 8
sweep_tiny = False       # sweep the tests' tiny settings (TINY, with every check) instead
sweep_args = ""          # gpt.py settings for every run of the sweep, e.g. "--n_head=8"
out_dir = "out/bench"    # each sweep run's out_dir and printout: out_dir/sweep/<path>-<seed>
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith("_") and k.islower() and type(v) in (int, float, bool, str)}

# the tests' tiny GPT (test_gpt.py trains it): 100,000 numbers, 48 wide, windows of 24; its
# numbers are a digit shorter, so its places are shifted by up to 2, not 3 (measured so: LOG.md)
TINY = ["--max_num=100000", "--n_layer=2", "--n_head=4", "--n_embd=48", "--block_size=24",
        "--batch_size=32", "--max_iters=3000", "--eval_interval=100", "--learning_rate=3e-3",
        "--min_lr=0", "--eval_iters=2", "--full_check=False", "--long_count=0",
        "--max_new_tokens=0", "--device=cpu", "--place_shift=2"]
# the sweep's floating-point paths: each rounds differently, so each acts as another seed.
# ATEN_CPU_CAPABILITY picks torch's CPU kernels; each path once, if this CPU has it
CAPABILITY = torch.backends.cpu.get_cpu_capability()  # DEFAULT, AVX2, AVX512, ...
CPU = ["--device=cpu"]
PATHS = [path[1:] for path in [  # (here?, name, environment, gpt.py settings)
    (CAPABILITY.startswith("AVX"), "AVX2 kernels", {"ATEN_CPU_CAPABILITY": "avx2"}, CPU),
    (True, "no vector kernels", {"ATEN_CPU_CAPABILITY": "default"}, CPU),
    (CAPABILITY not in ("AVX2", "DEFAULT"), f"this CPU's kernels ({CAPABILITY})", {}, CPU),
    (True, "bfloat16 autocast", {}, CPU + ["--dtype=bfloat16"]),
    (torch.cuda.is_available(), "CUDA, its default dtype", {}, ["--device=cuda"])] if path[0]]
# a check as gpt.py's report prints it: "whole text (57.0s): counting accuracy 100.000%
# (999999/999999), margin 2.95" (a check the last evaluation ran has no time); the groups:
# accuracy, right, of, margin
CHECK = r"^{}(?: \([\d.]+s\))?: counting accuracy (\S+) \((\d+)/(\d+)\), margin (\S+)"


def setup(name):
    """The device and the context gpt.py runs its matmuls in, the device's name, and the dtype."""
    device, ctx = gpt.get_device(SimpleNamespace(device=name, dtype="auto"))
    dtype = ctx.fast_dtype if isinstance(ctx, torch.autocast) else torch.float32
    if device.startswith("cuda"):
        return device, ctx, torch.cuda.get_device_name(device), dtype
    cpu = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    return device, ctx, found(r"^model name\s*: (.*)$", cpu, device), dtype


def timed(device, fn):
    """Seconds that fn() takes, the work it queued on a GPU included."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else torch.mps.synchronize \
        if device == "mps" else lambda: None
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def step_ms(model, ema, cfg, train_data, sampler, ctx, steps):
    """ms per training step, as the body of gpt.train's loop: batch, forward, backward, clip,
    AdamW, moving average."""
    optimizer = gpt.configure_optimizer(model, cfg, train_data.device.type)
    params, ema_params = list(model.parameters()), list(ema.parameters())

    def step(it):
        for group in optimizer.param_groups:
            group["lr"] = gpt.get_lr(it, cfg)
        x, y = get_batch(train_data, cfg.batch_size, cfg.block_size, train_data.device,
                         sampler=sampler)
        with ctx:
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - cfg.ema_decay)
    for it in range(5):
        step(it)
    return 1000 * timed(cfg.device, lambda: [step(it) for it in range(5, 5 + steps)]) / steps


def speed(cfg):
    """Every speed figure of gpt.py's default model, on its first weights (the speed does not
    depend on them), each in model GFLOP/s and as a share of the measured peak."""
    device, ctx, name, dtype = setup(cfg.device)
    print(f"device {device} ({name}), torch {torch.__version__}, CPU capability {CAPABILITY}, "
          f"{torch.get_num_threads()} threads")
    n = 4096 if device.startswith("cuda") else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    peak = max(2 * n**3 / timed(device, lambda: a @ a) for _ in range(cfg.reps + 1)) / 1e9
    print(f"peak: {peak:,.1f} GFLOP/s, {str(dtype)[6:]} matmul {n}x{n} @ {n}x{n}, best of "
          f"{cfg.reps + 1}")
    g, _ = gpt.get_config(["--init_from=scratch", f"--device={device}"])  # gpt.py's defaults
    torch.manual_seed(g.seed)
    model, ema = gpt.build_model(g, None, device)
    # model FLOPs per token, PaLM's count (the causal mask not subtracted): a forward pass is 2
    # per matmul weight, N of them (embeddings are lookups, not matmuls), plus q @ k and att @ v
    # over T keys, 4 * n_layer * T * n_embd; a training step is 3x (backward: twice the forward)
    # = 6N + 12 * n_layer * T * n_embd
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    forward = 2 * weights + 4 * g.n_layer * g.block_size * g.n_embd
    tokens = g.batch_size * g.block_size
    print(f"gpt.py's model: N = {weights:,} matmul weights; FLOPs per token: forward 2N + "
          f"4*n_layer*T*n_embd = {forward:,}, training 3x that; a training step of {tokens:,} "
          f"tokens: {3 * forward * tokens / 1e6:,.0f} MFLOP\n\n"
          f"| what | speed | model GFLOP/s | of the peak |\n|---|---|---|---|")

    def row(what, figure, flops_per_s):
        print(f"| {what} | {figure} | {flops_per_s / 1e9:,.2f} | {flops_per_s / 1e9 / peak:.2%} "
              f"|", flush=True)
    _, train_data, val_data = load_data(g.max_num)
    sampler = StepSampler(train_data, g.block_size, g.window_alpha)
    ms = step_ms(model, ema, g, train_data.to(device), sampler, ctx, cfg.steps)
    row(f"training step, batch {g.batch_size} x {g.block_size}", f"{ms:.2f} ms/step",
        3 * forward * tokens / ms * 1000)
    commas = (val_data == 0).nonzero().squeeze(1)  # the first check_numbers held-out numbers
    val_data = val_data[:int(commas[min(cfg.check_numbers + 1, len(commas) - 1)]) + 1]
    ev = CountingEval(val_data.to(device), g.block_size, every_start=True)
    with ctx:
        positions = len(ev.ws) * ev.T / timed(device, lambda: ev(ema))
    row(f"exact check from every start, {len(ev.ws):,} held-out windows",
        f"{positions:,.0f} positions/s", forward * positions)
    for n_streams, use_cache in ((1, True), (1, False), (cfg.streams, True)):
        starts = [1 + i * (ev.n - 3) // n_streams for i in range(n_streams)]  # 2 numbers each
        idx = torch.stack([encode_prompt(f"{ev.number(k)},{ev.number(k + 1)},") for k in starts])
        new = cfg.gen_numbers * (len(ev.number(ev.n - 1)) + 1)  # digits and commas
        with ctx:
            tokens_per_s = n_streams * new / timed(device, lambda: ema.generate(
                idx.to(device), new, temperature=0.0, use_cache=use_cache))
        row(f"generation, {n_streams} stream{'s' * (n_streams > 1)}, "
            f"{'key/value cache' if use_cache else 'no cache'}", f"{tokens_per_s:,.0f} tokens/s",
            forward * tokens_per_s)
    whole = (g.max_num - 1) * g.block_size  # a window at every number but the last
    print(f"the whole-text check at max_num {g.max_num:,}: {whole / 1e6:.1f}M positions, "
          f"{whole / positions:.1f}s at that rate")


def run_gpt(args, env=None, script="gpt.py"):
    """`python gpt.py args` (or another script) in a fresh process, as a user runs it: (seconds,
    peak resident memory in bytes or None, printout, exit code)."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, script, *args], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env={**os.environ, **(env or {})})
    lines, peak = [], None
    for line in p.stdout:  # the high-water mark only grows: read it after every line printed
        lines.append(line)
        try:  # Linux's VmHWM; not getrusage, which also counts the parent's memory before exec
            with open(f"/proc/{p.pid}/status") as f:
                peak = int(found(r"^VmHWM:\s*(\d+)", f.read(), 0)) * 1024 or peak
        except OSError:
            pass
    return time.perf_counter() - t, peak, "".join(lines), p.wait()


def found(pattern, text, default="-"):
    """The first group of `pattern` in `text` (^ and $: a line's start and end), or default."""
    m = re.search(pattern, text, re.MULTILINE)
    return m.group(1) if m else default


def time_whole_command(cfg):
    """`python gpt.py`, from scratch, into a temporary out_dir: wall time, memory, exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [f"--out_dir={tmp}", "--init_from=scratch", *cfg.whole_args.split()]
        seconds, peak, out, code = run_gpt(args)
    if code not in (0, 3):  # 3: trained, but does not count every number
        print(out, end="", file=sys.stderr)
    cells = [f"{seconds:.1f}", str(code)] + [found(p, out) for p in (
        r"^stopped at step (\d+)", r"([\d.]+)s of training,", r"([\d.]+)s of evaluation",
        CHECK.format("held-out"), CHECK.format("whole text"))]
    print(f"\n## The whole command: python gpt.py {' '.join(args[2:])} (a fresh process)\n\n"
          "| wall s | exit code | stopped at step | train s | eval s | held-out | whole text "
          "| peak memory |\n|---|---|---|---|---|---|---|---|\n| " + " | ".join(cells)
          + f" | {f'{peak / 2**20:,.0f} MB' if peak else '-'} |")


def sweep_run(job):
    """One run of the sweep on one thread, then dev/beyond.py on its model, read back from what
    they printed."""
    path, seed, env, args, out_dir = job
    env = {"OMP_NUM_THREADS": "1", **env}
    _, _, out, code = run_gpt(args, env)
    if code in (0, 3):  # 3: trained, but does not count every number
        where = [a for a in args if a.split("=")[0] in ("--out_dir", "--device", "--dtype")]
        _, _, beyond, beyond_code = run_gpt(where, env, "dev/beyond.py")
        out += beyond
    with open(os.path.join(out_dir, "printed.txt"), "w") as f:
        f.write(out)
    if code not in (0, 3) or beyond_code:
        script = "gpt.py" if code not in (0, 3) else "dev/beyond.py"
        sys.exit(f"python {script} {' '.join(args)} ({path}) failed:\n{out}")
    checks = {m[1]: m for m in re.finditer(CHECK.format(
        "(held-out|whole text|beyond the text|stretch)"), out, re.MULTILINE)}
    first = found(r"^step +(\d+) \| loss .* \| held-out 100\.000% ", out, None)
    past = found(r"^long count past the text, on from [\d,]+: (.*)$", out)
    return {"path": path, "seed": seed, "counts": code == 0, "first": first and int(first),
            "margin": {k: float(m[5]) for k, m in checks.items()},
            "past": checks["beyond the text"].group(3, 4) if "beyond the text" in checks else None,
            "stretch": "stretch" in checks and checks["stretch"][3] == checks["stretch"][4],
            "long past": past == "no error"}


def median(xs):
    """'1,250', '100,453.5' or '-'."""
    m = statistics.median(xs) if xs else None
    return "-" if m is None else f"{m:,.0f}" if m == int(m) else f"{m:,.1f}"


def margins(rs):
    """The smallest held-out and whole-text margins of these runs."""
    return " / ".join(f"{min(r['margin'][k] for r in rs):.2f}"
                      if all(k in r["margin"] for r in rs) else "-"
                      for k in ("held-out", "whole text"))


def run_sweep(cfg):
    """Seeds 1..sweep_seeds on each path, each `python gpt.py` in a fresh process trained to
    max_iters and checked in full, as many at once as there are cores: a line per run as it
    ends, then a row per path, as in README.md's table."""
    # evaluated every 250 steps (the default: 500), to see when held-out is first all right
    base = TINY + ["--full_check=True"] if cfg.sweep_tiny else ["--max_new_tokens=0",
                                                                "--eval_interval=250"]
    jobs = []
    for i, (path, env, args) in enumerate(PATHS):
        for seed in range(1, cfg.sweep_seeds + 1):
            out_dir = os.path.join(cfg.out_dir, "sweep", f"{i}-{seed}")
            run = base + args + cfg.sweep_args.split() + [
                "--init_from=scratch", f"--seed={seed}", f"--out_dir={out_dir}"]
            run = list({a.split("=")[0]: a for a in run}.values())  # the last --key=... stands
            jobs.append((path, seed, env, run, out_dir))
    gpt.get_config(jobs[0][3])  # every run's settings, checked once here: one line, exit 2
    for job in jobs:
        os.makedirs(job[4], exist_ok=True)
    print(f"## Sweep: {'the tiny settings' if cfg.sweep_tiny else 'gpt.py defaults'}"
          f"{' ' * bool(cfg.sweep_args)}{cfg.sweep_args}, seeds 1-{cfg.sweep_seeds} x "
          f"{len(PATHS)} paths, each to max_iters, {os.cpu_count()} at once", flush=True)
    pool, results = ThreadPoolExecutor(os.cpu_count()), []
    try:
        for r in pool.map(sweep_run, jobs):
            results.append(r)
            print(f"{r['path']}, seed {r['seed']}: held-out first all right at step "
                  f"{r['first'] or 'never'}; {'' if r['counts'] else 'NOT '}every check right; "
                  f"margin {margins([r])}; past the text {'/'.join(r['past'] or '-')}", flush=True)
    finally:  # Ctrl-C or a failed run: start no more runs
        pool.shutdown(cancel_futures=True)
    print("\n| path | held-out first all right, step: median / slowest | every check of the text "
          "right | smallest margin held-out / whole text | past the text: fewest (median) "
          "| stretch right | long count past the text right |\n|---|---|---|---|---|---|---|")
    for path in dict.fromkeys(r["path"] for r in results):
        rs = [r for r in results if r["path"] == path]
        firsts, past = [r["first"] for r in rs if r["first"]], [int(r["past"][0]) for r in rs
                                                                if r["past"]]
        print(f"| {path} | {median(firsts)} / "
              f"{max(firsts) if len(firsts) == len(rs) else 'never'} | "
              f"{sum(r['counts'] for r in rs)} of {len(rs)} | {margins(rs)} | "
              f"{f'{min(past):,} ({median(past)})' if past else '-'} | "
              f"{sum(r['stretch'] for r in rs)} of {len(rs)} | "
              f"{sum(r['long past'] for r in rs)} of {len(rs)} |")


def main(argv):
    cfg, _ = parse_settings(argv, DEFAULTS, __file__)
    for key in ("steps", "reps", "check_numbers", "gen_numbers", "streams", "sweep_seeds"):
        if getattr(cfg, key) < 1:
            fail(f"--{key}={getattr(cfg, key)} must be at least 1; the default is {DEFAULTS[key]}")
    if cfg.sweep:
        return run_sweep(cfg)
    if cfg.whole_command:  # its settings checked before any work (out_dir: a temporary one)
        gpt.get_config(["--out_dir=.", "--init_from=scratch", *cfg.whole_args.split()])
    speed(cfg)
    if cfg.whole_command:
        time_whole_command(cfg)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        print("interrupted: bench.py stopped (run it again to measure)", file=sys.stderr)
        sys.exit(130)
