"""The project store of the data engine: images by content, masks as COCO RLE, annotation
events, model versions and annotators, in SQLite (embedded) or PostgreSQL, with migrations.

    from segany.engine.store import Project

    with Project.init("my_project") as project:
        image, created = project.add_image_file("photo.jpg")
        annotator, token = project.add_annotator("alice")
        mask = project.add_mask(image.id, segmentation=rle, annotator="alice", elapsed_ms=9000)

Needs the ``engine`` extra (SQLAlchemy 2, Alembic; ``postgres`` for PostgreSQL). No torch.
"""

from .errors import InvalidInput, LeaseConflict, NotFound, StoreError, VersionConflict
from .models import IMAGE_STATUSES, MASK_SOURCES, STAGES
from .project import DB_ENV, PROJECT_FILE, Project, file_fingerprint, local_model_file
from .records import (
    AddReport,
    Annotator,
    DatasetVersion,
    EventRecord,
    ImageRecord,
    MaskRecord,
    ModelVersion,
)

__all__ = [
    "DB_ENV",
    "IMAGE_STATUSES",
    "MASK_SOURCES",
    "PROJECT_FILE",
    "STAGES",
    "AddReport",
    "Annotator",
    "DatasetVersion",
    "EventRecord",
    "ImageRecord",
    "InvalidInput",
    "LeaseConflict",
    "MaskRecord",
    "ModelVersion",
    "NotFound",
    "Project",
    "StoreError",
    "VersionConflict",
    "file_fingerprint",
    "local_model_file",
]
