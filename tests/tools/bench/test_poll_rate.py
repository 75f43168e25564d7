"""The bench's dev server polls its history queues at the rate asked for.

A dynamic config key the server does not know is taken without a word and changes nothing, so
the keys are checked against the real ``temporal`` binary, which holds each key it reads as a
string. How fast the queues then move is the bench's to measure, never a test's.
"""

import mmap
from pathlib import Path

import pytest

from tests.conftest import temporal_binary
from tools.bench.__main__ import parse
from tools.bench.environment import DEFAULT_POLL_RPS, POLLED_QUEUES, poll_rate_args


def test_each_history_queue_gets_one_poll_rate_the_server_knows_by_name():
    args = poll_rate_args(37)

    flags, values = args[0::2], args[1::2]
    assert flags == ["--dynamic-config-value"] * len(POLLED_QUEUES)
    keys = [value.split("=")[0] for value in values]
    assert [value.split("=")[1] for value in values] == ["37"] * len(POLLED_QUEUES)
    assert keys == [
        "history.transferProcessorMaxPollRPS",
        "history.timerProcessorMaxPollRPS",
        "history.visibilityProcessorMaxPollRPS",
    ]
    with Path(temporal_binary("temporal")).open("rb") as binary:
        strings = mmap.mmap(binary.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            unknown = [key for key in keys if strings.find(key.encode()) < 0]
        finally:
            strings.close()
    assert unknown == []


def test_the_bench_and_its_scale_run_poll_at_the_default_unless_told():
    for argv in ([], ["scale"]):
        args, _ = parse(argv)
        assert args.poll_rps == DEFAULT_POLL_RPS, argv
    args, _ = parse(["--poll-rps", "20"])
    assert args.poll_rps == 20


@pytest.mark.parametrize("value", ["0", "-5", "fast"])
def test_a_poll_rate_that_is_not_a_positive_whole_number_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
):
    with pytest.raises(SystemExit) as stopped:
        parse(["--poll-rps", value])

    assert stopped.value.code == 2
    assert "--poll-rps" in capsys.readouterr().err
