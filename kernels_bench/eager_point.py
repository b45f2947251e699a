"""Eager flash_ce at one point against the attention kernel at the same shape (issue 21.4).

    python kernels_bench/eager_point.py [--n 560] [--v 207649] [--d 64] [--iters 200] [--out DIR]
                                        [--fresh-workspaces]

A user calling ``core.flash_ce`` from their own loop (no CUDA graph) pays the Python and launch
overhead of every call; this measures what that costs beside the kernels' own GPU time, on the
same operands (bf16, an untrained head: ``kernels_bench/inputs.random_inputs``), in one process:

- ``flash_ce eager``: forward + backward (``e.grad = c.grad = None; flash_ce(e, c, t).backward()``)
  ``--iters`` times back to back between two CUDA events, no sync inside: wall milliseconds per
  call (``host_ms``: the Python time to enqueue them; above the GPU time, the call is host-bound);
  ``do_bench``: the same step as ``triton.testing.do_bench`` times it (L2 flushed before each
  call, as the loss sweep's figures);
- ``autograd only``: a Function with no work, forward + backward: the floor of any such call;
- ``flash_ce graph``: the same step captured once in a CUDA graph and replayed: no host overhead;
- ``flash_ce kernels``: the GPU time of the step's kernels (torch.profiler, device time per
  call) and how many kernels one call launches, listed per kernel below the table;
- ``attention``: PyTorch SDPA forward + backward with N queries against V keys and values, one
  head (as ``../shared/gpu/anchors/attention_anchor.py``), each backend that runs (flash,
  cuDNN, efficient), timed by the same event loop; the loss does 4 of attention's 7 matmuls.

Prints a table and writes ``eager_point.csv`` (and ``eager_kernels.csv``) under ``--out`` via
``core.atomic``. Without CUDA, the same steps run on the CPU with ``time.perf_counter`` (the loss
then is its CPU stand-in, plain CE; the GPU rows are left out): a smoke test of the script only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import torch
import torch.nn.functional as F

from core.atomic import unwritable, write_text
from experiments.output import kernel_profile, markdown_table


def _loop_ms(step, iters: int, device: torch.device) -> tuple[float, float]:
    """(wall ms per call, host ms per call) of ``iters`` calls back to back, no sync inside."""
    for _ in range(3):
        step()
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        ms = (time.perf_counter() - t0) * 1e3 / iters
        return ms, ms
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(iters):
        step()
    end.record()
    host = (time.perf_counter() - t0) * 1e3 / iters
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / iters, host


def _graph_ms(step, iters: int, device: torch.device) -> float:
    """The step captured once in a CUDA graph, replayed ``iters`` times: ms per replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return _loop_ms(graph.replay, iters, device)[0]


def _do_bench_ms(step, grads) -> float:
    from triton.testing import do_bench

    return float(do_bench(step, warmup=25, rep=200, grad_to_none=list(grads)))


class _Nothing(torch.autograd.Function):
    """Forward and backward of a loss with no work: what autograd alone costs per call."""

    @staticmethod
    def forward(ctx, e, c):
        return e.new_empty(())

    @staticmethod
    def backward(ctx, grad):
        return None, None


def _autograd_floor(iters: int, device: torch.device) -> dict:
    e = torch.zeros(2, 2, device=device, requires_grad=True)
    c = torch.zeros(2, 2, device=device, requires_grad=True)
    wall, host = _loop_ms(lambda: _Nothing.apply(e, c).backward(), iters, device)
    return dict(ms=wall, host_ms=host)


def measure(n: int, v: int, d: int, iters: int, device: torch.device) -> tuple[list[dict], list[tuple]]:
    """(table rows, per-kernel rows) at N x V x D, bf16 on CUDA (fp32 on a CPU)."""
    from core.losses import flash_ce
    from kernels_bench.inputs import random_inputs

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    inputs = random_inputs(n=n, v=v, d=d, device=device, seed=0)
    e = inputs.e.to(dtype).requires_grad_()
    c = inputs.c.to(dtype).requires_grad_()
    t = inputs.targets

    def step():
        e.grad = c.grad = None
        flash_ce(e, c, t).backward()

    rows: list[dict] = []
    kernels: list[tuple] = []
    base = dict(N=n, V=v, D=d, dtype=str(dtype).replace("torch.", ""))
    if cuda:
        rows.append(dict(base, what="autograd only (a no-op Function)", **_autograd_floor(iters, device)))
    wall, host = _loop_ms(step, iters, device)
    row = dict(base, what="flash_ce eager fwd+bwd", ms=wall, host_ms=host)
    if cuda:
        row["do_bench_ms"] = _do_bench_ms(step, (e, c))
        prof = kernel_profile(step, steps=min(iters, 50), top=1000)
        gpu, launches = prof["total_ms"], round(prof["launches"])
        kernels = [(k["kernel"], k["ms"] * 1e3, k["calls"]) for k in prof["kernels"]]
        rows.append(row)
        rows.append(dict(base, what="flash_ce graph replay", ms=_graph_ms(step, iters, device)))
        rows.append(dict(base, what="flash_ce kernels (profiler)", ms=gpu, kernels_per_call=launches))
    else:
        rows.append(row)
    # Attention at the same shape: N queries, V keys and values, one head.
    q = torch.randn(1, 1, n, d, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(1, 1, v, d, device=device, dtype=dtype, requires_grad=True)
    val = torch.randn(1, 1, v, d, device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(1, 1, n, d, device=device, dtype=dtype)
    backends = [("math", None)]
    if cuda:
        from torch.nn.attention import SDPBackend

        backends = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                    ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    for name, backend in backends:
        def attn():
            q.grad = k.grad = val.grad = None
            F.scaled_dot_product_attention(q, k, val).backward(grad_out)

        try:
            if backend is None:
                ms, host = _loop_ms(attn, max(1, iters // 10), device)
            else:
                from torch.nn.attention import sdpa_kernel

                with sdpa_kernel(backend):
                    ms, host = _loop_ms(attn, iters, device)
        except Exception as err:  # a backend that does not take this shape or dtype
            print(f"attention {name}: skipped ({str(err).splitlines()[0][:100]})", flush=True)
            continue
        rows.append(dict(base, what=f"attention {name} fwd+bwd", ms=ms, host_ms=host, loss_equiv_ms=ms * 4 / 7))
    return rows, kernels


def table(rows: list[dict]) -> str:
    cols = ["what", "ms", "host_ms", "do_bench_ms", "kernels_per_call", "loss_equiv_ms"]
    fmt = lambda x: "" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))  # noqa: E731
    return markdown_table(cols, ([fmt(r.get(c)) for c in cols] for r in rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=560)
    parser.add_argument("--v", type=int, default=207_649)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--iters", type=int, default=200, help="calls per timed loop")
    parser.add_argument("--out", type=Path, default=None, help="folder for eager_point.csv")
    parser.add_argument("--fresh-workspaces", action="store_true",
                        help="flash_ce takes fresh buffers from the caching allocator at every call "
                             "instead of reusing its workspaces (to time what reuse saves)")
    args = parser.parse_args(argv)
    if min(args.n, args.v, args.d, args.iters) < 1:
        print("error: --n, --v, --d and --iters must be positive", file=sys.stderr)
        return 2
    if args.out is not None and (problem := unwritable(args.out)):
        print(f"error: cannot write --out {args.out}: {problem}", file=sys.stderr)
        return 2
    if args.fresh_workspaces:
        import core.losses.flash_ce  # noqa: F401  the module (core.losses.flash_ce is also the function)

        sys.modules["core.losses.flash_ce"].REUSE_WORKSPACES = False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        print("no CUDA device: CPU smoke run (the loss's CPU stand-in; GPU rows left out)", flush=True)
    rows, kernels = measure(args.n, args.v, args.d, args.iters, device)
    env = f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}"
    print(f"N={args.n} V={args.v} D={args.d} on {env}")
    print(table(rows))
    if kernels:
        print("kernels per call (device us, launches):")
        for name, us, count in kernels:
            print(f"  {us:8.1f} us  x{count:g}  {name[:110]}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text(pd.DataFrame([dict(r, device=env) for r in rows]).to_csv(index=False),
                   args.out / "eager_point.csv")
        if kernels:
            frame = pd.DataFrame(kernels, columns=["kernel", "us_per_call", "launches_per_call"])
            write_text(frame.to_csv(index=False), args.out / "eager_kernels.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
