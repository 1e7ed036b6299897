"""``bicycle bench``: the click command over the benchmarks of this package."""
from __future__ import annotations

from pathlib import Path

import click
import torch

from bicycle.errors import BicycleError
from bicycle.outputs import check_output_file
from bicycle.commands.reporting import report, reporting


@click.command("bench")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the records here.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: cuda when present, else cpu.")
@click.option("--quick", is_flag=True, help="Fewer sizes and repetitions.")
@click.option("--size", "sizes", type=int, multiple=True, help="Elements per op (repeatable).")
@click.option("--step", is_flag=True, help="Training-step bench: eager reference vs fast mode (CUDA graphs on CUDA).")
@click.option("--batch-size", "batch_sizes", type=int, multiple=True, help="--step: batch sizes (default 2, 8, 32 on CUDA).")
@click.option("--precision", "precisions", type=click.Choice(["fp32", "bf16"]), multiple=True,
              help="--step on CUDA: fast-mode precisions (default fp32 and bf16).")
@click.option("--graph-ops", is_flag=True, help="Fused ops at the paper's shapes: us/call eager and under graph replay (CUDA).")
@click.option("--prep", is_flag=True, help="prepare_batch cpp vs ref: CPU training steps/s at 64 px.")
@click.option("--force", is_flag=True, help="replace an existing --json file")
def bench(json_path: str | None, device: str, quick: bool, sizes: tuple[int, ...], step: bool,
          batch_sizes: tuple[int, ...], precisions: tuple[str, ...], graph_ops: bool, prep: bool, force: bool) -> None:
    """Benchmark the fused ops against the eager reference (median, p10/p90, GB/s, speed-up);
    with --step the whole training step, with --graph-ops the ops under graph replay, with --prep the
    batch preparation's effect on CPU training."""
    from bicycle.ops import OpUnavailableError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if any(s < 1 for s in sizes):
        raise click.UsageError("--size must be >= 1")
    if sum((step, graph_ops, prep)) > 1:
        raise click.UsageError("choose one of --step, --graph-ops, --prep")
    if any(n < 2 or n % 2 for n in batch_sizes):
        raise click.UsageError("--batch-size must be even and >= 2 (the step splits each batch in halves)")
    if json_path:
        with reporting():
            check_output_file(Path(json_path), "--json", force)
    try:
        if step:
            from bicycle.bench.step import run_step_bench
            if device == "cpu":
                click.echo("bench --step on cpu: eager reference vs eager with the fused C++ ops (no CUDA graphs on CPU; "
                           "scaled-down model, see the records)")
            run_step_bench(device, list(batch_sizes) or None, json_path, quick, list(precisions) or None, echo=click.echo)
        elif graph_ops:
            from bicycle.bench.ops import GRAPH_OPS_NOTE, run_graph_ops_bench
            records = run_graph_ops_bench(device, json_path)
            if not records:
                click.echo(GRAPH_OPS_NOTE + (f"; nothing written to {json_path}" if json_path else ""))
                return
            for r in records:
                click.echo(f"{r['op']:<11}{r['impl']:<7}eager {r['us_per_call_eager']:8.1f} us  graph {r['us_per_call_graph']:8.1f} us"
                           f"  kernels/call {r['kernels_per_call']}")
        elif prep:
            from bicycle.bench.prep import format_prep_table, run_prep_bench
            if device != "cpu":
                raise click.UsageError("--prep measures CPU training: use --device cpu")
            click.echo(format_prep_table(run_prep_bench(steps=3 if quick else 8, json_path=json_path)))
        else:
            from bicycle.bench.ops import format_table, run_kernel_bench
            records = run_kernel_bench(device, list(sizes) or None, json_path, quick)
            click.echo(format_table(records))
    except OpUnavailableError as exc:
        raise click.UsageError(str(exc)) from exc
    except BicycleError as exc:
        report(exc)
    if json_path:
        click.echo(f"wrote {json_path}")
