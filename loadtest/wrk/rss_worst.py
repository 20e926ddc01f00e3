"""RSS of a server before and after the worst requests the limits allow (demo artifact)."""
import json, subprocess, sys, time, signal
import httpx
repo, port = sys.argv[1], int(sys.argv[2])
proc = subprocess.Popen([sys.executable, "-c", "from hlm.cli import app; app()", "serve", "--artifact",
                         "/work/main/artifacts/demo-before", "--port", str(port)], cwd=repo,
                        stdout=open(f"/tmp/rss-{port}.log", "w"), stderr=subprocess.STDOUT)
def rss():
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) // 1024
c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
for _ in range(180):
    try:
        if c.get("/readyz").status_code == 200: break
    except httpx.TransportError: pass
    time.sleep(1)
c.post("/v1/search", json={"query": "drill"}); c.post("/v1/search", json={"query": "drill", "encoder": "teacher"})
out = {"ready": rss()}
hog = "cordless drill with two batteries and a charger " * 84
for enc in ("student", "teacher"):
    for name, queries in (("64x4000", [hog] * 64), ("16x4000", [hog] * 16), ("8x4000", [hog] * 8), ("4x4000", [hog] * 4), ("64 short", ["paint roller"] * 64)):
        t0 = time.perf_counter()
        r = c.post("/v1/search", json={"queries": queries, "k": 100, "encoder": enc})
        out[f"{enc} {name}"] = (r.status_code, round(time.perf_counter() - t0, 2), rss())
print(json.dumps(out))
proc.send_signal(signal.SIGTERM); proc.wait(30)
