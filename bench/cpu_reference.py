"""CPU time per study of this tree's analysis against an earlier commit's, same cases, same run.

    .venv/bin/python bench/cpu_reference.py --reference 311c9ee --per-class 2

The reference commit is checked out with ``git archive`` into a temporary folder (its own code
and weights), and both trees analyse the same NIfTI studies through their public entry point,
``inference_worker.pipeline.analyse_nifti``, each in a child process of its own that loads its
models once. Cases are whole heads from the training generator (face, orbits and neck in view;
the benchmark's ``full-head`` seeds) and thin-skull heads (``synthetic``), acquired as a scanner
would. The children take turns, ``--rounds`` times each, so that drift on a shared machine falls
on both; the table gives the median over all rounds of the process CPU time of
``analyse_nifti`` (every thread; loading the models is not counted) and the ratio.

311c9ee is the tree when issue 12 (brain extraction, findings only inside the brain) was filed:
the issue's CPU target is at most 1.5 times its time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETS = ("full-head", "synthetic")
ROLES = ("T1", "T1CE", "T2", "FLAIR")  # the order the series are given in, as before


def write_cases(folder: Path, per_class: int) -> list[Path]:
    """The first ``per_class`` cases of each type of ``bench/models.py``'s held-out sets, as
    NIfTI files (one folder per case, a file per role); made by this tree's generator."""
    import importlib.util

    import SimpleITK as sitk

    spec = importlib.util.spec_from_file_location("bench_models", REPO / "bench" / "models.py")
    assert spec is not None and spec.loader is not None
    bench_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_models)
    cases = []
    for name in SETS:
        for n in range(per_class * len(bench_models.TYPES)):
            seed, tumour_type, _, volumes = bench_models.study(name, n)
            folder_of_case = folder / f"{name}-{seed}-{tumour_type}"
            folder_of_case.mkdir()
            for role, volume in volumes.items():
                image = sitk.GetImageFromArray(volume.array)
                image.SetOrigin(tuple(float(v) for v in volume.origin))
                image.SetSpacing(tuple(float(v) for v in volume.spacing))
                image.SetDirection(tuple(float(v) for v in volume.direction.ravel()))
                sitk.WriteImage(image, str(folder_of_case / f"{role.value}.nii.gz"))
            cases.append(folder_of_case)
    return cases


def child(tree: Path, cases: list[Path]) -> None:
    """Analyse ``cases`` with the code and models of ``tree``; print CPU seconds as JSON."""
    import time

    sys.path.insert(0, str(tree))
    import inference_worker
    from inference_worker.pipeline import Models, analyse_nifti
    from models.registry import Task, manifest_for

    if not Path(inference_worker.__file__).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"imported {inference_worker.__file__}, not the code in {tree}")
    models = Models.load_all({task: manifest_for(task) for task in Task})
    seconds = {}
    for number, study in enumerate(cases, start=1):
        files = {role: study / f"{role}.nii.gz" for role in ROLES}
        started = time.process_time()
        analyse_nifti(f"2.25.{number}", files, models)
        seconds[study.name] = time.process_time() - started
    print(json.dumps(seconds))


def run_child(tree: Path, cases: list[Path]) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", str(tree), *map(str, cases)]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the analysis in {tree} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default="311c9ee", help="commit to compare with")
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), [Path(p) for p in args.child[1:]])
        return

    import statistics

    with tempfile.TemporaryDirectory(prefix="neurogate-cpu-") as temporary:
        root = Path(temporary)
        reference = root / "reference"
        reference.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.reference], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(reference)], input=archive.stdout, check=True)
        (root / "cases").mkdir()
        cases = write_cases(root / "cases", args.per_class)
        trees = {f"reference {args.reference}": reference, "this tree": REPO}
        seconds: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
        for round_ in range(args.rounds):
            for name, tree in trees.items():
                for case, value in run_child(tree, cases).items():
                    seconds[name].setdefault(case, []).append(value)
                print(f"round {round_ + 1}: {name} done", file=sys.stderr, flush=True)

    def median(name: str, prefix: str) -> float:
        return statistics.median(
            v for case, values in seconds[name].items() if case.startswith(prefix) for v in values
        )

    ref_name, this_name = trees
    print(f"CPU s per study, median of {args.rounds} rounds x {args.per_class} per type "
          f"(glioma, meningioma, pituitary, none)\n")  # fmt: skip
    print(f"{'set':<12}{ref_name:>22}{this_name:>14}{'ratio':>8}")
    for prefix in SETS:
        ref, this = median(ref_name, prefix), median(this_name, prefix)
        print(f"{prefix:<12}{ref:>22.2f}{this:>14.2f}{this / ref:>8.2f}")


if __name__ == "__main__":
    main()
