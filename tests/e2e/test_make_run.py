"""``make run`` (scripts/run.sh) as someone at a terminal uses it, in both saga styles.

The real script on free ports and a fresh data directory, with its own Temporal dev server,
its own ``nats-server -js`` and its own SQLite files:

- it brings the system up, starts a part again after it is killed (kill -9 of the worker, of
  nats-server), says so on the terminal, and Ctrl-C or SIGTERM stops every process it ever
  started and exits 0;
- the README's curl walk-through (place with and without ``Prefer: wait``, confirm, read,
  deliver; an order nobody delivers ends refunded and cancelled) gets the same answers with
  ``SAGA_STYLE=choreography`` as with orchestration;
- kill -9 of everything at once (Temporal, NATS, worker, API and run.sh itself) with orders
  mid-saga loses nothing: ``make run`` again on the same data directory finds every order, the
  order waiting for its payment goes on when confirmed, and the deadlines of the others
  (a payment window, a dealer window) still fire.
"""

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from choreography.handlers import CONSUMERS
from settings import Settings
from store.db import make_engine
from tests.e2e.test_races import poll
from tests.saga_harness import db_statuses
from tools.chaos.stack import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")
WORKER_RESTARTED = re.compile(
    r"^\[run\] worker exited \(status 137\); restarting in \d+s \(restart 1\)$"
)
NATS_RESTARTED = re.compile(
    r"^\[run\] nats exited \(status 137\); restarting in \d+s \(restart 1\)$"
)
AUTH_OFF = "[run] auth is off (AUTH_MODE=dev)"
STOPPED = "[run] stopped. Data kept in"
PARTS = {"temporal", "nats", "worker", "api"}
# What each part's command line shows (a pid in run.pids is that part, not a reused pid).
PROGRAMS = {
    "temporal": b"temporal",
    "nats": b"nats-server",
    "worker": b"worker.py",
    "api": b"uvicorn",
}
# Printed by the worker once its parts run: Temporal's pollers, the choreography's consumers.
WORKER_POLLING = "worker polling"
CONSUMERS_UP = "choreographed saga's consumers on"
# The saga's windows in these runs: long enough for a step, short enough to wait for.
DEALER_WINDOW = {"DEALER_ASSIGNMENT_WINDOW_SECONDS": "3", "DEALER_RETRY_INITIAL_SECONDS": "0.5"}


def free_ports(count: int) -> list[int]:
    """Ports free right now, all different, outside the ephemeral range (see free_port)."""
    return [free_port() for _ in range(count)]


def run_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """This environment without anything that would point the run elsewhere (CI's
    ``DATABASE_URL``, a ``TEMPORAL_ADDRESS``, a ``NATS_URL``, credentials...), on free ports,
    with ``settings`` (``SAGA_STYLE``, windows...) on top."""
    own = {name.upper() for name in Settings.model_fields}
    own |= {"DATA_DIR", "VENV", "HOST", "API_PORT", "TEMPORAL_PORT", "TEMPORAL_UI_PORT"}
    own |= {"NATS_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in own}
    temporal_port, ui_port, api_port, nats_port = free_ports(4)
    return (
        env
        | {
            "DATA_DIR": str(data_dir),
            "VENV": str(VENV),
            "HOST": "127.0.0.1",
            "TEMPORAL_PORT": str(temporal_port),
            "TEMPORAL_UI_PORT": str(ui_port),
            "API_PORT": str(api_port),
            # Never the system's NATS on 4222: run.sh starts its own here.
            "NATS_PORT": str(nats_port),
            "DATABASE_URL": f"sqlite:///{data_dir / 'orders.db'}",
        }
        | settings
    )


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def runs(pid: int, program: bytes) -> bool:
    """Whether process ``pid`` runs ``program`` (a word of its command line names it)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(word == program or word.endswith(b"/" + program) for word in words)


def is_worker(pid: int) -> bool:
    return runs(pid, b"worker.py")


def log_count(log: Path, line: str) -> int:
    """How many times ``line`` appears in a part's log (once per start for a startup line)."""
    try:
        return log.read_text().count(line)
    except FileNotFoundError:
        return 0


def polling(worker_log: Path) -> int:
    """How many times a worker said it is polling its task queues (once per start)."""
    return log_count(worker_log, WORKER_POLLING)


def processes_of_run(data_dir: Path) -> set[int]:
    """Every live process with this run's ``DATA_DIR`` in its environment: the script and
    whatever it started (all of them inherit it), whatever their session or parent now."""
    marker = f"DATA_DIR={data_dir}".encode()
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours
            continue
        if marker in environ and alive(int(proc.name)):
            found.add(int(proc.name))
    return found


def read_pids(data_dir: Path) -> dict[str, int]:
    """run.pids: one ``<pid> <name>`` line per running part."""
    try:
        lines = (data_dir / "run.pids").read_text().splitlines()
    except FileNotFoundError:
        return {}
    pids = {}
    for line in lines:
        pid, _, name = line.partition(" ")
        if name:
            pids[name] = int(pid)
    return pids


async def until(what: str, check: Callable[[], bool], within: float, output: list[str]) -> None:
    """Poll ``check`` until it holds (deadline, not a fixed sleep); fail with the run's output."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within}s. run.sh printed:\n" + "\n".join(output))
        await asyncio.sleep(0.1)


# bash as at a terminal, with SIGINT not ignored: this test may run under a shell that ignores
# it (a background job of a non-interactive shell), and bash cannot trap a signal ignored at
# entry. Reset, then exec (same pid); no preexec_fn, which is unsafe with threads around.
RUN_SH = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp('bash', ['bash', sys.argv[1]])"
)


@dataclass
class Run:
    """One run.sh: its process (the script's own pid), its environment, what it printed."""

    process: asyncio.subprocess.Process
    env: dict[str, str]
    output: list[str]

    @property
    def data_dir(self) -> Path:
        return Path(self.env["DATA_DIR"])

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['API_PORT']}"

    def pids(self) -> dict[str, int]:
        return read_pids(self.data_dir)

    def log(self, part: str) -> Path:
        return self.data_dir / "logs" / f"{part}.log"

    def printed(self) -> str:
        return "\n".join(self.output)

    async def until(self, what: str, check: Callable[[], bool], within: float) -> None:
        await until(what, check, within, self.output)

    async def up(self, *, within: float = 45) -> None:
        """Until its API answers /healthz (run.sh starts the API last)."""
        healthz = f"{self.api}/healthz"
        async with httpx.AsyncClient(timeout=1) as http:
            deadline = time.monotonic() + within
            while True:
                assert self.process.returncode is None, "run.sh exited:\n" + self.printed()
                try:
                    if (await http.get(healthz)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "no /healthz:\n" + self.printed()
                await asyncio.sleep(0.1)

    async def worker_ready(self, starts: int = 1, *, within: float = 30) -> None:
        """Until the worker's ``starts``-th start polls Temporal and runs its consumers."""
        log = self.log("worker")
        await self.until(
            "the worker polling Temporal and consuming events",
            lambda: (
                log_count(log, WORKER_POLLING) >= starts and log_count(log, CONSUMERS_UP) >= starts
            ),
            within,
        )

    async def restarted(self, part: str, old_pid: int, *, within: float = 15) -> int:
        """Until run.sh has started ``part`` again in place of ``old_pid``: the new pid."""

        def started_again() -> bool:
            new = self.pids().get(part)
            return new is not None and new != old_pid and alive(new)

        await self.until(f"a new {part}", started_again, within)
        new_pid = self.pids()[part]
        assert runs(new_pid, PROGRAMS[part]), (part, new_pid)
        return new_pid

    async def stop(self, sig: signal.Signals, *, within: float = 30) -> None:
        """Send ``sig`` (SIGINT to the process group, as Ctrl-C does; otherwise to the script
        only, as ``kill`` does) and wait for the script to exit 0, having stopped everything."""
        started = set(self.pids().values())
        if sig == signal.SIGINT:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        assert await asyncio.wait_for(self.process.wait(), within) == 0, self.printed()
        assert [pid for pid in started if alive(pid)] == []
        assert processes_of_run(self.data_dir) == set()
        assert not (self.data_dir / "run.pids").exists()
        assert any(line.startswith(STOPPED) for line in self.output), self.output

    async def kill_everything(self) -> None:
        """kill -9 of the script and every part at once, as a power cut would: nothing gets to
        stop cleanly, and nothing is left to restart anything."""
        victims = processes_of_run(self.data_dir)
        assert {self.process.pid, *self.pids().values()} <= victims, (victims, self.pids())
        for pid in [self.process.pid, *(victims - {self.process.pid})]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert await asyncio.wait_for(self.process.wait(), 10) == -signal.SIGKILL
        await self.until("every part dead", lambda: not processes_of_run(self.data_dir), 10)


@contextlib.asynccontextmanager
async def make_run(env: dict[str, str]) -> AsyncIterator[Run]:
    """run.sh started in ``env`` as at a terminal, up (its API answers); at the end, whatever
    happened, no process of the run (Temporal, NATS, anything) outlives the context."""
    output: list[str] = []
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN_SH,
        str(ROOT / "scripts" / "run.sh"),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # Its own process group, as at a terminal: Ctrl-C is SIGINT to the whole group.
        start_new_session=True,
    )

    async def read_output() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            output.append(ANSI.sub("", line.decode(errors="replace").rstrip()))

    reading = asyncio.create_task(read_output())
    run = Run(process, env, output)
    try:
        await run.up()
        yield run
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        for pid in processes_of_run(run.data_dir):  # ours only, whatever reused a pid since
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reading, 5)
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


async def test_make_run_restarts_a_killed_worker_and_ctrl_c_stops_everything(tmp_path: Path):
    async with make_run(run_env(tmp_path)) as run:
        # A worker that is up and polling, as one that crashes in use would be.
        worker_log = run.log("worker")
        await run.until("the worker polling", lambda: polling(worker_log) == 1, 20)
        pids = run.pids()
        assert set(pids) == PARTS, pids
        assert all(alive(pid) and runs(pid, PROGRAMS[name]) for name, pid in pids.items()), pids
        started = set(pids.values())  # every part's pid, including restarts
        worker = pids["worker"]
        assert is_worker(worker)

        os.kill(worker, signal.SIGKILL)

        new_worker = await run.restarted("worker", worker)
        started.add(new_worker)
        assert not alive(worker)
        assert is_worker(new_worker)
        others = {name: pid for name, pid in run.pids().items() if name != "worker"}
        assert others == {name: pid for name, pid in pids.items() if name != "worker"}
        await run.until("the restart line", lambda: any(map(WORKER_RESTARTED.match, run.output)), 5)
        # The new worker really runs: it connected to Temporal and polls.
        await run.until("the new worker polling", lambda: polling(worker_log) == 2, 20)
        assert alive(new_worker)

        await run.stop(signal.SIGINT)  # Ctrl-C
        assert [pid for pid in started if alive(pid)] == []
        assert sum(line.startswith(AUTH_OFF) for line in run.output) == 1, run.output
        assert sum(bool(WORKER_RESTARTED.match(line)) for line in run.output) == 1, run.output


async def sleeper(*words: str) -> asyncio.subprocess.Process:
    """A process from this checkout sleeping for a minute, ``words`` on its command line."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", *words, cwd=ROOT
    )


async def test_make_run_stops_a_leftover_part_and_leaves_a_reused_pid_alone(tmp_path: Path):
    """run.pids of a run killed with kill -9 names its parts: the next run stops those still
    running, and not a process that got the pid of one that died (pids wrap)."""
    leftover = await sleeper("worker.py")  # what a worker left running looks like
    stranger = await sleeper("--not-a-part")  # anything else from this checkout
    try:
        (tmp_path / "run.pids").write_text(f"{leftover.pid} worker\n{stranger.pid} api\n")
        async with make_run(run_env(tmp_path)) as run:
            assert await asyncio.wait_for(leftover.wait(), 5) == -signal.SIGTERM
            stopped = (
                f"[run] stopping worker (process {leftover.pid}) left behind by a previous run"
            )
            assert stopped in run.output, run.output
            assert stranger.returncode is None
            assert alive(stranger.pid)
            assert set(run.pids()) == PARTS
            await run.stop(signal.SIGTERM)
        assert alive(stranger.pid)
    finally:
        for process in (leftover, stranger):
            if process.returncode is None:
                process.kill()
                await process.wait()


# ---------------------------------------------------------------- the README's walk-through


@dataclass(frozen=True)
class Walkthrough:
    """The README's "Try it with curl": the order it places (body and headers), its calls in
    order with the status each promises, and the two variants the prose describes."""

    order: dict[str, Any]
    headers: dict[str, str]
    calls: list[tuple[str, str, int | None]]  # method, path with <placeholders>, promised code
    prefer: dict[str, str]  # the ``Prefer: wait=N`` header that answers 201
    nowhere: dict[str, Any]  # the order's body to a city without dealers


def readme_walkthrough() -> Walkthrough:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Try it with curl", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None, "README.md: no ```bash block under 'Try it with curl'"
    commands = re.split(r"^(?=curl )", block.group(1), flags=re.MULTILINE)[1:]
    calls = []
    order: dict[str, Any] = {}
    headers: dict[str, str] = {}
    for command in commands:
        call = re.match(r"curl -s (?:-X (\w+) )?localhost:8000(\S+)", command)
        assert call is not None, command
        promised = re.search(r"# -> (\d{3})\b", command)
        calls.append((call[1] or "GET", call[2], int(promised[1]) if promised else None))
        if body := re.search(r"-d '([^']*)'", command):
            order = json.loads(body[1])
            headers = dict(re.findall(r"-H '([^:']+): ([^']*)'", command))
    assert [(method, path) for method, path, _ in calls] == [
        ("POST", "/orders"),
        ("POST", "/payments/<payment_id>/confirm"),
        ("GET", "/orders/<order_id>"),
        ("POST", "/deliveries/<delivery_id>/delivered"),
    ], "the README's walk-through changed: follow it here"
    wait = re.search(r"`Prefer: (wait=\d+)`", readme)
    assert wait is not None, "README.md no longer names `Prefer: wait=N`"
    assert '(`"city":"Atlantis"`)' in readme, "README.md no longer names the city without dealers"
    return Walkthrough(
        order=order,
        headers=headers,
        calls=calls,
        prefer={"Prefer": wait[1]},
        nowhere={**order, "city": "Atlantis"},
    )


# Fields only one style has (its workflow, its event log) or that name rows, not outcomes.
STYLE_FIELDS = {"style", "workflow_id", "workflow_url", "events"}


def comparable(body: Any, ids: dict[str, str]) -> Any:
    """``body`` with the run's own ids named (``<order_id>``...) and the style's own fields
    left out: what must be the same in both styles."""
    if isinstance(body, dict):
        return {
            key: ("<dealer>" if value is not None else None)
            if key == "dealer_id"
            else comparable(value, ids)
            for key, value in body.items()
            if key not in STYLE_FIELDS
        }
    if isinstance(body, list):
        return [comparable(value, ids) for value in body]
    if isinstance(body, str):
        for name, value in ids.items():
            body = body.replace(value, f"<{name}>")
    return body


async def walk_through(http: httpx.AsyncClient, readme: Walkthrough) -> list[Any]:
    """The README's calls, then its two variants, as a customer and a dealer make them: every
    answer (status and body, comparable across styles), in order."""
    answers: list[Any] = []
    ids: dict[str, str] = {}

    def note(step: str, response: httpx.Response, promised: int | None = None) -> Any:
        body = response.json()
        if promised is not None:
            assert response.status_code == promised, (step, response.text)
        answers.append((step, response.status_code, comparable(body, ids)))
        return body

    # 1. Place the order (202 at once), 2. confirm its payment, 3. read it, 4. deliver it.
    (_, _, placing), (_, confirming, confirmed), (_, _, _), (_, delivering, delivered) = (
        readme.calls
    )
    response = await http.post("/orders", json=readme.order, headers=readme.headers)
    accepted = response.json()
    ids |= {"order_id": accepted["order_id"], "payment_id": accepted["payment_id"]}
    note("place", response, placing)
    confirm_path = confirming.replace("<payment_id>", ids["payment_id"])
    note("confirm", await http.post(confirm_path), confirmed)
    moving = await poll(http, ids["order_id"], lambda o: o["phase"] == "IN_TRANSIT")
    ids["delivery_id"] = moving["delivery"]["delivery_id"]
    answers.append(("read", 200, comparable(moving, ids)))
    deliver_path = delivering.replace("<delivery_id>", ids["delivery_id"])
    note("deliver", await http.post(deliver_path), delivered)
    done = await poll(http, ids["order_id"], lambda o: o["phase"] == "DELIVERED")
    answers.append(("delivered", 200, comparable(done, ids)))
    # The same request again: the same order, from the database, and no second saga.
    note("replay", await http.post("/orders", json=readme.order, headers=readme.headers))

    # Prefer: wait=N: 201 with the whole order once its payment exists.
    waited = await http.post("/orders", json=readme.order, headers=readme.prefer)
    ids |= {"waited_order": waited.json()["order_id"]}
    ids |= {"waited_payment": waited.json()["payment"]["payment_id"]}
    note("place, waiting", waited, 201)

    # A city without dealers: confirmed, no dealer within the window, refunded and cancelled.
    nowhere = await http.post("/orders", json=readme.nowhere, headers=readme.prefer)
    ids |= {"lost_order": nowhere.json()["order_id"]}
    ids |= {"lost_payment": nowhere.json()["payment"]["payment_id"]}
    note("place nowhere", nowhere, 201)
    note("confirm nowhere", await http.post(f"/payments/{ids['lost_payment']}/confirm"), 202)
    cancelled = await poll(http, ids["lost_order"], lambda o: o["phase"] == "CANCELLED")
    ids["lost_delivery"] = cancelled["delivery"]["delivery_id"]
    answers.append(("cancelled nowhere", 200, comparable(cancelled, ids)))
    return answers


def assert_the_readme_s_answers(answers: list[Any]) -> None:
    """What the README promises, whatever the style."""
    by_step = {step: (code, body) for step, code, body in answers}
    assert by_step["place"][0] == 202
    assert by_step["place"][1]["status"] == "PENDING"
    assert by_step["read"][1]["status"] == "CONFIRMED"
    assert by_step["read"][1]["payment"]["status"] == "COMPLETED"
    code, done = by_step["delivered"]
    assert (done["status"], done["delivery"]["status"]) == ("DELIVERED", "DELIVERED")
    assert by_step["replay"][0] == 200
    assert by_step["replay"][1]["status"] == "DELIVERED"
    code, waited = by_step["place, waiting"]
    assert (code, waited["status"], waited["phase"]) == (201, "PENDING", "AWAITING_PAYMENT")
    assert waited["payment"]["status"] == "PENDING"
    lost = by_step["cancelled nowhere"][1]
    assert (lost["status"], lost["payment"]["status"], lost["delivery"]["status"]) == (
        "CANCELLED",
        "REFUNDED",
        "CANCELLED",
    )
    assert lost["failure_type"] == "NoDealerAvailable"


async def test_the_readme_walk_through_answers_the_same_in_both_styles(tmp_path: Path):
    """Both styles side by side, each its own ``make run``; then, in the choreographed one,
    nats-server killed with kill -9 while an order waits is started again and the order goes
    on; SIGTERM stops everything."""
    readme = readme_walkthrough()
    orchestration_env = run_env(tmp_path / "orchestration", SAGA_STYLE="orchestration")
    choreography_env = run_env(tmp_path / "choreography", SAGA_STYLE="choreography")
    async with (
        make_run(orchestration_env | DEALER_WINDOW) as orchestrated,
        make_run(choreography_env | DEALER_WINDOW) as choreographed,
    ):
        await asyncio.gather(orchestrated.worker_ready(), choreographed.worker_ready())
        async with (
            httpx.AsyncClient(base_url=orchestrated.api, timeout=30) as orchestration_http,
            httpx.AsyncClient(base_url=choreographed.api, timeout=30) as choreography_http,
        ):
            orchestration, choreography = await asyncio.gather(
                walk_through(orchestration_http, readme), walk_through(choreography_http, readme)
            )
            assert_the_readme_s_answers(orchestration)
            assert choreography == orchestration
            # The dev server's Web UI shows the encrypted payloads through the API's codec server.
            ui = f"http://127.0.0.1:{orchestrated.env['TEMPORAL_UI_PORT']}"
            ui_settings = (await orchestration_http.get(f"{ui}/api/v1/settings")).json()
            assert ui_settings["Codec"]["Endpoint"] == f"{orchestrated.api}/codec"
            preflight = await orchestration_http.options(
                "/codec/decode",
                headers={"Origin": ui, "Access-Control-Request-Method": "POST"},
            )
            assert preflight.headers.get("access-control-allow-origin") == ui, preflight.text
            await orchestrated.stop(signal.SIGTERM)

            # An order waits for its payment; NATS dies; the decision comes while it is down.
            placed = await choreography_http.post(
                "/orders", json=readme.order, headers=readme.prefer
            )
            assert placed.status_code == 201, placed.text
            assert placed.json()["style"] == "choreography"
            order_id, payment_id = placed.json()["order_id"], placed.json()["payment"]["payment_id"]
            before_kill = choreographed.pids()
            nats = before_kill["nats"]
            assert runs(nats, b"nats-server")
            os.kill(nats, signal.SIGKILL)
            await choreographed.until("nats-server dead", lambda: not alive(nats), 5)
            confirm = await choreography_http.post(f"/payments/{payment_id}/confirm")
            assert confirm.status_code == 202, confirm.text
            # run.sh starts it again, on the same port and store; the order carries on.
            new_nats = await choreographed.restarted("nats", nats)
            await choreographed.until(
                "the restart line",
                lambda: any(map(NATS_RESTARTED.match, choreographed.output)),
                5,
            )
            body = await poll(choreography_http, order_id, lambda o: o["phase"] == "IN_TRANSIT")
            assert (body["status"], body["payment"]["status"]) == ("CONFIRMED", "COMPLETED")
            # The others were left alone and kept running (the worker and the API reconnect).
            others = {name: pid for name, pid in choreographed.pids().items() if name != "nats"}
            assert others == {name: pid for name, pid in before_kill.items() if name != "nats"}
            assert all(map(alive, others.values())), others

            await choreographed.stop(signal.SIGTERM)
            assert not alive(new_nats)
            assert sum(bool(NATS_RESTARTED.match(line)) for line in choreographed.output) == 1


# ---------------------------------------------------------------- kill -9 of everything


def consumers_of(event_type: str) -> list[str]:
    """The durable consumers that apply ``event_type`` (none for the saga's ends)."""
    return sorted(name for (_, kind), name in CONSUMERS.items() if kind == event_type)


# The payment window of the orders placed before the crash: it must outlast a restart (5 s
# on an idle machine, 15 s on a busy one: the order confirmed afterwards), and it closes for
# the order nobody confirms.
PAYMENT_WINDOW = 30.0


async def test_kill_9_of_everything_mid_saga_loses_nothing_and_deadlines_still_fire(
    tmp_path: Path,
):
    readme = readme_walkthrough()
    env = run_env(tmp_path, SAGA_STYLE="choreography", PAYMENT_WINDOW_SECONDS=f"{PAYMENT_WINDOW:g}")
    env |= DEALER_WINDOW | {"DEALER_ASSIGNMENT_WINDOW_SECONDS": "8"}
    async with make_run(env) as before:
        await before.worker_ready()
        async with httpx.AsyncClient(base_url=before.api, timeout=30) as http:

            async def place(body: dict[str, Any]) -> dict[str, Any]:
                response = await http.post("/orders", json=body, headers=readme.prefer)
                assert response.status_code == 201, response.text
                placed: dict[str, Any] = response.json()
                assert (placed["style"], placed["phase"]) == ("choreography", "AWAITING_PAYMENT")
                return placed

            # Waiting for their payment: one to be confirmed after the crash, one never.
            placed_at = time.monotonic()
            waiting = await place(readme.order)
            unpaid = await place({**readme.order, "customer_id": "never-pays"})
            # Waiting for a dealer: confirmed, nobody delivers to Atlantis.
            lost = await place(readme.nowhere)
            confirm = await http.post(f"/payments/{lost['payment']['payment_id']}/confirm")
            assert confirm.status_code == 202, confirm.text
            # DeliveryService has created the delivery and looks for a dealer.
            await poll(
                http,
                lost["order_id"],
                lambda o: o["phase"] == "ASSIGNING_DEALER" and o["delivery"] is not None,
            )
            await before.kill_everything()

    # The crash caught the three orders mid-saga (read from the database, all processes dead).
    engine = make_engine(env["DATABASE_URL"])
    try:
        at_crash = {
            name: db_statuses(engine, order["order_id"])
            for name, order in (("lost", lost), ("unpaid", unpaid), ("waiting", waiting))
        }
    finally:
        engine.dispose()
    assert at_crash["lost"] | {"dealer_id": None} == {
        "order": "CONFIRMED",
        "payment": "COMPLETED",
        "delivery": "PENDING",
        "dealer_id": None,
        "payments": 1,
        "deliveries": 1,
    }, at_crash
    for name in ("unpaid", "waiting"):
        assert (at_crash[name]["order"], at_crash[name]["payment"]) == ("PENDING", "PENDING")

    # make run again, same data directory (a new run.sh finds run.pids naming dead processes).
    async with make_run(env) as after:
        async with httpx.AsyncClient(base_url=after.api, timeout=30) as http:
            listed = (await http.get("/orders", params={"limit": 100})).json()
            assert {o["order_id"] for o in listed["items"]} == {
                lost["order_id"],
                unpaid["order_id"],
                waiting["order_id"],
            }
            payment_id = waiting["payment"]["payment_id"]
            confirm = await http.post(f"/payments/{payment_id}/confirm")
            assert time.monotonic() - placed_at < PAYMENT_WINDOW, (
                "the restart took longer than the payment window"
            )
            assert confirm.status_code == 202, confirm.text
            moving = await poll(http, waiting["order_id"], lambda o: o["phase"] == "IN_TRANSIT")
            delivery_id = moving["delivery"]["delivery_id"]
            delivered = await http.post(f"/deliveries/{delivery_id}/delivered")
            assert delivered.status_code == 202, delivered.text
            done = await poll(http, waiting["order_id"], lambda o: o["phase"] == "DELIVERED")
            assert (done["status"], done["payment"]["status"]) == ("DELIVERED", "COMPLETED")

            refunded = await poll(http, lost["order_id"], lambda o: o["phase"] == "CANCELLED")
            assert (refunded["status"], refunded["payment"]["status"]) == ("CANCELLED", "REFUNDED")
            assert refunded["delivery"]["status"] == "CANCELLED"
            assert refunded["failure_type"] == "NoDealerAvailable"

            timed_out = await poll(
                http, unpaid["order_id"], lambda o: o["phase"] == "CANCELLED", PAYMENT_WINDOW + 10
            )
            assert (timed_out["status"], timed_out["payment"]["status"]) == (
                "CANCELLED",
                "CANCELLED",
            )
            assert (timed_out["payment"]["decision"], timed_out["failure_type"]) == (
                "TIMEOUT",
                "PaymentTimedOut",
            )
            # Every effect once: each event emitted once and applied once by each consumer,
            # none dead-lettered; one payment and at most one delivery each (below).
            confirmed = ["order_created", "payment_confirmed", "order_confirmed"]
            for order, events in (
                (
                    waiting,
                    [*confirmed, "delivery_assigned", "delivery_completed", "order_delivered"],
                ),
                (unpaid, ["order_created", "payment_expired", "order_cancelled"]),
                (lost, [*confirmed, "delivery_failed", "payment_refunded", "order_cancelled"]),
            ):
                view = (await http.get(f"/orders/{order['order_id']}")).json()
                assert [e["type"] for e in view["events"]] == events, view["events"]
                log = (await http.get(f"/orders/{order['order_id']}/saga")).json()
                assert [e["type"] for e in log] == events, log
                for event in log:
                    applied_by = sorted(c["consumer"] for c in event["consumed"])
                    assert applied_by == consumers_of(event["type"]), event
                    assert event["dead_letters"] == [], event
        await after.stop(signal.SIGTERM)

    engine = make_engine(env["DATABASE_URL"])
    try:
        for order in (lost, unpaid, waiting):
            counts = db_statuses(engine, order["order_id"])
            assert counts["payments"] == 1, counts
            assert counts["deliveries"] <= 1, counts
    finally:
        engine.dispose()
