"""Does the worker process itself change a timing? The same OpenVINO bf16 IR of the PP-OCRv4 recognizer, timed in two
separate worker processes each (one process per spec for all rounds, as `bench_rounds(processes=1)` times), with and
without the fixed-shape compilation (`static_recompile`), against the ORT fp32 original; 7 rounds, rotating order,
2 threads, dedicated policy, input 1x3x48x320.

    python benchmarks/process_spread.py [--no-write]

Two specs of one file differ only in their process: a gap between them beyond their ranges is the process lottery
that made `bench_rounds` time each candidate in more than one process. Stored as
benchmarks/results/process_spread.json unless --no-write. Needs `.[openvino]`.
"""
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import onnx

from edgeslim.bench import BenchSpec, bench_rounds, machine_info
from edgeslim.engines import get_engine
from edgeslim.engines.base import read_meta, write_meta
from edgeslim.study import StudyConfig, prepare
from edgeslim.zoo import resolve

mp = resolve("ppocrv4-rec")
work = Path(tempfile.mkdtemp(prefix="procspread-"))
prep = prepare(StudyConfig(model=str(mp), eval_limit=30, threads=2, recipes=("fp32",), engines=("ort",), cache=False), work)
bf = get_engine("openvino").convert(onnx.load(str(mp)), work / "bf16.xml", precision="bf16")
dyn = work / "dyn.xml"
shutil.copy(bf, dyn)
shutil.copy(bf.with_suffix(".bin"), dyn.with_suffix(".bin"))
write_meta(dyn, {**read_meta(bf, "openvino"), "static_recompile": False})
specs = [BenchSpec(id="ort-fp32", engine="ort", artifact=str(mp))] + [
    BenchSpec(id=f"{kind}-process{i}", engine="openvino", artifact=str(a)) for i in (1, 2) for kind, a in (("fixed", bf), ("dynamic", dyn))]
feeds = prep.task.bench_feeds(prep.eval)
out, tel = bench_rounds(specs, feeds, 2, rounds=7, policy="dedicated", processes=1)
rows = [{"id": o.id, "speedup": o.speedup(), "range": o.speedup_range(), "ratios": [round(x, 4) for x in o.ratios]} for o in out]
for r in rows:
    print(f"{r['id']:18s} {r['speedup']:.3f}x [{r['range'][0]:.3f}-{r['range'][1]:.3f}]")
rec = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine_info(2), "input": list(feeds["x"].shape),
       "threads": 2, "policy": "dedicated", "rounds": 7, "processes_per_spec": 1, "rows": rows,
       "load": [tel["loadavg_before"], tel["loadavg_after"]], "noisy": tel["noisy"], "noise_reasons": tel["noise_reasons"]}
print("noisy", tel["noisy"], tel["loadavg_before"], tel["loadavg_after"])
if "--no-write" not in sys.argv:
    (Path(__file__).resolve().parent / "results" / "process_spread.json").write_text(json.dumps(rec, indent=1))
