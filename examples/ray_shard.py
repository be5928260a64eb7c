#!/usr/bin/env python3
"""A sharded quantization as Ray tasks: one task per shard, each running the same smelt command
line with `--shard K/N`, then `smelt release --finalize` once over the shared output folder.

  python examples/ray_shard.py MODEL OUT_DIR --shards 4 --types Q8_0,Q4_K_M [--address auto]

Every node needs `smelt` on its PATH and MODEL/OUT_DIR on shared storage (the same paths).
A failed shard is retried by Ray (max_retries); a finished shard rerun is a no-op, so retries
and reruns of the whole driver are safe.
"""
import argparse
import subprocess

import ray


@ray.remote(num_cpus=1, max_retries=2)
def shard(k: int, n: int, model: str, out: str, types: str) -> str:
    p = subprocess.run(["smelt", "quantize", model, "-o", out, "--types", types, "--shard", f"{k}/{n}"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"shard {k}/{n} failed:\n{p.stderr[-4000:]}")
    return p.stderr.strip().splitlines()[-1]  # "shard K/N: ... read X bytes from storage"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--types", default="Q8_0,Q4_K_M")
    ap.add_argument("--address", default=None, help="a Ray cluster (default: start one here)")
    args = ap.parse_args()
    ray.init(address=args.address)
    done = ray.get([shard.remote(k, args.shards, args.model, args.out, args.types) for k in range(args.shards)])
    for line in done:
        print(line)
    subprocess.run(["smelt", "release", "--finalize", args.out], check=True)
    subprocess.run(["smelt", "verify", args.out], check=True)


if __name__ == "__main__":
    main()
