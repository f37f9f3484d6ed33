"""Prints the figures of one `attunet bench train --overlap both --json` run (stdin) for shaped-link.sh."""
import json
import sys

j = json.load(sys.stdin)
c = j["overlap"][0]
on = j["runs"][1]
g = on["gradient_all_reduce"]
print("shaped-link %s (global batch 2, 1 patch per rank), %d bucket(s) of %.4g MiB, CPU %s:"
      % (sys.argv[1], g["buckets"], g["bucket_bytes"] / 2**20, on["cpu"]))
for mode in ("off", "on"):
    print("  overlap %-3s step %.3f s, all-reduce %.3f s, exposed %.3f s"
          % (mode + ":", c["step_seconds_" + mode], c["all_reduce_seconds_" + mode], c["exposed_seconds_" + mode]))
print("  exposed on/off %.2fx, step on/off %.2fx" % (c["exposed_ratio"], c["step_ratio"]))
