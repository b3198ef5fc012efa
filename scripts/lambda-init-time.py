#!/usr/bin/env python3
# Measures a Lambda bootstrap's init phase: from process start to its first GET of
# /runtime/invocation/next on a stand-in Runtime API (what Lambda bills as Init), median of 5.
# Usage: scripts/lambda-init-time.py target/lambda/signals-push/bootstrap (after unzip), with the
# function's environment (SIGNALS_STORE, SIGNALS_QUEUE, SIGNALS_SQS_<STAGE>_URL, AWS_REGION) set.
import http.server, subprocess, sys, threading, time, os
first = {}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        first.setdefault("t", time.perf_counter())
        time.sleep(0.2)
        self.send_response(500); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{srv.server_address[1]}", AWS_LAMBDA_FUNCTION_NAME="f",
           AWS_LAMBDA_FUNCTION_MEMORY_SIZE="512", AWS_LAMBDA_FUNCTION_VERSION="1")
runs = []
for _ in range(5):
    first.clear()
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.argv[1]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while "t" not in first and time.perf_counter() - t0 < 10:
        time.sleep(0.001)
    runs.append((first.get("t", float("nan")) - t0) * 1000)
    p.kill(); p.wait()
runs.sort()
print(f"{os.path.basename(os.path.dirname(sys.argv[1]))}: init median {runs[2]:.1f} ms (min {runs[0]:.1f}, max {runs[-1]:.1f})")
