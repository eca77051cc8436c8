"""
What each attention head looks at, in a model trained by gpt.py.

    python dev/attention.py --prompt=909998,909999,   # out/ckpt.pt writes the next number
    python dev/attention.py --out_dir=out2 --prompt=41,42,   # any of gpt.py's --key=value

It loads the model as `python gpt.py --mode=eval` does and, for each character it writes, shows
per layer and head where the position that predicts it looks; then the mean weights over every
held-out number, by the part of the context they fall on.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

import gpt
from data import CountingEval, Tokenizer, encode_prompt, fail, load_data

SHADES = " .:-=+*#%@"  # attention weight 0 .. 1, in tenths
PARTS = ("same digit of n", "n's later digits", "n's earlier digits", "comma before n+1",
         "n+1 so far")


@torch.no_grad()
def show_attention(model, cfg, device):
    """Write the number after the prompt, greedily; for each character, one row per layer and
    head: the weight on each context character, shaded (' ' none, '@' nearly all)."""
    tok, idx = Tokenizer(), encode_prompt(cfg.prompt)[None].to(device)
    longest = len(str(cfg.max_num)) + 1  # the longest next number, 99..9 + 1, and its comma
    if idx.size(1) + longest > cfg.block_size:
        fail(f"--prompt={cfg.prompt!r} is too long to show with the number after it in one window "
             f"of {cfg.block_size} characters; give at most {cfg.block_size - longest - 1}")
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


@torch.no_grad()
def attention_table(model, ev, batch_size=256):
    """Each head's mean weight on each of PARTS while the model writes a digit of n+1, over the
    windows of `ev` where n and n+1 are as long: for digits copied from n / those that change
    (the last, and carries). Returns (table (n_layer, n_head, 2, PARTS), digits, changed)."""
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


def main(argv):
    if "-h" in argv or "--help" in argv:
        sys.exit(print(__doc__.strip()))
    if any(arg.startswith("--mode=") for arg in argv):
        fail("dev/attention.py loads the saved model as --mode=eval does; drop --mode")
    cfg, ckpt = gpt.get_config(["--mode=eval", *argv])  # the checkpoint's settings stand
    device, _ = gpt.get_device(cfg)
    _, model = gpt.build_model(cfg, ckpt, device)  # the averaged weights, as gpt.py samples
    show_attention(model, cfg, device)
    held_out = CountingEval(load_data(cfg.max_num)[2].to(device), cfg.block_size)
    table, digits, changed = attention_table(model, held_out)
    print(f"\nMean attention weight of each head while writing the {digits:,} digits of held-out "
          f"numbers n+1\n(after an n of the same length): copied digits / the {changed:,} that "
          f"change (the last, and carries)")
    print(f"{'':8}" + "".join(f"{p:>20}" for p in PARTS))
    for layer in range(table.size(0)):
        for head in range(table.size(1)):
            cells = "".join(f"{a:>13.2f} / {b:.2f}" for a, b in table[layer, head].T.tolist())
            print(f"L{layer + 1} H{head + 1}  {cells}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader of the output stopped early (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
