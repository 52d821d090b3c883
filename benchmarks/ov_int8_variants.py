"""NNCF int8 of the default PP-OCRv4 recognizer on OpenVINO, as a careful user would try it: the default preset, the
transformer model type, the MIXED preset, full bias correction, each compiled with the float remainder in fp32 and in
bf16. For each: CER change on the study's 150 eval lines and on the 96 calibration lines (the lines edgeslim's int8
search may look at), then every variant timed against the ORT fp32 original and OpenVINO bf16 (each in its own worker
process, 7 rounds in rotating order, dedicated thread policy, 2 threads; speedup = median of per-round ratios).

    python benchmarks/ov_int8_variants.py [variant,...] [--no-write]

Writes benchmarks/results/ov_int8_variants.json unless --no-write. Needs `.[openvino]` (openvino, nncf).
"""
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
import onnx
import openvino as ov
import nncf
from edgeslim.bench import BenchSpec, bench_rounds, machine_info
from edgeslim.engines import get_engine
from edgeslim.engines.base import write_meta
from edgeslim.engines.openvino import runtime_properties, policy_properties, _onnx_names
from edgeslim.policy import ThreadPolicy
from edgeslim.study import StudyConfig, prepare
from edgeslim.tasks.base import evaluate
from edgeslim.zoo import resolve
nncf.set_log_level(logging.ERROR)
mp = resolve("ppocrv4-rec")
work = Path(tempfile.mkdtemp(prefix="nncfv-"))
prep = prepare(StudyConfig(model=str(mp), eval_limit=150, threads=2, recipes=("fp32",), engines=("ort",), cache=False), work)
task = prep.task
calib = [b.feeds for b in task.batches(prep.calib, 1)]
m0 = onnx.load(str(mp))
inputs, outputs = _onnx_names(m0)
ort_e, ov_e = get_engine("ort"), get_engine("openvino")
base_ev, _ = evaluate(ort_e.load(mp, 2), task, prep.eval)
base_cer = task.score(base_ev, prep.eval)["metric"]
base_ca, _ = evaluate(ort_e.load(mp, 2), task, prep.calib)
base_cal = task.score(base_ca, prep.calib)["metric"]
print("base", base_cer, base_cal, flush=True)
name = ov.convert_model(str(mp)).inputs[0].get_any_name()
ds = nncf.Dataset(calib)
A = nncf.AdvancedQuantizationParameters
variants = {
  "default": {},
  "transformer": {"model_type": nncf.ModelType.TRANSFORMER},
  "mixed": {"preset": nncf.QuantizationPreset.MIXED},
  "fullbc": {"fast_bias_correction": False},
  "transformer_mixed": {"model_type": nncf.ModelType.TRANSFORMER, "preset": nncf.QuantizationPreset.MIXED},
}
args = [a for a in sys.argv[1:] if a != "--no-write"]
only = args[0].split(",") if args else list(variants)
res = {}
arts = {}
for vn in only:
    kw = variants[vn]
    t = time.time()
    try:
        q = nncf.quantize(ov.convert_model(str(mp)), ds, subset_size=len(calib), **kw)
    except Exception as e:
        print(vn, "failed", e)
        continue
    for hint in ("f32", "bf16"):
        xml = work / f"{vn}-{hint}.xml"
        ov.save_model(q, str(xml), compress_to_fp16=False)
        props = {**runtime_properties("int8"), "INFERENCE_PRECISION_HINT": hint}
        write_meta(xml, {"engine": "openvino", "precision": "int8", "inputs": inputs, "outputs": outputs, "properties": props,
                         "policy_properties": {p.value: policy_properties(p) for p in ThreadPolicy}})
        r = ov_e.load(xml, 2)
        pe, _ = evaluate(r, task, prep.eval)
        pc, _ = evaluate(r, task, prep.calib)
        res[f"{vn}-{hint}"] = {"dcer_eval": round(task.score(pe, prep.eval)["metric"] - base_cer, 4),
                               "dcer_calib": round(task.score(pc, prep.calib)["metric"] - base_cal, 4),
                               "fq": sum(1 for o in q.get_ops() if o.get_type_name() == "FakeQuantize"), "build_s": round(time.time() - t, 1)}
        arts[f"{vn}-{hint}"] = xml
        print(vn, hint, res[f"{vn}-{hint}"], flush=True)
bf = ov_e.convert(m0, work / "bf16.xml", "bf16")
specs = [BenchSpec(id="ort-fp32", engine="ort", artifact=str(mp)), BenchSpec(id="ov-bf16", engine="openvino", artifact=str(bf))] + \
        [BenchSpec(id=k, engine="openvino", artifact=str(v)) for k, v in arts.items()]
out, tel = bench_rounds(specs, task.bench_feeds(prep.eval), 2, rounds=7, policy="dedicated")
for o in out:
    print(o.id, o.speedup(), o.speedup_range(), res.get(o.id))
print("noisy", tel["noisy"], tel["loadavg_before"], tel["loadavg_after"])
rec = {"machine": machine_info(2), "base_cer_eval": base_cer, "base_cer_calib": base_cal, "eval_lines": len(prep.eval),
       "calib_lines": len(prep.calib), "openvino": ov.get_version(), "nncf": nncf.__version__, "policy": "dedicated",
       "rounds": 7, "load": [tel["loadavg_before"], tel["loadavg_after"]], "noisy": tel["noisy"],
       "noise_reasons": tel["noise_reasons"],
       "rows": [{"id": o.id, "speedup": o.speedup(), "range": o.speedup_range(), "ratios": [round(x, 4) for x in o.ratios],
                 **(res.get(o.id) or {})} for o in out]}
if "--no-write" not in sys.argv:
    dest = Path(__file__).resolve().parent / "results" / "ov_int8_variants.json"
    dest.write_text(json.dumps(rec, indent=1))
