"""Stage baselines: fit every baseline on train, score it on valid -> metrics/baselines.json.

Test scores of the same baselines are the test stage's: it is the only reader of the test split.
"""

import pandas as pd

from stepformula.baselines import blackbox_coefficients, fit_baselines, score_baselines
from stepformula.config import load_params, section
from stepformula.facts import load_facts
from stepformula.io import write_json
from stepformula.metrics import ZERO_RULE


def main() -> None:
    params = load_params()
    config = section(params, "baselines")
    extract = section(params, "extract")
    facts = load_facts(extract["facts"], extract["hardware"])
    report = {"zero_rule": ZERO_RULE, "split": "valid"}
    for target in params["targets"]:
        train = pd.read_parquet(f"data/split/train/{target}.parquet")
        valid = pd.read_parquet(f"data/split/valid/{target}.parquet")
        fitted = fit_baselines(train, target, facts, config["ridge_alpha"],
                               config["hgb_max_iter"], config["seed"])
        report[target] = {"valid": score_baselines(fitted, valid),
                          "blackbox_coefficients": blackbox_coefficients(fitted)}
        best = min(report[target]["valid"].items(),
                   key=lambda kv: kv[1]["mean_over_experiments"]["mape"])
        print(f"baselines {target}: best on valid {best[0]} "
              f"{100 * best[1]['mean_over_experiments']['mape']:.2f}% mean MAPE")
    write_json("metrics/baselines.json", report)


if __name__ == "__main__":
    main()
