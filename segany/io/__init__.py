"""Input/output formats: images in (:mod:`.image`, torch-free), embedding files
(:mod:`.embedding`)."""
