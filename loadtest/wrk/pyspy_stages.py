"""Stage shares from py-spy raw (collapsed) stacks: per thread, first matching rule wins (innermost-first)."""
import collections, sys
RULES = [  # (stage, substring of a frame), checked from the innermost frame outwards
    # a search answered on the event loop (session 7): its encoder and index show up in the loop
    ("encoder (ONNX Runtime, on the loop)", "session.run"), ("encoder (ONNX Runtime, on the loop)", "encode (retrieval/onnx"),
    ("index (on the loop)", "_knn (retrieval/hnsw"), ("index (on the loop)", "search (retrieval/hnsw"),
    ("index (on the loop)", "search (retrieval/compressed"),
    ("loop gate", "service/loopgate.py"), ("loop gate", "_refused_search (service/server"),
    ("metrics", "prometheus_client"), ("metrics", "_observe (service/middleware"), ("metrics", "observe_service"),
    ("tokenisation (admission)", "estimate (service/batcher"), ("tokenisation (admission)", "token_counter"),
    ("queue hand-over", "submit (service/batcher"), ("queue hand-over", "call_soon_threadsafe"), ("queue hand-over", "_resolve (service/batcher"),
    ("queue hand-over", "wait_answer"),
    ("validation", "model_validate"), ("validation", "service/protocol.py"), ("validation", "normalise_text"), ("validation", "parse (service/serving"),
    ("response", "dumps (service/serving"), ("response", "search (service/serving"), ("response", "starlette/responses"),
    ("response", "send (uvicorn"), ("response", "_send_error"),
    ("edge", "service/middleware.py"),
    ("framework (FastAPI/Starlette)", "fastapi/"), ("framework (FastAPI/Starlette)", "starlette/"),
    ("parse (HTTP)", "httptools_impl"), ("parse (HTTP)", "uvicorn/"),
    ("event loop", "asyncio/"), ("event loop", "uvloop"),
]
WORKER = [("encoder (ONNX Runtime)", "session.run"), ("encoder (ONNX Runtime)", "encode_each"), ("encoder (ONNX Runtime)", "encode (retrieval/onnx"),
          ("index (hnswlib)", "hnsw"), ("index (hnswlib)", "search_labels"), ("index (hnswlib)", "search ("),
          ("tokenisation (worker)", "tokenizer"), ("batch bookkeeping", "run_batch"), ("idle (waiting for work)", "wait (threading"),
          ("batch bookkeeping", "service/batcher.py")]
totals = collections.defaultdict(collections.Counter)
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    frames = stack.split(";")
    thread = frames[0].split(": ", 1)[1] if ": " in frames[0] else frames[0]
    kind = "worker" if thread.startswith("hlm-student") else ("loop" if thread == "MainThread" else "other")
    rules = WORKER if kind == "worker" else RULES
    stage = "other"
    if len(frames) <= 2 or (kind == "loop" and ("select (selectors" in frames[-1] or "_run_once" in frames[-1] and len(frames) < 12)):
        stage = "idle"
    for frame in reversed(frames[1:]):
        hit = next((s for s, sub in rules if sub in frame), None)
        if hit:
            stage = hit
            break
    totals[kind][stage] += int(n)
for kind in ("loop", "worker", "other"):
    c = totals[kind]; t = sum(c.values())
    if not t: continue
    print(f"{kind}: {t} samples")
    for stage, n in c.most_common():
        print(f"  {stage:32s} {n:6d} {100*n/t:5.1f}%")
