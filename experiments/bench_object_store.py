"""The heuristic search with the feature store in a bucket vs in a local folder, side by side.

Starts moto's S3-compatible server on loopback, puts the same features of the embedded default
(an existing extraction, ``--seed``, e.g. ``runs/features`` after ``difffeat-tune extract``) into
a local folder and into a bucket (the same files, uploaded), then runs the heuristic search of
the embedded default on each, in its own process, and prints the wall times and their ratio,
measured in one run:

    OMP_NUM_THREADS=1 python experiments/bench_object_store.py --seed runs/features [--out /tmp/bench-object-store]

Each search opens its store (``dataset.json``, labels, extractions, manifests) and reads every
(t, b) it trains on once (the objective keeps what it read): the ratio is the cost of those
reads on the bucket. Extraction is not timed (it is the same compute on both).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
from moto.server import ThreadedMotoServer

#: Any key works with moto; the search reads them from the environment as it would real ones.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "bench"
#: One search on a store, in a fresh process: prints its wall time and best configuration as JSON.
SEARCH = """
import json, sys, time
from difffeat_tune.features import StoreSettings
from difffeat_tune.search._options import SearchOptions
from difffeat_tune.search.runner import run_search
from difffeat_tune.settings import Settings
from difffeat_tune.store import FeatureStore
features, runs = sys.argv[1:3]
start = time.perf_counter()
settings = Settings.create(store=StoreSettings(features=features), device="cpu", search=SearchOptions(runs=runs))
view = FeatureStore(settings.store.features).view("shapes")
summary = run_search(settings.with_space(settings.space.restricted_to(("image", "text"))), view)
print(json.dumps({"seconds": time.perf_counter() - start, "best": summary.best_config}, default=str))
"""


def _search(features: str, runs: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", SEARCH, features, str(runs)], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the search on {features} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=Path, required=True, help="an extracted store of the embedded default")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-object-store"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(args.seed, args.out / "features")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {**os.environ, **CREDENTIALS}
        s3 = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True,
                               access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                               secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region="us-east-1")
        s3.create_dir(BUCKET)
        pafs.copy_files(str((args.out / "features").absolute()), f"{BUCKET}/features",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
        stores = {"folder": str(args.out / "features"),
                  "bucket": f"s3://{BUCKET}/features?endpoint_override={host}:{port}&scheme=http"}
        results = {where: _search(features, args.out / f"runs-{where}", env) for where, features in stores.items()}
    finally:
        server.stop()
    folder, bucket = results["folder"]["seconds"], results["bucket"]["seconds"]
    print(f"{'heuristic search':<18}{'folder s':>10}{'bucket s':>10}{'bucket/folder':>15}")
    print(f"{'embedded default':<18}{folder:>10.1f}{bucket:>10.1f}{bucket / folder:>14.2f}x")
    print(f"same best configuration: {results['folder']['best'] == results['bucket']['best']}")


if __name__ == "__main__":
    main()
