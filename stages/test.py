"""Stage test: the only reader of the test split. Scores every baseline (refitted on train,
deterministically) on test -> metrics/test.json and the per-experiment MAPE chart."""

import pandas as pd

from stepformula.baselines import fit_baselines, score_baselines
from stepformula.config import load_params, section
from stepformula.facts import load_facts
from stepformula.io import write_json
from stepformula.metrics import ZERO_RULE
from stepformula.plots import mape_bars, write_csv


def main() -> None:
    params = load_params()
    config = section(params, "baselines")
    extract = section(params, "extract")
    facts = load_facts(extract["facts"], extract["hardware"])
    report = {"zero_rule": ZERO_RULE, "split": "test"}
    bars = []
    for target in params["targets"]:
        train = pd.read_parquet(f"data/split/train/{target}.parquet")
        test = pd.read_parquet(f"data/split/test/{target}.parquet")
        fitted = fit_baselines(train, target, facts, config["ridge_alpha"],
                               config["hgb_max_iter"], config["seed"])
        scores = score_baselines(fitted, test)
        report[target] = {"baselines": scores}
        for method, result in scores.items():
            for experiment, summary in result["experiments"].items():
                bars.append({"target": target, "method": method, "experiment": experiment,
                             "mape_pct": 100 * summary["mape"]})
    table = pd.DataFrame(bars)
    write_json("metrics/test.json", report)
    write_csv("plots/test_mape_by_experiment.csv", table)
    mape_bars(table, "plots/test_mape_by_experiment.png", "Baselines on the test split")


if __name__ == "__main__":
    main()
