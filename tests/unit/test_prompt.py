"""Ray's consent prompt (prompt.ask) on real pipes, its ten seconds on a fake clock.

The prompt on a real terminal, answered y or n, is tested through the CLI on a
pseudo-terminal (tests/process/test_commands.py); here the clock is scripted, so the ten seconds
take no real time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from usagestatsd.cli.prompt import PROMPT_TIMEOUT_S, ask


class Terminal:
    """A pipe for the answers and a pipe for what the prompt writes."""

    def __init__(self) -> None:
        self.in_r, self.in_w = os.pipe()
        self.out_r, self.out_w = os.pipe()

    def type(self, text: bytes) -> None:
        os.write(self.in_w, text)

    def shown(self) -> str:
        os.set_blocking(self.out_r, False)
        data = b""
        while True:
            try:
                chunk = os.read(self.out_r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        return data.decode()

    def close(self) -> None:
        for fd in (self.in_r, self.in_w, self.out_r, self.out_w):
            os.close(fd)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    yield term
    term.close()


class ScriptedClock:
    """Returns the given times, one per call; at a call listed in `typing`, the user types
    that line (as if it were typed while the time passed)."""

    def __init__(
        self, times: list[float], terminal: Terminal, typing: dict[int, bytes] | None = None
    ) -> None:
        self.times = times
        self.terminal = terminal
        self.typing = typing or {}
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        if self.calls in self.typing:
            self.terminal.type(self.typing[self.calls])
        return self.times[min(self.calls, len(self.times)) - 1]


def test_an_invalid_answer_does_not_restart_the_ten_seconds(terminal: Terminal) -> None:
    """'maybe' at 6 s asks again with 4 s left (not 10); 'n' then disables."""
    clock = ScriptedClock([0.0, 0.0, 6.0], terminal, typing={2: b"maybe\n", 3: b"n\n"})
    assert ask(terminal.in_r, terminal.out_w, clock=clock) is False
    shown = terminal.shown()
    assert "auto-proceed in 10 seconds" in shown
    assert "Please answer y or n." in shown
    assert "auto-proceed in 4 seconds" in shown
    assert shown.endswith("Usage stats collection disabled.\n")


def test_no_answer_by_ten_seconds_in_total_means_yes(terminal: Terminal) -> None:
    """An invalid answer, then nothing: at 10 s from the start the default (yes) applies,
    with no further question."""
    clock = ScriptedClock([0.0, 0.0, PROMPT_TIMEOUT_S], terminal, typing={2: b"maybe\n"})
    assert ask(terminal.in_r, terminal.out_w, clock=clock) is True
    shown = terminal.shown()
    assert shown.count("Confirm [Y/n]") == 1
    assert "Please answer y or n." in shown
    assert shown.endswith("No answer: usage stats collection enabled (the policy's default).\n")


@pytest.mark.parametrize(("line", "answer"), [(b"\n", True), (b"Y\n", True), (b"no\n", False)])
def test_answers(terminal: Terminal, line: bytes, answer: bool) -> None:
    """Enter and y/yes enable, n/no disable, in any case."""
    clock = ScriptedClock([0.0, 1.0], terminal, typing={2: line})
    assert ask(terminal.in_r, terminal.out_w, clock=clock) is answer


def test_the_real_clock_times_out(terminal: Terminal) -> None:
    """With the real clock and nothing typed, ask gives up after its timeout (0.2 s here)."""
    assert ask(terminal.in_r, terminal.out_w, timeout_s=0.2) is True
    assert "No answer" in terminal.shown()
