"""ONNX in and out: the importer reads models into Graphs; the exporter writes Graphs back."""

from cimc.onnx_io.importer import import_model, load_model, read_model

__all__ = ["import_model", "load_model", "read_model"]
