"""Command line: compress, run (one pass), passes, bench, check.

Every user-facing failure is one line on stderr and a non-zero exit (2 = bad input, 3 = gate missed);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import yaml

from compressor.errors import CompressorError

DEBUG = {"on": False}


def _parse_shape(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        shape = [int(v) for v in value.split(",")]
    except ValueError:
        raise CompressorError(f"--input-shape {value!r} must be C,H,W integers, e.g. 3,32,32") from None
    if len(shape) != 3:
        raise CompressorError(f"--input-shape {value!r} must have three values C,H,W")
    return shape


def _read_yaml(path: str | None) -> dict:
    from compressor.pipeline.recipe import read_recipe_file

    return {} if path is None else read_recipe_file(path)


def _parse_floats(value: str | None, flag: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise CompressorError(f"{flag} {value!r} must be comma-separated numbers") from None


def _apply_overrides(data: dict, model, weights, data_path, input_shape, allow_pickle, seed, budgets, no_bench,
                     mean=None, std=None) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    m = data.setdefault("model", {})
    if not isinstance(m, dict):
        raise CompressorError("recipe: model must be a mapping")
    if model:
        m["name"] = model
    if weights:
        m["weights"] = weights
    if input_shape:
        m["input_shape"] = input_shape
    if allow_pickle:
        m["allow_pickle"] = True
    if mean:
        m["mean"] = _parse_floats(mean, "--mean")
    if std:
        m["std"] = _parse_floats(std, "--std")
    if data_path:
        d = data.setdefault("data", {})
        if not isinstance(d, dict):
            raise CompressorError("recipe: data must be a mapping")
        d["path"] = data_path
    if seed is not None:
        data["seed"] = seed
    b = data.setdefault("budget", {})
    b.update({k: v for k, v in budgets.items() if v is not None})
    if no_bench:
        data.setdefault("bench", {})["enabled"] = False
    return data


def _apply_executor(data: dict, executor: str | None, workers: int | None) -> dict:
    """--executor KIND|ray://host:port and --workers N replace the recipe's executor section key by key."""
    from compressor.core.executors import parse_executor_option

    if executor is None and workers is None:
        return data
    section = data.get("executor") or {}
    if not isinstance(section, dict):
        raise CompressorError("recipe: executor must be a mapping")
    section = dict(section)
    if executor is not None:
        section.pop("address", None)
        section.update(parse_executor_option(executor))
    if workers is not None:
        section["workers"] = workers
    return {**data, "executor": section}


def executor_options(f):
    f = click.option("--workers", type=int, help="Parallel candidate evaluations (processes, local Ray).")(f)
    return click.option("--executor", help="Where candidates run: serial | processes | ray | ray://host:port "
                        "(results are identical; see docs/executors.md).")(f)


def _run_pipeline(data: dict, out: str, resume: bool, quiet: bool) -> None:
    from compressor.pipeline.recipe import parse_recipe
    from compressor.pipeline.runner import Pipeline

    report = Pipeline(parse_recipe(data), out, resume=resume, progress=not quiet).run()
    click.echo(Path(out, "report.md").read_text().split("\n\nDeployed")[0])
    click.echo(f"\nDeployed: {Path(out) / report.deployed}\nReport: {Path(out) / 'report.md'}")


def model_options(f):
    for opt in reversed([
        click.option("--model", help="Zoo name, package.module:callable or file.py:callable."),
        click.option("--weights", type=str, help="state_dict checkpoint (or a compressor stage file)."),
        click.option("--data", "data_path", help="ImageFolder dir, .tar/.tar.gz of one, or .npz."),
        click.option("--input-shape", help="C,H,W (default from the recipe, else 3,32,32)."),
        click.option("--mean", help="Per-channel normalisation mean, e.g. 0.485,0.456,0.406 (default from the recipe)."),
        click.option("--std", help="Per-channel normalisation std, e.g. 0.229,0.224,0.225."),
        click.option("--allow-pickle", is_flag=True, help="Allow loading a pickled whole module (runs code!)."),
        click.option("--seed", type=int, default=None),
        click.option("--out", required=True, help="Output folder."),
        click.option("--resume", is_flag=True, help="Skip stages already complete and intact in --out."),
        click.option("--max-accuracy-drop", type=float, help="Gate: max test top-1 drop vs teacher (points)."),
        click.option("--min-speedup", type=float, help="Gate: min teacher/final ORT-CPU p50 latency ratio (batch 1)."),
        click.option("--max-size-mb", type=float, help="Gate: max size of the deployed ONNX (MiB)."),
        click.option("--no-bench", is_flag=True, help="Skip latency measurements."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]):
        f = opt(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="compressor")
def cli(debug: bool) -> None:
    """Compress trained CNNs: prune, remove layers, fold BN, quantize to INT8, export, benchmark."""
    DEBUG["on"] = debug


@cli.command()
@click.option("--recipe", type=str, help="YAML recipe (see recipes/).")
@model_options
@executor_options
def compress(recipe, model, weights, data_path, input_shape, mean, std, allow_pickle, seed, out, resume,
             max_accuracy_drop, min_speedup, max_size_mb, no_bench, quiet, executor, workers):
    """Run a recipe's passes on a teacher, export, benchmark and write the report."""
    data = _read_yaml(recipe)
    if not recipe:
        data = {"passes": [{"fold_bn": {}}], "export": ["onnx"]}
    budgets = {"max_accuracy_drop": max_accuracy_drop, "min_speedup": min_speedup, "max_size_mb": max_size_mb}
    data = _apply_overrides(data, model, weights, data_path, _parse_shape(input_shape), allow_pickle, seed, budgets, no_bench,
                            mean, std)
    _run_pipeline(_apply_executor(data, executor, workers), out, resume, quiet)


@cli.command("run")
@click.argument("pass_name")
@click.option("--config", "config_path", type=str, help="YAML mapping of the pass's parameters.")
@click.option("--set", "sets", multiple=True, help="Pass parameter KEY=VALUE (YAML value); repeatable.")
@model_options
@executor_options
def run_pass(pass_name, config_path, sets, model, weights, data_path, input_shape, mean, std, allow_pickle, seed, out, resume,
             max_accuracy_drop, min_speedup, max_size_mb, no_bench, quiet, executor, workers):
    """Run one pass on a model (for CI pipelines that run passes one at a time)."""
    from compressor.passes import PASSES

    if pass_name not in PASSES:
        raise CompressorError(f"unknown pass {pass_name!r}; `compressor passes` lists {', '.join(sorted(PASSES))}")
    params = _read_yaml(config_path)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise CompressorError(f"--set {item!r} must be KEY=VALUE")
        params[key] = yaml.safe_load(value)
    budgets = {"max_accuracy_drop": max_accuracy_drop, "min_speedup": min_speedup, "max_size_mb": max_size_mb}
    # A pass that writes a deployable artifact (quantize) has it exported and judged by the gate.
    export = ["onnx", "onnx_int8"] if PASSES[pass_name].produces_artifact else ["onnx"]
    data = {"passes": [{pass_name: params}], "export": export}
    data = _apply_overrides(data, model, weights, data_path, _parse_shape(input_shape), allow_pickle, seed, budgets, no_bench,
                            mean, std)
    _run_pipeline(_apply_executor(data, executor, workers), out, resume, quiet)


@cli.command()
def passes():
    """List available passes and their parameters."""
    from compressor.passes import PASSES, config_fields

    for name in sorted(PASSES):
        cls = PASSES[name]
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        click.echo(f"{name}: {doc}")
        for field_name, type_name, default, allowed in config_fields(cls.Config):
            click.echo(f"    {field_name}: {type_name} = {default!r}" + (f"  ({allowed})" if allowed else ""))
    from compressor.core.config import describe
    from compressor.core.executors import ExecutorConfig

    click.echo("executor (recipe section; --executor, --workers): where search candidates run, see docs/executors.md")
    for field_name, type_name, default, allowed in describe(ExecutorConfig):
        click.echo(f"    {field_name}: {type_name} = {default!r}" + (f"  ({allowed})" if allowed else ""))


@cli.command()
@click.argument("artifact")
@click.option("--batch", default="1,64", help="Comma-separated batch sizes.")
@click.option("--warmup", default=0.2, type=float, help="Warm-up seconds (trtexec --warmUp is in ms: 200).")
@click.option("--duration", default=3.0, type=float, help="Seconds of measurement per batch size and artifact.")
@click.option("--iterations", default=10, type=int, help="Minimum measured inferences.")
@click.option("--threads", default=2, type=int, help="Intra-op threads.")
@click.option("--backend", default="auto",
              help="auto | onnxruntime-cpu | torch-cpu | torch-cuda | torch-int8 | tensorrt (GPU ones need a GPU).")
@click.option("--fp16", is_flag=True, help="torch-cuda: run in FP16.")
@click.option("--cuda-graph", is_flag=True, help="torch-cuda: replay one captured CUDA graph.")
@click.option("--model", help="Architecture for a state_dict artifact (torch-cpu).")
@click.option("--input-shape", default="3,32,32", help="C,H,W for torch artifacts.")
@click.option("--vs", "other", help="A second artifact measured in the same run, alternating with the first "
              "(ONNX files: each window in its own process).")
@click.option("--json", "json_path", help="Write the figures as JSON.")
def bench(artifact, batch, warmup, duration, iterations, threads, backend, fp16, cuda_graph, model, input_shape, other,
          json_path):
    """Measure latency and throughput, printed as trtexec prints them."""
    from compressor.core.files import write_atomic
    from compressor.core.models import load_user_model
    from compressor.runtime.bench import BenchSettings, bench_onnx, format_summary, make_runner, measure, resolve_backend, summarize

    shape = tuple(_parse_shape(input_shape))
    artifacts = [artifact] + ([other] if other else [])
    for a in artifacts:
        if not Path(a).is_file():
            raise CompressorError(f"artifact {a} does not exist")

    def loader(path: str):
        loaded = load_user_model(model, path, False, shape)
        return loaded.model, shape

    try:
        batches = [int(b) for b in batch.split(",")]
    except ValueError:
        raise CompressorError(f"--batch {batch!r} must be comma-separated integers") from None
    settings = BenchSettings(warmup, duration, iterations, threads)
    results: dict = {"artifact": artifact, "vs": other, "backend": backend, "threads": threads, "results": []}
    # ONNX Runtime artifacts are timed in their own processes (see bench.py); other backends in this one.
    if all(resolve_backend(a, backend) == "onnxruntime-cpu" for a in artifacts):
        by_batch = bench_onnx(artifacts, batches, settings)
    else:
        by_batch = {b: [summarize(lat, b, wall) for lat, wall in measure(
            [make_runner(a, backend, b, threads, loader, fp16, cuda_graph) for a in artifacts], settings)]
            for b in batches}
    for b in batches:
        measured = by_batch[b]
        entry = {"batch": b, artifact: measured[0]}
        click.echo(format_summary(artifact, measured[0]))
        if other:
            entry[other] = measured[1]
            click.echo(format_summary(other, measured[1]))
            entry["ratio"] = {
                "throughput": measured[0]["throughput_qps"] / measured[1]["throughput_qps"],
                "median_latency": measured[0]["latency_ms"]["median"] / measured[1]["latency_ms"]["median"],
            }
            click.echo(f"[I] Ratio {artifact} / {other}: throughput {entry['ratio']['throughput']:.3f}x, "
                       f"median latency {entry['ratio']['median_latency']:.3f}x")
        results["results"].append(entry)
    if json_path:
        write_atomic(Path(json_path), json.dumps(results, indent=2))


@cli.command()
@click.argument("report_path")
@click.option("--max-accuracy-drop", type=float)
@click.option("--min-speedup", type=float)
@click.option("--max-size-mb", type=float)
def check(report_path, max_accuracy_drop, min_speedup, max_size_mb):
    """Gate an existing report.json: exit 0 when every limit is met, 3 when one is missed."""
    from compressor.errors import GateFailed
    from compressor.pipeline.gate import evaluate_gate
    from compressor.pipeline.recipe import BudgetSection
    from compressor.pipeline.report import read_report

    report = read_report(report_path)
    if max_accuracy_drop is None and min_speedup is None and max_size_mb is None:
        raise CompressorError("check needs at least one limit: --max-accuracy-drop, --min-speedup or --max-size-mb")
    results = evaluate_gate(report, BudgetSection(max_accuracy_drop, min_speedup, max_size_mb))
    for g in results:
        actual = "n/a" if g.actual is None else f"{g.actual:.3f}"
        click.echo(f"{'PASS' if g.passed else 'FAIL'} {g.limit}: required {g.required:g}, actual {actual}")
    failed = [g for g in results if not g.passed]
    if failed:
        raise GateFailed(", ".join(
            f"{g.limit} missed" + (f" by {-g.margin:.3f}" if g.margin is not None else "") for g in failed))


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CompressorError as exc:
        if DEBUG["on"]:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if DEBUG["on"]:
            raise
        click.echo(f"error: internal failure {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                   "(rerun with --debug for the traceback and report it)", err=True)
        sys.exit(1)
