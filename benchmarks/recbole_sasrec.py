"""RecBole 1.2.1's SASRec on ml-100k, for the side-by-side of README "Training speed and scale".

Runs in a throw-away virtual environment, never the project's (RecBole 1.2.1 needs numpy<2, pandas<3 and
setuptools<81; torch can come from the project's venv through a ``.pth`` line appended to sys.path)::

    python3.11 -m venv /tmp/recbole
    echo $PWD/.venv/lib/python3.11/site-packages > /tmp/recbole/lib/python3.11/site-packages/zz_torch.pth
    /tmp/recbole/bin/pip install recbole==1.2.1 "numpy<2" "pandas<3" "setuptools<81"
    mkdir -p /tmp/rbdata/ml-100k && pip download --no-deps recbole==1.2.1 -d /tmp/rbdata
    unzip -j /tmp/rbdata/recbole-1.2.1-*.whl 'recbole/dataset_example/ml-100k/*' -d /tmp/rbdata/ml-100k
    cd /tmp && OMP_NUM_THREADS=1 TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 \
        /tmp/recbole/bin/python $OLDPWD/benchmarks/recbole_sasrec.py   # RecBole writes log/ into the cwd

Same setting as this project's ml-100k figures: leave-one-out (last item test, second last validation),
every training target once per epoch (RecBole: one prefix sequence per target), CE over all items, d=64,
2 layers, 2 heads, inner size 256, max length 50, batch 256, lr 1e-3, one thread. Prints the CPU and wall
seconds of each training epoch (``TRAIN_EPOCH``) besides RecBole's own log.
"""

from __future__ import annotations

import argparse
import time

import torch
from recbole.quick_start import run_recbole
from recbole.trainer import Trainer

_train_epoch = Trainer._train_epoch


def _timed_train_epoch(self, *args, **kwargs):
    cpu, wall = time.process_time(), time.perf_counter()
    out = _train_epoch(self, *args, **kwargs)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"TRAIN_EPOCH cpu_s {cpu:.1f} wall_s {wall:.1f}", flush=True)
    return out


def main() -> None:
    """Train RecBole's SASRec for ``--epochs`` epochs and print its results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", default="/tmp/rbdata")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Trainer._train_epoch = _timed_train_epoch
    config = {
        "data_path": args.data_path, "checkpoint_dir": f"{args.data_path}/saved", "seed": 42,
        "reproducibility": True, "hidden_size": 64, "n_layers": 2, "n_heads": 2, "inner_size": 256,
        "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "loss_type": "CE",
        "train_neg_sample_args": None, "MAX_ITEM_LIST_LENGTH": 50, "train_batch_size": 256,
        "learning_rate": 1e-3, "epochs": args.epochs,
        "eval_step": 1, "stopping_step": 10,
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Recall", "NDCG", "MRR"], "topk": [10, 20], "valid_metric": "NDCG@20",
        "show_progress": False, "use_gpu": False, "worker": 0, "eval_batch_size": 4096,
    }  # fmt: skip
    print(run_recbole(model="SASRec", dataset="ml-100k", config_dict=config))


if __name__ == "__main__":
    main()
