"""Wiring of the features pipeline; one node per modality so each can be recomputed alone.

``image_store`` and ``feature_cache`` are handles (inputs only): Kedro forbids a dataset being both input and
output of one node, and both stores must be read and grown by the same node, item by item.
"""

from kedro.pipeline import Node, Pipeline

from .images import acquire_images, list_image_candidates


def create_image_pipeline() -> Pipeline:
    """Image candidates (for the completeness filter), then images for the k-core survivors (before
    ``filter_verified_images``): part of the data side, which needs no torch."""
    return Pipeline(
        [
            Node(
                list_image_candidates,
                inputs=[
                    "deduplicated_interactions",
                    "items",
                    "local_images",
                    "image_store",
                    "params:features.images",
                    "image_embeddings",
                ],
                outputs="image_candidates",
                name="list_image_candidates",
            ),
            Node(
                acquire_images,
                inputs=[
                    "candidate_kcore_interactions",
                    "items",
                    "local_images",
                    "image_store",
                    "params:features.images",
                    "image_embeddings",
                ],
                outputs=["image_availability", "image_acquisition_report"],
                name="acquire_images",
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    """The image nodes, then the encoders once ``item_index`` is fixed."""
    # imported here: the encoders pull in torch (~500 MB of RSS), which the data side (``data`` pipeline,
    # built from create_image_pipeline) must not pay for
    from .nodes import build_features_manifest, encode_categories, encode_images, encode_texts

    return create_image_pipeline() + Pipeline(
        [
            Node(
                encode_images,
                inputs=[
                    "item_index",
                    "image_availability",
                    "image_store",
                    "feature_cache",
                    "params:features.image_encoder",
                    "params:features.cache",
                    "params:seed",
                    "image_embeddings",
                    "params:features.images.source",
                ],
                outputs="image_features",
                name="encode_images",
            ),
            Node(
                encode_texts,
                inputs=[
                    "item_index",
                    "filtered_items",
                    "feature_cache",
                    "params:features.text_encoder",
                    "params:features.cache",
                    "params:seed",
                    "text_embeddings",
                ],
                outputs="text_features",
                name="encode_texts",
            ),
            Node(
                encode_categories,
                inputs=["item_index", "filtered_items", "params:features.categories"],
                outputs=["category_features", "category_vocabulary"],
                name="encode_categories",
            ),
            Node(
                build_features_manifest,
                inputs=[
                    "image_features",
                    "text_features",
                    "category_features",
                    "category_vocabulary",
                    "image_availability",
                    "item_index",
                ],
                outputs="features_manifest",
                name="build_features_manifest",
            ),
        ]
    )
