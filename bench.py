"""
Benchmarks for gpt.py, printed as tables: the figures in README.md come from here.

    python bench.py                    # time to 100% held-out counting, throughput, generation, peer row
    python bench.py --runs=3           # medians of 3 training runs
    python bench.py --ablations=True   # also: which choices mattered (one run each, several minutes)
    python bench.py --compile_check=True --peer=False   # also: is torch.compile faster here?

Training runs skip gpt.py's whole-text check (--full_check=False), so each stops at its first
evaluation with every held-out number right. Training time excludes evaluation (gpt.py times them
apart). Runs share one machine, so compare the figures of one bench run with each other (ratios),
not with another machine's.
"""
import contextlib
import io
import statistics
import sys
import time

import torch

import gpt
from data import CountingEval, fail, get_batch, load_data, parse_settings, percent, pick_device

runs = 1              # training runs of the default config (the median is reported)
gen_numbers = 2000    # numbers counted on in the generation benchmark
peer = True           # train the ng-video-lecture hyperparameters for the same time
ablations = False     # one run per variant in ABLATIONS
compile_check = False  # time training steps eager vs torch.compile (the compile flag's default rests on this)
out_dir = "out/bench"
DEFAULTS = {k: v for k, v in dict(globals()).items() if not k.startswith("_") and type(v) in (int, float, bool, str)}

QUIET = ["--full_check=False", "--long_count=0", "--max_new_tokens=0"]
# what a learner would copy from ng-video-lecture (Karpathy's "Let's build GPT")
PEER = ["--n_embd=384", "--n_head=6", "--n_layer=6", "--block_size=256", "--batch_size=64",
        "--learning_rate=3e-4", "--min_lr=3e-5", "--dropout=0.2", "--eval_interval=1000000", "--eval_iters=2"]
# each: a name and the settings it changes from gpt.py's defaults
ABLATIONS = [  # the rows of README's "Which choices mattered" table
    ("uniform windows, as in the tutorial (--window_alpha=1)", ["--window_alpha=1"]),
    ("--window_alpha=0.5", ["--window_alpha=0.5"]),
    ("no weight averaging (--ema_decay=0)", ["--ema_decay=0"]),
    ("the tutorial's windows and no averaging (the old defaults)", ["--window_alpha=1", "--ema_decay=0",
                                                                   "--min_lr=3e-4", "--weight_decay=0.1"]),
    ("--weight_decay=0.1", ["--weight_decay=0.1"]),
    ("--min_lr=3e-4", ["--min_lr=3e-4"]),
    ("--n_head=8", ["--n_head=8"]),
]


def train(args, out_dir):
    """One gpt.py training run, its printout kept quiet. Returns gpt.main's summary."""
    with contextlib.redirect_stdout(io.StringIO()):
        return gpt.main(QUIET + [f"--out_dir={out_dir}"] + args)


def step_times(compiled, train_data, steps=200):
    """Seconds for the first training step (where torch.compile compiles) and ms per step after
    it: gpt.py's default model, AdamW, batches of 64 x 32, the same batches either way."""
    torch.manual_seed(0)
    device = train_data.device
    model = gpt.GPT(gpt.GPTConfig()).to(device)
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


def main(argv):
    cfg, _ = parse_settings(argv, DEFAULTS)
    if cfg.runs < 1 or cfg.gen_numbers < 1:
        fail("--runs and --gen_numbers must be at least 1")
    torch.manual_seed(0)
    device = pick_device()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    header = ("| run | held-out accuracy | steps | train s | ms/step | tokens/s |\n"
              "|---|---|---|---|---|---|")

    print(f"\n## Time to 100% exhaustive held-out counting, gpt.py defaults ({cfg.runs} run(s))\n\n{header}")
    results = []
    for i in range(cfg.runs):
        results.append(train([f"--seed={1337 + i}"], cfg.out_dir))
        print(row(f"defaults, seed {1337 + i}", results[-1]), flush=True)
    median = {k: statistics.median(r[k] for r in results) for k in ("train_time", "iters", "tokens_per_s")}
    # time to 100%: a run that never got there counts as infinitely slow
    to_100 = statistics.median(r["first_100"][1] if r["first_100"] else float("inf") for r in results)
    print(f"{sum(r['first_100'] is not None for r in results)}/{cfg.runs} runs reached 100%; median time to 100%: "
          + (f"{to_100:.1f}s of training" if to_100 < float("inf") else "not reached")
          + f"; median of all runs: {median['train_time']:.1f}s of training, {median['iters']:.0f} steps, "
          f"{median['tokens_per_s']:,.0f} tokens/s; evaluation took "
          f"{statistics.median(r['eval_time'] for r in results):.1f}s more")

    print(f"\n## Generation: greedy long count of {cfg.gen_numbers:,} held-out numbers, last run's model\n")
    ckpt = torch.load(f"{cfg.out_dir}/ckpt.pt", map_location=device, weights_only=True)
    model = gpt.GPT(gpt.GPTConfig(**ckpt["model_config"])).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    _, _, val_data = load_data(gpt.max_num)
    numbers = CountingEval(val_data, model.config.block_size).numbers
    prompt, wanted = numbers[:3], numbers[3:3 + cfg.gen_numbers]
    gen = {use_cache: gpt.count_check(model, prompt, wanted, device, contextlib.nullcontext(), use_cache)
            for use_cache in (True, False)}
    speeds = {use_cache: r["tokens_per_s"] for use_cache, r in gen.items()}
    print("| path | tokens/s |\n|---|---|")
    print(f"| key/value cache | {speeds[True]:,.0f} |\n| no cache (recompute the context) | {speeds[False]:,.0f} |")
    print(f"cache speed-up {speeds[True] / speeds[False]:.2f}x; identical output: "
          f"{gen[True]['text'] == gen[False]['text']}; counted right: {gen[True]['first_wrong'] is None}")

    if cfg.peer:
        budget = median["train_time"]
        print(f"\n## ng-video-lecture hyperparameters, same {budget:.1f}s training budget\n\n{header}")
        p = train(PEER + [f"--max_seconds={budget}"], cfg.out_dir + "/peer")
        print(row("n_embd 384, 6 heads, 6 layers, block 256, lr 3e-4, dropout 0.2", p))
        print(f"defaults vs peer: {median['tokens_per_s'] / p['tokens_per_s']:.1f}x the tokens/s, held-out "
              f"accuracy {percent(results[-1]['correct'], results[-1]['total'])} vs {percent(p['correct'], p['total'])} "
              f"in the same time")

    if cfg.compile_check:
        train_data = load_data(gpt.max_num)[1].to(device)
        print(f"\n## torch.compile vs eager: training steps of the default model on {device}, eager, "
              f"compiled, eager, compiled\n\n| mode | first step s | ms/step after |\n|---|---|---|")
        ms = {False: [], True: []}
        for compiled in (False, True, False, True):
            first, per_step = step_times(compiled, train_data)
            ms[compiled].append(per_step)
            print(f"| {'torch.compile' if compiled else 'eager'} | {first:.1f} | {per_step:.1f} |", flush=True)
        print(f"compiled / eager step time: {min(ms[True]) / min(ms[False]):.2f} (best of two each)")

    if cfg.ablations:
        print(f"\n## Ablations: one run each, gpt.py defaults with one change\n\n{header}")
        for name, args in ABLATIONS:
            print(row(name, train(args, cfg.out_dir + "/ablation")), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
