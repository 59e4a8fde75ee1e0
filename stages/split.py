"""Stage split: temporal 60/20/20 inside each experiment, for each target separately.

Writes data/split/<part>/<target>.parquet. Each part is its own folder so that dvc.yaml can make
only the test stage depend on data/split/test.
"""

import pandas as pd

from stepformula.config import load_params, section
from stepformula.io import write_parquet
from stepformula.splits import temporal_split


def main() -> None:
    params = load_params()
    split = section(params, "split")
    rows = pd.read_parquet("data/features.parquet")
    parts = {target: temporal_split(rows, target, split["train_fraction"], split["valid_fraction"])
             for target in params["targets"]}
    for target, by_part in parts.items():
        for part, frame in by_part.items():
            write_parquet(f"data/split/{part}/{target}.parquet", frame)
        print(f"split {target}: " + ", ".join(f"{p} {len(f)}" for p, f in by_part.items()))


if __name__ == "__main__":
    main()
