"""Per-loop instruction and stall-sample shares of a kernel from Nsight Compute's source page (SASS, CSV), as
``gpu_quick.sh ncu21b`` writes it: for every loop (a branch to an earlier address) that issues >= 1 % of the
instructions or stall samples, its length, its shares and its commonest opcodes (session 21, App. A forward).

    python benchmarks/ncu_source_loops.py benchmarks/results/ncu_appa_fwd_32k_source_s21_h200.csv.gz
"""
import csv
import gzip
import re
import sys


def main(path):
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        rows = list(csv.reader(f))
    hdr = rows[1]
    col = {h: i for i, h in enumerate(hdr)}
    ins = []
    for r in rows[2:]:
        if len(r) != len(hdr):
            continue
        text = r[col["Source"]].strip()
        op = re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0] if text else ""
        ins.append((int(r[col["Address"]], 16), text, op, int(r[col["Instructions Executed"]] or 0),
                    int(r[col["Warp Stall Sampling (All Samples)"]] or 0)))
    index = {a: i for i, (a, *_) in enumerate(ins)}
    n_all = sum(x[3] for x in ins)
    s_all = sum(x[4] for x in ins)
    print(f"{n_all / 1e9:.2f} G instructions, {s_all} stall samples")
    for i, (a, text, op, _n, _s) in enumerate(ins):
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if not (op == "BRA" and m and int(m.group(1), 16) < a and int(m.group(1), 16) in index):
            continue
        body = ins[index[int(m.group(1), 16)]:i + 1]
        n = sum(x[3] for x in body)
        s = sum(x[4] for x in body)
        if n < 0.01 * n_all and s < 0.01 * s_all:
            continue
        ops = {}
        for x in body:
            ops[x[2]] = ops.get(x[2], 0) + x[3]
        top = " ".join(f"{k}:{100 * v / n:.0f}%" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:8])
        print(f"loop of {len(body):5d} instructions: {100 * n / n_all:5.1f} % of instructions, "
              f"{100 * s / s_all:5.1f} % of samples  {top}")


if __name__ == "__main__":
    main(sys.argv[1])
