"""
What each attention head looks at, in a model trained by gpt.py.

    python attention.py --prompt=909998,909999,      # the saved out/ckpt.pt writes the next number
    python gpt.py --mode=attention --prompt=...      # the same

For each character the model writes it shows, per layer and head, how the attention weight of the
position that predicts it spreads over the context; then the mean weights over every held-out
number, by the part of the context they fall on.
"""
import sys

import torch

from data import CountingEval, Tokenizer, encode_prompt, load_data, longest_number
from settings import fail, run_safely

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


if __name__ == "__main__":
    import gpt  # loads the model as --mode=attention does: the checkpoint, its settings, the device
    if any(arg.startswith("--mode=") for arg in sys.argv[1:]):
        fail("attention.py always runs --mode=attention; drop --mode (or run python gpt.py)")
    run_safely(gpt.main, ["--mode=attention"] + sys.argv[1:])  # Ctrl-C, | head: one line
