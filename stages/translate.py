"""Stage translate (one target): the selected program as Go source, plus the test vectors that
`go test` checks the translation against.

    python -m stages.translate <target>

Vectors: real rows (every experiment's validation steps, sampled; the test split keeps a single
reader, the test stage) and edge cases (empty batch, pure prefill/decode, huge KV, every
np.where branch, zero divisors, domain edges), with Python's predictions.
"""

import sys
from pathlib import Path

import pandas as pd

from stepformula.config import load_params, section
from stepformula.errors import InputError
from stepformula.facts import load_facts
from stepformula.golang import (FEATURE_NAMES, edge_case_rows, fact_features, vectors_file_name,
                                write_go, write_vectors)
from stepformula.io import read_json

REAL_ROWS_PER_EXPERIMENT = 40


def main(target: str) -> None:
    params = load_params()
    extract = section(params, "extract")
    facts = load_facts(extract["facts"], extract["hardware"])
    selection = read_json(f"select/{target}/selection.json")
    if selection["selected"] is None:
        raise InputError(f"select/{target}/selection.json", "no selected program to translate")
    program_path = f"select/{target}/selected_program.py"
    code = Path(program_path).read_text(encoding="utf-8")
    evolved = read_json("metrics/test.json")[target]["evolved"]
    valid = pd.read_parquet(f"data/split/valid/{target}.parquet")
    real = []
    for experiment, rows in valid.groupby("experiment", sort=True):
        step = max(1, len(rows) // REAL_ROWS_PER_EXPERIMENT)
        for _, row in rows.iloc[::step].head(REAL_ROWS_PER_EXPERIMENT).iterrows():
            # Features the data cannot give (kv_max/min/std) are 0: no program may read them.
            real.append((f"{experiment} step {int(row['step_id'])}",
                         {n: float(row[n]) if n in row.index else 0.0 for n in FEATURE_NAMES}))
    models = {m: fact_features(facts.model(m), facts.hardware)
              for m in sorted(valid["model"].unique())}
    edges = edge_case_rows(code, models, candidates=real)
    write_go(code, "go", target=target, program_path=program_path,
             test_mape=evolved["mean_over_experiments"]["mape"],
             operations=evolved["num_operations"])
    write_vectors(code, real + edges.rows, Path("go/testdata") / vectors_file_name(target),
                  target=target)
    note = f"; np.where branches no row takes: {edges.uncovered}" if edges.uncovered else ""
    print(f"translate {target}: go/{target}_formula.go and {len(real) + len(edges.rows)} "
          f"vectors{note}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.translate <target>")
    main(sys.argv[1])
