"""Core speed and memory of cimc against onnxruntime on onnx's light ResNet-50, DenseNet-121, VGG-19.

Usage: ``python benchmarks/bench_core.py [--models resnet50,densenet121,vgg19] [--repeat N]
[--json out.json]``. For each model, in one run:

- load: cimc ``load_model`` + ``fold-constants`` vs ``onnxruntime.InferenceSession`` creation, both
  from the same file with default options, each timed in a fresh process after a warm-up load of
  another model (within one process, repeated loads of VGG-19 took 0.06 s to 1.5 s depending on
  how freed memory gets reused). The light models build their weights with ``ConstantOfShape``, so
  folding computes them; onnxruntime folds them too;
- run: ``Interpreter.run`` vs ``InferenceSession.run`` at batch 1 and batch 8 on the same seeded
  input, outputs checked to agree (rtol 1e-3, atol 1e-4). The batch-8 model is made by surgery on
  the ONNX proto that both runtimes load: graph input and output dim 0 set to 8, and a leading 1
  in a constant ``Reshape`` shape replaced by 0 (copy the batch dim); at both batches the input of
  the last Softmax is made an extra output, since the light models' constant weights make the
  softmax uniform whatever is computed;
- memory of one interpreter run in a fresh process (so no work buffer survives from an earlier
  run), against weights (bytes of all constants after folding) plus activations (the largest
  total bytes of values live at once under the interpreter's free-after-last-use policy, graph
  inputs included, computed from the folded graph's types): the ``tracemalloc`` peak of the run
  (numpy reports its buffers to it) plus the weights, which are resident before the run starts;
  and the peak RSS of the run (VmHWM reset through /proc/self/clear_refs just before it) above
  the RSS before it, plus the weights.

Times are medians of ``--repeat`` runs (after one warm-up run for the run times), with
``time.perf_counter``; cimc and onnxruntime runs alternate, so both see the same background load.
onnxruntime keeps its default intra-op threads (one per core) and numpy's BLAS its default (one
thread per core). Goals: load <= 2x onnxruntime; interpreter <= 3x onnxruntime on ResNet-50 at
batch 8; peak memory <= 2x (weights + activations).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cimc.interpreter import Interpreter  # noqa: E402
from cimc.ir import Graph  # noqa: E402
from cimc.onnx_io import import_model, load_model  # noqa: E402
from cimc.passmanager import PassManager  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ("resnet50", "densenet121", "vgg19")
BATCHES = (1, 8)
GOALS = {"load": 2.0, "run_resnet50_b8": 3.0, "memory": 2.0}
RTOL, ATOL = 1e-3, 1e-4


# ---- model surgery and graph sizes -------------------------------------------------------------
def with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of ``model`` whose data input and outputs have dim 0 = ``batch``; constant Reshape
    shapes that hard-code a leading 1 take the batch from their input (0) instead. The input of
    the last Softmax becomes an output too: the light models' constant weights make the softmax
    uniform whatever is computed, the logits are not."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    softmax = [n for n in out.graph.node if n.op_type == "Softmax"]
    if softmax:
        out.graph.output.append(onnx.helper.make_tensor_value_info(softmax[-1].input[0], onnx.TensorProto.FLOAT,
                                                                   None))
    if batch == 1:
        return out
    inits = {t.name: t for t in out.graph.initializer}
    for vi in [*(i for i in out.graph.input if i.name not in inits), *out.graph.output]:
        dims = vi.type.tensor_type.shape.dim if vi.type.tensor_type.HasField("shape") else []
        if dims and dims[0].dim_value == 1:
            dims[0].dim_value = batch
    del out.graph.value_info[:]
    for node in out.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    return out


def _nbytes(v: Any) -> int:
    t = v.type
    if t.shape is None or not all(isinstance(d, int) for d in t.shape):
        raise ValueError(f"value {v.name!r} has no static shape ({t}); cannot size it")
    return int(np.prod(t.shape, dtype=np.int64)) * t.dtype.numpy.itemsize


def graph_sizes(graph: Graph) -> dict[str, int]:
    """Weights (constant bytes), peak live activation bytes and the sum of all node results."""
    last: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None and v.const is None:
                last[id(v)] = i
    keep = {id(v) for v in graph.outputs}
    live = {id(v): _nbytes(v) for v in graph.inputs}
    peak = sum(live.values())
    for i, node in enumerate(graph.nodes):
        for v in node.outputs:
            live[id(v)] = _nbytes(v)
        peak = max(peak, sum(live.values()))  # operands and results are alive together
        for v in [*node.inputs, *node.outputs]:
            if v is not None and id(v) not in keep and last.get(id(v), i) <= i:
                live.pop(id(v), None)
    return {"weights": sum(v.const.nbytes for v in graph.constants.values()), "activations_peak": peak,
            "activations_sum": sum(_nbytes(v) for n in graph.nodes for v in n.outputs)}


# ---- measurement helpers -----------------------------------------------------------------------
def median_times(fns: list[Callable[[], Any]], repeat: int) -> list[float]:
    """Median wall time of each of ``fns`` over ``repeat`` calls, after one warm-up call each; the
    calls alternate between the functions so that both see the same load on a busy machine."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times, strict=True):
            gc.collect()
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def cimc_load(source: Path | onnx.ModelProto) -> Graph:
    """Import (from a file or proto) and fold constants."""
    graph = load_model(source) if isinstance(source, Path) else import_model(source)
    PassManager("fold-constants").run(graph)
    return graph


def session(source: Path | bytes, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session with default options (the log level aside; ``threads`` intra-op threads if
    above 0)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the light models carry unused initializers onnxruntime warns about
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(source) if isinstance(source, Path) else source, so,
                                providers=["CPUExecutionProvider"])


def feeds_for(graph: Graph) -> dict[str, np.ndarray]:
    """The seeded standard-normal input of the graph's one input."""
    (x,) = graph.inputs
    return {x.name: np.random.default_rng(0).standard_normal(x.type.shape, dtype=np.float32)}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def load_probe(name: str, runtime: str) -> dict[str, float]:
    """(Run in a fresh process.) Seconds to load model ``name`` with ``runtime`` (cimc or ort),
    after a warm-up load of another model so lazy initialisation is not counted."""
    load = cimc_load if runtime == "cimc" else session
    warm = "squeezenet" if name != "squeezenet" else "shufflenet"
    load(LIGHT / f"light_{warm}.onnx")
    t = time.perf_counter()
    load(LIGHT / f"light_{name}.onnx")
    return {"seconds": time.perf_counter() - t}


def memory_probe(name: str, batch: int) -> dict[str, int]:
    """(Run in a fresh process, so no buffer survives from an earlier run.) One interpreter run's
    tracemalloc peak, and the RSS before it and its peak during it, in bytes."""
    proto = with_batch(onnx.load(LIGHT / f"light_{name}.onnx"), batch)
    graph = cimc_load(proto)
    del proto
    interp, feeds = Interpreter(graph), feeds_for(graph)
    gc.collect()
    out: dict[str, int] = {}
    try:
        out["rss_before"] = _status_kb("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark to the current RSS
    except OSError:
        out.clear()
    tracemalloc.start()
    interp.run(feeds)
    out["traced_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if out.get("rss_before"):
        out["rss_peak"] = _status_kb("VmHWM") * 1024
    return out


def in_subprocess(probe: str, *args: Any) -> dict[str, Any]:
    """Run ``--probe probe:args`` in a fresh Python process and return its JSON answer."""
    spec = ":".join(str(a) for a in (probe, *args))
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", spec],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"probe {spec} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


PROBES: dict[str, Callable[..., dict[str, Any]]] = {
    "load": lambda name, runtime: load_probe(name, runtime),
    "memory": lambda name, batch: memory_probe(name, int(batch)),
}


# ---- the benchmark -----------------------------------------------------------------------------
def bench_model(name: str, repeat: int) -> dict[str, Any]:
    """Every figure for one light model."""
    path = LIGHT / f"light_{name}.onnx"
    res: dict[str, Any] = {"model": name}
    loads: dict[str, list[float]] = {"cimc": [], "ort": []}
    for _ in range(repeat):  # cold: a fresh process each, alternating
        for runtime, ts in loads.items():
            ts.append(in_subprocess("load", name, runtime)["seconds"])
    res["cimc_load_s"], res["ort_session_s"] = (statistics.median(loads[k]) for k in ("cimc", "ort"))
    res["load_ratio"] = res["cimc_load_s"] / res["ort_session_s"]
    original = onnx.load(path)
    for batch in BATCHES:
        proto = with_batch(original, batch)
        graph = cimc_load(proto)
        sess = session(proto.SerializeToString())
        del proto
        feeds = feeds_for(graph)
        interp = Interpreter(graph)
        r: dict[str, Any] = graph_sizes(graph)
        got, want = interp.run(feeds), sess.run(None, feeds)
        errs = [float(np.max(np.abs(got[o.name] - w)) / max(float(np.max(np.abs(w))), 1e-30))
                for o, w in zip(sess.get_outputs(), want, strict=True)]
        r["max_rel_err"] = max(errs)  # largest difference relative to the output's largest magnitude
        r["outputs_agree"] = all(np.allclose(got[o.name], w, rtol=RTOL, atol=ATOL)
                                 for o, w in zip(sess.get_outputs(), want, strict=True))
        r["interp_s"], r["ort_s"] = median_times([partial(interp.run, feeds), partial(sess.run, None, feeds)],
                                                 repeat)
        r["run_ratio"] = r["interp_s"] / r["ort_s"]
        del sess, got, want, interp, graph
        gc.collect()
        mem = in_subprocess("memory", name, batch)
        need = r["weights"] + r["activations_peak"]
        r["tracemalloc_peak"] = mem["traced_peak"]
        r["mem_traced"] = r["weights"] + mem["traced_peak"]
        r["mem_ratio_traced"] = r["mem_traced"] / need
        if "rss_peak" in mem:
            r["rss_run_delta"] = mem["rss_peak"] - mem["rss_before"]
            r["mem_rss"] = r["weights"] + r["rss_run_delta"]
            r["mem_ratio_rss"] = r["mem_rss"] / need
        res[f"batch{batch}"] = r
        print(f"  {name} batch {batch}: interpreter {r['interp_s']:.3f} s, onnxruntime {r['ort_s']:.3f} s",
              file=sys.stderr, flush=True)
    return res


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                            "python": platform.python_version(), "numpy": np.__version__,
                            "onnxruntime": ort.__version__, "onnx": onnx.__version__}
    try:
        from threadpoolctl import threadpool_info

        blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        info["blas"] = [f"{p['internal_api']} {p['version']} ({p['num_threads']} threads)" for p in blas]
    except ImportError:
        pass
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    return info


def _mb(n: float) -> str:
    return f"{n / 2**20:.0f}"


def table(results: list[dict[str, Any]]) -> str:
    """The results as plain text tables, each ratio cimc/onnxruntime with its goal."""
    lines = ["load: cimc import+fold vs onnxruntime session creation (goal: ratio <= 2)",
             f"{'model':<12} {'cimc s':>8} {'ort s':>8} {'ratio':>6}  goal"]
    for r in results:
        ok = "met" if r["load_ratio"] <= GOALS["load"] else "MISSED"
        lines.append(f"{r['model']:<12} {r['cimc_load_s']:>8.3f} {r['ort_session_s']:>8.3f} "
                     f"{r['load_ratio']:>6.2f}  {ok}")
    lines += ["", "run: reference interpreter vs onnxruntime (goal: ratio <= 3 on resnet50 batch 8)",
              f"{'model':<12} {'batch':>5} {'cimc s':>8} {'ort s':>8} {'ratio':>6}  {'rel.err':>9}  agree  goal"]
    for r in results:
        for b in BATCHES:
            x = r[f"batch{b}"]
            goal = ""
            if r["model"] == "resnet50" and b == 8:
                goal = "met" if x["run_ratio"] <= GOALS["run_resnet50_b8"] else "MISSED"
            lines.append(f"{r['model']:<12} {b:>5} {x['interp_s']:>8.3f} {x['ort_s']:>8.3f} {x['run_ratio']:>6.2f}"
                         f"  {x['max_rel_err']:>9.1e}  {'yes' if x['outputs_agree'] else 'NO':<5}  {goal}")
    lines += ["", "memory of one interpreter run, MiB (goal: peak <= 2 x (weights + live activations))",
              f"{'model':<12} {'batch':>5} {'weights':>8} {'act.peak':>8} {'act.sum':>8} {'traced':>8} "
              f"{'ratio':>6} {'rss':>8} {'ratio':>6}  goal"]
    for r in results:
        for b in BATCHES:
            x = r[f"batch{b}"]
            worst = max(x["mem_ratio_traced"], x.get("mem_ratio_rss", 0.0))
            rss = (f"{_mb(x['mem_rss']):>8} {x['mem_ratio_rss']:>6.2f}" if "mem_rss" in x else f"{'-':>8} {'-':>6}")
            lines.append(f"{r['model']:<12} {b:>5} {_mb(x['weights']):>8} {_mb(x['activations_peak']):>8} "
                         f"{_mb(x['activations_sum']):>8} {_mb(x['mem_traced']):>8} {x['mem_ratio_traced']:>6.2f} "
                         f"{rss}  {'met' if worst <= GOALS['memory'] else 'MISSED'}")
    lines += ["", "traced = weights + tracemalloc peak of the run; rss = weights + peak RSS of the run above the "
              "RSS before it (fresh process); act.peak = largest bytes of values live at once; act.sum = all "
              "node results"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the tables (and write JSON if asked)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per figure (median reported)")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON")
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # one measurement, in a fresh process
    args = ap.parse_args(argv)
    if args.probe:
        kind, *rest = args.probe.split(":")
        print(json.dumps(PROBES[kind](*rest)))
        return 0
    models = [m.strip().removeprefix("light_") for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if not (LIGHT / f"light_{m}.onnx").is_file()]
    if unknown:
        ap.error(f"no light model {unknown}; choose from "
                 + ", ".join(sorted(p.stem.removeprefix('light_') for p in LIGHT.glob('light_*.onnx'))))
    load_start, results = os.getloadavg()[0], []
    for name in models:
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        results.append(bench_model(name, max(1, args.repeat)))
        gc.collect()
    load_end = os.getloadavg()[0]
    print(table(results))
    print(f"\nload average (1 min) at start {load_start:.2f}, at end {load_end:.2f}, on {os.cpu_count()} cores: "
          "anything well above 0 means other work shared the cores and the times are inflated")
    if args.json:
        doc = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
               "load_average": {"start": load_start, "end": load_end},
               "repeat": args.repeat, "goals": GOALS, "results": results}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
