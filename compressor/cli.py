"""Command line: compress, run (one pass), passes, bench, profile, check.

Every user-facing failure is one line on stderr and a non-zero exit (2 = bad input, 3 = gate missed);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import json
import math
import sys
from pathlib import Path

import click

from compressor.errors import CompressorError

DEBUG = {"on": False}


def _show(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _path_flag(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A path option: refuse an empty, over-long or impossible path at once, naming the flag."""
    from compressor.core.files import path_problem

    problem = None if value is None else path_problem(value)
    if problem:
        raise click.BadParameter(f"{_show(value)} {problem}; give another path", ctx, param)
    return value


class Number(click.ParamType):
    """A finite float (click's FLOAT takes ``nan`` and ``inf``) with optional bounds."""

    name = "number"

    def __init__(self, ge: float | None = None, gt: float | None = None):
        self.ge, self.gt = ge, gt

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if (self.ge is not None and number < self.ge) or (self.gt is not None and number <= self.gt):
            self.fail(f"{value} must be {'≥' if self.ge is not None else '>'} {self.ge if self.ge is not None else self.gt:g}",
                      param, ctx)
        return number


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


def _read_yaml(path: str | None, what: str = "recipe") -> dict:
    from compressor.pipeline.recipe import read_recipe_file

    return {} if path is None else read_recipe_file(path, what)


def budget_options(f):
    for opt in reversed([
        click.option("--max-accuracy-drop", type=Number(ge=0), help="Gate: max test top-1 drop vs teacher (points)."),
        click.option("--min-speedup", type=Number(gt=0),
                     help="Gate: min teacher/deployed p50 latency ratio at batch 1 (the headline's paired rounds)."),
        click.option("--max-size-mb", type=Number(gt=0), help="Gate: max size of the deployed ONNX (MiB)."),
    ]):
        f = opt(f)
    return f


def _parse_floats(value: str | None, flag: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise CompressorError(f"{flag} {value!r} must be comma-separated numbers") from None


def _apply_overrides(data: dict, model, weights, data_path, input_shape, allow_pickle, seed, budgets, no_bench,
                     mean=None, std=None, splits=None) -> dict:
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
    data_overrides = {"path": data_path, **(splits or {})}
    if any(v is not None for v in data_overrides.values()):
        d = data.setdefault("data", {})
        if not isinstance(d, dict):
            raise CompressorError("recipe: data must be a mapping")
        d.update({k: v for k, v in data_overrides.items() if v is not None})
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
    f = click.option("--workers", type=click.IntRange(min=1), help="Parallel candidate evaluations (processes, local Ray).")(f)
    return click.option("--executor", help="Where candidates run: serial | processes | ray | ray://host:port "
                        "(results are identical; see docs/executors.md).")(f)


def _run_pipeline(data: dict, out: str, resume: bool, force: bool, quiet: bool) -> None:
    from compressor.pipeline.recipe import parse_recipe
    from compressor.pipeline.runner import Pipeline

    report = Pipeline(parse_recipe(data), out, resume=resume, progress=not quiet, force=force).run()
    click.echo(Path(out, "report.md").read_text().split("\n\nDeployed")[0])
    click.echo(f"\nDeployed: {Path(out) / report.deployed}\nReport: {Path(out) / 'report.md'}")


def model_options(f):
    for opt in reversed([
        click.option("--model", help="Zoo name, package.module:callable or file.py:callable."),
        click.option("--weights", type=str, callback=_path_flag, help="state_dict checkpoint (or a compressor stage file)."),
        click.option("--data", "data_path", callback=_path_flag, help="ImageFolder dir, .tar/.tar.gz of one, or .npz."),
        click.option("--input-shape", help="C,H,W (default from the recipe, else 3,32,32)."),
        click.option("--mean", help="Per-channel normalisation mean, e.g. 0.485,0.456,0.406 (default from the recipe)."),
        click.option("--std", help="Per-channel normalisation std, e.g. 0.229,0.224,0.225."),
        click.option("--allow-pickle", is_flag=True, help="Allow loading a pickled whole module (runs code!)."),
        click.option("--seed", type=click.IntRange(min=0), default=None),
        click.option("--validation", type=click.IntRange(min=1), help="Validation images drawn from train/ (data.validation)."),
        click.option("--calibration", type=click.IntRange(min=1), help="Calibration images drawn from train/ (data.calibration)."),
        click.option("--out", required=True, callback=_path_flag, help="Output folder."),
        click.option("--resume", is_flag=True, help="Reuse the stages in --out whose inputs and files verify against "
                     "its manifest.json; re-run the rest (a line on stderr says why)."),
        click.option("--force", is_flag=True, help="Run into a non-empty --out: delete the files compressor wrote "
                     "there first (other files are kept)."),
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
@click.option("--recipe", type=str, callback=_path_flag, help="YAML recipe (see recipes/).")
@model_options
@budget_options
@executor_options
def compress(recipe, model, weights, data_path, input_shape, mean, std, allow_pickle, seed, validation, calibration, out,
             resume, force, max_accuracy_drop, min_speedup, max_size_mb, no_bench, quiet, executor, workers):
    """Run a recipe's passes on a teacher, export, benchmark and write the report."""
    data = _read_yaml(recipe)
    if not recipe:
        data = {"passes": [{"fold_bn": {}}], "export": ["onnx"]}
    budgets = {"max_accuracy_drop": max_accuracy_drop, "min_speedup": min_speedup, "max_size_mb": max_size_mb}
    data = _apply_overrides(data, model, weights, data_path, _parse_shape(input_shape), allow_pickle, seed, budgets, no_bench,
                            mean, std, {"validation": validation, "calibration": calibration})
    _run_pipeline(_apply_executor(data, executor, workers), out, resume, force, quiet)


@cli.command("run")
@click.argument("pass_name")
@click.option("--config", "config_path", type=str, callback=_path_flag, help="YAML mapping of the pass's parameters.")
@click.option("--set", "sets", multiple=True, help="Pass parameter KEY=VALUE (YAML value); repeatable.")
@model_options
@budget_options
@executor_options
def run_pass(pass_name, config_path, sets, model, weights, data_path, input_shape, mean, std, allow_pickle, seed, validation,
             calibration, out, resume, force, max_accuracy_drop, min_speedup, max_size_mb, no_bench, quiet, executor, workers):
    """Run one pass on a model (for CI pipelines that run passes one at a time)."""
    import yaml

    from compressor.core.config import from_dict
    from compressor.passes import PASSES
    from compressor.pipeline.recipe import load_yaml

    if pass_name not in PASSES:
        raise CompressorError(f"unknown pass {pass_name!r}; `compressor passes` lists {', '.join(sorted(PASSES))}")
    params = _read_yaml(config_path, "--config")
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CompressorError(f"--set {item!r} must be KEY=VALUE, e.g. --set target_ratio=0.3")
        try:
            params[key.strip()] = load_yaml(value)
        except yaml.YAMLError as exc:
            raise CompressorError(f"--set {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]}); "
                                  "quote it or fix the brackets") from None
    # Checked here so that errors name --set / --config rather than a recipe key path `run` cannot take.
    source = "--set" if not config_path else f"--config {config_path}" if not sets else f"--set / --config {config_path}"
    from_dict(PASSES[pass_name].Config, params, "", source)
    budgets = {"max_accuracy_drop": max_accuracy_drop, "min_speedup": min_speedup, "max_size_mb": max_size_mb}
    # A pass that writes a deployable artifact (quantize) has it exported and judged by the gate.
    export = ["onnx", "onnx_int8"] if PASSES[pass_name].produces_artifact else ["onnx"]
    data = {"passes": [{pass_name: params}], "export": export}
    data = _apply_overrides(data, model, weights, data_path, _parse_shape(input_shape), allow_pickle, seed, budgets, no_bench,
                            mean, std, {"validation": validation, "calibration": calibration})
    _run_pipeline(_apply_executor(data, executor, workers), out, resume, force, quiet)


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
@click.argument("artifact", callback=_path_flag)
@click.option("--batch", default="1,64", help="Comma-separated batch sizes.")
@click.option("--warmup", default=0.2, type=Number(ge=0), help="Warm-up seconds (trtexec --warmUp is in ms: 200).")
@click.option("--duration", default=3.0, type=Number(ge=0), help="Seconds of measurement per batch size and artifact.")
@click.option("--iterations", default=10, type=click.IntRange(min=1), help="Minimum measured inferences.")
@click.option("--threads", default=2, type=click.IntRange(min=1), help="Intra-op threads.")
@click.option("--backend", default="auto", help="auto | onnxruntime-cpu | openvino | torch-cpu | torch-cuda | torch-int8 | "
              "tensorrt (GPU ones need a GPU; auto: onnxruntime-cpu for .onnx, openvino for an IR .xml).")
@click.option("--precision", type=click.Choice(["f32", "bf16", "default"]),
              help="openvino: precision hint for the float parts (default: the one recorded in an IR, else f32; "
              "'default' lets OpenVINO choose, bf16 on CPUs with native bfloat16).")
@click.option("--fp16", is_flag=True, help="torch-cuda: run in FP16.")
@click.option("--cuda-graph", is_flag=True, help="torch-cuda: replay one captured CUDA graph.")
@click.option("--model", help="Architecture for a state_dict artifact (torch-cpu).")
@click.option("--allow-pickle", is_flag=True, help="Allow loading a pickled whole module (runs code!).")
@click.option("--input-shape", help="C,H,W: required for an ONNX file with dynamic H and W (its static dims "
              "otherwise); torch artifacts default to 3,32,32.")
@click.option("--vs", "other", callback=_path_flag, help="A second artifact measured in the same run, alternating with "
              "the first (ONNX Runtime and OpenVINO: each window in its own process).")
@click.option("--vs-backend", help="Backend for --vs (default: --backend), e.g. compare one file on two runtimes.")
@click.option("--vs-precision", type=click.Choice(["f32", "bf16", "default"]), help="openvino precision for --vs "
              "(default: --precision).")
@click.option("--json", "json_path", callback=_path_flag, help="Write the figures as JSON (missing folders are created).")
def bench(artifact, batch, warmup, duration, iterations, threads, backend, precision, fp16, cuda_graph, model,
          allow_pickle, input_shape, other, vs_backend, vs_precision, json_path):
    """Measure latency and throughput, printed as trtexec prints them."""
    import os

    from compressor.core.files import write_atomic
    from compressor.core.models import load_user_model
    from compressor.runtime.bench import (
        CHILD_BACKENDS,
        BenchSettings,
        Timed,
        bench_onnx,
        format_summary,
        make_runner,
        measure,
        onnx_input_shape,
        resolve_backend,
        summarize,
    )

    given = None if input_shape is None else tuple(_parse_shape(input_shape))
    artifacts = [artifact] + ([other] if other else [])
    for a in artifacts:
        if Path(a).is_dir():
            raise CompressorError(f"artifact {a} is a folder; give a model file (.onnx, .pt, .engine)")
        if not Path(a).is_file():
            raise CompressorError(f"artifact {a} does not exist")
    specs = []
    for a, b, p, inherited, flag in [(artifact, backend, precision, None, "--precision")] + (
            [(other, vs_backend or backend, vs_precision, precision, "--vs-precision")] if other else []):
        b = resolve_backend(a, b)
        if p is not None and b != "openvino":
            raise CompressorError(f"{flag} applies to the openvino backend, not {b}")
        specs.append(Timed(a, b, _openvino_precision(a, p or inherited) if b == "openvino" else "f32"))
    distinct = len({str(s.path) for s in specs}) == len(specs) and len({s.backend for s in specs}) == 1
    labels = [str(s.path) if distinct and s.backend != "openvino" else s.label() for s in specs]
    try:
        batches = [int(b) for b in batch.split(",")]
    except ValueError:
        raise CompressorError(f"--batch {batch!r} must be comma-separated integers, e.g. 1,64") from None
    if min(batches) < 1:
        raise CompressorError(f"--batch {batch!r}: every batch size must be at least 1")
    if json_path:
        # Checked before timing so that minutes of measurement are not lost at the end.
        parent = next(p for p in Path(json_path).absolute().parents if p.exists())
        if not os.access(parent, os.W_OK):
            raise CompressorError(f"--json {json_path}: {parent} is not writable; choose another path")
    settings = BenchSettings(warmup, duration, iterations, threads)
    in_children = all(s.backend in CHILD_BACKENDS for s in specs)
    if in_children:  # ONNX files: their static dims or --input-shape; an IR keeps its own shape unless given
        shapes = {onnx_input_shape(s.path, given) if Path(s.path).suffix != ".xml" else given for s in specs} - {None}
        if len(shapes) > 1:
            raise CompressorError(f"{artifact} and --vs {other} take different input shapes {sorted(shapes)}; "
                                  "compare models of one input size")
        shape = next(iter(shapes), None)
    else:
        shape = given or (3, 32, 32)

    def loader(path: str):
        loaded = load_user_model(model, path, allow_pickle, shape)
        return loaded.model, shape

    results: dict = {"artifact": artifact, "vs": other, "backend": specs[0].backend, "threads": threads,
                     "input_shape": None if shape is None else list(shape), "results": []}
    if specs[0].backend == "openvino":
        results["precision"] = specs[0].precision
    if other:
        results["vs_backend"] = specs[1].backend
        if specs[1].backend == "openvino":
            results["vs_precision"] = specs[1].precision
    # ONNX Runtime and OpenVINO artifacts are timed in their own processes (see bench.py); others in this one.
    if in_children:
        by_batch = bench_onnx(specs, batches, settings, shape)
    else:
        by_batch = {b: [summarize(lat, b, wall) for lat, wall in measure(
            [make_runner(str(s.path), s.backend, b, threads, loader, fp16, cuda_graph, s.precision) for s in specs],
            settings)] for b in batches}
    for b in batches:
        measured = by_batch[b]
        entry = {"batch": b, labels[0]: measured[0]}
        click.echo(format_summary(labels[0], measured[0]))
        if other:
            entry[labels[1]] = measured[1]
            click.echo(format_summary(labels[1], measured[1]))
            entry["ratio"] = {
                "throughput": measured[0]["throughput_qps"] / measured[1]["throughput_qps"],
                "median_latency": measured[0]["latency_ms"]["median"] / measured[1]["latency_ms"]["median"],
            }
            click.echo(f"[I] Ratio {labels[0]} / {labels[1]}: throughput {entry['ratio']['throughput']:.3f}x, "
                       f"median latency {entry['ratio']['median_latency']:.3f}x")
        results["results"].append(entry)
    if json_path:
        Path(json_path).absolute().parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(json_path), json.dumps(results, indent=2))


def _openvino_precision(path: str, precision: str | None) -> str:
    """The precision hint to time ``path`` with on OpenVINO: the one asked for, else the one an IR records, else f32."""
    if precision is not None:
        return precision
    if str(path).endswith(".xml"):
        from compressor.runtime.openvino import recorded_precision

        return recorded_precision(path) or "f32"
    return "f32"


@cli.command()
@click.option("--model", required=True, help="Zoo name, package.module:callable or file.py:callable.")
@click.option("--weights", type=str, help="state_dict checkpoint (optional: weights do not change latency).")
@click.option("--input-shape", default="3,32,32", help="C,H,W.")
@click.option("--target", default="ort-cpu", help="Runtime to time on: ort-cpu | openvino-cpu.")
@click.option("--precision", default="int8", type=click.Choice(["int8", "fp32"]), help="Deployed precision.")
@click.option("--openvino-precision", default="f32", type=click.Choice(["f32", "bf16", "default"]),
              help="openvino-cpu: the precision hint for the float parts (the recipe's openvino.precision).")
@click.option("--batch", default="64", help="Comma-separated batch sizes (the prune pass's latency_batch).")
@click.option("--threads", default=2, type=click.IntRange(min=1), help="Intra-op threads.")
@click.option("--scope", default="inner", type=click.Choice(["inner", "all"]),
              help="Prunable channels: prune's scope (inner, as in the fast recipes; prune's own default is all).")
@click.option("--width-step", "width_step", default=1, type=click.IntRange(min=1),
              help="Candidate widths are multiples of this (prune's width_step; 1 = every width).")
@click.option("--min-channels", default=1.0, type=Number(gt=0), help="Prune's min_channels (channels, or a fraction < 1).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def profile(model, weights, input_shape, target, precision, openvino_precision, batch, threads, scope, width_step,
            min_channels, quiet):
    """Time every layer shape the prune pass may choose for a model on a target into the cached latency table
    (once per machine, runtime version and thread count; an interrupted run continues where it stopped)."""
    from compressor.core.models import load_user_model
    from compressor.pruning.knapsack import profile_shapes
    from compressor.runtime.latency_model import LatencyModel, LatencyTable
    from compressor.runtime.latency_targets import make_target

    shape = tuple(_parse_shape(input_shape))
    try:
        batches = [int(b) for b in batch.split(",")]
    except ValueError:
        raise CompressorError(f"--batch {batch!r} must be comma-separated integers") from None
    if min(batches) < 1:
        raise CompressorError(f"--batch {batch!r}: every batch size must be at least 1")
    net = load_user_model(model, weights, False, shape).model.eval()
    table = LatencyTable(make_target(target, threads, openvino_precision))
    shapes = profile_shapes(net, shape, scope, width_step, min_channels)
    timed = table.measure(shapes, precision, batches, progress=not quiet)
    click.echo(f"{len(shapes)} layer shapes of {model} on {target} ({precision}, batch {batch}, {threads} threads); "
               f"{timed} timed now, the rest were cached")
    for b in batches:
        lm = LatencyModel(table, precision, b)
        uncalibrated = lm.predict(net, shape)
        measured = lm.calibrate(net, shape)
        click.echo(f"batch {b}: whole model measured {measured:.3f} ms, layer sum {uncalibrated:.3f} ms "
                   f"(overhead {lm.overhead:+.4f} ms per layer, scale {lm.scale:.3f})")
    click.echo(f"Table: {table.path}")


@cli.command()
@click.argument("report_path", callback=_path_flag)
@budget_options
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
        click.echo(f"{'PASS' if g.passed else 'FAIL'} {g.limit}: required {g.required:g}, actual {actual}"
                   + (f" ({g.measured})" if g.measured else ""))
    failed = [g for g in results if not g.passed]
    if failed:
        raise GateFailed(", ".join(
            f"{g.limit} missed" + (f" by {-g.margin:.3f}" if g.margin is not None else "") for g in failed))


# OS errors that are the machine's or the user's to fix, not a bug: exit 2 with the fix.
_USER_ERRNOS = {
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ENOSPC: "free disk space or choose another --out",
    errno.EDQUOT: "free disk space or choose another --out",
    errno.EACCES: "choose a path you may read and write",
    errno.EPERM: "choose a path you may read and write",
    errno.EROFS: "choose a writable --out",
}


_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click ≥ 8.2: a bare `compressor` shows the help


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except _NO_ARGS as exc:
        click.echo(exc.format_message(), err=True)
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        click.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except CompressorError as exc:
        if DEBUG["on"]:
            raise
        click.echo(f"error: {' '.join(str(exc).splitlines())}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if DEBUG["on"]:
            raise
        if isinstance(exc, OSError) and exc.errno in _USER_ERRNOS:
            where = f" {_show(str(exc.filename))}" if exc.filename else ""
            click.echo(f"error: {exc.strerror}:{where}; {_USER_ERRNOS[exc.errno]}", err=True)
            sys.exit(2)
        click.echo(f"error: internal failure {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                   "(rerun with --debug for the traceback and report it)", err=True)
        sys.exit(1)
