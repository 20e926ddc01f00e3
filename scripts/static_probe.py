"""Study of static-student settings on the demo profile's data (issue #13), dev split only.

Trains the given student on exactly the data the demo build gives its in-build training
(plus optional extra phase-2 texts), then scores it in PyTorch on the build's gate set
(judged dev queries over the demo's product titles, exact search) beside the packaged
teacher. Settings are chosen on this dev split; the build's own gate reports the same set.

    .venv/bin/python scripts/static_probe.py --student static --steps2 1500 --steps3 600 [--extra-web 10000]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--student", default="static")
    parser.add_argument("--phases", default="2,3")
    parser.add_argument("--steps2", type=int, default=1500)
    parser.add_argument("--steps3", type=int, default=600)
    parser.add_argument("--lr2", type=float, default=None, help="default: the family's (models/distill/recipes.py)")
    parser.add_argument("--lr3", type=float, default=None)
    parser.add_argument("--kl3", type=float, default=1.0)
    parser.add_argument("--l2-share", type=float, default=1.0)
    parser.add_argument("--extra-web", type=int, default=0, help="MS MARCO train queries added to phase 2")
    parser.add_argument("--extra-topics", type=int, default=0, help="Million Query topics added to phase 2")
    parser.add_argument("--hard-negatives", type=int, default=4, help="phase 3: teacher-ranked negatives per pair (0: in-batch only)")
    parser.add_argument("--init", type=Path, default=None, help="phase 3 from this checkpoint (e.g. another run's phase2)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="score this checkpoint instead of training one")
    parser.add_argument("--out", type=Path, default=Path("runs/static-probe"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from models import data as data_mod
    from models.inputs import extra_training_texts, select_inputs
    from models.distill.pipeline import run_phases, torch_encoder
    from models.distill.prepare import build_training_data
    from models.distill.students import get_spec, tokenizer_name
    from models.distill.teacher_vectors import TeacherVectors
    from models.eval.judged import JudgedEval, judged_queries
    from models.profiles import get_profile

    profile = get_profile("demo")
    inputs = select_inputs(profile)
    teacher = TeacherVectors(args.threads)
    keyword_vectors = teacher(inputs.keyword_texts, "keywords")
    rows = [i for i, k in enumerate(inputs.keyword_ids) if k.startswith("hd:")]
    products = ([inputs.keyword_ids[i][3:] for i in rows], [inputs.keyword_texts[i] for i in rows], keyword_vectors[rows])
    others = [t for k, t in zip(inputs.keyword_ids, inputs.keyword_texts) if not k.startswith("hd:")]
    extra = extra_training_texts(replace(profile, distill_extra_web=args.extra_web, distill_extra_topics=args.extra_topics))
    data = build_training_data(teacher, products=products, web_queries=0, topics_limit=0, kl_candidates=0,
                               extra_texts=inputs.fit_queries + others + extra)
    print(f"phase-2 texts {len(data.texts)}, judged pairs {len(data.pair_queries)}")

    common = {"checkpoint_every": 10**9, "minutes": 60}
    tag = (f"{args.student}-s{args.steps2}-{args.steps3}-lr{args.lr2}-{args.lr3}-w{args.extra_web}"
           f"-t{args.extra_topics}-kl{args.kl3}-l{args.l2_share}-hn{args.hard_negatives}" + ("-init" if args.init else ""))
    out_root = args.out / tag
    t0 = time.perf_counter()
    if args.checkpoint:
        done = {"checkpoint": args.checkpoint}
    else:
        done = run_phases(args.student, data, out_root, tuple(args.phases.split(",")),
                          phase2={"max_steps": args.steps2, **({"lr": args.lr2} if args.lr2 else {}), **common},
                          phase3={"max_steps": args.steps3, **({"lr": args.lr3} if args.lr3 else {}),
                                  "kl_weight": args.kl3, "l2_weight": args.l2_share,
                                  "hard_negatives": args.hard_negatives, **({"init": str(args.init)} if args.init else {}),
                                  **common}, threads=args.threads)
    train_s = time.perf_counter() - t0

    from models.distill.checkpoint import load_student_checkpoint

    products_all = data_mod.load_sample("products")
    title_of = dict(zip(products_all.ids, products_all.texts))
    queries, judgments = judged_queries(products_all.ids, "dev", profile.gate_queries)
    pool = [k[3:] for k in inputs.keyword_ids if k.startswith("hd:")]
    pool = list(dict.fromkeys(pool + [d for graded in judgments for d in graded]))
    scored = JudgedEval(queries, judgments, pool, teacher([title_of[d] for d in pool], "gate products"))
    teacher_row = scored.score(lambda texts: teacher(list(texts), "gate queries"))
    result = {"tag": tag, "train_s": round(train_s, 1), "teacher": teacher_row}
    for phase, folder in done.items():
        model = load_student_checkpoint(folder)
        row = scored.score(torch_encoder(model, tokenizer_name(get_spec(args.student))))
        row["share_of_teacher"] = round(row["ndcg_at_10"] / teacher_row["ndcg_at_10"], 4)
        result[phase] = row
        info = json.loads((Path(folder) / "spec.json").read_text())["info"]
        row["best_step"], row["cut_short"] = info.get("best_step"), info.get("cut_short")
    # Quality on queries with tokens no training text had (the rows a static student only
    # knows from the teacher's initialisation) against queries made of seen tokens.
    from models.encoders import tokenizer_path
    from retrieval.onnx_encoder import load_tokenizer

    tok = load_tokenizer(tokenizer_path("teacher"))
    seen = {i for e in tok.encode_batch(data.texts + data.pair_queries) for i in e.ids}
    unseen = [any(i not in seen for i in e.ids) for e in tok.encode_batch(queries)]
    last = load_student_checkpoint(list(done.values())[-1])
    encode = torch_encoder(last, tokenizer_name(get_spec(args.student)))
    for label, keep in (("unseen_tokens", True), ("seen_tokens", False)):
        rows_q = [i for i, u in enumerate(unseen) if u == keep]
        subset = JudgedEval([queries[i] for i in rows_q], [judgments[i] for i in rows_q], pool, scored.product_vectors)
        t_row, s_row = subset.score(lambda texts: teacher(list(texts), "gate queries")), subset.score(encode)
        result[label] = {"queries": len(rows_q), "teacher": t_row["ndcg_at_10"], "student": s_row["ndcg_at_10"],
                         "share": round(s_row["ndcg_at_10"] / max(t_row["ndcg_at_10"], 1e-9), 4)}
    print(json.dumps(result, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.jsonl", "a") as handle:
        handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
