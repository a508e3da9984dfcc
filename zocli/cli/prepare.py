"""`zocli prepare`: the on-disk copy of a benchmark (and optionally the weights), so later commands run offline."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from zocli.cli._shared import ConfigFlags, Opt, app, benchmark_metavar, config_options, err, errors, out
from zocli.config import DEFAULT_DATA_ROOT, ConfigError


@app.command("prepare")
@config_options("data_root")
def prepare_cmd(
    benchmark: Annotated[
        str | None,
        Opt(
            metavar=benchmark_metavar(),
            help="Benchmark to prepare: a shipped one, folder:DIR (train/ and test/ class folders, or class "
            "folders split 80/20) or hf:ID (a Hugging Face dataset id, or a local path datasets.load_dataset reads).",
        ),
    ] = None,
    source: Annotated[
        Path | None, Opt(metavar="DIR", help="Import from a local folder instead of the Hugging Face hub.")
    ] = None,
    image_column: Annotated[
        str | None, Opt(metavar="NAME", help="For hf:ID, the image column. \\[default: its only Image column]")
    ] = None,
    label_column: Annotated[
        str | None,
        Opt(metavar="NAME", help="For hf:ID, the label column. \\[default: its only ClassLabel column, or label]"),
    ] = None,
    train_split: Annotated[str, Opt(metavar="NAME", help="For hf:ID, the training split.")] = "train",
    test_split: Annotated[
        str | None,
        Opt(
            metavar="NAME",
            help="For hf:ID, the test split. \\[default: test, validation, valid or val; "
            "without one the training split is split 80/20 per class]",
        ),
    ] = None,
    names: Annotated[
        Path | None,
        Opt(
            metavar="FILE",
            help="For folder:DIR and hf:ID, prompt names: JSON {class: name} or a list in sorted class order. "
            "\\[default: class names, underscores as spaces]",
        ),
    ] = None,
    revision: Annotated[
        str | None,
        Opt(
            metavar="REV",
            help="A Hugging Face hub source's commit, branch or tag to prepare from (recorded in the copy). "
            "\\[default: the latest]",
        ),
    ] = None,
    *,
    flags: ConfigFlags,
    overwrite: Annotated[bool, Opt("--overwrite", metavar="", help="Rebuild an existing prepared copy.")] = False,
    allow_partial: Annotated[
        bool,
        Opt(
            "--allow-partial",
            metavar="",
            help="Accept a --source lacking some classes (with a warning); tasks left without images refuse to train.",
        ),
    ] = False,
    weights: Annotated[bool, Opt("--weights", metavar="", help="Also download pretrained model weights.")] = False,
    model: Annotated[str, Opt(metavar="TEXT", help="Model whose weights --weights downloads.")] = "ViT-B-16",
    pretrained: Annotated[str, Opt(metavar="TAG", help="open_clip pretrained tag for --weights.")] = "openai",
    as_json: Annotated[bool, Opt("--json", metavar="", help="Print what was prepared as JSON on stdout.")] = False,
) -> None:
    """Build the normalized on-disk copy of a benchmark (and optionally fetch weights) so training runs offline."""
    if benchmark is None and not weights:
        err.print("error: nothing to prepare: pass --benchmark NAME and/or --weights")
        raise typer.Exit(2)
    root = Path(flags["data_root"] or os.environ.get("ZOCLI_DATA") or DEFAULT_DATA_ROOT).expanduser()
    report: dict[str, str] = {}
    with errors():
        if benchmark is not None:
            from zocli.data import catalogue

            name = catalogue.canonical_name(_absolute(benchmark))
            user = {
                "image_column": image_column,
                "label_column": label_column,
                "test_split": test_split,
                "names": names,
                "train_split": None if train_split == "train" else train_split,
            }
            _check_prepare_flags(name, source, allow_partial, user)
            from zocli.data import store

            if as_json or not err.is_terminal:  # datasets' bars are for a terminal, not a log file
                import datasets

                datasets.disable_progress_bars()
            note = None if as_json else (lambda line: err.print(line, highlight=False))
            existing = None if overwrite else store.prepared_sizes(name, root)
            if existing is not None:  # kept as it is: say so, or a new --source looks imported
                report["existing"] = True
                counts = " + ".join(f"{n} {split}" for split, n in existing.items())
                err.print(
                    f"{name} is already prepared at {store.dataset_dir(root, name)} ({counts} images)"
                    f"{'; --source was not read' if source else ''}; --overwrite rebuilds it",
                    highlight=False,
                )
            if catalogue.is_user(name):
                from zocli.data.userdata import SourceOptions, prepare

                options = SourceOptions(image_column, label_column, train_split, test_split, names, revision)
                report["data"] = str(prepare(name, root, options, on_progress=note, overwrite=overwrite))
            else:
                report["data"] = str(
                    store.prepare(
                        catalogue.get(name),
                        root,
                        source,
                        on_progress=note,
                        overwrite=overwrite,
                        allow_partial=allow_partial,
                        revision=revision,
                    )
                )
        if weights:
            from zocli.method.backbone import download_weights

            report["weights"] = str(download_weights(model, pretrained))
    if as_json:
        print(json.dumps(report))
    else:
        for kind, path in report.items():
            if kind != "existing":
                out.print(f"{kind}: {path}", highlight=False)
        if benchmark is not None:
            import shlex

            command = ["zocli", "train", "--benchmark", name]
            if flags["data_root"] is not None or os.environ.get("ZOCLI_DATA"):
                command += ["--data-root", str(root)]
            err.print(f"next: {shlex.join(command)}", highlight=False)


def _absolute(benchmark: str) -> str:
    """folder:/hf: paths made absolute as `train` records them (zocli.resolve), so both name one copy."""
    from zocli.resolve import resolve

    return resolve([], {"benchmark": benchmark}).config.benchmark


def _check_prepare_flags(name: str, source, allow_partial: bool, user: dict) -> None:
    from zocli.data.catalogue import is_user

    given = [f"--{k.replace('_', '-')}" for k, v in user.items() if v is not None]
    if is_user(name) and (source is not None or allow_partial):
        raise ConfigError(f"--source and --allow-partial apply to the shipped benchmarks; {name} names its data itself")
    if not is_user(name) and given:
        raise ConfigError(f"{', '.join(given)} apply to folder:DIR and hf:ID benchmarks, not {name}")
    if name.startswith("folder:") and set(given) - {"--names"}:
        raise ConfigError(f"{', '.join(sorted(set(given) - {'--names'}))} apply to hf:ID only")
