"""Files segany reads and writes, all torch-free: images in (:mod:`.image`), the atomic writer,
hashing and image suffixes (:mod:`.files`), embedding files (:mod:`.embedding`) and the ONNX
export folder's manifest (:mod:`.onnx_manifest`)."""
