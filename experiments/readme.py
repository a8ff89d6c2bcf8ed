"""``python -m experiments.readme``: write ``results/README.md``, the page to cite.

Per study, in the order of :data:`ORDER`: the question (its docstring's first line), a
headline generated from its rows (the module's ``headline(rows)``), its main plot
(``PLOT``), links to its full ``summary.md`` and its notebook (``NOTEBOOK``): the
contract :class:`lab.study.ReportedStudy`; and the
reading: ``results/<study>/READING.md``, the one part a person writes, after looking at
the numbers. A study without a finished full run is listed with the command that runs it.
"""

from __future__ import annotations

from pathlib import Path

from lab import io, study

from .__main__ import RESULTS, load

ORDER = ["rules_vs_nfe", "exact_error_vs_nfe", "few_step_frontier", "guidance_momentum",
         "dropping_timestep",
         "perceptual_loss", "noise_reinjection"]


def section(name: str, results=RESULTS) -> list[str]:
    module = load(name)
    study.check_study(module, study.ReportedStudy)
    out = Path(results) / name
    question = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    rows = study.read_rows(out / study.ROWS) if (out / study.ROWS).exists() else []
    done = {r["key"] for r in rows}
    cells = module.cells(False)
    head = [f"## {name}", "", question, ""]
    notebook = getattr(module, "NOTEBOOK", None)
    links = [f"[summary]({name}/summary.md)"] + (
        [f"notebook [`{notebook}`](../notebooks/{notebook})"] if notebook else [])
    if not all(study.cell_key(c) in done for c in cells):
        return head + [f"Full run not finished ({sum(study.cell_key(c) in done for c in cells)} "
                       f"of {len(cells)} cells): `python -m experiments {name}` (resumes). Its "
                       f"`--fast` mode runs in CI.", ""]
    by_key = {r["key"]: r for r in rows}
    current = [by_key[study.cell_key(c)] for c in cells]
    reading = out / "READING.md"
    return head + [" · ".join(links), "", *module.headline(current), "",
                   f"![{name}]({name}/{module.PLOT})", "",
                   reading.read_text().strip() if reading.exists() else
                   f"*No reading yet: write `results/{name}/READING.md`.*", ""]


def main(results=RESULTS) -> Path:
    lines = ["# Results", "",
             "What the lab's studies found, regenerated from their rows by `python -m "
             "experiments.readme` (each study: `python -m experiments <study>`, resumable). "
             "Tables come from the rows; the readings under them are written by hand. Models: "
             "see the README's model zoo. FID and KID are against the 10,000 Fashion-MNIST "
             "test images in `fashion-classifier` features; quote them with their sample "
             "count.", ""]
    for name in ORDER:
        lines += section(name, results)
    return io.write_text(Path(results) / "README.md", "\n".join(lines))


if __name__ == "__main__":
    print(main())
