"""The dataset-version methods of :class:`segany.engine.store.Project`: frozen snapshots of
the accepted masks that models are retrained on (written by :mod:`segany.engine.retrain`)."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import checks
from .base import ProjectBase
from .errors import InvalidInput, NotFound
from .models import STAGES, DatasetVersionRow
from .records import DatasetVersion

__all__ = ["DATASET_NAME", "DatasetMethods"]

#: Dataset version names: ``v`` and a zero-padded number (``v0001``).
DATASET_NAME = re.compile(r"v\d{4,}")


class DatasetMethods(ProjectBase):
    """Register, find and list dataset versions."""

    def next_dataset_name(self) -> str:
        """The name the next dataset version gets: ``v<n:04d>`` after the highest id."""
        with self._tx() as s:
            top = s.scalar(select(func.max(DatasetVersionRow.id))) or 0
        return f"v{top + 1:04d}"

    def add_dataset_version(
        self,
        name: str,
        *,
        content_hash: str,
        path: str,
        stages: list[int],
        holdout: list[str],
        counts: dict[str, Any],
    ) -> DatasetVersion:
        """Record a dataset version whose folder ``path`` (relative to the project folder) is
        written. Raises InvalidInput for a bad or already used ``name`` or bad values."""
        if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
            raise InvalidInput(f"dataset version name must look like v0001; got {name!r}")
        if not isinstance(content_hash, str) or not re.fullmatch(r"[0-9a-f]{64}", content_hash):
            raise InvalidInput(f"content_hash must be a sha256 hex digest; got {content_hash!r}")
        bad = [s for s in stages if s not in STAGES]
        if not stages or bad:
            raise InvalidInput(f"stages must be a non-empty list of {list(STAGES)}; got {stages}")
        row = DatasetVersionRow(
            name=name,
            content_hash=content_hash,
            path=str(path),
            stages=sorted({int(s) for s in stages}),
            holdout=sorted(holdout),
            counts=checks.check_json(counts, "counts"),
            created_at=self._clock(),
        )
        try:
            with self._tx() as s:
                s.add(row)
                s.flush()
                return self._dataset_record(row)
        except IntegrityError:
            raise InvalidInput(f"dataset version {name} exists already") from None

    def get_dataset_version(self, ref: str | int) -> DatasetVersion:
        """The dataset version named ``ref`` (or with id ``ref``); NotFound if none."""
        with self._tx() as s:
            return self._dataset_record(s.get(DatasetVersionRow, self._dataset_id(s, ref)))

    def find_dataset_version(self, content_hash: str) -> DatasetVersion | None:
        """The newest dataset version with ``content_hash`` (None if none)."""
        with self._tx() as s:
            row = s.scalar(
                select(DatasetVersionRow)
                .where(DatasetVersionRow.content_hash == content_hash)
                .order_by(DatasetVersionRow.id.desc())
                .limit(1)
            )
            return None if row is None else self._dataset_record(row)

    def list_dataset_versions(self) -> list[DatasetVersion]:
        """Every dataset version, oldest first."""
        with self._tx() as s:
            rows = s.scalars(select(DatasetVersionRow).order_by(DatasetVersionRow.id))
            return [self._dataset_record(r) for r in rows]

    def _dataset_id(self, s: Session, ref: DatasetVersion | str | int | None) -> int | None:
        if ref is None:
            return None
        if isinstance(ref, DatasetVersion):
            ref = ref.id
        if isinstance(ref, str):
            did = s.scalar(select(DatasetVersionRow.id).where(DatasetVersionRow.name == ref))
        elif isinstance(ref, int) and not isinstance(ref, bool):
            did = ref if s.get(DatasetVersionRow, ref) is not None else None
        else:
            did = None
        if did is None:
            raise NotFound(f"no dataset version {ref!r}")
        return did

    @staticmethod
    def _dataset_record(row: DatasetVersionRow) -> DatasetVersion:
        return DatasetVersion(
            row.id, row.name, row.content_hash, row.path, list(row.stages), list(row.holdout),
            dict(row.counts), row.created_at,
        )  # fmt: skip
