"""The data engine's stages run over many images. :mod:`.auto` is the fully automatic stage:
the automatic mask generator over a folder or a project, in-process or on Ray (:mod:`.ray_run`),
written as SA-1B-style tar shards with an index (:mod:`.shards`); :mod:`.spec` holds the
presets and what each worker runs. Importing this package imports neither torch nor Ray."""

from .auto import REPORT_FILE, InputImage, import_shards, list_inputs, run_auto
from .shards import INDEX_FILE, ShardImage, ShardIndex, extract_shard, shard_name, write_shard
from .spec import PRESETS, AutoPreset, GeneratorSpec, ImageResult, read_and_segment, segment_image

__all__ = [
    "INDEX_FILE",
    "PRESETS",
    "REPORT_FILE",
    "AutoPreset",
    "GeneratorSpec",
    "ImageResult",
    "InputImage",
    "ShardImage",
    "ShardIndex",
    "extract_shard",
    "import_shards",
    "list_inputs",
    "read_and_segment",
    "run_auto",
    "segment_image",
    "shard_name",
    "write_shard",
]
