#!/usr/bin/env python3
"""test_serve.py — `frugal serve` seen by real clients (run by tests/test_serve_py.c in ctest).

  --part openai    the official openai Python client (chat, completion, streaming, errors)
                   and the curl binary
  --part chromium  Debian's headless Chromium, driven over the DevTools protocol on a pipe
                   (--remote-debugging-pipe): opens the chat page at /, types a message,
                   sends it and waits for the streamed answer

Exit status: 0 passed, 1 failed, 77 skipped (the openai package, curl or chromium absent).
Usage: test_serve.py --frugal BIN --model DIR --part openai|chromium
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77
failures = []


def check(cond, what):
    if cond:
        print(f"ok   {what}")
    else:
        print(f"FAIL {what}")
        failures.append(what)


def utf8_fix(b: bytes) -> str:
    """The server's rule for bytes that are not valid UTF-8: each byte that starts no valid
    sequence (and NUL) becomes U+FFFD."""
    out, i, n = [], 0, len(b)
    while i < n:
        c = b[i]
        ln, lo, hi = 0, 0x80, 0xBF
        if 0 < c < 0x80:
            ln = 1
        elif 0xC2 <= c <= 0xDF:
            ln = 2
        elif 0xE0 <= c <= 0xEF:
            ln, lo, hi = 3, (0xA0 if c == 0xE0 else 0x80), (0x9F if c == 0xED else 0xBF)
        elif 0xF0 <= c <= 0xF4:
            ln, lo, hi = 4, (0x90 if c == 0xF0 else 0x80), (0x8F if c == 0xF4 else 0xBF)
        ok = ln > 0 and i + ln <= n
        if ok and ln > 1:
            ok = lo <= b[i + 1] <= hi and all((b[i + k] & 0xC0) == 0x80 for k in range(2, ln))
        if ok:
            out.append(b[i:i + ln].decode("utf-8"))
            i += ln
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


class Server:
    def __init__(self, frugal, model, extra):
        self.log = tempfile.NamedTemporaryFile(prefix="frugal-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([frugal, "serve", "--model", model, "--port", "0", *extra],
                                     stdout=self.log, stderr=self.log)
        self.port = None
        deadline = time.time() + 60
        while time.time() < deadline and self.port is None:
            time.sleep(0.1)
            with open(self.log.name, encoding="utf-8", errors="replace") as f:
                m = re.search(r"listening on http://[^ ]*:(\d+)/", f.read())
            if m:
                self.port = int(m.group(1))
            if self.proc.poll() is not None:
                break
        if self.port is None:
            raise RuntimeError("server did not start: " + open(self.log.name).read())
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = -9
        text = open(self.log.name, encoding="utf-8", errors="replace").read()
        os.unlink(self.log.name)
        return code, text


def part_openai(args, srv):
    try:
        import openai
    except ImportError:
        print("SKIP: the openai package is not installed (make serve-test-deps)")
        return SKIP
    if not shutil.which("curl"):
        print("SKIP: curl not found")
        return SKIP
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k3y", max_retries=0, timeout=60)
    models = client.models.list()
    check([m.id for m in models.data] == ["tiny"], f"models.list: {[m.id for m in models.data]}")

    # chat, non-streaming then streaming: the same greedy text
    msgs = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "What is a tree?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0,
                                       extra_body={"ignore_eos": True})
    text = r.choices[0].message.content
    check(r.object == "chat.completion" and r.choices[0].message.role == "assistant", "chat.completions.create")
    check(r.usage.completion_tokens == 10 and r.usage.total_tokens == r.usage.prompt_tokens + 10,
          f"chat usage {r.usage}")
    check(r.choices[0].finish_reason == "length", f"chat finish_reason {r.choices[0].finish_reason}")
    parts, usage, finish = [], None, None
    stream = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    check(len(parts) >= 2 and "".join(parts) == text, f"streamed chat ({len(parts)} chunks) equals non-streamed")
    check(usage is not None and usage.completion_tokens == 10 and finish == "length", f"stream usage {usage}, {finish}")

    # completion: greedy equals `frugal generate`
    prompt = "The quick brown fox"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True})
    ref = subprocess.run([args.frugal, "generate", "--model", args.model, "--prompt", prompt, "--max-tokens", "12",
                          "--temperature", "0", "--ignore-eos"], capture_output=True, check=True).stdout
    ref = utf8_fix(ref[:-1] if ref.endswith(b"\n") else ref)
    check(ref == prompt + r.choices[0].text, f"greedy completion equals frugal generate: {r.choices[0].text!r} vs {ref[len(prompt):]!r}")
    pieces = [c.choices[0].text for c in client.completions.create(
        model="tiny", prompt=prompt, max_tokens=12, temperature=0, stream=True, extra_body={"ignore_eos": True})
        if c.choices]
    check("".join(pieces) == r.choices[0].text and len([p for p in pieces if p]) >= 2, "streamed completion")

    # sampling with a seed is reproducible; stop strings cut the text
    a = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0.9, top_p=0.9, seed=5)
    b = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0.9, top_p=0.9, seed=5)
    check(a.choices[0].text == b.choices[0].text, "same seed, same sample")
    full = r.choices[0].text
    m = re.search(r"[A-Za-z]{2}", full[1:])
    if m:
        stop = m.group(0)
        s = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, stop=[stop],
                                      extra_body={"ignore_eos": True})
        check(s.choices[0].text == full[:full.index(stop)] and s.choices[0].finish_reason == "stop",
              f"stop {stop!r}: {s.choices[0].text!r}")

    # errors through the client
    bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        check(False, "wrong API key raises")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "wrong API key: 401 AuthenticationError")
    try:
        client.chat.completions.create(model="gpt-4o", messages=msgs)
        check(False, "unknown model raises")
    except openai.NotFoundError as e:
        check(e.status_code == 404 and "gpt-4o" in str(e), "unknown model: 404 NotFoundError")
    try:
        client.completions.create(model="tiny", prompt="word " * 400, max_tokens=4)
        check(False, "too-long prompt raises")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.code == "context_length_exceeded", f"too-long prompt: 400 {e.code}")
    try:
        client.chat.completions.create(model="tiny", messages=msgs, temperature=7)
        check(False, "bad temperature raises")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.param == "temperature", "temperature out of range: 400, param temperature")

    # curl
    out = subprocess.run(["curl", "-sS", "-N", srv.url + "/v1/chat/completions", "-H", "Authorization: Bearer k3y",
                          "-H", "Content-Type: application/json", "-d",
                          json.dumps({"model": "tiny", "messages": msgs, "max_tokens": 10, "temperature": 0,
                                      "ignore_eos": True, "stream": True})],
                         capture_output=True, check=True).stdout.decode()
    events = [l[6:] for l in out.split("\n") if l.startswith("data: ")]
    got = "".join((json.loads(e)["choices"][0]["delta"].get("content") or "") for e in events[:-1])
    check(events[-1] == "[DONE]" and got == text, "curl -N streams the same chat answer")
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", srv.url + "/v1/completions",
                          "-H", "Authorization: Bearer k3y", "-d", "{not json"], capture_output=True).stdout.decode()
    check(out == "401" or out == "400", f"curl invalid JSON: {out}")
    out = subprocess.run(["curl", "-sS", srv.url + "/metrics"], capture_output=True).stdout.decode()
    check("frugal_generated_tokens_total" in out and "frugal_kv_cache_used_bytes" in out, "curl /metrics")
    return 0


class Chromium:
    """Minimal DevTools-protocol client over --remote-debugging-pipe (fd 3: commands in,
    fd 4: replies out; messages are JSON terminated by NUL)."""

    def __init__(self, binary, profile):
        cmd_r, self.cmd_w = os.pipe()
        self.res_r, res_w = os.pipe()

        def setup():  # runs in the child; the pipes' other fds are not inheritable
            a, b = os.dup(cmd_r), os.dup(res_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-dev-shm-usage", "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            close_fds=False, preexec_fn=setup, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(res_w)
        self.buf = b""
        self.next_id = 0

    def call(self, method, params=None, session=None, timeout=30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            import select
            r, _, _ = select.select([self.res_r], [], [], 0.5)
            if r:
                data = os.read(self.res_r, 1 << 16)
                if not data:
                    raise RuntimeError("chromium closed the pipe")
                self.buf += data
        raise RuntimeError(f"{method}: no reply in {timeout} s")

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.res_r)


def part_chromium(args, srv):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        print("SKIP: chromium not found")
        return SKIP
    profile = tempfile.mkdtemp(prefix="frugal-chromium-")
    browser = Chromium(binary, profile)
    try:
        target = browser.call("Target.createTarget", {"url": srv.url + "/"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

        def js(expr):
            r = browser.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session)
            return r["result"].get("value")

        deadline = time.time() + 30
        model_js = "(document.getElementById('model') || {}).textContent"
        # the server wants a key: the page says so until one is entered
        while time.time() < deadline and js(model_js) in (None, "?"):
            time.sleep(0.1)
        check("key" in (js(model_js) or ""), "page asks for the API key")
        js("""(() => { const k = document.getElementById('key'); k.value = 'k3y';
                       k.dispatchEvent(new Event('change')); return true; })()""")
        while time.time() < deadline and js(model_js) != "tiny":
            time.sleep(0.1)
        check(js(model_js) == "tiny", "page fetched /v1/models with the key")
        # type a message and press Enter, as a user would
        js("""(() => {
            document.getElementById('temp').value = '0';
            document.getElementById('maxtok').value = '12';
            const box = document.getElementById('input');
            box.value = 'Hello, who are you?';
            box.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));
            return true; })()""")
        state = None
        deadline = time.time() + 60
        while time.time() < deadline:
            state = js("JSON.stringify({s: document.body.dataset.state, c: +document.body.dataset.chunks,"
                       " t: ([...document.querySelectorAll('.msg')].pop() || {}).textContent,"
                       " u: (document.querySelector('.user') || {}).textContent})")
            state = json.loads(state)
            if state["s"] in ("done", "error"):
                break
            time.sleep(0.1)
        print("page:", state)
        check(state and state["s"] == "done", f"the page finished its answer: {state and state['s']}")
        check(state and state["u"] == "Hello, who are you?", "the user message is shown")
        check(state and state["c"] >= 2 and state["t"], f"the answer arrived streamed ({state and state['c']} chunks)")
        # the same conversation through the API gives the text the page shows
        import urllib.request
        req = urllib.request.Request(srv.url + "/v1/chat/completions", method="POST", headers={
            "Authorization": "Bearer k3y", "Content-Type": "application/json"}, data=json.dumps({
                "model": "tiny", "messages": [{"role": "user", "content": "Hello, who are you?"}],
                "temperature": 0, "max_tokens": 12}).encode())
        with urllib.request.urlopen(req, timeout=60) as resp:
            want = json.loads(resp.read())["choices"][0]["message"]["content"]
        check(state and state.get("t") == want, f"page text equals the API's greedy answer: {state and state['t']!r} vs {want!r}")
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frugal", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--part", choices=["openai", "chromium"], default="openai")
    args = ap.parse_args()
    if args.part == "openai":
        try:
            import openai  # noqa: F401
        except ImportError:
            print("SKIP: the openai package is not installed (make serve-test-deps)")
            return SKIP
    elif not (shutil.which("chromium") or shutil.which("chromium-browser")):
        print("SKIP: chromium not found")
        return SKIP
    srv = Server(args.frugal, args.model, ["--api-key", "k3y", "--parallel", "4", "--ctx", "256"])
    try:
        rc = part_openai(args, srv) if args.part == "openai" else part_chromium(args, srv)
    finally:
        code, log = srv.stop()
    check(code == 0, f"server exit status {code} after SIGTERM")
    check("Sanitizer" not in log and "runtime error" not in log, "no sanitizer report in the server log")
    if code != 0 or failures:
        print(log[-4000:])
    if rc == SKIP:
        return SKIP
    print(f"test_serve.py --part {args.part}: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
