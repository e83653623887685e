import io
import re
import time

from magseg_ray.progress import Progress, clock


def test_lines_off_a_terminal_say_done_rate_and_eta_and_come_at_most_every_period_plus_the_last():
    out = io.StringIO()
    with Progress("[map] chips", total=10, unit="chips", every_s=60, stream=out) as progress:
        for done in range(1, 11):
            progress.update(done, note=f"{done} patches")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # the first update, the last one (10/10), and the block's end
    assert lines[0].startswith("[map] chips 1/10 10% | ") and " chips/s | " in lines[0] and "ETA " in lines[0]
    assert lines[1].startswith("[map] chips 10/10 100% | ") and lines[1].endswith("done | 10 patches")
    assert "\r" not in out.getvalue() and "#" not in out.getvalue()


def test_a_line_comes_every_period_while_nothing_finishes():
    out = io.StringIO()
    with Progress("[sft] steps", total=5, unit="steps", every_s=1.0, stream=out) as progress:
        progress.update(1)
        time.sleep(3.5)
    lines = out.getvalue().splitlines()
    assert 3 <= len(lines) <= 6, lines
    assert all(line.startswith("[sft] steps 1/5 20% | ") for line in lines)
    assert len({re.search(r"(\d+:\d\d) elapsed", line).group(1) for line in lines}) >= 3  # time moves on


def test_on_a_terminal_one_line_is_redrawn_with_a_bar():
    out = io.StringIO()
    with Progress("[map] chips", total=4, unit="chips", stream=out, tty=True) as progress:
        progress.update(2)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.startswith("\r[map] chips [############            ] 2/4 50% | ")


def test_clock():
    assert (clock(5), clock(65), clock(3725)) == ("0:05", "1:05", "1:02:05")


def test_a_line_follows_what_a_worker_writes(tmp_path):
    from functools import partial

    from magseg_ray.progress import read_progress, write_progress

    out, source = io.StringIO(), tmp_path / "progress.json"
    with Progress("[sft] steps", total=4, unit="steps", stream=out, tty=True, poll=partial(read_progress, source)):
        for step in (1, 2, 4):
            write_progress(source, step, f"loss {1 / step:.2f}")
            time.sleep(1.5)
    lines = [line.removesuffix("\033[K") for line in out.getvalue().strip().split("\r") if line]
    assert any(line.startswith("[sft] steps [######                  ] 1/4 25% | ") and line.endswith("| loss 1.00")
               for line in lines), lines
    assert lines[-1].startswith("[sft] steps [########################] 4/4 100% | ") and lines[-1].endswith("done | loss 0.25")


def test_the_last_line_has_what_the_poll_says_when_the_block_ends(tmp_path):
    """A Ray Train run can end between two polls: the line it leaves must say the work is done."""
    from magseg_ray.progress import read_progress, write_progress

    out, source = io.StringIO(), tmp_path / "progress.json"
    with Progress("[sft] steps", total=6, unit="steps", every_s=60, stream=out, poll=lambda: read_progress(source)):
        write_progress(source, 6, "loss 0.50")
    assert out.getvalue().splitlines()[-1].startswith("[sft] steps 6/6 100% | ")
