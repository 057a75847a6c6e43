"""HumanEval: complete a Python function, run the problem's unit tests; pass@1 (greedy).

Data: JSONL(.gz) ``{"task_id", "prompt", "test", "entry_point"}``. Each program runs in its own
``python -I`` subprocess, in a fresh temporary directory, with a time limit, memory and CPU
rlimits, sockets disabled, and, where the kernel allows it, no network namespace at all
(``unshare --net``). This is a guard against accidents, not a sandbox for hostile code.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from gritkit import GritLM
from gritkit.eval.data import read_jsonl, subset
from gritkit.eval.generation import complete, prompt_ids, require_generator
from gritkit.results import Score

STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "```"]
CHAT_INSTRUCTION = "Complete the following python function.\n\n\n"
CHAT_REPLY = "Here is the completed function:\n\n\n"

# Runs before the program: no sockets, even where no network namespace could be made.
_GUARD = """import socket as _socket
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while running HumanEval programs")
_socket.socket = _socket.create_connection = _socket.getaddrinfo = _no_network
del _socket
"""


@functools.cache
def _no_network_prefix() -> tuple[str, ...]:
    """``unshare`` into a user and network namespace when this machine permits it."""
    command = ("unshare", "--user", "--map-root-user", "--net")
    if shutil.which("unshare") and subprocess.run([*command, "true"], capture_output=True).returncode == 0:
        return command
    return ()


def _limit_resources(memory_bytes: int, cpu_seconds: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))


def run_program(program: str, *, timeout: float = 10.0, memory_mb: int = 1024) -> tuple[bool, str]:
    """Run ``program`` isolated; (True, "") when it exits 0, else (False, why)."""
    with tempfile.TemporaryDirectory(prefix="gritkit-humaneval-") as folder:
        Path(folder, "program.py").write_text(_GUARD + program)
        command = [*_no_network_prefix(), sys.executable, "-I", "-B", "program.py"]
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": folder, "PYTHONHASHSEED": "0"}
        process = subprocess.Popen(command, cwd=folder, env=environment, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                   preexec_fn=functools.partial(_limit_resources, memory_mb << 20, int(timeout) + 1))
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the whole session: children of the program too
            process.communicate()
            return False, f"timed out after {timeout:g} s"
    if process.returncode == 0:
        return True, ""
    lines = stderr.decode(errors="replace").strip().splitlines()
    return False, lines[-1] if lines else f"exit status {process.returncode}"


def check_program(problem: dict, completion: str) -> str:
    """The program that tests a completion: prompt + completion + the problem's tests + the call."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def evaluate(model: GritLM, path: str | Path, *, limit: int | None = None, chat: bool = True,
             max_new_tokens: int = 384, timeout: float = 10.0) -> Score:
    model = require_generator(model, "humaneval")
    problems = subset(read_jsonl(path), limit)
    passed, outputs = 0, []
    for problem in tqdm(problems, desc="humaneval"):
        if chat:
            ids = prompt_ids(model, CHAT_INSTRUCTION + problem["prompt"], CHAT_REPLY + problem["prompt"])
        else:
            ids = prompt_ids(model, problem["prompt"], chat=False)
        completion = complete(model, ids, max_new_tokens=max_new_tokens, stop=STOP)
        ok, error = run_program(check_program(problem, completion), timeout=timeout)
        passed += ok
        outputs.append({"task_id": problem["task_id"], "completion": completion, "passed": ok, "error": error})
    return Score("pass_at_1", passed / len(problems), len(problems), {}, outputs)
