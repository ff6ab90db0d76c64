"""Wiring of the sequence nodes: ``kcore_interactions`` -> id maps -> train/valid/test sequences."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_id_maps, build_sequences


def create_pipeline(**kwargs) -> Pipeline:
    """Id maps and leave-one-out sequences, all saved as Parquet in ``05_model_input``."""
    return Pipeline(
        [
            Node(
                build_id_maps,
                inputs="kcore_interactions",
                outputs=["item_index", "user_index"],
                name="build_id_maps",
            ),
            Node(
                build_sequences,
                inputs=[
                    "kcore_interactions",
                    "item_index",
                    "user_index",
                    "params:sequences.max_len",
                    "params:sequences.short_users",
                ],
                outputs=["train_sequences", "valid_sequences", "test_sequences"],
                name="build_sequences",
            ),
        ]
    )
