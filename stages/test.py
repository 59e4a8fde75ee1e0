"""Stage test: the only reader of the test split.

Scores, per target and experiment: the selected formula (global, calibrated per experiment,
leave-one-model-out), the gplearn peer and every baseline (refitted on train, deterministically);
writes metrics/test.json, metrics/verdict.json, the charts and reports/results.md.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from stepformula import assessment, report
from stepformula.baselines import fit_baselines, score, score_baselines
from stepformula.config import load_params, section
from stepformula.determinism import reexec_if_needed
from stepformula.evaluator import EvaluatorSettings
from stepformula.facts import load_facts
from stepformula.features import available_features
from stepformula.io import read_json, write_json
from stepformula.metrics import ZERO_RULE, error_summary
from stepformula.peer import predict_peer
from stepformula.plots import mape_bars, predicted_vs_actual, write_csv
from stepformula.program import check_program
from stepformula.verdict import Budget, Thresholds, verdict

VERDICT_MEASURE = "mean over experiments of per-step test MAPE"


def main() -> None:
    params = load_params()
    config, extract = section(params, "baselines"), section(params, "extract")
    evolve, thresholds_params = section(params, "evolve"), section(params, "verdict")
    facts = load_facts(extract["facts"], extract["hardware"])
    names = available_features(read_json("data/feature_manifest.json"))
    op_limit = int(section(params, "select")["max_operations"])
    thresholds = Thresholds(supported_below=float(thresholds_params["supported_below"]),
                            refuted_above=float(thresholds_params["refuted_above"]),
                            op_limit=op_limit,
                            full_generations=int(thresholds_params["full_generations"]),
                            full_runs=int(thresholds_params["full_runs"]))
    report_doc = {"zero_rule": ZERO_RULE, "split": "test", "verdict_measure": VERDICT_MEASURE}
    verdicts, bars = {}, []
    for target in params["targets"]:
        settings = EvaluatorSettings.from_params(params, target)
        train = pd.read_parquet(f"data/split/train/{target}.parquet")
        test = pd.read_parquet(f"data/split/test/{target}.parquet")
        actual = test[target].to_numpy(dtype=float)
        experiments = test["experiment"].to_numpy()
        results = {}

        selection = read_json(f"select/{target}/selection.json")
        selected = selection["selected"]
        if selected is not None:
            program = check_program(selected["code"], names)
            evolved = assessment.predict(program, test, names)
            results["evolved"] = {**score(actual, evolved, experiments),
                                  "num_operations": program.num_operations}
            calibrated = assessment.calibrated_predictions(
                selected["code"], train, test, target, names, settings.max_evaluations,
                settings.max_fit_rows)
            results["evolved_calibrated"] = {**score(actual, calibrated, experiments),
                                             "num_operations": program.num_operations}
            held_out = assessment.leave_one_model_out(
                selected["code"], train, test, target, names, settings.max_evaluations,
                settings.max_fit_rows)
            per_model = {m: error_summary(actual[(test["model"] == m).to_numpy()], p)
                         for m, p in held_out.items()}
            results["evolved_leave_one_model_out"] = {
                "models": per_model,
                "mean_over_models": {k: float(np.mean([s[k] for s in per_model.values()]))
                                     for k in ("mape", "median_ape", "p90_ape", "wape")},
                "num_operations": program.num_operations}
            write_csv(f"plots/test_predictions_{target}.csv", pd.DataFrame(
                {"experiment": experiments, "actual_us": actual, "predicted_us": evolved}))
            predicted_vs_actual(test["experiment"].to_numpy(), actual, evolved,
                                f"plots/test_predictions_{target}.png",
                                f"{target}: selected formula on test")

        peer = read_json(f"peer/{target}/gplearn.json")
        if peer["program"] is not None:
            peer_predicted = predict_peer(peer["program"], peer["variables"],
                                          assessment.features_of(test, names))
            results["peer_gplearn"] = {**score(actual, peer_predicted, experiments),
                                       "num_operations": peer["num_operations"]}

        fitted = fit_baselines(train, target, facts, config["ridge_alpha"],
                               config["hgb_max_iter"], config["seed"])
        results["baselines"] = score_baselines(fitted, test)
        report_doc[target] = results

        runs = [read_json(Path("evolve") / target / f"run{s}" / "run.json") for s in evolve["seeds"]]
        budget = Budget(generations=int(evolve["generations"]),
                        population=int(evolve["population"]), runs=len(runs),
                        engine=dict(evolve["engine"]),
                        models=sorted({m for r in runs for m in r["models"]}))
        measured = results.get("evolved", {}).get("mean_over_experiments", {}).get("mape")
        verdicts[target] = verdict(
            target, measured, None if selected is None else results["evolved"]["num_operations"],
            budget, thresholds, report.TARGET_NOTES[target])

        methods = {"evolved": results.get("evolved"),
                   "evolved_calibrated": results.get("evolved_calibrated"),
                   "peer_gplearn": results.get("peer_gplearn"), **results["baselines"]}
        for method, result in methods.items():
            if result is None:
                continue
            for experiment, summary in result["experiments"].items():
                bars.append({"target": target, "method": method, "experiment": experiment,
                             "mape_pct": 100 * summary["mape"]})

    table = pd.DataFrame(bars)
    write_json("metrics/test.json", report_doc)
    write_json("metrics/verdict.json", verdicts)
    write_csv("plots/test_mape_by_experiment.csv", table)
    mape_bars(table, "plots/test_mape_by_experiment.png",
              "Selected formula, calibrated formula, gplearn peer and baselines on test")
    report.write_report("reports/results.md", params)
    for target, v in verdicts.items():
        mape = v["result"]["test_mape"]
        print(f"test {target}: {v['status']} (test MAPE "
              f"{'n/a' if mape is None else f'{100 * mape:.2f}%'}, "
              f"{v['result']['num_operations']} ops)")


if __name__ == "__main__":
    # The calibrated and leave-one-model-out scores refit constants: see stepformula.determinism.
    reexec_if_needed("stages.test")
    main()
