"""structmat.progress: a bar on a terminal, plain lines elsewhere when asked to show (CLI jobs),
tqdm's own behaviour (nothing where stderr is not a terminal) by default."""

from __future__ import annotations

import io

from structmat.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(stream: io.StringIO, show: bool | None, n: int = 50) -> str:
    bar = progress_bar(range(n), show=show, desc="work", file=stream, leave=False)
    for i in bar:
        bar.set_postfix_str(f"item {i}")  # tqdm would redraw at each of these
    return stream.getvalue()


def test_lines_when_shown_and_not_a_terminal():
    text = run(io.StringIO(), show=True)
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert lines[0].startswith("work: 0/50 (0%)")
    assert lines[-1].startswith("work: 50/50 (100%)") and lines[-1].endswith("item 49")
    assert len(lines) < 25  # not one per postfix update (50): lines come at the start, end, every LINE_SECONDS


def test_a_redrawn_bar_on_a_terminal():
    text = run(Terminal(), show=True)
    assert "\r" in text and "work" in text


def test_default_and_false_follow_tqdm():
    assert run(io.StringIO(), show=None) == ""  # tqdm's disable=None: not a terminal, no bar
    assert run(Terminal(), show=False) == ""
    assert "work" in run(Terminal(), show=None)


def test_unknown_length_has_no_percentage():
    stream = io.StringIO()
    for _ in progress_bar(iter(range(3)), show=True, desc="work", file=stream):
        pass
    assert stream.getvalue().splitlines()[-1].startswith("work: 3 [")
