"""Data we make ourselves: sample images and (later) procedural training scenes."""
