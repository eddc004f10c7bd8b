"""`cogvlm serve --nproc 2`: real torchrun/gloo ranks behind one HTTP server answer as MP=1 does, and a
rank that dies stops the server with a clear error instead of leaving clients hanging."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from cogvlm.api import load
from tests.frontends.server.conftest import REPO, RunningServer, free_port
from tests.frontends.server.helpers import (
    IMAGE_BYTES,
    SERVED_VERSION,
    finish_reason,
    golden_case,
    messages_for,
    served_cases,
)
from tests.golden import golden_dir, stop_string_in

# A rank that dies must end the server (and every request) within this many seconds.
FAILURE_LIMIT_S = 30


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """{RANK: pid} of the processes torchrun (`launcher_pid`) started."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    ranks = {}
    for child in map(int, children):
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = next((entry[5:] for entry in environ if entry.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[int(rank)] = child
    return ranks


class PlainTorchrunServer(RunningServer):
    """`torchrun --nproc-per-node 2 <torchrun_flags> -m cogvlm.cli serve ...`, started by hand."""

    def __init__(self, *torchrun_flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--max-restarts=0"]
        command += [*torchrun_flags, f"--master-port={free_port()}", "-m", "cogvlm.cli", "serve"]
        command += ["--port", str(self.port), "--version", SERVED_VERSION]
        command += ["--from_pretrained", str(golden_dir() / "cogvlm" / "sat_checkpoint")]
        command += ["--local_tokenizer", str(golden_dir() / "tokenizer.model")]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("LOCAL_RANK", None)
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._wait_until_healthy()


@pytest.fixture(scope="module")
def tp_server():
    running = RunningServer("--nproc", "2", "--max-active", "4")
    yield running
    running.stop()


def _client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def _ask(server: RunningServer, case: str, stream: bool) -> tuple[str, str, int]:
    """(text, finish reason, completion tokens) of one greedy request for a golden case."""
    prompt, expected = golden_case(case)
    request = dict(
        model="tiny-cogvlm",
        messages=messages_for(prompt),
        temperature=0,
        max_tokens=expected["max_new_tokens"],
    )
    client = _client(server)
    if not stream:
        completion = client.chat.completions.create(**request)
        choice = completion.choices[0]
        return choice.message.content, choice.finish_reason, completion.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, finish[-1], chunks[-1].usage.completion_tokens


def test_two_ranks_answer_concurrent_requests_as_mp1(tp_server):
    # Every served golden case twice, once streamed and once not, all at once: they share decode steps.
    jobs = [(case, stream) for case in served_cases() for stream in (False, True)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: _ask(tp_server, *job), jobs))
    for (case, stream), (text, finish, tokens) in zip(jobs, answers, strict=True):
        _, expected = golden_case(case)
        assert text == expected["response_after_official_postprocess"], (case, stream)
        assert finish == finish_reason(expected, expected["max_new_tokens"]), (case, stream)
        assert tokens == len(expected["new_token_ids"]), (case, stream)
    load = httpx.get(tp_server.url + "/health", timeout=10).json()
    assert load["largest_step"] >= 2  # rows of one continuous batch advanced together on both ranks
    assert load["active"] == 0 and load["waiting"] == 0


def _stopped_early(server: RunningServer, case: str) -> str:
    """A greedy answer cut by a stop string from the middle of the reference's reply (the row leaves
    the batch on rank 0 first; the other ranks drop it before their next step)."""
    prompt, expected = golden_case(case)
    stop = stop_string_in(expected["response_after_official_postprocess"])
    completion = _client(server).chat.completions.create(
        model="m",
        messages=messages_for(prompt),
        temperature=0,
        max_tokens=expected["max_new_tokens"],
        stop=[stop],
    )
    full = expected["response_after_official_postprocess"]
    assert completion.choices[0].message.content == full[: full.index(stop)]
    return "stopped"


def _leave_after_two_chunks(server: RunningServer, case: str) -> str:
    """A streamed answer whose client hangs up after two chunks (its row is dropped between steps)."""
    prompt, expected = golden_case(case)
    body = {"messages": messages_for(prompt), "temperature": 0, "max_tokens": 1000, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=300) as response:
        for index, _ in enumerate(response.iter_lines()):
            if index >= 2:
                break
    return "left"


def test_rows_leaving_early_on_rank_0_leave_on_every_rank(tp_server):
    # Rows that end by a stop string or a vanished client move the other rows within the batch: if the
    # other ranks did not drop them at the same point, the survivors' answers would come out wrong.
    cases = served_cases()
    jobs = [(_leave_after_two_chunks, cases[0]), (_stopped_early, cases[-1])]
    jobs += [(lambda server, case: _ask(server, case, stream=True)[0], case) for case in cases]
    jobs += [(_leave_after_two_chunks, cases[-1]), (_stopped_early, cases[0])]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: job[0](tp_server, job[1]), jobs))
    answers = results[2 : 2 + len(cases)]
    assert answers == [golden_case(case)[1]["response_after_official_postprocess"] for case in cases]
    # The same server still answers right afterwards: every rank holds the same (now empty) batch.
    assert _ask(tp_server, cases[0], stream=False)[0] == answers[0]


def test_the_server_keeps_serving_after_idling_past_heartbeats(tp_server):
    time.sleep(5)  # longer than the idle heartbeat interval: the ranks stay together while idle
    case = served_cases()[0]
    text, _, _ = _ask(tp_server, case, stream=False)
    assert text == golden_case(case)[1]["response_after_official_postprocess"]


def _stream_until_failure(server: RunningServer, started: threading.Event) -> Exception | None:
    """Stream a long answer; return the error it ends with (None if it ended normally)."""
    client = _client(server)
    try:
        stream = client.chat.completions.create(
            model="tiny-cogvlm",
            messages=[{"role": "user", "content": "Describe it"}],  # greedy: no end token for 900+ tokens
            temperature=0,
            max_tokens=900,
            stream=True,
        )
        for _ in stream:
            started.set()
    except (openai.APIError, httpx.HTTPError) as error:
        return error
    return None


def test_killing_rank_1_stops_the_server_with_a_clear_error():
    server = RunningServer("--nproc", "2")
    try:
        pids = rank_pids(server.process.pid)
        assert sorted(pids) == [0, 1]
        started = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            streaming = pool.submit(_stream_until_failure, server, started)
            assert started.wait(60), "the long answer did not start"
            killed_at = time.monotonic()
            os.kill(pids[1], signal.SIGKILL)
            error = streaming.result(timeout=FAILURE_LIMIT_S)
        output, _ = server.process.communicate(timeout=FAILURE_LIMIT_S)
        elapsed = time.monotonic() - killed_at
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert error is not None, "the stream ended normally although a rank died"
    assert elapsed < FAILURE_LIMIT_S
    assert server.process.returncode != 0
    # Rank 0 logs the failure when it sees it, and exits with it unless torchrun's SIGTERM comes first.
    assert "tensor-parallel serving failed: " in output, output[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=5)


def test_an_idle_server_under_plain_torchrun_stops_by_itself_when_rank_1_dies():
    # torchrun polls its ranks only every 60 s here: rank 0's heartbeat has to notice the loss itself.
    server = PlainTorchrunServer("--monitor-interval=60")
    try:
        pids = rank_pids(server.process.pid)
        killed_at = time.monotonic()
        os.kill(pids[1], signal.SIGKILL)
        while _alive(pids[0]) and time.monotonic() - killed_at < FAILURE_LIMIT_S:
            time.sleep(0.2)
        elapsed = time.monotonic() - killed_at
        assert not _alive(pids[0]), "rank 0 kept serving after rank 1 died"
    finally:
        server.stop()
    output = server.process.stdout.read()
    assert elapsed < FAILURE_LIMIT_S
    expected = "cogvlm serve: error: tensor-parallel serving failed: rank 0 cannot reach"
    assert expected in output, output[-3000:]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status").read_text()
    return "State:\tZ" not in status  # a zombie has exited


def test_two_ranks_with_int8_weights_answer_as_one_process_with_int8_weights():
    case = served_cases()[-1]
    prompt, expected = golden_case(case)
    session = load(
        golden_dir() / "cogvlm" / "sat_checkpoint",
        local_tokenizer=str(golden_dir() / "tokenizer.model"),
        version=SERVED_VERSION,
        quant_bits=8,
    )
    generation = session.generation_config(max_new_tokens=expected["max_new_tokens"], top_k=1)
    history = [tuple(turn) for turn in prompt["history"]]
    one_process = session.chat(IMAGE_BYTES, prompt["query"], history, generation).response
    server = RunningServer("--nproc", "2", "--quant", "8")
    try:
        text, _, _ = _ask(server, case, stream=False)
    finally:
        server.stop()
    assert text == one_process


def test_a_rank_that_hears_nothing_from_rank_0_gives_up_after_the_timeout(tmp_path):
    timeout_s = 3.0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--max-restarts=0"]
    command += [f"--master-port={free_port()}", str(Path(__file__).parent / "tp_silent_leader.py")]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("LOCAL_RANK", None)
    subprocess.run([*command, str(tmp_path), str(timeout_s)], env=env, timeout=120, capture_output=True)
    waited, message = (tmp_path / "rank1.txt").read_text().split("\n", 1)
    assert timeout_s * 0.9 <= float(waited) < timeout_s * 3
    assert message.startswith("tensor-parallel serving failed: rank 1 lost rank 0")
