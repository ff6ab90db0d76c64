"""Keeps a run's log to what a user must act on: Python warnings that are library notices, printed on every
run and actionable by no user, are ignored.

``conf/logging.yml`` builds ``LibraryNoticeFilter`` for its console handler. Kedro configures logging before
it loads its plugins (kedro-mlflow's import prints one of the notices), so this is the earliest point where
project code runs; ``settings.py`` calls ``ignore_library_notices`` too, for sessions started without
``conf/logging.yml``.
"""

from __future__ import annotations

import logging
import warnings

#: (message regex, category): omegaconf 2.4 deprecates ``register_new_resolver``, which kedro and kedro-mlflow
#: call; MLflow asks for type hints on the ``predict`` of kedro-mlflow's ``KedroPipelineModel`` (unused here).
LIBRARY_NOTICES: tuple[tuple[str, type[Warning]], ...] = (
    (r"register_new_resolver\(\) is deprecated", UserWarning),
    (r"(\x1b\[\d+m)?Add type hints to the `predict` method", UserWarning),
)


def ignore_library_notices() -> None:
    """Ignore the Python warnings of ``LIBRARY_NOTICES`` (and only those)."""
    for message, category in LIBRARY_NOTICES:
        warnings.filterwarnings("ignore", message=message, category=category)


class LibraryNoticeFilter(logging.Filter):
    """Console filter of ``conf/logging.yml``; building it ignores the library notices (module doc)."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        ignore_library_notices()
