"""``segany project``: annotation projects of the data engine (:mod:`segany.engine.store`).

``init DIR [--model M] [--db URL]``, ``add DIR IMAGE_OR_FOLDER...``, ``export DIR --out OUT
--format sa1b|coco [--polygons]``, ``import DIR SA1B_OR_COCO``, ``stats DIR [--json]`` and
``annotator DIR NAME`` (adds an annotator and prints the token, shown only then).
Bad input (not a project, a file that is not an image, a malformed export, a database that
cannot be opened) is exit code 2; ``add`` exits 4 when some files were skipped and others
added. Needs the ``engine`` extra (and ``postgres`` for ``--db postgresql+psycopg://...``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from .common import DEFAULT_MODEL, EXIT_OK, EXIT_SOME_FAILED, CliError, UsageError, status

DB_HELP = (
    "database URL: postgresql+psycopg://USER@HOST:PORT/DB (the password, if any, is never "
    "stored; give it here or in $SEGANY_DB_URL). Default: the SQLite file DIR/segany.db"
)


def register(sub: Any) -> None:
    """Add ``segany project`` and its actions to the subparsers ``sub``."""
    proj = sub.add_parser(
        "project",
        help="annotation projects: create, add images, export, import, statistics",
        description=(
            "An annotation project is a folder: project.json, the database (segany.db, or "
            "PostgreSQL with --db), images/ stored by content (sha256) and embeddings/."
        ),
    )
    proj.set_defaults(func=lambda args: _no_action(proj))
    actions = proj.add_subparsers(
        dest="action",
        metavar="ACTION",
        title="actions",
        help="run 'segany project ACTION --help' for its options",
    )

    p = actions.add_parser("init", help="create a project folder", description="Create a project.")
    p.add_argument("dir", metavar="DIR", help="project folder (created if missing)")
    p.add_argument(
        "--model",
        metavar="M",
        default=DEFAULT_MODEL,
        help=f"the project's model: variant name or checkpoint path (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--db", metavar="URL", default=None, help=DB_HELP)
    p.set_defaults(func=cmd_init)

    p = actions.add_parser(
        "add",
        help="add image files and folders",
        description=(
            "Add images (folders are searched recursively). The same content is stored once; "
            "files that are not images are skipped and reported (exit code 4)."
        ),
    )
    _dir_args(p)
    p.add_argument("paths", metavar="IMAGE_OR_FOLDER", nargs="+", help="image files or folders")
    p.set_defaults(func=cmd_add)

    p = actions.add_parser(
        "export",
        help="export SA-1B (one JSON per image) or COCO (instances with RLE)",
        description=(
            "Export every image and its masks. sa1b: OUT/sa_N.json (official SA-1B) next to "
            "OUT/sa_N.<ext>; coco: OUT/instances.json (COCO RLE) and OUT/images/. --polygons "
            "adds OUT/instances_polygons.json (exact polygons; masks with holes stay RLE)."
        ),
    )
    _dir_args(p)
    p.add_argument("--out", metavar="OUT", required=True, help="a new or empty folder")
    p.add_argument("--format", choices=("sa1b", "coco"), default="sa1b", help="default: sa1b")
    p.add_argument("--polygons", action="store_true", help="also write a derived COCO polygon file")
    p.set_defaults(func=cmd_export)

    p = actions.add_parser(
        "import",
        help="import an SA-1B folder or a COCO instances file",
        description=(
            "Import an SA-1B folder (or file) or a COCO instances .json (images beside it or "
            "under images/). Masks already on an image are not added again."
        ),
    )
    _dir_args(p)
    p.add_argument("source", metavar="SA1B_OR_COCO", help="SA-1B folder or COCO .json file")
    p.set_defaults(func=cmd_import)

    p = actions.add_parser(
        "stats",
        help="masks, seconds per mask, clicks per mask per stage and annotator",
        description="Print the project's annotation statistics per stage and annotator.",
    )
    _dir_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_stats)

    p = actions.add_parser(
        "annotator",
        help="add an annotator and print their access token",
        description=(
            "Add an annotator. Prints the token (only its hash is stored: this is the only "
            "time it is shown); the annotator opens the server's URL with ?token=TOKEN."
        ),
    )
    _dir_args(p)
    p.add_argument("name", metavar="NAME", help="the annotator's name (unique in the project)")
    p.set_defaults(func=cmd_annotator)


def _dir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="project folder")
    p.add_argument("--db", metavar="URL", default=None, help=DB_HELP + " (as at init)")


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    raise UsageError(
        "segany project needs an action: init, add, export, import, stats or annotator"
    )


@contextlib.contextmanager
def _store_errors() -> Iterator[Any]:
    """The store module; its errors and database connection failures as UsageError."""
    try:
        from sqlalchemy.exc import OperationalError

        from ..engine import store
    except ModuleNotFoundError as e:
        raise CliError(
            f"segany project needs the engine extra ({e.name} is missing): "
            "pip install 'segany[engine]' (and 'segany[postgres]' for PostgreSQL)"
        ) from None
    try:
        yield store
    except store.StoreError as e:
        raise UsageError(str(e)) from e
    except OperationalError as e:
        raise UsageError(f"cannot use the database: {e.orig or e}") from e


def _open(store: Any, args: argparse.Namespace) -> Any:
    return store.Project.open(args.dir, db_url=args.db)


def cmd_init(args: argparse.Namespace) -> int:
    """``segany project init``: create the project; prints its folder."""
    with (
        _store_errors() as store,
        store.Project.init(args.dir, model=args.model, db_url=args.db) as project,
    ):
        status(f"created project {project.root} (database {project.db_url})")
    print(args.dir)
    return EXIT_OK


def cmd_add(args: argparse.Namespace) -> int:
    """``segany project add``: one line per added or already present image on stdout."""
    with _store_errors() as store, _open(store, args) as project:
        report = project.add_paths(args.paths)
    for image in report.added:
        print(f"added {image.id} {image.file_name} {image.width}x{image.height}")
    for image in report.existing:
        print(f"exists {image.id} {image.file_name}")
    for path, reason in report.skipped:
        status(f"skipped {path}: {reason}")
    status(
        f"{len(report.added)} added, {len(report.existing)} already in the project, "
        f"{len(report.skipped)} skipped"
    )
    if report.skipped and not (report.added or report.existing):
        raise UsageError("no image was added: " + "; ".join(r for _, r in report.skipped[:3]))
    return EXIT_SOME_FAILED if report.skipped else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """``segany project export``: prints the output folder."""
    with _store_errors() as store, _open(store, args) as project:
        report = project.export(args.out, format=args.format, polygons=args.polygons)
    extra = ""
    if args.polygons:
        extra = f"; polygon file: {report['polygon_masks']} polygons, {report['rle_masks']} RLE"
    status(f"exported {report['images']} images, {report['masks']} masks ({args.format}){extra}")
    print(report["out"])
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    """``segany project import``: prints what was added."""
    with _store_errors() as store, _open(store, args) as project:
        report = project.import_(args.source)
    print(
        f"images: {report['images_added']} added, {report['images_existing']} already present; "
        f"masks: {report['masks_added']} added, {report['masks_existing']} already present"
    )
    return EXIT_OK


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_stats(stats: dict[str, Any]) -> str:
    """The statistics as a plain-text table."""
    im = stats["images"]
    lines = [
        f"images: {im['total']} (new {im['new']}, in progress {im['in_progress']}, "
        f"done {im['done']}, skipped {im['skipped']}); masks: {stats['masks']}",
    ]
    header = (
        "stage",
        "annotator",
        "masks",
        "images",
        "done",
        "s/mask",
        "masks/image",
        "clicks/mask",
    )
    rows = [
        (
            str(g["stage"]),
            g["annotator"] or "-",
            str(g["masks"]),
            str(g["images"]),
            str(g["images_done"]),
            _fmt(g["seconds_per_mask"], 1),
            _fmt(g["masks_per_image"]),
            _fmt(g["clicks_per_mask"]),
        )
        for g in stats["groups"]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                               enumerate(zip(r, widths, strict=True))).rstrip())  # fmt: skip
    emb = stats.get("embeddings")
    if emb is not None:
        model = emb["model"] or "(none registered)"
        if emb["cached"] is None:
            lines.append(
                f"embeddings: not known yet for model {model} ({emb['images']} images; "
                "'segany serve DIR' records the model's fingerprint and encodes them)"
            )
        else:
            lines.append(
                f"embeddings: {emb['cached']} of {emb['images']} images cached for model "
                f"{model} (fingerprint {emb['fingerprint']})"
            )
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace) -> int:
    """``segany project stats``: the table (or JSON) on stdout, with the embedding cache's
    progress for the current model version (no model is loaded)."""
    with _store_errors() as store, _open(store, args) as project:
        stats = project.stats()
        stats["embeddings"] = project.embedding_progress()
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return EXIT_OK


def cmd_annotator(args: argparse.Namespace) -> int:
    """``segany project annotator``: the new annotator's token on stdout."""
    with _store_errors() as store, _open(store, args) as project:
        annotator, token = project.add_annotator(args.name)
    status(f"added annotator {annotator.name}: open the server's URL with ?token=<this token>")
    print(token)
    return EXIT_OK
