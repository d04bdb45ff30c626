#!/usr/bin/env python3
"""Prints the llmqs-dist vs PyTorch table from the JSON lines that `llmqs-dist bench` and
pytorch_bert_baseline.py print (one object per run, same keys). Rows are matched on
(dtype, seq, batch, lengths, padding); full-length rows compare tok/s, yelp rows useful tok/s.
Ratios are ours / theirs, written like 1.31x. Usage: compare_table.py results.jsonl"""
import json
import sys


def key(r):
    return (r["dtype"], r["seq"], r["batch"], r.get("lengths", "full"), r.get("padding", "none"))


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
    by = {}
    for r in rows:
        by.setdefault(key(r), {})[r["system"]] = r
    yelp_best = {}
    for k, systems in by.items():
        if k[3] == "yelp":
            for name, r in systems.items():
                if name.startswith("pytorch") and (name not in yelp_best or
                                                    r["useful_tok_per_s"] > yelp_best[name]["useful_tok_per_s"]):
                    yelp_best[name] = r
    head = ("shape", "metric", "ours", "eager", "compile", "vs eager", "vs compile", "MFU ours", "MFU best torch",
            "mem ours GiB", "mem eager GiB")
    table = []
    for k in sorted(by, key=lambda k: (k[3], k[0], -k[1], k[4])):
        s = by[k]
        ours, eager, comp = s.get("llmqs-dist"), s.get("pytorch-eager"), s.get("pytorch-compile")
        yelp = k[3] == "yelp"
        metric = "useful_tok_per_s" if yelp else "tok_per_s"
        if yelp and ours and not eager:  # ours grouped/longest vs PyTorch's best yelp setting
            eager, comp = yelp_best.get("pytorch-eager"), yelp_best.get("pytorch-compile")
        val = lambda r: r[metric] if r else None
        fmt = lambda v: "-" if v is None else f"{v / 1e3:,.0f}K"
        ratio = lambda a, b: "-" if not a or not b else f"{a / b:.2f}x"
        torch_mfu = max([r["mfu"] for r in (eager, comp) if r] or [None]) if (eager or comp) else None
        shape = f'{k[0]} {k[2]}x{k[1]}' + (f' yelp/{k[4]}' if yelp else "")
        table.append((shape, "useful tok/s" if yelp else "tok/s", fmt(val(ours)), fmt(val(eager)), fmt(val(comp)),
                      ratio(val(ours), val(eager)), ratio(val(ours), val(comp)),
                      f'{ours["mfu"]:.1%}' if ours else "-", "-" if torch_mfu is None else f"{torch_mfu:.1%}",
                      f'{ours["peak_mem_gib"]:.1f}' if ours else "-", f'{eager["peak_mem_gib"]:.1f}' if eager else "-"))
    widths = [max(len(str(r[i])) for r in table + [head]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(head))
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in table:
        print(line(r))
    gpu = next((r["gpu"] for r in rows if r.get("gpu")), "?")
    print(f"\nGPU: {gpu}; yelp rows without a PyTorch run of the same padding compare with PyTorch's best yelp "
          f"setting; memory: ours = device arena, PyTorch = max_memory_allocated.")


if __name__ == "__main__":
    main()
