"""ONNX in and out: the importer reads models into Graphs; the exporter writes Graphs back."""

from cimc.onnx_io.exporter import export_model, save_model
from cimc.onnx_io.importer import import_model, load_model, read_model

__all__ = ["export_model", "import_model", "load_model", "read_model", "save_model"]
