"""experiments/bench/device/peak_trace.py: the blocks alive at the allocation peak, from a
recorded allocator history (events as ``torch.cuda.memory._snapshot()`` lists them)."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "peak_trace", Path(__file__).resolve().parents[1] / "experiments/bench/device/peak_trace.py")
peak_trace = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peak_trace)


def frame(path, line=1, name="f"):
    return {"filename": path, "line": line, "name": name}


def alloc(addr, size, *frames):
    return {"action": "alloc", "addr": addr, "size": size, "frames": list(frames)}


def free(addr, size):
    return {"action": "free_completed", "addr": addr, "size": size}


EVENTS = [
    alloc(1, 60, frame("/t/torch/nn/functional.py", 9, "linear"), frame("/r/core/model.py", 40, "forward")),
    alloc(2, 50, frame("/r/core/losses/flash_ce.py", 257, "forward")),
    free(1, 60),                            # 110, then 50 alive
    alloc(3, 80, frame("/t/torch/x.py")),   # 130
    free(2, 50),
    alloc(4, 60, frame("/r/core/model.py", 41, "forward")),  # 80 + 60 = 140: the peak
    free(3, 80),
    free(4, 60),
]


def test_the_peak_is_the_largest_live_sum_and_names_the_repository_frame():
    best, blocks = peak_trace.peak_blocks(EVENTS)
    assert best == 140
    assert sorted(blocks.values()) == [(60, "core/model.py:41 forward"), (80, "x.py:1 f")]


def test_frees_count():
    # a reader that ignored frees would see 250 (every allocation alive at once)
    assert peak_trace.peak_blocks(EVENTS)[0] < 60 + 50 + 80 + 60
    assert peak_trace.peak_blocks(EVENTS[:4])[0] == 130


def test_the_innermost_repository_frame_names_a_block():
    assert peak_trace.site([frame("/t/torch/a.py"), frame("/r/core/b.py", 7, "g"),
                            frame("/r/experiments/c.py")]) == "core/b.py:7 g"
    assert peak_trace.site([]) == "?"
