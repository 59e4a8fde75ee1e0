"""Stage extract: real step data -> data/features.parquet + data/feature_manifest.json."""

from stepformula.config import load_params, section
from stepformula.facts import load_facts
from stepformula.features import build_features, build_manifest
from stepformula.io import write_json, write_parquet
from stepformula.traces import read_all


def main() -> None:
    params = section(load_params(), "extract")
    facts = load_facts(params["facts"], params["hardware"])
    steps = read_all(params["inputs"], params["min_steps_per_experiment"])
    rows = build_features(steps, facts, params["kv_block_tokens"])
    manifest = build_manifest(rows, params["kv_block_tokens"], list(params["inputs"]))
    # Both are built before either is written: bad input leaves the old outputs untouched.
    write_parquet("data/features.parquet", rows)
    write_json("data/feature_manifest.json", manifest)
    print(f"extract: {len(rows)} steps from {len(manifest['experiments'])} experiment(s), "
          f"{int(rows['period_us'].notna().sum())} with period_us")


if __name__ == "__main__":
    main()
