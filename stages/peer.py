"""Stage peer (one target): gplearn's SymbolicRegressor at the evolution's budget, on train.

    python -m stages.peer <target>
"""

import sys

from stepformula.config import load_params, section
from stepformula.evaluator import EvaluatorSettings, load_training_data
from stepformula.features import available_features
from stepformula.io import read_json, write_json
from stepformula.peer import fit_peer


def main(target: str) -> None:
    params = load_params()
    evolve, peer = section(params, "evolve"), section(params, "peer")
    settings = EvaluatorSettings.from_params(params, target)
    names = available_features(read_json("data/feature_manifest.json"))
    train = load_training_data(f"data/split/train/{target}.parquet", target, names,
                               decode_below=settings.decode_below,
                               prefill_at_least=settings.prefill_at_least)
    # Equal budget: one program evaluation per evolution iteration, over all runs of the target.
    evaluations = int(evolve["generations"]) * int(evolve["population"]) * len(evolve["seeds"])
    result = fit_peer(train.features, train.target, names, evaluations, int(peer["population"]),
                      int(section(params, "select")["max_operations"]), int(peer["seed"]))
    write_json(f"peer/{target}/gplearn.json", result)
    print(f"peer {target}: {result['program']} ({result['num_operations']} ops, train MAPE "
          f"{100 * result['train_mape']:.2f}%)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.peer <target>")
    main(sys.argv[1])
