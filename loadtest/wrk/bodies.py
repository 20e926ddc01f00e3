"""The wrk scripts' request bodies: ``python bodies.py OUT.jsonl [ENCODER]`` writes 1,000 MS MARCO
and 1,000 Home Depot queries (distinct, shuffled with fixed seeds) as /v1/search bodies, k = 10,
for the student (default: no ``encoder`` field) or the named encoder (``teacher``).

Read in place from the shared data folder (HLM_DATA_DIR, default ../shared/data); shared by
sweep.sh and ab_sweep.sh so both sweeps send exactly the same mix.
"""

import csv
import json
import os
import random
import sys

data = os.environ.get("HLM_DATA_DIR", "../shared/data")
rows = []
for name in ("msmarco_queries.tsv", "homedepot_judgments.tsv"):
    with open(os.path.join(data, name), encoding="utf-8") as f:
        seen = list(dict.fromkeys(r["query"].strip() for r in csv.DictReader(f, delimiter="\t") if r["query"].strip()))
    random.Random(0).shuffle(seen)
    rows += seen[:1000]
random.Random(1).shuffle(rows)
encoder = {"encoder": sys.argv[2]} if len(sys.argv) > 2 and sys.argv[2] != "student" else {}
with open(sys.argv[1], "w") as f:
    for q in rows:
        f.write(json.dumps({"query": q, "k": 10, **encoder}) + "\n")
