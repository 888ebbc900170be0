#!/usr/bin/env python3
"""How much of its link each testbed host uses, second by second.

While a `bench-swarm` run is going (as root, in another shell):

    tests/scripts/link_use.py sample use.jsonl          # until the testbed goes
    tests/scripts/link_use.py report use.jsonl --rate-mbit 100

`sample` reads the byte counters of every veth in the testbed's bridge
namespace once a second (frames received on a host's bridge-side veth are
that host's upload, frames sent its download) and stops when the bridge
namespace is gone or after --seconds. `report` prints, over the seconds in
which the swarm moved data, the mean, least and most use of the links as a
share of the link rate, and the overall mean: a swarm at 0.85 moves at 85 %
of its links, which says how much of a makespan over the ideal is the
steady state and how much the start and the end.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time


def bridge_namespace():
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout.split()
    found = [n for n in names if n.startswith("shoal") and n.endswith("-br")]
    return found[0] if found else None


def sample(out_path, seconds, wait):
    start = time.monotonic()
    bridge = None
    while bridge is None:
        if time.monotonic() - start > wait:
            sys.exit(f"no testbed bridge namespace (shoal*-br) within {wait:.0f} s")
        bridge = bridge_namespace()
        if bridge is None:
            time.sleep(0.5)
    with open(out_path, "w", encoding="utf-8") as out:
        while time.monotonic() - start < seconds:
            r = subprocess.run(
                ["ip", "-n", bridge, "-s", "-j", "link", "show"],
                capture_output=True,
                text=True,
                check=False,
            )
            if r.returncode != 0:
                break  # the testbed is gone: the run is over
            links = {
                l["ifname"]: [l["stats64"]["rx"]["bytes"], l["stats64"]["tx"]["bytes"]]
                for l in json.loads(r.stdout)
                if "stats64" in l and l["ifname"] not in ("lo", "br0")
            }
            out.write(json.dumps({"t": time.time(), "links": links}) + "\n")
            out.flush()
            time.sleep(1.0)


def report(in_path, rate_mbit, rows):
    with open(in_path, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if line.strip()]
    if len(recs) < 2:
        sys.exit(f"{in_path}: fewer than two samples")
    cap = rate_mbit * 1e6 / 8
    first, last = recs[0]["links"], recs[-1]["links"]
    links = [n for n in last if n not in ("lo", "br0")]
    # A seed downloads next to nothing: its download would only dilute
    # the receivers' mean.
    got = {n: last[n][1] - first.get(n, [0, 0])[1] for n in links}
    most = max(got.values(), default=0)
    receivers = [n for n in links if got[n] >= 0.1 * most]
    seconds = []
    for a, b in zip(recs, recs[1:]):
        dt = b["t"] - a["t"]
        common = [n for n in links if n in a["links"] and n in b["links"]]
        if dt <= 0 or not common:
            continue
        up = [(b["links"][n][0] - a["links"][n][0]) / dt / cap for n in common]
        down = [
            (b["links"][n][1] - a["links"][n][1]) / dt / cap for n in common if n in receivers
        ]
        if down:
            seconds.append((b["t"] - recs[0]["t"], up, down))
    active = [s for s in seconds if sum(s[2]) > 0.05 * len(s[2])]
    if not active:
        sys.exit(f"{in_path}: no second in which the swarm moved data")
    t0 = active[0][0]
    print(
        f"{len(active)} s with data moving, {len(links)} hosts "
        f"({len(receivers)} receiving), {rate_mbit:g} Mbit/s"
    )
    step = max(1, len(active) // rows)
    for t, up, down in active[::step]:
        print(
            f"t={t - t0:6.1f} s  upload mean {statistics.mean(up):.2f} "
            f"min {min(up):.2f} max {max(up):.2f}  |  download mean "
            f"{statistics.mean(down):.2f} median {statistics.median(down):.2f} "
            f"max {max(down):.2f}"
        )
    print(
        "mean use of the receivers' download links: "
        f"{statistics.mean(statistics.mean(s[2]) for s in active):.3f}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="sample the counters while a run goes")
    s.add_argument("out")
    s.add_argument("--seconds", type=float, default=1800, help="stop after (default 1800)")
    s.add_argument("--wait", type=float, default=600, help="wait for a testbed at most (default 600)")
    r = sub.add_parser("report", help="summarise a sample file")
    r.add_argument("input")
    r.add_argument("--rate-mbit", type=float, default=100, help="link rate (default 100)")
    r.add_argument("--rows", type=int, default=25, help="lines of the timeline (default 25)")
    a = p.parse_args()
    if a.cmd == "sample":
        sample(a.out, a.seconds, a.wait)
    else:
        report(a.input, a.rate_mbit, a.rows)


if __name__ == "__main__":
    main()
