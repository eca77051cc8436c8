"""
Benchmarks for gpt.py, printed as tables: the figures in README.md come from here.

    python bench.py                    # the whole command, time to 100% held-out, generation,
                                       # the peer row
    python bench.py --runs=3           # medians of 3 training runs
    python bench.py --ablations=True   # also: which choices mattered (one run each, several
                                       # minutes)
    python bench.py --scale=True       # also: how the cost grows with max_num, 10K to 10M
                                       # (about 20 minutes)
    python bench.py --compile_check=True --peer=False   # also: is torch.compile faster here?
    python bench.py --shift_check=True --peer=False     # also: what shifting the places costs
    python bench.py --sweep=True       # instead: 8 seeds x 5 floating-point paths, each to
                                       # max_iters, in parallel (hours on 2 cores)
    python bench.py --sweep=True --sweep_tiny=True      # the same for the tests' tiny config

Training runs in this process skip gpt.py's whole-text check (--full_check=False), so each stops
at its first evaluation with every held-out number right; training time excludes evaluation
(gpt.py times them apart). Runs share one machine, so compare the figures of one bench run with
each other (ratios), not with another machine's.
"""
import contextlib
import io
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

import gpt
from checks import count_on
from data import CountingEval, get_batch, load_data, percent
from settings import (checkpoint_path, fail, load_checkpoint, lock_out_dir, parse_settings,
                      pick_device)

# -----------------------------------------------------------------------------
runs = 1              # training runs of the default config (the median is reported)
whole_command = True  # time `python gpt.py` as a user runs it, in a fresh process
gen_numbers = 300     # numbers each stream counts on in the generation benchmark
streams = 64          # streams of the batched generation, against one stream
peer = True           # train the ng-video-lecture hyperparameters for the same time
ablations = False     # one run per variant in ABLATIONS
scale = False         # python gpt.py at max_num 10K, 100K, 1M and 10M: steps, time, memory
# time training steps eager vs torch.compile (the compile flag's default rests on this)
compile_check = False
shift_check = False   # time training steps with places shifted (place_shift) and without
sweep = False         # train seeds 1..sweep_seeds on every floating-point path, in parallel
sweep_seeds = 8
sweep_paths = 5       # the first this many of PATHS (4: all but bfloat16, which is slow on a CPU)
sweep_tiny = False    # sweep the tests' tiny config instead of gpt.py's defaults
sweep_args = ""       # gpt.py settings for every run of the sweep, e.g. "--n_head=8"
out_dir = "out/bench"
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith("_") and type(v) in (int, float, bool, str)}

# the tests' tiny GPT (test_gpt.py trains it): 100,000 numbers, 48 wide, windows of 24; its
# numbers are a digit shorter, so its places are shifted by up to 2, not 3 (measured so: LOG.md)
TINY = ["--max_num=100000", "--n_layer=2", "--n_head=4", "--n_embd=48", "--block_size=24",
        "--batch_size=32", "--max_iters=3000", "--eval_interval=100", "--learning_rate=3e-3",
        "--min_lr=0", "--eval_iters=2", "--full_check=False", "--long_count=0",
        "--max_new_tokens=0", "--device=cpu", "--place_shift=2"]
# the floating-point paths of the sweep: each acts as another seed. A fixed number of threads
# each, so that a run is the same whatever else runs beside it; ATEN_CPU_CAPABILITY picks torch's
# CPU kernels.
PATHS = [("this CPU's kernels", {}, []),
         ("AVX2 kernels", {"ATEN_CPU_CAPABILITY": "avx2"}, []),
         ("no vector kernels", {"ATEN_CPU_CAPABILITY": "default"}, []),
         ("AVX2 kernels, 2 threads", {"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2"}, []),
         ("bfloat16 autocast", {}, ["--dtype=bfloat16"])]
# each run starts from scratch in its out_dir, replacing the last one's checkpoint, and stops at
# its first evaluation with every held-out number right
QUIET = ["--init_from=scratch", "--full_check=False", "--stop_at_100=True", "--long_count=0",
         "--max_new_tokens=0"]
# what a learner would copy from ng-video-lecture (Karpathy's "Let's build GPT")
PEER = ["--n_embd=384", "--n_head=6", "--n_layer=6", "--block_size=256", "--batch_size=64",
        "--learning_rate=3e-4", "--min_lr=3e-5", "--dropout=0.2", "--eval_interval=1000000",
        "--eval_iters=2"]
# each: a name and the settings it changes from gpt.py's defaults
ABLATIONS = [  # each piece of the recipe taken out (the sweeps behind them: LOG.md)
    ("uniform windows, as in the tutorial (--window_alpha=1)", ["--window_alpha=1"]),
    ("no weight averaging (--ema_decay=0)", ["--ema_decay=0"]),
    ("every window with its places from the right (--place_dropout=0)", ["--place_dropout=0"]),
    ("places as they are, never shifted (--place_shift=0)", ["--place_shift=0"]),
    ("nanoGPT's weight decay (--weight_decay=0.1)", ["--weight_decay=0.1"]),
    ("hard targets, no label smoothing (--label_smoothing=0)", ["--label_smoothing=0"]),
    ("--n_head=8", ["--n_head=8"]),
]


def train(args, out_dir):
    """One gpt.py training run in this process, its printout kept quiet. Returns gpt.main's
    summary. Stopped by a signal, bench.py ends: its runs are not worth resuming."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            return gpt.main(QUIET + [f"--out_dir={out_dir}"] + args)
    except SystemExit as e:
        if isinstance(e.code, int) and e.code > 128:
            print("interrupted: bench.py stopped (run it again to measure)", file=sys.stderr)
        else:
            print(err.getvalue(), end="", file=sys.stderr)
        raise


def run_gpt(args):
    """`python gpt.py args` in a fresh process, as a user runs it: (seconds, peak memory in bytes
    or None where the OS does not say, printout)."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "gpt.py", *args],
                         cwd=os.path.dirname(os.path.abspath(__file__)),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, peak = [], None
    for line in p.stdout:  # the high-water mark only grows: read it after every line printed
        lines.append(line)
        peak = high_water_mark(p.pid) or peak
    out = "".join(lines)
    if p.wait():
        sys.exit(f"python gpt.py {' '.join(args)} failed:\n{out}")
    return time.perf_counter() - t, peak, out


def high_water_mark(pid):
    """Peak resident memory of a running process in bytes (Linux's VmHWM), or None. Not
    getrusage: its peak also counts the parent's memory copied into the child before exec."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def found(pattern, text, default="-"):
    """The first group of `pattern` in `text`, or default."""
    m = re.search(pattern, text)
    return m.group(1) if m else default


def step_times(compiled, train_data, steps=200, place_shift=gpt.place_shift):
    """Seconds for the first training step (where torch.compile compiles) and ms per step after
    it: gpt.py's default model, AdamW, batches of 64 x 32, the same batches either way."""
    torch.manual_seed(0)
    device = train_data.device
    model = gpt.GPT(gpt.GPTConfig(place_shift=place_shift)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=gpt.learning_rate)
    forward = torch.compile(model) if compiled else model
    times = []
    for _ in range(steps + 11):
        t = time.perf_counter()
        x, y = get_batch(train_data, gpt.batch_size, gpt.block_size, device)
        _, loss = forward(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # wait for the device
        times.append(time.perf_counter() - t)
    return times[0], 1000 * sum(times[11:]) / steps  # skip 10 warm-up steps after the first


def row(name, r):
    reached = percent(r["correct"], r["total"])
    return (f"| {name} | {reached} | {r['iters']} | {r['train_time']:.1f} | "
            f"{1000 * r['train_time'] / max(r['iters'], 1):.1f} | {r['tokens_per_s']:,.0f} |")


def with_settings(args):
    """--key=value arguments where a later one replaces an earlier one of the same key."""
    return list({a.split("=")[0]: a for a in args}.values())


def sweep_run(job):
    """One run of the sweep, `python gpt.py` in a fresh process on one thread (unless its path
    says otherwise): what it printed, read back into the figures of the sweep's table."""
    name, env, args, seed, out_dir = job
    p = subprocess.run([sys.executable, "gpt.py", *args, f"--seed={seed}", f"--out_dir={out_dir}"],
                       cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    out = p.stdout + p.stderr
    with open(os.path.join(out_dir, "printed.txt"), "w") as f:
        f.write(out)
    if p.returncode not in (0, 3):  # 3: trained, but does not count every number
        sys.exit(f"python gpt.py {' '.join(args)} --seed={seed} ({name}) failed:\n{out}")
    check = r"\n{}[^:\n]*: counting accuracy (\S+) \(\d+/\d+\), margin (\S+)"
    return {"path": name, "seed": seed, "counts": p.returncode == 0,
            "first": found(r"every held-out number counted right after (\d+) steps", out, None),
            **{key: re.search(check.format(label), out) for key, label in (
                ("held", "held-out"), ("whole", "whole text"), ("beyond", "beyond the text"))},
            "stretch": found(r"\nstretch, [^:]*: (\w+)", out)}


def run_sweep(cfg):
    """Seeds 1..sweep_seeds on each floating-point path, as many runs at once as there are
    cores, each trained to max_iters (--stop_at_100=False): when every held-out number was
    first right, and whether every check is right at the end, with the margins."""
    base = TINY + ["--full_check=True"] if cfg.sweep_tiny else ["--max_new_tokens=0"]
    paths = PATHS[:cfg.sweep_paths] \
        + [("CUDA, --dtype=auto", {}, ["--device=cuda"])] * torch.cuda.is_available()
    jobs = [(name, env, with_settings(base + args + cfg.sweep_args.split() + [
        "--init_from=scratch", "--stop_at_100=False"]), seed,
        os.path.join(cfg.out_dir, "sweep", f"{i}-{seed}"))
        for i, (name, env, args) in enumerate(paths) for seed in range(1, cfg.sweep_seeds + 1)]
    # every run's settings, checked once here rather than refused by each run
    parse_settings(jobs[0][2] + ["--seed=1", f"--out_dir={jobs[0][4]}"], gpt.DEFAULTS, gpt.__file__)
    for job in jobs:
        os.makedirs(job[4], exist_ok=True)
    print(f"\n## Sweep: {'the tiny config' if cfg.sweep_tiny else 'gpt.py defaults'} "
          f"{cfg.sweep_args}, seeds 1-{cfg.sweep_seeds} x {len(paths)} paths, each to max_iters, "
          f"{os.cpu_count()} at once\n\n| path | seed | held-out first all right at step "
          f"| at the end | held-out margin | whole-text margin | beyond the text | margin "
          f"| stretch |\n"
          f"|---|---|---|---|---|---|---|---|---|", flush=True)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        results = []
        for r in pool.map(sweep_run, jobs):
            results.append(r)
            cells = [r["path"], r["seed"], r["first"] or "never",
                     "every check right" if r["counts"] else "NOT all right"]
            cells += [r["held"][2] if r["held"] else "-", r["whole"][2] if r["whole"] else "-"]
            cells += [r["beyond"][1], r["beyond"][2]] if r["beyond"] else ["-", "-"]
            print("| " + " | ".join(map(str, cells + [r["stretch"]])) + " |", flush=True)
    firsts = sorted(int(r["first"]) for r in results if r["first"])
    margins = [float(r[k][2]) for r in results for k in ("held", "whole") if r[k]]
    print(f"{len(firsts)}/{len(results)} runs had every held-out number right at some "
          f"evaluation (step median {statistics.median(firsts) if firsts else '-'}, max "
          f"{max(firsts) if firsts else '-'}); {sum(r['counts'] for r in results)}/{len(results)} "
          f"had every check right at the end; smallest margin "
          f"{min(margins) if margins else float('nan'):.2f}")


def main(argv):
    cfg, _ = parse_settings(argv, DEFAULTS, __file__)
    if cfg.gen_numbers > 10_000:
        fail(f"--gen_numbers={cfg.gen_numbers} is more than the 10,000 held-out numbers a stream "
             f"can count on; use at most 10000")
    if os.path.exists(checkpoint_path(cfg.out_dir)) \
            and not os.path.exists(os.path.join(cfg.out_dir, "BENCH")):
        fail(f"--out_dir={cfg.out_dir} holds a trained model, and bench.py trains over its "
             f"out_dir; pick another --out_dir")
    lock_out_dir(cfg.out_dir)  # a bad --out_dir is refused before any work
    with open(os.path.join(cfg.out_dir, "BENCH"), "w") as f:  # bench.py may replace what is here
        f.write("bench.py's runs: each bench run replaces them\n")
    if cfg.sweep:
        return run_sweep(cfg)
    torch.manual_seed(0)
    device = pick_device()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")

    if cfg.whole_command:
        seconds, peak, out = run_gpt([f"--out_dir={cfg.out_dir}/whole", "--init_from=scratch"])
        cells = [f"{seconds:.1f}"] + [found(p, out) for p in (
            r"stopped at step (\d+)", r"([\d.]+)s of training,", r"([\d.]+)s of evaluation",
            r"held-out: counting accuracy (\S+)", r"whole text[^:\n]*: counting accuracy (\S+)",
            r"counting from 0, to \d+: (.*)", r"in all: (.*?) \(",
        )] + [f"{peak / 2**20:,.0f} MB" if peak else "-"]
        print("\n## The whole command: python gpt.py (a fresh process)\n\n"
              "| wall s | stopped at step | train s | eval s | "
              "held-out | whole text | from 0, | long count | peak memory |\n"
              "|---|---|---|---|---|---|---|---|---|\n| "
              + " | ".join(cells) + " |", flush=True)

    header = ("| run | held-out accuracy | steps | train s | ms/step | tokens/s |\n"
              "|---|---|---|---|---|---|")
    print(f"\n## Time to 100% exhaustive held-out counting, gpt.py defaults "
          f"({cfg.runs} run(s))\n\n{header}")
    results = []
    for i in range(cfg.runs):
        results.append(train([f"--seed={1337 + i}"], cfg.out_dir))
        print(row(f"defaults, seed {1337 + i}", results[-1]), flush=True)
    median = {k: statistics.median(r[k] for r in results)
              for k in ("train_time", "iters", "tokens_per_s")}
    # time to 100%: a run that never got there counts as infinitely slow
    to_100 = statistics.median(r["first_100"][1] if r["first_100"] else float("inf")
                               for r in results)
    print(f"{sum(r['first_100'] is not None for r in results)}/{cfg.runs} runs reached 100%; "
          f"median time to 100%: "
          + (f"{to_100:.1f}s of training" if to_100 < float("inf") else "not reached")
          + f"; median of all runs: {median['train_time']:.1f}s of training, "
          f"{median['iters']:.0f} steps, "
          f"{median['tokens_per_s']:,.0f} tokens/s; evaluation took "
          f"{statistics.median(r['eval_time'] for r in results):.1f}s more")

    print(f"\n## Generation: greedy counting of {cfg.gen_numbers:,} held-out numbers per stream, "
          f"last run's model\n")
    ckpt = load_checkpoint(checkpoint_path(cfg.out_dir))
    model = gpt.GPT(gpt.GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    train_data, val_data = load_data(gpt.max_num)[1:]
    held_out = CountingEval(val_data, gpt.block_size)
    starts = [1 + i * (held_out.n - cfg.gen_numbers - 4) // cfg.streams for i in range(cfg.streams)]
    count = [([held_out.number(k), held_out.number(k + 1)],
              [held_out.number(j) for j in range(k + 2, k + 2 + cfg.gen_numbers)]) for k in starts]
    speed, right = {}, {}
    for name, streams_, use_cache in (("one stream, key/value cache", 1, True),
                                      ("one stream, no cache", 1, False),
                                      (f"{cfg.streams} streams at once, key/value cache",
                                       cfg.streams, True)):
        errors, speed[name] = count_on(model, *zip(*count[:streams_]),
                                       contextlib.nullcontext(), use_cache)
        right[name] = sum(e is None for e in errors)
        print(f"| {name} | {speed[name]:,.0f} tokens/s | "
              f"{right[name]}/{streams_} streams right |", flush=True)
    names = list(speed)
    print(f"key/value cache speed-up {speed[names[0]] / speed[names[1]]:.2f}x; batched streams "
          f"{speed[names[2]] / speed[names[0]]:.1f}x the tokens/s of one")

    if cfg.peer:
        budget = median["train_time"]
        print(f"\n## ng-video-lecture hyperparameters, same {budget:.1f}s training budget"
              f"\n\n{header}")
        p = train(PEER + [f"--max_seconds={budget}"], cfg.out_dir + "/peer")
        print(row("n_embd 384, 6 heads, 6 layers, block 256, lr 3e-4, dropout 0.2", p))
        print(f"defaults vs peer: {median['tokens_per_s'] / p['tokens_per_s']:.1f}x the tokens/s, "
              f"held-out accuracy {percent(results[-1]['correct'], results[-1]['total'])} "
              f"vs {percent(p['correct'], p['total'])} in the same time")

    if cfg.compile_check:
        train_data = train_data.to(device)
        print(f"\n## torch.compile vs eager: training steps of the default model on {device}, "
              f"eager, compiled, eager, compiled\n\n"
              f"| mode | first step s | ms/step after |\n|---|---|---|")
        ms = {False: [], True: []}
        for compiled in (False, True, False, True):
            first, per_step = step_times(compiled, train_data)
            ms[compiled].append(per_step)
            print(f"| {'torch.compile' if compiled else 'eager'} | {first:.1f} | {per_step:.1f} |",
                  flush=True)
        print(f"compiled / eager step time: {min(ms[True]) / min(ms[False]):.2f} "
              f"(best of two each)")

    if cfg.shift_check:
        train_data = train_data.to(device)
        print(f"\n## Places shifted or not: training steps of the default model on {device}, "
              f"alternated\n\n| place_shift | ms/step |\n|---|---|")
        ms = {0: [], gpt.place_shift: []}
        for shift in (0, gpt.place_shift) * 3:
            ms[shift].append(step_times(False, train_data, place_shift=shift)[1])
            print(f"| {shift} | {ms[shift][-1]:.1f} |", flush=True)
        print(f"shifted / not, step time: {min(ms[gpt.place_shift]) / min(ms[0]):.2f} "
              f"(best of three each)")

    if cfg.ablations:
        print(f"\n## Ablations: one run each, gpt.py defaults with one change\n\n{header}")
        for name, args in ABLATIONS:
            print(row(name, train(args, cfg.out_dir + "/ablation")), flush=True)

    if cfg.scale:
        print("\n## How the cost grows: python gpt.py --max_num=N (fresh processes)\n\n"
              "| max_num | held-out numbers | steps to 100% held-out | train s | "
              "held-out check s | µs per number | whole-text check s | µs per number | "
              "peak memory |\n|---|---|---|---|---|---|---|---|---|")
        for n in (10_000, 100_000, 1_000_000, 10_000_000):
            _, _, trained = run_gpt([f"--max_num={n}", f"--out_dir={cfg.out_dir}/scale"] + QUIET)
            _, peak, checked = run_gpt([f"--max_num={n}", f"--out_dir={cfg.out_dir}/scale",
                                        "--init_from=scratch", "--max_iters=0", "--long_count=0",
                                        "--max_new_tokens=0"])
            # the loss estimate is ~1% of it
            held = float(found(r"step     0 .* eval ([\d.]+)s", checked, "nan"))
            whole = float(found(r"whole text \(([\d.]+)s\)", checked, "nan"))
            numbers = int(found(r"([\d,]+) held-out numbers", checked).replace(",", ""))
            cells = [f"{n:,}", f"{numbers:,}",
                     found(r"right after (\d+) steps", trained, "not reached"),
                     found(r"([\d.]+)s of training,", trained),
                     f"{held:.2f}", f"{1e6 * held / numbers:.1f}",
                     f"{whole:.1f}", f"{1e6 * whole / (n - 1):.1f}",
                     f"{peak / 2**20:,.0f} MB" if peak else "-"]
            print("| " + " | ".join(cells) + " |", flush=True)

if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        print("interrupted: bench.py stopped (run it again to measure)", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader of the output stopped early (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
