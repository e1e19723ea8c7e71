"""`iclevr serve` in-process: request checks, the engine (one sampling loop, frames, GIFs, verdicts), the
queue (one at a time, positions, cancellation), the HTTP app on a real socket, and the command's messages."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from iclevr.errors import UserError
from iclevr.serve.jobs import Cancelled, Job, JobQueue, QueueFull
from iclevr.serve.request import MAX_OBJECTS, parse_request

DEFAULTS = {"guidance_scale": 2.0, "steps": 4, "seed": 0, "num": 1}


@pytest.fixture
def weights(tmp_path, tiny_model_cfg):
    """A random-weight tiny model with our metadata (stored sampler: ddim, 4 steps, guidance 2)."""
    from iclevr.model import build_model
    from iclevr.settings import SamplerSettings, ScheduleSettings
    from iclevr.weights import save_weights

    torch.manual_seed(0)
    return save_weights(
        build_model(tiny_model_cfg),
        tmp_path / "w.safetensors",
        model_cfg=tiny_model_cfg,
        schedule_cfg=ScheduleSettings(),
        sampler_cfg=SamplerSettings(sampler="ddim", steps=4, guidance_scale=2.0),
    )


@pytest.fixture
def engine(weights, one_thread):
    """The engine on the tiny model, judged by the packaged evaluator."""
    from iclevr.evaluation.evaluator import PACKAGED
    from iclevr.serve.engine import Engine

    return Engine(weights, PACKAGED, "cpu")


def decode(url: str) -> Image.Image:
    """A data: URL -> PIL image."""
    head, data = url.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


class Collect:
    """An emit function that keeps every event."""

    def __init__(self):
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


# ---- requests -------------------------------------------------------------------------------------


def test_a_good_request_is_canonicalised_and_takes_the_model_defaults():
    r = parse_request(json.dumps({"objects": [" Red  Sphere", "cyan cube"], "seed": 7}), DEFAULTS)
    assert r.objects == ["red sphere", "cyan cube"] and r.seed == 7 and r.steps == 4 and r.guidance_scale == 2.0
    assert parse_request('{"objects": ["red sphere"], "steps": "", "num": null}', DEFAULTS).num == 1


@pytest.mark.parametrize(
    "body, message",
    [
        ({"objects": ["red sphere", "cyan cube", "gray cube", "blue cube"]}, f"at most {MAX_OBJECTS} objects"),
        ({"objects": []}, "pick at least one object"),
        ({"objects": ["red spere"]}, 'did you mean "red sphere"'),
        ({"objects": ["red sphere", "Red Sphere"]}, 'duplicate label "red sphere"'),
        ({"objects": ["red sphere"], "steps": 0}, "steps: input should be greater than or equal to 1"),
        ({"objects": ["red sphere"], "num": 9}, "number of images: input should be less than or equal to 8"),
        ({"objects": ["red sphere"], "seed": -1}, "seed: input should be greater than or equal to 0"),
        ({"objects": ["red sphere"], "guidance_scale": "lots"}, "guidance: input should be a valid number"),
        ({"objects": ["red sphere"], "sampler": "ddpm"}, "sampler: unknown field"),
        ("not json", "not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"objects": ["red sphere"] * 2000}, "request too large"),
    ],
)
def test_bad_requests_get_one_readable_line(body, message):
    text = body if isinstance(body, str) else json.dumps(body)
    with pytest.raises(UserError) as e:
        parse_request(text, DEFAULTS)
    assert message in str(e.value) and "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_steps_beyond_the_models_timesteps_are_refused(engine):
    from iclevr.serve.request import GenerateRequest

    engine.check(parse_request('{"objects": ["red sphere"], "steps": 200}', DEFAULTS))
    with pytest.raises(UserError, match="steps: at most 1000"):  # a model trained on fewer timesteps than 200
        engine.check(GenerateRequest.model_construct(objects=["red sphere"], steps=1001, guidance_scale=1.0))


# ---- the engine -----------------------------------------------------------------------------------


def test_a_generation_streams_every_step_and_returns_images_gifs_and_verdicts(engine):
    from iclevr.evaluation.annotate import hits_from
    from iclevr.images import to_output_size, to_uint8
    from iclevr.labels import encode
    from iclevr.sampling import sample

    emit = Collect()
    request = parse_request('{"objects": ["red sphere", "cyan cube"], "num": 3, "seed": 5}', engine.defaults())
    done = engine.run(Job(request, emit))
    frames = [e for e in emit.events if e["type"] == "frame"]
    assert emit.types()[0] == "started" and [f["i"] for f in frames] == [1, 2, 3, 4]
    assert decode(frames[0]["x_t"]).size == (3 * 64 + 4 * 2, 64 + 2 * 2)  # the 3 images side by side
    assert done["type"] == "done" and len(done["images"]) == 3 and done["steps"] == 4
    assert done["model"].startswith("model: --checkpoint") and done["per_image"] <= done["seconds"]
    # the images are what the one sampling loop draws for the same seeds
    sampler = engine.sampler.model_copy(update={"seed": 5, "steps": 4})
    expected = to_uint8(
        to_output_size(
            sample(
                engine.model,
                encode(["red sphere", "cyan cube"])[None].repeat(3, 1),
                schedule=engine.info.schedule,
                sampler=sampler,
            )
        )
    )  # (3, 3, 64, 64)
    for k, image in enumerate(done["images"]):
        png = torch.from_numpy(np.array(decode(image["png"]).convert("RGB"))).permute(2, 0, 1)  # (3, 64, 64)
        assert torch.equal(png, expected[k])
        gif = decode(image["gif"])
        assert gif.n_frames == 5 and gif.size == (128, 64)  # noise .. final, x_t beside predicted x0
        found = [v["found"] for v in image["verdicts"]]
        assert [v["label"] for v in image["verdicts"]] == ["red sphere", "cyan cube"]
        assert image["hits"] == sum(found) and image["k"] == 2
        assert (
            hits_from(
                ["red sphere", "cyan cube"], [v["label"] for v in image["verdicts"] if v["found"]] + image["wrong"]
            )[0]
            == found
        )


def test_a_latent_models_live_frames_and_gif_are_decoded_images_not_latents():
    """The page shows what a latent model's states decode to (a screenshot once showed raw latents as colour)."""
    from iclevr.serve.engine import LiveTrace

    def white(z):  # a stand-in decoder: (B, 4, 16, 16) latents -> (B, 3, 64, 64) white images
        assert z.shape[1:] == (4, 16, 16)
        return torch.ones(len(z), 3, 64, 64)

    emit = Collect()
    trace = LiveTrace(Job(None, emit), steps=2, decode=white)
    z = torch.randn(1, 4, 16, 16)
    for i in range(2):
        trace({"i": i, "t": 500 - 400 * i, "x_t": z, "x0_pred": z, "x_prev": z})
    for frame in emit.events:
        for key in ("x_t", "x0"):
            image = np.array(decode(frame[key]).convert("RGB"))
            assert image.shape == (64, 64, 3) and image.min() == 255, key
    gif = Image.open(io.BytesIO(trace.gif(0)))  # GIF bytes
    assert gif.size == (128, 64) and np.array(gif.convert("RGB")).min() == 255  # (identical frames merge)


def test_without_an_evaluator_the_images_come_without_verdicts(weights, one_thread):
    from iclevr.serve.engine import Engine

    engine = Engine(weights, None, "cpu")  # the tests' environment has no packaged or cached evaluator
    assert engine.evaluator is None and "iclevr evaluator train" in engine.evaluator_line
    done = engine.run(Job(parse_request('{"objects": ["red sphere"]}', engine.defaults()), Collect()))
    assert "verdicts" not in done["images"][0] and done["evaluator"] == engine.evaluator_line


def test_a_cancelled_job_stops_at_its_next_step(engine):
    emit = Collect()
    job = Job(parse_request('{"objects": ["red sphere"], "steps": 50}', engine.defaults()), emit)

    def cancel_after_two(event):
        emit(event)
        if event["type"] == "frame" and event["i"] == 2:
            job.cancel()

    job.emit = cancel_after_two
    with pytest.raises(Cancelled):
        engine.run(job)
    assert [e["i"] for e in emit.events if e["type"] == "frame"] == [1, 2]


# ---- the queue ------------------------------------------------------------------------------------


def blocking_runner(started: list, release: threading.Event):
    """A runner that waits for `release` (checking the cancel flag like the sampling callback does)."""

    def run(job: Job) -> dict:
        started.append(job.request)
        while not release.wait(0.01):
            if job.cancelled():
                raise Cancelled()
        if job.request == "boom":
            raise RuntimeError("the UNet fell over\nsecond line")
        return {"type": "done", "request": job.request}

    return run


def wait_until(condition, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_the_queue_runs_one_job_at_a_time_and_tells_each_its_place():
    started, release = [], threading.Event()
    queue = JobQueue(blocking_runner(started, release), limit=2)
    a, b, c = Collect(), Collect(), Collect()
    queue.submit("a", a)
    wait_until(lambda: started == ["a"])
    job_b, job_c = queue.submit("b", b), queue.submit("c", c)
    assert b.events == [{"type": "queued", "position": 1}] and c.events == [{"type": "queued", "position": 2}]
    with pytest.raises(QueueFull, match="2 generations are already waiting"):
        queue.submit("d", Collect())
    queue.cancel(job_b)  # b's page closed while it waited: c moves up
    assert b.events[-1]["type"] == "cancelled" and c.events[-1] == {"type": "queued", "position": 1}
    release.set()
    wait_until(lambda: queue.idle())
    assert started == ["a", "c"] and a.events[-1] == {"type": "done", "request": "a"}
    assert c.types() == ["queued", "queued", "queued", "done"] and c.events[2]["position"] == 0
    assert queue.served == 2 and not job_c.cancelled()
    queue.close()


def test_a_cancelled_running_job_frees_the_worker_and_errors_are_one_line():
    started, release = [], threading.Event()
    queue = JobQueue(blocking_runner(started, release))
    a, b = Collect(), Collect()
    job_a = queue.submit("a", a)
    queue.submit("boom", b)
    wait_until(lambda: started == ["a"])
    queue.cancel(job_a, "the page was closed")
    wait_until(lambda: started == ["a", "boom"])  # the worker moved on without `release`
    assert a.events[-1] == {"type": "cancelled", "message": "the page was closed"}
    release.set()
    wait_until(lambda: queue.idle())
    assert b.events[-1]["type"] == "error" and "RuntimeError: the UNet fell over" in b.events[-1]["message"]
    queue.close()


def test_closing_the_queue_cancels_waiting_and_running_jobs():
    started, release = [], threading.Event()
    queue = JobQueue(blocking_runner(started, release))
    a, b = Collect(), Collect()
    queue.submit("a", a)
    queue.submit("b", b)
    wait_until(lambda: started == ["a"])
    queue.close("the server is stopping")
    assert a.events[-1] == b.events[-1] == {"type": "cancelled", "message": "the server is stopping"}
    assert started == ["a"] and not queue._thread.is_alive()
    with pytest.raises(QueueFull, match="stopping"):
        queue.submit("c", Collect())


# ---- the app on a real socket ---------------------------------------------------------------------


@pytest.fixture
def server(engine):
    """The app served by uvicorn in a thread on a free port: yields (base url, queue, finished events)."""
    from iclevr.serve.app import bind, build_app, make_server

    finished = []

    def runner(job):
        try:
            event = engine.run(job)
        except Cancelled:
            finished.append("cancelled")
            raise
        finished.append(event["type"])
        return event

    jobs = JobQueue(runner)
    sock = bind("127.0.0.1", 0)
    srv = make_server(build_app(engine, jobs), jobs)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: srv.started, 60)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", jobs, finished
    srv.should_exit = True
    jobs.close()
    thread.join(10)
    sock.close()


def post(url: str, body) -> tuple[int, list[dict]]:
    """POST JSON, read the whole NDJSON (or JSON error) answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/api/generate", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]
    except urllib.error.HTTPError as e:
        return e.code, [json.loads(e.read())]


def test_the_page_is_self_contained_and_carries_the_options(server):
    url, _, _ = server
    html = urllib.request.urlopen(url + "/", timeout=10).read().decode()
    assert "cyan cylinder" in html and "model: --checkpoint" in html and "__OPTIONS__" not in html
    assert "http://" not in html and "https://" not in html and "//cdn" not in html  # nothing from the network
    options = json.loads(urllib.request.urlopen(url + "/api/options", timeout=10).read())
    assert options["max_objects"] == 3 and len(options["shapes"]) * len(options["colours"]) == 24
    assert options["defaults"]["steps"] == 4 and options["sampler"] == "ddim"


def test_generate_streams_frames_then_the_images(server):
    url, _, _ = server
    status, events = post(url, {"objects": ["red sphere", "cyan cube"], "num": 2})
    types = [e["type"] for e in events]
    assert status == 200 and types[:2] == ["queued", "started"] and types.count("frame") == 4
    assert types[-1] == "done" and len(events[-1]["images"]) == 2


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"objects": ["red sphere", "cyan cube", "gray cube", "blue cube"]}, 400, "at most 3 objects"),
        ({"objects": ["purple sphre"]}, 400, 'did you mean "purple sphere"'),
        ({"objects": ["red sphere"], "steps": 5000}, 400, "steps: input should be less than or equal to 200"),
        (b"{", 400, "not valid JSON"),
    ],
)
def test_bad_requests_are_answered_with_a_message_and_nothing_is_queued(server, body, status, message):
    url, jobs, finished = server
    got, events = post(url, body)
    assert got == status and events[0]["type"] == "error" and message in events[0]["message"]
    assert jobs.served == 0 and finished == []


def test_a_browser_that_disconnects_frees_the_worker(server):
    url, jobs, finished = server
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"objects": ["red sphere"], "steps": 200, "num": 8}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        seen = b""
        while b'"type": "frame"' not in seen:  # the generation is running
            chunk = s.recv(65536)
            assert chunk, seen.decode()
            seen += chunk
    wait_until(lambda: finished == ["cancelled"], 60)  # stopped long before its 200 steps
    status, events = post(url, {"objects": ["red sphere"]})  # and the worker is free for the next page
    assert status == 200 and events[-1]["type"] == "done" and finished == ["cancelled", "done"]


# ---- the command ----------------------------------------------------------------------------------


def run_cli(*args):
    from iclevr.cli.app import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    return r


def test_without_the_extra_the_command_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` raises ImportError
    r = run_cli("serve")
    assert r.exit_code == 2 and 'pip install -e ".[serve]"' in r.output
    assert len([line for line in r.output.splitlines() if line.strip()]) == 1


def test_the_command_prints_the_model_the_address_and_a_line_for_a_non_local_host(weights, monkeypatch):
    import iclevr.serve.app as app_module

    ran = []

    class Fake:
        def run(self, sockets):
            ran.append(sockets[0].getsockname())

    monkeypatch.setattr(app_module, "make_server", lambda app, jobs: Fake())
    r = run_cli("serve", "--checkpoint", weights, "--port", 0, "--host", "0.0.0.0")
    assert r.exit_code == 0, r.output
    assert "model: --checkpoint" in r.output and "no verdicts" in r.output
    assert "listening on 0.0.0.0" in r.output and "serving on http://127.0.0.1:" in r.output
    assert "stopped (0 generation(s) served)" in r.output and ran[0][0] == "0.0.0.0"
    r = run_cli("serve", "--checkpoint", weights, "--port", 0)
    assert "listening on" not in r.output and "serving on http://127.0.0.1:" in r.output


def test_a_port_in_use_and_a_bad_port_are_one_line(weights):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        r = run_cli("serve", "--checkpoint", weights, "--port", taken.getsockname()[1])
    assert r.exit_code == 2 and "pick another --port" in r.output
    r = run_cli("serve", "--port", 70000)
    assert r.exit_code == 2 and "settings.port" in r.output


def test_is_local():
    from iclevr.serve.app import is_local

    assert is_local("127.0.0.1") and is_local("localhost") and is_local("::1") and is_local("127.0.0.2")
    assert not is_local("0.0.0.0") and not is_local("192.168.1.4") and not is_local("example.org")
