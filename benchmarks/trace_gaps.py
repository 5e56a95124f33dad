"""Where a GPU stream sat idle in a torch.profiler Chrome trace.

    python benchmarks/trace_gaps.py trace.json [--min-us 20] [--top 20]

Sorts the GPU kernels, memcpys and memsets by start time, sums the gaps between one ending and
the next starting, and names for each gap the CPU op that launched the work ending it (through
the launch's correlation id), so the host code that kept the GPU waiting is visible.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import sys

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}


def analyse(trace: dict, min_us: float, top: int) -> dict:
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATS), key=lambda e: e["ts"])
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    cpu_ops = sorted((e for e in events if e.get("cat") == "cpu_op"), key=lambda e: e["ts"])
    starts = [e["ts"] for e in cpu_ops]

    def launching_op(kernel) -> str:
        launch = launches.get(kernel.get("args", {}).get("correlation"))
        if launch is None:
            return "?"
        best = None  # the innermost CPU op on the launching thread that encloses the launch
        for op in reversed(cpu_ops[:bisect.bisect_right(starts, launch["ts"])]):
            if op["tid"] == launch["tid"] and op["ts"] + op["dur"] >= launch["ts"]:
                if best is None or op["dur"] < best["dur"]:
                    best = op
            if launch["ts"] - op["ts"] > 5e5:
                break
        return best["name"] if best else launch["name"]

    gaps, end = [], None
    busy = 0.0
    for e in gpu:
        if end is not None and e["ts"] - end >= min_us:
            gaps.append((e["ts"] - end, end, e))
        busy += e["dur"]
        end = e["ts"] + e["dur"] if end is None else max(end, e["ts"] + e["dur"])
    by_op = collections.Counter()
    for gap_us, _, e in gaps:
        by_op[launching_op(e)] += gap_us
    span = (end - gpu[0]["ts"]) if gpu else 0.0
    return {"span_ms": span / 1e3, "busy_ms": busy / 1e3, "idle_ms": sum(g[0] for g in gaps) / 1e3,
            "gaps": len(gaps),
            "idle_by_launching_op_ms": {k: v / 1e3 for k, v in by_op.most_common(top)},
            "largest_gaps": [{"us": g, "next": e["name"][:80], "launched_by": launching_op(e)}
                             for g, _, e in sorted(gaps, key=lambda g: -g[0])[:top]]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--min-us", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    with open(args.trace) as f:
        result = analyse(json.load(f), args.min_us, args.top)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
